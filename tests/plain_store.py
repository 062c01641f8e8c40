"""An activation store read as docs/architecture.md, "Reading a store without actdict", describes it: zarr,
numpy, JSON and a CRC-32C only. Nothing of actdict is imported here (``test_store_format`` checks that):
this is what a user without actdict writes, and where it fails to read a store, the docs are wrong."""

import json
from pathlib import Path

import google_crc32c
import numpy as np
import zarr

ARRAYS = ("acts", "token_ids", "doc", "pos")  # the order of the done-record's checksum


def hooks(store: Path) -> list[str]:
    """The hook folders of a store: those holding a manifest.json, sorted."""
    return sorted(p.name for p in store.iterdir() if (p / "manifest.json").is_file())


def manifest(store: Path, hook: str) -> dict:
    return json.loads((store / hook / "manifest.json").read_text())


def shard_dirs(store: Path, hook: str) -> list[Path]:
    """shards/00000 .. n_shards - 1, in row order; refused unless the manifest says complete."""
    m = manifest(store, hook)
    if m["complete"] is not True:
        raise ValueError(f"{store / hook} is not complete")
    return [store / hook / "shards" / f"{i:05d}" for i in range(m["n_shards"])]


def widen(acts: np.ndarray, dtype: str) -> np.ndarray:
    """Stored acts [n, d] as float32 (bfloat16: uint16 bits shifted into a float32's high half)."""
    if dtype == "bfloat16":
        return (acts.astype(np.uint32) << 16).view(np.float32)
    return acts.astype(np.float32)


def read_shard(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays of one shard as stored ({name: array}) and its done-record."""
    g = zarr.open_group(str(path), mode="r")
    return {name: g[name][:] for name in ARRAYS}, dict(g.attrs["actdict_done"])


def shard_crc32c(arrays: dict[str, np.ndarray]) -> str:
    """The done-record's checksum: CRC-32C of the stored little-endian bytes of acts, token_ids, doc, pos."""
    crc = 0
    for name in ARRAYS:
        a = arrays[name]
        assert a.dtype.byteorder in "<|=" and np.little_endian  # little-endian bytes, as stored
        crc = google_crc32c.extend(crc, np.ascontiguousarray(a).tobytes())
    return f"{crc:08x}"


def read_hook(store: Path, hook: str) -> dict[str, np.ndarray]:
    """Every row of one hook, acts widened to float32: {"acts", "token_ids", "doc", "pos"}."""
    dtype = manifest(store, hook)["dtype"]
    parts = [read_shard(p)[0] for p in shard_dirs(store, hook)]
    out = {name: np.concatenate([p[name] for p in parts]) for name in ARRAYS}
    out["acts"] = widen(out["acts"], dtype)
    return out
