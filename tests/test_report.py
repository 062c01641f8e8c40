"""The HTML report renders the summary's numbers and names, escapes corpus strings, and is self-contained."""

import html
import math
import re
from urllib.parse import unquote, urlsplit

import pytest
from plotly.colors import qualitative

from actdict.analyze.report import render, write_report
from actdict.analyze.report_features import _stats as page_stats
from actdict.analyze.report_features import shown

EVIL = "<script>alert(1)</script>"


def _summary():
    hit = {"act": 3.25, "row": 7, "doc": 1, "pos": 2, "token": EVIL,
           "before": ["a", " <b>"], "after": ["&c", "\n"]}
    return {
        "version": 1,
        "run_dir": "runs/test",
        "store": "runs/test/store",
        "hook": "blocks.0.hook_resid_post",
        "n_test_rows": 1234,
        "models": {
            "sae_alpha": {
                "variant": "sae_l1", "k": 64, "re_sample": 12.3456, "re_det": 11.0, "ad": 7.5,
                "l0": 7.5, "ev": 0.9321, "dead": 3,
                "ad_hist": {"values": [6, 7, 8, 9], "counts": [1, 2, 3, 4]},
                "density_hist": {"edges": [-3.0, -2.0, -1.0], "counts": [10, 51], "dead": 3},
                "features": [{"index": 42, "density": 0.125, "top": [hit]}],
            },
            "vaease_beta": {
                "variant": "vaease", "k": 64, "re_sample": 9.87, "re_det": 8.76, "ad": 22.5,
                "l0": 63.98, "ev": 0.5, "dead": 0, "ad_hist": {"values": [22], "counts": [5]},
                "density_hist": {"edges": [], "counts": [], "dead": 0}, "features": [],
            },
        },
    }


def test_corpus_strings_escaped(tmp_path):
    page = render(_summary())
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert EVIL not in page and "alert(1)</script>" not in page
    assert " &lt;b&gt;" in page and "&amp;c\u21b5" in page and " <b>" not in page  # newline shown as a mark
    assert '<span class="hl">&lt;script&gt;' in page  # the token itself is the highlighted span


def test_wordpiece_contexts_keep_their_spaces():
    """Each context list is joined as a WordPiece one when the dictionary's vocabulary is, even a list with no
    ``##`` continuation (it used to be glued: "theworldis")."""
    hit = {"act": 1.0, "row": 0, "doc": 0, "pos": 3, "token": "of", "before": ["shatter", "##s", "the"],
           "after": ["the", "world", "is"]}
    s = _summary()
    s["models"]["sae_alpha"]["features"] = [{"index": 1, "density": 0.5, "top": [hit]}]
    for flag in (True, None):  # from summary.json, or guessed from the hits
        if flag is not None:
            s["models"]["sae_alpha"]["wordpiece"] = flag
        page = render(s)
        assert ('<span class="dim"> shatters the </span><span class="hl">of</span>'
                '<span class="dim"> the world is</span>') in page
    s["models"]["sae_alpha"]["wordpiece"] = False  # a byte-level BPE vocabulary: strings used as they are
    assert '<span class="dim">shatter##sthe</span><span class="hl">of</span>' in render(s)


def test_the_highlight_leaves_the_token_s_leading_space_outside():
    """The highlighted span holds the token's text, not the space before it (a WordPiece word or a BPE
    " word"): a highlight box starting with a blank reads as an offset from the word and, wrapped, left a
    yellow blank at a line's end; a token that is only a space keeps it, shown as ␣."""
    s = _summary()
    hit = {"act": 1.0, "row": 0, "doc": 0, "pos": 1, "token": " of", "before": ["shards"], "after": [" the"]}
    s["models"]["sae_alpha"]["wordpiece"] = False
    s["models"]["sae_alpha"]["features"] = [{"index": 1, "density": 0.5, "top": [hit]}]
    page = render(s)
    assert '<span class="dim">shards </span><span class="hl">of</span><span class="dim"> the</span>' in page
    s["models"]["sae_alpha"]["features"][0]["top"] = [hit | {"token": " "}]
    assert '<span class="dim">shards</span><span class="hl">\u2423</span>' in render(s)


def test_names_and_numbers_present(tmp_path):
    page = render(_summary())
    for text in ["sae_alpha", "vaease_beta", "sae_l1", "12.35", "0.9321", "22.5", "8.76", "feature 42",
                 "0.125", "3.25", "1234", "blocks.0.hook_resid_post", "<td>63.98</td>"]:
        assert text in page, text
    # 4 significant digits, but 2 decimals from 100 up: an L0 of 383.98 of 384 latents is not "384"
    assert [shown(v) for v in (383.98, 384.0, 0.000123456, 12345.678, float("nan"))] == [
        "383.98", "384", "0.0001235", "12345.68", "nan"]
    stats = page_stats({"re_det": 27.0812, "ad": 21.78, "l0": 383.98, "ev": 0.82064, "dead": 23})
    assert stats == "RE 27.08, AD 21.78, L0 383.98, EV 0.8206, dead 23"
    assert "L0 counts exact nonzero codes, which a VAE's rarely are: a VAE's sparsity is its AD." in page
    # the contexts' numbers and highlight are explained, as on the feature pages
    assert "(density: the fraction of rows), each with its top rows: the feature's code on the row" in page


def test_the_title_names_the_run_and_hook():
    """The overview's tab title names its run folder and hook (one report per layer: six tabs apart)."""
    assert "<title>runs/test (blocks.0.hook_resid_post): actdict report</title>" in render(_summary())
    assert "<title>runs/x: actdict report</title>" in render({"run_dir": "runs/x", "models": {}})


def test_the_same_summary_renders_the_same_bytes():
    """A rerun's report differs from the first only where its summary does (plotly named every figure's
    div with a random uuid, so two renders of one summary differed)."""
    page = render(_summary())
    assert page == render(_summary()) and page.count('<div id="figure-') == 4


def test_overview_columns_in_the_order_analyze_prints_them():
    """The report's table has RE det. before RE of one sample, then AD, L0, EV and dead, as the table analyze
    prints at its end (summary_lines); it had the two REs the other way round."""
    from actdict.analyze.tables import summary_lines

    page = render(_summary())
    heads = re.findall(r'<th title="[^"]*">([^<]*)</th>', page)
    assert heads[2:6] == ["RE (det.)", "RE (1 sample)", "AD", "L0"]
    assert heads.index("L0") < heads.index("EV") < heads.index("dead")
    assert "<tr><td>sae_alpha</td><td>sae_l1</td><td>64</td><td>11</td><td>12.35</td><td>7.5</td>" in page
    printed = summary_lines(_summary() | {"ce": None, "d": 4})[1].split()
    assert printed == ["model", "RE", "det", "RE", "1-sample", "AD", "L0", "EV", "dead"]


def test_self_contained_file(tmp_path):
    path = write_report(_summary(), tmp_path / "report.html")
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "<script src=" not in page and 'src="http' not in page  # plotly.js inline, no network
    from plotly.offline import get_plotlyjs

    calls = page.count("Plotly.newPlot") - get_plotlyjs().count("Plotly.newPlot")  # plotly 5's bundle: 1
    assert calls == 4  # frontier, AD, density and masked-curve figures, one plotly.js bundle
    assert page.count("plotly.js v") == 1  # the bundle's banner: inlined once, not per figure


def test_analyze_main_end_to_end(tmp_path, monkeypatch):
    """run.main on a real store with a ReLU linear dictionary: numbers equal a direct computation."""
    import json

    import numpy as np
    import torch

    from actdict.analyze import run
    from actdict.analyze.config import AnalyzeConfig
    from actdict.config import Common
    from actdict.harvest.store import StoreWriter
    from tests.relu_linear import ReluLinear

    g = np.random.default_rng(1)
    n, d, k = 200, 4, 6
    acts = g.standard_normal((n, d)).astype(np.float32)
    W = g.standard_normal((d, k)).astype(np.float32)
    W[:, 4] = 0.0  # latent 4 never fires: one dead latent
    with StoreWriter(str(tmp_path / "store"), {"hook": "h"}, d, "float32", 64, 32) as w:
        w.append(acts, np.arange(n), np.arange(n) // 10, np.arange(n) % 10)
    (tmp_path / "split.json").write_text(json.dumps({"train_chunks": [0, 1, 2], "test_chunks": [5, 3, 6]}))
    monkeypatch.setattr(run, "load_models", lambda *a: {"relu <b>": ReluLinear(d, k, W)})
    monkeypatch.setattr(run, "resolve_decoder", lambda m: lambda ids: [f"<{i}>" for i in ids])
    np.save(tmp_path / "labels.npy", np.array(["even", "odd"])[np.arange(n) % 2])
    run.main(Common(run_dir=str(tmp_path)), AnalyzeConfig(n_features=2, top_k=3, context=2, batch_size=7,
                                                          device="cpu", labels=str(tmp_path / "labels.npy"),
                                                          mask_curve_rows=5))

    s = json.loads((tmp_path / "summary.json").read_text())
    rows = np.r_[160:192, 96:128, 192:200]  # chunks 5, 3, 6 (the last one short)
    x = acts[rows]
    z = np.maximum(x @ W, 0)
    m = s["models"]["relu <b>"]
    assert s["n_test_rows"] == len(rows) == 72 and s["test_chunks"] == [5, 3, 6]
    err = ((x - z @ W.T) ** 2).sum(1)  # [72] per-row squared error
    assert m["re_det"] == pytest.approx(err.mean(), rel=1e-5)
    assert m["re_sample"] == pytest.approx(err[:7].mean(), rel=1e-5)  # the first batch only
    assert m["ad"] == m["l0"] == pytest.approx((z > 0).sum(1).mean(), rel=1e-5)
    assert m["ad_std"] == pytest.approx((z > 0).sum(1).std(), rel=1e-5)  # population std (ddof 0)
    assert m["ev"] == pytest.approx(1 - err.sum() / ((x - x.mean(0)) ** 2).sum(), rel=1e-4)
    fires = (z > 0).sum(0)
    assert m["dead"] == int((fires == 0).sum()) == 1 and m["dead_frac"] == pytest.approx(1 / k, rel=1e-5)
    assert [f["index"] for f in m["features"]] == list(np.argsort(-fires, kind="stable")[:2])
    top = m["features"][0]["top"][0]
    assert top["row"] == rows[np.argmax(z[:, m["features"][0]["index"]])]
    assert top["token"] == f"<{top['row']}>" and len(top["before"]) == min(2, top["pos"])
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "relu &lt;b&gt;" in page and f"&lt;{top['row']}&gt;" in page
    # version 2 keys
    assert s["version"] == 2 and s["ce"] is None
    x_hat = z @ W.T
    cos = (x * x_hat).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(x_hat, axis=1))
    assert m["cos"] == pytest.approx(cos.mean(), rel=1e-4)
    assert m["dense"] == int((fires / len(rows) > 0.1).sum())
    curve = m["masked_curve"]  # the first mask_curve_rows = 5 rows: keep the m largest codes of each row
    assert curve["rows"] == 5 and curve["kept"][0] == 0 and curve["kept"][-1] == k
    zb, xb = z[:5], x[:5]
    for kept, re_kept in zip(curve["kept"], curve["re"], strict=True):
        thr = -np.sort(-zb, axis=1)[:, kept - 1 : kept] if kept else np.full((5, 1), np.inf)
        zm = np.where(zb >= thr, zb, 0)
        assert re_kept == pytest.approx(((xb - zm @ W.T) ** 2).sum(1).mean(), rel=1e-4)
    assert curve["re"][-1] == pytest.approx(err[:5].mean(), rel=1e-5)
    feats = json.loads((tmp_path / m["features_file"]).read_text())
    assert len(feats["features"]) == k and (tmp_path / "report" / "relu <b>.html").is_file()
    # the overview's link, as a browser resolves it, finds the page
    links = re.findall(r'href="(report/[^"]*)">features', (tmp_path / "report.html").read_text())
    assert [unquote(urlsplit(html.unescape(a)).path) for a in links] == ["report/relu <b>.html"]
    assert [f["fires"] for f in feats["features"]] == fires.tolist()
    # per-class AD: rows of even index are class "even"
    from actdict.analyze.metrics import active_dims

    assert [c["label"] for c in m["ad_class"]] == ["even", "odd"]
    for c in m["ad_class"]:
        sel = (rows % 2 == 0) if c["label"] == "even" else (rows % 2 == 1)
        assert c["n"] == sel.sum() and c["ad"] == pytest.approx((z[sel] > 0).sum(1).mean(), rel=1e-5)
        mean_abs = np.abs(z[sel]).astype(np.float64).mean(0, keepdims=True)  # Sec. 5.1: average |mu_z|
        with np.errstate(divide="ignore"):  # a latent never active in the class: log 0 = -inf
            ad = int(active_dims(torch.as_tensor(np.log(mean_abs)), "high")[0])
        assert c["ad_of_mean"] == ad and ad >= 2  # a mean of log|z| would drop every latent 0 on any row


def test_masked_curve_paper_protocol_vaease(tmp_path, monkeypatch):
    """With every latent kept, the stochastic masked curve is the paper-protocol RE of the same sample;
    with none kept it is the RE of decoding zeros; the deterministic variant ends at the deterministic RE."""
    import json

    import numpy as np
    import torch

    from actdict.analyze import run
    from actdict.analyze.config import AnalyzeConfig
    from actdict.config import Common
    from actdict.harvest.store import StoreWriter
    from actdict.train.protocol import make

    g = np.random.default_rng(3)
    n, d, k = 96, 5, 8
    acts = g.standard_normal((n, d)).astype(np.float32)
    with StoreWriter(str(tmp_path / "store"), {"hook": "h"}, d, "float32", 32, 32) as w:
        w.append(acts, np.arange(n), np.arange(n) // 8, np.arange(n) % 8)
    (tmp_path / "split.json").write_text(json.dumps({"train_chunks": [0], "test_chunks": [1, 2]}))
    model = make("vaease", d, k, seed=0)
    monkeypatch.setattr(run, "load_models", lambda *a: {"v": model})
    monkeypatch.setattr(run, "resolve_decoder", lambda m: lambda ids: [str(i) for i in ids])
    for sample in (True, False):
        run.main(Common(run_dir=str(tmp_path), seed=5),
                 AnalyzeConfig(batch_size=20, mask_curve_rows=64, mask_curve_sample=sample, device="cpu"))
        m = json.loads((tmp_path / "summary.json").read_text())["models"]["v"]
        c = m["masked_curve"]
        x = torch.as_tensor(acts[32:52])  # the first test batch (chunk 1, 20 rows)
        assert c["rows"] == 20 and c["sample"] is sample and c["kept"][-1] == k
        with torch.no_grad():
            det = float(((x - model(x, sample=False).x_hat) ** 2).sum(1).mean())
            zero = float(((x - model.decode(torch.zeros(20, k))) ** 2).sum(1).mean())
        assert c["re"][-1] == pytest.approx(m["re_sample"] if sample else det, rel=1e-5)
        assert c["re"][0] == pytest.approx(zero, rel=1e-5)


def test_masked_curve_axis_labels_zero_kept():
    """kept = 0 sits at 0.5 on the log axis: the tick there reads "0" (plotly's own ticks labelled it "5",
    the minor tick of 0.5), the other ticks are 1, 2, 5, 10, ... and k, and the axis title says so."""
    from actdict.analyze.report_figures import _kept_ticks, figures

    s = _summary()
    s["models"]["sae_alpha"]["masked_curve"] = {"kept": [0, 1, 2, 4, 16, 64], "re": [9.0, 5, 4, 3, 2, 1],
                                                "rows": 8, "sample": True}
    curve = figures(s["models"])[3]  # after the frontier, the AD and density histograms
    assert list(curve.data[0].x) == [0.5, 1, 2, 4, 16, 64] and list(curve.data[0].y) == [9, 5, 4, 3, 2, 1]
    ax = curve.layout.xaxis
    assert ax.type == "log" and list(ax.tickvals) == [0.5, 1, 2, 5, 10, 20, 64]
    assert list(ax.ticktext) == ["0", "1", "2", "5", "10", "20", "64"]
    assert "0 drawn at 0.5" in ax.title.text and "per-row SSE, log scale" in curve.layout.yaxis.title.text
    assert [t for _, t in _kept_ticks(384)] == ["0", "1", "2", "5", "10", "20", "50", "100", "200", "384"]
    assert [t for _, t in _kept_ticks(250)][-2:] == ["100", "250"]  # 200 would overlap 250


def test_masked_curve_re_on_a_log_axis():
    """The masked curve's RE axis is logarithmic, so a diverged dictionary (RE in the thousands) does not
    flatten the others' curves; an RE of 0 or null, which a log axis cannot show, is left out of the line."""
    from actdict.analyze.report_figures import figures

    s = _summary()
    s["models"]["sae_alpha"]["masked_curve"] = {"kept": [0, 1, 2, 8], "re": [5000.0, 3000, 0.0, None],
                                                "rows": 8, "sample": True}
    s["models"]["vaease_beta"]["masked_curve"] = {"kept": [0, 1, 2, 8], "re": [9.0, 4.5, 2.0, 0.5],
                                                  "rows": 8, "sample": True}
    figs = {f.layout.title.text: f for f in figures(s["models"])}
    curve = figs["RE vs latents kept per row (paper Fig. 4)"]
    assert curve.layout.yaxis.type == "log" and "log scale" in curve.layout.yaxis.title.text
    assert list(curve.data[0].y) == [5000, 3000, None, None] and list(curve.data[1].y) == [9, 4.5, 2, 0.5]
    assert figs["Active dimensions per test row"].layout.yaxis.type is None  # histograms: linear axes


def test_masked_curve_re_ticks_are_spread_over_the_log_axis():
    """Plotly's own ticks on the demo's RE (32 to 178, under one decade) were 40, 60, ..., 200, crowded at the
    top of the log axis: the ticks are 1 1.5 2 3 5 7 (or sparser, for a wider span) per decade, with labels;
    one of a diverged dictionary (0.5 to 5,000) a tick a decade, a span of no two such ticks plotly's own."""
    from actdict.analyze.report_figures import _log_ticks, figures

    s = _summary()
    s["models"]["sae_alpha"]["masked_curve"] = {"kept": [0, 1, 64], "re": [177.7, 90.0, 34.9]}
    s["models"]["vaease_beta"]["masked_curve"] = {"kept": [0, 1, 64], "re": [170.7, 95.0, 31.6]}
    ax = figures(s["models"])[3].layout.yaxis
    assert ax.type == "log" and list(ax.tickvals) == [30, 50, 70, 100, 150, 200]
    assert list(ax.ticktext) == ["30", "50", "70", "100", "150", "200"]
    assert _log_ticks([5000.0, 3000, 0.0, None, 9.0, 0.5])["ticktext"] == ["1", "10", "100", "1000", "10000"]
    assert _log_ticks([0.5, 9.0])["tickvals"] == [0.5, 1, 2, 3, 5, 10]  # 1 2 3 5: 1.5 would crowd
    assert _log_ticks([0.0012, 0.05])["ticktext"][:2] == ["0.001", "0.002"]  # not 0.0020000000000000005
    assert _log_ticks([30.0, 35.0]) == _log_ticks([2.0]) == _log_ticks([0.0, None]) == {}


def test_the_frontiers_names_sit_inside_its_plot():
    """The frontier's axes were plotly's own ranges, which put the top marker on the plot's edge and its name
    above it cut by that edge (the demo's "vaease"): both axes are padded around the markers, the y axis by
    more above them, where the names are written."""
    from actdict.analyze.report_figures import _frontier

    (ev,) = _frontier(_summary()["models"])  # AD 7.5 and 22.5, EV 0.9321 and 0.5
    (x0, x1), (y0, y1) = ev.layout.xaxis.range, ev.layout.yaxis.range
    span = math.log10(22.5 / 7.5)
    assert x0 == pytest.approx(math.log10(7.5) - 0.15 * span)
    assert x1 == pytest.approx(math.log10(22.5) + 0.15 * span)
    assert y0 == pytest.approx(0.5 - 0.12 * 0.4321) and y1 == pytest.approx(0.9321 + 0.3 * 0.4321)
    same = {n: m | {"ev": 0.8} for n, m in _summary()["models"].items()}  # one EV: a span of 0.8 / 10
    assert _frontier(same)[0].layout.yaxis.range == pytest.approx((0.8 - 0.12 * 0.08, 0.8 + 0.3 * 0.08))


def test_the_sparsity_frontier_has_a_marker_per_dictionary_grouped_by_variant():
    """One marker per dictionary, a trace per variant; its axes say which way is better (up and to the left,
    the docstring's words, were on no axis: a reader new to AD could take the larger AD for the better)."""
    from actdict.analyze.report_figures import _frontier

    s = _summary()
    s["models"]["sae_gamma"] = s["models"]["sae_alpha"] | {"ad": 30.0, "ev": 0.97, "ce_recovered": 0.8}
    s["models"]["<dead>"] = s["models"]["sae_alpha"] | {"ad": 0.0}  # all dead: no place on a log axis
    (ev,) = _frontier(s["models"])  # CE recovered: one dictionary has it, no figure
    assert ev.layout.xaxis.type == "log" and ev.layout.yaxis.title.text == "explained variance (up: better)"
    assert ev.layout.xaxis.title.text == "AD per test row (log scale; left: sparser)"
    assert [(t.name, list(t.x), list(t.y), list(t.text)) for t in ev.data] == [
        ("sae_l1", [7.5, 30.0], [0.9321, 0.97], ["sae_alpha", "sae_gamma"]),
        ("vaease", [22.5], [0.5], ["vaease_beta"])]
    s["models"]["vaease_beta"]["ce_recovered"] = 0.5
    assert [(t.name, list(t.y)) for t in _frontier(s["models"])[1].data] == [("vaease", [0.5]),
                                                                              ("sae_l1", [0.8])]
    assert _frontier({"one": s["models"]["sae_alpha"]}) == []
    s["models"]["<b>x</b>"] = s["models"]["sae_alpha"] | {"variant": "<i>v</i>"}
    assert "<b>" not in render(s).split("Sparsity vs reconstruction")[1].split("</script>")[0]  # escaped


def test_a_sweeps_figures_keep_their_plot_and_name_markers_on_hover():
    """A sweep of 20 dictionaries: each figure's legend of 20 names sat in rows below the plot, which took all
    but ~50 px of the 390 px figure, in plotly's 10 colours (repeated), and the frontier wrote 20 names over
    its markers, one on another. Beyond 8 entries the legend is a column right of the plot in 24 colours, and
    the frontier's names show on hover; 2 dictionaries keep the rows below and the names on the markers."""
    from actdict.analyze.report_figures import _frontier, figures, for_many

    base = _summary()["models"]["sae_alpha"] | {"masked_curve": {"kept": [0, 1, 64], "re": [9.0, 5.0, 1.0]}}
    models = {f"l1_lam1-{i / 10}_seed-0": base | {"ad": 1.0 + i, "ev": 0.5 + i / 50} for i in range(20)}
    figs = [for_many(f) for f in figures(models)]
    assert [len(f.data) for f in figs] == [1, 20, 20, 20]  # frontier (one variant), AD, density, masked curve
    assert [f.layout.legend.orientation for f in figs] == ["h", "v", "v", "v"]
    assert list(figs[1].layout.colorway) == list(qualitative.Dark24) and len(set(qualitative.Dark24)) == 24
    assert figs[0].data[0].mode == "markers" and len(figs[0].data[0].text) == 20  # the names: on hover
    page = render(_summary() | {"models": models})
    assert page.count('"orientation":"v"') == 3 and '"mode":"markers+text"' not in page
    two = dict(list(models.items())[:2])
    assert [for_many(f).layout.legend.orientation for f in figures(two)] == ["h"] * 4
    assert _frontier(two)[0].data[0].mode == "markers+text"


def test_a_listed_feature_shows_its_nearest_in_at_most_three_others():
    """Each listed feature named its nearest feature in every other dictionary: 19 for a sweep of 20, on each
    of its 24 x 20 listed features (~0.7 MB of report.html). Beyond 3 others it names the 3 with the highest
    cosine and how many more its feature page holds; up to 3 others, all of them in the summary's order."""
    s = _summary()
    cos = {"b": 0.5, "c": 0.9, "d": None, "e": 0.95, "f": 0.2}
    near = {b: {"feature": i, "cos": c} for i, (b, c) in enumerate(cos.items())}
    s["models"]["sae_alpha"]["features"][0]["nearest"] = near
    head = render(s).split('<div class="feature">')[1].split("\n")[0]
    assert head.endswith("(density 0.125; nearest in e: feature 3 (cos 0.95); nearest in c: feature 1 "
                         "(cos 0.9); nearest in b: feature 0 (cos 0.5); 2 more on its feature page)")
    s["models"]["sae_alpha"]["features"][0]["nearest"] = {b: near[b] for b in "fbd"}
    head = render(s).split('<div class="feature">')[1].split("\n")[0]
    assert head.endswith("(density 0.125; nearest in f: feature 4 (cos 0.2); nearest in b: feature 0 "
                         "(cos 0.5); nearest in d: feature 2 (cos &ndash;))")


def test_summary_lines_print_null_numbers_as_na():
    """A number summary.json holds as null (EV of a single test row: its variance is 0; CE recovered when the
    zero ablation costs nothing) is printed as n/a in its column; it used to stop analyze with a TypeError
    after the files were written (e.g. analyze.max_test_rows=1)."""
    from actdict.analyze.tables import summary_lines

    m = {"k": 8, "dead": 3, "re_det": 2.5, "re_sample": None, "ad": 1.0, "l0": 2.0, "ev": None,
         "ce_recovered": None, "kl": 0.25}
    summary = {"n_test_rows": 1, "hook": "h", "d": 4, "ce": {"ce_clean": 1.0}, "models": {"a": m}}
    lines = summary_lines(summary)
    assert lines[2] == f"{'a':<16} {2.5:>9.4g} {'n/a':>11} {1.0:>7.2f} {2.0:>7.2f} {'n/a':>6} {'3/8':>11} " \
                       f"{'n/a':>7} {0.25:>7.4f}"
    assert len(lines[2]) == len(lines[1])  # the columns stay aligned under the header
    assert lines[4].startswith("(EV n/a: the 1 held-out row(s) do not vary")
    for m["ev"], m["re_det"] in ((0.5, 2.5), (None, None)):  # EV known; or n/a as RE is (not finite)
        assert not any(line.startswith("(EV n/a") for line in summary_lines(summary))


def test_the_printed_tables_note_names_every_column():
    """The note under analyze's table explained AD and L0 only: RE det, RE 1-sample, EV and dead were named
    nowhere in the terminal (README alone said what RE det was). It names every column of the table now."""
    from actdict.analyze.tables import summary_lines

    m = {"k": 8, "dead": 3, "re_det": 2.5, "re_sample": 2.75, "ad": 1.0, "l0": 2.0, "ev": 0.5}
    lines = summary_lines({"n_test_rows": 10, "hook": "h", "d": 4, "ce": None, "models": {"a": m}})
    assert lines[1].split() == ["model", "RE", "det", "RE", "1-sample", "AD", "L0", "EV", "dead"]
    note = lines[3]
    assert note.startswith("(RE det: summed squared error per row") and note.endswith("; docs/analyze.md)")
    for column in ("RE det", "RE 1-sample", "AD", "L0", "EV", "dead"):
        assert f"({column}: " in note or f"; {column}: " in note, column


def test_summary_lines_fit_a_sweeps_long_names():
    """A sweep's names (``l1_lam1-0.03_seed-0``, 19 characters) are longer than the 16 the model column had:
    their rows were pushed right of the header, each by its own amount. The column is now as wide as the
    longest name, so every row keeps its numbers under the header."""
    from actdict.analyze.tables import summary_lines

    m = {"k": 8, "dead": 3, "re_det": 2.5, "re_sample": 2.5, "ad": 1.0, "l0": 2.0, "ev": 0.5}
    names = ["l1_lam1-0.03_seed-0", "l1_lam1-10_seed-1", "vaease"]
    summary = {"n_test_rows": 9, "hook": "h", "d": 4, "ce": None, "models": dict.fromkeys(names, m)}
    lines = summary_lines(summary)
    assert [len(line) for line in lines[1:5]] == [len(lines[1])] * 4
    ends = [line.index("2.5") + 3 for line in lines[2:5]]
    assert ends == [lines[1].index("RE det") + 6] * 3  # right-aligned under the header
    assert lines[2].startswith("l1_lam1-0.03_seed-0 ") and lines[4].startswith("vaease" + " " * 14)
    wide = m | {"ev": -123456.789, "ad": 16384.0, "re_det": None}  # a diverged dictionary's numbers
    lines = summary_lines(summary | {"models": {"a": m, "b": wide}})[1:4]
    assert [len(line) for line in lines] == [len(lines[0])] * 3  # every column as wide as its widest cell
    assert {line.index("/8") for line in lines[1:]} == {lines[0].index("dead") + 2}
    assert lines[2].split() == ["b", "n/a", "2.5", "16384.00", "2.00", "-123456.789", "3/8"]


def test_summary_lines_shorten_a_sweeps_shared_directions():
    """The MMCS line listed every ordered pair: 380 for a sweep of 20 dictionaries, one printed line of 16,000
    characters. Up to 3 dictionaries (6 pairs) it still does; beyond, it says how many pairs there are, where
    they all are, and prints the 3 with the highest MMCS."""
    from actdict.analyze.tables import summary_lines

    def summary(n: int) -> dict:
        names = [f"l1_seed-{i}" for i in range(n)]
        sim = {a: {b: {"mmcs": (i * n + j) / 100, "matched": 0.5, "live": 8} for j, b in enumerate(names)
                   if b != a} for i, a in enumerate(names)}
        m = {"k": 8, "dead": 3, "re_det": 2.5, "re_sample": 2.5, "ad": 1.0, "l0": 2.0, "ev": 0.5}
        return {"n_test_rows": 9, "hook": "h", "d": 4, "ce": None,
                "models": {a: m | {"similar": sim[a]} for a in names}}

    head = "analyze: shared decoder directions (MMCS; share of live features within cosine 0.9)"
    every = [f"l1_seed-{a} in l1_seed-{b} {(a * 3 + b) / 100:.3f} (50%)" for a in range(3) for b in range(3)
             if a != b]
    assert summary_lines(summary(3))[-1] == head + ": " + "; ".join(every)
    lines = summary_lines(summary(20))
    assert lines[-1] == (head + " of 380 pairs, all in report.html and summary.json (similar); the highest: "
                         "l1_seed-19 in l1_seed-18 3.980 (50%); l1_seed-19 in l1_seed-17 3.970 (50%); "
                         "l1_seed-19 in l1_seed-16 3.960 (50%)")
    assert len(lines) == 2 + 20 + 2


def test_feature_page_brings_the_installed_plotly(tmp_path):
    """report/plotly.min.js is the installed plotly's: one left by another plotly version is replaced."""
    from plotly.offline import get_plotlyjs

    from actdict.analyze.report_features import write_feature_page

    data = {"version": 1, "name": "v", "k": 1, "n_rows": 1, "window": 0, "hist_edges": [0.0, 1.0],
            "tokens": {}, "wordpiece": False, "features": []}
    js = tmp_path / "report" / "plotly.min.js"
    js.parent.mkdir()
    js.write_text("/* plotly.js v1.0.0, stale */")
    page = write_feature_page(data, "v", {"variant": "sae_l1"}, {"hook": "h"}, tmp_path / "report" / "v.html")
    assert js.read_bytes() == get_plotlyjs().encode() and page.read_text().count('src="plotly.min.js"') == 1


def test_names_and_class_labels_escaped_and_page_links_quoted():
    """The run folder, a dictionary's name and the class labels are the user's: escaped in the heading, the
    overview's row and the figures (plotly draws tags in labels); the feature page's link percent-encodes
    the name; the run id is shown."""
    from actdict.analyze.report import _page_link

    s = _summary()
    s["run_dir"], s["run_id"] = "runs/<u>x", "20261205-000000-abcdef"
    s["models"] = {"x<b>y": s["models"]["sae_alpha"] | {
        "ad_class": [{"label": "<i>c", "n": 3, "ad": 2.0, "ad_of_mean": 2}]}}
    page = render(s, {"x<b>y": "report/x%3Cb%3Ey.html"})
    assert "x<b>y" not in page and "<tr><td>x&lt;b&gt;y</td>" in page
    assert "<i>c" not in page and '"&lt;i&gt;c"' in page
    assert "<h1>actdict report: runs/&lt;u&gt;x</h1>" in page and "run_id: 20261205-000000-abcdef" in page
    assert '<a href="report/x%3Cb%3Ey.html#f=42">feature 42</a>' in page  # the feature, on its page
    assert "x&lt;b&gt;y (dead: 3)" in page  # the density figure's legend
    s["models"]["x<b>y"]["features"] = [{"index": 1, "density": 0.5, "top": [
        {"act": 1.0, "row": 0, "doc": 2, "pos": 1, "token_id": -1, "text": "<u>para</u>"}]}]
    assert "<span>&lt;u&gt;para&lt;/u&gt;</span><span class=\"where\">doc 2 pos 1</span>" in render(s)
    assert _page_link("a b#?%\u00e9", "r 1") == "report/a%20b%23%3F%25%C3%A9.html?run=r%201"


def test_a_column_any_model_has_is_shown_with_a_dash_for_the_others():
    """The overview shows each column that some dictionary has (an older summary's models lack the v2 keys):
    a dash for a dictionary without it."""
    s = _summary()
    s["models"]["vaease_beta"]["cos"] = 0.75
    page = render(s)
    assert re.findall(r'<th title="[^"]*">([^<]*)</th>', page).count("cos") == 1
    assert "<td>0.5</td><td>0.75</td><td>0</td>" in page
    assert "<td>0.9321</td><td>&ndash;</td><td>3</td>" in page


def test_the_dense_column_says_its_threshold():
    """The dense column's tooltip gives the fraction of rows it counts from (summary's dense_threshold): "the
    dense threshold" alone left a reader to guess whether 381 dense latents meant 1% or 50% of the rows."""
    s = _summary()
    for m in s["models"].values():
        m |= {"dense": 2, "dense_threshold": 0.1}
    page = render(s)
    assert '<th title="latents active on more than 0.1 of the test rows (dense_threshold)">dense</th>' in page
    del s["models"]["sae_alpha"]["dense_threshold"], s["models"]["vaease_beta"]["dense_threshold"]
    assert '<th title="latents active on more than the dense threshold of the rows">dense</th>' in render(s)


def test_a_model_without_its_features_file_gets_no_page(tmp_path):
    """write_report links a feature page for the models whose features file is there only."""
    s = _summary()
    s["models"]["sae_alpha"]["features_file"] = "features/sae_alpha.json"  # never written
    page = write_report(s, tmp_path).read_text()
    assert "features &rarr;" not in page and not (tmp_path / "report").exists()


def test_the_ce_line_names_each_number():
    s = _summary() | {"ce": {"ce_clean": 3.5, "ce_zero": 7.25, "n_tokens": 90, "windows": 6, "ctx": 16}}
    assert ("on 6 held-out windows of 16 tokens (90 predictions): clean CE 3.5, zero-ablation CE 7.25."
            in render(s))


def test_feature_page_json_closes_no_element_and_its_stats_keep_zeros():
    """The page's embedded JSON writes <, > and & as unicode escapes (no corpus string can close its script
    element) and reads back unchanged; the header's stats keep a count of 0 (no dead latent)."""
    import json

    from actdict.analyze.report_features import embed_json

    obj = {"tokens": {"1": "</script><script>alert(1)</script>", "2": "a & b > c"}}
    s = embed_json(obj)
    assert not {"<", ">", "&"} & set(s) and json.loads(s) == obj
    assert page_stats({"re_det": 2.5, "dead": 0, "dense": 0}) == "RE 2.5, dead 0, dense 0"


def test_feature_page_index_and_parts():
    """page_index: each top hit's (row, token id), a store with token id 0 has tokens, label texts cut to
    label_chars (an ellipsis marks the cut); page_parts: PART features a part, none lost; the page's title
    escapes the name."""
    from actdict.analyze.report_features import PART, page_index, page_parts, render_feature_page

    def feat(i):
        return {"i": i, "fires": 1, "density": 0.5, "max": 1.0, "min": 0.0, "bottom": [], "quantiles": [],
                "top": [[1.0, i, 0, 1, [5, 0], 1]], "hist": {"pos": [], "neg": []}}

    n = 2 * PART + 1
    data = {"k": n, "tokens": {"0": "a"}, "features": [feat(i) for i in range(n)],
            "texts": {"3": "x" * 40}}
    idx = page_index(data, label_chars=8)
    assert idx["has_tokens"] and idx["features"][3]["tops"] == [[3, 0]]
    assert idx["label_texts"] == {"3": "x" * 8 + "\u2026"}  # cut: an ellipsis says so
    assert page_index(data, label_chars=40)["label_texts"] == {"3": "x" * 40}  # whole: none
    parts = page_parts(data)
    assert [[f["i"] for f in p["features"]] for p in parts] == [list(range(PART)), list(range(PART, n - 1)),
                                                                  [n - 1]]
    page = render_feature_page(data, "n<i>", {"variant": "sae_l1"}, {"hook": "h<q>", "run_dir": "runs/l2"},
                               "n.parts")
    assert "<title>n&lt;i&gt;, runs/l2 (h&lt;q&gt;): features</title>" in page and "hook h&lt;q&gt;" in page
    assert f'type="number" min="0" max="{n - 1}"' in page  # the last feature's index


def test_feature_page_parts_carry_the_texts_of_every_hit():
    """On an embeddings store each part carries the texts of all its features' hits (top, bottom and quantile
    samples, which the page shows), and only those."""
    from actdict.analyze.report_features import page_parts

    f = {"i": 0, "fires": 3, "density": 0.5, "max": 1.0, "min": -1.0, "hist": {"pos": [], "neg": []},
         "top": [[1.0, 10, 10, 0, [-1], 0]], "bottom": [[-1.0, 11, 11, 0, [-1], 0]],
         "quantiles": [{"lo": 0.0, "hi": 1.0, "hits": [[0.5, 12, 12, 0, [-1], 0]]}]}
    data = {"k": 1, "tokens": {}, "features": [f], "texts": {str(r): f"text {r}" for r in (10, 11, 12, 13)}}
    assert page_parts(data)[0]["texts"] == {"10": "text 10", "11": "text 11", "12": "text 12"}


def test_a_feature_page_written_again_drops_the_parts_it_no_longer_has(tmp_path):
    """Rewriting a page (a smaller dictionary analysed under the same name) leaves only its own parts: a
    stale part of the earlier run would otherwise still be served for the features past the new end."""
    from actdict.analyze.report_features import PART, write_feature_page

    def data(n):
        feats = [{"i": i, "fires": 1, "density": 0.5, "max": 1.0, "min": 0.0, "bottom": [], "quantiles": [],
                  "top": [[1.0, i, 0, 1, [5, 0], 1]], "hist": {"pos": [], "neg": []}} for i in range(n)]
        return {"k": n, "tokens": {"5": "a", "0": "b"}, "features": feats}

    page = tmp_path / "report" / "d.html"
    write_feature_page(data(2 * PART + 1), "d", {"variant": "sae_l1"}, {"run_id": "r1"}, page)
    assert sorted(p.name for p in (tmp_path / "report" / "d.parts").iterdir()) == ["00000.js", "00001.js",
                                                                                   "00002.js"]
    write_feature_page(data(PART), "d", {"variant": "sae_l1"}, {"run_id": "r2"}, page)
    parts = sorted((tmp_path / "report" / "d.parts").iterdir())
    assert [p.name for p in parts] == ["00000.js"] and parts[0].read_text().endswith(',"r2");\n')


def test_a_sweeps_histograms_are_step_lines_and_its_tables_keep_their_names_in_view():
    """Beyond MANY dictionaries the AD and density histograms are outlines (overlaid translucent bars of 20
    dictionaries read as one blur); the tables' first column (the names) sticks when they scroll sideways."""
    from actdict.analyze.report_figures import MANY, figures

    s = _summary()
    figs = {f.layout.title.text: f for f in figures(s["models"])}
    assert {t.type for t in figs["Active dimensions per test row"].data} == {"bar"}  # two: bars, as before
    many = {f"d{i}": s["models"]["sae_alpha"] | {"ev": 0.5 + i / 100} for i in range(MANY + 1)}
    figs = {f.layout.title.text: f for f in figures(many)}
    for title in ("Active dimensions per test row", "Feature density"):
        traces = figs[title].data
        assert len(traces) == MANY + 1 and {(t.type, t.mode, t.line.shape) for t in traces} == {
            ("scatter", "lines", "hvh")}
        assert list(traces[0].y) == [1, 2, 3, 4] or list(traces[0].y) == [10, 51]
    assert "position: sticky; left: 0" in render(s)


def test_each_dictionarys_per_class_ad_bars_and_markers_are_in_its_colour_of_the_other_figures():
    """The per-class AD figure has a bar and a marker trace per dictionary: plotly's colorway gave them the
    next colours, so on the demo sae_l1's "of mean" markers were red, vaease's colour in every other figure,
    and vaease's bars green. Each dictionary's bars and markers are now in its colour of the AD histogram
    (by its place: plotly's 10, or 24 beyond MANY), grouped in the legend."""
    from actdict.analyze.report_figures import figures, for_many

    s = _summary()
    for m in s["models"].values():
        m["ad_class"] = [{"label": "a", "n": 3, "ad": 2.0, "ad_of_mean": 4.0}]
    figs = [for_many(f) for f in figures(s["models"])]
    cls = next(f for f in figs if f.layout.title.text.startswith("AD per class"))
    assert [(t.type, t.name, t.marker.color, t.legendgroup) for t in cls.data] == [
        ("bar", "sae_alpha", qualitative.Plotly[0], "sae_alpha"),
        ("scatter", "sae_alpha (of mean)", qualitative.Plotly[0], "sae_alpha"),
        ("bar", "vaease_beta", qualitative.Plotly[1], "vaease_beta"),
        ("scatter", "vaease_beta (of mean)", qualitative.Plotly[1], "vaease_beta")]
    assert cls.data[1].marker.symbol == "diamond"  # told from the bars by shape, not colour
    assert list(cls.layout.colorway or qualitative.Plotly) == list(qualitative.Plotly)  # as the AD histogram
    many = {f"d{i}": s["models"]["sae_alpha"] for i in range(10)}
    cls = [for_many(f) for f in figures(many)][-1]
    assert [t.marker.color for t in cls.data[::2]] == [t.marker.color for t in cls.data[1::2]] == list(
        qualitative.Dark24[:10])


def test_a_line_under_the_heading_links_to_each_section_and_feature_page():
    """Which features a class turns on (the class table) sat below every figure, found only by scrolling past
    them, and a feature page only from the overview table's last column. A line under the heading links to
    each section the page has, each heading's anchor, and to every dictionary's feature page."""
    s = _summary()
    page = render(s, {"sae_alpha": "report/sae_alpha.html?run=r"})
    assert ('<p class="note">Sections: <a href="#metrics">Overview</a> &middot; <a href="#distributions">'
            'Distributions</a> &middot; <a href="#frequent">Most frequent features</a>; every feature of '
            '<a href="report/sae_alpha.html?run=r">sae_alpha</a></p>') in page  # no class table, no training
    for ref in ("metrics", "distributions", "frequent"):
        assert page.count(f'<h2 id="{ref}">') == 1
    s["models"]["sae_alpha"]["class_features"] = [{"label": "a", "n": 3, "features": [
        {"feature": 1, "d": 0.5, "fire_in": 0.5, "fire_out": 0.1, "tokens": ["x"]}]}]
    s["models"]["sae_alpha"]["training_log"] = {"step": [1, 2], "loss": [2.0, 1.0]}
    page = render(s)
    assert ('<a href="#distributions">Distributions</a> &middot; <a href="#classes">Features of each class'
            '</a> &middot; <a href="#training">Training</a> &middot; <a href="#frequent">') in page
    assert '<h2 id="classes">Features of each class</h2>' in page and '<h2 id="training">Training' in page
    assert "every feature of" not in page  # no pages: no links to them


def test_the_per_class_ad_figure_says_what_its_markers_are():
    """The per-class AD figure's markers (Table 2's AD of the class mean) sat far above its bars (the demo's
    SAE-l1: ~250-350 against ~55 per row) with no word on why: a note under the Distributions heading says
    what each is and that the markers grow with the class's size; none without labels."""
    s = _summary()
    assert "AD per class: the bars" not in render(s)
    s["models"]["sae_alpha"]["ad_class"] = [{"label": "a", "n": 3, "ad": 2.0, "ad_of_mean": 4.0}]
    page = render(s)
    note = page[page.index('<h2 id="distributions">'):page.index('<div class="figs">')]
    assert ("AD per class: the bars are the mean AD of the class's rows; the markers the paper's Table-2 AD "
            "of the class's mean code") in html.unescape(note)
    assert "it grows with the class's size, so compare it between classes of like sizes" in note


def test_the_header_line_names_the_row_count_in_words_with_its_thousands():
    """The header line printed summary.json's key as it is, 'n_test_rows: 20480', where analyze's own line
    says '20,480 held-out rows': it reads 'held-out rows evaluated: 20,480' now, the other keys as before."""
    s = _summary() | {"d": 384, "n_test_rows": 20480, "run_id": "r1"}
    assert ("<p>store: runs/test/store, hook: blocks.0.hook_resid_post, d: 384, held-out rows evaluated: "
            "20,480, run_id: r1</p>") in render(s)
    assert "<p>hook: h, held-out rows evaluated: &ndash;</p>" in render({"hook": "h", "n_test_rows": None})
