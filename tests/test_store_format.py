"""The store as a format: a small harvested store read with zarr, numpy and JSON alone (``plain_store``,
written from docs/architecture.md, "Reading a store without actdict") gives what ``actdict.harvest.store``
gives, and its done-records' checksums are the ones the docs define."""

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from actdict.config import Common, build
from actdict.harvest.config import HarvestConfig
from actdict.harvest.run import main
from actdict.harvest.store import open_store, write_vectors
from tests import plain_store

TEXTS = Path(__file__).parent / "data" / "texts"
HOOKS = ["blocks.1.hook_resid_post", "blocks.3.hook_resid_post"]


def test_the_plain_reader_imports_nothing_of_actdict():
    tree = ast.parse(Path(plain_store.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported == {"json", "pathlib", "google_crc32c", "numpy", "zarr"}


@pytest.fixture(scope="module", params=["float16", "bfloat16"])
def harvested(request, tmp_path_factory) -> Path:
    """A MiniLM token harvest of tests/data/texts at two hooks: 95 rows each, 3 shards of <= 32 rows."""
    run = tmp_path_factory.mktemp(f"plain-{request.param}")
    cfg = build(HarvestConfig, {"source": {"kind": "files", "path": str(TEXTS)}, "hooks": HOOKS, "ctx": 16,
                                "batch_size": 3, "chunk_rows": 16, "shard_rows": 32, "max_tokens": None,
                                "device": "cpu", "store_dtype": request.param})
    main(Common(run_dir=str(run)), cfg)
    return run / "store"


def assert_same_rows(plain: dict, rows) -> None:
    np.testing.assert_array_equal(plain["acts"], rows.acts)
    for name in ("token_ids", "doc", "pos"):
        np.testing.assert_array_equal(plain[name], getattr(rows, name))
        assert plain[name].dtype == getattr(rows, name).dtype


def test_a_harvested_store_read_without_actdict(harvested):
    assert plain_store.hooks(harvested) == HOOKS
    for hook in HOOKS:
        store = open_store(str(harvested), hook)
        plain = plain_store.read_hook(harvested, hook)
        assert plain["acts"].shape == (len(store), 384) and len(store) == 95
        assert_same_rows(plain, store.read_rows(0, len(store)))
        assert plain_store.manifest(harvested, hook)["dtype"] == store.manifest["dtype"]
        assert len(plain_store.shard_dirs(harvested, hook)) == store.num_shards == 3


def test_each_shard_checksum_as_documented(harvested):
    for path in plain_store.shard_dirs(harvested, HOOKS[0]):
        arrays, done = plain_store.read_shard(path)
        assert done["n_rows"] == len(arrays["pos"]) and set(done) == {"n_rows", "crc32c", "start"}
        assert done["crc32c"] == plain_store.shard_crc32c(arrays)
        arrays["pos"][-1] += 1  # one stored value changed: another checksum
        assert done["crc32c"] != plain_store.shard_crc32c(arrays)


def test_zarr_refuses_a_damaged_chunk(harvested):
    """The chunk files' CRC-32C is zarr's codec: zarr alone raises on a flipped byte."""
    shard = plain_store.shard_dirs(harvested, HOOKS[1])[0]
    chunk = shard / "token_ids" / "c" / "1"
    blob = bytearray(chunk.read_bytes())
    assert len(blob) == 16 * 4 + 4  # chunk_rows int32 values and the checksum
    blob[0] ^= 1
    chunk.write_bytes(bytes(blob))
    try:
        with pytest.raises(ValueError, match="checksum"):
            plain_store.read_shard(shard)
    finally:
        blob[0] ^= 1
        chunk.write_bytes(bytes(blob))


def test_imported_vectors_read_without_actdict(tmp_path):
    x = np.random.default_rng(0).standard_normal((40, 5)).astype(np.float32)  # [40, 5]
    write_vectors(str(tmp_path / "store"), x, hook="vectors", chunk_rows=8, shard_rows=16)
    plain = plain_store.read_hook(tmp_path / "store", "vectors")
    np.testing.assert_array_equal(plain["acts"], x)
    np.testing.assert_array_equal(plain["token_ids"], -np.ones(40))
    np.testing.assert_array_equal(plain["doc"], np.arange(40))
    np.testing.assert_array_equal(plain["pos"], np.zeros(40))
    m = json.loads((tmp_path / "store" / "vectors" / "manifest.json").read_text())
    assert (m["n_shards"], m["n_rows"], m["format_version"]) == (3, 40, 3)
    for path in plain_store.shard_dirs(tmp_path / "store", "vectors"):
        arrays, done = plain_store.read_shard(path)
        assert done["crc32c"] == plain_store.shard_crc32c(arrays)
