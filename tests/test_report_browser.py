"""The report in a real headless Chromium: scripts render the overview figures and the feature pages, and a
corpus carrying <script> / <img onerror> payloads executes nothing.

Chromium comes from the system (``chromium`` on PATH or ``$ACTDICT_CHROMIUM``) or, without root, from
Debian packages fetched with ``apt-get download`` (chromium + the libraries this system lacks) and unpacked
with ``dpkg-deb -x`` into ``$ACTDICT_CACHE/chromium`` (default ``~/.cache/actdict/chromium``, ~200 MB,
once). The test is skipped, saying why, only when none of these works.
"""

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

PAYLOAD_SCRIPT = "<script>document.body.setAttribute('data-pwned','script')</script>"
PAYLOAD_IMG = "<img src=x onerror=\"document.body.setAttribute('data-pwned','img')\">"
APT_FLAGS = ["--recurse", "--no-recommends", "--no-suggests", "--no-conflicts", "--no-breaks",
             "--no-replaces", "--no-enhances", "--no-pre-depends"]


def _cache() -> Path:
    root = os.environ.get("ACTDICT_CACHE") or Path.home() / ".cache" / "actdict"
    return Path(root).expanduser() / "chromium"


def _unpacked_env(x: Path) -> dict:
    libs = [x / "usr/lib/x86_64-linux-gnu", x / "usr/lib/x86_64-linux-gnu/pulseaudio",
            x / "lib/x86_64-linux-gnu", x / "usr/lib/chromium"]
    return {"LD_LIBRARY_PATH": ":".join(str(p) for p in libs)}


def _fetch(dest: Path) -> None:
    """apt-get download chromium and every dependency not installed here; dpkg-deb -x them into dest/x."""
    debs = dest / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    deps = subprocess.run(["apt-cache", "depends", *APT_FLAGS, "chromium", "chromium-common"],
                          capture_output=True, text=True, check=True).stdout.split()
    names = sorted({d for d in deps if re.fullmatch(r"[a-z0-9][a-z0-9.+-]+", d)})
    installed = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Status}\n", *names], capture_output=True,
                               text=True).stdout
    have = {line.split()[0] for line in installed.splitlines() if line.endswith("install ok installed")}
    subprocess.run(["apt-get", "download", *sorted(set(names) - have)], cwd=debs, capture_output=True,
                   check=True, timeout=600)
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(dest / "x")], check=True)
    shutil.rmtree(debs)


@pytest.fixture(scope="module")
def chromium():
    """(argv prefix, env) of a working headless Chromium, or skip saying what was tried."""
    tried = []
    for exe in filter(None, [os.environ.get("ACTDICT_CHROMIUM"), shutil.which("chromium"),
                             shutil.which("chromium-browser"), shutil.which("google-chrome")]):
        tried.append(exe)
        if _works([exe], {}):
            return [exe], {}
    dest = _cache()
    exe = dest / "x/usr/lib/chromium/chromium"
    if not exe.is_file() and shutil.which("apt-get") and shutil.which("dpkg-deb"):
        try:
            _fetch(dest)
        except (subprocess.SubprocessError, OSError) as e:
            tried.append(f"apt-get download into {dest}: {e}")
    if exe.is_file() and _works([str(exe)], _unpacked_env(dest / "x")):
        return [str(exe)], _unpacked_env(dest / "x")
    pytest.skip(f"no headless Chromium could be obtained (tried: {tried or 'nothing on PATH'}, {exe})")


def _works(argv, env) -> bool:
    try:
        return "<html" in _dump(argv, env, "data:text/html,<p>ok</p>")
    except (subprocess.SubprocessError, OSError):
        return False


def _dump(argv, env, url: str, *extra: str) -> str:
    cmd = [*argv, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=4000", *extra,
           "--dump-dom", url]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=os.environ | env)
    return res.stdout


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """run.main on a tiny store whose token strings include the payloads."""
    return _analysed(tmp_path_factory.mktemp("run"), "relu")


def _analysed(path: Path, name: str) -> Path:
    """run.main in ``path`` on a tiny store whose token strings include the payloads; one dictionary,
    ``name``."""
    from actdict.analyze import run
    from actdict.analyze.config import AnalyzeConfig
    from actdict.config import Common
    from actdict.harvest.store import StoreWriter
    from actdict.train.protocol import Dictionary, Forward

    class ReluLinear(Dictionary):
        variant = "test_relu_linear"

        def __init__(self, d, k, W):
            super().__init__(d, k)
            self.register_buffer("W", torch.as_tensor(W))

        def forward(self, x, sample=True):
            z = torch.relu(x @ self.W)
            return Forward(z @ self.W.T, z, z.abs().log(), {})

        def decode(self, codes):
            return codes @ self.W.T

    g = np.random.default_rng(2)
    n, d, k = 256, 4, 6
    acts = g.standard_normal((n, d)).astype(np.float32)
    W = g.standard_normal((d, k)).astype(np.float32)
    with StoreWriter(str(path / "store"), {"hook": "h"}, d, "float32", 64, 32) as w:
        w.append(acts, np.arange(n), np.arange(n) // 16, np.arange(n) % 16)
    (path / "split.json").write_text(json.dumps({"train_chunks": [0, 1, 2, 3], "test_chunks": [4, 5, 6, 7]}))

    def decoder(ids):
        return [PAYLOAD_SCRIPT if i % 3 == 0 else PAYLOAD_IMG if i % 3 == 1 else f" w{i}" for i in ids]

    mp = pytest.MonkeyPatch()
    mp.setattr(run, "load_models", lambda *a: {name: ReluLinear(d, k, W)})
    mp.setattr(run, "resolve_decoder", lambda m: decoder)
    run.main(Common(run_dir=str(path)), AnalyzeConfig(n_features=3, top_k=4, context=3, device="cpu"))
    mp.undo()
    return path


def test_overview_renders_and_runs_nothing(chromium, run):
    s = json.loads((run / "summary.json").read_text())
    dom = _dump(*chromium, (run / "report.html").as_uri())
    assert 'class="main-svg"' in dom  # plotly's script ran and drew the figures
    table = dom[dom.index('id="overview"'):]
    for key in ("re_det", "ad", "l0", "ev"):
        assert f"<td>{s['models']['relu'][key]:.4g}</td>" in table[: table.index("</table>")], key
    assert "&lt;script&gt;document.body.setAttribute" in dom  # shown as text ...
    assert "data-pwned=" not in dom and '<img src="x"' not in dom  # ... and never run


_PROBE = """<script>window.addEventListener("load", () => setTimeout(() => {
  const cells = [...document.querySelectorAll(".figs > div")];
  document.body.setAttribute("data-fit", cells.map(c => Math.round(
    c.querySelector("svg.main-svg").getBoundingClientRect().width) + "/" + c.clientWidth).join(","));
}, 500));</script>"""


def test_overview_links_open_the_feature_page_of_an_odd_name(chromium, tmp_path):
    """A dictionary name with a space, '#', '%' and non-ASCII: the overview's link, followed as a browser
    follows it, opens its feature page, and the page loads its parts (the contexts render)."""
    from urllib.parse import urljoin

    run_dir = _analysed(tmp_path, "sae l1 #2 50% é")
    overview = (run_dir / "report.html").read_text()
    href = html.unescape(re.search(r'<a href="(report/[^"]+)">features', overview).group(1))
    dom = _dump(*chromium, urljoin((run_dir / "report.html").as_uri(), href) + "#f=0")
    assert "<h2>Feature 0</h2>" in dom and dom.count('class="ctx"') >= 3  # contexts: from its parts


def test_figures_fit_their_grid_cells(chromium, run):
    """On a wide window the figures sit two per row, each drawn at its cell's width (the first one used to
    be drawn before its neighbours existed, at the full width, and was cut off at the cell's edge)."""
    probe = run / "report_probe.html"
    probe.write_text((run / "report.html").read_text().replace("</body>", _PROBE + "</body>"))
    dom = _dump(*chromium, probe.as_uri(), "--window-size=1300,900")
    fit = [tuple(map(int, p.split("/"))) for p in dom.split('data-fit="')[1].split('"')[0].split(",")]
    assert len(fit) == 3 and all(400 < cell < 700 for _, cell in fit)  # two columns
    assert all(svg <= cell for svg, cell in fit), fit


_TITLE_PROBE = """<script>window.addEventListener("load", () => setTimeout(() => {
  const boxes = [...document.querySelectorAll(".figs > div")].map(c => [".modebar", ".gtitle"].map(s => {
    const r = c.querySelector(s).getBoundingClientRect();
    return [r.left, r.top, r.right, r.bottom].map(Math.round).join(" ");
  }).join("/"));
  document.body.setAttribute("data-boxes", boxes.join(";"));
}, 500));</script>"""


def test_the_mode_bar_does_not_cover_a_figure_title(chromium, run):
    """plotly's mode bar (shown on hover at a figure's top right) lies above each title, not over it: the
    masked curve's title ran under it in a 1300 px window (title to x 415, mode bar from x 341)."""
    probe = run / "report_titles.html"
    probe.write_text((run / "report.html").read_text().replace("</body>", _TITLE_PROBE + "</body>"))
    dom = _dump(*chromium, probe.as_uri(), "--window-size=1300,900")
    boxes = dom.split('data-boxes="')[1].split('"')[0]
    figs = [[list(map(int, b.split())) for b in f.split("/")] for f in boxes.split(";")]
    assert len(figs) == 3
    for (ml, mt, mr, mb), (tl, tt, tr, tb) in figs:
        assert tr > tl and mr > ml  # both drawn
        assert mb <= tt or tr <= ml, ((ml, mt, mr, mb), (tl, tt, tr, tb))  # above the title or right of it


_WIDTH_PROBE = """<script>window.addEventListener("load", () => setTimeout(() => {
  const de = document.documentElement;
  document.body.setAttribute("data-width", de.scrollWidth + "/" + de.clientWidth);
}, 500));</script>"""


def test_overview_table_scrolls_on_its_own_in_a_narrow_window(chromium, run):
    """On a narrow window (800 px) the overview's wide table scrolls inside its own box: the page itself gets
    no horizontal scroll bar (the table ran past the right edge, its last columns and links cut off)."""
    probe = run / "report_width.html"
    probe.write_text((run / "report.html").read_text().replace("</body>", _WIDTH_PROBE + "</body>"))
    dom = _dump(*chromium, probe.as_uri(), "--window-size=800,700")
    scroll, width = map(int, dom.split('data-width="')[1].split('"')[0].split("/"))
    assert scroll == width, (scroll, width)


def test_a_long_unbroken_context_does_not_widen_the_overview(chromium, tmp_path):
    """A context with a long unbroken string (a URL, base64; here a 300-character text of an embedded row
    and a 300-character token) breaks inside the overview's width: the page gets no horizontal scroll bar
    (the feature page already broke such strings)."""
    from actdict.analyze.report import render

    long = "https://example.org/" + "a" * 280
    hits = [{"act": 2.0, "row": 7, "doc": 3, "pos": 1, "token_id": -1, "text": long},
            {"act": 1.0, "row": 8, "doc": 3, "pos": 2, "token": long, "before": ["x"], "after": ["y"]}]
    model = {"variant": "sae_l1", "k": 1, "features": [{"index": 0, "density": 0.5, "top": hits}]}
    page = tmp_path / "report.html"
    page.write_text(render({"models": {"e": model}}).replace("</body>", _WIDTH_PROBE + "</body>"))
    dom = _dump(*chromium, page.as_uri(), "--window-size=800,700")
    scroll, width = map(int, dom.split('data-width="')[1].split('"')[0].split("/"))
    assert scroll == width, (scroll, width)


def test_feature_page_renders_contexts_and_runs_nothing(chromium, run):
    feats = json.loads((run / "features/relu.json").read_text())
    f = max(feats["features"], key=lambda r: r["fires"])
    dom = _dump(*chromium, (run / "report/relu.html").as_uri() + f"#f={f['i']}")
    assert f"<h2>Feature {f['i']}</h2>" in dom  # rendered by the page's script from the embedded JSON
    assert dom.count('class="ctx"') >= len(f["top"]) + sum(len(q["hits"]) for q in f["quantiles"])
    assert dom.count(" data-i=") == len(feats["features"])  # the feature list
    assert f'<tr class="sel" data-i="{f["i"]}">' in dom
    assert 'class="main-svg"' in dom  # the activation histogram (plotly.min.js loaded from report/)
    assert '<span class="hl">&lt;script&gt;' in dom or '<span class="hl">&lt;img' in dom
    assert "data-pwned=" not in dom and '<img src="x"' not in dom


def test_detector_sees_an_unsafe_page(chromium, tmp_path):
    """Control: the same payloads inserted with innerHTML do run, so the checks above can fail."""
    page = tmp_path / "unsafe.html"
    payload = json.dumps(PAYLOAD_IMG)
    page.write_text(f"<html><body><div id=a></div><script>document.getElementById('a').innerHTML = {payload};"
                    "</script></body></html>")
    assert 'data-pwned="img"' in _dump(*chromium, page.as_uri())


def test_dead_feature_says_so_instead_of_showing_top_activations(chromium, tmp_path):
    """A dead latent (never active; a VAE's gated codes are then tiny but nonzero) is not presented as having
    top activations or an (empty) histogram: the page says it is dead and labels its largest codes as those of
    inactive rows; a live feature next to it renders as before. Tiny codes are printed as 1.715e-6."""
    from actdict.analyze.report_features import write_feature_page

    hit = [1.7147e-06, 5, 0, 5, [1, 2, 3], 1]
    live = {"i": 0, "fires": 3, "density": 0.3, "max": 2.0, "min": 0.5, "hist": {"pos": [[32, 3]], "neg": []},
            "top": [[2.0, 1, 0, 1, [1, 2], 1]], "bottom": [], "quantiles": []}
    dead = {"i": 1, "fires": 0, "density": 0.0, "max": 1.7147e-06, "min": -5.04e-07,
            "hist": {"pos": [], "neg": []}, "top": [hit], "bottom": [[-5.04e-07, 6, 0, 6, [2, 3], 0]],
            "quantiles": []}
    data = {"version": 1, "name": "v", "k": 2, "n_rows": 10, "window": 2, "hist_edges": list(range(-4, 5)),
            "tokens": {"1": "a", "2": "b", "3": "c"}, "wordpiece": False, "features": [live, dead]}
    page = write_feature_page(data, "v", {"variant": "vaease"}, {"hook": "h"}, tmp_path / "report" / "v.html")
    dom = _dump(*chromium, page.as_uri() + "#f=1")
    panel = dom[dom.index('id="panel"'):dom.index('<script type="application/json"')]  # not the script
    assert "<h2>Feature 1</h2>" in panel and "dead latent: never active on the test rows" in panel
    assert "Top activations" not in panel and "main-svg" not in panel  # no top section, no empty plot
    assert "<h3>Largest codes (inactive rows)</h3>" in panel
    assert "<h3>Most negative codes (inactive rows)</h3>" in panel
    assert '<span class="act">1.715e-6</span>' in panel and '<span class="act">-5.04e-7</span>' in panel
    dom = _dump(*chromium, page.as_uri() + "#f=0")
    panel = dom[dom.index('id="panel"'):dom.index('<script type="application/json"')]  # not the script
    assert "<h3>Top activations</h3>" in panel and "main-svg" in panel and "dead latent" not in panel


def test_embedded_rows_show_their_text(chromium, tmp_path):
    """Rows of an embeddings store (no tokens: token id -1) show the text they embed, with doc and pos, and a
    payload in that text is shown, not run; a row without its text still shows where it is."""
    from actdict.analyze.report_features import write_feature_page

    f = {"i": 0, "fires": 2, "density": 0.5, "max": 2.0, "min": 0.5, "hist": {"pos": [[32, 2]], "neg": []},
         "top": [[2.0, 7, 3, 1, [-1], 0], [1.5, 9, 4, 0, [-1], 0]], "bottom": [], "quantiles": []}
    data = {"version": 1, "name": "e", "k": 1, "n_rows": 4, "window": 0, "hist_edges": list(range(-4, 5)),
            "tokens": {"-1": ""}, "wordpiece": False, "features": [f],
            "texts": {"7": "A quiet harbor at dawn. " + PAYLOAD_IMG}}
    page = write_feature_page(data, "e", {"variant": "sae_l1"}, {"hook": "embedding"}, tmp_path / "e.html")
    dom = _dump(*chromium, page.as_uri() + "#f=0")
    panel = dom[dom.index('id="panel"'):dom.index('<script type="application/json"')]
    assert ('<div class="ctx txt" title="row 7, doc 3, pos 1"><span class="act">2</span><span>A quiet harbor '
            'at dawn. &lt;img src=x onerror=') in panel
    assert '<span class="where">doc 3, pos 1</span>' in panel
    assert "the text of each row (doc: its document" in panel
    assert '<span class="act">1.5</span><span class="where">doc 4, pos 0</span>' in panel  # no text: where
    # the list: the start of the top texts, cut with an ellipsis, under a heading that says texts
    assert '<th class="lab">top texts</th>' in dom
    assert '<td class="lab">A quiet harbor at dawn. \u2026</td>' in dom
    assert '<span id="qlabel">top text</span>' in dom
    assert "data-pwned=" not in dom and '<img src="x"' not in dom


_BIDI_PROBE = """<script>window.addEventListener("load", () => setTimeout(() => {
  const order = [...document.querySelectorAll("#panel .ctx, .feature .ctx")].map(ctx => {
    const [text, where] = [...ctx.querySelectorAll(".act ~ span")].map(s => s.getBoundingClientRect());
    return where.left >= text.right - 1 ? "ltr" : "reversed";
  });
  document.body.setAttribute("data-order", order.join(","));
}, 500));</script>"""


def test_a_bidi_control_in_a_text_does_not_reorder_the_line(chromium, tmp_path):
    """A corpus text whose right-to-left override (U+202E) is not closed (a text clipped between it and its
    U+202C, as analyze clips texts) reverses only itself: its "doc, pos" label stays after it, on its right,
    in the feature page and in the overview (the override ran on to the end of the line)."""
    from actdict.analyze.report import render
    from actdict.analyze.report_features import write_feature_page

    text = "evil \u202edoc 1, pos 2 tail"
    f = {"i": 0, "fires": 1, "density": 0.5, "max": 2.0, "min": 0.5, "hist": {"pos": [[32, 1]], "neg": []},
         "top": [[2.0, 7, 3, 1, [-1], 0]], "bottom": [], "quantiles": []}
    data = {"version": 1, "name": "e", "k": 1, "n_rows": 2, "window": 0, "hist_edges": list(range(-4, 5)),
            "tokens": {"-1": ""}, "wordpiece": False, "features": [f], "texts": {"7": text}}
    page = write_feature_page(data, "e", {"variant": "sae_l1"}, {"hook": "embedding"}, tmp_path / "e.html")
    page.write_text(page.read_text().replace("</body>", _BIDI_PROBE + "</body>"))
    assert 'data-order="ltr"' in _dump(*chromium, page.as_uri() + "#f=0")
    hit = {"act": 2.0, "row": 7, "doc": 3, "pos": 1, "token_id": -1, "text": text}
    model = {"variant": "sae_l1", "k": 1, "features": [{"index": 0, "density": 0.5, "top": [hit]}]}
    overview = tmp_path / "report.html"
    overview.write_text(render({"models": {"e": model}}).replace("</body>", _BIDI_PROBE + "</body>"))
    assert 'data-order="ltr"' in _dump(*chromium, overview.as_uri())


def test_a_store_of_vectors_speaks_of_no_tokens(chromium, tmp_path):
    """A store of vectors (imported, or embeddings whose texts could not be read: token id -1 on every row,
    analyze.context 0) gets no "up to 0 tokens of context" heading, no empty top-tokens column and no
    top-token search; its rows are shown by doc and pos. A token store analysed with context 0 keeps its
    column and says only that the row's token is highlighted."""
    from actdict.analyze.report_features import page_index, write_feature_page

    f = {"i": 0, "fires": 2, "density": 0.5, "max": 2.0, "min": 0.5, "hist": {"pos": [[32, 2]], "neg": []},
         "top": [[2.0, 7, 7, 0, [-1], 0], [1.5, 9, 9, 0, [-1], 0]], "bottom": [], "quantiles": []}
    data = {"version": 1, "name": "vec", "k": 1, "n_rows": 4, "window": 0, "hist_edges": list(range(-4, 5)),
            "tokens": {"-1": ""}, "wordpiece": False, "features": [f]}
    assert page_index(data)["has_tokens"] is False and page_index(data)["has_texts"] is False
    page = write_feature_page(data, "vec", {"variant": "sae_l1"}, {"hook": "vectors"}, tmp_path / "vec.html")
    dom = _dump(*chromium, page.as_uri() + "#f=0")
    panel = dom[dom.index('id="panel"'):dom.index('<script type="application/json"')]
    assert "<h3>Top activations</h3>" in panel and '<span class="where">doc 7, pos 0</span>' in panel
    assert "tokens of context" not in panel and "highlighted" not in panel
    assert '<th class="lab">' not in dom and '<td class="lab">' not in dom  # no top-tokens column
    assert "<th>feature</th><th>density</th><th>max</th></tr>" in dom and dom.count(" data-i=") == 1
    assert '<div id="qbox" hidden="">' in dom  # no top-token search
    tokens = data | {"tokens": {"3": "harbor"}, "features": [f | {"top": [[2.0, 7, 1, 4, [3], 0]]}]}
    assert page_index(tokens)["has_tokens"] is True
    page = write_feature_page(tokens, "tok", {"variant": "sae_l1"}, {"hook": "h"}, tmp_path / "tok.html")
    dom = _dump(*chromium, page.as_uri() + "#f=0")
    assert '<p class="note">highlighted: the token of the row</p>' in dom
    assert '<th class="lab">top tokens</th>' in dom and '<td class="lab">harbor</td>' in dom
    assert '<div id="qbox">' in dom


_HIST_PROBE = """<script>window.addEventListener("load", () => setTimeout(() => {
  const svg = document.querySelector("#hist svg.main-svg"), panel = document.getElementById("panel");
  document.body.setAttribute("data-hist", Math.round(svg.getBoundingClientRect().width) + "/" +
                             panel.clientWidth + "/" + panel.scrollWidth);
}, 500));</script>"""


def test_feature_histogram_fits_a_narrow_panel(chromium, run):
    """On a narrow window the activation histogram is drawn at the panel's width (it was drawn before being
    put in the page, at plotly's default 700 px, and was cut off, with a horizontal scroll bar), and no
    context line overflows the panel (the fixture's tokens are long unbroken payload strings)."""
    feats = json.loads((run / "features/relu.json").read_text())
    f = max(feats["features"], key=lambda r: r["fires"])
    probe = run / "report" / "relu_probe.html"
    probe.write_text((run / "report/relu.html").read_text().replace("</body>", _HIST_PROBE + "</body>"))
    dom = _dump(*chromium, probe.as_uri() + f"#f={f['i']}", "--window-size=800,700")
    svg, width, scroll = map(int, dom.split('data-hist="')[1].split('"')[0].split("/"))
    assert 300 < width < 500 and svg <= width and scroll == width, (svg, width, scroll)


_SIDE_PROBE = """<script>window.addEventListener("load", () => setTimeout(() => {
  const side = document.getElementById("side"), lab = document.querySelector("#list td.lab");
  document.body.setAttribute("data-side", [side.scrollWidth, side.clientWidth, lab.scrollWidth,
    lab.clientWidth, Math.round(lab.getBoundingClientRect().right)].join("/"));
}, 500));</script>"""


def test_feature_list_fits_a_narrow_side_panel(chromium, run):
    """On a narrow window the feature list fits its side panel: the top-tokens column takes the width left
    and ends its long labels with an ellipsis (they were cut at the panel's edge, which scrolled sideways)."""
    probe = run / "report" / "relu_side.html"
    probe.write_text((run / "report/relu.html").read_text().replace("</body>", _SIDE_PROBE + "</body>"))
    dom = _dump(*chromium, probe.as_uri(), "--window-size=800,700")
    got = dom.split('data-side="')[1].split('"')[0]
    scroll, width, lab_scroll, lab_width, lab_right = map(int, got.split("/"))
    assert scroll == width and lab_right <= width, (scroll, width, lab_right)
    assert lab_scroll > lab_width > 40  # a payload label, clipped with an ellipsis but not to nothing


_WRAP_PROBE = """<script>window.addEventListener("load", () => setTimeout(() => {
  let lines = 0, under = 0;  // wrapped context lines; fragments of context left of the code column
  for (const ctx of document.querySelectorAll(".ctx")) {
    const right = ctx.querySelector(".act").getBoundingClientRect().right;
    const rects = [...ctx.querySelectorAll(".act ~ span")].flatMap(s => [...s.getClientRects()]);
    lines += new Set(rects.map(r => Math.round(r.top))).size > 1;
    under += rects.filter(r => r.width > 0 && r.left < right - 1).length;
  }
  document.body.setAttribute("data-wrap", lines + "/" + under);
}, 500));</script>"""


@pytest.mark.parametrize("page", ["report.html", "report/relu.html"])
def test_a_wrapped_context_continues_right_of_its_code(chromium, run, page):
    """On a narrow window a context longer than a line wraps under its own start, right of the column of
    codes (its second line used to start at the left edge, under the code, breaking the column)."""
    probe = run / page.replace(".html", "_wrap.html")
    probe.write_text((run / page).read_text().replace("</body>", _WRAP_PROBE + "</body>"))
    feats = json.loads((run / "features/relu.json").read_text())
    f = max(feats["features"], key=lambda r: r["fires"])
    dom = _dump(*chromium, probe.as_uri() + f"#f={f['i']}", "--window-size=800,700")
    lines, under = map(int, dom.split('data-wrap="')[1].split('"')[0].split("/"))
    assert lines >= 2 and under == 0, (lines, under)


_QUERY_PROBE = """<script>window.addEventListener("load", () => setTimeout(() => {
  const q = document.getElementById("q");
  q.value = "COMP";
  q.dispatchEvent(new Event("input"));
  document.body.setAttribute("data-found", [...document.querySelectorAll("#list tr[data-i]")]
    .map(tr => tr.dataset.i).join(","));
}, 300));</script>"""


def test_feature_list_shows_and_searches_top_tokens(chromium, tmp_path):
    """The feature list shows each live feature's first distinct top tokens, and the "top token" box keeps
    the features whose top tokens contain the query (case-insensitive); a dead latent has no label (its
    largest codes are on inactive rows) and is not found."""
    from actdict.analyze.report_features import write_feature_page

    def feature(i, fires, top):
        return {"i": i, "fires": fires, "density": fires / 10, "max": 2.0, "min": 0.0,
                "hist": {"pos": [[32, fires]] if fires else [], "neg": []}, "top": top, "bottom": [],
                "quantiles": []}

    tops = {0: [[3.0, 1, 0, 1, [1, 2], 1], [2.0, 2, 0, 2, [2, 3], 1], [1.0, 3, 0, 3, [4, 2], 1]],
            1: [[2.0, 4, 0, 4, [1, 5], 1]], 2: [[1e-6, 5, 0, 5, [1, 2], 1]]}
    data = {"version": 1, "name": "v", "k": 3, "n_rows": 10, "window": 1, "hist_edges": list(range(-4, 5)),
            "tokens": {"1": "the", "2": "computer", "3": "computers", "4": "a", "5": "harbor"},
            "wordpiece": False, "features": [feature(i, fires, tops[i]) for i, fires in enumerate([3, 2, 0])]}
    page = write_feature_page(data, "v", {"variant": "vaease"}, {"hook": "h"}, tmp_path / "r" / "v.html")
    dom = _dump(*chromium, page.as_uri())
    assert '<th class="lab">top tokens</th>' in dom
    assert '<td>#0</td><td>0.3</td><td>2</td><td class="lab">computer, computers</td></tr>' in dom
    assert '<td class="lab">harbor</td>' in dom
    assert '<td>#2</td><td>0</td><td>2</td><td class="lab"></td>' in dom  # dead: no label
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace("</body>", _QUERY_PROBE + "</body>"))
    assert 'data-found="0"' in _dump(*chromium, probe.as_uri())


def test_fires_with_lists_partners_with_their_tokens_and_shares(chromium, tmp_path):
    """A feature's ``fires_with`` (analyze/cofire.py) renders as a table: each partner linked to its own
    page, its top tokens, and the rows both fire on as a share of each one's fires."""
    from actdict.analyze.report_features import write_feature_page

    def feature(i, fires, top, withs=None):
        f = {"i": i, "fires": fires, "density": fires / 10, "max": 2.0, "min": 0.0,
             "hist": {"pos": [[32, fires]], "neg": []}, "top": top, "bottom": [], "quantiles": []}
        return f | ({"fires_with": withs} if withs else {})

    tops = [[[3.0, 1, 0, 1, [1, 2], 1]], [[2.0, 4, 0, 4, [1, 5], 1]], [[2.0, 5, 0, 5, [3, 4], 0]]]
    data = {"version": 1, "name": "v", "k": 3, "n_rows": 10, "window": 1, "hist_edges": list(range(-4, 5)),
            "tokens": {"1": "the", "2": "computer", "3": "<b>bold</b>", "4": "a", "5": "harbor"},
            "wordpiece": False,
            "features": [feature(0, 4, tops[0], [[2, 3], [1, 1]]), feature(1, 2, tops[1]),
                         feature(2, 6, tops[2])]}
    page = write_feature_page(data, "v", {"variant": "vaease"}, {"hook": "h"}, tmp_path / "r" / "v.html")
    dom = _dump(*chromium, page.as_uri() + "#f=0")
    table = dom[dom.index('<table class="with">'):]
    table = table[:table.index("</table>")]
    assert table.count('<a href="#f=') == 2 and table.index('#f=2') < table.index('#f=1')
    assert '<td>&lt;b&gt;bold&lt;/b&gt;</td><td class="num">75%</td><td class="num">50%</td>' in table
    assert '<td>harbor</td><td class="num">25%</td><td class="num">50%</td>' in table
    assert "<b>bold" not in dom
    assert '<table class="with">' not in _dump(*chromium, page.as_uri() + "#f=1")  # none listed: no table


def test_fires_with_of_an_embeddings_run_heads_its_column_texts(chromium, tmp_path):
    """The partners' labels of an embeddings run are the first words of their top texts (as the list's
    'top texts' column): the table's heading said 'its top tokens'."""
    from actdict.analyze.report_features import write_feature_page

    feats = [{"i": i, "fires": 2, "density": 0.5, "max": 2.0, "min": 0.5, "hist": {"pos": [[32, 2]]},
              "top": [[2.0, 7 + i, 3, 1, [-1], 0]], "bottom": [], "quantiles": [], "fires_with": [[1 - i, 1]]}
             for i in range(2)]
    for f in feats:
        f["hist"]["neg"] = []
    data = {"version": 1, "name": "e", "k": 2, "n_rows": 4, "window": 0, "hist_edges": list(range(-4, 5)),
            "tokens": {"-1": ""}, "wordpiece": False, "features": feats,
            "texts": {"7": "A quiet harbor at dawn.", "8": "Kernel panics at boot."}}
    page = write_feature_page(data, "e", {"variant": "sae_l1"}, {"hook": "embedding"}, tmp_path / "e.html")
    dom = _dump(*chromium, page.as_uri() + "#f=0")
    table = dom[dom.index('<table class="with">'):]
    table = table[:table.index("</table>")]
    assert "<th>its top texts</th>" in table and "tokens" not in table and "Kernel panics at boot." in table


def test_the_highlight_leaves_the_token_s_leading_space_outside(chromium, tmp_path):
    """A context's highlighted span holds its token without the space before it (WordPiece words are shown
    as " word", BPE tokens carry their space): the blank sits in the context before it; a token that is
    only a space stays highlighted."""
    from actdict.analyze.report_features import write_feature_page

    f = {"i": 0, "fires": 2, "density": 0.5, "max": 2.0, "min": 0.0, "hist": {"pos": [[32, 2]], "neg": []},
         "top": [[2.0, 1, 0, 1, [1, 2, 3], 1], [1.0, 2, 0, 2, [1, 4, 3], 1]], "bottom": [], "quantiles": []}
    data = {"version": 1, "name": "v", "k": 1, "n_rows": 4, "window": 1, "hist_edges": list(range(-4, 5)),
            "tokens": {"1": "shards", "2": " of", "3": " the", "4": " "}, "wordpiece": False, "features": [f]}
    page = write_feature_page(data, "v", {"variant": "sae_l1"}, {"hook": "h"}, tmp_path / "v.html")
    dom = _dump(*chromium, page.as_uri() + "#f=0")
    assert '<span class="dim">shards </span><span class="hl">of</span><span class="dim"> the</span>' in dom
    assert '<span class="dim">shards</span><span class="hl"> </span><span class="dim"> the</span>' in dom


def _many_features(n: int) -> dict:
    """A features file of n live features; feature i's top context is tokens (i, 10**6 + i)."""
    feats = [{"i": i, "fires": 1 + i % 7, "density": (1 + i % 7) / 100, "max": 1.0 + i, "min": 0.0,
              "hist": {"pos": [[32, 1 + i % 7]], "neg": []}, "top": [[1.0 + i, i, 0, i, [i, 10**6 + i], 1]],
              "bottom": [], "quantiles": [{"lo": 0.0, "hi": 1.0, "vmin": 1.0, "vmax": 1.0 + i,
                                           "hits": [[1.0, 5000 + i, 1, 2, [7, 2 * 10**6 + i], 1]]}]}
             for i in range(n)]
    tokens = {str(t): f"tok{t}" for f in feats for h in [*f["top"], *f["quantiles"][0]["hits"]] for t in h[4]}
    return {"version": 1, "name": "big", "k": n, "n_rows": 100, "window": 1, "hist_edges": list(range(-4, 5)),
            "tokens": tokens, "wordpiece": False, "features": feats}


_SEL_PROBE = """<script>window.addEventListener("load", () => setTimeout(() => {
  const side = document.getElementById("side").getBoundingClientRect();
  const sel = document.querySelector("#list tr.sel").getBoundingClientRect();
  document.body.setAttribute("data-sel", (sel.top >= side.top && sel.bottom <= side.bottom) + "/" +
                             document.getElementById("side").scrollTop);
}, 500));</script>"""


def test_the_list_shows_the_feature_opened(chromium, tmp_path):
    """A feature opened by its link (#f=N, from the overview) whose row is far down the list is scrolled into
    the side panel's view, marked as selected (it was listed, but out of sight)."""
    from actdict.analyze.report_features import write_feature_page

    data = _many_features(150)
    for f in data["features"]:
        f["fires"] = 200 - f["i"]  # the list's default order (most active first) is the index order
    page = write_feature_page(data, "big", {"variant": "sae_l1"}, {"hook": "h"}, tmp_path / "big.html")
    page.write_text(page.read_text().replace("</body>", _SEL_PROBE + "</body>"))
    dom = _dump(*chromium, page.as_uri() + "#f=140", "--window-size=1000,700")
    assert '<tr class="sel" data-i="140">' in dom
    visible, top = dom.split('data-sel="')[1].split('"')[0].split("/")
    assert visible == "true" and int(top) > 0, (visible, top)


def test_a_feature_beyond_the_listed_rows_is_listed_after_a_gap(chromium, tmp_path):
    """A feature opened by its link whose place in the list's order is past the rows listed (200, then "more")
    is listed after a gap row, selected, with its place; the number box names it. It was not listed at all,
    and the box kept what was typed last."""
    from actdict.analyze.report_features import write_feature_page

    data = _many_features(300)
    for f in data["features"]:
        f["fires"] = 400 - f["i"]  # the list's default order (most active first) is the index order
    page = write_feature_page(data, "big", {"variant": "sae_l1"}, {"hook": "h"}, tmp_path / "big.html")
    probe = """<script>window.addEventListener("load", () => setTimeout(() => document.body.setAttribute(
      "data-go", document.getElementById("go").value), 500));</script>"""
    page.write_text(page.read_text().replace("</body>", probe + "</body>"))
    dom = _dump(*chromium, page.as_uri() + "#f=280", "--window-size=1000,700")
    rows = re.findall(r'<tr[^>]*data-i="(\d+)"', dom)
    assert rows == [str(i) for i in range(200)] + ["280"]
    assert re.search(r'<tr class="sel" data-i="280" title="number 281 of 300 in this order">', dom)
    assert '<td colspan="4">\u22ee</td>' in dom and 'data-go="280"' in dom


def test_feature_page_loads_the_part_of_the_feature_shown(chromium, tmp_path):
    """The page embeds only the list's index; a feature's contexts come from its part file beside the page,
    loaded when the feature is shown (here one in the third part); without the parts the page says which
    file it lacks instead of failing silently."""
    from actdict.analyze.report_features import PART, write_feature_page

    n = 2 * PART + 88
    page = write_feature_page(_many_features(n), "big", {"variant": "sae_l1"}, {"hook": "h"},
                              tmp_path / "report" / "big.html")
    parts = sorted((tmp_path / "report" / "big.parts").iterdir())
    assert [p.name for p in parts] == ["00000.js", "00001.js", "00002.js"]
    html = page.read_text()
    assert '"quantiles"' not in html and '"hist"' not in html and '"top"' not in html  # no details
    i = 2 * PART + 8
    assert f'"tops":[[{i},{10**6 + i}]]' in html  # the list's label: row and token id of the top hit
    assert f",{i},0,{i},[{i},{10**6 + i}],1]" in parts[2].read_text()  # the top hit, in its part only
    assert f",{i},0,{i},[{i},{10**6 + i}],1]" not in parts[1].read_text()
    dom = _dump(*chromium, page.as_uri() + f"#f={i}")
    panel = dom[dom.index('id="panel"'):dom.index('<script type="application/json"')]
    assert f"<h2>Feature {i}</h2>" in panel
    assert f'<span class="dim">tok{i}</span><span class="hl">tok{10**6 + i}</span>' in panel  # top context
    assert f'<span class="hl">tok{2 * 10**6 + i}</span>' in panel  # its quantile sample
    assert dom.count(" data-i=") == 201  # the list's first page, from the index, and the feature shown
    for p in parts:
        p.unlink()
    dom = _dump(*chromium, page.as_uri() + f"#f={i}")
    assert "its part big.parts/00002.js did not load (the page needs the folder big.parts beside it)" in dom


def test_a_feature_page_of_another_run_than_its_overview_or_its_parts_says_so(chromium, run, tmp_path):
    """The page opened from the overview's link (?run=) of another analysis run, or a part of another run
    than the page's (an analysis stopped part way through the report), shows a banner saying so and to rerun
    actdict analyze, and a part of another run is not shown; of the same run, no banner."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    run_id = json.loads((copy / "summary.json").read_text())["run_id"]
    feats = json.loads((copy / "features/relu.json").read_text())
    f = max(feats["features"], key=lambda r: r["fires"])
    page = (copy / "report/relu.html").as_uri()
    dom = _dump(*chromium, f"{page}?run={run_id}#f={f['i']}")
    assert '<p id="mixed" hidden="">' in dom and f"<h2>Feature {f['i']}</h2>" in dom
    dom = _dump(*chromium, f"{page}?run=20000101-000000-abcdef#f={f['i']}")
    assert (f"This page is of analysis run {run_id}, but the overview that linked here is of run "
            "20000101-000000-abcdef: an analysis was stopped before it rewrote every file of the report. "
            "Rerun actdict analyze.") in dom and f"<h2>Feature {f['i']}</h2>" in dom
    part = copy / "report/relu.parts/00000.js"
    part.write_text(part.read_text().replace(f'"{run_id}");', '"20000101-000000-abcdef");'))
    dom = _dump(*chromium, f"{page}#f={f['i']}")
    assert "but its part relu.parts/00000.js is of run 20000101-000000-abcdef" in dom
    assert f"<p>feature {f['i']}: its part is of another analysis run (see above)</p>" in dom
    assert f"<h2>Feature {f['i']}</h2>" not in dom


def test_a_feature_links_its_nearest_features_in_the_other_pages(chromium, tmp_path):
    """A feature's direct logit effects are listed as tokens (a payload shown as text). Its nearest features
    in the other dictionaries (features file ``nearest``) are links to those features in their pages (a name
    with a space, '#' and a payload: shown as text, the link still opens the page), with the run id; the
    page without ``nearest`` shows no such line."""
    from urllib.parse import urljoin

    from actdict.analyze.report_features import write_feature_page

    def data(name, nearest):
        hit = [2.0, 1, 0, 1, [1, 2], 1]
        feats = [{"i": i, "fires": 2, "density": 0.5, "max": 2.0, "min": 0.5, "bottom": [], "quantiles": [],
                  "hist": {"pos": [[32, 2]], "neg": []}, "top": [hit]} for i in range(2)]
        if nearest:
            feats[0]["nearest"] = nearest
            feats[0]["logits"] = {"up": [[7, 2.5], [1, 1.25]], "down": [[8, -3.0]]}  # analyze.logit_effects
        return {"version": 1, "name": name, "k": 2, "n_rows": 4, "window": 1, "features": feats,
                "hist_edges": list(range(-4, 5)), "wordpiece": False,
                "tokens": {"1": "a", "2": "b", "7": " up" + PAYLOAD_SCRIPT, "8": " down"}}

    other = "b #" + PAYLOAD_IMG
    summary = {"hook": "h", "run_id": "R1"}
    page = write_feature_page(data("a", {other: {"feature": 1, "cos": 0.93125}}), "a", {"variant": "sae_l1"},
                              summary, tmp_path / "report" / "a.html")
    write_feature_page(data(other, {}), other, {"variant": "vaease"}, summary,
                       tmp_path / "report" / f"{other}.html")
    dom = _dump(*chromium, page.as_uri() + "#f=0")
    panel = dom[dom.index('id="panel"'):dom.index('<script type="application/json"')]
    link = re.search(r'nearest by decoder direction: <a href="([^"]+)">([^<]*)</a> \(cos 0\.9313\)', panel)
    assert link and link.group(2) == html.escape(other, quote=False) + " #1"
    assert "data-pwned=" not in dom and '<img src="x"' not in dom
    assert ('raises the logits of: <span class="tok"> up&lt;script&gt;' in panel
            and '</span> 2.5, <span class="tok">a</span> 1.25</p>' in panel)
    assert '<p class="stats">lowers the logits of: <span class="tok"> down</span> -3</p>' in panel
    href = html.unescape(link.group(1))
    assert href.endswith("?run=R1#f=1")
    dom = _dump(*chromium, urljoin(page.as_uri(), href))  # followed as a browser follows it
    panel = dom[dom.index('id="panel"'):dom.index('<script type="application/json"')]
    assert "<h2>Feature 1</h2>" in panel and "nearest by decoder" not in panel
    assert '<p id="mixed" hidden="">' in dom  # the run id passed on matches the page's
