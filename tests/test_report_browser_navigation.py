"""Between feature pages in headless Chromium: the feature opened, its part file, its run, nearest links."""

import html
import json
import re
import shutil

from tests import browser
from tests.browser import PAYLOAD_IMG, PAYLOAD_SCRIPT, _dump

chromium = browser.chromium  # a fixture: the tests below take it as an argument
run = browser.run  # a fixture: the tests below take it as an argument


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
