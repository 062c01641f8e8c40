"""The zarr activation store: exact round trips, shard boundaries, integrity checks, clear errors."""

import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from actdict.config import config_changes
from actdict.harvest.layout import shard_problem
from actdict.harvest.store import (
    Rows,
    StoreError,
    StoreWriter,
    list_hooks,
    open_store,
    write_vectors,
)
from actdict.harvest.writer import NonFiniteError

N, D, SHARD, CHUNK = 45, 3, 16, 4  # 3 shards of 16, 16, 13 rows; chunks of 4 rows (the last ones short)
MANIFEST = {"model": "toy", "revision": "r1", "numerics": "float32 forward", "tokenizer": "toy-tok",
            "corpus": {"fixture": 1}, "config_hash": "abc"}


def _data(n=N, d=D, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, d)) * 10).astype(np.float32)  # [n, d]
    tok = rng.integers(0, 50000, n).astype(np.int32)  # [n]
    doc = np.repeat(np.arange(n // 5 + 1), 5)[:n].astype(np.int64) + 10**10  # [n] beyond int32 on purpose
    pos = np.tile(np.arange(5), n // 5 + 1)[:n].astype(np.int32)  # [n]
    return x, tok, doc, pos


def _write(path, hook="blocks.0.hook_resid_post", dtype="float32", pieces=(7, 20, 18), **kw):
    x, tok, doc, pos = _data()
    with StoreWriter(str(path), MANIFEST | {"hook": hook}, d=D, dtype=dtype, shard_rows=SHARD,
                     chunk_rows=CHUNK, **kw) as w:
        a = 0
        for p in pieces:  # uneven appends that straddle shard boundaries
            w.append(x[a:a + p], tok[a:a + p], doc[a:a + p], pos[a:a + p])
            a += p
    return x, tok, doc, pos


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


def test_temporary_shard_is_invisible(tmp_path):
    x, *_ = _write(tmp_path)
    shards = tmp_path / "blocks.0.hook_resid_post" / "shards"
    os.makedirs(shards / ".tmp-00003-deadbeef" / "acts")  # a writer that died mid-shard
    (shards / ".tmp-00003-deadbeef" / "acts" / "junk").write_bytes(b"xx")
    s = open_store(str(tmp_path))
    assert len(s) == 45 and s.num_shards == 3
    np.testing.assert_array_equal(s.read_rows(0, 45).acts, x)


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


def test_store_command_describes_and_verifies(tmp_path, capsys):
    from actdict.cli import main

    _write(tmp_path, hook="blocks.1.hook_resid_post")
    _write(tmp_path, hook="blocks.3.hook_resid_post", dtype="float16")
    assert main(["store", str(tmp_path), "--verify"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("blocks.1.hook_resid_post: 45 rows x d=3 float32, 3 shards, 12 chunks of 4, ")
    assert out[0].endswith("; complete") and out[1] == "  model toy; float32 forward"
    assert out[3] == "  verify: ok" and out[4].startswith("blocks.3.hook_resid_post: 45 rows x d=3 float16")
    chunk = tmp_path / "blocks.3.hook_resid_post" / "shards" / "00001" / "acts" / "c" / "2" / "0"
    blob = bytearray(chunk.read_bytes())
    blob[1] ^= 0xFF
    chunk.write_bytes(bytes(blob))
    assert main(["store", str(tmp_path), "--verify", "--json", "--hook", "blocks.3.hook_resid_post"]) == 2
    info = json.loads(capsys.readouterr().out)
    assert len(info) == 1 and info[0]["rows"] == 45 and info[0]["shards"] == 3 and info[0]["complete"]
    assert "shards/00001 is corrupted" in info[0]["verified"]
    files = (tmp_path / "blocks.3.hook_resid_post").rglob("*")
    assert info[0]["bytes"] == sum(f.stat().st_size for f in files if f.is_file())
    assert main(["store", str(tmp_path / "nothing")]) == 2
    said = capsys.readouterr()  # the error on stderr: stdout holds the report (--json: a JSON document)
    assert "no activation store" in said.err and said.out == ""


def test_store_command_lists_each_hook_and_its_shards_once(tmp_path, capsys):
    """Every hook, named by --hook (even twice) or found in the store, is described (and verified, and
    repaired) once, with the shard count of its folders."""
    from actdict.cli import main

    _write(tmp_path, hook="a")
    _write(tmp_path, hook="b")
    shards = len(list((tmp_path / "a" / "shards").iterdir()))
    for args in ([], ["--hook", "a", "--hook", "b", "--hook", "a"]):
        assert main(["store", str(tmp_path), "--verify", *args]) == 0
        out = capsys.readouterr().out.splitlines()
        heads = [line.split(":")[0] for line in out if not line.startswith(" ")]
        assert heads == ["a", "b"] and sum(line == "  verify: ok" for line in out) == 2
        assert all(f", {shards} shards, " in line for line in out if not line.startswith(" "))
        assert main(["store", str(tmp_path), "--json", *args]) == 0
        assert [h["shards"] for h in json.loads(capsys.readouterr().out)] == [shards, shards]
    assert main(["store", str(tmp_path), "--repair", "--hook", "b", "--hook", "b"]) == 0
    assert capsys.readouterr().out.splitlines() == ["b: intact"]
    assert main(["store", str(tmp_path / "b"), "--verify"]) == 0  # a hook's own folder: that hook
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"b: 45 rows x d={D} ")  # _write: 7 + 20 + 18 rows
    assert out[-1] == "  verify: ok" and len(out) == 4
    assert main(["store", str(tmp_path / "b"), "--hook", "b", "--repair"]) == 0  # named too: the same
    assert capsys.readouterr().out.splitlines() == ["b: intact"]
    assert not (tmp_path / "b" / ".actdict-lock").exists()  # the lock is the store's, not inside the hook
    assert main(["store", str(tmp_path / "b"), "--hook", "a"]) == 2
    assert "is the folder of hook 'b' alone, not of ['a']" in capsys.readouterr().err


def test_store_command_describes_an_unfinished_harvest(tmp_path, capsys):
    from actdict.cli import main

    x, tok, doc, pos = _data()
    w = StoreWriter(str(tmp_path), MANIFEST | {"hook": "h"}, d=D, shard_rows=SHARD, chunk_rows=CHUNK)
    w.append(x[:40], tok[:40], doc[:40], pos[:40])  # 2 full shards written, 8 rows buffered, never closed
    assert main(["store", str(tmp_path)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("h: 32 rows x d=3 float16, 2 shards") and "INCOMPLETE" in first


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


@pytest.mark.parametrize("manifest", ["[]", '"x"', '{"hook": "h"}'])
def test_a_manifest_of_the_wrong_shape_is_one_line(tmp_path, capsys, manifest):
    """A hand-made manifest.json that is valid JSON but no manifest (not an object, or lacking the keys a
    repair needs): `actdict store`, --verify and --repair answer in one line, status 2."""
    from actdict.cli import main as cli

    (tmp_path / "s" / "h").mkdir(parents=True)
    (tmp_path / "s" / "h" / "manifest.json").write_text(manifest)
    for flag in ([], ["--verify"], ["--repair"]):
        assert cli(["store", str(tmp_path / "s"), *flag]) == 2, flag
        said = "".join(capsys.readouterr())  # stdout and stderr
        assert said.count("\n") == 1 and said.startswith("actdict store: "), (flag, said)


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



def test_store_command_names_shard_folders_not_yet_whole(tmp_path, capsys):
    """An object store writes a shard in place: a shard folder without its done record is not counted, and
    the listing says it is not whole yet (not that a shard below it is missing)."""
    from actdict.cli import main

    x, tok, doc, pos = _data()
    w = StoreWriter(str(tmp_path), MANIFEST | {"hook": "h"}, d=D, shard_rows=SHARD, chunk_rows=CHUNK)
    w.append(x[:40], tok[:40], doc[:40], pos[:40])  # 2 full shards written, never closed
    (tmp_path / "h" / "shards" / "00002").mkdir()  # begun in place, its done-record not written yet
    assert main(["store", str(tmp_path)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("h: 32 rows x d=3 float16, 2 shards") and "missing" not in first
    assert first.endswith("; 1 more shard folder(s) on disk are not whole (being written, or cut short by a "
                          "kill): the harvest command rewrites them")


def test_repair_reads_every_manifest_before_it_changes_anything(tmp_path, capsys):
    from actdict.cli import main

    _write(tmp_path, hook="a")
    _write(tmp_path, hook="b")
    chunk = tmp_path / "a" / "shards" / "00001" / "acts" / "c" / "2" / "0"
    blob = bytearray(chunk.read_bytes())
    blob[1] ^= 0xFF
    chunk.write_bytes(bytes(blob))
    (tmp_path / "b" / "manifest.json").write_text("{")
    before = {p: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()}
    assert main(["store", str(tmp_path), "--repair"]) == 2
    assert "manifest.json is unreadable" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()} == before  # a: untouched


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


def test_shard_numbers_from_a_manifest_or_a_folder_name_are_never_walked(tmp_path, capsys):
    """A shared store's manifest may list 10**12 shards and a stray folder be named '²³' or 10**14: the
    first missing shards are named with their count, found without walking 0 .. n - 1, and a folder that
    is not ASCII digits is no shard."""
    from actdict.cli import main as cli
    from actdict.harvest.layout import shard_gaps

    assert shard_gaps({0, 2, 4}, 6) == ([1, 3, 5], 3)
    assert shard_gaps(set(range(5)), 10**12) == (list(range(5, 13)), 10**12 - 5)
    assert shard_problem(["00000", "00002", "00030"], 20).startswith(
        "missing shard(s) 00001, 00003, 00004, 00005, 00006, 00007, 00008, 00009, ... (18 in all); "
        "unexpected shard(s) 00030 (the manifest lists 20: 00000..00019)")
    _write(tmp_path)  # 45 rows: shards 00000..00002
    (tmp_path / "blocks.0.hook_resid_post" / "shards" / "²³").mkdir()
    assert cli(["store", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("blocks.0.hook_resid_post: 45 rows x d=3 float32, 3 shards")
    manifest = tmp_path / "blocks.0.hook_resid_post" / "manifest.json"
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"n_shards": 20}))
    assert cli(["store", str(tmp_path), "--repair"]) == 0
    assert capsys.readouterr().out.startswith(
        "blocks.0.hook_resid_post: 8 shard(s) to write again (00003: missing; 00004: missing; 00005: "
        "missing; 00006: missing; 00007: missing; 00008: missing; 00009: missing; 00010: missing, and 9 more "
        "after it)")
    assert sorted(os.listdir(manifest.parent / "shards")) == ["00000", "00001", "00002", "²³"]


@pytest.mark.parametrize(("edit", "said"), [({"d": "3x"}, "d '3x'"), ({"chunk_rows": 0}, "chunk_rows 0"),
                                            ({"dtype": "int64"}, "dtype 'int64' (not one of"),
                                            ({"n_rows": None, "d": None}, "d None, n_rows None")])
def test_a_manifest_with_layout_values_of_the_wrong_kind_is_one_line_and_repairs_nothing(
        tmp_path, capsys, edit, said):
    """A shared store's manifest.json edited by hand: its layout values were read as they are (a ValueError,
    KeyError or ZeroDivisionError traceback); now every command says which are damaged, and --repair
    removes no shard."""
    from actdict.cli import main as cli

    _write(tmp_path)
    manifest = tmp_path / "blocks.0.hook_resid_post" / "manifest.json"
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | edit))
    with pytest.raises(StoreError, match=re.escape(f"its manifest.json is damaged: {said}")):
        open_store(str(tmp_path))
    for flag in ([], ["--verify"], ["--repair"]):
        assert cli(["store", str(tmp_path), *flag]) == 2, flag
        out = "".join(capsys.readouterr())
        assert out.count("\n") == 1 and f"its manifest.json is damaged: {said}" in out, (flag, out)
    assert sorted(os.listdir(manifest.parent / "shards")) == ["00000", "00001", "00002"]


@pytest.mark.parametrize(("edit", "said"), [({"d": 4}, "d 4, its shards' 3"),
                                            ({"chunk_rows": 2}, "chunk_rows 2, its shards' 4"),
                                            ({"dtype": "bfloat16"}, "dtype bfloat16, its shards' float32")])
def test_repair_removes_no_shard_when_the_manifest_is_what_disagrees(tmp_path, capsys, edit, said):
    """A manifest of another layout than its shards' own metadata (edited, or copied from another store) made
    every shard fail its check, and --repair removed them all; it now names the manifest and removes none."""
    from actdict.cli import main as cli

    _write(tmp_path)
    manifest = tmp_path / "blocks.0.hook_resid_post" / "manifest.json"
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | edit))
    assert cli(["store", str(tmp_path), "--repair"]) == 2
    out = capsys.readouterr().err
    assert f"its manifest.json does not describe its shards ({said}): the manifest is damaged" in out
    assert "nothing removed" in out and sorted(os.listdir(manifest.parent / "shards")) == ["00000", "00001",
                                                                                           "00002"]


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


def test_strings_from_shared_files_reach_the_terminal_without_control_codes(tmp_path, capsys):
    """A store's manifest, a checkpoint's name or warning and a corpus token come from someone else: their
    ESC / BEL / CR were printed as they are (ESC ] 52 sets a terminal's clipboard, ESC [ 2J clears it); they
    are now printed as escapes, newlines and tabs of the output kept."""
    from actdict.analyze.lens import format_lens
    from actdict.analyze.run import summary_lines
    from actdict.cli import main as cli
    from actdict.errors import ActdictError, print_error

    evil = "web\x1b]52;c;ZWNobyBwd25lZA==\x07\x1b[2J\r\x9b"
    _write(tmp_path)
    manifest = tmp_path / "blocks.0.hook_resid_post" / "manifest.json"
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"corpus": evil}))
    assert cli(["store", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "  corpus web\\x1b]52;c;ZWNobyBwd25lZA==\\x07\\x1b[2J\\x0d\\x9b\n" in out and out.count("\n") == 3
    m = {"k": 8, "dead": 3, "re_det": 2.5, "re_sample": 2.5, "ad": 1.0, "l0": 2.0, "ev": 0.5,
         "training_warning": evil}
    lines = summary_lines({"n_test_rows": 1, "hook": "h", "d": 4, "ce": None, "models": {evil: m}})
    assert not any(c in "".join(lines) for c in "\x1b\x07\r\x9b") and "\\x1b]52" in lines[-1]
    feats = [[{"i": 3, "code": 1.5, "top_tokens": [evil]}]]
    res = {"model": "m", "hook": "h", "tokens": [" a"],
           "dicts": {"d": {"variant": "sae_l1", "k": 8, "active": [1], "features": feats}}}
    said = format_lens(res)
    assert "#3 1.5 [web\\x1b]52;c;" in said and not any(c in said for c in "\x1b\x07\r\x9b")
    assert print_error("actdict", ActdictError(f"hook {evil}")) == 2
    assert capsys.readouterr().err == ("actdict: ActdictError: hook web\\x1b]52;c;ZWNobyBwd25lZA==\\x07"
                                       "\\x1b[2J\\x0d\\x9b\n")


def test_a_store_whose_hook_or_shards_are_links_is_not_written_through_them(tmp_path, capsys):
    """A shared store may hold <hook> or <hook>/shards as links to a folder of the reader's: a harvest wrote
    its manifest and shards there (seen with a token harvest), a repair would remove what fails its check
    there. Writing a hook (the harvests, the vectors command) and --repair refuse such a link in one line."""
    from actdict.cli import main as cli
    from actdict.harvest.vectors import cli as vectors

    mine = tmp_path / "mine"
    (mine / "00007").mkdir(parents=True)  # a folder of the reader's that a repair took for a damaged shard
    (mine / "00007" / "notes.txt").write_text("mine")
    np.save(tmp_path / "v.npy", np.ones((16, 3), np.float32))
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "vectors").symlink_to(mine)
    assert vectors([str(tmp_path / "v.npy"), str(tmp_path / "s"), "--chunk-rows", "4"]) == 2
    assert "s/vectors is a symbolic link (to " in capsys.readouterr().err
    _write(tmp_path / "t")
    hook = tmp_path / "t" / "blocks.0.hook_resid_post"
    (hook / "shards").rename(tmp_path / "real")
    (hook / "shards").symlink_to(mine)
    assert cli(["store", str(tmp_path / "t"), "--repair"]) == 2
    assert "shards is a symbolic link (to " in capsys.readouterr().err
    assert [p.name for p in mine.rglob("*")] == ["00007", "notes.txt"]


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


def test_store_help_says_a_hook_folder_is_a_path_too(capsys):
    from actdict.cli import main

    with pytest.raises(SystemExit):
        main(["store", "--help"])
    assert "one hook's folder <store>/<hook>" in " ".join(capsys.readouterr().out.split())


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
