"""Reading your own vectors: npy / safetensors / parquet, exactly, in blocks; bad files refused."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.numpy import save_file

from actdict.harvest.vector_read import VectorsError, vector_blocks, vector_rows
from actdict.harvest.vectors import cli, import_vectors
from tests.vectors_helpers import SMALL, D, N, _check_store, _x


def _parquet_list(path, x, extra=True):
    cols = {"vec": pa.array(list(x), type=pa.list_(pa.float32()))}
    if extra:
        cols = {"text": pa.array([f"doc {i}" for i in range(len(x))]), "id": pa.array(range(len(x)))} | cols
    pq.write_table(pa.table(cols), path, row_group_size=10)


def test_npy_round_trip_streamed(tmp_path):
    x = _x()
    np.save(tmp_path / "v.npy", x)
    sizes = [len(b) for b in vector_blocks(tmp_path / "v.npy", block_rows=7)]
    assert sizes == [7] * 6 + [3]  # read 7 rows at a time, never the whole array
    blocks = list(vector_blocks(tmp_path / "v.npy", block_rows=11))  # 45 = 4 * 11 + 1: a last block of 1
    assert [len(b) for b in blocks] == [11] * 4 + [1]
    np.testing.assert_array_equal(np.concatenate(blocks), x)
    _check_store(import_vectors(tmp_path / "v.npy", str(tmp_path / "s"), block_rows=7, **SMALL), x)


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs /proc/self/maps (Linux)")
def test_npy_blocks_are_read_not_mapped(tmp_path):
    """Every page of a memmap that the import read stayed in its RSS (a 2 GB .npy: 2 GB at the end); the
    blocks are now read from the file, which is never mapped while they are; Fortran order too (a column at
    a time), exactly."""
    x = _x(3)
    np.save(tmp_path / "v.npy", x)
    np.save(tmp_path / "f.npy", np.asfortranarray(x))
    got = []
    for b in vector_blocks(tmp_path / "v.npy", block_rows=10):
        assert str(tmp_path / "v.npy") not in Path("/proc/self/maps").read_text()
        got.append(b)
    np.testing.assert_array_equal(np.concatenate(got), x)
    got = []
    for b in vector_blocks(tmp_path / "f.npy", block_rows=10):  # column by column: no longer mapped either
        assert str(tmp_path / "f.npy") not in Path("/proc/self/maps").read_text() and b.flags.c_contiguous
        got.append(b)
    assert [len(b) for b in got] == [10] * (N // 10) + ([N % 10] if N % 10 else [])
    np.testing.assert_array_equal(np.concatenate(got), x)
    _check_store(import_vectors(tmp_path / "f.npy", str(tmp_path / "s"), block_rows=7, **SMALL), x)


def test_npy_float64_and_int(tmp_path):
    x = _x(1, np.float64)
    np.save(tmp_path / "v.npy", x)
    s = import_vectors(tmp_path / "v.npy", str(tmp_path / "s"), **SMALL)
    np.testing.assert_array_equal(s.read_rows(0, N).acts, x.astype(np.float32))
    assert s.manifest["vectors"]["dtype"] == "float64" and s.manifest["kind"] == "vectors"
    ints = np.arange(N * D, dtype=np.int64).reshape(N, D)
    np.save(tmp_path / "i.npy", ints)
    s = import_vectors(tmp_path / "i.npy", str(tmp_path / "s2"), **SMALL)
    np.testing.assert_array_equal(s.read_rows(0, N).acts, ints.astype(np.float32))


def test_safetensors_round_trip(tmp_path):
    x = _x(2)
    save_file({"emb": x, "labels": np.arange(N, dtype=np.int64)}, tmp_path / "v.safetensors")
    sizes = [len(b) for b in vector_blocks(tmp_path / "v.safetensors", key="emb", block_rows=20)]
    assert sizes == [20, 20, 5]
    _check_store(import_vectors(tmp_path / "v.safetensors", str(tmp_path / "s"), key="emb", **SMALL), x)
    with pytest.raises(VectorsError, match=r"2 tensors.*name one with key"):
        import_vectors(tmp_path / "v.safetensors", str(tmp_path / "s2"))
    with pytest.raises(VectorsError, match="no tensor 'nope'"):
        import_vectors(tmp_path / "v.safetensors", str(tmp_path / "s2"), key="nope")


def test_safetensors_bfloat16(tmp_path):
    from safetensors.torch import save_file as save_pt

    t = torch.from_numpy(_x(3)).to(torch.bfloat16)
    t[0, :3] = torch.tensor([3e5, -1e-6, 1.5e38])  # bfloat16 has float32's range: beyond float16's
    save_pt({"x": t}, tmp_path / "b.safetensors")
    s = import_vectors(tmp_path / "b.safetensors", str(tmp_path / "s"), **SMALL)  # the only tensor
    np.testing.assert_array_equal(s.read_rows(0, N).acts, t.float().numpy())
    # the manifest names the file's dtype, not the float32 its blocks arrive in
    assert s.manifest["vectors"]["dtype"] == "bfloat16"
    assert s.manifest["numerics"] == "user vectors (bfloat16), stored float32"
    np.save(tmp_path / "v.npy", _x(3).astype(np.float16))
    f16 = import_vectors(tmp_path / "v.npy", str(tmp_path / "s16"), **SMALL)
    assert (f16.manifest["vectors"]["dtype"], f16.manifest["numerics"]) == (
        "float16", "user vectors (float16), stored float32")


def test_parquet_list_column_round_trip(tmp_path):
    x = _x(4)
    _parquet_list(tmp_path / "v.parquet", x)
    sizes = [len(b) for b in vector_blocks(tmp_path / "v.parquet", block_rows=16)]
    assert sum(sizes) == N and max(sizes) <= 16
    _check_store(import_vectors(tmp_path / "v.parquet", str(tmp_path / "s"), **SMALL), x)  # found by itself
    _check_store(import_vectors(tmp_path / "v.parquet", str(tmp_path / "s2"), key="vec", **SMALL), x)
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), D)
    pq.write_table(pa.table({"v": fixed}), tmp_path / "f.parquet")
    _check_store(import_vectors(tmp_path / "f.parquet", str(tmp_path / "s3"), **SMALL), x)


def test_parquet_is_read_one_row_group_at_a_time(tmp_path):
    """pyarrow's iter_batches over a whole file kept every decoded row group until the end (an 800 MB file
    of 100k-row groups held ~1 GB): the import holds about one row group, not the file."""
    x = np.random.default_rng(7).standard_normal((32_000, 32)).astype(np.float32)  # 32 row groups, 4 MB
    pq.write_table(pa.table({"vec": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 32)}),
                   tmp_path / "v.parquet", row_group_size=1000)
    base, peak, got = pa.total_allocated_bytes(), 0, []
    for b in vector_blocks(tmp_path / "v.parquet", block_rows=250):
        peak = max(peak, pa.total_allocated_bytes() - base)  # bytes arrow holds now
        got.append(b.copy())
    np.testing.assert_array_equal(np.concatenate(got), x)
    assert peak < x.nbytes / 4  # the file decoded whole was held before; now a few row groups (1/32 each)


def test_parquet_scalar_columns_round_trip(tmp_path):
    x = _x(5)
    pq.write_table(pa.table({f"d{j}": x[:, j] for j in range(D)}), tmp_path / "v.parquet", row_group_size=9)
    _check_store(import_vectors(tmp_path / "v.parquet", str(tmp_path / "s"), **SMALL), x)


def test_bad_inputs(tmp_path):
    bad = {"cube.npy": np.zeros((4, 3, 2), np.float32), "flat.npy": np.zeros(5, np.float32),
           "empty.npy": np.zeros((0, 3), np.float32), "words.npy": np.array([["a", "b"]])}
    for name, arr in bad.items():
        np.save(tmp_path / name, arr)
    with pytest.raises(VectorsError, match=r"\(4, 3, 2\) has 3 dimensions.*2-D array \[n, d\]"):
        import_vectors(tmp_path / "cube.npy", str(tmp_path / "s"))
    with pytest.raises(VectorsError, match="1 dimensions"):
        import_vectors(tmp_path / "flat.npy", str(tmp_path / "s"))
    with pytest.raises(VectorsError, match="holds no vectors"):
        import_vectors(tmp_path / "empty.npy", str(tmp_path / "s"))
    with pytest.raises(VectorsError, match="not numeric"):
        import_vectors(tmp_path / "words.npy", str(tmp_path / "s"))
    x = _x(6)
    x[13, 2] = np.nan
    x[30, 0] = np.inf
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(VectorsError, match=r"row 13 holds NaN or inf \(1 such rows in rows 10\.\.19\)"):
        import_vectors(tmp_path / "nan.npy", str(tmp_path / "s"), block_rows=10)
    (tmp_path / "v.csv").write_text("1,2\n")
    with pytest.raises(VectorsError, match="unknown vectors format '.csv'"):
        import_vectors(tmp_path / "v.csv", str(tmp_path / "s"))
    with pytest.raises(VectorsError, match="does not exist"):
        import_vectors(tmp_path / "missing.npy", str(tmp_path / "s"))
    (tmp_path / "shards").mkdir()
    with pytest.raises(VectorsError, match=r"vectors folder '.*shards' names no file \(.npy, .safetensors, "):
        import_vectors(tmp_path / "shards", str(tmp_path / "s"))
    for name, data in {"empty.safetensors": b"", "junk.safetensors": b"not a safetensors file"}.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(VectorsError, match=f"{name}: not a readable safetensors file"):
            import_vectors(tmp_path / name, str(tmp_path / "s"))
    assert not (tmp_path / "s" / "vectors").exists()  # a rejected file leaves no half-written hook behind
    assert cli([str(tmp_path / "nan.npy"), str(tmp_path / "s2")]) == 2  # row 13, past the first row checked
    assert not (tmp_path / "s2").exists()  # the folder the command made (with its lock file) goes too


def test_bad_parquet(tmp_path):
    x = _x(7)
    _parquet_list(tmp_path / "v.parquet", x)
    with pytest.raises(VectorsError, match=r"column 'text' is string, not numeric.*columns: \['text', 'id'"):
        import_vectors(tmp_path / "v.parquet", str(tmp_path / "s"), key="text")
    pq.write_table(pa.table({"a": x[:, 0], "label": [str(i) for i in range(N)]}), tmp_path / "m.parquet")
    with pytest.raises(VectorsError, match="column 'label' is string, not numeric; with no list column every "
                                           "column is one dimension: write the file without it"):
        import_vectors(tmp_path / "m.parquet", str(tmp_path / "s"))  # key cannot help: no advice to set it
    with pytest.raises(VectorsError, match=r"column 'a' is float, one number per row: key names the list "):
        import_vectors(tmp_path / "m.parquet", str(tmp_path / "s"), key="a")  # not vectors of d = 1
    ragged = pa.array([[1.0, 2.0], [3.0], [4.0, 5.0]], type=pa.list_(pa.float64()))
    pq.write_table(pa.table({"v": ragged}), tmp_path / "r.parquet")
    with pytest.raises(VectorsError, match=r"different lengths \(2 and 1\)"):
        import_vectors(tmp_path / "r.parquet", str(tmp_path / "s"))
    two = pa.array([[1.0]] * 3, type=pa.list_(pa.float64()))
    pq.write_table(pa.table({"u": two, "v": two}), tmp_path / "two.parquet")
    with pytest.raises(VectorsError, match=r"several list columns \['u', 'v'\]"):
        import_vectors(tmp_path / "two.parquet", str(tmp_path / "s"))
    empty = pa.array([[]] * 3, type=pa.list_(pa.float64()))  # d = 0, as .npy of shape (3, 0) is refused
    pq.write_table(pa.table({"v": empty}), tmp_path / "e.parquet")
    with pytest.raises(VectorsError, match=r"column 'v': its lists are empty \(d = 0\): it holds no vectors"):
        import_vectors(tmp_path / "e.parquet", str(tmp_path / "s"))
    rows = [[float(i), 1.0] for i in range(40)]
    rows[37] = rows[39] = None  # in the third block of 16 rows: named by its row in the file
    pq.write_table(pa.table({"v": pa.array(rows, type=pa.list_(pa.float64()))}), tmp_path / "n.parquet")
    with pytest.raises(VectorsError, match=r"column 'v': row 37 is null \(2 in this block of rows\)"):
        import_vectors(tmp_path / "n.parquet", str(tmp_path / "s"), block_rows=16)
    assert not (tmp_path / "s").exists()


def test_vector_rows_reads_headers_only(tmp_path):
    x = _x()
    np.save(tmp_path / "a.npy", x)
    save_file({"v": x, "w": x[:3]}, tmp_path / "a.safetensors")
    _parquet_list(tmp_path / "a.parquet", x)
    assert vector_rows(tmp_path / "a.npy") == N and vector_rows(tmp_path / "a.parquet", "vec") == N
    assert vector_rows(tmp_path / "a.safetensors", "w") == 3
    assert vector_rows(tmp_path / "a.safetensors") is None  # two tensors, no key: the import asks for one
    assert vector_rows(tmp_path / "missing.npy") is None  # the import says what is wrong


def test_a_key_given_for_a_npy_file_is_refused_not_ignored(tmp_path):
    """A .npy file holds one array: key (meant for an .npz, or a safetensors file converted since) was
    ignored and the array imported; now the import names it and writes nothing."""
    np.save(tmp_path / "v.npy", np.ones((64, 3), np.float32))
    said = r"v.npy: a .npy file holds one array, and key \('emb'\) names a safetensors tensor"
    with pytest.raises(VectorsError, match=said):
        import_vectors(tmp_path / "v.npy", str(tmp_path / "s"), key="emb")
    assert not (tmp_path / "s" / "vectors" / "manifest.json").exists()
    assert import_vectors(tmp_path / "v.npy", str(tmp_path / "s"))  # without the key
