"""Render the analysis (summary.json, schema in ``actdict.analyze.run``) as HTML files that open from disk.

Nothing is computed here: the pages only show what ``summary`` and the features files hold.
* ``report.html``: overview table, shared directions, AD / density histograms, the masked-dimensions RE
  curve, per-class AD, the training curves, each class's features, and the most frequent features' top
  contexts (with each one's nearest feature in the other dictionaries). plotly.js is inlined once: one
  self-contained file. This module assembles it: its sections come from ``report_sections``, its figures
  from ``report_figures``, the escaping from ``report_html``.
* ``report/<name>.html`` (one per dictionary, see ``report_features``): a browser over every feature.

Every string that comes from the corpus or the user (tokens, model names, paths) goes through
``html.escape`` (``report_html.esc``), and through ``textContent`` (never ``innerHTML``) in the feature
pages' script.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from actdict.analyze.outputs import read_output
from actdict.analyze.report_features import run_label, write_feature_page
from actdict.analyze.report_figures import figures, for_many, training_figures
from actdict.analyze.report_html import count, esc
from actdict.analyze.report_sections import (
    ce_line,
    class_ad_note,
    class_features,
    frequent_features,
    overview_table,
    similar_table,
)
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


def _page_name(name: str) -> str:
    """The feature page's file, relative to the overview: the dictionary's name as it is (its link quotes
    it: ``_page_link``)."""
    return f"report/{name}.html"


def _page_link(name: str, run: str | None) -> str:
    """The overview's link to the feature page: the file name percent-encoded (a space, '#', '?', '%' or
    non-ASCII in a dictionary's name would otherwise break it), with the run id it checks."""
    return "report/" + quote(name + ".html", safe="") + (f"?run={quote(run, safe='')}" if run else "")



_INFO = (("store", "store"), ("hook", "hook"), ("d", "d"), ("n_test_rows", "held-out rows evaluated"),
         ("run_id", "run_id"))
"""The header line's (summary.json key, label): the row count read 'n_test_rows: 20480' before."""

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
    info = ", ".join(f"{label}: {count(v)}" for key, label in _INFO
                     if (v := summary.get(key, _INFO)) is not _INFO)
    dist, training = [for_many(f) for f in figures(models)], [for_many(f) for f in training_figures(models)]
    figs = [fig.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=f"figure-{i}")  # not a random id:
            for i, fig in enumerate(dist + training)]  # the same summary renders the same bytes
    figs, training_figs = figs[:len(dist)], figs[len(dist):]
    classes = class_features(models, pages)
    body = [f"<h1>actdict report: {esc(summary.get('run_dir', ''))}</h1>", f"<p>{info}</p>",
            _contents(bool(classes), bool(training_figs), models, pages),
            '<h2 id="metrics">Overview</h2>', overview_table(models, pages),
            ce_line(summary.get("ce"), summary.get("hook")),
            *(f'<p class="warn">{esc(name)}: training warned: {esc(m["training_warning"])}</p>'
              for name, m in models.items() if m.get("training_warning")),
            '<p class="note">Hover a column header for its definition. AD, dead/dense latents and density '
            "use the per-row Otsu active mask of each model's activity. L0 counts exact nonzero codes, which "
            "a VAE's rarely are: a VAE's sparsity is its AD.</p>", similar_table(models),
            '<h2 id="distributions">Distributions</h2>', class_ad_note(models), '<div class="figs">',
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
            *(frequent_features(n, m, pages.get(n)) for n, m in models.items())]
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
