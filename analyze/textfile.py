"""The texts of a store's rows from a file beside it (``analyze.texts``): one text per store row, in row
order.

A store of your own vectors (``harvest.mode: vectors``, ``python -m actdict.harvest.vectors``) keeps no
text, and an embeddings harvest's texts are read again from its source, which may be out of reach (a hub
dataset offline, files moved). With ``analyze.texts`` naming a file of the rows' texts, the report and
``features/<name>.json`` show each shown row's text as they do an embeddings harvest's (``texts``: row ->
text, the first ``MAX_CHARS``).

Formats, by suffix, in any case (row i of the store is the file's i-th text):

* ``.parquet``: the string column ``analyze.texts_column``, or else ``text``, or else the file's only string
  column (the file a vectors import read its list column from can serve as is); one row group at a time;
* ``.jsonl``: one JSON value per line, a string or an object with a string ``text`` (or ``texts_column``);
  null is an empty text, as a parquet file's null;
* ``.txt``: one text per line (a text with line breaks needs another format);
* ``.npy``: a 1-D array of strings (``np.save``; bytes are decoded as UTF-8), mapped.

A folder of such files, or a glob pattern (``texts/part-*.parquet``), is their texts one after the other in
the natural order of the paths (part-2 before part-10), as the vectors import reads shards
(``actdict.files.part_files``).

The file is checked before the pass over the rows (it exists, holds texts, as many as the store has rows),
so a wrong one costs nothing; only the rows shown are kept in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from actdict.analyze.inputs import AnalyzeError
from actdict.analyze.texts import MAX_CHARS, clip
from actdict.files import part_files, string_columns

FORMATS = (".parquet", ".jsonl", ".txt", ".npy")


def text_files(path: str) -> list[Path]:
    """The files ``path`` names (``actdict.files.part_files``, as the vectors import reads parts: itself, a
    folder's ``FORMATS`` files but hidden ones, a glob pattern's matches; the last two in the natural order of
    their paths), all of one format (AnalyzeError otherwise)."""
    files, wrong = part_files(path, FORMATS)
    if wrong:
        raise AnalyzeError(f"analyze.texts: {wrong}")
    return files


def check_texts(path: str, n_rows: int | None, column: str = "") -> list[Path]:
    """The files of ``path`` (``text_files``), once they hold ``n_rows`` texts in one of ``FORMATS``
    (AnalyzeError saying what is wrong otherwise; ``column``: ``texts_column``). ``n_rows`` None (before the
    store exists, as ``actdict run`` checks every stage first): their format only, not their count."""
    files = text_files(path)
    for p in files:
        if p.suffix.lower() not in FORMATS:
            raise AnalyzeError(f"analyze.texts: {p} is not one of {', '.join(FORMATS)} (one text per store "
                               "row)")
        if not p.is_file():
            raise AnalyzeError(f"analyze.texts: {p} not found (a file of one text per store row)")
    if n_rows is None:
        for p in (p for p in files if p.suffix.lower() in (".npy", ".parquet")):  # their headers: cheap
            count(p, column)
        return files
    if (n := sum(count(p, column) for p in files)) != n_rows:
        where = files[0] if len(files) == 1 else f"{path} ({len(files)} files)"
        raise AnalyzeError(f"analyze.texts: {where} holds {n:,} texts, the store has {n_rows:,} rows (one "
                           "text per row, in the store's row order)")
    return files


def count(p: Path, column: str = "") -> int:
    """How many texts ``p`` holds (its format checked as far as that needs)."""
    if p.suffix.lower() == ".npy":
        return len(_npy(p))
    if p.suffix.lower() == ".parquet":
        f = _parquet(p)
        _column(f.schema_arrow, p, column)
        return f.metadata.num_rows
    if p.suffix.lower() == ".jsonl":  # each line parsed: a bad one is named now, not after the pass
        n, blank = 0, 0  # texts so far, blank lines after them (at the end of a file: no text)
        for r, line in enumerate(_lines(p)):
            if not line.strip():
                blank += 1
                continue
            if blank:
                raise AnalyzeError(f"analyze.texts: {p} line {r} is blank, between texts (a text per line)")
            _jsonl_text(line, p, r, column)
            n += 1
        return n
    with p.open("rb") as f:  # lines: a last one without its line break counts
        n, last = 0, b"\n"
        for block in iter(lambda: f.read(1 << 20), b""):
            n, last = n + block.count(b"\n"), block[-1:]
    return n + (last != b"\n")


def read_texts(files: list[Path], rows: set[int], column: str = "", max_chars: int = MAX_CHARS
               ) -> dict[int, str]:
    """row -> its text (clipped to ``max_chars``) for each of ``rows`` (store rows), from the ``files``
    ``check_texts`` accepted (their texts one after the other; ``column``: ``texts_column``)."""
    out: dict[int, str] = {}
    start = 0  # the store row of each file's first text
    for p in files:
        if not (rows := {r for r in rows if r >= start}):
            break
        n = count(p, column) if len(files) > 1 else max(rows) + 1
        mine = {r - start for r in rows if r < start + n}
        out |= {r + start: t for r, t in _file_texts(p, mine, column, max_chars).items()}
        start += n
    return out


def _file_texts(p: Path, rows: set[int], column: str, max_chars: int) -> dict[int, str]:
    """row -> clipped text of ``rows`` of one file."""
    out: dict[int, str] = {}
    if not rows:
        return out
    kind = p.suffix.lower()
    if kind == ".npy":
        arr = _npy(p)
        for r in sorted(rows):
            v = arr[r]
            out[r] = clip(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v), max_chars)
        return out
    last = max(rows)
    for r, text in enumerate(_parquet_texts(p, column) if kind == ".parquet" else _lines(p)):
        if r in rows:
            out[r] = clip(_jsonl_text(text, p, r, column) if kind == ".jsonl" else text, max_chars)
        if r >= last:
            break
    return out


def _npy(p: Path) -> np.ndarray:
    try:  # never pickle; mapped
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise AnalyzeError(f"analyze.texts: {p} is not a .npy array of strings ({e})") from e
    if not isinstance(arr, np.ndarray) or arr.ndim != 1 or arr.dtype.kind not in "US":
        what = f"shape {arr.shape}, dtype {arr.dtype}" if isinstance(arr, np.ndarray) else "an .npz archive"
        raise AnalyzeError(f"analyze.texts: {p} holds {what}: save a 1-D array of strings with np.save")
    return arr


def _parquet(p: Path):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(p)
    except Exception as e:  # pyarrow's ArrowInvalid and kin: not a parquet file
        raise AnalyzeError(f"analyze.texts: {p} cannot be read as parquet ({e})") from e


def _column(schema, p: Path, column: str = "") -> str:
    """The text column of a parquet file: ``column``, or else ``text``, or else its only string column."""
    strings = string_columns(schema)
    if column and column not in strings:
        raise AnalyzeError(f"analyze.texts_column: {p} has no string column {column!r} (its string columns: "
                           f"{strings}; all its columns: {schema.names})")
    if column or "text" in strings or len(strings) == 1:
        return column or ("text" if "text" in strings else strings[0])
    raise AnalyzeError(f"analyze.texts: {p} has " + (f"string columns {strings} and none named 'text'"
                       if strings else f"no string column (its columns: {schema.names})")
                       + ": name the texts' one with analyze.texts_column")


def _parquet_texts(p: Path, column: str = "") -> Iterator[str]:
    f = _parquet(p)
    col = _column(f.schema_arrow, p, column)
    for batch in f.iter_batches(columns=[col]):
        yield from ("" if t is None else t for t in batch.column(0).to_pylist())


def _lines(p: Path) -> Iterator[str]:
    with p.open("rb") as f:
        for r, line in enumerate(f):  # a byte-order mark (Windows' 'UTF-8 with BOM') is no text's
            yield line.rstrip(b"\n").decode("utf-8-sig" if r == 0 else "utf-8", "replace")  # CR: clip()


def _jsonl_text(line: str, p: Path, row: int, key: str = "") -> str:
    try:
        v = json.loads(line)
    except ValueError as e:
        raise AnalyzeError(f"analyze.texts: {p} line {row + 1} is not JSON ({e})") from e
    if isinstance(v, dict):
        v = v.get(key or "text", 0)  # a missing key is refused, a null text is '' (as a parquet null)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise AnalyzeError(f"analyze.texts: {p} line {row + 1} is neither a string nor an object with a "
                           f"string {key or 'text'!r}")
    return v
