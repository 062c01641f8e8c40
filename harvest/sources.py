"""Text documents from a source (their token windows: ``actdict.harvest.windows``).

Sources (``SourceConfig.kind``):
* ``debian``: the offline demo corpus built from Debian packages (``actdict.harvest.corpus``),
* ``files``: local ``.txt`` / ``.jsonl`` / ``.json`` / ``.parquet`` files (a file, a folder or a glob),
  read with Hugging Face ``datasets`` streaming (works offline),
* ``hub``: a Hugging Face hub dataset by name, streamed; fails fast when the hub cannot be reached, or,
  offline, when no cache folder can hold it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import re
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import urlparse

from actdict.config import ConfigError, check_seed
from actdict.errors import ActdictError
from actdict.files import glob_pattern

T = TypeVar("T")
BUILDERS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
PROBE_TIMEOUT_S = 2.0


class SourceError(ActdictError, RuntimeError):
    """A text source that cannot be read (the message says what to do)."""


@dataclass(frozen=True)
class SourceConfig:
    """Where the harvest's text comes from (nested as ``harvest.source``)."""

    kind: Literal["debian", "files", "hub"] = "debian"
    """``debian``: the offline demo corpus; ``files``: local files at ``path``; ``hub``: dataset ``name``."""
    path: str = ""
    """kind=files: a file, a folder (all .txt/.jsonl/.json/.parquet files under it) or a glob."""
    name: str = "NeelNanda/pile-10k"
    """kind=hub: the Hugging Face dataset name."""
    split: str = "train"
    """kind=hub: the split to stream."""
    text_field: str = "text"
    """Field holding the text in json/jsonl/parquet/hub rows."""
    txt_docs: Literal["file", "paragraph", "line"] = "file"
    """kind=files, .txt files: one document per file, one per blank-line-separated block, or one per line
    (a review per line; empty lines are no document)."""
    max_docs: int | None = None
    """Stop after this many (non-empty) documents; null: all."""
    shuffle_buffer: int = 0
    """Shuffle the document order through a buffer of this many documents (0: source order). A buffer at
    least as large as the corpus gives a full permutation; streaming sources stay streaming."""
    shuffle_seed: int = 0
    """Seed of the document shuffle (the order is a pure function of the source and this seed)."""

    def __post_init__(self) -> None:
        if self.max_docs is not None and self.max_docs < 1:
            raise ConfigError(f"harvest.source.max_docs must be >= 1 or null, got {self.max_docs}")
        if self.shuffle_buffer < 0:
            raise ConfigError(f"harvest.source.shuffle_buffer must be >= 0 (0: source order), got "
                              f"{self.shuffle_buffer}")
        check_seed(self.shuffle_seed, "harvest.source.shuffle_seed")  # Python's random: -1 is 1's order


_READERS = {"path": ("files",), "txt_docs": ("files",), "name": ("hub",), "split": ("hub",),
            "text_field": ("files", "hub")}
"""The source kinds that read each field (the others read every kind)."""


def check_source(cfg: SourceConfig) -> None:
    """ConfigError for a field set away from its default that ``cfg.kind`` does not read: ``path: corpus/``
    without ``kind: files`` harvested the Debian demo corpus (the default kind) in its place."""
    for name, kinds in _READERS.items():
        if cfg.kind not in kinds and (value := getattr(cfg, name)) != getattr(SourceConfig, name):
            readers = " or ".join(kinds)
            raise ConfigError(f"harvest.source.{name} is set ({value!r}) but source.kind={cfg.kind!r} does "
                              f"not read it: set harvest.source.kind={readers}, or leave {name} out")


def iter_documents(cfg: SourceConfig) -> Iterator[str]:
    """The non-empty documents of ``cfg``, in a deterministic order, at most ``cfg.max_docs``."""
    return (text for text, _ in iter_records(cfg))


def iter_records(cfg: SourceConfig, field: str = "") -> Iterator[tuple[str, object]]:
    """(text, value of ``field`` in its source row) of each document ``iter_documents`` yields, in the same
    order (its index there is the store's ``doc``): a jsonl record's key, a parquet column, a hub dataset's
    field, ``source`` of the demo corpus (its work and part: austen:prideprejudice:23, bible:Ge33,
    fortunes:law:7) or its ``collection`` (austen, bible, ...: ``COLLECTION``); dotted for a nested one
    (``meta.pile_set_name``). ``field`` "": the value is None. A .txt file's rows have no other field."""
    if cfg.kind == "debian":
        pairs = _debian_texts(field)
    elif cfg.kind == "files":
        pairs = _file_texts(cfg, field)
    elif cfg.kind == "hub":
        pairs = _hub_texts(cfg, field)
    else:
        raise SourceError(f"unknown source kind {cfg.kind!r}; valid: debian, files, hub")
    if cfg.shuffle_buffer > 0:
        pairs = buffer_shuffle(pairs, cfg.shuffle_buffer, cfg.shuffle_seed)
    n = 0
    for text, value in pairs:
        if cfg.max_docs is not None and n >= cfg.max_docs:
            return
        if text and text.strip():
            yield text, value
            n += 1


def buffer_shuffle(items: Iterable[T], size: int, seed: int) -> Iterator[T]:
    """Items of ``items`` in a seeded pseudo-random order using a buffer of ``size`` (as streaming
    datasets shuffle): each new item replaces a random buffered one, which is yielded."""
    rng = random.Random(seed)
    buf: list[T] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        i = rng.randrange(size)
        buf[i], item = item, buf[i]
        yield item
    rng.shuffle(buf)
    yield from buf


COLLECTION = "collection"
"""A field the demo corpus's documents have without storing it: the collection of ``source`` (the part
before its first ':': austen, bible, devil, fortunes, jargon): 5 classes where ``source`` has thousands."""


DEBIAN_FIELDS = ("text", "source", COLLECTION)
"""The demo corpus's documents' fields (``source`` and its ``collection`` label them)."""


def check_field(cfg: SourceConfig, field: str) -> None:
    """SourceError where the documents of source ``cfg`` lack the (dotted) ``field``, checked before a harvest
    reads them: the demo corpus's fields are known (``DEBIAN_FIELDS``), a files source's first document is
    read; a hub source is not read here (its first document is a download: the analysis finds it)."""
    if cfg.kind == "debian":
        if field not in DEBIAN_FIELDS:
            raise SourceError(f"the demo corpus's documents have no field {field!r}; fields: "
                              f"{', '.join(DEBIAN_FIELDS)}")
    elif cfg.kind == "files":
        first = replace(cfg, shuffle_buffer=0, max_docs=1)  # one document, not a shuffle buffer's worth
        next(iter_records(first, field), None)


def _debian_texts(field: str = "") -> Iterator[tuple[str, object]]:
    from actdict.harvest.corpus import ensure_debian_corpus

    with open(ensure_debian_corpus(), encoding="utf-8") as f:
        rows = (json.loads(line) for line in f)
        if field == COLLECTION:
            rows = ({**r, COLLECTION: str(r.get("source", "")).split(":", 1)[0]} for r in rows)
        yield from _field(rows, "text", "the demo corpus", field)


def resolve_files(path: str) -> list[Path]:
    """The readable files named by ``path`` (file, folder searched recursively, or glob), sorted. A folder's
    hidden files and folders are skipped, as a glob skips them: ``.ipynb_checkpoints/*-checkpoint.jsonl``
    and macOS' ``._*`` copies would have doubled documents or failed the harvest."""
    p = Path(path).expanduser()
    if p.is_file():
        files = [p]
    elif p.is_dir():
        files = [f for f in p.rglob("*")
                 if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)]
    else:
        files = [Path(f) for f in glob_pattern(p, recursive=True)]
    files = sorted(f for f in files if f.suffix.lower() in BUILDERS)
    if not files:
        raise SourceError(f"no {'/'.join(sorted(BUILDERS))} files at {path!r}")
    return files


def _source_files(cfg: SourceConfig) -> list:
    """The files of a ``files`` source (``resolve_files``); SourceError when there are none."""
    if not cfg.path:
        raise SourceError("source kind 'files' needs source.path (a file, folder or glob)")
    return resolve_files(cfg.path)


def unavailable(cfg: SourceConfig) -> str | None:
    """Why the harvest could not read source ``cfg`` here, found without reading it (``--dry-run``): no files
    at a ``files`` source's path, the hub unreachable for a ``hub`` dataset (offline: no cache that could
    hold it); None otherwise."""
    try:
        if cfg.kind == "files":
            _source_files(cfg)
        elif cfg.kind == "hub":
            _check_hub_source(cfg)
    except SourceError as e:
        return str(e)
    return None


def require_readable(cfg: SourceConfig) -> None:
    """SourceError when ``unavailable`` finds why source ``cfg`` cannot be read here: the harvest asks it
    before it loads its model, not after (the model of a harvest with a mistyped path took ~10 s for it)."""
    if why := unavailable(cfg):
        raise SourceError(why)


def _file_texts(cfg: SourceConfig, extra: str = "") -> Iterator[tuple[str, object]]:
    files = _source_files(cfg)
    builders: dict[str, list[str]] = {}  # builder -> files, in order of first appearance
    for f in files:
        builders.setdefault(BUILDERS[f.suffix.lower()], []).append(str(f))
    import datasets

    for builder, data_files in builders.items():
        kw = {}
        if builder == "text":
            kw = {"sample_by": {"file": "document"}.get(cfg.txt_docs, cfg.txt_docs),  # paragraph, line
                  "encoding_errors": "replace"}
        field = "text" if builder == "text" else cfg.text_field
        if chained := [f for f in data_files if "::" in f]:
            raise SourceError(f"{chained[0]}: the reader (Hugging Face datasets) takes '::' in a path for a "
                              "chain of URLs and cannot open it; rename the folder, or link it under a name "
                              "without '::'")
        try:  # the JSON reader parses the first lines when the dataset is made; paths are its glob patterns
            patterns = [glob.escape(f) for f in data_files]  # 'corpus[1]/a.txt' is no 'corpus1/a.txt'
            ds = datasets.load_dataset(builder, data_files=patterns, split="train", streaming=True, **kw)
            yield from _field(ds, field, f"{len(data_files)} {builder} file(s) at {cfg.path}", extra)
        except UnicodeDecodeError as e:
            raise SourceError(f"{_not_utf8(data_files) or cfg.path} is not valid UTF-8 ({e}); re-encode it "
                              "(e.g. `iconv -f latin1 -t utf-8`), or give the text as .txt files, whose "
                              "invalid bytes are replaced by U+FFFD") from e
        except ValueError as e:  # a line that is no JSON, a lone surrogate escape (pyarrow's ArrowInvalid)
            raise SourceError(f"{_bad_json_line(data_files) or cfg.path} cannot be read as {builder} "
                              f"({type(e).__name__}: {e}); fix or drop that record, or leave the file out of "
                              "source.path") from e


def _not_utf8(files: list[str]) -> str | None:
    """'file, line n' of the first line that is not valid UTF-8."""
    for f in files:
        with open(f, "rb") as fh:
            for n, line in enumerate(fh, start=1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError:
                    return f"{f}, line {n}"
    return None


def _bad_json_line(files: list[str]) -> str | None:
    """'file, line n' of the first line of a .jsonl file that is not one JSON value of valid Unicode (a lone
    surrogate escape such as \\ud800 parses in Python, not in the reader); None when none is found."""
    for f in (f for f in files if f.lower().endswith(".jsonl")):
        with open(f, encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, start=1):
                try:
                    if line.strip():
                        json.dumps(json.loads(line), ensure_ascii=False).encode("utf-8")
                except (ValueError, UnicodeEncodeError):
                    return f"{f}, line {n}"
    return None


def source_fingerprint(cfg: SourceConfig) -> str | None:
    """A short hash of the local files behind a source (path, size, mtime), so that a resumed harvest can
    refuse a corpus that changed; None for hub datasets (streamed, not pinned here)."""
    if cfg.kind == "hub":
        return None
    if cfg.kind == "debian":
        from actdict.harvest.corpus import ensure_debian_corpus

        files = [Path(ensure_debian_corpus())]
    else:
        files = resolve_files(cfg.path)
    return files_fingerprint(files)


def files_fingerprint(files: Iterable[Path]) -> str:
    """sha256 (16 hex chars) of each file's resolved path, size and mtime: changes when a file does."""
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode(errors="surrogateescape"))
    return h.hexdigest()[:16]


def files_changed(manifest: dict, cfg: SourceConfig) -> str | None:
    """What changed in the local source files of a complete store's ``manifest`` (a ``files`` source whose
    manifest records a fingerprint), in words; None when nothing did or it cannot tell (files gone: the
    store stays usable)."""
    old = manifest.get("source_fingerprint")
    if cfg.kind != "files" or not old:
        return None
    try:
        new = source_fingerprint(cfg)
    except (SourceError, OSError):
        return None
    if new == old:
        return None
    return f"source files at {cfg.path!r} changed (a path, size or mtime: source_fingerprint {old} -> {new})"


def _field(rows: Iterable[dict], field: str, where: str, extra: str = "") -> Iterator[tuple[str, object]]:
    """(text of ``field``, value of ``extra`` or None) of each row."""
    for row in rows:
        if field not in row:
            raise SourceError(f"{where}: rows have no field {field!r}; fields: {sorted(row)} "
                              "(set source.text_field)")
        text = row[field]
        if text is not None and not isinstance(text, str):  # a number, the vectors' list: not the texts
            raise SourceError(f"{where}: field {field!r} holds {type(text).__name__} values, not text; "
                              f"fields: {sorted(row)} (set source.text_field)")
        yield (text.strip() if isinstance(text, str) else ""), (_lookup(row, extra, where) if extra else None)


def _lookup(row: dict, path: str, where: str) -> object:
    """``row``'s value at the dotted ``path`` (``meta.pile_set_name``): a string, number, bool or None."""
    value: object = row
    for i, key in enumerate(path.split(".")):
        if not isinstance(value, dict) or key not in value:
            at = ".".join(path.split(".")[:i]) or "rows"
            keys = sorted(value) if isinstance(value, dict) else type(value).__name__
            raise SourceError(f"{where}: {at} have no field {key!r} (fields: {keys}), so {path!r} labels no "
                              "document")
        value = value[key]
    if value is not None and not isinstance(value, str | int | float | bool):
        raise SourceError(f"{where}: field {path!r} holds {type(value).__name__} values; a label is a "
                          "string, a number or a bool")
    return value


def _truthy(var: str) -> bool:
    return os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Can a TCP connection to the hub (HF_ENDPOINT or huggingface.co, port 443) be opened quickly?"""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


_HUB_WHAT_TO_DO = (
    "point the source at local files: add harvest.source.kind=files harvest.source.path=PATH to the command "
    "(a .jsonl/.json/.parquet file or folder with a `text` field, or .txt; a dataset downloaded elsewhere "
    "with `hf download NAME --repo-type dataset --local-dir PATH` is such a folder), use "
    "harvest.source.kind=debian for the offline demo corpus, or run on a machine with access to the hub or "
    "with a filled Hugging Face cache (HF_DATASETS_OFFLINE=1 then reads only the cache)")
"""What a hub source that cannot be read should do instead, as overrides the command line takes as written
(``source.kind=files`` alone is refused there as an unknown top-level key)."""


def _hub_offline() -> bool:
    return _truthy("HF_DATASETS_OFFLINE") or _truthy("HF_HUB_OFFLINE")


def _check_hub_source(cfg: SourceConfig) -> None:
    """SourceError at once, no retries, when the hub is to be read (not offline) and is unreachable, or when
    offline the local caches surely lack the dataset (``hub_cache_lacks``)."""
    if _hub_offline():
        if where := hub_cache_lacks(cfg.name):
            raise SourceError(f"hub dataset {cfg.name!r} (offline mode, not in the local cache: {where}); "
                              f"{_HUB_WHAT_TO_DO}")
    elif not hub_reachable():
        raise SourceError(f"hub dataset {cfg.name!r}: huggingface.co:443 is unreachable; {_HUB_WHAT_TO_DO}")


def hub_cache_lacks(name: str) -> str | None:
    """'none of FOLDERS exists' when no cache that ``datasets`` reads offline can hold the hub dataset
    ``name`` (its prepared datasets ``HF_DATASETS_CACHE/<owner>___<name>``, its modules cache, the hub's
    ``datasets--<owner>--<name>``; HF_HOME and the like honoured, ``datasets`` not imported); None when
    one may, or ``name`` is a local path or no hub name."""
    if Path(name).expanduser().exists() or name.count("/") > 1 or not name.strip("/"):
        return None
    env = os.environ.get
    home = Path(env("HF_HOME") or Path(env("XDG_CACHE_HOME") or "~/.cache") / "huggingface").expanduser()
    *owner, last = name.split("/")
    snake = re.sub(r"([a-z\d])([A-Z])", r"\1_\2", re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", last)).lower()
    prepared = Path(env("HF_DATASETS_CACHE") or home / "datasets").expanduser()
    hub = Path(env("HF_HUB_CACHE") or env("HUGGINGFACE_HUB_CACHE") or home / "hub").expanduser()
    modules = Path(env("HF_MODULES_CACHE") or home / "modules").expanduser() / "datasets_modules" / "datasets"
    folders = [prepared / "___".join([*owner, n]) for n in dict.fromkeys((snake, last))]
    folders += [modules / name.replace("/", "--"), hub / f"datasets--{name.replace('/', '--')}"]
    if any(f.exists() for f in folders):
        return None
    return f"none of {', '.join(map(str, folders))} exists"


def _hub_texts(cfg: SourceConfig, extra: str = "") -> Iterator[tuple[str, object]]:
    what_to_do, offline = _HUB_WHAT_TO_DO, _hub_offline()
    _check_hub_source(cfg)
    import datasets

    try:
        ds = datasets.load_dataset(cfg.name, split=cfg.split, streaming=True)
        rows = iter(ds)
        first = next(rows, None)
    except Exception as e:  # datasets raises many kinds; all mean "not available"
        mode = "offline mode, not in the local cache" if offline else "could not be loaded"
        raise SourceError(f"hub dataset {cfg.name!r} ({mode}: {type(e).__name__}: {e}); {what_to_do}") from e
    if first is None:
        return
    yield from _field([first], cfg.text_field, f"hub dataset {cfg.name}", extra)
    yield from _field(rows, cfg.text_field, f"hub dataset {cfg.name}", extra)
