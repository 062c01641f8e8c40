"""Bring-your-own vectors: npy / safetensors / parquet import exactly into the store, streamed in blocks;
bad files fail with a clear VectorsError; the config path (harvest.mode: vectors) runs train + analyze."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.numpy import save_file

from actdict.cli import main as actdict_main
from actdict.config import ConfigError
from actdict.harvest.store import StoreError, open_store, write_vectors
from actdict.harvest.vectors import (
    VectorsError,
    cli,
    import_vectors,
    vector_blocks,
    vector_files,
    vector_rows,
)
from actdict.harvest.writer import chunk_rows_for, default_layout

N, D = 45, 6
SMALL = {"shard_rows": 16, "chunk_rows": 8}  # several shards, a short last shard


def _x(seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal((N, D)).astype(dtype)  # [N, D]


def _check_store(s, x):
    rows = s.read_rows(0, len(s))
    assert len(s) == len(x) and s.d == x.shape[1] and s.num_shards == 3
    np.testing.assert_array_equal(rows.acts, x.astype(np.float32))  # exact: stored float32
    np.testing.assert_array_equal(rows.doc, np.arange(len(x)))
    assert (rows.token_ids == -1).all() and (rows.pos == 0).all()
    s.verify()


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


def test_cli(tmp_path, capsys):
    x = _x(8)
    np.save(tmp_path / "v.npy", x)
    assert cli([str(tmp_path / "v.npy"), str(tmp_path / "s"), "--hook", "mine"]) == 0
    np.testing.assert_array_equal(open_store(str(tmp_path / "s"), "mine").read_rows(0, N).acts, x)
    assert cli([str(tmp_path / "v.npy"), str(tmp_path / "s"), "--hook", "mine"]) == 2  # exists: no overwrite
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 2)))
    assert cli([str(tmp_path / "cube.npy"), str(tmp_path / "s2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "already exists" in err[0] and "VectorsError" in err[1]
    assert "--overwrite" in err[0]  # the flag that replaces it, named
    (tmp_path / "junk.npy").write_bytes(b"not an array at all")
    assert cli([str(tmp_path / "junk.npy"), str(tmp_path / "s3")]) == 2
    err = capsys.readouterr().err
    assert "junk.npy: not a .npy file (no NumPy header)" in err and "pickle" not in err
    v = str(tmp_path / "v.npy")
    assert cli([v, str(tmp_path / "s4"), "--chunk-rows", "8", "--shard-rows", "24"]) == 0
    small = open_store(str(tmp_path / "s4"), "vectors")
    assert (small.chunk_rows, small.num_chunks, small.num_shards) == (8, -(-N // 8), -(-N // 24))
    np.testing.assert_array_equal(small.read_rows(0, N).acts, x)
    assert cli([v, str(tmp_path / "s5"), "--chunk-rows", "8", "--shard-rows", "20"]) == 2
    err = capsys.readouterr().err
    assert "ConfigError: shard_rows (20) must be a positive multiple of chunk_rows (8)" in err
    assert not (tmp_path / "s5").exists()  # refused before anything is written
    assert cli([v, str(tmp_path / "s6"), "--chunk-rows", "100000000"]) == 2  # was a 1e8-row chunk on disk
    assert capsys.readouterr().err.strip().endswith(
        f"chunk_rows 100,000,000 is more than the {N:,} rows to write (and the default 4,096), and a chunk "
        "is stored whole, padded: leave chunk_rows out for the default, or give at most the rows")
    assert not (tmp_path / "s6").exists()
    assert cli([v, str(tmp_path / "s7"), "--chunk-rows", "4096"]) == 0  # the default's size: fine
    capsys.readouterr()
    assert actdict_main(["store", str(tmp_path / "s")]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("  model - (no model: imported vectors); ")


def test_cli_interrupted(tmp_path, capsys, monkeypatch):
    """Ctrl-C part way through an import (after its first block is written): one line, status 130, and
    neither the hook nor the store folder the import made is left."""
    from actdict.harvest import store as store_mod

    np.save(tmp_path / "v.npy", _x(8))
    real = store_mod.write_vectors
    seen = []

    def interrupted_after_a_block(path, x, **kw):  # the real writer, fed one block and then a Ctrl-C
        def blocks():
            first = next(x)
            seen.append(len(first))
            yield first
            raise KeyboardInterrupt
        return real(path, blocks(), **kw | {"shard_rows": 4, "chunk_rows": 4})

    monkeypatch.setattr(store_mod, "write_vectors", interrupted_after_a_block)
    assert cli([str(tmp_path / "v.npy"), str(tmp_path / "s")]) == 130
    assert capsys.readouterr().err == "import: interrupted (an unfinished hook is not kept)\n"
    assert seen and not (tmp_path / "s").exists()


def test_config_mode_vectors_runs_train_and_analyze(tmp_path, capsys):
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((4, 24)).astype(np.float32)  # vectors on a 4-dim subspace of R^24
    x = rng.standard_normal((2048, 4)).astype(np.float32) @ basis  # [2048, 24]
    np.save(tmp_path / "v.npy", x)
    cfg = tmp_path / "v.yaml"
    cfg.write_text(f"""
run_dir: {tmp_path / 'run'}
harvest:
  mode: vectors
  vectors: {{path: {tmp_path / 'v.npy'}, hook: emb}}
  store_dtype: float32
  shard_rows: 1024
  chunk_rows: 256
train:
  epochs: 2
  batch_size: 256
  test_fraction: 0.25
  dicts: [{{name: sae_l1, variant: sae_l1, k: 16}}]
analyze: {{n_features: 3, top_k: 2, context: 0}}
""")
    assert actdict_main(["run", str(cfg)]) == 0
    s = open_store(str(tmp_path / "run" / "store"), "emb")
    np.testing.assert_array_equal(s.read_rows(0, len(s)).acts, x)
    assert s.manifest["config_hash"] and s.manifest["harvest"]["mode"] == "vectors"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["n_test_rows"] == 512 and 0 < summary["models"]["sae_l1"]["re_det"] < float("inf")
    capsys.readouterr()  # the lens of a token config pointed at this store: no model to read a text with
    demo = Path(__file__).parents[1] / "configs" / "demo.yaml"
    assert actdict_main(["lens", str(demo), "x", "--set", f"run_dir={tmp_path / 'run'}"]) == 2
    assert "holds vectors of no model: the store holds vectors brought" in capsys.readouterr().err
    assert actdict_main(["harvest", str(cfg)]) == 0  # same config again: complete, skipped
    unread = ["harvest.ctx=7", "harvest.model=x", "harvest.max_tokens=5", "harvest.vectors.block_rows=100",
              "harvest.window_mode=per_doc", "harvest.embed.unit=paragraph"]  # no vectors import reads them
    capsys.readouterr()
    assert actdict_main(["harvest", str(cfg), *unread]) == 0 and "already complete" in capsys.readouterr().out
    assert actdict_main(["harvest", str(cfg), "harvest.vectors.key=x"]) == 2  # another config: refused
    for other in ("harvest.chunk_rows=64", "harvest.store_dtype=float16"):  # what the import does read
        assert actdict_main(["harvest", str(cfg), other]) == 2 and "another config" in capsys.readouterr().err
    with pytest.MonkeyPatch.context() as mp:  # under torchrun every rank would write the whole hook
        mp.setenv("WORLD_SIZE", "2")
        mp.setenv("RANK", "0")
        capsys.readouterr()
        assert actdict_main(["harvest", str(cfg), f"run_dir={tmp_path / 'run3'}"]) == 2
        assert "harvest.mode vectors runs in one process: torchrun splits token harvests only" in (
            capsys.readouterr().err) and not (tmp_path / "run3" / "store" / "emb").exists()
        assert actdict_main(["harvest", str(cfg)]) == 0  # a complete store: skipped under torchrun too
        assert "already complete" in capsys.readouterr().out
    assert cli([str(tmp_path / "v.npy"), str(tmp_path / "run4" / "store"), "--hook", "emb"]) == 0
    capsys.readouterr()  # an import of the same file without a config: train uses it, a harvest refuses
    assert actdict_main(["run", str(cfg), f"run_dir={tmp_path / 'run4'}"]) == 2
    assert "holds vectors written without a config (python -m actdict" in capsys.readouterr().err
    fresh = [f"run_dir={tmp_path / 'run2'}", "harvest.shard_rows=2048"]
    capsys.readouterr()
    assert actdict_main(["run", str(cfg), *fresh, "harvest.chunk_rows=2048"]) == 2  # one chunk: refused
    assert "holds 2048 vectors" in capsys.readouterr().err and not (tmp_path / "run2").exists()  # before
    assert actdict_main(["run", str(cfg), *fresh, "train.test_fraction=0"]) == 2  # analysis would find none
    assert "train.test_fraction=0 holds no chunks out, and the analysis" in capsys.readouterr().err
    assert not (tmp_path / "run2").exists()
    assert chunk_rows_for(2048, 2048) == 256 and chunk_rows_for(1000, 65536) == 64  # the import, not after
    assert chunk_rows_for(1000, 96) == 32 and chunk_rows_for(5, 4096) == 1


def test_analyze_refuses_a_store_its_dictionaries_did_not_learn(tmp_path, capsys):
    """Other vectors written over the store after training (its test chunks are then other rows, or out of
    range): analysis stops with one line naming what changed; the same vectors written again pass."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1024, 8)).astype(np.float32)
    store = str(tmp_path / "store")
    write_vectors(store, x, chunk_rows=128, shard_rows=512)
    cfg = tmp_path / "v.yaml"
    cfg.write_text(f"""
run_dir: {tmp_path / 'run'}
store: {store}
threads: 1
train: {{epochs: 1, batch_size: 128, test_fraction: 0.25, dicts: [{{name: l1, variant: sae_l1, k: 8}}]}}
analyze: {{n_features: 2, top_k: 1, context: 0}}
""")
    assert actdict_main(["train", str(cfg)]) == 0
    write_vectors(store, x, chunk_rows=128, shard_rows=512, overwrite=True)  # the same rows: analysed
    assert actdict_main(["analyze", str(cfg)]) == 0
    shutil.copytree(store, tmp_path / "moved")  # the same rows in another folder: its path is not compared
    assert actdict_main(["analyze", str(cfg), f"store={tmp_path / 'moved'}"]) == 0
    capsys.readouterr()
    write_vectors(store, x[:512], chunk_rows=64, shard_rows=512, overwrite=True)  # other rows, other chunks
    assert actdict_main(["analyze", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"the store {store} is not the one ['l1'] learned (l1: store.content: " in err
    assert "store.rows: 1024 -> 512" in err and "point `store` at the store they learned" in err


def test_vector_rows_reads_headers_only(tmp_path):
    x = _x()
    np.save(tmp_path / "a.npy", x)
    save_file({"v": x, "w": x[:3]}, tmp_path / "a.safetensors")
    _parquet_list(tmp_path / "a.parquet", x)
    assert vector_rows(tmp_path / "a.npy") == N and vector_rows(tmp_path / "a.parquet", "vec") == N
    assert vector_rows(tmp_path / "a.safetensors", "w") == 3
    assert vector_rows(tmp_path / "a.safetensors") is None  # two tensors, no key: the import asks for one
    assert vector_rows(tmp_path / "missing.npy") is None  # the import says what is wrong


def _train_cfg(tmp_path, store) -> str:
    cfg = tmp_path / "t.yaml"
    cfg.write_text(f"""
run_dir: {tmp_path / 'run'}
store: {store}
train:
  epochs: 1
  batch_size: 8
  test_fraction: 0.2
  dicts: [{{name: s, variant: sae_l1, k: 4}}]
""")
    return str(cfg)


def test_vectors_imported_over_a_store_retrain_its_dictionaries(tmp_path, capsys):
    """The same shape imported again with other numbers is another store: its dictionaries are retrained
    (they were skipped as finished when the store was known by its path, rows and d alone)."""
    store, record = str(tmp_path / "s"), tmp_path / "run" / "dicts" / "s" / "cfg.json"
    contents = []
    for i, seed in enumerate((1, 1, 2)):
        np.save(tmp_path / "v.npy", _x(seed))
        assert cli([str(tmp_path / "v.npy"), store, "--chunk-rows", "8", "--overwrite"]) == 0
        assert actdict_main(["train", _train_cfg(tmp_path, store)]) == 0
        out = capsys.readouterr().out
        content = open_store(store).manifest["content"]
        assert json.loads(record.read_text())["store"]["content"] == content and len(content) == 16
        assert ("skipped" in out) == (i == 1)  # the same vectors again: finished; other vectors: retrained
        if i == 2:
            assert f"store.content: '{contents[0]}' -> '{content}'" in out
        contents.append(content)
    assert contents[0] == contents[1] != contents[2]


def _vectors_config(tmp_path: Path) -> Path:
    """A config importing ``tmp_path/v.npy`` (written: ``_x(1)``) as ``harvest.mode: vectors`` into
    ``tmp_path/run/store`` (float32, shards of 16 rows, chunks of 8)."""
    np.save(tmp_path / "v.npy", _x(1))
    cfg = tmp_path / "v.yaml"
    cfg.write_text(f"""
run_dir: {tmp_path / 'run'}
harvest: {{mode: vectors, vectors: {{path: {tmp_path / 'v.npy'}}}, store_dtype: float32, shard_rows: 16,
          chunk_rows: 8}}
""")
    return cfg


def test_config_mode_vectors_reimports_a_changed_file(tmp_path, capsys):
    cfg = _vectors_config(tmp_path)
    assert actdict_main(["harvest", str(cfg)]) == 0
    assert actdict_main(["harvest", str(cfg)]) == 0
    assert "already complete" in capsys.readouterr().out
    np.save(tmp_path / "v.npy", _x(2))  # the file changed (another mtime): imported again
    assert actdict_main(["harvest", str(cfg)]) == 0
    assert "changed since it was imported" in capsys.readouterr().out
    s = open_store(str(tmp_path / "run" / "store"))
    np.testing.assert_array_equal(s.read_rows(0, N).acts, _x(2))
    assert s.manifest["source_fingerprint"] and s.manifest["n_rows"] == N


def test_a_replacement_stopped_by_a_kill_leaves_no_staging_folder(tmp_path):
    """A vectors import over an existing hook stages the new one in ``.replacing-<hook>/`` and swaps it in;
    SIGKILL between the old hook's removal and the swap leaves the store with the staged hook only. The
    rerun imports it again and removes the staging folder: the store is the uninterrupted one, file for
    file (before, a whole copy of the hook stayed there for good)."""
    cfg = _vectors_config(tmp_path)
    assert actdict_main(["harvest", str(cfg)]) == 0
    store = tmp_path / "run" / "store"
    before = {str(p.relative_to(store)): p.read_bytes() for p in store.rglob("*") if p.is_file()}
    (store / ".replacing-vectors").mkdir()
    (store / "vectors").rename(store / ".replacing-vectors" / "vectors")  # the kill's moment
    assert actdict_main(["harvest", str(cfg)]) == 0
    assert not (store / ".replacing-vectors").exists()
    assert {str(p.relative_to(store)): p.read_bytes() for p in store.rglob("*") if p.is_file()} == before


def test_store_listing_piped_into_head_exits_quietly(tmp_path):
    """`actdict store PATH | head -1`: the reader leaves early; no BrokenPipeError traceback on stderr."""
    from tests.pipes import into_head

    np.save(tmp_path / "v.npy", _x())
    for h in range(40):  # --verify: still listing when head has left
        import_vectors(tmp_path / "v.npy", str(tmp_path / "s"), hook=f"h{h:02d}", **SMALL)
    r = into_head("store", str(tmp_path / "s"), "--verify")
    assert r.stdout.startswith("h00: 45 rows x d=6 float32") and r.stdout.count("\n") == 1
    assert r.stderr.strip() == "rc 141"


def test_repair_of_imported_vectors_says_how_to_import_them_again(tmp_path, capsys):
    from actdict.harvest.inspect import main as store_cli

    x = np.random.default_rng(0).standard_normal((300, 4)).astype(np.float32)
    s = write_vectors(str(tmp_path / "st"), x, shard_rows=128, chunk_rows=64, dtype="float16")
    shutil.rmtree(f"{s.dir}/shards/00001")
    assert store_cli([str(tmp_path / "st"), "--repair"]) == 0
    out = capsys.readouterr().out
    assert "vectors: 1 shard(s) to write again (00001: missing)" in out
    assert (f"python -m actdict.harvest.vectors FILE {tmp_path / 'st'} --hook vectors --dtype float16 "
            "--shard-rows 128 --chunk-rows 64 --overwrite") in out  # the same layout: the same split
    assert "run the harvest command that made it" not in out
    with pytest.raises(StoreError, match="incomplete store") as e:  # what training then says: the same
        open_store(str(tmp_path / "st"))
    assert "harvest command" not in str(e.value)
    assert (f"python -m actdict.harvest.vectors FILE {tmp_path / 'st'} --hook vectors --dtype float16 "
            "--shard-rows 128 --chunk-rows 64 --overwrite") in str(e.value)


def test_a_float16_overflow_is_one_line_and_leaves_nothing(tmp_path, capsys):
    """A value past float16's range: exit 2 naming the way out, no half-written hook, and the same import
    as float32 then goes through."""
    x = np.random.default_rng(0).standard_normal((600, D)).astype(np.float32)  # [600, D]
    x[550, 3] = 1e6  # beyond 65504
    np.save(tmp_path / "v.npy", x)
    args = [str(tmp_path / "v.npy"), str(tmp_path / "s"), "--chunk-rows", "64"]
    assert cli([*args, "--dtype", "float16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NonFiniteError" in err[0] and "float32 or bfloat16" in err[0]
    assert not (tmp_path / "s" / "vectors").exists()
    assert cli(args) == 0  # float32 by default
    np.testing.assert_array_equal(open_store(str(tmp_path / "s"), "vectors").read_rows(0, 600).acts, x)


def test_vectors_below_float16s_normal_range_are_refused_not_flushed_to_zero(tmp_path, capsys):
    """Vectors of scale 1e-8 stored as float16 (a config's default store_dtype) came out subnormal or 0
    (254 of 256 values 0, the rest 93% off) with no word, while an overflow is refused. Now a nonzero row
    whose largest |x| is under float16's smallest normal (6.1e-05) is refused the same way; all-zero rows,
    small values beside large ones, and float32 keep going through."""
    from actdict.harvest.writer import UnderflowError

    x = np.random.default_rng(3).standard_normal((64, D)).astype(np.float32)  # [64, D]
    x[::5] = 0  # all-zero rows: exact in float16
    tiny = x * 1e-8
    np.save(tmp_path / "v.npy", tiny)
    args = [str(tmp_path / "v.npy"), str(tmp_path / "s"), "--chunk-rows", "8"]
    assert cli([*args, "--dtype", "float16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "row 1 lies below float16's normal range" in err[0] and "float32" in err[0]
    assert not (tmp_path / "s" / "vectors").exists()
    assert cli(args) == 0  # float32 keeps them exactly
    np.testing.assert_array_equal(open_store(str(tmp_path / "s"), "vectors").read_rows(0, 64).acts, tiny)
    late = x.copy()
    late[41] *= 1e-7
    with pytest.raises(UnderflowError, match=r"row 41 lies below float16's normal range"):
        write_vectors(str(tmp_path / "t"), late, dtype="float16", **SMALL)
    assert not (tmp_path / "t" / "vectors").exists()
    mixed = x.copy()
    mixed[:, 0] *= 1e-9  # tiny values beside normal ones in every row: their row keeps its digits
    s = write_vectors(str(tmp_path / "t"), mixed, dtype="float16", **SMALL)
    np.testing.assert_array_equal(s.read_rows(0, 64).acts, mixed.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_float64_vectors_under_the_stored_dtypes_range_are_refused_not_zeros(tmp_path, capsys, dtype):
    """float64 rows of scale 1e-50 imported as float32 (the default) or bfloat16 became all-zero rows with no
    word (hnum's note; float16 refused them): refused naming the row; zero rows, and float64 rows in range
    whose smallest values flush, keep going through."""
    x = np.random.default_rng(3).standard_normal((64, D))  # [64, D] float64
    x[::5] = 0
    x[7] *= 1e-50
    np.save(tmp_path / "v.npy", x)
    args = [str(tmp_path / "v.npy"), str(tmp_path / "s"), "--chunk-rows", "8", "--dtype", dtype]
    assert cli(args) == 2
    floor = {"float32": "1.4e-45", "bfloat16": "9.2e-41"}[dtype]
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"import: UnderflowError: {tmp_path / 's' / 'vectors'}: row 7 becomes 0 in {dtype} (its largest |x| "
        f"is {np.abs(x[7]).max():.3g}, under {dtype}'s smallest value, {floor}): scale the rows up")
    assert not (tmp_path / "s" / "vectors").exists()
    x[7, 1:] = 1.0  # one value flushes, the row keeps the others
    x[7, 0] = 1e-50
    s = write_vectors(str(tmp_path / "t"), x, dtype=dtype, **SMALL)
    assert s.read_rows(7, 8).acts[0, 0] == 0 and (s.read_rows(7, 8).acts[0, 1:] == 1).all()


def test_write_vectors_from_python_names_a_bad_row_and_leaves_nothing(tmp_path):
    """write_vectors (the Python entry, no file reader in front) on a NaN row or a float16 overflow: the
    error names the global row, and the hook it began is removed, so the corrected call goes through."""
    from actdict.harvest.writer import NonFiniteError

    x = np.random.default_rng(1).standard_normal((40, D)).astype(np.float32)  # [40, D]
    nan, big = x.copy(), x.copy()
    nan[37, 2] = np.nan  # in the third shard of 16 rows
    big[21, 0] = 7e4
    with pytest.raises(NonFiniteError, match=r"row 37 holds NaN or inf; drop or fix it") as e:
        write_vectors(str(tmp_path / "s"), nan, **SMALL)
    assert "float16" not in str(e.value) and not (tmp_path / "s" / "vectors").exists()
    with pytest.raises(NonFiniteError, match=r"row 21 is not finite once cast to float16 \(values beyond"):
        write_vectors(str(tmp_path / "s"), big, dtype="float16", **SMALL)
    assert not (tmp_path / "s" / "vectors").exists()
    _check_store(write_vectors(str(tmp_path / "s"), x, **SMALL), x)


def test_a_failed_write_from_python_removes_the_folders_it_made_and_only_those(tmp_path):
    """write_vectors / import_vectors failing part way (a block generator that raises, a block of the wrong
    width, a NaN row in the file's third block) remove the store folder they made and its missing parents;
    a folder that existed before stays, and so do the other hooks of a store."""
    x = _x(2)

    def raising():  # two good blocks, then the source fails
        yield x[:16]
        yield x[16:32]
        raise OSError("the source went away")

    deep = tmp_path / "new" / "deeper" / "s"
    with pytest.raises(OSError, match="went away"):
        write_vectors(str(deep), raising(), **SMALL)
    assert not (tmp_path / "new").exists()
    wide = iter([x[:16], np.zeros((16, D + 1), np.float32)])  # the second block is one column wider
    with pytest.raises(ValueError, match=rf"shape \[n, {D}\]"):
        write_vectors(str(tmp_path / "w"), wide, **SMALL)
    assert not (tmp_path / "w").exists()
    x_nan = x.copy()
    x_nan[25, 1] = np.nan  # in the third block of 10 rows
    np.save(tmp_path / "nan.npy", x_nan)
    with pytest.raises(VectorsError, match="row 25 holds NaN"):
        import_vectors(tmp_path / "nan.npy", str(tmp_path / "i" / "s"), block_rows=10, **SMALL)
    assert not (tmp_path / "i").exists()

    (tmp_path / "kept").mkdir()  # existed before: stays, empty as it was
    with pytest.raises(OSError, match="went away"):
        write_vectors(str(tmp_path / "kept" / "s"), raising(), **SMALL)
    assert (tmp_path / "kept").is_dir() and list((tmp_path / "kept").iterdir()) == []
    store = tmp_path / "two"
    write_vectors(str(store), x, hook="a", **SMALL)
    with pytest.raises(OSError, match="went away"):
        write_vectors(str(store), raising(), hook="b", **SMALL)
    assert sorted(q.name for q in store.iterdir()) == ["a"]
    _check_store(open_store(str(store), "a"), x)


def test_small_files_and_arrays_get_chunks_to_hold_out(tmp_path):
    """Without chunk_rows, an import (Python or command line) or an array written from Python is cut into
    8 chunks or more (the unit of train's split), up to 4,096 rows each."""
    x = np.random.default_rng(2).standard_normal((600, D)).astype(np.float32)  # [600, D]
    np.save(tmp_path / "v.npy", x)
    stores = [import_vectors(tmp_path / "v.npy", str(tmp_path / "a")), write_vectors(str(tmp_path / "b"), x)]
    assert cli([str(tmp_path / "v.npy"), str(tmp_path / "c")]) == 0
    stores.append(open_store(str(tmp_path / "c")))
    for s in stores:
        assert (s.chunk_rows, s.num_chunks, len(s)) == (64, 10, 600)
        np.testing.assert_array_equal(s.read_rows(0, 600).acts, x)
    assert chunk_rows_for(10**7, 65536) == 4096 and chunk_rows_for(40000, 65536) == 4096
    assert cli([str(tmp_path / "v.npy"), str(tmp_path / "d"), "--shard-rows", "1000"]) == 0  # a given shard
    assert (open_store(str(tmp_path / "d")).chunk_rows, open_store(str(tmp_path / "d")).num_chunks) == (8, 75)
    assert default_layout(600, shard_rows=1000) == (8, 1000) and default_layout(None) == (4096, 65536)
    assert default_layout(10**6, shard_rows=8192) == (4096, 8192)  # a large set keeps 4,096-row chunks
    assert default_layout(30000, shard_rows=1001) == (2048, 1001)  # not 30,000 chunks of 1 (refused later)
    for bad in ({"chunk_rows": -3}, {"shard_rows": -8}):  # named as given, not as a default made from them
        with pytest.raises(ConfigError, match=rf"chunk_rows \({bad.get('chunk_rows', 0)}\) and shard_rows "
                                              rf"\({bad.get('shard_rows', 0)}\) must be positive"):
            default_layout(600, **bad)


def test_a_negative_chunk_size_is_one_line_naming_it(tmp_path, capsys):
    np.save(tmp_path / "v.npy", _x(0))
    assert cli([str(tmp_path / "v.npy"), str(tmp_path / "s"), "--chunk-rows", "-3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("import: ConfigError: chunk_rows (-3) and shard_rows (0) must be positive (or 0 / left "
                   "out: the default)")
    assert not (tmp_path / "s").exists()


def test_harvest_of_a_config_without_a_harvest_section_says_so(tmp_path, capsys):
    """A bring-your-own-vectors config has no harvest section: `actdict harvest` refuses (it had run the
    default token harvest), `actdict run` skips the stage."""
    cfg = tmp_path / "byo.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\ntrain: {{dicts: [{{name: a, variant: sae_l1, k: 4}}]}}\n")
    assert actdict_main(["harvest", str(cfg)]) == 2
    assert "has no harvest section: nothing to harvest" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_hook_named_dot_dot_is_refused_before_anything_is_removed(tmp_path, capsys):
    """A hook names one folder of the store: `harvest.vectors.hook=..` replaced '<store>/..', the run folder,
    removing everything in it (trained dictionaries included) before a FileNotFoundError traceback, and
    `--hook ../x` wrote the vectors beside the store. Both are refused in one line; nothing is touched."""
    cfg = _vectors_config(tmp_path)
    kept = tmp_path / "run" / "dicts" / "sae" / "model.safetensors"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"trained")
    for hook in ("..", "."):
        assert actdict_main(["harvest", str(cfg), f"harvest.vectors.hook={hook}"]) == 2
        assert "harvest.vectors.hook must be a non-empty name without '/', not starting with '.'" in (
            capsys.readouterr().err)
    assert kept.read_bytes() == b"trained"
    assert cli([str(tmp_path / "v.npy"), str(tmp_path / "s"), "--hook", "../x", "--overwrite"]) == 2
    assert "hook '../x' cannot name a folder of the store" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "s").exists()
    with pytest.raises(ConfigError, match="cannot name a folder of the store"):
        write_vectors(str(tmp_path / "run" / "store"), _x(), hook="..", overwrite=True)
    assert kept.read_bytes() == b"trained"


def test_analyze_texts_shows_each_vectors_row_its_text_from_a_parquet_column(tmp_path, capsys):
    """A store of your own vectors has no source to read texts from: analyze.texts names a file of one text
    per row (the parquet the vectors came from), and the features file, summary.json and report show them,
    HTML-escaped; a file of another row count, column or store is one line, before the pass."""
    x = np.random.default_rng(0).standard_normal((512, 8)).astype(np.float32)
    texts = [f"<b>review {i}</b> & more" for i in range(512)]
    pq.write_table(pa.table({"text": texts, "vec": list(x)}), tmp_path / "v.parquet")
    (tmp_path / "v.txt").write_text("\n".join(texts) + "\n")
    cfg = tmp_path / "v.yaml"
    cfg.write_text(f"""
run_dir: {tmp_path / 'run'}
harvest:
  mode: vectors
  vectors: {{path: {tmp_path / 'v.parquet'}, key: vec}}
  store_dtype: float32
  chunk_rows: 64
train: {{epochs: 1, batch_size: 64, test_fraction: 0.25, dicts: [{{name: sae_topk, variant: sae_topk, k: 8,
        params: {{topk: 2}}}}]}}
analyze: {{n_features: 3, top_k: 2, context: 0, texts: {tmp_path / 'v.parquet'}}}
""")
    assert actdict_main(["run", str(cfg)]) == 0
    run = tmp_path / "run"
    feats = json.loads((run / "features" / "sae_topk.json").read_text())
    shown = {h[1] for f in feats["features"] for h in f["top"]}
    got = {int(r): t for r, t in feats["texts"].items()}  # the rows shown: top, bottom, sampled
    assert shown and shown <= set(got) and all(t == texts[r] for r, t in got.items())
    top = json.loads((run / "summary.json").read_text())["models"]["sae_topk"]["features"][0]["top"][0]
    assert top["text"] == texts[top["row"]]
    page = (run / "report.html").read_text()  # the overview's top contexts: the texts, escaped
    assert f"&lt;b&gt;review {top['row']}&lt;/b&gt; &amp; more" in page and "<b>review" not in page
    assert actdict_main(["analyze", str(cfg), f"analyze.texts={tmp_path / 'v.txt'}"]) == 0
    assert json.loads((run / "features" / "sae_topk.json").read_text())["texts"] == feats["texts"]
    pq.write_table(pa.table({"text": texts[:500]}), tmp_path / "short.parquet")
    capsys.readouterr()
    short = f"analyze.texts={tmp_path / 'short.parquet'}"
    for bad, msg in ((short, "holds 500 texts, the store has 512 rows"),
                     ("analyze.texts_column=vec", "no string column 'vec' (its string columns: ['text']"),
                     ("analyze.texts_column=body", "no string column 'body' (its string columns: ['text']; "
                                                   "all its columns: ['text', 'vec'])")):
        assert actdict_main(["analyze", str(cfg), bad]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1


def test_a_refused_first_import_leaves_no_empty_run_folder(tmp_path, capsys):
    """The store folder the import's lock made went, but not the run folder made with it: every refused first
    harvest or import (a NaN row, an unreachable model) left an empty runs/NAME behind."""
    cfg = _vectors_config(tmp_path)
    x = _x(1)
    x[3, 0] = np.nan
    np.save(tmp_path / "v.npy", x)
    assert actdict_main(["harvest", str(cfg), f"run_dir={tmp_path / 'new' / 'run'}"]) == 2
    assert "row 3 holds NaN or inf" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()  # the folders it made, not only the store
    (tmp_path / "kept").mkdir()
    assert cli([str(tmp_path / "v.npy"), str(tmp_path / "kept" / "a" / "store")]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept", "v.npy", "v.yaml"]  # kept stays
    assert list((tmp_path / "kept").iterdir()) == []


def test_a_store_path_that_is_a_file_is_one_line_and_the_file_is_kept(tmp_path, capsys):
    """The two arguments swapped, or a store named by a file: a NotADirectoryError traceback (after notes
    that the lock could not be made), from the import's command line and from a config's harvest."""
    np.save(tmp_path / "v.npy", _x(0))
    (tmp_path / "texts.txt").write_text("a\n")
    for store in ("texts.txt", "texts.txt/store"):
        assert cli([str(tmp_path / "v.npy"), str(tmp_path / store)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"import: StoreError: store {tmp_path / store}: {tmp_path / 'texts.txt'} is a file, "
                       "not a folder: name a folder for the store (store, run_dir)")
    cfg = _vectors_config(tmp_path)
    assert actdict_main(["harvest", str(cfg), f"store={tmp_path / 'texts.txt'}"]) == 2
    assert "texts.txt is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "texts.txt").read_text() == "a\n"


def test_vectors_in_shards_import_as_one_run_of_rows(tmp_path, capsys):
    """Embeddings written in parts (a folder, or a glob pattern): their rows one after the other in the sorted
    order of the paths, as one file of them all would give; another width, another format, nothing matched
    or a NaN row of a later part is one line naming the file."""
    x = np.random.default_rng(0).standard_normal((250, 6)).astype(np.float32)
    (tmp_path / "parts").mkdir()
    for i, (a, b) in enumerate(((0, 100), (100, 130), (130, 250))):
        np.save(tmp_path / "parts" / f"part-{i:03d}.npy", x[a:b])
    (tmp_path / "parts" / "README").write_text("not a vectors file")  # in the folder, not of FORMATS
    whole = import_vectors(tmp_path / "parts", str(tmp_path / "s1"), block_rows=64)
    np.testing.assert_array_equal(whole.read_rows(0, 250).acts, x)
    assert vector_rows(tmp_path / "parts") == 250 and "3 vectors files" in whole.manifest["corpus"]
    glob = str(tmp_path / "parts" / "part-00[02].npy")  # parts 0 and 2
    np.testing.assert_array_equal(import_vectors(glob, str(tmp_path / "s2")).read_rows(0, 220).acts,
                                  np.concatenate([x[:100], x[130:]]))
    assert cli([str(tmp_path / "parts" / "part-*.npy"), str(tmp_path / "s3")]) == 0
    assert "imported 250 vectors (d=6)" in capsys.readouterr().out
    np.save(tmp_path / "parts" / "part-003.npy", np.ones((5, 7), np.float32))
    with pytest.raises(VectorsError, match=r"part-003.npy: rows 0.. have width \(7,\), earlier rows 6"):
        import_vectors(tmp_path / "parts", str(tmp_path / "s4"))
    bad = np.ones((5, 6), np.float32)
    bad[2, 1] = np.nan
    np.save(tmp_path / "parts" / "part-003.npy", bad)
    with pytest.raises(VectorsError, match=r"part-003.npy: row 2 holds NaN or inf"):
        import_vectors(tmp_path / "parts", str(tmp_path / "s4"))
    (tmp_path / "parts" / "part-003.npy").unlink()
    pq.write_table(pa.table({"v": [[1.0] * 6]}), tmp_path / "parts" / "part-004.parquet")
    with pytest.raises(VectorsError, match=r"names files of several formats \['.npy', '.parquet'\]"):
        import_vectors(tmp_path / "parts", str(tmp_path / "s4"))
    with pytest.raises(VectorsError, match=r"vectors pattern '.*nothing-\*.npy' names no file"):
        import_vectors(str(tmp_path / "nothing-*.npy"), str(tmp_path / "s4"))
    assert not (tmp_path / "s4").exists()


def test_hidden_files_of_a_folder_of_parts_are_not_parts(tmp_path):
    """A folder of parts copied from a Mac holds '._part-000.npy' (AppleDouble metadata, not NumPy): skipped
    as a glob pattern skips it, for the vectors as for analyze.texts' folder of texts."""
    from actdict.analyze.textfile import check_texts

    x = np.random.default_rng(0).standard_normal((40, 3)).astype(np.float32)
    apple = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X"
    for d in ("parts", "texts"):
        (tmp_path / d).mkdir()
    for i in range(2):
        np.save(tmp_path / "parts" / f"part-{i:03d}.npy", x[20 * i:20 * i + 20])
        (tmp_path / "texts" / f"part-{i:03d}.txt").write_text("a\nb\n" * 10)
        for f in (f"parts/._part-{i:03d}.npy", f"texts/._part-{i:03d}.txt"):
            (tmp_path / f).write_bytes(apple)
    s = import_vectors(tmp_path / "parts", str(tmp_path / "s"))
    np.testing.assert_array_equal(s.read_rows(0, 40).acts, x)
    assert [f.name for f in check_texts(str(tmp_path / "texts"), 40)] == ["part-000.txt", "part-001.txt"]


def test_a_complete_import_of_parts_since_deleted_stays_usable(tmp_path, capsys):
    """The parts a pattern or folder named, deleted after their import (disk space), leave the store complete,
    as a deleted single file does: the harvest skips it instead of stopping at 'names no file'."""
    cfg = _vectors_config(tmp_path)
    (tmp_path / "parts").mkdir()
    for i, path in enumerate((tmp_path / "parts" / "part-*.npy", tmp_path / "parts", tmp_path / "v.npy")):
        np.save(tmp_path / "parts" / "part-0.npy", _x(1))
        over = [f"harvest.vectors.path={path}", f"run_dir={tmp_path / f'run{i}'}"]
        assert actdict_main(["harvest", str(cfg), *over]) == 0
        for f in (tmp_path / "parts" / "part-0.npy", tmp_path / "v.npy"):
            f.unlink()
        capsys.readouterr()
        assert actdict_main(["harvest", str(cfg), *over]) == 0
        assert "already complete" in capsys.readouterr().out
        np.save(tmp_path / "v.npy", _x(1))


def test_a_file_or_folder_whose_name_holds_brackets_is_itself_not_a_pattern(tmp_path):
    """'emb[minilm].npy' was read as a glob pattern (one of m, i, n, l) since paths may be patterns, and an
    import of that existing file said 'vectors pattern ... names no file'; so did analyze.texts of
    'texts[v2].txt'. A path that exists is itself; one that does not is a pattern."""
    from actdict.analyze.textfile import check_texts

    x = _x(1)
    np.save(tmp_path / "emb[minilm].npy", x)
    (tmp_path / "parts [v2]").mkdir()
    np.save(tmp_path / "parts [v2]" / "part-0.npy", x)
    (tmp_path / "texts[v2].txt").write_text("a\n" * N)
    for path in (tmp_path / "emb[minilm].npy", tmp_path / "parts [v2]"):
        s = import_vectors(str(path), str(tmp_path / f"s{path.suffix}"))
        np.testing.assert_array_equal(s.read_rows(0, N).acts, x)
    assert check_texts(str(tmp_path / "texts[v2].txt"), N) == [tmp_path / "texts[v2].txt"]


def test_a_pattern_inside_a_folder_whose_name_holds_brackets_globs_that_folder(tmp_path):
    """'runs/exp[2]/*.npy' globbed 'runs/exp2/*.npy' (brackets: one of the characters): the parts of a
    neighbour folder 'exp2' were imported without a word, or none were ('names no file'); a text harvest's
    source.path likewise. The pattern's longest existing folder is now taken as it is named."""
    from actdict.harvest.sources import resolve_files

    x = _x(1)
    for folder, rows in (("exp[2]", x), ("exp2", x[:5])):
        (tmp_path / folder).mkdir()
        np.save(tmp_path / folder / "part-0.npy", rows)
        (tmp_path / folder / "a.txt").write_text("a")
    s = import_vectors(str(tmp_path / "exp[2]" / "*.npy"), str(tmp_path / "s"))
    np.testing.assert_array_equal(s.read_rows(0, len(s)).acts, x)  # 45 rows, not exp2's 5
    assert resolve_files(str(tmp_path / "exp[2]" / "*.txt")) == [tmp_path / "exp[2]" / "a.txt"]
    assert vector_files(tmp_path / "exp[[]2]" / "*.npy") == [tmp_path / "exp[2]" / "part-0.npy"]  # escaped
    both = [tmp_path / d / "part-0.npy" for d in ("exp2", "exp[2]")]
    assert vector_files(tmp_path / "exp*" / "*.npy") == both


def test_a_part_linked_to_a_file_that_is_gone_is_named_not_skipped(tmp_path):
    """Parts linked into a folder from scratch space, one of them since cleaned: the folder's (or pattern's)
    dangling link was skipped as no file, and 20 of 30 rows imported without a word. It is now named."""
    from actdict.analyze.textfile import check_texts

    (tmp_path / "real").mkdir()
    (tmp_path / "emb").mkdir()
    for i in range(3):
        np.save(tmp_path / "real" / f"part-{i}.npy", np.full((10, 4), i, np.float32))
        (tmp_path / "emb" / f"part-{i}.npy").symlink_to(tmp_path / "real" / f"part-{i}.npy")
    (tmp_path / "real" / "part-1.npy").unlink()
    for path in (tmp_path / "emb", tmp_path / "emb" / "*.npy"):
        gone = r"vectors file '.*emb/part-1.npy' does not exist \(a link to a file that is gone\)"
        with pytest.raises(VectorsError, match=gone):
            import_vectors(str(path), str(tmp_path / "s"))
        assert not (tmp_path / "s").exists()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x\n" * 20)
    (tmp_path / "texts" / "b.txt").symlink_to(tmp_path / "real" / "gone.txt")
    with pytest.raises(ValueError, match=r"texts/b.txt not found"):
        check_texts(str(tmp_path / "texts"), 20)


def test_parts_come_in_the_natural_order_of_their_numbers(tmp_path):
    """part-2 before part-10 (the parts of np.array_split or a dataframe's partitions, unpadded): a plain
    sort put part-10 second, and a texts file beside them would have named the wrong rows."""
    from actdict.files import natural_key

    x = np.arange(12 * 2, dtype=np.float32).reshape(12, 2)
    (tmp_path / "emb").mkdir()
    for i in range(12):
        np.save(tmp_path / "emb" / f"part-{i}.npy", x[i:i + 1])
    assert [f.name for f in vector_files(tmp_path / "emb")][:4] == ["part-0.npy", "part-1.npy", "part-2.npy",
                                                                     "part-3.npy"]
    s = import_vectors(str(tmp_path / "emb" / "part-*.npy"), str(tmp_path / "s"), chunk_rows=2, shard_rows=4)
    np.testing.assert_array_equal(s.read_rows(0, 12).acts, x)
    assert sorted(["a10b2", "a2b10", "a2b9", "a10b1"], key=lambda t: natural_key(Path(t))) == [
        "a2b9", "a2b10", "a10b1", "a10b2"]


def test_an_empty_part_adds_no_row_and_parts_of_no_row_are_refused(tmp_path):
    """np.array_split into more parts than rows, or an empty partition: an empty part stopped the whole
    import ('shape (0, 4) holds no vectors'); it now adds no row, and only an import of no row at all is
    refused."""
    (tmp_path / "emb").mkdir()
    x = np.arange(8 * 4, dtype=np.float32).reshape(8, 4)
    for i, part in enumerate(np.array_split(x, 10)):  # parts 8 and 9 hold no row
        np.save(tmp_path / "emb" / f"part-{i}.npy", part)
    s = import_vectors(tmp_path / "emb", str(tmp_path / "s"), chunk_rows=2, shard_rows=4)
    np.testing.assert_array_equal(s.read_rows(0, 8).acts, x)
    for i in range(8):
        np.save(tmp_path / "emb" / f"part-{i}.npy", np.zeros((0, 4), np.float32))
    with pytest.raises(VectorsError, match="holds no vectors"):
        import_vectors(tmp_path / "emb", str(tmp_path / "s2"))


def test_a_path_too_long_for_the_file_system_is_one_line(tmp_path, capsys):
    """A folder name over 255 bytes (or a path over 4,096) was an OSError traceback from the first look at
    the path; each command now says which name is too long (exit status 2)."""
    np.save(tmp_path / "v.npy", _x())
    long = tmp_path / ("L" * 256) / "store"
    assert cli([str(tmp_path / "v.npy"), str(long)]) == 2
    assert capsys.readouterr().err == ("import: ActdictError: a path is too long for the file system: the "
                                       f"name '{'L' * 60}'... is 256 bytes (at most 255); shorten it\n")
    cfg = tmp_path / "v.yaml"
    cfg.write_text(f"harvest: {{mode: vectors, vectors: {{path: {tmp_path / 'v.npy'}}}}}\n")
    deep = "/".join(["d" * 200] * 21)
    assert actdict_main(["harvest", str(cfg), f"run_dir={tmp_path / deep}"]) == 2
    assert "path is too long for the file system: the path '" in capsys.readouterr().err
    assert actdict_main(["summary", str(long)]) == 2 and "the name 'LLL" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.npy", "v.yaml"]  # nothing made


def test_a_folder_of_parts_with_names_that_are_not_utf8(tmp_path):
    """Part files named in Latin-1 (b'caf\\xe9-1.npy': lone surrogates in Python) stopped the config's import
    with a UnicodeEncodeError traceback from the files' fingerprint; they are imported, and the fingerprint
    of UTF-8 names is as it was."""
    import os

    from actdict.harvest.sources import files_fingerprint

    x = _x()
    (tmp_path / "parts").mkdir()
    for i, part in enumerate((x[:20], x[20:])):
        np.save(tmp_path / "parts" / os.fsdecode(b"caf\xe9-%d.npy" % (i + 1)), part)
    cfg = tmp_path / "v.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\nharvest: {{mode: vectors, store_dtype: float32, "
                   f"chunk_rows: 8, shard_rows: 16, vectors: {{path: {tmp_path / 'parts'}}}}}\n")
    assert actdict_main(["harvest", str(cfg)]) == 0
    np.testing.assert_array_equal(open_store(str(tmp_path / "run" / "store")).read_rows(0, N).acts, x)
    (tmp_path / "a.txt").write_text("a")
    st = (tmp_path / "a.txt").stat()
    import hashlib

    want = hashlib.sha256(f"{tmp_path / 'a.txt'}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()).hexdigest()[:16]
    assert files_fingerprint([tmp_path / "a.txt"]) == want


def test_a_key_given_for_a_npy_file_is_refused_not_ignored(tmp_path):
    """A .npy file holds one array: key (meant for an .npz, or a safetensors file converted since) was
    ignored and the array imported; now the import names it and writes nothing."""
    np.save(tmp_path / "v.npy", np.ones((64, 3), np.float32))
    said = r"v.npy: a .npy file holds one array, and key \('emb'\) names a safetensors tensor"
    with pytest.raises(VectorsError, match=said):
        import_vectors(tmp_path / "v.npy", str(tmp_path / "s"), key="emb")
    assert not (tmp_path / "s" / "vectors" / "manifest.json").exists()
    assert import_vectors(tmp_path / "v.npy", str(tmp_path / "s"))  # without the key
