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
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np

from actdict.bars import bar_disabled, bar_timing
from actdict.config import ConfigError
from actdict.errors import ActdictError, one_line, open_files_hint, printable
from actdict.harvest.vector_read import (
    VectorsError,
    file_dtype,
    is_bf16,
    vector_blocks,
    vector_files,
    vector_rows,
)
from actdict.names import check_hook_name


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
    src = "bfloat16" if is_bf16(files[0], key) else str(first.dtype)  # bf16 blocks: float32
    if len(files) > 1:  # parts may differ: each dtype named, in the order of the parts
        src = "+".join(dict.fromkeys(file_dtype(p, key) for p in files if vector_rows(p, key) != 0))
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
    from actdict.config_data import config_hash, to_dict
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
