"""Atomic writes of local files: whoever reads a file (or a kill in the middle of writing it) sees the whole
old file or the whole new one, never a truncated one.

Used by the store's JSON on local disks (``harvest.layout.write_json``) and by every output of the analysis
(``summary.json``, ``features/<name>.json``, the report pages). Object stores need none of this: one PUT is
atomic there.

Also what both the vectors import (harvest) and ``analyze.texts`` read: the files of data written in parts
(``part_files``) and a parquet schema's text columns (``string_columns``).
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

from actdict.errors import ActdictError


class WriteError(ActdictError, OSError):
    """A file could not be written (a full disk, a read-only folder): one line naming it, not a traceback;
    the file is as it was."""


def temp_name(path: Path) -> Path:
    """A hidden, unique temporary name beside ``path``: the same folder, so that the rename is atomic (one
    file system), and unique, so that two writers never share one."""
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def write_atomic(path: str | Path, data: str | bytes, encoding: str = "utf-8") -> Path:
    """Write ``data`` (text is encoded with ``encoding``) to ``path`` through a temporary file in the same
    folder and ``os.replace``: a kill part way leaves the previous file, or none, and a temporary file that
    nothing reads; a failure removes the temporary file (an OSError becomes a ``WriteError``). Returns
    ``path``."""
    p = Path(path)
    tmp = temp_name(p)
    blob = data.encode(encoding) if isinstance(data, str) else data
    try:
        with open(tmp, "xb") as f:  # a new file: the permissions any file gets here (umask)
            f.write(blob)
        os.replace(tmp, p)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise WriteError(f"could not write {p}: {e.strerror or e} ({p} is as it was)") from e
        raise
    return p


def check_not_linked(folders: list[Path], what: str) -> None:
    """``WriteError`` for the first of ``folders`` (folders inside a run folder or a store, which itself may
    be a link) that is a symbolic link: ``what`` is written there and older files removed, and a run folder
    or store shared by someone else can point such a link at any folder of the reader's (its cfg.json, its
    .js files)."""
    for p in map(Path, folders):
        if p.is_symlink():
            raise WriteError(f"{p} is a symbolic link (to {os.readlink(p)}), where {what} would be written "
                             f"and older files removed: replace it by a folder of its own (rm {p}; it is "
                             "made again), or link the whole run folder or store instead")


def disk_path(path: str) -> str:
    """``path`` resolved (``os.path.realpath``), each name spelled as its folder holds it where the file
    system takes names in any case: macOS' realpath keeps the case a name was given in, so ``Store`` and
    ``store``, one folder on its default disk, were two spellings. A name is respelled only where its
    case swapped names the same file (a probe: one ``stat`` per name, no listing on a case-sensitive disk);
    a path that is not there, or in a folder that may be passed through but not listed (mode 0711), is left
    as spelled. One folder, one spelling: what identifies a store by its path
    (``train.identity.store_key``)."""
    real = os.path.realpath(path)
    head, *names = Path(real).parts
    out = head
    for name in names:
        here, other = os.path.join(out, name), os.path.join(out, name.swapcase())
        if other != here and _same_file(here, other):  # a case-insensitive folder: its own spelling
            held = [n for n in _names(out) if n.casefold() == name.casefold()
                    and not os.path.islink(os.path.join(out, n)) and _same_file(os.path.join(out, n), here)]
            name = name if name in held or len(held) != 1 else held[0]
        out = os.path.join(out, name)
    return out


def _names(folder: str) -> list[str]:
    """The names ``folder`` lists; none where it cannot be listed (a folder one may pass through only)."""
    try:
        return os.listdir(folder)
    except OSError:
        return []


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # either is not there (or not readable): not known to be one
        return False


def remove_temps(folder: Path, pattern: str = "*") -> list[Path]:
    """Remove the temporary files a killed :func:`write_atomic` left in ``folder`` for the files matching
    ``pattern`` (a glob of their final names); returns them. Only where no other writer can be at work (under
    the folder's lock): another writer's temporary file would go too."""
    removed = list(folder.glob(f".{pattern}.tmp-*"))
    for tmp in removed:
        tmp.unlink(missing_ok=True)
    return removed


def natural_key(path: Path) -> list:
    """Sort key of a path with its runs of digits read as numbers: part-2 before part-10."""
    return [int(t) if i % 2 else t for i, t in enumerate(re.split(r"(\d+)", str(path)))]


def is_part(f: Path) -> bool:
    """Whether a folder's or pattern's entry ``f`` is one of its files: a file, or a link to one that is gone
    (then named as missing, not skipped: its rows would be left out without a word)."""
    return f.is_file() or (f.is_symlink() and not f.exists())


def glob_pattern(pattern: Path, recursive: bool = False) -> list[str]:
    """``glob.glob`` of ``pattern`` whose longest existing folder is taken as it is named, as an existing path
    is: 'runs/exp[2]/*.npy' is the files of the folder 'exp[2]', not those of 'runs/exp2'."""
    import glob

    base = pattern.parent
    while not base.is_dir() and base != base.parent:
        base = base.parent
    if str(base) == ".":  # 'part-*.npy': the matches as glob names them ('part-1.npy', not './part-1.npy')
        return glob.glob(str(pattern), recursive=recursive)
    rest = str(pattern.relative_to(base))
    return glob.glob(os.path.join(glob.escape(str(base)), rest), recursive=recursive)


def part_files(path: str | Path, suffixes: tuple[str, ...]) -> tuple[list[Path], str]:
    """(the files ``path`` names, '') for data written in parts: ``path`` itself, or a folder's files with
    one of ``suffixes`` but hidden ones, or a glob pattern's (``*``, ``?``, ``[``; a path that exists is
    itself) matching files, these in the natural order of their paths (``natural_key``); or (those, what is
    wrong in words: they are none, or of several suffixes), for the caller's error."""
    s = str(path)
    p = Path(s).expanduser()
    if any(c in s for c in "*?[") and not p.exists():  # a file or folder named 'emb[v2].npy' is itself
        found, where = [Path(f) for f in glob_pattern(p) if is_part(Path(f))], f"pattern {s!r}"
    elif p.is_dir():  # hidden ones skipped, as a pattern skips them (macOS' ._*)
        found = [f for f in p.iterdir() if is_part(f) and f.suffix.lower() in suffixes
                 and not f.name.startswith(".")]
        where = f"folder {s!r}"
    else:
        return [p], ""
    if not found:
        return found, f"{where} names no file ({', '.join(suffixes)})"
    if len(kinds := sorted({f.suffix.lower() for f in found})) > 1:
        return found, f"{where} names files of several formats {kinds}: one format, please"
    return sorted(found, key=natural_key), ""


def string_columns(schema) -> list[str]:
    """The names of an arrow schema's text columns: string, large_string, string_view (as Polars writes
    them) or dictionary-encoded strings (a pandas category)."""
    import pyarrow as pa

    def text(t) -> bool:
        view = getattr(pa.types, "is_string_view", lambda _: False)  # pyarrow >= 16
        if pa.types.is_dictionary(t):
            t = t.value_type
        return pa.types.is_string(t) or pa.types.is_large_string(t) or view(t)

    return [f.name for f in schema if text(f.type)]
