"""The offline demo corpus: real English prose from Debian packages, as one JSONL file.

``python -m actdict.harvest.corpus`` (or ``ensure_debian_corpus()``) runs ``apt-get download`` and
``dpkg-deb -x`` (no system install) for PACKAGES and converts them to ``{"text", "source"}`` documents of a
few hundred to a few thousand words: Austen chapters, Bible (KJV) chapters, groups of fortunes, blocks of
Jargon File entries, blocks of Devil's Dictionary entries. The result is cached under
``$ACTDICT_CACHE/corpus`` (default ``~/.cache/actdict/corpus``) with a sidecar JSON of package versions
(``corpus_info()``, which ``python -m actdict.harvest.corpus`` prints).
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
import zlib
from pathlib import Path

from actdict.errors import ActdictError, printable

PACKAGES = ("r-cran-janeaustenr", "bible-kjv-text", "fortunes", "jargon-text", "dict-devil")
NAME = "debian-prose"
FORMAT = 1
GROUP_WORDS = 400  # fortunes / jargon / devil entries are grouped into documents of at least this many words
SKIP_FORTUNES = {"ascii-art"}  # pictures, not prose


class CorpusError(ActdictError, RuntimeError):
    """The corpus cannot be built here (the message says what to run)."""


OWN_FILES = (" (with configs/demo.yaml also analyze.labels_field=, which labels its rows by the demo "
             "corpus's collections)")
"""What a user who points the demo at their own files must also set."""


def _log(msg: str) -> None:
    """A '[corpus] ...' line on stderr, ``printable``: it names the cache folder, which the user or
    ACTDICT_CACHE gives (an ESC in it would act on the terminal)."""
    print(printable(f"[corpus] {msg}"), file=sys.stderr, flush=True)


def corpus_dir(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$ACTDICT_CACHE/corpus``, else ``~/.cache/actdict/corpus``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    root = os.environ.get("ACTDICT_CACHE") or Path.home() / ".cache" / "actdict"
    return Path(root).expanduser() / "corpus"


def ensure_debian_corpus(cache_dir: str | Path | None = None) -> Path:
    """Path of the corpus JSONL, built on first use (a second call returns the cached file at once)."""
    root = corpus_dir(cache_dir)
    out, info = root / f"{NAME}.jsonl", root / f"{NAME}.json"
    if out.is_file() and info.is_file():
        return out
    if tool := next((t for t in ("apt-get", "dpkg-deb") if shutil.which(t) is None), None):  # macOS, Windows
        raise CorpusError(f"{tool} not found: the demo corpus is built on a Debian/Ubuntu system; elsewhere, "
                          f"copy {out.name} and {info.name} from one's (or a Debian container's) "
                          f"~/.cache/actdict/corpus into {root}, or use harvest.source.kind=files "
                          f"harvest.source.path=PATH with your own text files{OWN_FILES}")
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root, prefix=".build-") as work:
            sidecar = _build(Path(work), out, info)
    except (OSError, subprocess.CalledProcessError) as e:  # a full disk, a read-only cache folder
        raise CorpusError(f"cannot build the demo corpus in {root} ({_why(e)}): the build "
                          "needs about 30 MB there (13 MB kept); free space or make it writable, or set "
                          "ACTDICT_CACHE to another folder") from e
    _log(f"done: {sidecar['n_docs']} documents, {sidecar['n_words']:,} words")
    return out


def _why(e: OSError | subprocess.CalledProcessError) -> str:
    """Why a step of the build failed, in one line: a full disk as such, else the OS's or the tool's words."""
    if not isinstance(e, subprocess.CalledProcessError):
        return e.strerror or str(e)
    said, full = (e.stderr or "").strip(), os.strerror(errno.ENOSPC)
    return full if full in said else (said.splitlines() or [str(e)])[-1]


def _build(work: Path, out: Path, info: Path) -> dict:
    """Download, extract and write the corpus in the build folder ``work``, then move its JSONL to ``out``
    and its record to ``info``; returns the record."""
    versions = _download(work)
    docs = build_docs(work / "x")
    _log(f"writing {len(docs)} documents to {out}")
    tmp = work / "corpus.jsonl"
    with open(tmp, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    per_source: dict[str, int] = {}
    for d in docs:
        kind = d["source"].split(":", 1)[0]
        per_source[kind] = per_source.get(kind, 0) + 1
    sidecar = {"name": NAME, "format": FORMAT, "packages": versions, "n_docs": len(docs),
               "n_words": sum(len(d["text"].split()) for d in docs), "n_bytes": tmp.stat().st_size,
               "docs_per_source": per_source}
    (work / "info.json").write_text(json.dumps(sidecar, indent=2, sort_keys=True))
    os.replace(work / "info.json", info)
    os.replace(tmp, out)  # last: the JSONL's presence means the build finished
    return sidecar


def corpus_info(cache_dir: str | Path | None = None) -> dict:
    """The sidecar of the built corpus: name, package versions, document and word counts."""
    path = corpus_dir(cache_dir) / f"{NAME}.json"
    if not path.is_file():
        raise CorpusError(f"no corpus at {path.parent}; run: python -m actdict.harvest.corpus")
    return json.loads(path.read_text())


def versions_said(versions: dict[str, str]) -> str:
    """'bible-kjv-text 4.38, fortunes 1:1.99.1-7.3': the packages extracted and their versions, as the
    build's progress line says them."""
    return ", ".join(f"{p} {v}" for p, v in versions.items())


def _download(work: Path) -> dict[str, str]:
    """apt-get download + dpkg-deb -x of PACKAGES into work/x (both tools there: ``ensure_debian_corpus``
    checked); returns {package: version}."""
    _log(f"apt-get download {' '.join(PACKAGES)}")
    cmd = ["apt-get", "download", *PACKAGES]
    res = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    if res.returncode != 0 and "No space left on device" in res.stderr:  # not the package lists: say so
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if res.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
        _log("download failed; running apt-get update once and retrying")
        subprocess.run(["apt-get", "update"], capture_output=True, text=True)
        res = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    if res.returncode != 0:
        raise CorpusError(f"`{' '.join(cmd)}` failed:\n{res.stderr.strip()}\nRun `sudo apt-get update` (the "
                          "package lists may be missing) and retry, or use harvest.source.kind=files "
                          f"harvest.source.path=PATH with local text{OWN_FILES}")
    versions = {}
    for deb in sorted(work.glob("*.deb")):
        fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version"], capture_output=True,
                                text=True, check=True).stdout
        meta = dict(line.split(": ", 1) for line in fields.strip().splitlines())
        versions[meta["Package"]] = meta["Version"]
        subprocess.run(["dpkg-deb", "-x", str(deb), str(work / "x")], check=True, capture_output=True,
                       text=True)  # its stderr: why it failed (a full disk), for the CorpusError
    missing = sorted(set(PACKAGES) - set(versions))
    if missing:
        raise CorpusError(f"apt-get download did not fetch {missing}")
    _log(f"extracted {versions_said(versions)}")
    return versions


def build_docs(x: Path) -> list[dict]:
    """All documents from an extracted package tree ``x`` (the root of the dpkg-deb -x outputs)."""
    docs = austen_docs(read_austen(x / "usr/lib/R/site-library/janeaustenr/data"))
    docs += bible_docs(read_ec02((x / "usr/lib/bible.data").read_bytes()))
    fdir = x / "usr/share/games/fortunes"
    fortunes = {p.name: p.read_text(encoding="utf-8", errors="replace") for p in sorted(fdir.iterdir())
                if p.is_file() and not p.is_symlink() and "." not in p.name and p.name not in SKIP_FORTUNES}
    docs += fortune_docs(fortunes)
    jargon = gzip.decompress((x / "usr/share/doc/jargon-text/jargon.txt.gz").read_bytes())
    docs += jargon_docs(jargon.decode("utf-8", errors="replace"))
    ddir = x / "usr/share/dictd"
    devil = gzip.decompress((ddir / "devil.dict.dz").read_bytes())
    docs += devil_docs(devil, (ddir / "devil.index").read_text(encoding="utf-8", errors="replace"))
    return docs


# ------------------------------------------------------------------------------------------ helpers


def reflow(lines: list[str]) -> str:
    """Blank-line-separated paragraphs, each joined onto one line; paragraphs separated by a blank line."""
    paras, cur = [], []
    for line in [*lines, ""]:
        if line.strip():
            cur.append(line.strip())
        elif cur:
            paras.append(" ".join(cur))
            cur = []
    return "\n\n".join(paras)


def _group(items: list[str], source: str, sep: str = "\n\n") -> list[dict]:
    """Consecutive items joined into documents of at least GROUP_WORDS words (the last may be shorter)."""
    docs, cur, words = [], [], 0
    for it in items:
        cur.append(it)
        words += len(it.split())
        if words >= GROUP_WORDS:
            docs.append({"text": sep.join(cur), "source": f"{source}:{len(docs)}"})
            cur, words = [], 0
    if cur:
        docs.append({"text": sep.join(cur), "source": f"{source}:{len(docs)}"})
    return docs


# ------------------------------------------------------------------------------------------ Austen

CHAPTER = re.compile(r"^\s*chapter\s+([ivxlc]+|\d+)\b", re.IGNORECASE)
VOLUME = re.compile(r"^\s*volume\s+[ivx]+\s*$", re.IGNORECASE)


def read_austen(data_dir: Path) -> dict[str, list[str]]:
    """{book: lines} from janeaustenr's lazy-load database (Rdata.rdx index + Rdata.rdb blobs)."""
    import rdata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata: "Unknown file type: assumed RDS"
        index = rdata.read_rds(data_dir / "Rdata.rdx")
        rdb = (data_dir / "Rdata.rdb").read_bytes()
        books = {}
        for name, (off, length) in sorted(index["variables"].items()):
            raw = _r_unblob(rdb[int(off):int(off) + int(length)])
            lines = rdata.conversion.convert(rdata.parser.parse_data(raw))
            books[str(name)] = [str(s) if s is not None else "" for s in lines]
    return books


def _r_unblob(blob: bytes) -> bytes:
    """One object of an R lazy-load database: 4-byte big-endian length, then zlib (or typed) data."""
    kind = blob[4:5]
    if kind == b"Z":
        return zlib.decompress(blob[5:])
    if kind == b"2":
        import bz2

        return bz2.decompress(blob[5:])
    if kind == b"X":
        import lzma

        return lzma.decompress(blob[5:])
    if kind == b"0":
        return blob[5:]
    return zlib.decompress(blob[4:])


def austen_docs(books: dict[str, list[str]]) -> list[dict]:
    """One document per chapter (title pages and volume headings dropped)."""
    docs = []
    for book, lines in books.items():
        chapters: list[list[str]] = []
        for line in lines:
            if CHAPTER.match(line):
                chapters.append([])
            elif chapters and not VOLUME.match(line):
                chapters[-1].append(line)
        for i, ch in enumerate(chapters):
            text = reflow(ch)
            if text:
                docs.append({"text": text, "source": f"austen:{book}:{i + 1}"})
    return docs


# ------------------------------------------------------------------------------------------ Bible


def lzw_decompress(buf: bytes, maxbits: int = 16) -> bytes:
    """Unix ``compress`` (LZW, block mode, no 3-byte header) data, as in the bible-kjv data windows.

    Codes are read in groups of n_bits bytes (8 codes); when the code width grows, or after a CLEAR
    code (256), the rest of the current group is skipped, exactly as ``compress`` writes it."""
    out = bytearray()
    maxmax = 1 << maxbits
    table = [bytes([i]) for i in range(256)] + [b""] * (maxmax - 256)  # code -> string
    n_bits, maxcode, free_ent = 9, 511, 257
    pos = bit = nbits_in_group = group = 0
    clear, prev = False, -1
    while True:
        if clear or bit >= nbits_in_group or free_ent > maxcode:
            if free_ent > maxcode:
                n_bits += 1
                maxcode = maxmax if n_bits == maxbits else (1 << n_bits) - 1
            if clear:
                n_bits, maxcode, clear = 9, 511, False
            chunk = buf[pos:pos + n_bits]
            pos += len(chunk)
            if not chunk:
                return bytes(out)
            group, bit = int.from_bytes(chunk, "little"), 0
            nbits_in_group = len(chunk) * 8 - (n_bits - 1)
        code = (group >> bit) & ((1 << n_bits) - 1)
        bit += n_bits
        if prev < 0:  # the first code is a literal
            out += table[code]
            prev = code
            continue
        if code == 256:
            clear, free_ent = True, 256
            continue
        entry = table[prev] + table[prev][:1] if code >= free_ent else table[code]  # KwKwK case
        out += entry
        if free_ent < maxmax:
            table[free_ent] = table[prev] + entry[:1]
            free_ent += 1
        prev = code


def read_ec02(data: bytes) -> str:
    """Text of a bible-kjv "EC02" data file: header, window size, window count, window offsets
    (big-endian 32-bit), then each window of text compressed on its own."""
    if data[:4] != b"EC02":
        raise CorpusError(f"not a bible-kjv EC02 data file (magic {data[:4]!r})")
    wsize, wnum = (int.from_bytes(data[i:i + 4], "big") for i in (84, 88))
    offs = [int.from_bytes(data[92 + 4 * i:96 + 4 * i], "big") for i in range(wnum + 1)]
    parts = [lzw_decompress(data[a:b]) for a, b in zip(offs[:-1], offs[1:], strict=True)]
    if any(len(p) != wsize for p in parts[:-1]):
        raise CorpusError("bible data: a window did not decompress to the window size")
    return b"".join(parts).decode("latin-1")


VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+)\s+(.*)$")


def bible_docs(text: str) -> list[dict]:
    """One document per chapter from lines like ``Ge1:1 In the beginning ...``."""
    docs, key, verses = [], None, []
    for line in text.splitlines():
        m = VERSE.match(line.strip())
        if not m:
            continue
        book, chapter, _, verse = m.groups()
        if (book, chapter) != key:
            if verses:
                docs.append({"text": " ".join(verses), "source": f"bible:{key[0]}{key[1]}"})
            key, verses = (book, chapter), []
        verses.append(verse.strip())
    if verses:
        docs.append({"text": " ".join(verses), "source": f"bible:{key[0]}{key[1]}"})
    return docs


# ----------------------------------------------------------------------------- fortunes, jargon, devil


def fortune_docs(files: dict[str, str]) -> list[dict]:
    """Fortunes (separated by lines holding only ``%``) grouped per file, in file-name order."""
    docs = []
    for name in sorted(files):
        items = [f.strip("\n") for f in re.split(r"(?m)^%\s*$", files[name]) if f.strip()]
        docs += _group(items, f"fortunes:{name}")
    return docs


ENTRY = re.compile(r"^:[^:\s][^:]*:")  # a Jargon File headword line, e.g. ":hacker: n."


def jargon_docs(text: str) -> list[dict]:
    """Glossary entries of the Jargon File (from the first ``:word:`` line to the appendices), grouped.
    The per-letter tables of contents between entries (from a one-letter heading on) are dropped."""
    paras = [p for p in (reflow(b.splitlines()) for b in re.split(r"\n\s*\n", text)) if p]
    entries: list[list[str]] = []
    for p in paras:
        if ENTRY.match(p):
            entries.append([p])
        elif entries and re.match(r"^Part\s+[IVX]+\.", p):
            break
        elif entries:
            entries[-1].append(p)
    out = []
    for e in entries:
        toc = next((i for i, p in enumerate(e) if re.fullmatch(r"[A-Z0-9]", p)), len(e))  # letter heading
        out.append("\n\n".join(e[:toc]))
    return _group(out, "jargon")


B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64(s: str) -> int:
    v = 0
    for c in s:
        v = v * 64 + B64.index(c)
    return v


def devil_docs(dict_bytes: bytes, index_text: str) -> list[dict]:
    """Devil's Dictionary entries (dictd: index lines ``word<TAB>offset<TAB>length`` in base64, byte offsets
    into the uncompressed file: each entry is cut from the bytes, then decoded), in file order, database info
    entries skipped, grouped."""
    spans = []
    for line in index_text.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and not parts[0].startswith("00database"):
            spans.append((_b64(parts[1]), _b64(parts[2])))
    texts = [dict_bytes[o:o + n].decode("utf-8", errors="replace") for o, n in sorted(set(spans))]
    entries = ["\n".join(ln.rstrip() for ln in t.strip("\n").splitlines()) for t in texts]
    return _group([e for e in entries if e.strip()], "devil")


def main(argv: list[str] | None = None) -> int:
    """``python -m actdict.harvest.corpus [--rebuild] [CACHE_DIR]``: build (or find) the corpus, print its
    path and record."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m actdict.harvest.corpus",
                                description="build the offline demo corpus from Debian packages (cached)")
    p.add_argument("cache_dir", nargs="?", help="default: $ACTDICT_CACHE/corpus or ~/.cache/actdict/corpus")
    p.add_argument("--rebuild", action="store_true", help="delete the cached corpus and build it again")
    args = p.parse_args(argv)
    root = corpus_dir(args.cache_dir)
    cached = [f for f in (root / f"{NAME}.jsonl", root / f"{NAME}.json") if f.is_file()]
    if args.rebuild:  # set aside, not deleted: a failed build (offline?) puts them back
        for f in cached:
            f.rename(f.with_name(f".{f.name}.old"))
    try:
        path = ensure_debian_corpus(args.cache_dir)
    except (ActdictError, OSError, KeyboardInterrupt) as e:  # Ctrl-C too: the set-aside corpus comes back
        for f in cached if args.rebuild else []:
            f.with_name(f".{f.name}.old").rename(f)
        if isinstance(e, KeyboardInterrupt):
            print("corpus: interrupted" + (" (the cached corpus is kept)" if cached else ""), file=sys.stderr)
            return 130
        print(printable(f"corpus: {type(e).__name__}: {e}"), file=sys.stderr)  # the folder, apt-get's words
        return 2
    for f in cached if args.rebuild else []:
        f.with_name(f".{f.name}.old").unlink(missing_ok=True)
    print(printable(path))
    print(json.dumps(corpus_info(path.parent), indent=2))
    return 0


if __name__ == "__main__":
    from actdict.errors import run_command

    run_command(main)
