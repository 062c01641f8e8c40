"""The vectors import's command and writes: layouts, refusals in one line, nothing half-written left."""

import shutil

import numpy as np
import pytest

from actdict.cli import main as actdict_main
from actdict.config import ConfigError
from actdict.harvest.store import StoreError, open_store, write_vectors
from actdict.harvest.vector_read import VectorsError
from actdict.harvest.vectors import cli, import_vectors
from actdict.harvest.writer import chunk_rows_for, default_layout
from tests.vectors_helpers import SMALL, D, N, _check_store, _vectors_config, _x


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


def test_an_import_shows_its_rows_on_a_terminal_only(tmp_path, capsys, monkeypatch):
    """An import (a Yelp-sized file: a minute or more) was silent until its last line; a terminal now sees a
    bar of the rows written, over blocks of 16 here; a log file only that last line."""
    import io
    import sys

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    np.save(tmp_path / "v.npy", _x())
    assert cli([str(tmp_path / "v.npy"), str(tmp_path / "s")]) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys, "stderr", tty := Tty())
    assert len(import_vectors(tmp_path / "v.npy", str(tmp_path / "s2"), block_rows=16)) == N
    last = tty.getvalue().split("\r")[-1]
    assert last.startswith("import: 100%|") and f"| {N}.0/{N}.0 [" in last  # rows, unit_scale'd


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


def test_store_listing_piped_into_head_exits_quietly(tmp_path):
    """`actdict store PATH | head -1`: the reader leaves early; no BrokenPipeError traceback on stderr."""
    from tests.pipes import into_head

    np.save(tmp_path / "v.npy", _x())
    for h in range(40):  # --verify: still listing when head has left
        import_vectors(tmp_path / "v.npy", str(tmp_path / "s"), hook=f"h{h:02d}", **SMALL)
    r = into_head("store", str(tmp_path / "s"), "--verify")
    assert r.stdout.startswith("h00: 45 rows x d 6 float32") and r.stdout.count("\n") == 1
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



def test_a_damaged_shard_of_imported_vectors_names_no_harvest_to_rerun(tmp_path):
    """--verify (and a read) of vectors written without a config said to rerun 'the harvest command that
    made the store' and that it 'writes only the damaged shards': there is none; the repair prints the
    import command. A token harvest's store is told that still (tests/test_store_integrity.py)."""
    x = np.random.default_rng(0).standard_normal((300, 4)).astype(np.float32)
    s = write_vectors(str(tmp_path / "st"), x, shard_rows=128, chunk_rows=64, dtype="float32")
    chunk = next(p for p in (tmp_path / "st" / "vectors" / "shards" / "00001" / "acts").rglob("*")
                 if p.is_file() and p.name != "zarr.json")
    b = bytearray(chunk.read_bytes())
    b[10] ^= 1
    chunk.write_bytes(bytes(b))
    with pytest.raises(StoreError) as e:
        s.verify()
    said = str(e.value)
    assert said.endswith(f"; restore the shard from a copy, or run `actdict store {tmp_path / 'st'} "
                         "--repair`, which prints the command that imports these vectors again (no harvest "
                         "wrote them)")
    assert "harvest command" not in said


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


def test_an_import_out_of_open_files_is_one_line_naming_the_limit(tmp_path):
    """python -m actdict.harvest.vectors under a low limit of open files (ulimit -n 12) ended in an
    'OSError: [Errno 24] Too many open files' traceback: one line now, naming the limit and what to do."""
    import subprocess
    import sys

    np.save(tmp_path / "v.npy", np.ones((4096, 8), np.float32))
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (12, 12)); "
            "from actdict.harvest.vectors import cli; sys.exit(cli(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "v.npy"), str(tmp_path / "s"),
                        "--chunk-rows", "64"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.startswith("import: ActdictError: Too many open files opening ")
    assert r.stderr.rstrip().endswith("this process may hold 12 files open at once, its hard limit too "
                                      "(ulimit -Hn): run it from a shell with a higher limit (limits.conf, "
                                      "systemd's LimitNOFILE)")


def test_a_failed_write_spelled_with_dotdot_keeps_an_empty_folder_it_did_not_make(tmp_path):
    """write_vectors guessed the folders it would make from the path as spelled: 'new/../x/store' with x/
    already there (empty) listed new/.. and new/../x as missing (new/ was not there to resolve them), and a
    failed write removed x/, a folder it never made. Now it records each folder it makes."""
    (tmp_path / "x").mkdir()
    x = _x(0)
    x[5, 1] = np.inf
    with pytest.raises(ValueError, match="row 5"):
        write_vectors(str(tmp_path / "new" / ".." / "x" / "store"), x)
    assert (tmp_path / "x").is_dir() and list((tmp_path / "x").iterdir()) == []  # kept, as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # new/ and the store it made: gone


def test_the_import_s_lines_print_a_file_name_s_control_characters_as_escapes(tmp_path, capsys):
    """``python -m actdict.harvest.vectors`` printed the names it was given as they are, so a file or store
    name holding ESC ] 0 (the terminal's title) or ESC [ 2J (a cleared screen) reached the terminal raw, on
    stderr in its error line and on stdout in its 'imported' line; each is now written as escapes."""
    title, clear = "\x1b]0;pwned\x07", "\x1b[2J"
    np.save(tmp_path / f"cube{title}.npy", np.zeros((2, 2, 2)))
    assert cli([str(tmp_path / f"cube{title}.npy"), str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("import: VectorsError: ") and "cube\\x1b]0;pwned\\x07.npy" in err
    assert "\x1b" not in err and "\x07" not in err
    np.save(tmp_path / f"v{clear}.npy", _x(8))
    assert cli([str(tmp_path / f"v{clear}.npy"), str(tmp_path / f"s{clear}")]) == 0
    assert capsys.readouterr().out == f"imported {N:,} vectors (d {D}) into {tmp_path}/s\\x1b[2J/vectors\n"


def test_a_vectors_harvest_prints_the_config_s_names_with_escapes(tmp_path, capsys):
    """The ``harvest.mode: vectors`` stage's lines (imported, skipped) name the config's vectors file and
    store: a control character in them is written as an escape, not sent to the terminal."""
    np.save(tmp_path / "v\x1b[2J.npy", _x(1))
    cfg = tmp_path / "v.yaml"
    cfg.write_text(f'run_dir: "{tmp_path}/run\\e[2J"\nharvest: {{mode: vectors, vectors: {{path: '
                   f'"{tmp_path}/v\\e[2J.npy"}}, store_dtype: float32, shard_rows: 16, chunk_rows: 8}}\n')
    assert actdict_main(["harvest", str(cfg)]) == 0
    assert actdict_main(["harvest", str(cfg)]) == 0  # complete: skipped
    out = capsys.readouterr().out
    assert "\x1b" not in out and out.count("\\x1b[2J") == 3, out
    assert f"from {tmp_path}/v\\x1b[2J.npy into {tmp_path}/run\\x1b[2J/store/vectors" in out
