"""``actdict feature`` (analyze/show.py): a dictionary's features printed from the features file analysis
wrote: each chosen feature's numbers and contexts as the file has them, the most active ones listed, and one
line for what it cannot show."""

import json

import pytest

from actdict.analyze import run
from actdict.analyze.config import AnalyzeConfig
from actdict.analyze.show import context, feature_lines
from actdict.cli import main as cli
from actdict.config import Common
from actdict.train.checkpoint import save
from actdict.train.protocol import make
from tests.test_analyze_outputs import _run_dir


def _analysed(tmp_path, monkeypatch, capsys):
    run_dir = _run_dir(tmp_path, monkeypatch)  # tokens t0, t1, ... (the decoder is patched)
    run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(device="cpu", n_features=2, top_k=3, context=2))
    capsys.readouterr()  # the analysis' own output
    return run_dir, json.loads((run_dir / "features" / "sae.json").read_text())


def test_a_feature_prints_its_numbers_and_contexts_as_the_file_has_them(tmp_path, monkeypatch, capsys):
    run_dir, data = _analysed(tmp_path, monkeypatch, capsys)
    f = max(data["features"], key=lambda g: g["fires"])
    assert cli(["feature", str(run_dir / "dicts" / "sae"), str(f["i"]), "--top", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{run_dir / 'dicts' / 'sae'} (sae, k 8; {data['n_rows']:,} held-out rows analysed)"
    assert out[2].startswith(f"#{f['i']}: active on {f['fires']:,} of {data['n_rows']:,} held-out rows")
    top = out[out.index("  top activations:") + 1:][:2]
    for line, hit in zip(top, f["top"][:2], strict=True):
        act, row, doc, pos, ids, c = hit
        assert float(line.split()[0]) == float(f"{act:.4g}")
        assert f"«t{ids[c]}»" in line and line.endswith(f"(doc {doc}, pos {pos})")
    if f.get("fires_with"):
        j, both = f["fires_with"][0]
        fj = data["features"][j]["fires"]
        first = out[out.index("  fires with (Jaccard, rows both fire, its top tokens):") + 1]
        assert first.split()[:3] == [f"#{j}", f"{both / (f['fires'] + fj - both):.2f}", f"{both:,}"]


def test_without_indices_the_most_active_features_are_listed(tmp_path, monkeypatch, capsys):
    run_dir, data = _analysed(tmp_path, monkeypatch, capsys)
    assert cli(["feature", str(run_dir / "dicts" / "sae"), "--list", "3"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    want = sorted(data["features"], key=lambda g: (-g["fires"], g["i"]))[:3]
    assert [r.split()[:2] for r in rows] == [[f"#{g['i']}", f"{g['fires']:,}"] for g in want]


def test_what_it_cannot_show_is_one_line(tmp_path, monkeypatch, capsys):
    run_dir, _ = _analysed(tmp_path, monkeypatch, capsys)
    assert cli(["feature", str(run_dir / "dicts" / "sae"), "8"]) == 2
    assert capsys.readouterr().err.endswith("has features 0..7; no [8]\n")
    save(run_dir / "dicts" / "new", make("sae_l1", 5, 8, seed=1), {"config_hash": "new"})
    assert cli(["feature", str(run_dir / "dicts" / "new"), "0"]) == 2  # trained, not analysed
    assert "features/new.json not found (run actdict analyze)" in capsys.readouterr().err
    save(run_dir / "dicts" / "sae", make("sae_l1", 5, 16, seed=2), {})  # retrained, another k
    assert cli(["feature", str(run_dir / "dicts" / "sae"), "0"]) == 2  # the file is another training's
    assert "was computed from another training of sae (k 8" in capsys.readouterr().err
    assert cli(["feature", str(tmp_path / "nowhere"), "0"]) == 2
    assert "no trained dictionary there" in capsys.readouterr().err


def test_a_context_marks_the_rows_token_and_escapes_nothing_it_should_not():
    data = {"tokens": {"1": "the", "2": "##re", "3": "cat", "4": "\x1b]0;x\x07"}, "wordpiece": True}
    assert context(data, [1.0, 9, 0, 4, [1, 3, 2], 1]) == " the «cat»re  (doc 0, pos 4)"
    assert context(data | {"texts": {"9": "A  long\ntext"}}, [1.0, 9, 0, 4, [-1], 0]) == \
        "A long text  (doc 0, pos 4)"
    assert context(data, [1.0, 9, 3, 0, [-1], 0]) == "row 9 (doc 3, pos 0)"
    assert "«<U+001B>]0;x<U+0007>»" in context(data, [1.0, 9, 0, 0, [1, 4], 1])  # as the report shows them


def test_feature_lines_of_signed_codes_directions_logits_and_a_dead_feature():
    """A crafted features file: the most negative contexts shown when not negligible, nearest directions,
    logit effects by token, and a dead feature's one line."""
    from actdict.analyze.show import feature_lines

    hit = [2.5, 7, 1, 3, [5, 6], 1]
    neg = [-1.0, 8, 1, 4, [5, 6], 0]
    feats = [{"i": 0, "fires": 4, "density": 0.4, "max": 2.5, "min": -1.0, "top": [hit], "bottom": [neg],
              "quantiles": [], "nearest": {"other": {"feature": 3, "cos": 0.91234}},
              "logits": {"up": [[5, 1.5]], "down": [[6, -0.25]]}},
             {"i": 1, "fires": 0, "density": 0.0, "max": None, "min": None, "top": [], "bottom": [],
              "quantiles": []}]
    data = {"n_rows": 10, "tokens": {"5": "cat", "6": "dog"}, "features": feats}
    lines = feature_lines(data, {}, 0, 3)
    assert lines[0] == "#0: active on 4 of 10 held-out rows (density 0.4); codes -1 .. 2.5"
    assert lines[lines.index("  most negative:") + 1] == "         -1  «cat»dog  (doc 1, pos 4)"
    assert "  nearest direction in other: #3 (cos 0.912)" in lines
    assert "  logits up: 'cat' +1.5" in lines and "  logits down: 'dog' -0.25" in lines
    data["formation_steps"], feats[0]["formed"] = [10, 20, 30], [0.41234, None, 1.0]  # train.snapshot_every
    assert "  its direction in the snapshots (best cosine, by step): 10: 0.412, 20: n/a, 30: 1" in (
        feature_lines(data, {}, 0, 3))
    feats[0]["min"] = -0.2  # under a tenth of the largest: negligible, as on the feature page
    assert "  most negative:" not in feature_lines(data, {}, 0, 3)
    assert feature_lines(data, {}, 1, 3) == ["#1: active on 0 of 10 held-out rows (density 0)",
                                             "  dead: active on no held-out row"]


def test_search_lists_the_features_whose_top_contexts_have_the_word_as_their_token(tmp_path, monkeypatch,
                                                                                    capsys):
    run_dir, data = _analysed(tmp_path, monkeypatch, capsys)
    f = max(data["features"], key=lambda g: g["fires"])
    ids, c = f["top"][0][4], f["top"][0][5]
    word = f"T{ids[c]}"  # the decoder's 't<id>', in another case
    want = {g["i"]: sum(h[4][h[5]] == ids[c] for h in g["top"]) for g in data["features"]}
    want = {i: n for i, n in want.items() if n}
    assert cli(["feature", str(run_dir / "dicts" / "sae"), "--search", word]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert {int(r[0][1:]): int(r[1].split("/")[0]) for r in rows} == want and f["i"] in want
    assert [int(r[1].split("/")[0]) for r in rows] == sorted(want.values(), reverse=True)  # most hits first
    assert cli(["feature", str(run_dir / "dicts" / "sae"), "--search", "no-such"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "no feature has 'no-such' among its top contexts"


def test_a_line_break_token_keeps_the_context_on_its_line():
    """GPT-2's '\\n\\n' token printed as line breaks cut a context over three lines; it is shown as the
    report shows it, an arrow."""
    data = {"tokens": {"1": " end", "2": ".\n\n", "3": "The", "4": " cat"}}
    assert context(data, [1.0, 9, 0, 4, [1, 2, 3, 4], 2]) == " end.\u21b5\u21b5«The» cat  (doc 0, pos 4)"
    assert context(data, [1.0, 9, 0, 4, [1, 3, 2], 2]) == " endThe«.\u21b5\u21b5»  (doc 0, pos 4)"


def test_partners_of_a_feature_of_texts_are_headed_by_their_top_text():
    """The fires-with lines of rows with texts (embeddings, analyze.texts) show each partner's top text's
    first words, and said 'its top tokens' (as compare's columns did)."""
    hit = [1.0, 0, 0, 0, [-1], 0]
    feats = [{"i": i, "fires": 4, "density": 0.5, "max": 1.0, "min": 0.0, "top": [hit], "bottom": [],
              "fires_with": [[1 - i, 2]]} for i in range(2)]
    data = {"n_rows": 8, "features": feats, "texts": {"0": "great pizza"}}
    lines = feature_lines(data, {1: (["great pizza"], [])}, 0, 1)
    assert lines[-2:] == ["  fires with (Jaccard, rows both fire, its top text):",
                          "         #1  0.33        2  great pizza"]


def test_long_contexts_quantile_order_and_search_over_texts_and_repeated_hits():
    """A long context is cut around the row's token with '…'; quantile samples come highest first, each
    headed as a group of the sampled rows (a quantile of every active row, as it read, it is not); search
    counts every top hit with the word, and over texts matches them case aside."""
    from actdict.analyze.show import feature_lines, search_lines

    toks = {str(i): f" w{i}" for i in range(60)}
    ids = list(range(60))
    line = context({"tokens": toks}, [1.0, 0, 0, 0, ids, 30], width=40)
    assert line.startswith("…") and "… " not in line[:2] and "«w30»" in line and "…  (doc 0, pos 0)" in line
    assert len(line.split("  (doc")[0]) < 60
    q = [{"lo": lo, "hi": lo + 0.5, "vmin": lo, "vmax": lo + 0.5, "hits": [[lo + 1, 0, 0, 0, [1], 0]]}
         for lo in (0.0, 0.5)]
    f = {"i": 0, "fires": 2, "density": 0.2, "max": 2.0, "min": 0.0, "top": [], "bottom": [], "quantiles": q}
    lines = feature_lines({"n_rows": 10, "tokens": toks, "features": [f]}, {}, 0, 1)
    assert lines.index("  quantile 50%-100% of 2 sampled rows (0.5 .. 1):") < lines.index(
        "  quantile 0%-50% of 2 sampled rows (0 .. 0.5):")
    top = [[3.0, r, r, 0, [-1], 0] for r in range(3)]
    data = {"tokens": {}, "texts": {"0": "Great PIZZA", "1": "pizza again", "2": "rude"},
            "features": [{"i": 0, "fires": 3, "top": top}, {"i": 1, "fires": 3, "top": top[1:]}]}
    rows = [r.split() for r in search_lines(data, {}, "Pizza", 5)[1:]]
    assert [r[:2] for r in rows] == [["#0", "2/3"], ["#1", "1/2"]]


@pytest.mark.parametrize("argv, said", [(["--search", ""], "--search needs a word"),
                                        (["--search", "  "], "--search needs a word"),
                                        (["3", "--search", "the"], "give feature indices, --search WORD or"),
                                        (["3", "--class", "a"], "--class LABEL, one of them"),
                                        (["--search", "a", "--class", "b"], "--class LABEL, one of them")])
def test_a_search_that_would_be_ignored_is_a_usage_error(capsys, argv, said):
    """--search '' printed the plain list, and indices with --search printed the features, the search
    dropped without a word; both stop before any file is read."""
    from actdict.analyze.show import main

    with pytest.raises(SystemExit) as e:
        main(["runs/none/dicts/a", *argv])
    assert e.value.code == 2 and said in capsys.readouterr().err


def test_class_lines_list_the_features_that_set_a_class_apart(monkeypatch, capsys):
    """--class LABEL: the features whose `classes` name it, largest d first (None: infinite, first), with the
    share of the class's rows where each is active from its by_class (blank where the class is not among
    them), a number label matched as text; an unknown class names the known ones; no labels: says how."""
    from actdict.analyze import show
    from actdict.analyze.show import class_lines, main

    def feat(i, classes, by_class=()):
        return {"i": i, "fires": 10 * (i + 1), "top": [], "classes": classes, "by_class": list(by_class)}

    data = {"tokens": {}, "features": [feat(0, [["a", 0.5], [5, 2.0]], [[5, 40, 30, 1.0]]),
                                       feat(1, [[5, None]]), feat(2, [[5, 1.25]], [["a", 9, 9, 1.0]]),
                                       {"i": 3, "fires": 0, "top": []}]}
    labels = {0: (["x", "y"], []), 2: (["z"], [])}
    rows = [r.split() for r in class_lines(data, labels, "5", 5)[1:]]
    assert rows == [["#1", "inf", "20"], ["#0", "2", "75%", "10", "x,", "y"], ["#2", "1.25", "30", "z"]]
    assert class_lines(data, labels, "b", 5) == ["no feature sets apart class 'b'; classes: 5, a"]
    assert class_lines({"features": [{"i": 0}]}, {}, "b", 5)[0].startswith("no class features in this")
    monkeypatch.setattr(show, "read_features", lambda d: (data | {"name": "v", "n_rows": 50}, labels))
    assert main(["runs/r/dicts/v", "--class", "a"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [r.split()[:2] for r in out[2:]] == [["#0", "0.5"]]
    rows = [r.split() for r in class_lines(data, labels, "5", 5, {1: (1.0, 0.0), 0: (0.75, 0.125)})[1:]]
    assert [r[:6] for r in rows[:2]] == [["#1", "inf", "100%", "/", "0%", "20"],
                                         ["#0", "2", "75%", "/", "12%", "10"]]


def test_the_class_shares_come_from_the_same_analysis_summary(tmp_path):
    """summary_shares: each listed feature's share of the class's rows and of the others' from summary.json,
    only when it is the analysis that wrote the features file (run_id); else None (the by_class share)."""
    from actdict.analyze.show import summary_shares

    entry = {"label": 5, "n": 40, "features": [{"feature": 3, "d": 1.0, "fire_in": 0.5, "fire_out": 0.25}]}
    (tmp_path / "summary.json").write_text(json.dumps({"run_id": "r1", "models": {"v": {"class_features": [
        entry, {"label": "a", "n": 2, "features": []}]}}}))
    d = tmp_path / "dicts" / "v"
    assert summary_shares(d, {"name": "v", "run_id": "r1"}, "5") == {3: (0.5, 0.25)}
    assert summary_shares(d, {"name": "v", "run_id": "r2"}, "5") is None  # another analysis
    assert summary_shares(d, {"name": "w", "run_id": "r1"}, "5") is None
    assert summary_shares(tmp_path / "x" / "dicts" / "v", {"name": "v", "run_id": "r1"}, "5") is None
    for damaged in ('{"run_id": "r1", "mod', '[1]', '{"run_id": "r1", "models": []}', '\udcff',
                    '{"run_id": "r1", "models": {"v": {"class_features": [{"label": 5, "features": [3]}]}}}'):
        (tmp_path / "summary.json").write_bytes(damaged.encode("utf-8", "surrogateescape"))
        assert summary_shares(d, {"name": "v", "run_id": "r1"}, "5") is None  # the by_class share, as before


def test_a_tokens_leading_spaces_all_stay_outside_the_marks_as_in_the_report():
    """A token of several leading spaces (code's '   if') had one space moved before «», the others kept
    inside ('x «  if»'), where the report and the feature page leave all of them outside the highlight."""
    from actdict.analyze.report_sections import _snippet

    data = {"tokens": {"1": "x", "2": "   if", "3": "  "}, "wordpiece": False}
    assert context(data, [1.0, 9, 0, 4, [1, 2], 1]) == "x   «if»  (doc 0, pos 4)"
    assert '<span class="dim">x   </span><span class="hl">if</span>' in _snippet(
        {"act": 1.0, "doc": 0, "pos": 4, "token": "   if", "before": ["x"], "after": []})
    assert context(data, [1.0, 9, 0, 4, [1, 3], 1]) == "x«\u2423\u2423»  (doc 0, pos 4)"  # only spaces: kept
