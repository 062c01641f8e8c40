"""Vectors in parts (a folder, a glob pattern): their order, hidden files, links, odd names."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actdict.cli import main as actdict_main
from actdict.harvest.store import open_store
from actdict.harvest.vector_read import VectorsError, vector_files, vector_rows
from actdict.harvest.vectors import cli, import_vectors
from tests.vectors_helpers import N, _vectors_config, _x


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
    assert "imported 250 vectors (d 6)" in capsys.readouterr().out
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


def test_parts_of_several_dtypes_are_each_named_in_the_manifest(tmp_path):
    """Parts of mixed dtypes (float32, then float16 and int16; bfloat16 and float16) are one run of rows, each
    block stored in the store's dtype; the manifest named the first part's dtype only. It names each part's
    dtype, in the order of the parts; parts of one dtype keep the one name."""
    import torch
    from safetensors.torch import save_file

    (tmp_path / "npy").mkdir()
    r = np.random.default_rng(0)
    for i, dt in enumerate(("float32", "float16", "int16", "float16")):
        np.save(tmp_path / "npy" / f"part-{i}.npy", r.integers(-3, 3, (8, 4)).astype(dt))
    np.save(tmp_path / "npy" / "part-9.npy", np.zeros((0, 4), np.float64))  # no row: no dtype of its own
    m = import_vectors(tmp_path / "npy", str(tmp_path / "s1")).manifest
    assert m["vectors"]["dtype"] == "float32+float16+int16"
    assert m["numerics"] == "user vectors (float32+float16+int16), stored float32"
    (tmp_path / "st").mkdir()
    for i, dt in enumerate((torch.bfloat16, torch.float16)):
        save_file({"x": torch.ones(8, 4, dtype=dt)}, tmp_path / "st" / f"part-{i}.safetensors")
    assert import_vectors(tmp_path / "st", str(tmp_path / "s2")).manifest["vectors"]["dtype"] == (
        "bfloat16+float16")
    np.save(tmp_path / "npy" / "part-1.npy", np.ones((8, 4), np.float32))
    np.save(tmp_path / "npy" / "part-2.npy", np.ones((8, 4), np.float32))
    np.save(tmp_path / "npy" / "part-3.npy", np.ones((8, 4), np.float32))
    assert import_vectors(tmp_path / "npy", str(tmp_path / "s3")).manifest["vectors"]["dtype"] == "float32"
