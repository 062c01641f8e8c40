"""The plotly figures of ``report.html``: the sparsity frontier, the AD and density histograms, the
masked-dimensions RE curve, per-class AD, the training curves and feature formation. Each takes the
summary's ``models`` and returns figures (``render`` turns them into HTML); every name shown is escaped."""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.colors import qualitative

from actdict.analyze.report_html import esc, num

_LAYOUT = {"barmode": "overlay", "height": 390, "margin": {"t": 60, "l": 60, "r": 20, "b": 50},
           "legend": {"orientation": "h", "y": -0.2}}


MANY = 8
"""A figure with more legend entries than this (a sweep's dictionaries) lists them in a column right of the
plot, which scrolls when longer than the plot, in 24 colours, not in rows below it (for 20 dictionaries 10
rows of 10 colours left ~50 px of a 390 px figure, and colours repeated); the frontier names its markers on
hover."""


def for_many(fig: go.Figure) -> go.Figure:
    """``fig`` with its legend to the right and 24 colours when it has more than ``MANY`` entries."""
    if sum(t.showlegend is not False for t in fig.data) > MANY:
        fig.update_layout(legend={"orientation": "v", "x": 1.02, "y": 1, "yanchor": "top",
                                  "font": {"size": 10}}, colorway=qualitative.Dark24, margin_r=10)
    return fig



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


def figures(models: dict[str, dict]) -> list[go.Figure]:
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
        _hist(dens, mids, d["counts"], f"{esc(name)} (dead: {num(d.get('dead'))})", len(models) > MANY)
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
    ``for_many``'s 24 beyond ``MANY``), for a figure with more than one trace per dictionary (the per-class
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


def training_figures(models: dict[str, dict]) -> list[go.Figure]:
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
