"""Reading vectors files (``harvest.vectors``' import): ``.npy``, ``.safetensors`` and ``.parquet`` files, a
folder or a glob pattern of them, read as checked [b, d] blocks (``vector_blocks``) or counted from their
headers (``vector_rows``); ``VectorsError`` says what is wrong with one."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import chain
from pathlib import Path

import numpy as np

from actdict.errors import ActdictError
from actdict.files import part_files

FORMATS = (".npy", ".safetensors", ".parquet")


class VectorsError(ActdictError, ValueError):
    """A vectors file that cannot be imported (the message says what is wrong and what to do)."""


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


def is_bf16(p: Path, key: str) -> bool:
    """Whether ``p`` is a safetensors file whose tensor ``key`` (or only tensor) is bfloat16, which numpy
    lacks: its blocks arrive as float32 (exactly), and the manifest names the file's own dtype."""
    if _format(p)[1] is not _safetensors_rows:
        return False
    from safetensors import safe_open

    with safe_open(str(p), framework="pt") as f:
        return f.get_slice(key or next(iter(f.keys()))).get_dtype() == "BF16"


def file_dtype(p: Path, key: str) -> str:
    """The dtype of the vectors file ``p`` as the manifest names it (bfloat16 included), from its first row
    (checked as the import checks it: VectorsError)."""
    first = next(vector_blocks(p, key, 1))
    return "bfloat16" if is_bf16(p, key) else str(first.dtype)


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


def _format(p: Path) -> tuple[Callable, Callable]:
    """(blocks reader, header row counter) of the vectors file ``p`` by its suffix."""
    readers = {".npy": (_npy_blocks, _npy_rows), ".safetensors": (_safetensors_blocks, _safetensors_rows),
               ".parquet": (_parquet_blocks, _parquet_rows)}
    if p.suffix.lower() not in readers:
        raise VectorsError(f"{p}: unknown vectors format {p.suffix.lower()!r}; use one of {FORMATS}")
    return readers[p.suffix.lower()]
