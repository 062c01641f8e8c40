"""The HTML sections of ``report.html`` other than its figures: the metrics table, the shared directions,
each class's features, the most frequent features' top contexts (with their direct logit effects and
nearest features), and the notes on CE recovered and per-class AD. Each returns HTML text; every corpus
and user string goes through ``esc`` (tokens through ``toptokens``' display, then ``esc``)."""

from __future__ import annotations

from typing import Any

from actdict.analyze.report_html import count, esc, num
from actdict.analyze.splice import ce_caveat
from actdict.analyze.toptokens import alone, context_text, display_strings, is_wordpiece, visible

_COLUMNS = [  # (summary key, header, tooltip); in the order of analyze's printed table (tables.summary_lines)
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



def overview_table(models: dict[str, dict], pages: dict[str, str]) -> str:
    cols = [c for c in _COLUMNS if any(c[0] in m for m in models.values())]
    dense = {m.get("dense_threshold") for m in models.values()} - {None}
    if len(dense) == 1:  # the threshold the dense column counts with (one analysis: the same for all)
        cols = [(k, h, f"latents active on more than {num(dense.pop())} of the test rows (dense_threshold)")
                if k == "dense" else (k, h, t) for k, h, t in cols]
    head = "".join(f'<th title="{esc(t)}">{esc(h)}</th>' for _, h, t in cols)
    rows = []
    for name, m in models.items():
        link = f'<a href="{esc(pages[name])}">features &rarr;</a>' if name in pages else ""
        cells = "".join(f"<td>{num(m.get(key))}</td>" for key, _, _ in cols)
        rows.append(f"<tr><td>{esc(name)}</td>{cells}<td>{link}</td></tr>")
    return ('<div class="scroll">'  # a narrow window scrolls the table, not the page
            f'<table class="overview" id="overview"><tr><th>model</th>{head}<th></th></tr>{"".join(rows)}'
            "</table></div>")



def similar_table(models: dict[str, dict]) -> str:
    """The table of shared decoder directions (``similar``): row A, column B, A's live features' mean max
    cosine in B and the fraction matched at 0.9; '' for fewer than two dictionaries."""
    names = [n for n, m in models.items() if m.get("similar")]
    if len(names) < 2:
        return ""

    def cell(a: str, b: str) -> str:
        p = models[a]["similar"].get(b)
        if not p or p.get("matched") is None:
            return "<td>&ndash;</td>"
        return f'<td>{num(p.get("mmcs"))} ({p["matched"]:.0%})</td>'

    head = "".join(f"<th>{esc(b)}</th>" for b in names)
    rows = "".join(f"<tr><td>{esc(a)}</td>{''.join(cell(a, b) for b in names)}</tr>" for a in names)
    return ("<h3>Shared directions</h3>"
            '<p class="note">Row A, column B: the mean over A\'s live features (active on a test row, with a '
            "decoder column) of the largest cosine between its decoder direction and those of B's live "
            "features (MMCS), and in brackets the share of them with a cosine of 0.9 or more.</p>"
            f'<div class="scroll"><table class="overview"><tr><th>A \\ B</th>{head}</tr>{rows}</table></div>')



def _tok(t: Any) -> str:
    """An escaped token in a context, its invisible characters shown (``toptokens.visible``: newline ↵)."""
    return esc(visible(str(t)))


def _alone(t: Any) -> str:
    """An escaped token by itself (highlighted, listed): ``toptokens.alone`` (a space-only token as ␣)."""
    return esc(alone(str(t)))


def _snippet(hit: dict, wordpiece: bool = False) -> str:
    where = f"doc {num(hit.get('doc'))} pos {num(hit.get('pos'))}"
    if "text" in hit or (hit.get("token_id") or 0) < 0:  # an embedded document / paragraph: its text
        return (f'<div class="ctx txt"><span class="act">{num(hit.get("act"))}</span>'
                f'<span>{esc(hit.get("text", ""))}</span><span class="where">{where}</span></div>')
    before = esc(context_text(display_strings(hit.get("before", []), wordpiece)))
    after = esc(context_text(display_strings(hit.get("after", []), wordpiece)))
    token = display_strings([hit.get("token", "")], wordpiece)[0]
    lead = token[:len(token) - len(token.lstrip(" "))] if token.strip() else ""  # " of": highlight "of"
    return (f'<div class="ctx"><span class="act" title="{where}">{num(hit.get("act"))}</span>'
            f'<span class="dim">{before}{_tok(lead)}</span>'
            f'<span class="hl">{_alone(token[len(lead):])}</span>'
            f'<span class="dim">{after}</span></div>')


def frequent_features(name: str, m: dict, page: str | None) -> str:
    link = f' <a href="{esc(page)}">(all {num(m.get("k"))} features)</a>' if page else ""
    parts = [f"<h3>{esc(name)}{link}</h3>"]
    hits = [h for f in m.get("features", []) for h in f.get("top", [])]
    wordpiece = m.get("wordpiece")  # from the dictionary's features file; older summaries: guessed
    if wordpiece is None:
        wordpiece = is_wordpiece(t for h in hits for t in [h.get("token", ""), *h.get("before", []),
                                                           *h.get("after", [])])
    for f in m.get("features", []):
        title = f'feature {num(f.get("index"))}'
        if page:
            title = f'<a href="{esc(page)}#f={num(f.get("index"))}">{title}</a>'
        near = "".join(f"; nearest in {esc(b)}: feature {num(n.get('feature'))} (cos {num(n.get('cos'))})"
                       for b, n in _nearest(f.get("nearest") or {}))
        if len(f.get("nearest") or {}) > NEAREST:
            near += f"; {len(f['nearest']) - NEAREST} more on its feature page"
        parts.append(f'<div class="feature"><b>{title}</b> (density {num(f.get("density"))}{near})')
        if f.get("logits"):
            parts.append(_logit_line(f["logits"]))
        parts.extend(_snippet(h, wordpiece) for h in f.get("top", []))
        parts.append("</div>")
    return "\n".join(parts)


CLASS_ROWS = 100
"""Classes shown per dictionary in report.html's class features (the most populous, in the labels' order);
summary.json holds every class."""


def class_features(models: dict[str, dict], pages: dict[str, str]) -> list[str]:
    """Per dictionary with ``class_features``, a table: each class (label, rows) and the features that most
    separate its rows from the other labelled rows, each linked to its feature page, with Cohen's d, AUROC
    and the share of the class's rows and of the others' where it is active."""
    parts = []
    for name, m in models.items():
        classes = m.get("class_features") or []  # in the labels' order (as ad_class)
        if not classes:
            continue
        big = sorted(range(len(classes)), key=lambda i: -(classes[i].get("n") or 0))[:CLASS_ROWS]
        picked = [classes[i] for i in sorted(big)]  # the most populous, in the labels' order
        page = pages.get(name)
        rows = "".join(f'<tr><td>{esc(c.get("label"))}</td><td>{count(c.get("n"))}</td><td class="txt">'
                       + ("<br>".join(_class_feature(f, page) for f in c.get("features") or []) or "&ndash;")
                       + "</td></tr>" for c in picked)
        more = (f'<p class="note">{len(classes) - CLASS_ROWS:,} smaller classes are in summary.json.</p>'
                if len(classes) > CLASS_ROWS else "")
        parts.append(f'<h3>{esc(name)}</h3><div class="scroll"><table class="overview"><tr><th>class</th>'
                     "<th>rows</th><th>feature, its top tokens: Cohen's d and AUROC of |code|, active on the "
                     f"class's rows / the others'</th></tr>{rows}</table></div>{more}")
    if not parts:
        return []
    return ['<h2 id="classes">Features of each class</h2>',
            '<p class="note">With analyze.labels or labels_field: for each class, the features whose |code| '
            "most separates its rows from every other labelled row, largest d first (d = difference of the "
            "two means over the root of the mean of their variances; features more active in the class only; "
            "AUROC: the chance that a row of the class has a larger |code| than another labelled row, ties "
            "one half, from counts in bins of |code| (&plusmn;: how far binning can move it, where 0.005 or "
            "more); "
            "the shares: of the class's rows and of all the other labelled rows where the feature is active; "
            "actdict feature RUN_DIR/dicts/NAME --class LABEL prints one class's; d &infin;: a code "
            "constant on the class's rows and constant, lower, on the others', which separates them "
            "perfectly).</p>", *parts]


def _class_feature(f: dict, page: str | None) -> str:
    """One feature of a class's row: its index (linked to its feature page), its top tokens, d, and where it
    is active."""
    j = num(f.get("feature"))
    ref = f'<a href="{esc(page)}#f={j}">{j}</a>' if page else j
    d = "&infin;" if f.get("d", 0) is None else num(f.get("d"))  # None: constant in both groups
    toks = ", ".join(f'<span class="tok">{_alone(t)}</span>' for t in f.get("tokens") or [])
    return (f'{ref}{" " + toks if toks else ""}: <span class="dim">d {d}{_auroc(f)}, active '
            f'{_share(f.get("fire_in"))} / {_share(f.get("fire_out"))}</span>')


def _auroc(f: dict) -> str:
    """', AUROC 0.64' of a class feature (``analyze.auroc``), its bound beside it where that reaches 0.005;
    '' where it was not counted."""
    a, e = f.get("auroc"), f.get("auroc_err")
    if not isinstance(a, int | float):
        return ""
    return f", AUROC {a:.2f}" + (f" &plusmn; {e:.2f}" if isinstance(e, int | float) and e >= 0.005 else "")



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
        f"{word}: " + ", ".join(f'<span class="tok">{_alone(t)}</span> {num(v)}' for t, v in pairs)
        for word, pairs in sides) + "</div>"


def ce_line(ce: dict | None, hook: str | None = None) -> str:
    if not ce:
        return ""
    return (f'<p class="note">Spliced into the language model on {num(ce.get("windows"))} held-out windows '
            f'of {num(ce.get("ctx"))} tokens ({num(ce.get("n_tokens"))} predictions): clean CE '
            f'{num(ce.get("ce_clean"))}, zero-ablation CE {num(ce.get("ce_zero"))}.'
            + (f" Note: {esc(c)}." if (c := ce_caveat(ce, hook)) else "") + "</p>")


def class_ad_note(models: dict[str, dict]) -> str:
    """With ``ad_class``, what the per-class AD figure's markers are: Table 2's AD of the class's mean code,
    which sat far above the bars (the demo's SAE-l1: ~250-350 against ~55 per row) with no word on why."""
    if not any(m.get("ad_class") for m in models.values()):
        return ""
    return ('<p class="note">AD per class: the bars are the mean AD of the class\'s rows; the markers the '
            "paper's Table-2 AD of the class's mean code (the Otsu split of log mean |z| for an SAE, of the "
            "mean log variance for a VAE), which for an SAE counts the latents active on at least one of "
            "the class's rows: it grows with the class's size, so compare it between classes of like "
            "sizes (docs/analyze.md, ad_class).</p>")
