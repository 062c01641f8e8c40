"""``analyze.texts`` (analyze/textfile.py): a store of your own vectors, analysed with a file of one text per
row, shows each shown row's text in the features file, summary.json and the report (escaped), whatever the
file's format; a wrong file is refused in one line before the pass."""

import html
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actdict.analyze.textfile import check_texts, read_texts
from actdict.cli import main as actdict_main
from actdict.harvest.writer import write_vectors

N = 512
TEXTS = [f"review {i}: " + ("<b>great</b> & cheap" if i % 7 == 0 else "so-so service") for i in range(N)]


def _write(path, fmt, texts=TEXTS):
    """``texts`` in format ``fmt`` at ``path`` (suffix added); returns the file."""
    p = path.with_suffix(fmt)
    if fmt == ".parquet":  # beside a list column of vectors and an int column, as a vectors import reads one
        pq.write_table(pa.table({"emb": [[0.0, 1.0]] * len(texts), "stars": list(range(len(texts))),
                                 "text": texts}), p, row_group_size=100)
    elif fmt == ".jsonl":
        p.write_text("".join(json.dumps({"text": t} if i % 2 else t) + "\n" for i, t in enumerate(texts)))
    elif fmt == ".txt":
        p.write_text("\n".join(texts))  # no line break after the last
    else:
        np.save(p, np.array(texts))
    return p


@pytest.mark.parametrize("fmt", [".parquet", ".jsonl", ".txt", ".npy"])
def test_each_format_gives_the_rows_texts(tmp_path, fmt):
    p = check_texts(str(_write(tmp_path / "t", fmt)), N)
    rows = {0, 7, 100, 101, 511}
    assert read_texts(p, rows) == {r: TEXTS[r] for r in rows}
    assert read_texts(p, {3}, max_chars=8) == {3: "review \u2026"}


def test_a_wrong_file_is_refused_in_one_line(tmp_path):
    def refused(path, n=N):
        with pytest.raises(ValueError) as e:
            check_texts(str(path), n)
        return str(e.value)

    assert "holds 512 texts, the store has 600 rows" in refused(_write(tmp_path / "a", ".txt"), 600)
    assert "holds 511 texts, the store has 512 rows" in refused(_write(tmp_path / "b", ".jsonl", TEXTS[:-1]))
    assert "not one of .parquet, .jsonl, .txt, .npy" in refused(tmp_path / "t.csv")
    assert "not found" in refused(tmp_path / "none.txt")
    np.save(tmp_path / "ints.npy", np.arange(N))
    assert "holds shape (512,), dtype int64: save a 1-D array of strings" in refused(tmp_path / "ints.npy")
    pq.write_table(pa.table({"title": TEXTS, "body": TEXTS}), tmp_path / "two.parquet")
    assert "string columns ['title', 'body'] and none named 'text'" in refused(tmp_path / "two.parquet")
    (tmp_path / "bad.jsonl").write_text('"a"\n{"text": 5}\n')
    assert "bad.jsonl line 2 is neither a string nor an object with a string 'text'" in refused(
        tmp_path / "bad.jsonl", 2)
    (tmp_path / "x.parquet").write_text("not parquet")
    assert "cannot be read as parquet" in refused(tmp_path / "x.parquet")


def test_an_analysis_of_own_vectors_shows_the_texts_escaped(tmp_path, capsys):
    rng = np.random.default_rng(0)
    store = str(tmp_path / "store")
    write_vectors(store, rng.standard_normal((N, 8)).astype(np.float32), chunk_rows=64, shard_rows=256)
    texts = _write(tmp_path / "reviews", ".parquet")
    cfg = tmp_path / "v.yaml"
    cfg.write_text(f"""
run_dir: {tmp_path / 'run'}
store: {store}
threads: 1
train: {{epochs: 1, batch_size: 64, test_fraction: 0.25, dicts: [{{name: l1, variant: sae_l1, k: 8}}]}}
analyze: {{n_features: 3, top_k: 2, context: 0, device: cpu, texts: {texts}}}
""")
    assert actdict_main(["train", str(cfg)]) == 0
    assert actdict_main(["analyze", str(cfg), "analyze.texts=" + str(tmp_path / "short.txt")]) == 2
    assert "short.txt not found" in capsys.readouterr().err  # before the pass: nothing written
    assert not (tmp_path / "run" / "summary.json").exists()
    assert actdict_main(["analyze", str(cfg)]) == 0
    feats = json.loads((tmp_path / "run" / "features" / "l1.json").read_text())
    shown = {h[1] for f in feats["features"]
             for h in [*f["top"], *f["bottom"], *(h for q in f["quantiles"] for h in q["hits"])]}
    assert shown and {int(r) for r in feats["texts"]} == shown  # every row shown, and only those
    assert all(feats["texts"][str(r)] == TEXTS[r] for r in shown)
    hits = [h for f in json.loads((tmp_path / "run" / "summary.json").read_text())["models"]["l1"]["features"]
            for h in f["top"]]
    assert hits and all(h["text"] == TEXTS[h["row"]] for h in hits)
    page = (tmp_path / "run" / "report.html").read_text()
    assert all(f"<span>{html.escape(TEXTS[h['row']])}</span>" in page for h in hits)
    assert any("<" in TEXTS[r] for r in shown) and "<b>great</b>" not in page
    assert "<b>great</b>" not in (tmp_path / "run" / "report" / "l1.html").read_text()


def test_the_import_of_a_parquet_file_with_texts_names_analyze_texts(tmp_path, capsys):
    """A parquet file of vectors and texts: the import says analyze.texts=FILE shows them, and that file
    passes analyze.texts' check as is; a file of vectors only, or of two unnamed string columns, says
    nothing."""
    from actdict.harvest.vectors import cli

    p = _write(tmp_path / "reviews", ".parquet")
    assert cli([str(p), str(tmp_path / "store")]) == 0
    out = capsys.readouterr().out
    assert out.endswith(f"(its texts, column 'text': analyze.texts={p} shows them in the report)\n")
    assert check_texts(str(p), N) == [p]
    pq.write_table(pa.table({"emb": [[0.0, 1.0]] * 9}), tmp_path / "bare.parquet")
    two = pa.table({"emb": [[0.0, 1.0]] * 9, "a": ["x"] * 9, "b": ["y"] * 9})
    pq.write_table(two, tmp_path / "two.parquet")
    for f in ("bare", "two"):
        assert cli([str(tmp_path / f"{f}.parquet"), str(tmp_path / f"s_{f}")]) == 0
        assert "analyze.texts" not in capsys.readouterr().out


def test_line_ends_nulls_and_the_text_column_among_others(tmp_path):
    """A .txt with CRLF line ends and a final line break holds as many texts as lines, without the '\\r';
    a parquet file's missing text is ''; of several string columns, 'text' is read; more texts than rows
    is refused as fewer is."""
    (tmp_path / "crlf.txt").write_bytes(b"first\r\nsecond\r\n")
    p = check_texts(str(tmp_path / "crlf.txt"), 2)
    assert read_texts(p, {0, 1}) == {0: "first", 1: "second"}
    pq.write_table(pa.table({"title": ["t0", "t1", "t2"], "text": ["a", None, "c"]}), tmp_path / "n.parquet")
    assert read_texts(check_texts(str(tmp_path / "n.parquet"), 3), {0, 1, 2}) == {0: "a", 1: "", 2: "c"}
    with pytest.raises(ValueError, match="holds 3 texts, the store has 2 rows"):
        check_texts(str(tmp_path / "n.parquet"), 2)


def test_texts_column_names_the_column_or_key_and_a_run_checks_the_file_before_any_stage(tmp_path, capsys):
    """analyze.texts_column picks one of several string columns (a .jsonl object's key); a column the file
    lacks is named with those it has; `actdict run` refuses a missing or malformed texts file before the
    harvest."""
    pq.write_table(pa.table({"title": ["t0", "t1"], "body": ["b0", "b1"]}), tmp_path / "two.parquet")
    assert read_texts(check_texts(str(tmp_path / "two.parquet"), 2, "body"), {1}, "body") == {1: "b1"}
    with pytest.raises(ValueError, match=r"no string column 'stars' \(its string columns: \['title', 'bo"):
        check_texts(str(tmp_path / "two.parquet"), 2, "stars")
    with pytest.raises(ValueError, match="none named 'text': name the texts' one with analyze.texts_column"):
        check_texts(str(tmp_path / "two.parquet"), 2)
    (tmp_path / "r.jsonl").write_text('{"review": "good"}\n{"review": "bad"}\n')
    assert read_texts(check_texts(str(tmp_path / "r.jsonl"), 2, "review"), {0, 1}, "review") == {
        0: "good", 1: "bad"}
    np.save(tmp_path / "v.npy", np.zeros((300, 4), np.float32))
    cfg = tmp_path / "v.yaml"
    for texts, err in ((tmp_path / "none.txt", "none.txt not found"),
                       (tmp_path / "two.parquet", "none named 'text'")):
        cfg.write_text(f"run_dir: {tmp_path / 'run'}\nharvest: {{mode: vectors, vectors: {{path: "
                       f"{tmp_path / 'v.npy'}}}}}\nanalyze: {{texts: {texts}}}\n")
        assert actdict_main(["run", str(cfg)]) == 2
        assert err in capsys.readouterr().err
        assert not (tmp_path / "run").exists()  # nothing ran


def test_texts_in_shards_are_one_run_of_texts_as_the_vectors_shards(tmp_path):
    """analyze.texts as a folder or a glob pattern: the files' texts one after the other in the sorted order
    of their paths (as the vectors import reads shards); their total against the store's rows."""
    (tmp_path / "t").mkdir()
    for i, (a, b) in enumerate(((0, 200), (200, 230), (230, N))):
        _write(tmp_path / "t" / f"part-{i}", ".parquet", TEXTS[a:b])
    rows = {0, 199, 200, 229, 230, 511}
    for path in (str(tmp_path / "t"), str(tmp_path / "t" / "part-*.parquet")):
        files = check_texts(path, N)
        assert len(files) == 3 and read_texts(files, rows) == {r: TEXTS[r] for r in rows}
    with pytest.raises(ValueError, match=r"part-\[01\].parquet \(2 files\) holds 230 texts, the store has"):
        check_texts(str(tmp_path / "t" / "part-[01].parquet"), N)
    (tmp_path / "t" / "x.txt").write_text("a\n")
    with pytest.raises(ValueError, match=r"names files of several formats \['.parquet', '.txt'\]"):
        check_texts(str(tmp_path / "t"), N)


def test_string_view_and_dictionary_columns_are_text(tmp_path, capsys):
    """A text column of type string_view (as Polars 1.38 writes parquet) or dictionary-encoded (a pandas
    category) is read as the texts, and the vectors import names it for analyze.texts."""
    from actdict.harvest.vectors import cli

    texts = ["good", None, "bad"]
    columns = {"cat": lambda: pa.array(texts).dictionary_encode()}
    if hasattr(pa, "string_view"):  # pyarrow >= 16; 15, pyproject's lowest, has no such column to read
        columns["view"] = lambda: pa.array(texts, pa.string_view())
    for name, col in ((name, make()) for name, make in columns.items()):
        p = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table({"emb": [[0.0, 1.0]] * 3, "text": col}), p)
        assert read_texts(check_texts(str(p), 3), {0, 1, 2}) == {0: "good", 1: "", 2: "bad"}
        assert cli([str(p), str(tmp_path / f"s_{name}")]) == 0
        assert capsys.readouterr().out.endswith(f"(its texts, column 'text': analyze.texts={p} shows them in "
                                                "the report)\n")


def test_a_jsonl_null_text_is_empty_as_a_parquet_one(tmp_path):
    """pandas' to_json(orient='records', lines=True) writes a missing text as null: '' as in a parquet file;
    an object without the key is refused."""
    (tmp_path / "n.jsonl").write_text('{"text": "a"}\n{"text": null}\nnull\n"d"\n')
    got = read_texts(check_texts(str(tmp_path / "n.jsonl"), 4), {0, 1, 2, 3})
    assert got == {0: "a", 1: "", 2: "", 3: "d"}
    (tmp_path / "k.jsonl").write_text('{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(ValueError, match="k.jsonl line 2 is neither a string nor an object with a string"):
        check_texts(str(tmp_path / "k.jsonl"), 2)


@pytest.mark.parametrize("fmt", [".jsonl", ".txt"])
def test_a_byte_order_mark_is_not_part_of_the_first_text(tmp_path, fmt):
    """A file saved as 'UTF-8 with BOM' (Windows tools): its first text is read without the mark."""
    p = _write(tmp_path / "t", fmt, TEXTS[:3])
    p.write_bytes("\ufeff".encode() + p.read_bytes())
    assert read_texts(check_texts(str(p), 3), {0, 1, 2}) == dict(enumerate(TEXTS[:3]))


def test_a_suffix_in_capitals_is_its_format(tmp_path):
    """'TEXTS.TXT' (a Windows export) was refused as 'not one of .parquet, .jsonl, .txt, .npy', and a folder
    of such files named no file, while the vectors import and the harvest's sources read '.NPY', '.JSONL'."""
    p = _write(tmp_path / "t", ".jsonl", TEXTS[:3]).rename(tmp_path / "T.JSONL")
    assert read_texts(check_texts(str(p), 3), {0, 2}) == {0: TEXTS[0], 2: TEXTS[2]}
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "A.TXT").write_text("a\n")
    (tmp_path / "parts" / "b.txt").write_text("b\n")
    assert read_texts(check_texts(str(tmp_path / "parts"), 2), {0, 1}) == {0: "a", 1: "b"}


def test_a_jsonl_files_blank_lines_at_its_end_are_no_texts_but_between_texts_are_refused(tmp_path):
    (tmp_path / "t.jsonl").write_text('"a"\n"b"\n\n\n')
    assert read_texts(check_texts(str(tmp_path / "t.jsonl"), 2), {0, 1}) == {0: "a", 1: "b"}
    (tmp_path / "u.jsonl").write_text('"a"\n\n"b"\n')
    with pytest.raises(ValueError, match="u.jsonl line 2 is blank, between texts"):
        check_texts(str(tmp_path / "u.jsonl"), 2)
