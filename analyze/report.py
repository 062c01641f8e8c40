"""Render the analysis (summary.json, schema in ``actdict.analyze.run``) as HTML files that open from disk.

Nothing is computed here: the pages only show what ``summary`` and the features files hold.
* ``report.html``: overview table, shared directions, AD / density histograms, the masked-dimensions RE
  curve, per-class AD, the training curves, and the most frequent features' top contexts (with each one's
  nearest feature in the other dictionaries). plotly.js is inlined once: one self-contained file.
* ``report/<name>.html`` (one per dictionary, see ``report_features``): a browser over every feature.

Every string that comes from the corpus or the user (tokens, model names, paths) goes through
``html.escape`` here, and through ``textContent`` (never ``innerHTML``) in the feature pages' script.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any
from urllib.parse import quote

import plotly.graph_objects as go
from plotly.colors import qualitative

from actdict.analyze.outputs import read_output
from actdict.analyze.report_features import run_label, shown, write_feature_page
from actdict.analyze.splice import ce_caveat
from actdict.analyze.toptokens import alone, context_text, display_strings, is_wordpiece, visible
from actdict.files import write_atomic

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
table.overview { border-collapse: collapse; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; }
.overview td, .overview th { border: 1px solid #ccc; padding: 4px 10px; text-align: right;
  white-space: nowrap; }  /* a sweep's names and 'mmcs (share)' cells stay on one line: the table scrolls */
.overview td:first-child, .overview th:first-child { text-align: left; } .overview th { background: #f4f4f4; }
.overview td:first-child { position: sticky; left: 0; background: #fff; }  /* the names stay in view when */
.overview th:first-child { position: sticky; left: 0; }  /* a wide table (a sweep's n x n) scrolls sideways */
.figs { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 8px; }
.figs > div { min-width: 0; }
.feature { margin: 1em 0; } .ctx { font-family: monospace; white-space: pre-wrap; margin: 2px 0;
  overflow-wrap: anywhere; }  /* a long unbroken string (a URL, base64) breaks instead of widening the page */
.ctx { padding-left: 6em; text-indent: -6em; }  /* a wrapped context continues right of the codes */
.act { display: inline-block; min-width: 6em; color: #666; text-indent: 0; }
.ctx span { unicode-bidi: isolate; }  /* a corpus string's bidi control reorders only itself */
.hl { background: #ffd54f; font-weight: bold; } .dim { color: #555; } .note { color: #666; font-size: 90%; }
.txt { font-family: system-ui, sans-serif; } .where { color: #888; font-size: 85%; margin-left: 1em; }
.overview td.txt { text-align: left; white-space: normal; }  /* a class's features: one a line */
.warn { color: #a00; } .tok { font-family: monospace; background: #f0f0f0; white-space: pre; }
"""
_COLUMNS = [  # (summary key, header, tooltip); in the order of the table analyze prints (run.summary_lines)
    ("variant", "variant", ""), ("k", "k", "latents"),
    ("re_det", "RE (det.)", "deterministic path, every evaluated test row (all, or analyze.max_test_rows): "
     "mean per-row sum of squared error"),
    ("re_sample", "RE (1 sample)", "paper protocol: one stochastic forward of the first test batch"),
    ("ad", "AD", "mean active dimensions per row (Otsu split of the activity)"),
    ("l0", "L0", "mean non-zero codes per row"), ("ev", "EV", "explained variance = 1 - FVU"),
    ("cos", "cos", "mean cosine similarity of x and x_hat"),
    ("dead", "dead", "latents never active on the test rows"),
    ("dense", "dense", "latents active on more than the dense threshold of the rows"),
    ("null_decoder", "null dec.", "latents whose decoder column is at most 1e-6 times the largest: whether "
     "active or not, they change no reconstruction"),
    ("ce_recovered", "CE rec.", "(CE_zero - CE_spliced) / (CE_zero - CE_clean)"),
    ("kl", "KL", "mean KL(clean || spliced) per token, nats"),
]


def esc(x: Any, quote: bool = True) -> str:
    """``x`` as HTML text; ``quote=False`` for plotly's labels, which escape no quotes of their own."""
    return html.escape(str(x), quote=quote)


def _num(v: Any) -> str:
    if v is None:
        return "&ndash;"
    if isinstance(v, float):
        return shown(v)
    return esc(v)


def _page_name(name: str) -> str:
    """The feature page's file, relative to the overview: the dictionary's name as it is (its link quotes
    it: ``_page_link``)."""
    return f"report/{name}.html"


def _page_link(name: str, run: str | None) -> str:
    """The overview's link to the feature page: the file name percent-encoded (a space, '#', '?', '%' or
    non-ASCII in a dictionary's name would otherwise break it), with the run id it checks."""
    return "report/" + quote(name + ".html", safe="") + (f"?run={quote(run, safe='')}" if run else "")


def _overview(models: dict[str, dict], pages: dict[str, str]) -> str:
    cols = [c for c in _COLUMNS if any(c[0] in m for m in models.values())]
    dense = {m.get("dense_threshold") for m in models.values()} - {None}
    if len(dense) == 1:  # the threshold the dense column counts with (one analysis: the same for all)
        cols = [(k, h, f"latents active on more than {_num(dense.pop())} of the test rows (dense_threshold)")
                if k == "dense" else (k, h, t) for k, h, t in cols]
    head = "".join(f'<th title="{esc(t)}">{esc(h)}</th>' for _, h, t in cols)
    rows = []
    for name, m in models.items():
        link = f'<a href="{esc(pages[name])}">features &rarr;</a>' if name in pages else ""
        cells = "".join(f"<td>{_num(m.get(key))}</td>" for key, _, _ in cols)
        rows.append(f"<tr><td>{esc(name)}</td>{cells}<td>{link}</td></tr>")
    return ('<div class="scroll">'  # a narrow window scrolls the table, not the page
            f'<table class="overview" id="overview"><tr><th>model</th>{head}<th></th></tr>{"".join(rows)}'
            "</table></div>")


_LAYOUT = {"barmode": "overlay", "height": 390, "margin": {"t": 60, "l": 60, "r": 20, "b": 50},
           "legend": {"orientation": "h", "y": -0.2}}


MANY = 8
"""A figure with more legend entries than this (a sweep's dictionaries) lists them in a column right of the
plot, which scrolls when longer than the plot, in 24 colours, not in rows below it (for 20 dictionaries 10
rows of 10 colours left ~50 px of a 390 px figure, and colours repeated); the frontier names its markers on
hover."""


def _many(fig: go.Figure) -> go.Figure:
    """``fig`` with its legend to the right and 24 colours when it has more than ``MANY`` entries."""
    if sum(t.showlegend is not False for t in fig.data) > MANY:
        fig.update_layout(legend={"orientation": "v", "x": 1.02, "y": 1, "yanchor": "top",
                                  "font": {"size": 10}}, colorway=qualitative.Dark24, margin_r=10)
    return fig


def _similar(models: dict[str, dict]) -> str:
    """The table of shared decoder directions (``similar``): row A, column B, A's live features' mean max
    cosine in B and the fraction matched at 0.9; '' for fewer than two dictionaries."""
    names = [n for n, m in models.items() if m.get("similar")]
    if len(names) < 2:
        return ""

    def cell(a: str, b: str) -> str:
        p = models[a]["similar"].get(b)
        if not p or p.get("matched") is None:
            return "<td>&ndash;</td>"
        return f'<td>{_num(p.get("mmcs"))} ({p["matched"]:.0%})</td>'

    head = "".join(f"<th>{esc(b)}</th>" for b in names)
    rows = "".join(f"<tr><td>{esc(a)}</td>{''.join(cell(a, b) for b in names)}</tr>" for a in names)
    return ("<h3>Shared directions</h3>"
            '<p class="note">Row A, column B: the mean over A\'s live features (active on a test row, with a '
            "decoder column) of the largest cosine between its decoder direction and those of B's live "
            "features (MMCS), and in brackets the share of them with a cosine of 0.9 or more.</p>"
            f'<div class="scroll"><table class="overview"><tr><th>A \\ B</th>{head}</tr>{rows}</table></div>')


def _frontier(models: dict[str, dict]) -> list[go.Figure]:
    """Sparsity vs reconstruction, one marker per dictionary (one trace per variant, each marker labelled
    with its dictionary's name): AD (log axis) against explained variance, and against CE recovered when the
    analysis measured it: a sweep's frontier (up and to the left is better). None for one dictionary."""
    figs = []
    for key, label in (("ev", "explained variance"), ("ce_recovered", "CE recovered")):
        have = {n: m for n, m in models.items() if (m.get("ad") or 0) > 0 and m.get(key) is not None}
        if len(have) < 2:
            continue
        xs, ys = [math.log10(m["ad"]) for m in have.values()], [m[key] for m in have.values()]
        fig = go.Figure(layout=_LAYOUT | {"title": _title(f"Sparsity vs reconstruction (AD, {label})"),
                                          "xaxis_title": "AD per test row (log scale; left: sparser)",
                                          "yaxis_title": f"{label} (up: better)",  # room for the names
                                          "xaxis": {"type": "log", "range": _padded(xs, 0.15, 0.15)},
                                          "yaxis": {"range": _padded(ys, 0.12, 0.3)}})  # above the top one
        mode = "markers+text" if len(have) <= MANY else "markers"  # a sweep's names would overlap: on hover
        for variant in dict.fromkeys(m.get("variant", "") for m in have.values()):
            names = [n for n, m in have.items() if m.get("variant", "") == variant]
            fig.add_scatter(x=[have[n]["ad"] for n in names], y=[have[n][key] for n in names],
                            mode=mode, text=[esc(n) for n in names], textposition="top center",
                            name=esc(variant))
        figs.append(fig)
    return figs


def _padded(values: list[float], below: float, above: float) -> list[float]:
    """An axis range over ``values`` widened by ``below`` and ``above`` times their span (of 0: of 0.1, or
    of a tenth of the value): plotly's own range put the frontier's top marker on the plot's edge, its name
    above it cut by the edge (the demo's "vaease")."""
    lo, hi = min(values), max(values)
    span = hi - lo or abs(hi) / 10 or 0.1
    return [lo - below * span, hi + above * span]


def _log_ticks(values: list) -> dict:
    """Ticks (``tickvals``, ``ticktext``) for a log axis over the positive ``values``: the most of 1 1.5 2 3 5
    7, 1 2 3 5, 1 2 5, 1 3 or 1 per decade whose closest two are an eighth of the values' span (in decades)
    apart or more, over the values and an eighth of their span beyond; {} (plotly's own) for none of them,
    or fewer than 2 ticks among the values. Plotly's own on the masked curve's RE (32 to 178 on the demo)
    were 40, 60, ..., 200, crowded at the top."""
    pos = [v for v in values if v is not None and v > 0]
    if not pos or max(pos) <= min(pos):
        return {}
    lo, hi = math.log10(min(pos)), math.log10(max(pos))
    for marks in ((1, 1.5, 2, 3, 5, 7), (1, 2, 3, 5), (1, 2, 5), (1, 3), (1,)):
        if min(math.log10(b / a) for a, b in zip(marks, [*marks[1:], 10], strict=True)) < (hi - lo) / 8:
            continue  # too close together for this span
        decades = range(math.floor(lo) - 1, math.ceil(hi) + 1)
        ticks = [float(f"{m * 10.0 ** e:.6g}") for e in decades for m in marks]  # 0.07, not 0.070000001
        near = (hi - lo) / 8  # ticks just beyond the values: in plotly's margin around them, when it has one
        ticks = [t for t in ticks if lo - near <= math.log10(t) <= hi + near]
        inside = [t for t in ticks if lo <= math.log10(t) <= hi]
        return {"tickvals": ticks, "ticktext": [f"{t:g}" for t in ticks]} if len(inside) > 1 else {}
    return {}


def _hist(fig: go.Figure, x: list, y: list, name: str, many: bool) -> None:
    """One dictionary's histogram in ``fig``: translucent bars, or for more than ``MANY`` dictionaries a step
    line (twenty overlaid bar sets read as one blur; twenty outlines can still be told apart)."""
    if many:
        fig.add_scatter(x=x, y=y, name=name, mode="lines", line={"shape": "hvh", "width": 1.5})
    else:
        fig.add_bar(x=x, y=y, name=name, opacity=0.6)


def _figures(models: dict[str, dict]) -> list[go.Figure]:
    lay = _LAYOUT
    ad = go.Figure(layout=lay | {"title": _title("Active dimensions per test row"), "xaxis_title": "AD",
                                 "yaxis_title": "test rows"})
    dens = go.Figure(layout=lay | {"title": _title("Feature density"),
                                   "xaxis_title": "log10 fraction of rows active", "yaxis_title": "latents"})
    kmax = max([max(m["masked_curve"]["kept"]) for m in models.values() if m.get("masked_curve")] or [1])
    ticks = _kept_ticks(kmax)
    res = [v for m in models.values() for v in (m.get("masked_curve") or {}).get("re", [])]
    curve = go.Figure(layout=lay | {"title": _title("RE vs latents kept per row (paper Fig. 4)"),
                                    "xaxis_title": "latents kept per row (log scale; 0 drawn at 0.5)",
                                    "yaxis_title": "RE (per-row SSE, log scale)",  # log: one diverged
                                    "yaxis": {"type": "log", **_log_ticks(res)},  # model flattened the others
                                    "xaxis": {"type": "log", "tickvals": [t for t, _ in ticks],
                                              "ticktext": [s for _, s in ticks]}})
    figs = [*_frontier(models), ad, dens, curve]
    for name, m in models.items():
        h = m.get("ad_hist") or {"values": [], "counts": []}
        _hist(ad, h["values"], h["counts"], esc(name), len(models) > MANY)
        d = m.get("density_hist") or {"edges": [], "counts": []}
        mids = [(a + b) / 2 for a, b in zip(d["edges"][:-1], d["edges"][1:], strict=True)]
        _hist(dens, mids, d["counts"], f"{esc(name)} (dead: {_num(d.get('dead'))})", len(models) > MANY)
        c = m.get("masked_curve")
        if c:  # kept = 0 cannot sit on a log axis: it is shown at 0.5
            curve.add_scatter(x=[k if k > 0 else 0.5 for k in c["kept"]], y=_log_values(c["re"]),
                              mode="lines+markers", name=esc(name))
    if any(m.get("ad_class") for m in models.values()):
        left = max(m.get("ad_class_unlabelled") or 0 for m in models.values())  # the same rows for all
        title = "AD per class (bars: per row; markers: of the class mean)" + (
            f"; {left:,} rows without a label left out" if left else "")
        cls = go.Figure(layout=lay | {"title": _title(title), "xaxis_title": "class", "yaxis_title": "AD"})
        colours = _colours(models)
        for name, m in models.items():  # a dictionary's bars and markers in its colour of the other figures
            rows = m.get("ad_class") or []
            labels = [esc(r["label"], quote=False) for r in rows]  # plotly shows &quot; as it is
            pair = {"marker_color": colours[name], "legendgroup": esc(name)}
            cls.add_bar(x=labels, y=[r["ad"] for r in rows], name=esc(name), opacity=0.6, **pair)
            cls.add_scatter(x=labels, y=[r["ad_of_mean"] for r in rows], mode="markers",
                            name=f"{esc(name)} (of mean)", marker_symbol="diamond", marker_size=9, **pair)
        figs.append(cls)
    return figs


def _colours(models: dict[str, dict]) -> dict[str, str]:
    """Each dictionary's colour: the one the distributions' figures give it by its place (plotly's colorway,
    ``_many``'s 24 beyond ``MANY``), for a figure with more than one trace per dictionary (the per-class
    AD's bars and markers, where plotly's next colours made one dictionary's markers another's red)."""
    palette = qualitative.Dark24 if len(models) > MANY else qualitative.Plotly
    return {name: palette[i % len(palette)] for i, name in enumerate(models)}


TRAINING_TERMS = (
    ("sse", "Training: reconstruction error (sse per row)", "sse per row"),
    ("loss", "Training: the objective (loss)", "loss"),
    ("grad_norm", "Training: the gradient's L2 norm (before train.grad_clip)", "gradient L2 norm"),
    ("eval_ad", "Training: AD per row (each interval's last batch)", "AD per row"),
    ("eval_ev", "Training: explained variance (last batches)", "explained variance"),
    ("eval_live", "Training: share of latents active (last batches)", "share of latents active"))
"""The training figures: (the log's column, the figure's title, its y axis' title: the column's name, as
'eval_live', was the axis' before)."""


def _training_figures(models: dict[str, dict]) -> list[go.Figure]:
    """The training curves of the dictionaries with a training log: the reconstruction term (sse) on a log
    axis, the objective (log axis when every value is > 0: a VAE's -ELBO can be negative), the gradient's
    norm (log axis; a log written before it was logged has none), then what the log measured on each
    interval's last batch (``actdict.train.probe``): AD, explained variance, live latents, each with the
    same measure of ``train.probe_rows``' held-out rows (``held_*``), dashed, where logged."""
    logs = {name: m["training_log"] for name, m in models.items() if m.get("training_log")}
    colours = _colours(models)
    figs = []
    for term, title, axis in TRAINING_TERMS:
        held = "held" + term[4:] if term.startswith("eval_") else None  # eval_ev -> held_ev
        curves = {name: c for name, c in logs.items() if term in c or held in c}
        if not curves:
            continue
        if has_held := any(held in c for c in curves.values()):
            title = title.split(" (")[0] + " (solid: each interval's last batch; dashed: held-out rows)"
        vals = [v for c in curves.values() for v in c.get(term, []) if v is not None]  # held_* only: none
        log_y = term in ("sse", "grad_norm") or (term == "loss" and vals and min(vals) > 0)
        fig = go.Figure(layout=_LAYOUT | {"title": _title(title), "xaxis_title": "training step",
                                      "yaxis_title": axis + (" (log scale)" if log_y else ""),
                                      "yaxis": {"type": "log" if log_y else "linear"}})
        fig.update_layout(showlegend=True)  # also for one curve: which dictionary's it is
        for name, c in curves.items():
            colour = colours[name]  # each dictionary's in every figure (the distributions' order), also
            # where another one logs no such term (a plugin's without sse)
            pair = {"line_color": colour, "marker_color": colour}
            pair |= {"legendgroup": esc(name)} if has_held else {}
            mode = "lines" if len(c["step"]) > 1 else "markers"  # one record (a run under log_every steps)
            if term in c:
                fig.add_scatter(x=c["step"], y=_log_values(c[term]) if log_y else c[term], mode=mode,
                                name=esc(name), **pair)
            if held in c:  # the same measure of train.probe_rows' held-out rows: its colour, dashed
                fig.add_scatter(x=c["step"], y=c[held], mode=mode, line_dash="dash",
                                showlegend=term not in c, name=esc(name) + " (held-out)", **pair)
        figs.append(fig)
    return figs + _formation_figure(models)


def _formation_figure(models: dict[str, dict]) -> list[go.Figure]:
    """[the figure] of the dictionaries whose snapshots were read (``formation``): at each snapshot's step,
    the final dictionary's live features found among the snapshot's decoder directions, MMCS solid and the
    share within cosine 0.9 dashed, in one colour per dictionary; [] without any."""
    forming = {name: f for name, m in models.items() if (f := m.get("formation"))}
    if not forming:
        return []
    title = "Feature formation: the final features found in each snapshot (solid: MMCS; dashed: share >= 0.9)"
    fig = go.Figure(layout=_LAYOUT | {"title": _title(title), "xaxis_title": "training step (snapshot)",
                                      "yaxis_title": "cosine / share"})
    fig.update_layout(showlegend=True)  # also for one dictionary: which one's it is
    colours = _colours(models)  # each dictionary's colour in every figure
    for name, f in forming.items():
        colour = colours[name]
        pair = {"legendgroup": esc(name), "line_color": colour, "marker_color": colour,
                "mode": "lines+markers"}
        fig.add_scatter(x=f["step"], y=f["mmcs"], name=esc(name), **pair)
        fig.add_scatter(x=f["step"], y=f["matched"], line_dash="dash", showlegend=False,
                        name=esc(name) + " (share within cos 0.9)", **pair)
    return [fig]


def _title(text: str) -> dict:
    """A figure's title, set just above its plot (in the top margin's lower half): at the top of the
    figure, plotly's mode bar (shown on hover, top right) covered the end of a long title."""
    return {"text": text, "y": 1, "yref": "paper", "yanchor": "bottom", "pad": {"b": 12}}


def _log_values(values: list) -> list:
    """``values`` for a log axis: an RE of exactly 0 (a perfect reconstruction) or null has no place on it and
    is left out of the line (None), rather than left to the plotting library."""
    return [v if v is not None and v > 0 else None for v in values]


def _kept_ticks(k: int) -> list[tuple[float, str]]:
    """(position, label) of the masked curve's log-axis ticks: 0 (drawn at 0.5), 1, 2, 5, 10, 20, ... up to
    ``k`` (those within a factor 1.5 of ``k`` left out, so that labels do not overlap), and ``k`` itself."""
    ticks = [(0.5, "0")]
    step = 1
    while step <= k:
        ticks += [(float(v), str(v)) for v in (step, 2 * step, 5 * step) if 1.5 * v < k]
        step *= 10
    return ticks + [(float(k), str(k))]


def _tok(t: Any) -> str:
    """An escaped token in a context, its invisible characters shown (``toptokens.visible``: newline ↵)."""
    return esc(visible(str(t)))


def _alone(t: Any) -> str:
    """An escaped token by itself (highlighted, listed): ``toptokens.alone`` (a space-only token as ␣)."""
    return esc(alone(str(t)))


def _snippet(hit: dict, wordpiece: bool = False) -> str:
    where = f"doc {_num(hit.get('doc'))} pos {_num(hit.get('pos'))}"
    if "text" in hit or (hit.get("token_id") or 0) < 0:  # an embedded document / paragraph: its text
        return (f'<div class="ctx txt"><span class="act">{_num(hit.get("act"))}</span>'
                f'<span>{esc(hit.get("text", ""))}</span><span class="where">{where}</span></div>')
    before = esc(context_text(display_strings(hit.get("before", []), wordpiece)))
    after = esc(context_text(display_strings(hit.get("after", []), wordpiece)))
    token = display_strings([hit.get("token", "")], wordpiece)[0]
    lead = token[:len(token) - len(token.lstrip(" "))] if token.strip() else ""  # " of": highlight "of"
    return (f'<div class="ctx"><span class="act" title="{where}">{_num(hit.get("act"))}</span>'
            f'<span class="dim">{before}{_tok(lead)}</span>'
            f'<span class="hl">{_alone(token[len(lead):])}</span>'
            f'<span class="dim">{after}</span></div>')


def _features(name: str, m: dict, page: str | None) -> str:
    link = f' <a href="{esc(page)}">(all {_num(m.get("k"))} features)</a>' if page else ""
    parts = [f"<h3>{esc(name)}{link}</h3>"]
    hits = [h for f in m.get("features", []) for h in f.get("top", [])]
    wordpiece = m.get("wordpiece")  # from the dictionary's features file; older summaries: guessed
    if wordpiece is None:
        wordpiece = is_wordpiece(t for h in hits for t in [h.get("token", ""), *h.get("before", []),
                                                           *h.get("after", [])])
    for f in m.get("features", []):
        title = f'feature {_num(f.get("index"))}'
        if page:
            title = f'<a href="{esc(page)}#f={_num(f.get("index"))}">{title}</a>'
        near = "".join(f"; nearest in {esc(b)}: feature {_num(n.get('feature'))} (cos {_num(n.get('cos'))})"
                       for b, n in _nearest(f.get("nearest") or {}))
        if len(f.get("nearest") or {}) > NEAREST:
            near += f"; {len(f['nearest']) - NEAREST} more on its feature page"
        parts.append(f'<div class="feature"><b>{title}</b> (density {_num(f.get("density"))}{near})')
        if f.get("logits"):
            parts.append(_logit_line(f["logits"]))
        parts.extend(_snippet(h, wordpiece) for h in f.get("top", []))
        parts.append("</div>")
    return "\n".join(parts)


CLASS_ROWS = 100
"""Classes shown per dictionary in report.html's class features (the most populous, in the labels' order);
summary.json holds every class."""


def _class_features(models: dict[str, dict], pages: dict[str, str]) -> list[str]:
    """Per dictionary with ``class_features``, a table: each class (label, rows) and the features that most
    separate its rows from the other labelled rows, each linked to its feature page, with Cohen's d and the
    share of the class's rows and of the others' where it is active."""
    parts = []
    for name, m in models.items():
        classes = m.get("class_features") or []  # in the labels' order (as ad_class)
        if not classes:
            continue
        big = sorted(range(len(classes)), key=lambda i: -(classes[i].get("n") or 0))[:CLASS_ROWS]
        picked = [classes[i] for i in sorted(big)]  # the most populous, in the labels' order
        page = pages.get(name)
        rows = "".join(f'<tr><td>{esc(c.get("label"))}</td><td>{_count(c.get("n"))}</td><td class="txt">'
                       + ("<br>".join(_class_feature(f, page) for f in c.get("features") or []) or "&ndash;")
                       + "</td></tr>" for c in picked)
        more = (f'<p class="note">{len(classes) - CLASS_ROWS:,} smaller classes are in summary.json.</p>'
                if len(classes) > CLASS_ROWS else "")
        parts.append(f'<h3>{esc(name)}</h3><div class="scroll"><table class="overview"><tr><th>class</th>'
                     "<th>rows</th><th>feature, its top tokens: Cohen's d of |code|, active on the class's "
                     f"rows / the others'</th></tr>{rows}</table></div>{more}")
    if not parts:
        return []
    return ['<h2 id="classes">Features of each class</h2>',
            '<p class="note">With analyze.labels or labels_field: for each class, the features whose |code| '
            "most separates its rows from every other labelled row, largest d first (d = difference of the "
            "two means over the root of the mean of their variances; features more active in the class only; "
            "the shares: of the class's rows and of all the other labelled rows where the feature is active; "
            "actdict feature RUN_DIR/dicts/NAME --class LABEL prints one class's; d &infin;: a code "
            "constant on the class's rows and constant, lower, on the others', which separates them "
            "perfectly).</p>", *parts]


def _class_feature(f: dict, page: str | None) -> str:
    """One feature of a class's row: its index (linked to its feature page), its top tokens, d, and where it
    is active."""
    j = _num(f.get("feature"))
    ref = f'<a href="{esc(page)}#f={j}">{j}</a>' if page else j
    d = "&infin;" if f.get("d", 0) is None else _num(f.get("d"))  # None: constant in both groups
    toks = ", ".join(f'<span class="tok">{_alone(t)}</span>' for t in f.get("tokens") or [])
    return (f'{ref}{" " + toks if toks else ""}: <span class="dim">d {d}, active '
            f'{_share(f.get("fire_in"))} / {_share(f.get("fire_out"))}</span>')


def _count(v: Any) -> str:
    """A count with thousands separators, as analyze prints it (20,480): the class table's rows read 7277."""
    return f"{v:,}" if isinstance(v, int) else _num(v)


def _share(v: Any) -> str:
    return f"{v:.0%}" if isinstance(v, int | float) else "&ndash;"


NEAREST = 3
"""A listed feature's nearest features shown in report.html: in every other dictionary up to this many
others, else in the NEAREST of highest cosine (a sweep of 20 had 19 on each of its 24 x 20 features)."""


def _nearest(near: dict[str, dict]) -> list[tuple[str, dict]]:
    """The (dictionary, nearest feature) pairs of a feature's ``nearest`` shown: all, or the ``NEAREST`` of
    highest cosine when there are more."""
    if len(near) <= NEAREST:
        return list(near.items())
    return sorted(near.items(), key=lambda bn: -(bn[1].get("cos") or -2.0))[:NEAREST]


def _logit_line(lg: dict) -> str:
    """A feature's direct logit effects (``analyze.logits``): the tokens it raises and lowers most."""
    words = (("up", "raises the logits of"), ("down", "lowers"))
    sides = [(word, lg[side]) for side, word in words if lg.get(side)]
    return '<div class="note">' + "; ".join(
        f"{word}: " + ", ".join(f'<span class="tok">{_alone(t)}</span> {_num(v)}' for t, v in pairs)
        for word, pairs in sides) + "</div>"


def _ce_line(ce: dict | None, hook: str | None = None) -> str:
    if not ce:
        return ""
    return (f'<p class="note">Spliced into the language model on {_num(ce.get("windows"))} held-out windows '
            f'of {_num(ce.get("ctx"))} tokens ({_num(ce.get("n_tokens"))} predictions): clean CE '
            f'{_num(ce.get("ce_clean"))}, zero-ablation CE {_num(ce.get("ce_zero"))}.'
            + (f" Note: {esc(c)}." if (c := ce_caveat(ce, hook)) else "") + "</p>")


_INFO = (("store", "store"), ("hook", "hook"), ("d", "d"), ("n_test_rows", "held-out rows evaluated"),
         ("run_id", "run_id"))
"""The header line's (summary.json key, label): the row count read 'n_test_rows: 20480' before."""


def _class_ad_note(models: dict[str, dict]) -> str:
    """With ``ad_class``, what the per-class AD figure's markers are: Table 2's AD of the class's mean code,
    which sat far above the bars (the demo's SAE-l1: ~250-350 against ~55 per row) with no word on why."""
    if not any(m.get("ad_class") for m in models.values()):
        return ""
    return ('<p class="note">AD per class: the bars are the mean AD of the class\'s rows; the markers the '
            "paper's Table-2 AD of the class's mean code (the Otsu split of log mean |z| for an SAE, of the "
            "mean log variance for a VAE), which for an SAE counts the latents active on at least one of "
            "the class's rows: it grows with the class's size, so compare it between classes of like "
            "sizes (docs/analyze.md, ad_class).</p>")


def _contents(classes: bool, training: bool, models: dict[str, dict], pages: dict[str, str]) -> str:
    """The line under the heading that links to each section the page has and to each feature page: which
    features a class turns on, below the figures, was found only by scrolling past them."""
    sections = [("metrics", "Overview"), ("distributions", "Distributions"),
                *([("classes", "Features of each class")] if classes else []),
                *([("training", "Training")] if training else []), ("frequent", "Most frequent features")]
    links = " &middot; ".join(f'<a href="#{ref}">{text}</a>' for ref, text in sections)
    every = ", ".join(f'<a href="{esc(pages[n])}">{esc(n)}</a>' for n in models if n in pages)
    return f'<p class="note">Sections: {links}' + (f"; every feature of {every}" if every else "") + "</p>"


def render(summary: dict, pages: dict[str, str] | None = None) -> str:
    """The overview page for ``summary``; ``pages`` maps model names to their feature-page links."""
    models, pages = summary.get("models", {}), pages or {}
    info = ", ".join(f"{label}: {_count(v)}" for key, label in _INFO
                     if (v := summary.get(key, _INFO)) is not _INFO)
    dist, training = [_many(f) for f in _figures(models)], [_many(f) for f in _training_figures(models)]
    figs = [fig.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=f"figure-{i}")  # not a random id:
            for i, fig in enumerate(dist + training)]  # the same summary renders the same bytes
    figs, training_figs = figs[:len(dist)], figs[len(dist):]
    classes = _class_features(models, pages)
    body = [f"<h1>actdict report: {esc(summary.get('run_dir', ''))}</h1>", f"<p>{info}</p>",
            _contents(bool(classes), bool(training_figs), models, pages),
            '<h2 id="metrics">Overview</h2>', _overview(models, pages),
            _ce_line(summary.get("ce"), summary.get("hook")),
            *(f'<p class="warn">{esc(name)}: training warned: {esc(m["training_warning"])}</p>'
              for name, m in models.items() if m.get("training_warning")),
            '<p class="note">Hover a column header for its definition. AD, dead/dense latents and density '
            "use the per-row Otsu active mask of each model's activity. L0 counts exact nonzero codes, which "
            "a VAE's rarely are: a VAE's sparsity is its AD.</p>", _similar(models),
            '<h2 id="distributions">Distributions</h2>', _class_ad_note(models), '<div class="figs">',
            *(f"<div>{f}</div>" for f in figs), "</div>", *classes,
            *(['<h2 id="training">Training</h2>',
               '<p class="note">Each dictionary\'s loss terms over its training, means over the intervals '
               "of its log (train.log_every steps; logs/&lt;name&gt;.jsonl), then its AD, "
               "explained variance and share of latents active as measured on each interval's last batch "
               "(the analysis' measures, on one training batch: not the held-out rows above; dashed, where "
               "train.probe_rows was set: on that many held-out rows, the same ones every interval). With "
               "train.snapshot_every, the last figure finds the final dictionary's live features among each "
               "snapshot's decoder directions: when the features the run ends with formed.</p>",
               '<div class="figs">', *(f"<div>{f}</div>" for f in training_figs), "</div>"]
              if training_figs else []),
            '<h2 id="frequent">Most frequent features: top-activating contexts</h2>',
            '<p class="note">Each dictionary\'s features active on the most test rows (density: the '
            "fraction of rows), each with its top rows: the feature's code on the row, then the row's token "
            "highlighted among its neighbours (an embedded row: the text it embeds, its doc and pos).</p>",
            *(_features(n, m, pages.get(n)) for n, m in models.items())]
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{esc(run_label(summary))}: actdict report</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_report(summary: dict, path: str | Path) -> Path:
    """Write ``path`` (the overview; a folder means ``<folder>/report.html``) and, for every model with a
    features file (relative to the overview's folder), ``report/<name>.html``. Returns the overview path."""
    p = Path(path)
    p = p / "report.html" if p.is_dir() else p
    root, pages = p.parent, {}
    for name, m in summary.get("models", {}).items():
        rel = m.get("features_file")
        if rel and (root / rel).is_file():
            data = read_output(root / rel)
            write_feature_page(data, name, m, summary, root / _page_name(name))
            pages[name] = _page_link(name, summary.get("run_id"))  # the page checks the run (a kill part way)
    write_atomic(p, render(summary, pages))
    return p
