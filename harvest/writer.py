"""Writing a store: ``StoreWriter`` (a stream of rows -> full shards) and ``write_vectors`` (user vectors).

The token harvest (``actdict.harvest.run``) writes shards by index instead (``layout.write_shard``), so
that a resumed or distributed harvest writes each shard exactly once; this streaming writer serves the
one-process writers (embeddings, imported vectors, tests). Import both from ``actdict.harvest.store``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from itertools import chain

import numpy as np

from actdict.config import ConfigError
from actdict.errors import ActdictError
from actdict.harvest.layout import (
    ACT_DTYPES,
    FORMAT_VERSION,
    MANIFEST,
    META_DTYPES,
    SHARDS,
    StoreError,
    decode_acts,
    encode_acts,
    fs_of,
    is_local,
    make_dirs,
    write_json,
    write_shard,
)
from actdict.lock import make_folders, remove_made
from actdict.names import is_hook_name

CALLER_KEYS = ("model", "revision", "numerics", "tokenizer", "corpus", "config_hash")


def new_manifest(manifest: dict, d: int, dtype: str, shard_rows: int, chunk_rows: int) -> dict:
    """The manifest of a hook not yet complete: the caller's keys + the layout keys (ConfigError, a
    ValueError, for bad arguments: the command lines print it as one line)."""
    if not manifest.get("hook"):
        raise ConfigError("manifest must name the 'hook'")
    if not is_hook_name(hook := str(manifest["hook"])):  # '..': the store's parent folder
        raise ConfigError(f"hook {hook!r} cannot name a folder of the store: no '/', not starting with '.'")
    if dtype not in ACT_DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(ACT_DTYPES)}, got {dtype!r}")
    if chunk_rows <= 0 or shard_rows <= 0 or shard_rows % chunk_rows:
        raise ConfigError(f"shard_rows ({shard_rows}) must be a positive multiple of "
                          f"chunk_rows ({chunk_rows})")
    for key, val in (("d", d), ("dtype", dtype)):
        if manifest.get(key) not in (None, val):
            raise ConfigError(f"manifest {key}={manifest[key]!r} disagrees with {val!r}")
    return {k: None for k in CALLER_KEYS} | dict(manifest) | {
        "hook": str(manifest["hook"]), "dtype": dtype, "d": int(d), "shard_rows": int(shard_rows),
        "chunk_rows": int(chunk_rows), "format_version": FORMAT_VERSION, "complete": False,
        "n_rows": 0, "n_shards": 0,
    }


class NonFiniteError(ActdictError, ValueError):
    """A row that is not finite once cast to the store's dtype (every writer raises this one)."""


class UnderflowError(NonFiniteError):
    """A nonzero row that float16 stores below its normal range (subnormal or 0: few digits kept, or none),
    or that float32 / bfloat16 store as 0 (float64 rows under their range)."""


def non_finite(where: str, dtype: str, row: int | str | None = None, nan: bool | None = None,
               forward: str = "") -> NonFiniteError:
    """The error of a non-finite stored value; ``row`` (global, or the words naming it) and ``nan`` (the
    input itself was not finite there) when the writer knows them, ``forward``: the dtype of a model's
    forward that made it."""
    at = f"row {row:,}" if isinstance(row, int) else row or "some row"
    if nan:
        return NonFiniteError(f"{where}: {at} holds NaN or inf; drop or fix it (stored rows must be finite)")
    if dtype != "float16" and nan is False:  # float64 input past float32's range
        return NonFiniteError(f"{where}: {at} has values beyond {dtype}'s range")
    if dtype != "float16":  # a model's activations (nan unknown): not finite before the cast
        hint = ("; a bfloat16 forward may overflow where float32 does not: try harvest.dtype=float32"
                if forward in ("bfloat16", "float16") else "")
        return NonFiniteError(f"{where}: {at} holds NaN or inf: the model's forward "
                              f"({forward or 'its dtype'}) made it{hint}")
    cause = "" if nan is False else "NaN in the input, or "
    return NonFiniteError(
        f"{where}: {at} is not finite once cast to float16 ({cause}values beyond float16's range, |x| > "
        "65504): store them as float32 or bfloat16 (harvest.store_dtype; --dtype of python -m "
        "actdict.harvest.vectors)")


def encode_checked(acts: np.ndarray, dtype: str, where: str, first_row: int = 0) -> np.ndarray:
    """acts [n, d] in the stored dtype; NonFiniteError naming the first row (global: ``first_row`` + its
    index) that is not finite after the cast."""
    cast = encode_acts(acts, dtype)  # [n, d]
    ok = np.isfinite(decode_acts(cast, dtype) if dtype == "bfloat16" else cast).all(axis=1)  # [n]
    if not ok.all():
        r = int(np.argmin(ok))
        raise non_finite(where, dtype, first_row + r, nan=not np.isfinite(acts[r]).all())
    if dtype == "float16" and len(cast):  # the other end of float16's range: rows it flushes to (near) 0
        tiny = np.finfo(np.float16).tiny  # 6.1e-05, the smallest normal float16
        mag = cast.view(np.uint16) & 0x7FFF  # [n, d] |x|'s bits: ordered as the (finite) values, integer
        low = np.flatnonzero(mag.max(axis=1) < 0x0400)  # [m] rows stored subnormal or 0 throughout (< tiny)
        if len(low) and (big := np.abs(acts[low]).max(axis=1)).any():  # not all-zero rows (stored exactly)
            i = int(np.flatnonzero(big)[0])
            raise UnderflowError(
                f"{where}: row {first_row + int(low[i]):,} lies below float16's normal range (its largest "
                f"|x| is {float(big[i]):.3g} < {float(tiny):.2g}): float16 keeps few of its digits or none "
                "(values under 6e-08 become 0); store the rows as float32 or bfloat16 (harvest.store_dtype; "
                "--dtype of python -m actdict.harvest.vectors), or scale them up")
    if dtype != "float16" and acts.dtype == np.float64 and len(cast):  # float64 beyond float32's range
        kept = decode_acts(cast, dtype) if dtype == "bfloat16" else cast  # [n, d]
        if len(lost := np.flatnonzero(~kept.any(axis=1) & acts.any(axis=1))):  # nonzero rows stored as 0
            r = int(lost[0])
            raise UnderflowError(
                f"{where}: row {first_row + r:,} becomes 0 in {dtype} (its largest |x| is "
                f"{float(np.abs(acts[r]).max()):.3g}, under {dtype}'s smallest value, "
                f"{ {'float32': 1.4e-45, 'bfloat16': 9.2e-41}[dtype]:.2g}): scale the rows up")
    return cast


CHUNK_ROWS, SHARD_ROWS = 4096, 65536  # a store's default layout (the harvest config's defaults too)


def default_layout(n: int | None, chunk_rows: int = 0, shard_rows: int = 0) -> tuple[int, int]:
    """(chunk_rows, shard_rows) of a vectors store of ``n`` rows (None: unknown); 0 = not given. Given values
    are kept (``new_manifest`` checks them); a missing chunk_rows is ``CHUNK_ROWS``, or, when n is known and
    shard_rows is missing too or n is under 8 such chunks, ``chunk_rows_for(n, shard_rows)``: a small set
    still has chunks to hold out. A missing shard_rows is 16 chunks."""
    if chunk_rows < 0 or shard_rows < 0:  # before a default made from them hides what was given
        raise ConfigError(f"chunk_rows ({chunk_rows}) and shard_rows ({shard_rows}) must be positive (or 0 / "
                          "left out: the default)")
    if n and chunk_rows > max(n, CHUNK_ROWS):  # the one chunk is written whole: 1e8 rows for 8,192 vectors
        raise ConfigError(f"chunk_rows {chunk_rows:,} is more than the {n:,} rows to write (and the default "
                          f"{CHUNK_ROWS:,}), and a chunk is stored whole, padded: leave chunk_rows out for "
                          "the default, or give at most the rows")
    if not chunk_rows:
        fit = n and (not shard_rows or n < 8 * CHUNK_ROWS)
        chunk_rows = chunk_rows_for(n, shard_rows or SHARD_ROWS) if fit else CHUNK_ROWS
        if fit and shard_rows and n > 1024 * chunk_rows:  # the shard size allows only tiny chunks: keep
            chunk_rows = chunk_rows_for(n, SHARD_ROWS)  # the natural ones (and new_manifest refuses the pair)
    return chunk_rows, shard_rows or 16 * chunk_rows


def chunk_rows_for(n: int, shard_rows: int, cap: int = CHUNK_ROWS) -> int:
    """A chunk_rows that cuts n rows into at least 8 chunks (the unit of train's train/test split) and
    divides shard_rows (as a store requires): the largest such power of two, at most ``cap``."""
    c = 1 << max(0, (max(1, min(n // 8, cap))).bit_length() - 1)  # the largest power of two <= n / 8, cap
    while shard_rows % c:
        c //= 2
    return c


class StoreWriter:
    """Writes the rows of one hook: ``append`` buffers and flushes full shards, ``close`` the rest.

    ``path`` is the store root; the hook folder is ``<path>/<manifest["hook"]>``. The manifest is written
    at once with ``complete: false`` and rewritten by ``close`` with ``complete: true`` and ``n_rows``.
    Used as a context manager, an exception leaves the store incomplete (not closed). A store whose
    manifest has no ``config_hash`` (vectors written from Python or ``python -m actdict.harvest.vectors``)
    gets a ``content`` key instead, a digest of its shards' checksums: what identifies its rows to training
    (``train.identity.store_key``), so that other vectors written over it are not taken for the old ones.
    """

    def __init__(self, path: str, manifest: dict, d: int, dtype: str = "float16",
                 shard_rows: int = SHARD_ROWS, chunk_rows: int = CHUNK_ROWS, overwrite: bool = False):
        try:
            self.manifest = new_manifest(manifest, d, dtype, shard_rows, chunk_rows)
        except ValueError as e:
            raise ConfigError(f"StoreWriter: {e}") from e
        self.fs, root = fs_of(path)
        self.hook = self.manifest["hook"]
        self.dir = f"{root}/{self.hook}"
        if self.fs.exists(self.dir):
            if not overwrite:
                raise StoreError(f"{self.dir} already exists: delete it, choose another store, "
                                 "or replace it (overwrite=True; --overwrite on the command line)")
            self.fs.rm(self.dir, recursive=True)
        make_dirs(self.fs, f"{self.dir}/{SHARDS}")
        self.d, self.dtype_name, self.dtype = int(d), dtype, ACT_DTYPES[dtype]
        self.shard_rows, self.chunk_rows = int(shard_rows), int(chunk_rows)
        write_json(self.fs, f"{self.dir}/{MANIFEST}", self.manifest)
        self._buf = {"acts": np.empty((self.shard_rows, self.d), self.dtype)}  # [shard_rows, d]
        self._buf |= {k: np.empty(self.shard_rows, dt) for k, dt in META_DTYPES.items()}  # [shard_rows]
        self._fill = self._n_rows = self._n_shards = 0
        self._digests: list[str] = []  # each shard's done-record checksum
        self._closed = False

    def append(self, acts: np.ndarray, token_ids, doc, pos) -> None:
        """Add rows: acts [n, d] (any float dtype), token_ids/doc/pos [n]."""
        if self._closed:
            raise StoreError(f"{self.dir}: append after close")
        acts = np.asarray(acts)
        if acts.ndim != 2 or acts.shape[1] != self.d:
            raise ValueError(f"acts must have shape [n, {self.d}], got {acts.shape}")
        n = acts.shape[0]
        meta = {"token_ids": token_ids, "doc": doc, "pos": pos}
        meta = {k: np.asarray(v).reshape(-1) for k, v in meta.items()}
        for k, v in meta.items():
            if v.shape != (n,):
                raise ValueError(f"{k} must have shape [{n}] like acts, got {v.shape}")
        cast = encode_checked(acts, self.dtype_name, self.dir, self._n_rows + self._fill)  # [n, d]
        done = 0
        while done < n:
            take = min(n - done, self.shard_rows - self._fill)
            sl = slice(self._fill, self._fill + take)
            self._buf["acts"][sl] = cast[done:done + take]
            for k, v in meta.items():
                self._buf[k][sl] = v[done:done + take]
            self._fill += take
            done += take
            if self._fill == self.shard_rows:
                self._flush()

    def _flush(self) -> None:
        if self._fill == 0:
            return
        done = write_shard(self.fs, self.dir, self._n_shards,
                           {k: v[:self._fill] for k, v in self._buf.items()}, self.chunk_rows)
        self._digests.append(f"{done['n_rows']}:{done['crc32c']}")
        self._n_rows += self._fill
        self._n_shards += 1
        self._fill = 0

    def close(self) -> None:
        """Flush the last partial shard and mark the store complete."""
        if self._closed:
            return
        self._flush()
        self.manifest |= {"complete": True, "n_rows": self._n_rows, "n_shards": self._n_shards}
        if not self.manifest.get("config_hash"):
            self.manifest["content"] = content_digest(self._digests)
        write_json(self.fs, f"{self.dir}/{MANIFEST}", self.manifest)
        self._closed = True

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


def content_digest(shards: list[str]) -> str:
    """A store's ``content`` key: sha256 (16 hex chars) of its shards' 'rows:checksum' entries, in order."""
    return hashlib.sha256(",".join(shards).encode()).hexdigest()[:16]


def write_vectors(path: str, x, manifest: dict | None = None, hook: str = "vectors", **kw):
    """Store the user's own vectors as a hook (token_ids=-1, doc=row index, pos=0); returns the opened
    ``ActivationStore``. ``x`` is an array or torch tensor [n, d] (a ``np.load(..., mmap_mode="r")`` memmap
    is read one shard at a time) or an iterator of [b, d] blocks (streamed: one block at a time in memory).
    ``kw`` goes to StoreWriter (dtype defaults to float32: kept exactly; the layout to ``default_layout``
    of the array's rows). A failure part way (a non-finite row, an error of the iterator, an interrupt)
    removes the hook it began and the folders it made for it (the store folder, its missing parents), never
    a folder that existed before or one that holds something else. Replacing a hook (``overwrite``) writes
    the new one beside it (``<path>/.replacing-<hook>/``) and swaps it in only once it is whole: a failed
    replacement leaves the old hook as it was. What a killed replacement left in that folder is removed
    first (a kill between the old hook's removal and the swap left the new one only there)."""
    from actdict.harvest.store import open_store

    if isinstance(x, Iterator):
        head = next(x, np.empty((0, 0)))
        src, blocks = _tensor_dtype(head), map(_as_numpy, chain([head], x))
    else:
        src, x = _tensor_dtype(x), _as_numpy(x)
        if x.ndim != 2:
            raise ValueError(f"vectors must have shape [n, d], got {x.shape}")
        kw["chunk_rows"], kw["shard_rows"] = default_layout(len(x), kw.get("chunk_rows", 0),
                                                            kw.get("shard_rows", 0))
        step = kw["shard_rows"]
        blocks = iter([x[a:a + step] for a in range(0, len(x), step)] or [x])
    first = np.asarray(next(blocks, np.empty((0, 0))))
    if first.ndim != 2:
        raise ValueError(f"vectors must have shape [n, d], got a block of shape {first.shape}")
    kw.setdefault("dtype", "float32")
    m = {"model": None, "numerics": f"user vectors ({src or first.dtype}), stored {kw['dtype']}"}
    m |= dict(manifest or {})
    m["hook"] = hook
    fs, root = fs_of(path)
    if fs.exists(staged := f"{root}/.replacing-{hook}"):  # a replacement a kill stopped before it was swapped
        fs.rm(staged, recursive=True)  # in or cleared away: this call writes the hook anew
    if kw.get("overwrite") and fs.exists(f"{root}/{hook}"):  # written beside it, then swapped in
        return _replace_hook(path, hook, m, first, blocks, kw)
    made: list[str] = []  # the folders this call makes: the only ones it may remove (none on object stores)
    if is_local(fs):
        make_folders(root, made)
    new_hook = not fs.exists(f"{root}/{hook}")  # StoreWriter makes it (and refuses one that is there)
    w = None
    try:
        w = StoreWriter(path, m, d=first.shape[1], **kw)
        _write_rows(w, chain([first], blocks))
    except BaseException:  # a bad row further on, an interrupt: nothing half-written is left
        began = w is not None or new_hook  # the hook this call began, never an existing one
        if began and fs.exists(f"{root}/{hook}"):
            fs.rm(f"{root}/{hook}", recursive=True)
        remove_made(made)  # and the store folder (and its parents) made for it, when nothing else is there
        raise
    return open_store(path, hook)


def _is_tensor(x) -> bool:
    return hasattr(x, "detach") and hasattr(x, "cpu")  # torch.Tensor, without importing torch for numpy input


def _tensor_dtype(x) -> str | None:
    """A torch tensor's dtype as the manifest names it ('bfloat16', which ``_as_numpy`` widens), else None."""
    return str(x.dtype).removeprefix("torch.") if _is_tensor(x) else None


def _as_numpy(x) -> np.ndarray:
    """``x`` as a numpy array: a torch tensor (on any device, with grad, bfloat16 widened to float32 exactly)
    or anything ``np.asarray`` takes (a memmap: a view of the map, not read here)."""
    if _is_tensor(x):
        x = x.detach().cpu()
        return (x.float() if str(x.dtype) == "torch.bfloat16" else x).numpy()
    return np.asarray(x)


def _write_rows(w: StoreWriter, blocks: Iterator[np.ndarray]) -> None:
    """Append the vectors' blocks [b, d] (token_ids -1, doc = row index, pos 0) and close ``w``."""
    n = 0
    for block in blocks:  # [b, d] each
        rows = np.arange(n, n + len(block), dtype=np.int64)  # [b]
        w.append(block, np.full(len(rows), -1, np.int32), rows, np.zeros(len(rows), np.int32))
        n += len(rows)
    w.close()


def _replace_hook(path: str, hook: str, manifest: dict, first: np.ndarray, blocks: Iterator[np.ndarray],
                  kw: dict):
    """``write_vectors`` over an existing hook: the new one is written whole in ``<path>/.replacing-<hook>/``
    first, then the old one is removed and the new one moved into its place; a failure before the swap
    removes only the staging folder."""
    from actdict.harvest.store import open_store

    fs, root = fs_of(path)
    staging, sroot = f"{path.rstrip('/')}/.replacing-{hook}", f"{root}/.replacing-{hook}"  # as given; in fs
    try:
        _write_rows(StoreWriter(staging, manifest, d=first.shape[1], **kw), chain([first], blocks))
    except BaseException:
        if fs.exists(sroot):
            fs.rm(sroot, recursive=True)
        raise
    fs.rm(f"{root}/{hook}", recursive=True)
    if is_local(fs):
        fs.mv(f"{sroot}/{hook}", f"{root}/{hook}", recursive=True)  # a rename
    else:  # an object store has no folders to rename: each object copied
        fs.invalidate_cache()
        for obj in fs.find(f"{sroot}/{hook}"):
            fs.copy(obj, f"{root}/{hook}{obj[len(f'{sroot}/{hook}'):]}")
    fs.rm(sroot, recursive=True)
    fs.invalidate_cache()
    return open_store(path, hook)
