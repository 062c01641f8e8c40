"""Text sources (local files, hub fail-fast) and the pure windowing function, on hand-made inputs."""

import json
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from actdict.harvest import corpus, sources
from actdict.harvest.sources import (
    SourceConfig,
    SourceError,
    check_field,
    iter_documents,
    iter_records,
)
from actdict.harvest.windows import token_windows

DATA = Path(__file__).parent / "data" / "texts"


# ------------------------------------------------------------------------------------------- windows


def _rows(windows):
    """Windows as plain lists: [(tokens, doc, pos, keep)]."""
    return [(w.tokens.tolist(), w.doc.tolist(), w.pos.tolist(), w.keep.tolist()) for w in windows]


def test_concat_with_prefix_and_sep():
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    # stream: 1 2 3 | 99 | 4 5 | 99 | 6 7 8 9  -> bodies of 3 after the prefix 100
    got = _rows(token_windows(docs, ctx=4, mode="concat", prefix=[100], sep=[99], pad_id=0))
    assert got == [
        ([100, 1, 2, 3], [-1, 0, 0, 0], [-1, 0, 1, 2], [False, True, True, True]),
        ([100, 99, 4, 5], [-1, -1, 1, 1], [-1, -1, 0, 1], [False, False, True, True]),
        ([100, 99, 6, 7], [-1, -1, 2, 2], [-1, -1, 0, 1], [False, False, True, True]),
        ([100, 8, 9, 0], [-1, 2, 2, -1], [-1, 2, 3, -1], [False, True, True, False]),
    ]


def test_concat_sep_survives_an_exact_cut_and_no_empty_last_window():
    got = _rows(token_windows([[1, 2], [3]], ctx=2, sep=[9], pad_id=7))
    assert got == [([1, 2], [0, 0], [0, 1], [True, True]), ([9, 3], [-1, 1], [-1, 0], [False, True])]
    exact = _rows(token_windows([[1, 2], [3, 4]], ctx=2))
    assert [t for t, *_ in exact] == [[1, 2], [3, 4]]


def test_concat_bert_style_prefix_suffix_and_padding():
    docs = [[5, 6, 7, 8, 9]]
    got = _rows(token_windows(docs, ctx=5, prefix=[101], suffix=[102], pad_id=0))
    assert got == [
        ([101, 5, 6, 7, 102], [-1, 0, 0, 0, -1], [-1, 0, 1, 2, -1], [False, True, True, True, False]),
        ([101, 8, 9, 102, 0], [-1, 0, 0, -1, -1], [-1, 3, 4, -1, -1], [False, True, True, False, False]),
    ]


def test_per_doc_windows_and_empty_docs_keep_their_index():
    docs = [[1, 2, 3, 4], [], np.array([5])]
    got = _rows(token_windows(docs, ctx=5, mode="per_doc", prefix=[101], suffix=[102], sep=[99], pad_id=0))
    assert got == [
        ([101, 1, 2, 3, 102], [-1, 0, 0, 0, -1], [-1, 0, 1, 2, -1], [False, True, True, True, False]),
        ([101, 4, 102, 0, 0], [-1, 0, -1, -1, -1], [-1, 3, -1, -1, -1], [False, True, False, False, False]),
        ([101, 5, 102, 0, 0], [-1, 2, -1, -1, -1], [-1, 0, -1, -1, -1], [False, True, False, False, False]),
    ]


def test_window_dtypes_and_long_stream():
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 1000, n) for n in rng.integers(1, 300, 50)]
    ws = list(token_windows(docs, ctx=64, sep=[0]))
    w = ws[0]
    assert (w.tokens.dtype, w.doc.dtype, w.pos.dtype, w.keep.dtype) == (np.int64, np.int64, np.int32, bool)
    assert all(len(x.tokens) == 64 for x in ws)
    kept_tokens = np.concatenate([x.tokens[x.keep] for x in ws])
    np.testing.assert_array_equal(kept_tokens, np.concatenate(docs))  # every document token, in order, once
    kept_pos = np.concatenate([x.pos[x.keep] for x in ws])
    np.testing.assert_array_equal(kept_pos, np.concatenate([np.arange(len(d)) for d in docs]))
    assert sum(len(d) for d in docs) + 49 <= 64 * len(ws) < sum(len(d) for d in docs) + 49 + 64


def test_empty_documents_add_no_separator():
    """A document without tokens (a text its tokenizer drops) neither starts the stream with a separator nor
    doubles the one between its neighbours; the others keep their indices."""
    got = _rows(token_windows([[], [1, 2], [], [3]], ctx=3, prefix=[100], sep=[9], pad_id=0))
    assert got == [([100, 1, 2], [-1, 1, 1], [-1, 0, 1], [False, True, True]),
                   ([100, 9, 3], [-1, -1, 3], [-1, -1, 0], [False, False, True])]


def test_window_errors():
    with pytest.raises(ValueError, match="no room"):
        list(token_windows([[1]], ctx=2, prefix=[1], suffix=[2]))
    with pytest.raises(ValueError, match="mode"):
        list(token_windows([[1]], ctx=2, mode="sliding"))


# ------------------------------------------------------------------------------------------- sources


def test_txt_files_one_doc_per_file_or_per_block():
    docs = list(iter_documents(SourceConfig(kind="files", path=str(DATA / "*.txt"))))
    assert len(docs) == 2 and docs[0].startswith("The lighthouse keeper") and "cracked lens" in docs[0]
    assert docs[1].startswith("Every autumn the orchard")
    blocks = list(iter_documents(SourceConfig(kind="files", path=str(DATA / "*.txt"), txt_docs="paragraph")))
    assert [b.split()[:2] for b in blocks] == [["The", "lighthouse"], ["When", "the"], ["Every", "autumn"]]


def test_txt_files_one_doc_per_line(tmp_path):
    """txt_docs: line, a review per line: each non-empty line a document, in order."""
    (tmp_path / "r.txt").write_text("Great pizza.\n\nRude waiter, cold soup.\r\nParking was easy\n")
    docs = list(iter_documents(SourceConfig(kind="files", path=str(tmp_path / "r.txt"), txt_docs="line")))
    assert [d.strip() for d in docs] == ["Great pizza.", "Rude waiter, cold soup.", "Parking was easy"]


def test_files_whose_paths_hold_glob_or_url_characters_are_read_as_named(tmp_path):
    """The reader (datasets) takes each file's path for a glob pattern: 'corpus[1]/a.txt' read
    'corpus1/a.txt', another file, and 'g*h/a.txt' read 'gah/a.txt' too, without a word; each file named is
    now read alone. A path holding '::' (a chain of URLs to the reader) is a SourceError naming it."""
    for folder, text in (("corpus[1]", "mine"), ("corpus1", "other"), ("g*h", "star"), ("gah", "neighbour"),
                         ("c#1 50% d?e", "odd")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.txt").write_text(text)
    for folder, text in (("corpus[1]", "mine"), ("g*h", "star"), ("c#1 50% d?e", "odd")):
        assert list(iter_documents(SourceConfig(kind="files", path=str(tmp_path / folder)))) == [text]
    (tmp_path / "x::y").mkdir()
    (tmp_path / "x::y" / "a.txt").write_text("chained")
    with pytest.raises(SourceError, match=r"x::y/a.txt: the reader \(Hugging Face datasets\) takes '::'"):
        list(iter_documents(SourceConfig(kind="files", path=str(tmp_path / "x::y"))))


def test_jsonl_skips_empty_docs_and_max_docs():
    cfg = SourceConfig(kind="files", path=str(DATA / "notes.jsonl"))
    assert list(iter_documents(cfg)) == [
        "A tidy kitchen makes a calm cook.",
        "The ferry leaves at nine, rain or shine.",
        "Owls are quiet because their feathers have soft edges.",
    ]
    cfg = SourceConfig(kind="files", path=str(DATA / "notes.jsonl"), max_docs=2)
    assert len(list(iter_documents(cfg))) == 2


def test_folder_with_mixed_files_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["Parquet row one.", "Parquet row two."]}), tmp_path / "p.parquet")
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 au lait \xff is fine")  # latin-1 bytes: replaced, not fatal
    (tmp_path / "skip.csv").write_text("a,b\n")  # unsupported suffix: ignored
    docs = list(iter_documents(SourceConfig(kind="files", path=str(tmp_path), text_field="body")))
    assert docs == ["caf\ufffd au lait \ufffd is fine", "Parquet row one.", "Parquet row two."]


def test_file_errors(tmp_path):
    with pytest.raises(SourceError, match="no .* files"):
        list(iter_documents(SourceConfig(kind="files", path=str(tmp_path))))
    with pytest.raises(SourceError, match=r"no field 'content'.*'id', 'text'"):
        list(iter_documents(SourceConfig(kind="files", path=str(DATA / "notes.jsonl"), text_field="content")))
    with pytest.raises(SourceError, match="source.path"):
        list(iter_documents(SourceConfig(kind="files")))
    with pytest.raises(SourceError, match=r"field 'id' holds int values, not text; fields: \['id', 'text'\]"):
        list(iter_documents(SourceConfig(kind="files", path=str(DATA / "notes.jsonl"), text_field="id")))


def test_hub_fails_fast_when_unreachable(monkeypatch):
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    t = time.perf_counter()
    assert not sources.hub_reachable()
    what = r"add harvest\.source\.kind=files harvest\.source\.path=PATH to the command"  # as overrides are
    with pytest.raises(SourceError, match=r"unreachable.*" + what):
        list(iter_documents(SourceConfig(kind="hub", name="NeelNanda/pile-10k")))
    assert time.perf_counter() - t < 5


def test_hub_offline_without_cache_fails_with_advice(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(SourceError, match=r"offline mode.*add harvest\.source\.kind=files harvest\.source\."
                                          r"path=PATH"):
        list(iter_documents(SourceConfig(kind="hub", name="someone/not-cached-here")))


# ------------------------------------------------------------------------------------------- debian corpus


def _lzw_compress(data: bytes) -> bytes:
    """A plain LZW encoder in the layout ``compress`` uses (LSB-first codes, widths growing from 9 bits)."""
    table = {bytes([i]): i for i in range(256)}
    codes, w = [], b""
    for c in data:
        wc = w + bytes([c])
        if wc in table:
            w = wc
            continue
        codes.append(table[w])
        table[wc] = len(table) + 1  # 256 is CLEAR: new codes start at 257
        w = bytes([c])
    codes.append(table[w])
    bits, nbit, width, maxcode = 0, 0, 9, 511
    for j, code in enumerate(codes, start=1):
        if j > 1 and 255 + j > maxcode:  # the decoder's table is one entry behind the encoder's
            width, maxcode = width + 1, (1 << (width + 1)) - 1
        bits |= code << nbit
        nbit += width
    return bits.to_bytes((nbit + 7) // 8, "little")


def test_lzw_round_trip_across_code_widths():
    rng = np.random.default_rng(0)
    words = ["verily", "the", "lamp", "of", "ferry", "aaaaaaaa", "orchard", "x"]
    text = " ".join(rng.choice(words, 3000)).encode() + b"ab" * 40  # > 768 codes: widths 9, 10 and 11
    assert corpus.lzw_decompress(_lzw_compress(text)) == text
    assert corpus.lzw_decompress(_lzw_compress(b"a" * 200)) == b"a" * 200  # the KwKwK case


def test_ec02_file_and_bible_chapters():
    text = (b"Holy Bible fixture.\nGe1:1 In the start was a word.\nGe1:2 And a second verse.\n"
            b"Ge2:1 A new chapter begins.\n1Sa3:4 Numbers in book names work.\n")
    wsize = 64
    windows = [_lzw_compress(text[a:a + wsize]) for a in range(0, len(text), wsize)]
    head = b"EC02Compressed Data File".ljust(84, b"\0")
    head += wsize.to_bytes(4, "big") + len(windows).to_bytes(4, "big")
    offs = [len(head) + 4 * (len(windows) + 1)]
    for w in windows:
        offs.append(offs[-1] + len(w))
    data = head + b"".join(o.to_bytes(4, "big") for o in offs) + b"".join(windows)
    decoded = corpus.read_ec02(data)
    assert decoded == text.decode()
    assert corpus.bible_docs(decoded) == [
        {"text": "In the start was a word. And a second verse.", "source": "bible:Ge1"},
        {"text": "A new chapter begins.", "source": "bible:Ge2"},
        {"text": "Numbers in book names work.", "source": "bible:1Sa3"},
    ]


def test_austen_from_r_lazy_load_database(tmp_path):
    import zlib

    import rdata

    lines = ["A NOVEL", "", "VOLUME I", "", "CHAPTER I", "", "The first paragraph runs", "over two lines.",
             "", "A second paragraph.", "", "VOLUME II", "Chapter 2", "Short closing chapter."]
    rdata.write_rds(tmp_path / "obj", np.array(lines), compression=None)
    raw = (tmp_path / "obj").read_bytes()
    blob = len(raw).to_bytes(4, "big") + zlib.compress(raw)
    (tmp_path / "Rdata.rdb").write_bytes(blob)
    index = {"variables": {"anovel": np.array([0, len(blob)], np.int32)}, "compressed": np.array([True])}
    rdata.write_rds(tmp_path / "Rdata.rdx", index)
    books = corpus.read_austen(tmp_path)
    assert books == {"anovel": lines}
    assert corpus.austen_docs(books) == [
        {"text": "The first paragraph runs over two lines.\n\nA second paragraph.",
         "source": "austen:anovel:1"},
        {"text": "Short closing chapter.", "source": "austen:anovel:2"},
    ]


def test_fortunes_grouped_per_file(monkeypatch):
    monkeypatch.setattr(corpus, "GROUP_WORDS", 3)
    files = {"zoo": "one two\n%\nthree four five\n%\nsix\n%\n", "art": "\tbrush\n\t\t-- A. Painter\n%\n"}
    assert corpus.fortune_docs(files) == [
        {"text": "\tbrush\n\t\t-- A. Painter", "source": "fortunes:art:0"},
        {"text": "one two\n\nthree four five", "source": "fortunes:zoo:0"},
        {"text": "six", "source": "fortunes:zoo:1"},
    ]


def test_jargon_entries_without_tables_of_contents(monkeypatch):
    monkeypatch.setattr(corpus, "GROUP_WORDS", 10)
    text = ("   Glossary\n\n   A\n\n   apple\n\n   :apple: n.\n\n   A fruit that falls near\n   its tree.\n\n"
            "   B\n\n   banana\n\n   bit\n\n   :bit: n.\n\n"
            "   1. The smallest unit of information there is.\n\n   2. A little.\n\n"
            "   Part\u00a0III.\u00a0Appendices\n\n   Folklore that is not an entry.\n")
    assert corpus.jargon_docs(text) == [{
        "text": ":apple: n.\n\nA fruit that falls near its tree.\n\n:bit: n.\n\n"
                "1. The smallest unit of information there is.\n\n2. A little.",
        "source": "jargon:0",
    }]


def test_devil_entries_from_dictd_index(monkeypatch):
    monkeypatch.setattr(corpus, "GROUP_WORDS", 1000)
    entries = ["00-database-info\nabout this file\n", "ANT, n.  A small worker \u2013 caf\u00e9.\n\n",
               "BEE, n.  A buzzing\nworker.   \n\n"]  # offsets and lengths in bytes: the dash is 3, \u00e9 2
    body = "".join(entries).encode()
    offs = np.cumsum([0] + [len(e.encode()) for e in entries])

    def b64(v):
        return corpus.B64[v // 64] + corpus.B64[v % 64] if v >= 64 else corpus.B64[v]

    sizes = [len(e.encode()) for e in entries]
    index = "\n".join(f"{w}\t{b64(int(o))}\t{b64(n)}" for w, o, n in
                      zip(["00databaseinfo", "ant", "bee"], offs, sizes, strict=False))
    assert corpus._b64("BV") == 85 and corpus._b64("6") == 58
    assert corpus.devil_docs(body, index) == [
        {"text": "ANT, n.  A small worker \u2013 caf\u00e9.\n\nBEE, n.  A buzzing\nworker.",
         "source": "devil:0"}]


def test_cached_corpus_is_returned_without_download(monkeypatch, tmp_path):
    monkeypatch.setenv("ACTDICT_CACHE", str(tmp_path))
    root = tmp_path / "corpus"
    root.mkdir()
    docs = [{"text": "First cached document.", "source": "t:0"}, {"text": " ", "source": "t:1"},
            {"text": "Second one.", "source": "t:2"}]
    (root / f"{corpus.NAME}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / f"{corpus.NAME}.json").write_text(json.dumps({"packages": {"fortunes": "1"}}))
    monkeypatch.setattr(corpus, "_download", lambda work: pytest.fail("must not download"))
    assert corpus.ensure_debian_corpus() == root / f"{corpus.NAME}.jsonl"
    assert corpus.corpus_info() == {"packages": {"fortunes": "1"}}
    assert list(iter_documents(SourceConfig(kind="debian"))) == ["First cached document.", "Second one."]
    assert list(iter_records(SourceConfig(kind="debian"), "collection")) == [
        ("First cached document.", "t"), ("Second one.", "t")]  # source's collection: the part before ':'
    docs = [{"text": "Genesis", "source": "bible:Ge1"}, {"text": "Emma", "source": "austen:emma:3"},
            {"text": "Motto", "source": "fortunes"}]
    (root / f"{corpus.NAME}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    assert [v for _, v in iter_records(SourceConfig(kind="debian"), "collection")] == [
        "bible", "austen", "fortunes"]
    assert [v for _, v in iter_records(SourceConfig(kind="debian"), "source")] == [d["source"] for d in docs]


def test_check_field_reads_one_document_before_a_harvest(monkeypatch):
    """analyze.labels_field checked before a run's harvest: the demo corpus's fields are known (nothing read,
    not even built), a files source's first document is read; a field they lack is a SourceError."""
    monkeypatch.setattr(corpus, "ensure_debian_corpus", lambda: pytest.fail("must not build the corpus"))
    for field in ("source", "collection"):
        check_field(SourceConfig(kind="debian"), field)
    with pytest.raises(SourceError, match="the demo corpus's documents have no field 'stars'"):
        check_field(SourceConfig(kind="debian"), "stars")
    reviews = SourceConfig(kind="files", path=str(Path(__file__).parent / "data" / "reviews.jsonl"),
                           shuffle_buffer=64)
    check_field(reviews, "stars")
    with pytest.raises(SourceError, match=r"rows have no field 'meta'"):
        check_field(reviews, "meta.shop")


def test_missing_apt_says_what_to_do(monkeypatch, tmp_path):
    """macOS and Windows have no apt-get: the line says where a corpus built on a Debian system goes (it
    said only to use other text), and no cache folder is made for a build that cannot run."""
    monkeypatch.setattr(corpus.shutil, "which", lambda tool: None)
    with pytest.raises(corpus.CorpusError) as e:
        corpus.ensure_debian_corpus(tmp_path / "cache")
    assert str(e.value) == (
        f"apt-get not found: the demo corpus is built on a Debian/Ubuntu system; elsewhere, copy "
        f"{corpus.NAME}.jsonl and {corpus.NAME}.json from one's (or a Debian container's) ~/.cache/actdict/"
        f"corpus into {tmp_path / 'cache'}, or use harvest.source.kind=files harvest.source.path=PATH with "
        "your own text files (with configs/demo.yaml also analyze.labels_field=, which labels its rows by "
        "the demo corpus's collections)")
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("fails", [
    subprocess.CalledProcessError(2, ["dpkg-deb", "-x"], stderr="tar: ./a: Cannot write: No space left on "
                                  "device\ndpkg-deb: error: tar subprocess returned error exit status 2\n"),
    OSError(28, "No space left on device")])
def test_a_corpus_build_on_a_full_disk_is_one_line(monkeypatch, tmp_path, fails):
    """The build (~30 MB) in a cache folder whose disk fills: dpkg-deb's extraction or the JSONL's write
    ended the demo's harvest in a CalledProcessError or OSError traceback; a CorpusError names the folder
    and the full disk, and the build folder is gone."""
    def download(work):
        (work / "part.deb").write_bytes(b"x")
        raise fails

    monkeypatch.setattr(corpus, "_download", download)
    said = (f"cannot build the demo corpus in {tmp_path / 'corpus'} (No space left on device): the build "
            "needs about 30 MB there (13 MB kept); free space or make it writable, or set ACTDICT_CACHE to "
            "another folder")
    with pytest.raises(corpus.CorpusError, match=re.escape(said)):
        corpus.ensure_debian_corpus(tmp_path / "corpus")
    assert list((tmp_path / "corpus").iterdir()) == []


def test_an_interrupted_rebuild_puts_the_cached_corpus_back(monkeypatch, tmp_path, capsys):
    """--rebuild sets the cached corpus aside (hidden .old files) and a failed build puts it back; Ctrl-C
    during the build left it set aside (a KeyboardInterrupt traceback), so the next harvest downloaded and
    built it again."""
    cached = {f"{corpus.NAME}.jsonl": '{"text": "Kept.", "source": "t:0"}\n', f"{corpus.NAME}.json": "{}"}
    for name, text in cached.items():
        (tmp_path / name).write_text(text)

    def interrupted(cache_dir):
        raise KeyboardInterrupt

    monkeypatch.setattr(corpus, "ensure_debian_corpus", interrupted)
    try:
        status = corpus.main(["--rebuild", str(tmp_path)])
    except KeyboardInterrupt:  # not caught: must not stop the test session
        status = "traceback"
    assert status == 130
    assert capsys.readouterr().err == "corpus: interrupted (the cached corpus is kept)\n"
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == cached


@pytest.mark.slow
def test_real_debian_corpus(tmp_path):
    """Downloads ~6 MB of Debian packages (needs apt sources) and converts them (~5 s)."""
    if corpus.shutil.which("apt-get") is None:
        pytest.skip("not a Debian/Ubuntu system")
    try:
        path = corpus.ensure_debian_corpus(tmp_path)
    except corpus.CorpusError as e:  # no apt sources / network here: not a conversion bug
        pytest.skip(f"apt-get download unavailable: {e}")
    info = corpus.corpus_info(tmp_path)
    assert set(info["packages"]) == set(corpus.PACKAGES)
    assert info["docs_per_source"]["bible"] == 1189  # chapters of the KJV
    assert info["docs_per_source"]["austen"] == 269  # chapters of the six novels
    assert info["n_docs"] > 2500 and info["n_words"] > 2_000_000
    first = json.loads(path.open().readline())
    assert first["source"] == "austen:emma:1" and first["text"].startswith("Emma Woodhouse, handsome")


def test_buffer_shuffle_is_a_seeded_permutation():
    from actdict.harvest.sources import buffer_shuffle

    items = list(range(100))
    full = list(buffer_shuffle(items, 1000, seed=3))
    assert sorted(full) == items and full != items
    assert full == list(buffer_shuffle(items, 1000, seed=3))
    assert full != list(buffer_shuffle(items, 1000, seed=4))
    small = list(buffer_shuffle(items, 10, seed=3))
    assert sorted(small) == items and small != items
    assert all(small.index(i) >= i - 10 for i in items)  # an item cannot leave before it enters the buffer
    assert all(small.index(i) < 90 for i in range(10))  # every buffer slot is drawn, the last one too
    assert list(buffer_shuffle(items, 1, seed=0)) == items  # a buffer of one keeps the order


def test_source_fingerprint_sees_a_same_size_edit(tmp_path):
    """A corpus file rewritten in place with the same size (a typo fixed) is another corpus: the fingerprint
    that lets a resumed harvest refuse a changed source includes the modification time."""
    import os

    from actdict.harvest.sources import source_fingerprint

    f = tmp_path / "a.txt"
    f.write_text("the ferry leaves at nine")
    cfg = SourceConfig(kind="files", path=str(f))
    before = source_fingerprint(cfg)
    assert before == source_fingerprint(cfg) and len(before) == 16
    f.write_text("the ferry leaves at ten!")  # same size
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a later write, whatever the clock
    assert f.stat().st_size == 24 and source_fingerprint(cfg) != before


def test_documents_are_stripped_and_blank_ones_skipped(tmp_path, monkeypatch):
    """Surrounding whitespace is not part of a document (a BPE tokenizer would make tokens of it); a
    blank document is skipped and does not count towards max_docs, whatever the source."""
    rows = [{"text": "  padded text\n"}, {"text": " \n\t"}, {"text": "b"}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    src = SourceConfig(kind="files", path=str(tmp_path / "d.jsonl"))
    assert list(iter_documents(src)) == ["padded text", "b"]
    monkeypatch.setattr(sources, "_debian_texts",
                        lambda field="": iter([(t, None) for t in ["a", " \n ", "", "c", "d"]]))
    assert list(iter_documents(SourceConfig(kind="debian", max_docs=2))) == ["a", "c"]


# a cut record in the reader's words: the newest set's (datasets 5.2, pyarrow 26), then the lowest's (3.3, 15)
CUT = r"(ValueError: Expected object or value|ArrowInvalid: JSON parse error: Column)"


@pytest.mark.parametrize(("line", "said"), [('{"text": \n', CUT),
                                            ('{"text": "a \\ud800 b"}\n', r"ArrowInvalid: JSON parse error: "
                                                                          r"The surrogate pair in string")])
def test_a_broken_jsonl_record_is_named_by_file_and_line(tmp_path, line, said):
    """A web corpus' JSON Lines file with a cut record or a lone surrogate escape (valid for Python's json,
    not for the reader) ended the harvest in a ValueError / ArrowInvalid traceback; now one line names the
    file and the line."""
    (tmp_path / "c.jsonl").write_text('{"text": "first"}\n{"text": "second"}\n' + line + '{"text": "last"}\n')
    with pytest.raises(SourceError, match=rf"c.jsonl, line 3 cannot be read as json \({said}"):
        list(iter_documents(SourceConfig(kind="files", path=str(tmp_path / "c.jsonl"))))


def test_a_folders_hidden_files_and_folders_are_no_source(tmp_path):
    """Jupyter's .ipynb_checkpoints copies and macOS' ._ files in a corpus folder were read as documents
    (every checkpointed file's documents twice); a glob skipped them."""
    from actdict.harvest.sources import resolve_files

    (tmp_path / "c" / ".ipynb_checkpoints").mkdir(parents=True)
    (tmp_path / "c" / "sub").mkdir()
    for f in ("a.jsonl", "sub/b.txt", ".ipynb_checkpoints/a-checkpoint.jsonl", "._a.jsonl"):
        (tmp_path / "c" / f).write_text('{"text": "x"}\n' if f.endswith(".jsonl") else "x\n")
    assert [f.relative_to(tmp_path / "c").as_posix() for f in resolve_files(str(tmp_path / "c"))] == [
        "a.jsonl", "sub/b.txt"]
