"""The overview report.html in headless Chromium: it renders, runs no payload, fits any window."""

import html
import json
import re

import pytest

from tests import browser
from tests.browser import PAYLOAD_IMG, _analysed, _dump

chromium = browser.chromium  # a fixture: the tests below take it as an argument
run = browser.run  # a fixture: the tests below take it as an argument


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


def test_detector_sees_an_unsafe_page(chromium, tmp_path):
    """Control: the same payloads inserted with innerHTML do run, so the checks above can fail."""
    page = tmp_path / "unsafe.html"
    payload = json.dumps(PAYLOAD_IMG)
    page.write_text(f"<html><body><div id=a></div><script>document.getElementById('a').innerHTML = {payload};"
                    "</script></body></html>")
    assert 'data-pwned="img"' in _dump(*chromium, page.as_uri())


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
