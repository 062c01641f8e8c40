"""The activation store: the one module every stage reads the store through.

```
<store>/<hook>/manifest.json        what was harvested (model, hook, dtype, d, ...) and whether it is complete
<store>/<hook>/shards/00000/        one zarr v3 group per shard: acts [n, d] (float16|bfloat16|float32),
                                    token_ids [n] int32, doc [n] int64, pos [n] int32; crc32c per chunk
```
The layout itself is in ``actdict.harvest.layout``; writers (``StoreWriter``, ``write_vectors``) are in
``actdict.harvest.writer`` and re-exported here. Opening a store checks row counts and chunk-file sizes
(cheap, names a truncated shard); every chunk read checks its crc32c (names a corrupted shard); ``verify()``
re-reads everything and checks each shard's done-record checksum.

Paths are local folders or fsspec URLs (``s3://bucket/store``, ``memory://x``, ...): every file operation
goes through fsspec, and zarr opens the URL with its FsspecStore.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from actdict.harvest.layout import (
    ACT_DTYPES,
    ARRAYS,
    DONE_KEY,
    MANIFEST,
    META_DTYPES,
    READ_VERSIONS,
    SHARDS,
    ShardDigest,
    StoreError,
    check_shard,
    chunk_key,
    decode_acts,
    fs_of,
    is_local,
    list_hooks,
    manifest_problem,
    read_chunk_file,
    read_json,
    shard_problem,
    whole_shards,
    zarr_url,
)
from actdict.harvest.writer import StoreWriter, write_vectors
from actdict.lock import READERS, folder_lock

__all__ = ["ActivationStore", "Rows", "StoreError", "StoreWriter", "list_hooks", "open_store",
           "write_vectors"]


@dataclass
class Rows:
    """Consecutive rows of a store."""

    acts: np.ndarray  # [n, d] float32
    token_ids: np.ndarray  # [n] int32 (-1 for user vectors)
    doc: np.ndarray  # [n] int64, document index in harvest order
    pos: np.ndarray  # [n] int32, position of the token within its document

    def __len__(self) -> int:
        return len(self.token_ids)


def reimport_command(path: str, hook: str, manifest: dict) -> str:
    """The command that imports vectors again into ``hook`` of the store ``path`` in the layout its
    ``manifest`` records (the same chunks: the same train/test split), over what is there."""
    m = manifest
    return (f"python -m actdict.harvest.vectors FILE {path} --hook {hook} --dtype {m.get('dtype')} "
            f"--shard-rows {m.get('shard_rows')} --chunk-rows {m.get('chunk_rows')} --overwrite")


@contextmanager
def read_lock(path: str, wait: bool = True) -> Iterator[None]:
    """Hold the local store ``path``'s ``READERS`` lock shared for the ``with`` block (a training, an
    analysis): a harvest or import that changes the store (a growth, a re-import of vectors, a repair) waits
    for the block to end, and the block waits for such a change to finish (``resume.store_lock``). Not
    ``wait`` (torchrun): FolderInUse instead. A missing store or one on an fsspec URL is not locked. A hook's
    own folder (``open_store`` reads it) takes its store's lock."""
    if not list_hooks(path) and (own := hook_folder(path)):
        path = own[0]
    fs, root = fs_of(path)
    if not is_local(fs) or not os.path.isdir(root):
        yield
        return
    with folder_lock(root, f"store {path}", wait=wait, name=READERS, shared=True):
        yield


class ActivationStore:
    """Read access to one hook of a store. Rows are numbered 0..len-1 in harvest order across shards;
    chunk i is the i-th zarr chunk over all shards (the last chunk of a shard may be short)."""

    def __init__(self, path: str, hook: str, allow_partial: bool = False):
        self.fs, root = fs_of(path)
        self.path, self.hook, self.dir = str(path), hook, f"{root}/{hook}"
        try:
            self.manifest: dict[str, Any] = read_json(self.fs, f"{self.dir}/{MANIFEST}")
        except (OSError, ValueError) as e:
            raise StoreError(f"{self.dir}/{MANIFEST} is unreadable ({type(e).__name__}: {e})") from e
        m = self.manifest
        if m.get("format_version") not in READ_VERSIONS:
            raise StoreError(f"{self.dir}: format_version {m.get('format_version')} (this code reads "
                             f"{list(READ_VERSIONS)})")
        if problem := manifest_problem(m):
            raise StoreError(f"{self.dir}: {problem}; restore it from a copy of the store")
        if not m.get("complete") and not allow_partial:
            # no config_hash: vectors imported from Python or the vectors command (and since repaired)
            how = ("re-run the same harvest command to resume it" if m.get("config_hash") else
                   f"import the vectors again in the same layout: {reimport_command(path, hook, m)}")
            raise StoreError(f"{self.dir}: incomplete store (the harvest did not finish); {how}, or open "
                             "with allow_partial=True to read its complete shards")
        self.d, self.chunk_rows = int(m["d"]), int(m["chunk_rows"])
        self.dtype_name = m["dtype"]
        self.dtype = ACT_DTYPES[self.dtype_name]  # as stored (bfloat16: its raw bits, uint16)
        self._crc = m["format_version"] >= 2
        self._shards = self._scan_shards()  # [(name, n_rows)]
        sizes = np.array([n for _, n in self._shards], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(sizes)])  # [n_shards + 1] global row offsets
        per_shard = [math.ceil(n / self.chunk_rows) for n in sizes]
        self._chunk_shard = np.repeat(np.arange(len(sizes)), per_shard)  # [num_chunks] shard of each chunk
        self._chunk_first = np.concatenate([[0], np.cumsum(per_shard)])  # [n_shards + 1]
        if m.get("complete") and int(self._offsets[-1]) != int(m["n_rows"]):
            raise StoreError(f"{self.dir}: shards hold {len(self)} rows, manifest says {m['n_rows']}")
        self._groups: dict[int, Any] = {}

    def _scan_shards(self) -> list[tuple[str, int]]:
        """Complete shards in order; a partial store (allow_partial) ends at the first missing or
        half-written one, a complete store must have exactly n_shards valid ones."""
        names = whole_shards(self.fs, self.dir)
        complete = self.manifest.get("complete")
        if complete and (problem := shard_problem(names, int(self.manifest.get("n_shards", len(names))))):
            raise StoreError(f"{self.dir}: {problem}")
        out = []
        for i, n in enumerate(names):
            if int(n) != i:
                break
            try:
                out.append((n, int(self._check(n)["n_rows"])))
            except StoreError as e:
                if complete:  # a damaged shard (e.g. an emptied zarr.json): the fix, as for the others
                    raise StoreError(f"{e}; restore the shard from a copy, or {self._fix}") from e
                break  # a harvest in progress (or killed) is writing it
        return out

    def _check(self, name: str) -> dict:
        return check_shard(self.fs, f"{self.dir}/{SHARDS}/{name}", self.d, self.dtype, self.chunk_rows,
                           self._crc)

    def __getstate__(self) -> dict:  # picklable for DataLoader workers: open arrays are not shipped
        return {k: v for k, v in self.__dict__.items() if k != "_groups"} | {"_groups": {}}

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def num_chunks(self) -> int:
        return len(self._chunk_shard)

    @property
    def num_shards(self) -> int:
        return len(self._shards)

    def __repr__(self) -> str:
        return f"ActivationStore({self.dir!r}, rows={len(self)}, d={self.d}, chunks={self.num_chunks})"

    def _group(self, s: int) -> dict[str, Any]:
        """The open arrays of shard s (and its done-record), cached."""
        if s not in self._groups:
            where = f"{self.dir}/{SHARDS}/{self._shards[s][0]}"
            g = zarr.open_group(zarr_url(self.fs, where), mode="r")
            self._groups[s] = {k: g[k] for k in ARRAYS} | {DONE_KEY: g.attrs[DONE_KEY]}
        return self._groups[s]

    def chunk_bounds(self, i: int) -> tuple[int, int]:
        """Global row range [start, stop) of chunk i."""
        if not 0 <= i < self.num_chunks:
            raise IndexError(f"chunk {i} out of range 0..{self.num_chunks - 1}")
        s = int(self._chunk_shard[i])
        start = int(self._offsets[s]) + (i - int(self._chunk_first[s])) * self.chunk_rows
        return start, min(start + self.chunk_rows, int(self._offsets[s + 1]))

    def read_chunk(self, i: int, raw: bool = False) -> Rows:
        return self.read_rows(*self.chunk_bounds(i), raw=raw)

    @property
    def acts_dtype(self) -> np.dtype:
        """The dtype ``read_acts`` gives: float16 for float16 stores, else float32."""
        return np.dtype(np.float16 if self.dtype_name == "float16" else np.float32)

    def read_acts(self, i: int, out: np.ndarray | None = None) -> np.ndarray:
        """The acts of chunk i [n, d], as ``read_chunk(i, raw=True).acts`` (float16 stays float16; float32
        and bfloat16 give float32, ``acts_dtype``) but nothing else: on a local disk straight from its chunk
        file (size and crc32c checked), the training stream's fast path; elsewhere through zarr. ``out``
        [n, d] ``acts_dtype``: filled and returned (a whole chunk of a local float16 or float32 store is
        read into it with no copy)."""
        start, stop = self.chunk_bounds(i)
        direct = self._crc and is_local(self.fs)
        if (direct and out is not None and stop - start == self.chunk_rows and self.dtype_name != "bfloat16"
                and out.flags.c_contiguous):
            self._chunk_file(i, out.reshape(-1).view(np.uint8))
            return out
        if direct:
            raw = self._chunk_file(i).view(self.dtype).reshape(self.chunk_rows, self.d)[:stop - start]
            acts = decode_acts(raw, self.dtype_name) if self.dtype_name == "bfloat16" else raw  # [n, d]
        else:
            acts = self.read_chunk(i, raw=True).acts
        if out is None:
            return acts
        out[...] = acts
        return out

    def _chunk_file(self, i: int, out: np.ndarray | None = None) -> np.ndarray:
        """The bytes of chunk i's acts file, padding included (``layout.read_chunk_file``); a bad file is a
        StoreError naming the shard and the rows."""
        s = int(self._chunk_shard[i])
        shard = f"{self.dir}/{SHARDS}/{self._shards[s][0]}"
        path = f"{shard}/acts/{chunk_key(i - int(self._chunk_first[s]), 2)}"
        try:
            return read_chunk_file(path, self.chunk_rows * self.d * self.dtype.itemsize, out)
        except (OSError, ValueError) as e:
            start, stop = (r - int(self._offsets[s]) for r in self.chunk_bounds(i))
            raise StoreError(f"shard {shard} is corrupted or truncated: rows {start}..{stop} of it cannot be "
                             f"read ({type(e).__name__}: {e}); {self._fix}") from e

    def read_rows(self, start: int, stop: int, raw: bool = False) -> Rows:
        """Rows [start, stop) (may span shards); acts as float32, or as stored (``self.dtype``) if ``raw``
        (the float16 -> float32 cast costs more than the read: a GPU can do it instead); bfloat16
        stores always give float32."""
        out = self._read(start, stop, ARRAYS)
        acts = out["acts"] if raw and self.dtype_name != "bfloat16" else decode_acts(out["acts"],
                                                                                        self.dtype_name)
        return Rows(acts=acts, token_ids=out["token_ids"].astype(np.int32),
                    doc=out["doc"].astype(np.int64), pos=out["pos"].astype(np.int32))

    def read_meta(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(token_ids [n] int32, doc [n] int64, pos [n] int32) of rows [start, stop), their activations not
        read: 16 bytes a row instead of 16 + d x 2 or 4 (the contexts analysis shows)."""
        out = self._read(start, stop, tuple(META_DTYPES))
        return out["token_ids"].astype(np.int32), out["doc"].astype(np.int64), out["pos"].astype(np.int32)

    def _read(self, start: int, stop: int, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
        """The arrays ``keys`` (of ``ARRAYS``) of rows [start, stop), as stored (checksums checked)."""
        n = len(self)
        if not 0 <= start <= stop <= n:
            raise IndexError(f"rows [{start}, {stop}) out of range [0, {n})")
        parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        s = int(np.searchsorted(self._offsets, start, side="right")) - 1
        while start < stop:
            base = int(self._offsets[s])
            lo, hi = start - base, min(stop, int(self._offsets[s + 1])) - base
            g = self._group(s)
            try:
                for k in keys:
                    parts[k].append(g[k][lo:hi])
            except Exception as e:  # crc32c mismatch, missing or short chunk file
                raise StoreError(f"shard {self.dir}/{SHARDS}/{self._shards[s][0]} is corrupted or "
                                 f"truncated: rows {lo}..{hi} of it cannot be read ({type(e).__name__}: "
                                 f"{e}); {self._fix}") from e
            start += hi - lo
            s += 1
        out = {k: np.concatenate(v) if len(v) != 1 else v[0] for k, v in parts.items() if v}
        if not out:  # empty range
            out = {"acts": np.empty((0, self.d), self.dtype)}
            out |= {k: np.empty(0, dt) for k, dt in META_DTYPES.items()}
        return out

    def verify(self, progress: bool = False) -> None:
        """Re-read every shard, check its chunks' crc32c and its done-record checksum (crc32c, or sha256 in
        format 1-2 stores); StoreError names a bad shard. ``progress``: a bar of the shards on a terminal
        (``actdict store --verify``: ~15 s a GB)."""
        from tqdm.auto import tqdm

        from actdict.bars import bar_disabled, bar_timing
        from actdict.errors import one_line  # the hook is a folder's name: someone else's, in a shared store

        for name, _ in tqdm(self._shards, desc=one_line(f"verify {self.hook}"), unit="shard", leave=False,
                            disable=bar_disabled(None if progress else True), **bar_timing()):
            where = f"{self.dir}/{SHARDS}/{name}"
            if why := shard_damage(self.fs, where, self.d, self.dtype, self.chunk_rows, self._crc):
                raise StoreError(f"shard {where} is corrupted: {why}; restore the shard from a copy, or "
                                 f"{self._fix}")

    @property
    def _fix(self) -> str:
        """How to mend a damaged shard, as the hook was written: a token harvest rewrites only the damaged
        shards, an embeddings harvest or a config's vectors import the whole hook, and vectors written without
        a config have no harvest to rerun (the repair prints the import command that writes them again)."""
        repair = f"run `actdict store {self.path} --repair`"
        if not self.manifest.get("config_hash"):
            return (f"{repair}, which prints the command that imports these vectors again (no harvest wrote "
                    "them)")
        again = f"{repair} and the harvest command that made the store again"
        if self.manifest.get("kind") in ("embeddings", "vectors"):
            return f"{again} (it writes the hook anew)"
        return f"{again} (it writes only the damaged shards)"


def shard_damage(fs, where: str, d: int, dtype: np.dtype, chunk_rows: int, crc: bool) -> str | None:
    """What is wrong with the shard at ``where`` (its done-record, shapes and chunk-file sizes; then every
    chunk re-read, its crc32c checked, and the done-record checksum), in words; None when it is intact."""
    try:
        record = check_shard(fs, where, d, dtype, chunk_rows, crc)
    except StoreError as e:
        return str(e).removeprefix(f"shard {where} is ")
    g = zarr.open_group(zarr_url(fs, where), mode="r")
    n, h = int(record["n_rows"]), ShardDigest("crc32c" if "crc32c" in record else "sha256")
    for k in ARRAYS:
        for a in range(0, n, chunk_rows):
            try:
                h.update(g[k][a:a + chunk_rows])
            except Exception as e:  # crc32c mismatch, missing or short chunk file
                why = "checksum mismatch" if "checksum" in str(e).lower() else type(e).__name__
                file = f"{k}/{chunk_key(a // chunk_rows, 2 if k == 'acts' else 1)}"
                return f"its {k!r} rows {a}..{min(a + chunk_rows, n) - 1} (file {file}) fail to read ({why})"
    return None if h.hexdigest() == record[h.kind] else "checksum mismatch"


def open_store(path: str, hook: str | None = None, allow_partial: bool = False,
               hooks: list[str] | None = None) -> ActivationStore:
    """Open one hook of the store at ``path`` (``hook`` may be omitted when there is exactly one; ``path``
    may also be the hook's own folder); ``hooks``: the store's hooks when the caller has listed them
    already (``list_hooks``)."""
    hooks = list_hooks(path) if hooks is None else hooks
    if not hooks and (own := hook_folder(path)) and hook in (None, own[1]):
        return open_store(*own, allow_partial)  # a hook's own folder, as ActivationStore shows it
    if not hooks:
        where = path if "://" in str(path) else f"{path} ({os.path.abspath(os.path.expanduser(path))})"
        raise StoreError(f"no activation store at {where} (no <hook>/{MANIFEST} found): run the harvest "
                         "first, or run from the folder the config's paths are relative to")
    if hook is None:
        if len(hooks) > 1:
            raise StoreError(f"store {path} has {len(hooks)} hooks, name one of: {hooks}")
        hook = hooks[0]
    if hook not in hooks:
        raise StoreError(f"store {path} has no hook {hook!r}; valid hooks: {hooks}")
    return ActivationStore(path, hook, allow_partial=allow_partial)


def hook_folder(path: str) -> tuple[str, str] | None:
    """(store, hook) when ``path`` is a hook's own folder (``<store>/<hook>``), else None."""
    where = str(path).rstrip("/")
    if "://" in where:
        parent, _, name = where.rpartition("/")
    else:
        local = os.path.abspath(os.path.expanduser(where))  # '~/s/h': fsspec reads the store there too
        parent, name = os.path.dirname(local), os.path.basename(local)
    return (parent, name) if parent and name in list_hooks(parent) else None
