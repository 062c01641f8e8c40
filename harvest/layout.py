"""The on-disk layout of an activation store: paths, manifests, and one shard written or checked at a time.

```
<store>/<hook>/manifest.json        what was harvested (model, hook, dtype, d, ...) and whether it is complete
<store>/<hook>/shards/00000/        one zarr v3 group per shard: acts [n, d], token_ids [n] int32,
                                    doc [n] int64, pos [n] int32; every chunk ends with a crc32c
```
Only the harvest package uses it (the reader ``store``, the writers, resume and repair); the train and
analyze stages go through ``store``.

A shard is complete when its group attributes hold the done-record ``{"n_rows", "crc32c", ...}`` (crc32c
of the stored little-endian bytes, arrays in the order acts, token_ids, doc, pos; format 2 recorded a
sha256 there, four times the cost to compute, and is still verified by it). On a local disk a shard
is written under a hidden temporary name (``shards/.tmp-...``) and renamed when whole; on an object store
(no atomic rename) it is written in place and the done-record is written last. Every chunk carries a
crc32c (zarr's ``crc32c`` codec), so a damaged chunk fails its read instead of being read silently.
Zarr writes the arrays' metadata; the chunk files are written here, byte for byte as zarr would write them
(``write_chunks``: tested against zarr), in the calling thread with one copy less than zarr's path. On a
local disk a shard's chunk files are flushed to the disk (several at a time) and dropped from the page
cache once all of them are written (``release_all``): a long harvest does not fill the machine's memory
with cache, and the write costs a constant ~0.5 us per 800-byte row instead of growing to ~2 us as fresh
cache pages are taken (measured on the 2-core VMs here; docs/harvest.md, "Throughput").

Activations are stored as float16, float32, or bfloat16 (kept as its raw 16 bits in a ``uint16`` zarr
array, since zarr has no bfloat16; the manifest says ``bfloat16`` and the reader widens it to float32).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fsspec
import google_crc32c
import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from actdict.errors import ActdictError
from actdict.files import WriteError, write_atomic

FORMAT_VERSION = 3  # 3: shard crc32c in the done-record; 2: shard sha256, crc32c per chunk, bfloat16;
READ_VERSIONS = (1, 2, 3)  # 1: no per-chunk checksum
MANIFEST = "manifest.json"
SHARDS = "shards"
TMP_PREFIX = ".tmp-"
DONE_KEY = "actdict_done"
ARRAYS = ("acts", "token_ids", "doc", "pos")
META_DTYPES = {"token_ids": np.dtype("<i4"), "doc": np.dtype("<i8"), "pos": np.dtype("<i4")}
ACT_DTYPES = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4"), "bfloat16": np.dtype("<u2")}
CRC_BYTES = 4


class StoreError(ActdictError, RuntimeError):
    """A store that is missing, incomplete, truncated or corrupted (the message names what and where)."""


# ----------------------------------------------------------------------------------------------- paths


def fs_of(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of a local path or URL, and the path inside it (no trailing slash). A path
    without '://' is a local one, whatever it holds: fsspec reads '::' as a chain of URLs ('runs/a::b/store'
    was the folder 'runs/a'). A URL whose protocol fsspec does not know (``foo://``), or whose backend is
    not installed (``gs://`` without gcsfs), is a StoreError."""
    if "://" not in str(path):
        fs = fsspec.filesystem("file")
        return fs, fs._strip_protocol(str(path)).rstrip("/")
    try:
        fs, root = fsspec.core.url_to_fs(str(path))
    except (ValueError, ImportError) as e:  # 'Protocol not known: foo'; 'Please install gcsfs to access ...'
        raise StoreError(f"store {path} cannot be opened: {e} (a local folder, or a URL of an fsspec "
                         "protocol whose package is installed: s3:// with s3fs, gs:// with gcsfs...)") from e
    return fs, root.rstrip("/")


def is_local(fs) -> bool:
    return "file" in fs.protocol if isinstance(fs.protocol, tuple) else fs.protocol == "file"


def make_dirs(fs, p: str) -> None:
    """Make the folder ``p`` on a local disk. Object stores have no folders, and their ``makedirs`` would
    make the bucket when it is missing (a misspelt name then holds a new store): there writes go to the
    existing bucket, and a missing one fails as the backend says (one line:
    ``actdict.failures.remote_error``)."""
    if is_local(fs):
        fs.makedirs(p, exist_ok=True)


def zarr_url(fs, p: str) -> str | Path:
    """What zarr is given: a Path for local folders (a string holding '::' is a URL to zarr), a full URL
    otherwise."""
    return Path(p) if is_local(fs) else fs.unstrip_protocol(p)


def human_size(n_bytes: float) -> str:
    """1234567 -> '1.2 MB' (decimal units)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n_bytes < 1000 or unit == "GB":
            return f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    raise AssertionError


def read_json(fs, p: str) -> dict:
    """A JSON object (a manifest, a shard's record); ValueError for anything else."""
    with fs.open(p, "r") as f:
        obj = json.load(f)
    if not isinstance(obj, dict):
        raise ValueError(f"{p} holds a JSON {type(obj).__name__}, not an object")
    return obj


def manifest_problem(m: dict) -> str | None:
    """What in a manifest's layout keys cannot describe a store, in words (a hand edit, a file from elsewhere:
    read as they are, they were tracebacks or a division by zero); None when ``d`` and ``chunk_rows`` are
    whole numbers >= 1, ``dtype`` is one a store holds, and ``shard_rows``, ``n_rows`` and ``n_shards``,
    where present, whole numbers (>= 1, >= 0, >= 0)."""
    least = {"d": 1, "chunk_rows": 1, "shard_rows": 1, "n_rows": 0, "n_shards": 0}
    bad = [f"{k} {m.get(k)!r}" for k, n in least.items() if (k in m or k in ("d", "chunk_rows")) and not (
        type(m.get(k)) is int and m[k] >= n)]
    if m.get("dtype") not in ACT_DTYPES:
        bad.append(f"dtype {m.get('dtype')!r} (not one of {sorted(ACT_DTYPES)})")
    return f"its {MANIFEST} is damaged: {', '.join(bad)}" if bad else None


def write_json(fs, p: str, obj: dict) -> None:
    """Write JSON, atomically on local disks (temp file + rename); one PUT on object stores."""
    blob = json.dumps(obj, indent=2, sort_keys=True, default=str)
    if is_local(fs):
        write_atomic(p, blob)
    else:
        fs.pipe_file(p, blob.encode())


def list_hooks(path: str) -> list[str]:
    """Hooks (sub-folders with a manifest.json) of the store at ``path``, sorted."""
    fs, root = fs_of(path)
    fs.invalidate_cache()
    if not fs.isdir(root):
        return []
    hooks = []
    for entry in fs.ls(root, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if fs.isfile(f"{root}/{name}/{MANIFEST}"):
            hooks.append(name)
    return sorted(hooks)


def shard_entries(fs, hook_dir: str) -> list[str]:
    """Names of everything in ``<hook_dir>/shards`` (complete shards are 5-digit names), sorted."""
    fs.invalidate_cache(f"{hook_dir}/{SHARDS}")
    if not fs.isdir(f"{hook_dir}/{SHARDS}"):
        return []
    return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(f"{hook_dir}/{SHARDS}", detail=False))


def is_shard_name(name: str) -> bool:
    """``name`` is a whole shard's folder: ASCII digits (``str.isdigit`` also takes '²' and '１')."""
    return name.isascii() and name.isdigit()


def whole_shards(fs, hook_dir: str) -> list[str]:
    """The whole shards' folder names (5 digits), sorted; those being written (``.tmp-*``) are invisible."""
    return [n for n in shard_entries(fs, hook_dir) if is_shard_name(n)]


def shard_name(i: int) -> str:
    return f"{i:05d}"


def shard_gaps(have: set[int], n: int, most: int = 8) -> tuple[list[int], int]:
    """(the first ``most`` numbers of 0 .. n - 1 that ``have`` lacks, ascending; how many it lacks), found
    without walking 0 .. n - 1: ``n`` comes from a manifest or a folder's name, and may be 10**12."""
    inside = sorted(i for i in have if 0 <= i < n)
    first: list[int] = []
    i = 0
    for h in [*inside, n]:
        first += range(i, min(h, i + most - len(first)))
        i = h + 1
    return first, n - len(inside)


def shard_problem(names: list[str], n_shards: int) -> str | None:
    """What is wrong with a complete hook's shard folders ``names`` (its 5-digit ones) when its manifest lists
    ``n_shards``, in words naming the shards (the first 8 missing ones and their count); None when they are
    exactly 0 .. n_shards - 1."""
    have = {int(n) for n in names}
    missing, n_missing = shard_gaps(have, n_shards)
    extra = sorted(i for i in have if i >= n_shards)
    if not n_missing and not extra:
        return None
    more = f", ... ({n_missing:,} in all)" if n_missing > len(missing) else ""
    said = [f"{what} {', '.join(map(shard_name, ids))}{end}" for what, ids, end in
            (("missing shard(s)", missing, more), ("unexpected shard(s)", extra, "")) if ids]
    listed = f"{shard_name(0)}..{shard_name(n_shards - 1)}" if n_shards else "none"
    return (f"{'; '.join(said)} (the manifest lists {n_shards}: {listed}); the store is damaged: restore "
            "those shards from a copy, or run `actdict store STORE --repair` and the harvest command "
            "again (it writes only those shards)")


# ----------------------------------------------------------------------------------------------- dtypes


def encode_acts(acts: np.ndarray, dtype: str) -> np.ndarray:
    """acts [n, d] (any float) as stored: float16/float32, or bfloat16 bits (round to nearest even)."""
    if dtype != "bfloat16":
        with np.errstate(over="ignore", invalid="ignore"):
            return acts.astype(ACT_DTYPES[dtype], copy=False)
    with np.errstate(over="ignore", invalid="ignore"):  # float64 beyond float32's range: inf, refused later
        u = np.ascontiguousarray(acts, dtype=np.float32).view(np.uint32)  # [n, d]
    r = u >> 16  # [n, d] (u + ((u >> 16) & 1) + 0x7FFF) >> 16 in place: one temporary, not four
    r &= 1
    r += 0x7FFF
    r += u
    r >>= 16
    bits = r.astype(np.uint16)  # [n, d]
    if u.size and np.isnan(u.view(np.float32).min()):  # min is NaN iff one is (one pass, no mask to scan)
        bits[np.isnan(u.view(np.float32))] = 0x7FC0  # NaN stays NaN (as torch's): the rounding carries a
    return bits  # payload of high bits past the sign, 0x7FFFFFFF -> -0.0 and 0xFFFFFFFF -> 0.0


def decode_acts(stored: np.ndarray, dtype: str) -> np.ndarray:
    """Stored acts [n, d] as float32."""
    if dtype == "bfloat16":
        return (stored.astype(np.uint32) << 16).view(np.float32)
    return stored.astype(np.float32, copy=False)


class ShardDigest:
    """The done-record checksum of a shard, fed its arrays' stored bytes in ``ARRAYS`` order, chunk by chunk
    or whole: ``crc32c`` (8 hex digits) or, for format 1-2 stores, ``sha256``."""

    def __init__(self, kind: str = "crc32c") -> None:
        self.kind = kind
        self._sha = hashlib.sha256() if kind == "sha256" else None
        self._crc = 0

    def update(self, a: np.ndarray) -> None:
        raw = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
        if self._sha is not None:
            self._sha.update(raw.data)
        else:
            self._crc = google_crc32c.extend(self._crc, raw)

    def hexdigest(self) -> str:
        return self._sha.hexdigest() if self._sha is not None else f"{self._crc:08x}"


def digest_of(data: dict[str, np.ndarray]) -> dict[str, str]:
    """The done-record checksum entry of a shard's arrays: {"crc32c": hex}."""
    d = ShardDigest()
    for name in ARRAYS:
        d.update(data[name])
    return {d.kind: d.hexdigest()}


# ----------------------------------------------------------------------------------------------- shards


def write_shard(fs, hook_dir: str, index: int, data: dict[str, np.ndarray], chunk_rows: int,
                record: dict | None = None) -> dict:
    """Write one whole shard (``data``: acts as stored, token_ids/doc/pos any ints) so that it is visible
    only when whole; ``record`` is added to its done-record, which is returned."""
    data = {"acts": data["acts"]} | {k: np.asarray(data[k]).astype(dt, copy=False)
                                     for k, dt in META_DTYPES.items()}
    final = f"{hook_dir}/{SHARDS}/{shard_name(index)}"
    local = is_local(fs)
    where = f"{hook_dir}/{SHARDS}/{TMP_PREFIX}{shard_name(index)}-{uuid.uuid4().hex[:8]}" if local else final
    done = {"n_rows": len(data["token_ids"])} | digest_of(data) | (record or {})
    try:
        _write_group(fs, where, data, chunk_rows, done)
    except OSError as e:  # a full disk, a read-only folder: one line, and no half shard left taking space
        if not local:
            raise
        shutil.rmtree(where, ignore_errors=True)
        raise WriteError(f"could not write shard {final}: {e.strerror or e} (nothing of it is kept)") from e
    if local:
        try:
            os.rename(where, final)
        except OSError as e:
            fs.rm(where, recursive=True)
            raise StoreError(f"shard {final} exists already: two writers on one shard? ({e})") from e
    return done


def _write_group(fs, where: str, data: dict[str, np.ndarray], chunk_rows: int, done: dict) -> None:
    """The zarr group of one shard's arrays at ``where``, its done-record last."""
    local = is_local(fs)
    group = zarr.open_group(zarr_url(fs, where), mode="w", zarr_format=3)
    written: list[str] = []  # local chunk files written (and closed), flushed to the disk together below
    for name in ARRAYS:
        arr = data[name]
        group.create_array(name, shape=arr.shape, chunks=(chunk_rows, *arr.shape[1:]), dtype=arr.dtype,
                           compressors=[Crc32cCodec()], fill_value=0, config={"write_empty_chunks": True})
        write_chunks(fs, f"{where}/{name}", arr, chunk_rows, written if local else None)
    release_all(written)
    group.attrs[DONE_KEY] = done


def chunk_key(c: int, ndim: int) -> str:
    """The file of row-chunk ``c`` inside a zarr v3 array folder (default "/" chunk key encoding)."""
    return f"c/{c}" + "/0" * (ndim - 1)


FLUSH_NEEDS_WRITE = os.name == "nt"
"""Windows flushes a file (``os.fsync``: FlushFileBuffers) only through a handle that may write to it: a
read-only one fails with EBADF. POSIX systems flush through any."""


def release(path: str) -> None:
    """Flush a written file to the disk and drop it from the page cache (Linux; elsewhere only flush),
    through a descriptor of its own: the writer closed it, so that a shard of many chunks holds no more
    files open than ``release_all``'s threads (a shard of 2,048 chunk files under a limit of 1,024)."""
    fd = os.open(path, os.O_RDWR if FLUSH_NEEDS_WRITE else os.O_RDONLY)
    try:
        (os.fdatasync if hasattr(os, "fdatasync") else os.fsync)(fd)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def release_all(paths: list[str], threads: int = 4) -> None:
    """``release`` written files, a few at a time: the disk gets several flushes queued instead of one after
    the other (1.1-1.35x the rate of flushing one at a time, on the disks measured: docs/harvest.md)."""
    if paths:
        with ThreadPoolExecutor(min(threads, len(paths))) as pool:
            list(pool.map(release, paths))


def write_chunks(fs, array_dir: str, arr: np.ndarray, chunk_rows: int, written: list | None = None) -> None:
    """The chunk files of ``arr`` [n, ...] (little-endian dtype) as zarr v3 writes them with the codecs
    bytes(little) + crc32c: each chunk's bytes, the last one padded with the fill value 0 to whole
    ``chunk_rows``, then their crc32c as a little-endian uint32. On a local disk the files are flushed and
    released together (``release_all``) before this returns, or, given ``written``, their paths appended to
    it for the caller to release (a shard releases all its arrays' files at once)."""
    local = is_local(fs)
    files = [] if written is None else written
    for c, a in enumerate(range(0, len(arr), chunk_rows)):
        block = np.ascontiguousarray(arr[a:a + chunk_rows])  # [<= chunk_rows, ...]
        if len(block) < chunk_rows:
            pad = np.zeros((chunk_rows - len(block), *arr.shape[1:]), arr.dtype)
            block = np.concatenate([block, pad])
        raw = block.reshape(-1).view(np.uint8)
        crc = np.array([google_crc32c.value(raw)], "<u4").tobytes()
        path = f"{array_dir}/{chunk_key(c, arr.ndim)}"
        if local:  # two writes, no joined copy
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(raw.data)
                f.write(crc)
            files.append(path)
        else:
            fs.pipe_file(path, raw.tobytes() + crc)
    if written is None:
        release_all(files)


def read_chunk_file(path: str, nbytes: int, out: np.ndarray | None = None) -> np.ndarray:
    """The data bytes [nbytes] uint8 of a local chunk file written with the codecs bytes(little) + crc32c
    (``write_chunks``), read straight into ``out`` (contiguous uint8 [nbytes]) or a new array: no zarr call
    (~10x less Python per chunk), and the read releases the GIL. ValueError when the file's size or its
    crc32c checksum is wrong."""
    data = np.empty(nbytes, np.uint8) if out is None else out
    crc = bytearray(CRC_BYTES)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size != nbytes + CRC_BYTES:
            raise ValueError(f"{path}: {size} bytes, expected {nbytes + CRC_BYTES} (truncated or damaged)")
        if f.readinto(memoryview(data)) != nbytes or f.readinto(crc) != CRC_BYTES:
            raise ValueError(f"{path}: short read (truncated while read?)")
    if google_crc32c.value(data) != int.from_bytes(crc, "little"):
        raise ValueError(f"{path}: stored and computed crc32c checksum do not match")
    return data


def check_shard(fs, where: str, d: int, dtype: np.dtype, chunk_rows: int, crc: bool) -> dict:
    """Cheap check of one shard: done-record, array shapes, chunk-file sizes. Returns the done-record."""
    try:
        group = zarr.open_group(zarr_url(fs, where), mode="r")
        record = dict(group.attrs[DONE_KEY])
        n = int(record["n_rows"])
        shapes = {k: group[k].shape for k in ARRAYS}
        stored = np.dtype(str(group["acts"].dtype))
        files = fs.find(where, detail=True)
    except Exception as e:  # any failure to read it means a damaged (or half-written) shard
        raise StoreError(f"shard {where} is unreadable or incomplete ({type(e).__name__}: {e})") from e
    want = {"acts": (n, d)} | {k: (n,) for k in META_DTYPES}
    if shapes != want:
        raise StoreError(f"shard {where} is truncated or damaged: shapes {shapes}, expected {want}")
    if stored != dtype:
        names = {dt: name for name, dt in ACT_DTYPES.items()}
        raise StoreError(f"shard {where} does not hold what its manifest says: its acts are "
                         f"{names.get(stored, stored)}, the manifest's {names.get(dtype, dtype)} (read as "
                         "the manifest says, every value would be another number)")
    itemsizes = {"acts": dtype.itemsize * d} | {k: dt.itemsize for k, dt in META_DTYPES.items()}
    for arr, item in itemsizes.items():
        want_size = chunk_rows * item + (CRC_BYTES if crc else 0)
        for c in range(math.ceil(n / chunk_rows)):
            key = f"{where}/{arr}/{chunk_key(c, 2 if arr == 'acts' else 1)}"
            size = files.get(key, {}).get("size")
            if size != want_size:
                got = (f"is missing (file {key.removeprefix(where + '/')})" if size is None else
                       f"has {size} bytes, expected {want_size}")
                raise StoreError(f"shard {where} is truncated or damaged: {arr} chunk {c} {got}")
    return record
