"""The feature browser of one dictionary: ``report/<name>.html``, opened from disk with no server.

The page embeds an index of the features file (schema in ``actdict.analyze.features``): per feature its
counts and the token ids and rows of its top hits, for the sortable and searchable list, as JSON inside a
``<script type="application/json">`` element, with ``<``, ``>`` and ``&`` written as ``\\u003c``-style
escapes so no corpus string can close the element. Each feature's details (histogram, top, most negative
and quantile-sampled contexts, the texts of embedded rows) lie in parts of ``PART`` features beside the
page, ``report/<name>.parts/00000.js`` ..., each a script that hands its JSON to the page: the page loads
the part of the feature shown (a ``<script src>``, which works from disk, unlike ``fetch``), so a
dictionary of 16,384 or 65,536 features opens as fast as one of 384. Every corpus string is inserted with
``textContent`` (never ``innerHTML``), so it is shown, not run. plotly.js is written once next to the
pages (``report/plotly.min.js``) and loaded by a relative path. The page and each part carry the analysis's
``run_id``: a part, or the overview that linked here (``?run=``), of another run is reported on the page
(an analysis stopped part way through writing the report).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from actdict.analyze.features import feature_hits, shown_snapshots
from actdict.analyze.report_page_assets import PAGE_CSS, PAGE_JS
from actdict.analyze.toptokens import visible_js
from actdict.files import remove_temps, write_atomic

PART = 256
"""Features per part file of a feature page."""


def embed_json(obj) -> str:
    """JSON for a ``<script type="application/json">`` element: ``<``, ``>``, ``&`` as unicode escapes."""
    s = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def shown(v: float) -> str:
    """A float as the reports print it: 4 significant digits, and 2 decimals kept from 100 up (an L0 of
    383.98 of 384 latents is not shown as 384)."""
    whole = len(str(int(abs(v)))) if abs(v) < 1e15 else 4  # digits before the point
    return f"{v:.{max(4, whole + 2)}g}"


def _stats(m: dict) -> str:
    keys = [("re_det", "RE"), ("ad", "AD"), ("l0", "L0"), ("ev", "EV"), ("cos", "cos"), ("dead", "dead"),
            ("dense", "dense")]
    return ", ".join(f"{k2} {shown(m[k])}" if isinstance(m[k], float) else f"{k2} {m[k]}"
                     for k, k2 in keys if m.get(k) is not None)


def page_index(data: dict, label_chars: int = 24) -> dict:
    """What the page embeds of the features file ``data``: everything but the features' details, and per
    feature its counts and ``tops``, the (row, token id) of each top hit (the list's labels); for embedded
    rows ``label_texts``, the start of the texts of those rows (an ellipsis where cut), and ``has_texts``;
    ``has_tokens``: whether the store has tokens (a store of vectors, imported or embedded, has token id -1
    on every row): without tokens or texts the page lists no top tokens and speaks of no token context;
    with snapshots, ``formation_shown``: the indices of those a feature's formation is shown at
    (``features.shown_snapshots``, which ``actdict feature`` uses too)."""
    texts = data.get("texts") or {}  # a hit is [act, row, doc, pos, context ids, its token's index in them]
    feats = [{"i": f["i"], "fires": f["fires"], "density": f["density"], "max": f["max"], "min": f["min"],
              "tops": [[hit[1], hit[4][hit[5]]] for hit in f["top"]]} for f in data["features"]]  # (row, id)
    rows = {str(row) for f in feats for row, _ in f["tops"]}
    shown = {"formation_shown": shown_snapshots(len(data["formation_steps"]))} if (
        "formation_steps" in data) else {}  # which snapshots a feature's formation is shown at
    return {k: v for k, v in data.items() if k not in ("features", "texts")} | shown | {
        "part": PART, "features": feats, "has_texts": bool(texts),
        "has_tokens": any(int(i) >= 0 for i in data.get("tokens", {})),
        "label_texts": {r: texts[r][:label_chars] + ("\u2026" if len(texts[r]) > label_chars else "")
                        for r in sorted(rows) if r in texts}}


def page_parts(data: dict) -> list[dict]:
    """The features of ``data`` in parts of ``PART``: each part's full records and the texts of their rows
    (embeddings stores), but for ``formed``: its values at the snapshots the page shows (``page_index``'s
    ``formation_shown``), about 12 of many (each value ~8 bytes a feature; the features file keeps all)."""
    texts, parts = data.get("texts") or {}, []
    shown = shown_snapshots(len(data.get("formation_steps") or []))
    features = [f | {"formed": [f["formed"][j] for j in shown]} if f.get("formed") else f
                for f in data["features"]]
    for a in range(0, len(features), PART):
        feats = features[a:a + PART]
        rows = {str(h[1]) for f in feats for h in feature_hits(f)}
        parts.append({"features": feats, "texts": {r: texts[r] for r in sorted(rows) if r in texts}})
    return parts


def run_label(summary: dict) -> str:
    """The run folder and hook of ``summary`` (``runs/layer2 (blocks.2.hook_resid_post)``): the pages' titles
    start with it, so that the tabs of several runs (one per layer) tell themselves apart."""
    hook = summary.get("hook")
    return f"{summary.get('run_dir', '')}" + (f" ({hook})" if hook else "")


def render_feature_page(data: dict, name: str, model: dict, summary: dict, parts: str) -> str:
    """The page's HTML; ``parts``: the name of the folder beside it holding its part files."""
    meta = {"name": name, "variant": model.get("variant", ""), "parts": parts, "run": summary.get("run_id")}
    stats, title = html.escape(_stats(model)), html.escape(f"{name}, {run_label(summary)}: features")
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title><style>{PAGE_CSS}</style>
<script src="plotly.min.js"></script></head><body>
<header><a href="../report.html">&larr; overview</a><b id="title"></b>
 <span class="stats">{stats}; hook {html.escape(str(summary.get("hook", "")))}</span></header>
<p id="mixed" hidden></p>
<main><div id="side"><div id="controls">
 <div>feature # <input id="go" type="number" min="0" max="{int(data.get("k", 0)) - 1}"
  style="width:6em"></div>
 <div>sort <select id="sort"><option value="fires">most active</option><option value="max">max activation
 </option><option value="index">index</option><option value="density">least active</option></select></div>
 <div id="qbox"><span id="qlabel">top token</span>
  <input id="q" type="search" placeholder="e.g. computer" style="width:10em"></div>
 <div>min density <input id="mind" type="number" step="any" value="0" style="width:6em">
 <span id="count" class="note"></span></div></div>
 <table id="list"></table><button id="more">more</button>
</div><div id="panel"></div></main>
<script type="application/json" id="feature-data">{embed_json(page_index(data))}</script>
<script type="application/json" id="page-meta">{embed_json(meta)}</script>
<script>{visible_js()}{PAGE_JS}</script>
</body></html>
"""


def write_feature_page(data: dict, name: str, model: dict, summary: dict, path: Path) -> Path:
    """Write the page to ``path``, its parts to ``<path stem>.parts/`` (replacing what was there) and the
    installed plotly's plotly.min.js beside it (when it is not there already: another plotly's is
    replaced)."""
    from plotly.offline import get_plotlyjs

    path.parent.mkdir(parents=True, exist_ok=True)
    js, code = path.parent / "plotly.min.js", get_plotlyjs().encode()
    if not js.is_file() or js.read_bytes() != code:
        write_atomic(js, code)
    folder = path.with_name(path.stem + ".parts")
    folder.mkdir(exist_ok=True)
    for old in folder.glob("*.js"):
        old.unlink(missing_ok=True)
    remove_temps(folder, "*.js")  # of a killed analysis
    run = json.dumps(summary.get("run_id"))  # which analysis wrote the part: the page checks it
    for n, part in enumerate(page_parts(data)):  # JSON is a JS expression; ensure_ascii: no U+2028 in it
        blob = json.dumps(part, separators=(",", ":"), allow_nan=False)
        code = f"actdictPart({n},{blob},{run});\n"
        write_atomic(folder / f"{n:05d}.js", code, encoding="ascii")
    write_atomic(path, render_feature_page(data, name, model, summary, folder.name))
    return path
