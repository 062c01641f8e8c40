"""The store's integrity checks: damaged, truncated or missing shards and chunks named; older formats."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from actdict.config_data import config_changes
from actdict.harvest.layout import shard_problem
from actdict.harvest.store import StoreError, open_store, write_vectors
from tests.store_helpers import D, N, _data, _write


def test_manifest_row_count_must_match_the_shards(tmp_path):
    _write(tmp_path)
    meta = tmp_path / "blocks.0.hook_resid_post" / "manifest.json"
    blob = json.loads(meta.read_text())
    assert blob["n_rows"] == N
    meta.write_text(json.dumps(blob | {"n_rows": N - 1}))
    with pytest.raises(StoreError, match=f"shards hold {N} rows, manifest says {N - 1}"):
        open_store(str(tmp_path))


def test_format_2_stores_are_read_with_their_chunk_checksums(tmp_path):
    """Format 2 (shard sha256 in the done-record) already ended every chunk with a crc32c, as format 3 does;
    a format-3 store relabelled 2 is read the same (the chunk files' sizes include the checksum)."""
    x, tok, _, _ = _write(tmp_path)
    meta = tmp_path / "blocks.0.hook_resid_post" / "manifest.json"
    meta.write_text(json.dumps(json.loads(meta.read_text()) | {"format_version": 2}))
    s = open_store(str(tmp_path))
    rows = s.read_rows(0, N)
    np.testing.assert_array_equal(rows.acts, x)
    np.testing.assert_array_equal(rows.token_ids, tok)
    np.testing.assert_array_equal(s.read_acts(1), x[4:8])
    s.verify()


def as_format_1(hook: Path) -> None:
    """Rewrite a store's hook as format 1 wrote it: chunks without their crc32c (codecs: bytes alone) and a
    sha256 done-record of each shard's arrays (acts, token_ids, doc, pos; computed here with zarr and
    hashlib from what is stored)."""
    import hashlib

    import zarr

    for shard in sorted((hook / "shards").iterdir()):
        sha = hashlib.sha256()
        for name in ("acts", "token_ids", "doc", "pos"):
            meta = shard / name / "zarr.json"
            blob = json.loads(meta.read_text())
            codecs = [c for c in blob["codecs"] if c["name"] != "crc32c"]  # bytes alone
            meta.write_text(json.dumps(blob | {"codecs": codecs}))
            for chunk in (shard / name / "c").rglob("*"):
                if chunk.is_file():
                    chunk.write_bytes(chunk.read_bytes()[:-4])
            sha.update(np.ascontiguousarray(zarr.open_array(str(shard / name), mode="r")[:]).tobytes())
        group = shard / "zarr.json"
        blob = json.loads(group.read_text())
        done = blob["attributes"]["actdict_done"]
        blob["attributes"]["actdict_done"] = {"n_rows": done["n_rows"], "sha256": sha.hexdigest()}
        group.write_text(json.dumps(blob))
    meta = hook / "manifest.json"
    meta.write_text(json.dumps(json.loads(meta.read_text()) | {"format_version": 1}))


def test_format_1_stores_are_read_and_verified_by_their_sha256(tmp_path):
    """Format 1 (no per-chunk checksum, a sha256 per shard) reads the same rows; a flipped bit, which the
    chunk read cannot see there, is named by verify() through the shard's sha256."""
    x, tok, doc, pos = _write(tmp_path)
    hook = tmp_path / "blocks.0.hook_resid_post"
    as_format_1(hook)
    s = open_store(str(tmp_path))
    rows = s.read_rows(0, N)
    for got, want in ((rows.acts, x), (rows.token_ids, tok), (rows.doc, doc), (rows.pos, pos)):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(s.read_acts(1), x[4:8])
    s.verify()
    chunk = hook / "shards" / "00001" / "acts" / "c" / "2" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[5] ^= 0x10
    chunk.write_bytes(bytes(raw))
    damaged = open_store(str(tmp_path))
    assert not np.array_equal(damaged.read_acts(6), x[24:28])  # rows 24-27: read without a check there
    with pytest.raises(StoreError, match=r"shards/00001 is corrupted: checksum mismatch"):
        damaged.verify()


def test_truncated_shard_is_named(tmp_path):
    _write(tmp_path)
    chunk = tmp_path / "blocks.0.hook_resid_post" / "shards" / "00001" / "acts" / "c" / "2" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-5])
    with pytest.raises(StoreError, match=r"shards/00001.*truncated"):
        open_store(str(tmp_path))


@pytest.mark.parametrize("damage", ["emptied", "garbled"])
def test_unreadable_shard_metadata_is_named_with_the_repair(tmp_path, damage):
    """A shard whose zarr.json is emptied or corrupt is named, and the message says how to fix it (restore,
    or actdict store PATH --repair and the harvest again) as the missing-shard and checksum messages do."""
    _write(tmp_path)
    meta = tmp_path / "blocks.0.hook_resid_post" / "shards" / "00001" / "zarr.json"
    meta.write_text("" if damage == "emptied" else meta.read_text()[:-7])
    with pytest.raises(StoreError) as e:
        open_store(str(tmp_path))
    said = str(e.value)
    assert re.search(r"shards/00001 is unreadable or incomplete \(\w+: ", said), said
    assert said.endswith(f"; restore the shard from a copy, or run `actdict store {tmp_path} --repair` and "
                         "the harvest command that made the store again (it writes only the damaged shards)")


def test_missing_done_record_is_named(tmp_path):
    _write(tmp_path)
    meta = tmp_path / "blocks.0.hook_resid_post" / "shards" / "00002" / "zarr.json"
    blob = json.loads(meta.read_text())
    blob["attributes"] = {}
    meta.write_text(json.dumps(blob))
    with pytest.raises(StoreError, match=r"shards/00002"):
        open_store(str(tmp_path))


def test_corrupted_shard_is_found_by_verify(tmp_path):
    _write(tmp_path)
    s = open_store(str(tmp_path))
    s.verify()  # intact
    chunk = tmp_path / "blocks.0.hook_resid_post" / "shards" / "00002" / "doc" / "c" / "1"
    blob = bytearray(chunk.read_bytes())
    blob[3] ^= 0xFF  # same size, one byte flipped
    chunk.write_bytes(bytes(blob))
    s = open_store(str(tmp_path))  # the cheap check cannot see it
    with pytest.raises(StoreError, match=r"shards/00002 is corrupted: its 'doc' rows 4..7 \(file doc/c/1\) "
                                         r"fail to read \(checksum mismatch\); restore"):
        s.verify()


def test_verify_checks_the_shard_checksum_beyond_the_chunk_checksums(tmp_path):
    """Two chunk files of a shard swapped: each still passes its own crc32c (reads succeed, with the rows in
    the wrong place), only the done-record's shard checksum can tell, and verify() must compare it."""
    _, _, doc, _ = _write(tmp_path)
    shard = tmp_path / "blocks.0.hook_resid_post" / "shards" / "00000"
    a, b = shard / "doc" / "c" / "0", shard / "doc" / "c" / "1"
    blob_a, blob_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(blob_b)
    b.write_bytes(blob_a)
    s = open_store(str(tmp_path))
    assert not np.array_equal(s.read_rows(0, 8).doc, doc[:8])  # silently wrong rows
    with pytest.raises(StoreError, match=r"shards/00000 is corrupted: checksum mismatch"):
        s.verify()


def test_corrupt_chunk_fails_the_read_by_name(tmp_path):
    _write(tmp_path)
    chunk = tmp_path / "blocks.0.hook_resid_post" / "shards" / "00001" / "acts" / "c" / "1" / "0"
    blob = bytearray(chunk.read_bytes())
    blob[5] ^= 0x01  # one bit, same size: only the crc32c can see it
    chunk.write_bytes(bytes(blob))
    s = open_store(str(tmp_path))
    np.testing.assert_array_equal(s.read_rows(0, 16).acts, _data()[0][:16])  # other shards read fine
    with pytest.raises(StoreError, match=r"shards/00001 is corrupted.*checksum"):
        s.read_rows(10, 30)


def _train_config(tmp_path, store) -> str:
    cfg = {"run_dir": str(tmp_path / "run"), "store": str(store), "seed": 0,
           "train": {"epochs": 1, "batch_size": 16, "test_fraction": 0.25,
                     "dicts": [{"name": "sae", "variant": "sae_l1", "k": 4}]}}
    (tmp_path / "cfg.yaml").write_text(json.dumps(cfg))
    return str(tmp_path / "cfg.yaml")


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_train_names_a_damaged_shard(tmp_path, capsys, damage):
    from actdict.cli import main

    x = np.random.default_rng(0).standard_normal((256, 8)).astype(np.float32)
    write_vectors(str(tmp_path / "store"), x, shard_rows=64, chunk_rows=32)
    chunk = tmp_path / "store" / "vectors" / "shards" / "00002" / "acts" / "c" / "1" / "0"
    blob = bytearray(chunk.read_bytes())
    if damage == "flip":
        blob[7] ^= 0x10
    chunk.write_bytes(bytes(blob[:-9] if damage == "truncate" else blob))
    assert main(["train", _train_config(tmp_path, tmp_path / "store")]) == 2
    err = capsys.readouterr().err
    assert "StoreError" in err and "shards/00002" in err
    assert ("checksum" in err) if damage == "flip" else ("truncated" in err)
    assert not (tmp_path / "run" / "dicts" / "sae" / "model.safetensors").exists()


def test_read_acts_names_a_flipped_bit_and_reads_remote_stores(tmp_path):
    _write(tmp_path)
    chunk = tmp_path / "blocks.0.hook_resid_post" / "shards" / "00001" / "acts" / "c" / "2" / "0"
    blob = bytearray(chunk.read_bytes())
    blob[3] ^= 0x04
    chunk.write_bytes(bytes(blob))
    s = open_store(str(tmp_path))
    with pytest.raises(StoreError, match=r"shards/00001 is corrupted.*rows 8\.\.12.*checksum"):
        s.read_acts(6)  # chunks 0-3 are shard 0's, 4-7 shard 1's
    with pytest.raises(StoreError, match=r"shards/00001 is corrupted.*rows 8\.\.12.*checksum"):
        s.read_acts(6, out=np.empty((4, D), np.float32))  # read straight into out: checked all the same
    np.testing.assert_array_equal(s.read_acts(5), _data()[0][20:24])
    other = chunk.parent.parent / "1" / "0"  # chunk 5: bytes appended after its crc32c, which still matches
    other.write_bytes(other.read_bytes() + b"\0\0")
    with pytest.raises(StoreError, match=r"shards/00001 is corrupted.*rows 4\.\.8.*expected"):
        s.read_acts(5)
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    remote = write_vectors("memory://ra/store", x, shard_rows=8, chunk_rows=4)  # no local file: zarr's path
    np.testing.assert_array_equal(np.concatenate([remote.read_acts(i) for i in range(remote.num_chunks)]), x)


def test_shard_and_config_problems_are_named():
    assert shard_problem(["00000", "00001", "00002"], 3) is None
    assert shard_problem(["00000", "00002", "00004"], 4).startswith(
        "missing shard(s) 00001, 00003; unexpected shard(s) 00004 (the manifest lists 4: 00000..00003);")
    old = {"ctx": 16, "source": {"path": "a", "kind": "files"}}
    new = {"ctx": 16, "source": {"path": "b", "kind": "files"}}
    assert config_changes(old, new | {"seed": 3}) == ["seed: unset -> 3", "source.path: 'a' -> 'b'"]
    assert config_changes(None, new) == [f"config: None -> {new!r}"] and config_changes(new, new) == []


def test_a_truncated_last_short_chunk_is_named(tmp_path):
    """The last chunk of a shard holds fewer rows (13 = 3 x 4 + 1) but its file is a whole padded chunk: a
    truncated one is found when the store is opened, like any other chunk."""
    _write(tmp_path)
    chunk = tmp_path / "blocks.0.hook_resid_post" / "shards" / "00002" / "acts" / "c" / "3" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-5])
    with pytest.raises(StoreError, match=r"shards/00002.*acts chunk 3"):
        open_store(str(tmp_path))


def test_a_deleted_chunk_file_is_named_missing(tmp_path):
    """A chunk file that is gone is said to be missing, with its file (it read "has None bytes")."""
    _write(tmp_path)
    (tmp_path / "blocks.0.hook_resid_post" / "shards" / "00001" / "pos" / "c" / "0").unlink()
    with pytest.raises(StoreError, match=r"shards/00001 is truncated or damaged: pos chunk 0 is missing "
                       r"\(file pos/c/0\); restore"):
        open_store(str(tmp_path))


def test_a_manifest_naming_another_16_bit_dtype_than_its_shards_is_not_read(tmp_path):
    """float16 and bfloat16 shards have the same sizes: a manifest saying float16 over bfloat16 bits passed
    every check and --verify, and the store read 15956.0 for 0.2067; the shards' own dtype is now checked."""
    x = np.random.default_rng(0).standard_normal((64, 3)).astype(np.float32)  # [64, 3]
    write_vectors(str(tmp_path), x, shard_rows=32, chunk_rows=8, dtype="bfloat16")
    manifest = next(tmp_path.glob("*/manifest.json"))
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"dtype": "float16"}))
    with pytest.raises(StoreError, match=r"shards/00000 does not hold what its manifest says: its acts are "
                                         r"bfloat16, the manifest's float16"):
        open_store(str(tmp_path))


def test_a_full_disk_mid_shard_is_one_line_and_leaves_no_half_shard(tmp_path, monkeypatch):
    """ENOSPC part way through a shard (a real harvest on a 3 MB tmpfs ended in an OSError traceback and
    left its hidden temporary shard taking the space): WriteError naming the shard, its temporary folder
    removed, the whole shards as they were."""
    import errno
    import os

    from actdict.files import WriteError
    from actdict.harvest import layout

    x, tok, doc, pos = _write(tmp_path)
    real = layout.write_chunks

    def full(fs, array_dir, *a, **k):
        if array_dir.endswith("/doc"):  # acts and token_ids are written, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fs, array_dir, *a, **k)

    monkeypatch.setattr(layout, "write_chunks", full)
    hook = tmp_path / "blocks.0.hook_resid_post"
    fs, root = layout.fs_of(str(hook))
    said = f"could not write shard {hook}/shards/00003: No space left on device (nothing of it is kept)"
    with pytest.raises(WriteError, match=re.escape(said)):
        layout.write_shard(fs, root, 3, {"acts": x[:4], "token_ids": tok[:4], "doc": doc[:4], "pos": pos[:4]},
                           4)
    assert sorted(os.listdir(hook / "shards")) == ["00000", "00001", "00002"]
    s = open_store(str(tmp_path))
    s.verify()
    np.testing.assert_array_equal(s.read_rows(0, N).acts, x)


def test_a_shard_of_many_chunks_holds_few_files_open(tmp_path):
    """A shard's chunk files are closed as they are written and flushed by their paths: one of 64 chunks
    (256 files) is written under a limit of 32 more open files than the test holds (a harvest of
    shard_rows=65536, chunk_rows=128 could write no shard under Linux's default limit of 1,024: 'Too many
    open files')."""
    import os

    resource = pytest.importorskip("resource")
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("counts its open files in /proc")
    from actdict.harvest import layout

    n = 256
    x = np.arange(n * D, dtype=np.float32).reshape(n, D)  # [n, D]
    meta = {"token_ids": np.arange(n), "doc": np.arange(n), "pos": np.arange(n)}
    _write(tmp_path)
    fs, root = layout.fs_of(str(tmp_path / "blocks.0.hook_resid_post"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 32, hard))
    try:
        done = layout.write_shard(fs, root, 3, {"acts": x} | meta, 4)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert done["n_rows"] == n
    shard = tmp_path / "blocks.0.hook_resid_post" / "shards" / "00003"
    assert len(list((shard / "acts" / "c").iterdir())) == 64
    assert layout.check_shard(fs, str(shard), D, np.dtype("<f4"), 4, crc=True)["n_rows"] == n
