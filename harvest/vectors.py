"""Bring your own vectors: import a ``.npy``, ``.safetensors`` or ``.parquet`` file of [n, d] vectors
into the activation store (``token_ids`` = -1, ``doc`` = row index, ``pos`` = 0), streamed block by block
(npy through a memmap, safetensors through lazy slices, parquet through pyarrow record batches).

Two entries:
* config: ``harvest.mode: vectors`` with ``harvest.vectors.path``; ``actdict run CONFIG`` then trains and
  analyses on them like on a harvest (the file's fingerprint, path + size + mtime, is recorded: a rerun
  after the file changed imports it again, and training then retrains);
* command line: ``python -m actdict.harvest.vectors FILE STORE [--key K] [--hook H] [--dtype D]``.

FILE may also be a folder of files of one format, or a glob pattern (``'emb/part-*.npy'``, quoted): its files
are imported in the natural order of their paths (part-2 before part-10) as one run of rows (vectors written
in shards), each checked as one file is and all of one width; of mixed dtypes, the manifest names each.

Parquet layouts: one list column holding each row's vector (name it with ``key``; found by itself when it
is the only list column), or, with no list column, every column one dimension (all numeric).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np

from actdict.bars import bar_disabled, bar_timing
from actdict.config import ConfigError
from actdict.errors import ActdictError, one_line, open_files_hint, printable
from actdict.files import part_files
from actdict.names import check_hook_name

FORMATS = (".npy", ".safetensors", ".parquet")


class VectorsError(ActdictError, ValueError):
    """A vectors file that cannot be imported (the message says what is wrong and what to do)."""


@dataclass(frozen=True)
class VectorsConfig:
    """Your own vectors (nested as ``harvest.vectors``; used when ``harvest.mode: vectors``)."""

    path: str = ""
    """A ``.npy``, ``.safetensors`` or ``.parquet`` file holding vectors [n, d]; or a folder of such files, or
    a glob pattern naming them (``emb/part-*.npy``): their rows in the natural order of the paths (part-2
    before part-10)."""
    key: str = ""
    """safetensors: the tensor's name (empty: the file's only tensor); parquet: the list column holding the
    vectors (empty: the only list column, or else every column is one dimension)."""
    hook: str = "vectors"
    """Name of the store folder (and manifest ``hook``) the vectors go to."""
    block_rows: int = 16384
    """Rows read at a time (memory held: one block; for parquet, one row group of the file)."""

    def __post_init__(self) -> None:
        check_hook_name(self.hook, "harvest.vectors.hook")
        if self.block_rows < 1:
            raise ConfigError(f"harvest.vectors.block_rows must be >= 1, got {self.block_rows}")


# ------------------------------------------------------------------------------------------- readers


def _check_dtype(dtype: np.dtype, where: str) -> None:
    if dtype.kind not in "fiu":
        raise VectorsError(f"{where}: dtype {dtype} is not numeric (float or integer vectors are needed)")


def _check_shape(shape: tuple, where: str) -> None:
    if len(shape) != 2:
        raise VectorsError(f"{where}: shape {tuple(shape)} has {len(shape)} dimensions; vectors must be a "
                           "2-D array [n, d] (reshape(n, -1) flattens per-row tensors)")
    if shape[0] == 0 or shape[1] == 0:
        raise VectorsError(f"{where}: shape {tuple(shape)} holds no vectors")


def _no_key(path: Path, key: str) -> None:
    """A .npy file holds one array: a ``key`` given for it names nothing (an .npz's, a safetensors' name)."""
    if key:
        raise VectorsError(f"{path}: a .npy file holds one array, and key ({key!r}) names a safetensors "
                           "tensor or a parquet column: leave key out")


def _npy_blocks(path: Path, key: str, block: int) -> Iterator[np.ndarray]:
    _no_key(path, key)
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":  # numpy would try pickle on anything else, and say so
            raise VectorsError(f"{path}: not a .npy file (no NumPy header); save vectors with np.save")
    try:
        x = np.load(path, mmap_mode="r", allow_pickle=False)  # [n, d] memmap: nothing read yet
    except ValueError as e:  # object arrays, bad header
        raise VectorsError(f"{path}: not a numeric .npy array ({e})") from e
    _check_shape(x.shape, str(path))
    _check_dtype(x.dtype, str(path))
    fortran = x.flags.f_contiguous and not x.flags.c_contiguous  # a column after another on disk
    (n, d), dtype, offset = x.shape, x.dtype, x.offset
    del x  # read, not mapped: each page of a mapping read stays in the process's RSS, the file's by the end
    with open(path, "rb") as f:
        f.seek(offset)
        for a in range(0, n, block):
            b = min(block, n - a)
            if not fortran:
                yield np.fromfile(f, dtype, count=b * d).reshape(-1, d)  # [b, d]
                continue
            out = np.empty((d, b), dtype)  # [d, b]: each column's rows a..a + b, one read each
            for j in range(d):
                f.seek(offset + (j * n + a) * dtype.itemsize)
                out[j] = np.fromfile(f, dtype, count=b)
            yield np.ascontiguousarray(out.T)  # [b, d]


def _safetensors_blocks(path: Path, key: str, block: int) -> Iterator[np.ndarray]:
    import torch
    from safetensors import SafetensorError, safe_open

    try:
        opened = safe_open(str(path), framework="pt")
    except SafetensorError as e:  # an empty, truncated or other file: one line, not the Rust traceback
        raise VectorsError(f"{path}: not a readable safetensors file ({e})") from e
    with opened as f:
        keys = list(f.keys())
        if not key:
            if len(keys) != 1:
                raise VectorsError(f"{path}: holds {len(keys)} tensors {keys}; name one with key "
                                   "(harvest.vectors.key / --key)")
            key = keys[0]
        if key not in keys:
            raise VectorsError(f"{path}: no tensor {key!r}; tensors: {keys}")
        sl = f.get_slice(key)  # lazy: slices read only their rows
        shape, kind = tuple(sl.get_shape()), sl.get_dtype()
        where = f"{path} tensor {key!r}"
        _check_shape(shape, where)
        if kind == "BOOL" or kind.startswith("F8") or kind.startswith("C"):
            raise VectorsError(f"{where}: dtype {kind} is not a plain numeric dtype")
        for a in range(0, shape[0], block):
            t = sl[a:a + block]  # [b, d]
            yield (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def _list_values(col, where: str, first_row: int = 0) -> np.ndarray:
    """[n, d] numbers of a parquet list column (every row the same length, no null rows); ``first_row``: the
    file's row of its first, for the error naming a null row."""
    import pyarrow.compute as pc

    if col.null_count:
        at = first_row + int(np.argmax(col.is_null().to_numpy(zero_copy_only=False)))
        raise VectorsError(f"{where}: row {at:,} is null ({col.null_count} in this block of rows)")
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)  # [n]
    if len(lengths) and (lengths != lengths[0]).any():
        bad = int(np.flatnonzero(lengths != lengths[0])[0])
        raise VectorsError(f"{where}: rows have different lengths ({lengths[0]} and {lengths[bad]})")
    d = int(lengths[0]) if len(lengths) else 0
    if len(lengths) and d == 0:
        raise VectorsError(f"{where}: its lists are empty (d = 0): it holds no vectors")
    return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), d)


def _parquet_blocks(path: Path, key: str, block: int) -> Iterator[np.ndarray]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise VectorsError(f"{path}: not a readable parquet file ({e})") from e
    schema = pf.schema_arrow
    is_list = {f.name: pa.types.is_list(f.type) or pa.types.is_large_list(f.type)
               or pa.types.is_fixed_size_list(f.type) for f in schema}
    lists = [n for n, v in is_list.items() if v]
    if key and key not in schema.names:
        raise VectorsError(f"{path}: no column {key!r}; columns: {schema.names}")
    if not key and len(lists) > 1:
        raise VectorsError(f"{path}: several list columns {lists}; name the vectors with key "
                           "(harvest.vectors.key / --key)")
    key = key or (lists[0] if lists else "")
    cols = [key] if key else schema.names
    for name in cols:
        t = schema.field(name).type
        elem = t.value_type if is_list[name] else t
        if not (pa.types.is_floating(elem) or pa.types.is_integer(elem)):
            how = ("name the column holding the vectors with key (harvest.vectors.key / --key)" if key else
                   "with no list column every column is one dimension: write the file without it (its texts "
                   "can stay in another file for analyze.texts) or the vectors as one list column")
            raise VectorsError(f"{path}: column {name!r} is {t}, not numeric; {how}; columns: {schema.names}")
    if key and not is_list[key]:  # one number per row: d = 1 by a slip, not what key is for
        raise VectorsError(f"{path}: column {key!r} is {schema.field(key).type}, one number per row: key "
                           "names the list column holding each row's vector (without key and with no list "
                           f"column, every column is one dimension); columns: {schema.names}")
    if pf.metadata.num_rows == 0:
        raise VectorsError(f"{path}: holds no vectors")
    at = 0  # the file's row of the batch's first
    # one row group at a time: pyarrow's iter_batches over the whole file keeps every row group it has
    # decoded until the iterator ends (an 800 MB file held ~1 GB), over one group it holds that group only
    groups = (pf.iter_batches(batch_size=block, columns=cols, row_groups=[g])
              for g in range(pf.num_row_groups))
    for batch in chain.from_iterable(groups):
        if key and is_list[key]:
            yield _list_values(batch.column(0), f"{path} column {key!r}", at)  # [b, d]
        else:
            yield np.column_stack([c.to_numpy(zero_copy_only=False) for c in batch.columns])  # [b, d]
        at += batch.num_rows


def vector_files(path: str | Path) -> list[Path]:
    """The files ``path`` names (``actdict.files.part_files``: itself; a folder's ``FORMATS`` files but
    hidden ones; a glob pattern's matching files; the last two in the natural order of their paths, part-2
    before part-10), all of one format (VectorsError: none, or several formats)."""
    files, wrong = part_files(path, FORMATS)
    if wrong:
        raise VectorsError(f"vectors {wrong}")
    return files


def unreadable(path: str | Path, key: str = "") -> str | None:
    """Why an import of ``path`` would stop on its first rows (a file missing, of no known format, ...: the
    VectorsError of ``vector_blocks``), or None; reads one row."""
    try:
        next(vector_blocks(path, key, block_rows=1), None)
    except VectorsError as e:
        return str(e)
    return None


def vector_blocks(path: str | Path, key: str = "", block_rows: int = 16384) -> Iterator[np.ndarray]:
    """Checked [b, d] blocks of the vectors in ``path`` (a file, or the files ``vector_files`` finds, one
    after the other), in row order.

    Raises VectorsError for an unknown format, a shape that is not [n, d], non-numeric data, rows of
    different widths (across files too), or rows holding NaN/inf (the first such row of its file is named)."""
    d, files = None, vector_files(path)
    for p in files:
        if not p.is_file():
            gone = " (a link to a file that is gone)" if p.is_symlink() else ""
            raise VectorsError(f"vectors file {str(path) if p == Path(path).expanduser() else str(p)!r} does "
                               f"not exist{gone}")
        if len(files) > 1 and vector_rows(p, key) == 0:  # an empty part (np.array_split's, a partition's)
            continue  # adds no row; the import of no row at all is refused by its caller
        n = 0  # rows of this file so far
        for x in _format(p)[0](p, key, block_rows):  # [b, d]
            d = x.shape[1] if d is None else d
            if x.ndim != 2 or x.shape[1] != d:
                raise VectorsError(f"{p}: rows {n}.. have width {x.shape[1:]}, earlier rows {d}")
            bad = ~np.isfinite(x).all(axis=1)  # [b]
            if bad.any():
                first = n + int(np.flatnonzero(bad)[0])
                raise VectorsError(f"{p}: row {first} holds NaN or inf ({int(bad.sum())} such rows in rows "
                                   f"{n}..{n + len(x) - 1}); drop or fix them, then import again")
            n += len(x)
            yield x


def vector_rows(path: str | Path, key: str = "") -> int | None:
    """How many vectors ``path`` holds (its files', added), from their headers alone (None when it cannot
    tell: the import then says what is wrong)."""
    try:
        return sum(_format(p)[1](p, key) for p in vector_files(path))
    except Exception:  # noqa: BLE001 (unreadable here, or a header without a count: the import says)
        return None


def _is_bf16(p: Path, key: str) -> bool:
    """Whether ``p`` is a safetensors file whose tensor ``key`` (or only tensor) is bfloat16, which numpy
    lacks: its blocks arrive as float32 (exactly), and the manifest names the file's own dtype."""
    if _format(p)[1] is not _safetensors_rows:
        return False
    from safetensors import safe_open

    with safe_open(str(p), framework="pt") as f:
        return f.get_slice(key or next(iter(f.keys()))).get_dtype() == "BF16"


def _file_dtype(p: Path, key: str) -> str:
    """The dtype of the vectors file ``p`` as the manifest names it (bfloat16 included), from its first row
    (checked as the import checks it: VectorsError)."""
    first = next(vector_blocks(p, key, 1))
    return "bfloat16" if _is_bf16(p, key) else str(first.dtype)


def _npy_rows(p: Path, key: str) -> int:
    return int(np.load(p, mmap_mode="r", allow_pickle=False).shape[0])


def _safetensors_rows(p: Path, key: str) -> int | None:
    from safetensors import safe_open

    with safe_open(str(p), framework="pt") as f:
        keys = list(f.keys())
        if key not in keys and len(keys) != 1:
            return None
        return int(f.get_slice(key or keys[0]).get_shape()[0])


def _parquet_rows(p: Path, key: str) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(p).metadata.num_rows)


def texts_hint(path: str | Path) -> str:
    """' (its texts, ...: analyze.texts=FILE shows them in the report)' for a parquet file that also holds a
    string column ``text``, or one string column (analysis reads the same file's texts there:
    ``analyze/textfile.py``); '' otherwise."""
    p = vector_files(path)[0]  # shards: the first one's columns
    if p.suffix.lower() != ".parquet":
        return ""
    import pyarrow.parquet as pq

    from actdict.files import string_columns

    strings = string_columns(pq.ParquetFile(p).schema_arrow)
    if "text" not in strings and len(strings) != 1:
        return ""
    col = "text" if "text" in strings else strings[0]
    return f" (its texts, column {col!r}: analyze.texts={path} shows them in the report)"


def _format(p: Path) -> tuple[Callable, Callable]:
    """(blocks reader, header row counter) of the vectors file ``p`` by its suffix."""
    readers = {".npy": (_npy_blocks, _npy_rows), ".safetensors": (_safetensors_blocks, _safetensors_rows),
               ".parquet": (_parquet_blocks, _parquet_rows)}
    if p.suffix.lower() not in readers:
        raise VectorsError(f"{p}: unknown vectors format {p.suffix.lower()!r}; use one of {FORMATS}")
    return readers[p.suffix.lower()]


def import_vectors(path: str | Path, store: str, key: str = "", hook: str = "vectors",
                   block_rows: int = 16384, manifest: dict | None = None, **kw):
    """Import the vectors file ``path`` as hook ``hook`` of ``store``; ``kw`` goes to ``write_vectors``
    (dtype float32 by default: the numbers of float32, float16, bfloat16 and small-integer files are kept
    exactly, float64 ones rounded; the layout to ``default_layout`` of the rows the file's header tells).
    Returns the opened ActivationStore."""
    from actdict.harvest.store import write_vectors
    from actdict.harvest.writer import default_layout

    n = None if kw.get("chunk_rows") else vector_rows(path, key)  # given chunks need no row count
    kw["chunk_rows"], kw["shard_rows"] = default_layout(n, kw.get("chunk_rows", 0), kw.get("shard_rows", 0))

    blocks = vector_blocks(path, key, block_rows)
    first = next(blocks, None)  # checks the file before the store is created
    if first is None:
        raise VectorsError(f"{path}: holds no vectors")
    files = vector_files(path)
    src = "bfloat16" if _is_bf16(files[0], key) else str(first.dtype)  # bf16 blocks: float32
    if len(files) > 1:  # parts may differ: each dtype named, in the order of the parts
        src = "+".join(dict.fromkeys(_file_dtype(p, key) for p in files if vector_rows(p, key) != 0))
    what = f"vectors file {files[0].resolve()}" if len(files) == 1 else (
        f"{len(files)} vectors files {Path(path).expanduser().resolve()}")
    m = {"corpus": what, "kind": "vectors",
         "numerics": f"user vectors ({src}), stored {kw.get('dtype', 'float32')}",
         "vectors": {"file": str(path), "key": key, "dtype": src}} | dict(manifest or {})
    blocks = _shown(chain([first], blocks), vector_rows(path, key))
    return write_vectors(store, blocks, manifest=m, hook=hook, **kw)  # removed on failure


def _shown(blocks: Iterator[np.ndarray], total: int | None) -> Iterator[np.ndarray]:
    """``blocks``, counted on a progress bar of rows written (on a terminal only: a log file gets the line
    that ends the import)."""
    from tqdm import tqdm

    with tqdm(total=total, desc="import", unit="row", unit_scale=True, disable=bar_disabled(None),
              **bar_timing()) as bar:
        for x in blocks:
            yield x
            bar.update(len(x))


def fingerprint(path: str) -> str | None:
    """The vectors file's (or parts') fingerprint (path, size, mtime); None when they are not all there."""
    from actdict.harvest.sources import files_fingerprint

    try:
        files = vector_files(path)
    except VectorsError:  # a folder or pattern of parts gone: a complete store stays usable, as a file's
        return None
    return files_fingerprint(files) if files and all(f.is_file() for f in files) else None


def source_change(store: str, vcfg: VectorsConfig) -> str | None:
    """How the vectors file changed since the store's complete import of it ('source_fingerprint OLD ->
    NEW': it is imported again), or None: unchanged, gone, or unknown (imported before 2026-12-05)."""
    from actdict.harvest.resume import read_manifest

    old, now = (read_manifest(store, vcfg.hook) or {}).get("source_fingerprint"), fingerprint(vcfg.path)
    return None if old is None or now in (None, old) else f"source_fingerprint {old} -> {now}"


def main(common, cfg, writing=lambda hooks=None: None) -> None:
    """``harvest.mode: vectors``: import ``cfg.vectors.path`` into ``common.store_path``; ``writing``: called
    before the import (``resume.store_lock``)."""
    from actdict.config import config_hash, to_dict
    from actdict.harvest.reuse import complete_for
    from actdict.harvest.run import one_process

    path, vcfg, chash = common.store_path, cfg.vectors, config_hash(cfg)
    if not vcfg.path:
        raise ConfigError("harvest.mode is 'vectors' but harvest.vectors.path is empty: name a .npy, "
                          ".safetensors or .parquet file")
    if complete_for(path, [vcfg.hook], cfg):
        if (change := source_change(path, vcfg)) is None:
            print(one_line(f"harvest: store {path} is already complete for this config (config hash "
                           f"{chash}); skipping"))
            return
        print(one_line(f"harvest: {vcfg.path} changed since it was imported ({change}); importing it again"))
    one_process(cfg)
    writing([vcfg.hook])
    s = import_vectors(vcfg.path, path, key=vcfg.key, hook=vcfg.hook, block_rows=vcfg.block_rows,
                       manifest={"config_hash": chash, "source_fingerprint": fingerprint(vcfg.path),
                                 "harvest": to_dict(cfg)}, dtype=cfg.store_dtype,
                       shard_rows=cfg.shard_rows, chunk_rows=cfg.chunk_rows, overwrite=True)
    print(one_line(f"harvest: imported {len(s):,} vectors (d {s.d}) from {vcfg.path} into {path}/{vcfg.hook}"
                   + texts_hint(vcfg.path)))  # names from the config, a column's from the file: no ESC


def cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m actdict.harvest.vectors",
                                 description="Import a .npy/.safetensors/.parquet file of [n, d] vectors "
                                             "into an activation store.")
    ap.add_argument("file", help="vectors file (.npy, .safetensors, .parquet), or a folder of them, or a "
                    "quoted glob pattern ('emb/part-*.npy'): their rows in the natural order of the paths")
    ap.add_argument("store", help="store folder or fsspec URL, e.g. runs/yelp/store")
    ap.add_argument("--key", default="", help="safetensors tensor / parquet column holding the vectors")
    ap.add_argument("--hook", default="vectors", help="store folder name of these vectors (default vectors)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                    help="stored dtype (default float32: kept exactly)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing hook of that name")
    ap.add_argument("--chunk-rows", type=int, default=0, help="rows per chunk, the unit of the train/test "
                    "split (default: 4096, or fewer for a file of fewer than 32,768 rows: 8 chunks or "
                    "more)")
    ap.add_argument("--shard-rows", type=int, default=0, help="rows per shard, a multiple of --chunk-rows "
                    "(default: 16 chunks)")
    a = ap.parse_args(argv)
    from actdict.harvest.resume import store_lock
    from actdict.harvest.writer import default_layout, new_manifest

    try:  # the arguments and the file's first row checked before the lock makes the store's folder
        chunk_rows, shard_rows = default_layout(vector_rows(a.file, a.key), a.chunk_rows, a.shard_rows)
        new_manifest({"hook": a.hook}, 1, a.dtype, shard_rows, chunk_rows)
        next(vector_blocks(a.file, a.key, 1), None)
        with store_lock(a.store, "pass another STORE") as writing:  # one writer per store, as a harvest
            writing([a.hook])
            s = import_vectors(a.file, a.store, key=a.key, hook=a.hook, dtype=a.dtype, overwrite=a.overwrite,
                               chunk_rows=chunk_rows, shard_rows=shard_rows)
    except BaseException as e:  # a bad file, a full disk, Ctrl-C (a store folder the lock made is gone)
        if isinstance(e, KeyboardInterrupt):
            print("import: interrupted (an unfinished hook is not kept)", file=sys.stderr)
            return 130
        if not isinstance(e, ActdictError):
            from actdict.failures import exhausted_error, remote_error

            if (e := remote_error(e) or exhausted_error(e)) is None:  # an object store's failure, a full
                raise  # disk, too many open files: one line too
        print(printable(f"import: {type(e).__name__}: {e}{open_files_hint(e)}"), file=sys.stderr)
        return 2
    print(one_line(f"imported {len(s):,} vectors (d {s.d}) into {s.dir}{texts_hint(a.file)}"))
    return 0


if __name__ == "__main__":
    from actdict.errors import run_command

    run_command(cli)
