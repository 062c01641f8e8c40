"""The zarr activation store's writes and reads: exact round trips, dtypes, shard and chunk bounds."""

import os
import re
import warnings

import numpy as np
import pytest

from actdict.harvest.store import (
    Rows,
    StoreError,
    StoreWriter,
    list_hooks,
    open_store,
    write_vectors,
)
from actdict.harvest.writer import NonFiniteError
from tests.store_helpers import CHUNK, MANIFEST, SHARD, D, _data, _write


def test_float32_round_trip_is_bit_exact(tmp_path):
    x, tok, doc, pos = _write(tmp_path)
    s = open_store(str(tmp_path))
    assert (len(s), s.d, s.chunk_rows, s.num_shards) == (45, 3, 4, 3)
    r = s.read_rows(0, len(s))
    assert isinstance(r, Rows) and len(r) == 45
    assert r.acts.dtype == np.float32 and r.acts.tobytes() == x.tobytes()
    assert r.token_ids.dtype == np.int32 and np.array_equal(r.token_ids, tok)
    assert r.doc.dtype == np.int64 and np.array_equal(r.doc, doc)
    assert r.pos.dtype == np.int32 and np.array_equal(r.pos, pos)


def test_float16_store_equals_cast(tmp_path):
    x, *_ = _write(tmp_path, dtype="float16")
    r = open_store(str(tmp_path)).read_rows(0, 45)
    assert r.acts.dtype == np.float32
    np.testing.assert_array_equal(r.acts, x.astype(np.float16).astype(np.float32))


def test_read_rows_spanning_shards_equals_concatenation(tmp_path):
    x, tok, *_ = _write(tmp_path)
    s = open_store(str(tmp_path))
    for a, b in [(14, 18), (3, 40), (15, 16), (16, 32), (0, 45), (44, 45), (20, 20)]:
        r = s.read_rows(a, b)
        assert len(r) == b - a and r.acts.shape == (b - a, D)
        np.testing.assert_array_equal(r.acts, x[a:b])
        np.testing.assert_array_equal(r.token_ids, tok[a:b])
    with pytest.raises(IndexError):
        s.read_rows(40, 46)


def test_chunk_bounds_cover_all_rows_exactly(tmp_path):
    x, *_ = _write(tmp_path)
    s = open_store(str(tmp_path))
    bounds = [s.chunk_bounds(i) for i in range(s.num_chunks)]
    # shards 16, 16, 13 rows -> 4 + 4 + 4 chunks; the last chunk of the last shard has 1 row
    assert s.num_chunks == 12
    assert bounds[:5] == [(0, 4), (4, 8), (8, 12), (12, 16), (16, 20)]
    assert bounds[-1] == (44, 45)
    assert bounds[0][0] == 0 and bounds[-1][1] == 45
    assert all(b[1] == nxt[0] for b, nxt in zip(bounds[:-1], bounds[1:], strict=True))
    assert sum(b - a for a, b in bounds) == 45
    np.testing.assert_array_equal(np.concatenate([s.read_chunk(i).acts for i in range(12)]), x)
    with pytest.raises(IndexError):
        s.chunk_bounds(12)


def test_manifest_fields(tmp_path):
    _write(tmp_path, dtype="float16")
    m = open_store(str(tmp_path)).manifest
    for key in ("model", "revision", "hook", "dtype", "d", "numerics", "tokenizer", "corpus", "config_hash",
                "shard_rows", "chunk_rows", "format_version", "complete", "n_rows"):
        assert key in m, key
    assert (m["d"], m["dtype"], m["n_rows"], m["complete"], m["shard_rows"], m["chunk_rows"]) == (
        3, "float16", 45, True, 16, 4)
    assert m["model"] == "toy" and m["corpus"] == {"fixture": 1}


def test_incomplete_store_is_refused_unless_partial(tmp_path):
    x, tok, doc, pos = _data()
    with pytest.raises(KeyboardInterrupt):
        with StoreWriter(str(tmp_path), MANIFEST | {"hook": "h"}, d=D, dtype="float32", shard_rows=SHARD,
                         chunk_rows=CHUNK) as w:
            w.append(x[:40], tok[:40], doc[:40], pos[:40])  # 2 full shards flushed, 8 rows buffered
            raise KeyboardInterrupt
    with pytest.raises(StoreError, match="incomplete"):
        open_store(str(tmp_path))
    s = open_store(str(tmp_path), allow_partial=True)
    assert len(s) == 32
    np.testing.assert_array_equal(s.read_rows(0, 32).acts, x[:32])


def test_temporary_shard_is_invisible(tmp_path):
    x, *_ = _write(tmp_path)
    shards = tmp_path / "blocks.0.hook_resid_post" / "shards"
    os.makedirs(shards / ".tmp-00003-deadbeef" / "acts")  # a writer that died mid-shard
    (shards / ".tmp-00003-deadbeef" / "acts" / "junk").write_bytes(b"xx")
    s = open_store(str(tmp_path))
    assert len(s) == 45 and s.num_shards == 3
    np.testing.assert_array_equal(s.read_rows(0, 45).acts, x)


def test_hooks_errors_list_valid_hooks(tmp_path):
    _write(tmp_path, hook="blocks.1.hook_resid_post")
    _write(tmp_path, hook="blocks.3.hook_resid_post")
    assert list_hooks(str(tmp_path)) == ["blocks.1.hook_resid_post", "blocks.3.hook_resid_post"]
    with pytest.raises(StoreError, match=r"name one of.*blocks\.1\.hook_resid_post"):
        open_store(str(tmp_path))
    with pytest.raises(StoreError, match=r"no hook 'blocks\.2'.*blocks\.1\.hook_resid_post.*blocks\.3"):
        open_store(str(tmp_path), "blocks.2")
    assert len(open_store(str(tmp_path), "blocks.3.hook_resid_post")) == 45
    with pytest.raises(StoreError, match="no activation store"):
        open_store(str(tmp_path / "nowhere"))
    own = open_store(str(tmp_path / "blocks.3.hook_resid_post"))  # the hook's folder, as its repr shows
    assert (own.hook, len(own), own.path) == ("blocks.3.hook_resid_post", 45, str(tmp_path))
    with pytest.raises(StoreError, match="no activation store"):  # its folder with another hook named
        open_store(str(tmp_path / "blocks.3.hook_resid_post"), "blocks.1.hook_resid_post")


def test_existing_hook_is_not_overwritten_silently(tmp_path):
    _write(tmp_path)
    with pytest.raises(StoreError, match="already exists"):
        _write(tmp_path)
    _write(tmp_path, overwrite=True)
    assert len(open_store(str(tmp_path))) == 45


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="multiple"):
        StoreWriter(str(tmp_path), {"hook": "h"}, d=3, shard_rows=10, chunk_rows=4)
    w = StoreWriter(str(tmp_path), {"hook": "h"}, d=3, shard_rows=8, chunk_rows=4)
    with pytest.raises(ValueError, match=r"shape \[n, 3\]"):
        w.append(np.zeros((2, 4)), [0, 0], [0, 0], [0, 0])
    with pytest.raises(ValueError, match="beyond float16's range"):
        w.append(np.full((2, 3), 1e6), [0, 0], [0, 0], [0, 0])


def test_write_vectors(tmp_path):
    x = np.random.default_rng(1).standard_normal((10, 5))  # float64 input
    s = write_vectors(str(tmp_path), x, shard_rows=4, chunk_rows=2)
    assert s.manifest["hook"] == "vectors" and s.manifest["dtype"] == "float32"
    r = s.read_rows(0, 10)
    np.testing.assert_array_equal(r.acts, x.astype(np.float32))
    np.testing.assert_array_equal(r.token_ids, np.full(10, -1))
    np.testing.assert_array_equal(r.doc, np.arange(10))
    np.testing.assert_array_equal(r.pos, np.zeros(10))
    assert s.num_chunks == 5


def test_write_vectors_takes_torch_tensors(tmp_path):
    """A bfloat16 tensor that requires grad (numpy refuses both) and an iterator of tensor blocks."""
    import torch

    x = torch.randn(10, 5, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16).requires_grad_()
    s = write_vectors(str(tmp_path / "a"), x, shard_rows=4, chunk_rows=2)
    np.testing.assert_array_equal(s.read_rows(0, 10).acts, x.detach().float().numpy())
    assert s.manifest["numerics"] == "user vectors (bfloat16), stored float32"  # as the file import says
    s = write_vectors(str(tmp_path / "b"), iter(x.detach().split(4)), shard_rows=4, chunk_rows=2)
    np.testing.assert_array_equal(s.read_rows(0, 10).acts, x.detach().float().numpy())
    assert s.manifest["numerics"] == "user vectors (bfloat16), stored float32"
    s = write_vectors(str(tmp_path / "c"), iter(x.detach().half().split(4)), shard_rows=4, chunk_rows=2)
    assert s.manifest["numerics"] == "user vectors (float16), stored float32"


def test_local_folder_names_that_look_like_urls(tmp_path):
    """A local path holding '::' (fsspec's chain of URLs) is that folder: it was written to and read from
    'runs/a' for 'runs/a::b/store'; '#', '?', '%' and ':' stay as they are too."""
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    for name in ("a::b", "c#1", "d?e", "50%", "f:g"):
        s = write_vectors(str(tmp_path / name / "store"), x, shard_rows=4, chunk_rows=2)
        assert (tmp_path / name / "store" / "vectors" / "manifest.json").is_file()
        np.testing.assert_array_equal(open_store(str(tmp_path / name / "store")).read_rows(0, 10).acts, x)
        s.verify()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["50%", "a::b", "c#1", "d?e", "f:g"]


def test_fsspec_url(tmp_path):
    url = f"memory://actdict-test-{tmp_path.name}"  # any fsspec filesystem; memory needs no setup
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    s = write_vectors(url, x, shard_rows=4, chunk_rows=2)
    assert list_hooks(url) == ["vectors"]
    np.testing.assert_array_equal(s.read_rows(3, 9).acts, x[3:9])
    s.verify()


def test_bfloat16_is_torch_rounding_and_keeps_range(tmp_path):
    import torch

    rng = np.random.default_rng(2)
    x = np.concatenate([rng.standard_normal((40, 3)) * 10.0 ** rng.integers(-8, 30, (40, 1)),
                        np.array([[1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8)]])]).astype(np.float32)  # ties
    s = write_vectors(str(tmp_path), x, dtype="bfloat16", shard_rows=16, chunk_rows=4)
    got = s.read_rows(0, len(x)).acts
    assert got.dtype == np.float32 and s.manifest["dtype"] == "bfloat16"
    np.testing.assert_array_equal(got, torch.from_numpy(x).to(torch.bfloat16).float().numpy())
    assert np.abs(got).max() > 1e25  # beyond float16's range
    assert s.read_rows(0, 5, raw=True).acts.dtype == np.float32
    s.verify()


def test_bfloat16_refuses_every_nan(tmp_path):
    for bits in (0x7FFFFFFF, 0xFFFFFFFF):  # NaNs whose rounding carried into the sign (-0.0) or out (0.0)
        x = np.ones((3, 2), np.float32)
        x.view(np.uint32)[1, 1] = bits
        with pytest.raises(NonFiniteError, match="row 1 holds NaN or inf"):
            write_vectors(str(tmp_path), x, dtype="bfloat16")
        assert not (tmp_path / "vectors").exists()


@pytest.mark.parametrize("url", [False, True])
def test_chunk_files_are_byte_identical_to_zarr(tmp_path, url):
    """layout.write_chunks writes each chunk file exactly as zarr v3 writes it (bytes + crc32c, last chunk
    padded with the fill value), on a local disk and through fsspec (memory://); so zarr reads them back
    and checks their crc32c (every store test reads shards written this way)."""
    import zarr
    from zarr.codecs import Crc32cCodec

    from actdict.harvest.layout import fs_of, write_chunks

    x, tok, doc, pos = _data(n=45, d=5)
    for i, arr in enumerate((x.astype(np.float16), x, tok, doc, pos)):
        ref = tmp_path / f"zarr-{i}"
        z = zarr.create_array(str(ref), shape=arr.shape, chunks=(CHUNK, *arr.shape[1:]), dtype=arr.dtype,
                              compressors=[Crc32cCodec()], fill_value=0, zarr_format=3)
        z[...] = arr
        base = f"memory://actdict-chunks-{tmp_path.name}" if url else str(tmp_path)
        fs, where = fs_of(f"{base}/ours-{i}")
        write_chunks(fs, where, arr, CHUNK)
        want = {p.relative_to(ref).as_posix(): p.read_bytes() for p in ref.rglob("*")
                if p.is_file() and p.name != "zarr.json"}
        got = {f.split(f"ours-{i}/", 1)[1]: fs.cat_file(f) for f in fs.find(where)}
        assert len(want) == 12 and got == want  # ceil(45 / 4) chunks


@pytest.mark.parametrize("dtype", ["float16", "float32", "bfloat16"])
def test_read_acts_reads_the_chunk_file_as_read_chunk_does(tmp_path, dtype, monkeypatch):
    _write(tmp_path, dtype=dtype)
    s = open_store(str(tmp_path))
    want = [s.read_chunk(i, raw=True).acts for i in range(s.num_chunks)]  # through zarr
    monkeypatch.setattr(s, "read_chunk", None)  # the local fast path must not go through zarr
    for i, w in enumerate(want):
        got = s.read_acts(i)
        assert got.dtype == w.dtype and got.shape == w.shape and got.tobytes() == w.tobytes()
        buf = np.full((len(w) + 2, D), np.nan, s.acts_dtype)  # into rows 1.. of a bigger array, in place
        assert s.read_acts(i, out=buf[1:-1]) is not None and buf[1:-1].tobytes() == w.tobytes()
        assert np.isnan(buf[[0, -1]]).all()  # nothing written outside out
    assert sum(len(w) for w in want) == 45
    assert want[0].dtype == (np.float16 if dtype == "float16" else np.float32)


def test_float64_vectors_round_once_to_float16(tmp_path):
    """float64 input is rounded to float16 directly, as numpy's cast does: not through float32 (a double
    rounding that turns 1 + 2**-11 + 2**-40 into 1.0 instead of 1 + 2**-10)."""
    x = np.array([[1 + 2**-11 + 2**-40, -(1 + 2**-11 + 2**-40), 3.0]])
    r = write_vectors(str(tmp_path), x, dtype="float16").read_rows(0, 1)
    np.testing.assert_array_equal(r.acts, x.astype(np.float16).astype(np.float32))
    assert r.acts[0, 0] == 1 + 2**-10


def test_non_finite_rows_are_refused_in_every_dtype_by_their_global_row(tmp_path):
    """A NaN or inf row is refused whatever the stored dtype (bfloat16 is stored as uint16 bits, which are
    always "finite"), and the error names the row's index in the whole store."""
    for dtype in ("float16", "float32", "bfloat16"):
        w = StoreWriter(str(tmp_path / dtype), {"hook": "h"}, d=2, dtype=dtype, shard_rows=8, chunk_rows=4)
        w.append(np.ones((10, 2)), np.zeros(10), np.zeros(10), np.zeros(10))  # a whole shard and 2 rows
        for bad in (float("nan"), float("inf")):
            x = np.ones((3, 2))
            x[1, 0] = bad
            with pytest.raises(ValueError, match=r"row 11 holds NaN or inf"):
                w.append(x, np.zeros(3), np.zeros(3), np.zeros(3))


def test_write_vectors_keeps_the_last_row_alone_in_its_shard(tmp_path):
    x = np.arange(18, dtype=np.float32).reshape(9, 2)  # two shards of 4 rows and one of 1
    s = write_vectors(str(tmp_path), x, shard_rows=4, chunk_rows=2)
    assert len(s) == 9 and s.num_shards == 3
    np.testing.assert_array_equal(s.read_rows(0, 9).acts, x)
    np.testing.assert_array_equal(s.read_rows(0, 9).doc, np.arange(9))


def test_read_rows_refuses_rows_past_the_end(tmp_path):
    _write(tmp_path)
    s = open_store(str(tmp_path))
    assert len(s.read_rows(45, 45)) == 0 and len(s.read_rows(40, 45)) == 5
    for start, stop in ((0, 46), (44, 46), (46, 46), (-1, 3), (5, 4)):
        with pytest.raises(IndexError, match="out of range"):
            s.read_rows(start, stop)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_float64_beyond_float32_is_refused_without_a_numpy_warning(tmp_path, dtype):
    """float64 rows past float32's range are one clear error naming the row (the cast's overflow is the
    check's business, not a RuntimeWarning printed beside it)."""
    x = np.ones((6, 3))
    x[4, 1] = 1e300
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(NonFiniteError, match=rf"row 4 has values beyond {dtype}'s range"):
            write_vectors(str(tmp_path), x, dtype=dtype, shard_rows=4, chunk_rows=2)


def test_a_hook_folder_in_the_home_folder_opens(tmp_path, monkeypatch):
    """`~/s/b`, a hook's own folder, opens as `~/s` with hook b does: fsspec reads '~' as the home folder,
    and the hook-folder lookup (os.path) took it for a folder named '~' under the current one, so a store
    that opened by its root was 'no activation store at ~/s/b'."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "home" / "s", hook="b")
    assert len(open_store("~/s", "b")) == 45
    s = open_store("~/s/b")
    assert (s.hook, len(s)) == ("b", 45)
    with pytest.raises(StoreError, match=re.escape(f"no activation store at ~/t ({tmp_path}/home/t)")):
        open_store("~/t")


def test_read_meta_is_read_rows_without_the_activations(tmp_path, monkeypatch):
    """read_meta gives read_rows' token ids, docs and positions (across shards, float16 and bfloat16) and
    opens no activation array: analysis reads the contexts of its hits with it."""
    g = np.random.default_rng(0)
    for dtype in ("float16", "bfloat16"):
        n = 300
        with StoreWriter(str(tmp_path / dtype), {"hook": "h"}, 4, dtype, 128, 64) as w:
            w.append(g.standard_normal((n, 4)).astype(np.float32), g.integers(0, 999, n), np.arange(n) // 7,
                     np.arange(n) % 7)
        s = open_store(str(tmp_path / dtype))
        rows = s.read_rows(100, 290)
        opened, real = [], s._group

        class Spy(dict):  # a shard's open arrays, recording which are read
            def __getitem__(self, key, opened=opened):
                opened.append(key)
                return super().__getitem__(key)

        monkeypatch.setattr(s, "_group", lambda i, real=real: Spy(real(i)))
        tok, doc, pos = s.read_meta(100, 290)  # shards 0, 1 and 2
        assert tok.dtype == np.int32 and doc.dtype == np.int64 and pos.dtype == np.int32
        assert tok.tolist() == rows.token_ids.tolist() and doc.tolist() == rows.doc.tolist()
        assert pos.tolist() == rows.pos.tolist() and opened and "acts" not in opened
        assert [len(a) for a in s.read_meta(5, 5)] == [0, 0, 0]


def test_a_store_url_fsspec_cannot_open_is_one_line(tmp_path, capsys):
    """A protocol fsspec does not know (a typo: `s4://`), or one whose package is missing (gs:// without
    gcsfs), was a traceback (ValueError: Protocol not known; ImportError) from every stage and tool."""
    import importlib.util

    from actdict.cli import main
    from actdict.harvest.layout import StoreError, fs_of

    with pytest.raises(StoreError, match=r"^store s4://b/acts cannot be opened: Protocol not known: s4 \("):
        fs_of("s4://b/acts")
    (tmp_path / "c.yaml").write_text(f"run_dir: {tmp_path / 'run'}\nstore: s4://b/acts\n")
    assert main(["train", str(tmp_path / "c.yaml")]) == 2
    assert capsys.readouterr().err.startswith("actdict: StoreError: store s4://b/acts cannot be opened: ")
    assert main(["store", "s4://b/acts"]) == 2
    assert "store s4://b/acts cannot be opened" in "".join(capsys.readouterr())
    if importlib.util.find_spec("gcsfs") is None:
        with pytest.raises(StoreError, match=r"^store gs://b/acts cannot be opened: .*install gcsfs"):
            fs_of("gs://b/acts")


def test_a_store_is_written_where_a_flush_needs_a_handle_that_may_write(tmp_path, monkeypatch):
    """Windows flushes a file only through a handle opened for writing (FlushFileBuffers; its os.fsync of
    a read-only one fails with EBADF), and has no fdatasync nor posix_fadvise: every shard's flush failed
    there, so no harvest could write a store. Simulated here with an fsync that refuses read-only fds."""
    import errno

    from actdict.harvest import layout

    fcntl = pytest.importorskip("fcntl")  # to tell a read-only fd: POSIX systems
    monkeypatch.setattr(layout, "FLUSH_NEEDS_WRITE", True, raising=False)
    monkeypatch.delattr(os, "fdatasync")
    monkeypatch.delattr(os, "posix_fadvise")
    flushed = []

    def fsync(fd: int) -> None:  # as Windows' _commit
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, "Bad file descriptor")
        flushed.append(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    x = np.arange(20, dtype=np.float32).reshape(10, 2)  # [10, 2]
    s = write_vectors(str(tmp_path / "s"), x, shard_rows=4, chunk_rows=2)
    assert (len(s), s.num_shards) == (10, 3)
    assert s.read_rows(0, 10).acts.tobytes() == x.tobytes()
    assert len(flushed) == 5 * 4  # every chunk file (2 + 2 + 1 chunks) of acts, token_ids, doc and pos


def test_a_store_reads_the_same_rows_in_a_spawned_process(tmp_path):
    """macOS and Windows start worker processes by spawning (a DataLoader's workers, multiprocessing): the
    store goes to them pickled, its open arrays left behind (``__getstate__``), and reads the same rows."""
    import multiprocessing

    x = np.arange(40, dtype=np.float32).reshape(20, 2)  # [20, 2]
    s = write_vectors(str(tmp_path / "s"), x, shard_rows=4, chunk_rows=2)
    s.read_rows(0, 9)  # arrays of the first shards opened here
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        acts = pool.apply(_read_acts, (s, 3, 17))
    assert acts.tobytes() == x[3:17].tobytes()


def _read_acts(store, a: int, b: int) -> np.ndarray:  # module level: a spawned process imports it by name
    return store.read_rows(a, b).acts
