"""A feature page in headless Chromium: contexts, texts, dead latents, the list and its search, partners."""

import json

from tests import browser
from tests.browser import PAYLOAD_IMG, _dump, _panel

chromium = browser.chromium  # a fixture: the tests below take it as an argument
run = browser.run  # a fixture: the tests below take it as an argument


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
    panel = _panel(*chromium, page.as_uri() + "#f=1")
    assert "<h2>Feature 1</h2>" in panel and "dead latent: never active on the test rows" in panel
    assert "Top activations" not in panel and "main-svg" not in panel  # no top section, no empty plot
    assert "<h3>Largest codes (inactive rows)</h3>" in panel
    assert "<h3>Most negative codes (inactive rows)</h3>" in panel
    assert '<span class="act">1.715e-6</span>' in panel and '<span class="act">-5.04e-7</span>' in panel
    panel = _panel(*chromium, page.as_uri() + "#f=0")
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
    page, its top tokens, the Jaccard similarity it is ordered by (not shown before: the two shares beside
    it looked unordered, 68%/39% above 48%/50%), and the rows both fire on as a share of each one's fires,
    headed by the feature's number ('of these rows' before)."""
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
    assert ("<tr><th>feature</th><th>its top tokens</th><th>Jaccard</th><th>of #0's rows</th>"
            "<th>of its rows</th></tr>") in table
    assert ('<td>&lt;b&gt;bold&lt;/b&gt;</td><td class="num">0.43</td><td class="num">75%</td>'
            '<td class="num">50%</td>') in table  # 3 rows both fire, of 4 and of 6: 3 / 7
    assert '<td>harbor</td><td class="num">0.20</td><td class="num">25%</td><td class="num">50%</td>' in table
    assert "by Jaccard similarity of the rows each is active on, highest first" in dom
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
    assert '<span class="dim">shards</span><span class="hl">\u2423</span><span class="dim"> the</span>' in dom


def test_invisible_characters_in_tokens_are_shown_as_the_report_shows_them(chromium, tmp_path):
    """A tab, a carriage return, a zero-width space and an NBSP showed nothing on the page (a CR's context
    could even break its line), and a label of a CR read as a newline's: each is now shown as
    ``toptokens.visible`` shows it in the report and in the terminal (⇥, ␍, <U+200B>, <U+00A0>), a token
    of spaces alone highlighted and listed as ␣."""
    from actdict.analyze.report_features import write_feature_page

    f = {"i": 0, "fires": 2, "density": 0.5, "max": 2.0, "min": 0.0, "hist": {"pos": [[32, 2]], "neg": []},
         "top": [[2.0, 1, 0, 1, [1, 2, 3, 4, 5, 6], 3], [1.0, 2, 0, 2, [1, 7, 6], 1]], "bottom": [],
         "quantiles": [], "logits": {"up": [[7, 0.5]], "down": [[3, -0.5]]}}
    data = {"version": 1, "name": "v", "k": 1, "n_rows": 4, "window": 2, "hist_edges": list(range(-4, 5)),
            "tokens": {"1": "x", "2": "\t", "3": "\r", "4": "\u200b", "5": " a\xa0b", "6": " y", "7": "  "},
            "wordpiece": False, "features": [f]}
    page = write_feature_page(data, "v", {"variant": "sae_l1"}, {"hook": "h"}, tmp_path / "v.html")
    dom = _dump(*chromium, page.as_uri() + "#f=0")
    assert ('<span class="dim">x\u21e5\u240d</span><span class="hl">&lt;U+200B&gt;</span>'
            '<span class="dim"> a&lt;U+00A0&gt;b y</span>') in dom
    assert '<span class="dim">x</span><span class="hl">\u2423\u2423</span><span class="dim"> y</span>' in dom
    assert '<td class="lab">&lt;U+200B&gt;, \u2423\u2423</td>' in dom  # the list's top tokens
    assert '<span class="tok">\u2423\u2423</span> 0.5' in dom  # the logit effects
    assert '<span class="tok">\u240d</span> -0.5' in dom


def test_a_character_split_over_tokens_reads_as_itself_in_a_pages_context(chromium, tmp_path):
    """GPT-2's '猫' in three tokens (' <0xE7>', '<0x8C>', '<0xAB>'): the context reads ' 猫', as in the
    report (toptokens.context_text); cut by the highlighted token, its bytes stay marks."""
    from actdict.analyze.report_features import write_feature_page

    f = {"i": 0, "fires": 2, "density": 0.5, "max": 2.0, "min": 0.0, "hist": {"pos": [[32, 2]], "neg": []},
         "top": [[2.0, 1, 0, 3, [1, 2, 3, 4, 5, 6, 7, 8], 3], [1.0, 2, 0, 1, [1, 2, 3, 4], 1]], "bottom": [],
         "quantiles": []}
    data = {"version": 1, "name": "v", "k": 1, "n_rows": 4, "window": 4, "hist_edges": list(range(-4, 5)),
            "tokens": {"1": " <0xE7>", "2": "<0x8C>", "3": "<0xAB>", "4": " cat", "5": "<0xE2>",
                       "6": "<0x80>", "7": "<0x8B>", "8": "<0xF0>"}, "wordpiece": False, "features": [f]}
    page = write_feature_page(data, "v", {"variant": "sae_l1"}, {"hook": "h"}, tmp_path / "v.html")
    dom = _dump(*chromium, page.as_uri() + "#f=0")
    assert ('<span class="dim"> \u732b </span><span class="hl">cat</span>'
            '<span class="dim">&lt;U+200B&gt;&lt;0xF0&gt;</span>') in dom
    assert ('<span class="dim"> &lt;0xE7&gt;</span><span class="hl">&lt;0x8C&gt;</span>'
            '<span class="dim">&lt;0xAB&gt; cat</span>') in dom


def test_a_feature_page_shows_its_direction_in_each_snapshot(chromium, tmp_path):
    """With train.snapshot_every, a feature's page says its best cosine among each snapshot's decoder
    columns by step (analysis' formation): about 12 of many, the last always; none without snapshots."""
    from actdict.analyze.report_features import write_feature_page

    f = {"i": 0, "fires": 3, "density": 0.3, "max": 2.0, "min": 0.5, "hist": {"pos": [[32, 3]], "neg": []},
         "top": [[2.0, 1, 0, 1, [1, 2], 1]], "bottom": [], "quantiles": []}
    steps = list(range(10, 260, 10))  # 25 snapshots
    data = {"version": 1, "name": "v", "k": 2, "n_rows": 10, "window": 2, "hist_edges": list(range(-4, 5)),
            "tokens": {"1": "a", "2": "b"}, "wordpiece": False, "formation_steps": steps,
            "features": [f | {"formed": [round(s / 250, 4) for s in steps]}, f | {"i": 1}]}
    page = write_feature_page(data, "v", {"variant": "sae_topk"}, {"hook": "h"}, tmp_path / "v.html")
    panel = _panel(*chromium, page.as_uri() + "#f=0")
    assert ("its direction in the snapshots (best cosine, by step): 10: 0.04, 40: 0.16, 70: 0.28, 100: 0.4, "
            "130: 0.52, 160: 0.64, 190: 0.76, 220: 0.88, 250: 1") in panel
    panel = _panel(*chromium, page.as_uri() + "#f=1")
    assert "<h2>Feature 1</h2>" in panel and "its direction in the snapshots" not in panel


def test_the_snapshots_a_page_shows_are_those_python_chose(chromium, tmp_path):
    """Which snapshots a feature's formation is shown at was computed twice, by the page's script and by
    actdict feature (show.py), each its own 'about 12'; the page now shows those of the indices Python
    embeds (features.shown_snapshots), as actdict feature does."""
    from actdict.analyze.features import shown_snapshots
    from actdict.analyze.report_features import page_index, write_feature_page
    from actdict.analyze.show import feature_lines

    assert [shown_snapshots(n) for n in (1, 2, 12)] == [[0], [0, 1], list(range(12))]
    assert shown_snapshots(14) == [0, 2, 4, 6, 8, 10, 12, 13]
    assert shown_snapshots(1000)[-3:] == [840, 924, 999]  # every 84th, and the last
    f = {"i": 0, "fires": 3, "density": 0.3, "max": 2.0, "min": 0.5, "hist": {"pos": [[32, 3]], "neg": []},
         "top": [[2.0, 1, 0, 1, [1, 2], 1]], "bottom": [], "quantiles": []}
    for n in (14, 37):
        steps = list(range(7, 7 * n + 1, 7))
        formed = [round(j / n, 4) for j in range(n - 1)] + [None]
        data = {"version": 1, "name": "v", "k": 1, "n_rows": 10, "window": 2,
                "hist_edges": list(range(-4, 5)), "tokens": {"1": "a", "2": "b"}, "wordpiece": False,
                "formation_steps": steps,
                "features": [f | {"formed": formed}]}
        assert page_index(data)["formation_shown"] == shown_snapshots(n)
        page = write_feature_page(data, "v", {"variant": "sae_topk"}, {"hook": "h"}, tmp_path / f"{n}.html")
        dom = _dump(*chromium, page.as_uri() + "#f=0")
        said = dom.split("its direction in the snapshots (best cosine, by step): ")[1].split("<")[0]
        at = [int(s.split(":")[0]) for s in said.split(", ")]
        assert at == [steps[j] for j in shown_snapshots(n)]
        assert said.endswith(f"{steps[-1]}: \u2013")  # the last, where it has no direction
        line = next(s for s in feature_lines(data, {}, 0, 1) if "its direction in the snapshots" in s)
        assert [int(s.split(":")[0]) for s in line.split("by step): ")[1].split(", ")] == at


def test_a_feature_whose_top_tokens_are_whitespace_is_labelled_with_visible_marks(chromium, tmp_path):
    """A feature firing on tabs and indents (code, poetry) had an empty label in the feature list: each
    token trimmed to nothing and skipped; it now shows them marked, as actdict feature and lens label them
    (lens.token_label: tab ⇥, space ␣; newlines are ↵ already)."""
    from actdict.analyze.report_features import write_feature_page

    def feature(i, top):
        return {"i": i, "fires": 2, "density": 0.2, "max": 2.0, "min": 0.0, "top": top, "bottom": [],
                "hist": {"pos": [[32, 2]], "neg": []}, "quantiles": []}

    data = {"version": 1, "name": "v", "k": 2, "n_rows": 10, "window": 1, "hist_edges": list(range(-4, 5)),
            "tokens": {"1": "\t", "2": "    ", "3": "\n", "4": " of"}, "wordpiece": False,
            "features": [feature(0, [[3.0, 1, 0, 1, [4, 1], 1], [2.0, 2, 0, 2, [4, 2], 1]]),
                         feature(1, [[3.0, 3, 0, 3, [4, 3], 1], [2.0, 4, 0, 4, [1, 4], 1]])]}
    page = write_feature_page(data, "v", {"variant": "vaease"}, {"hook": "h"}, tmp_path / "r" / "v.html")
    dom = _dump(*chromium, page.as_uri())
    assert '<td class="lab">\u21e5, \u2423\u2423\u2423\u2423</td>' in dom
    assert '<td class="lab">\u21b5, of</td>' in dom


def test_a_pages_parts_carry_only_the_snapshots_it_shows(chromium, tmp_path):
    """The parts beside a page carried every snapshot's cosine of every feature (~8 bytes each, as many
    again as the features file), of which the page shows about 12: they carry those, and the page shows the
    same numbers (the features file keeps them all)."""
    from actdict.analyze.features import shown_snapshots
    from actdict.analyze.report_features import page_parts, write_feature_page

    f = {"i": 0, "fires": 3, "density": 0.3, "max": 2.0, "min": 0.5, "hist": {"pos": [[32, 3]], "neg": []},
         "top": [[2.0, 1, 0, 1, [1, 2], 1]], "bottom": [], "quantiles": []}
    steps = list(range(5, 505, 5))  # 100 snapshots
    formed = [round(-0.2 + s / 400, 4) for s in steps]
    data = {"version": 1, "name": "v", "k": 2, "n_rows": 10, "window": 2, "hist_edges": list(range(-4, 5)),
            "tokens": {"1": "a", "2": "b"}, "wordpiece": False, "formation_steps": steps,
            "features": [f | {"formed": formed}, f | {"i": 1}]}
    kept = page_parts(data)[0]["features"]
    assert kept[0]["formed"] == [formed[j] for j in shown_snapshots(100)] and len(kept[0]["formed"]) == 12
    assert "formed" not in kept[1] and len(data["features"][0]["formed"]) == 100  # data itself untouched
    page = write_feature_page(data, "v", {"variant": "sae_topk"}, {"hook": "h"}, tmp_path / "v.html")
    dom = _dump(*chromium, page.as_uri() + "#f=0")
    assert ("its direction in the snapshots (best cosine, by step): 5: -0.1875, 50: -0.075, 95: 0.0375, "
            "140: 0.15, 185: 0.2625, 230: 0.375, 275: 0.4875, 320: 0.6, 365: 0.7125, 410: 0.825, "
            "455: 0.9375, 500: 1.05<") in dom


def test_a_byte_order_mark_split_over_tokens_is_marked_on_the_page_as_in_the_report(chromium, tmp_path):
    """A BOM (EF BB BF) split over two GPT-2 tokens ('<0xEF><0xBB>', '<0xBF>Hi'): the report reads
    '<U+FEFF>Hi', but the page's TextDecoder dropped a leading BOM as it decoded, so the page read 'Hi'."""
    from actdict.analyze.report_features import write_feature_page
    from actdict.analyze.toptokens import context_text

    tokens = {"1": " x", "2": "<0xEF><0xBB>", "3": "<0xBF>Hi", "4": " y"}
    assert context_text([tokens["2"], tokens["3"]]) == "<U+FEFF>Hi"
    f = {"i": 0, "fires": 1, "density": 0.5, "max": 2.0, "min": 0.0, "hist": {"pos": [[32, 1]], "neg": []},
         "top": [[2.0, 1, 0, 3, [2, 3, 1, 2, 3], 2]], "bottom": [], "quantiles": []}
    data = {"version": 1, "name": "v", "k": 1, "n_rows": 4, "window": 4, "hist_edges": list(range(-4, 5)),
            "tokens": tokens, "wordpiece": False, "features": [f]}
    page = write_feature_page(data, "v", {"variant": "sae_l1"}, {"hook": "h"}, tmp_path / "v.html")
    dom = _dump(*chromium, page.as_uri() + "#f=0")
    assert ('<span class="dim">&lt;U+FEFF&gt;Hi </span><span class="hl">x</span>'
            '<span class="dim">&lt;U+FEFF&gt;Hi</span>') in dom


def test_a_documents_own_byte_marks_read_as_written_on_the_page(chromium, tmp_path):
    """A document's own '<0x0A>' and '<0xC3><0xA9>', each spelled over several tokens, read as written on
    the page, as in the report (test_tokentext; they read as a newline (↵) and 'é'); a split '猫' still reads
    as itself."""
    from actdict.analyze.report_features import write_feature_page

    tokens = {"1": " <", "2": "0x", "3": "0A", "4": ">", "5": "0xC3", "6": "><", "7": "0xA9", "8": " <0xE7>",
              "9": "<0x8C>", "10": "<0xAB>", "11": " cat"}
    f = {"i": 0, "fires": 1, "density": 0.5, "max": 2.0, "min": 0.0, "hist": {"pos": [[32, 1]], "neg": []},
         "top": [[2.0, 1, 0, 9, [1, 2, 3, 4, 1, 5, 6, 7, 4, 11, 8, 9, 10], 9]], "bottom": [], "quantiles": []}
    data = {"version": 1, "name": "v", "k": 1, "n_rows": 4, "window": 13, "hist_edges": list(range(-4, 5)),
            "tokens": tokens, "wordpiece": False, "features": [f]}
    page = write_feature_page(data, "v", {"variant": "sae_l1"}, {"hook": "h"}, tmp_path / "v.html")
    dom = _dump(*chromium, page.as_uri() + "#f=0")
    assert ('<span class="dim"> &lt;0x0A&gt; &lt;0xC3&gt;&lt;0xA9&gt; </span><span class="hl">cat</span>'
            '<span class="dim"> \u732b</span>') in dom


def test_labels_and_highlights_strip_what_the_report_strips(chromium, tmp_path):
    """The page stripped labels and found a token's leading space with JavaScript's trim, which strips a BOM
    and keeps U+0085 and U+001C: '\\ufeffHello' was labelled 'Hello', '\\x85a' '<U+0085>a' and ' \\ufeff'
    highlighted as '␣<U+FEFF>', where the report and the terminal (str.strip) say '<U+FEFF>Hello', 'a' and
    a space before '<U+FEFF>'."""
    from actdict.analyze.report_features import write_feature_page
    from actdict.analyze.report_sections import _snippet
    from actdict.analyze.toptokens import token_label

    tokens = {"1": "\ufeffHello", "2": "\x85a", "3": " \ufeff", "4": " x"}
    assert [token_label(tokens[i]) for i in "312"] == ["\u2423<U+FEFF>", "<U+FEFF>Hello", "a"]
    assert '<span class="dim"> x </span><span class="hl">&lt;U+FEFF&gt;</span>' in _snippet(
        {"act": 1.0, "doc": 0, "pos": 1, "token": " \ufeff", "before": [" x"], "after": []})
    f = {"i": 0, "fires": 3, "density": 0.5, "max": 2.0, "min": 0.0, "hist": {"pos": [[32, 3]], "neg": []},
         "top": [[3.0, 1, 0, 1, [4, 3], 1], [2.0, 2, 0, 0, [1], 0], [1.0, 3, 0, 0, [2], 0]], "bottom": [],
         "quantiles": []}
    data = {"version": 1, "name": "v", "k": 1, "n_rows": 4, "window": 2, "hist_edges": list(range(-4, 5)),
            "tokens": tokens, "wordpiece": False, "features": [f]}
    page = write_feature_page(data, "v", {"variant": "sae_l1"}, {"hook": "h"}, tmp_path / "v.html")
    dom = _dump(*chromium, page.as_uri() + "#f=0")
    assert '<span class="dim"> x </span><span class="hl">&lt;U+FEFF&gt;</span>' in dom
    assert '<td class="lab">\u2423&lt;U+FEFF&gt;, &lt;U+FEFF&gt;Hello, a</td>' in dom


def test_a_wordpiece_continuation_is_labelled_with_its_hashes_on_every_surface(chromium, tmp_path):
    """The feature page labelled a WordPiece continuation '##ing' as 'ing' (its top tokens, the tokens of
    its logit effects: ``display_strings``' form, stripped), where ``actdict lens``, ``compare`` and
    ``actdict feature`` said '##ing': on the page a continuation read as the word 'ing'. A token by itself
    is now its vocabulary string everywhere, and a context still joins it into its word."""
    from actdict.analyze.lens import labels_of
    from actdict.analyze.report_features import write_feature_page
    from actdict.analyze.report_sections import _logit_line
    from actdict.analyze.show import context, feature_lines, list_lines

    f = {"i": 0, "fires": 3, "density": 0.5, "max": 3.0, "min": 0.0, "hist": {"pos": [[32, 3]], "neg": []},
         "top": [[3.0, 1, 0, 1, [1, 2], 1], [2.0, 2, 0, 2, [4, 3], 1], [1.0, 3, 0, 3, [4, 1], 1]],
         "bottom": [], "quantiles": [], "logits": {"up": [[2, 0.5]], "down": [[3, -0.5]]}}
    data = {"version": 1, "name": "v", "k": 1, "n_rows": 4, "window": 1, "hist_edges": list(range(-4, 5)),
            "tokens": {"1": "walk", "2": "##ing", "3": "ing", "4": "the"}, "wordpiece": True, "features": [f]}
    labels = labels_of(data, 3, tmp_path / "v.json")  # lens' and compare's (pair.token_labels)
    assert labels == {0: (["##ing", "ing", "walk"], [])}
    assert list_lines(data, labels, 1)[1].endswith("  ##ing, ing, walk")  # actdict feature --list
    logits = feature_lines(data, labels, 0, 3)[-2:]  # actdict feature's
    assert logits == ["  logits up: '##ing' +0.5", "  logits down: 'ing' -0.5"]
    assert context(data, f["top"][0]).startswith(" walk«ing»")  # in a context: joined into its word
    assert context(data, f["top"][1]).startswith(" the «ing»")
    said = _logit_line({"up": [["##ing", 0.5]], "down": [["ing", -0.5]]})  # the report's
    assert '<span class="tok">##ing</span> 0.5' in said and '<span class="tok">ing</span> -0.5' in said
    page = write_feature_page(data, "v", {"variant": "sae_l1"}, {"hook": "h"}, tmp_path / "v.html")
    dom = _dump(*chromium, page.as_uri() + "#f=0")
    assert '<td class="lab">##ing, ing, walk</td>' in dom
    assert '<span class="tok">##ing</span> 0.5' in dom and '<span class="tok">ing</span> -0.5' in dom
    assert '<span class="dim"> walk</span><span class="hl">ing</span>' in dom  # as actdict feature


def test_a_feature_names_the_classes_it_sets_apart_as_text(chromium, tmp_path):
    """analyze.class_features: a feature listed for classes shows them with d (null: infinite, a perfect
    separator), a label with markup as text; a feature listed for none shows no such line. The classes it
    fires most on say their order (most active rows: on the demo austen's 1,592 of 7,277 rows came before
    bible's 1,355 of 5,271, a larger share, unexplained) and that the mean |code| is over all the class's
    rows (the column beside it counts the active ones)."""
    from actdict.analyze.report_features import write_feature_page

    def feat(i, **extra):
        return {"i": i, "fires": 2, "density": 0.5, "max": 2.0, "min": 0.5, "quantiles": [],
                "hist": {"pos": [[32, 2]], "neg": []}, "top": [[2.0, 1, 0, 1, [1, 2], 1]],
                "bottom": []} | extra

    data = {"version": 1, "name": "c", "k": 2, "n_rows": 4, "window": 1, "hist_edges": list(range(-4, 5)),
            "tokens": {"1": "a", "2": "b"}, "wordpiece": False,
            "features": [feat(0, classes=[["all", None, 1.0, 0.0], ["<img src=x onerror=pwned()>", 1.25,
                                           0.8123, 0.0213], [5, 0.5, 0.6171, 0.001], ["old", 0.25]],
                              by_class=[["<i>x</i>", 40, 30, 1.5], [5, 8, 2, 0.25]]), feat(1)]}
    page = write_feature_page(data, "c", {"variant": "sae_l1"}, {"hook": "h"}, tmp_path / "report" / "c.html")
    panel = _panel(*chromium, page.as_uri() + "#f=0")
    assert ('<p class="stats">sets apart the rows of class all (d \u221e, AUROC 1.00), '
            "&lt;img src=x onerror=pwned()&gt; (d 1.25, AUROC 0.81 \u00b1 0.02), 5 (d 0.5, AUROC 0.62), "
            "old (d 0.25)</p>") in panel  # AUROC's bound where it reaches 0.005; a file of [label, d] too
    assert ('<p class="stats">fires most on the rows of class (most active rows first, not the largest '
            "share; its mean |code| over all the class's rows, active or not):</p>") in panel
    assert ('<tr><th>class</th><th>rows</th><th>active on</th><th>mean |code| (all rows)</th></tr>'
            '<tr><td>&lt;i&gt;x&lt;/i&gt;</td><td class="num">40</td><td class="num">30 (75%)</td>'
            '<td class="num">1.5</td></tr><tr><td>5</td><td class="num">8</td><td class="num">2 (25%)</td>'
            '<td class="num">0.25</td></tr>') in panel
    panel = _panel(*chromium, page.as_uri() + "#f=1")
    assert "<h2>Feature 1</h2>" in panel and "sets apart" not in panel and "fires most" not in panel


_WORD_PROBE = """<script>window.addEventListener("load", () => setTimeout(() => {
  const broken = [...document.querySelectorAll("table.with th")].filter(th => {
    const r = document.createRange();
    r.selectNodeContents(th);
    return !th.textContent.includes(" ") && r.getClientRects().length > 1;
  });
  document.body.setAttribute("data-broken", broken.map(th => th.textContent).join(",") || "none");
}, 1500));</script>"""


def test_a_narrow_panels_table_headings_wrap_between_words_only(chromium, tmp_path):
    """The tables of a feature page's panel broke their headings anywhere, as their cells' long labels must
    break: at 900 px the 'fires with' table read 'featu / re' and 'Jaccar / d'. A heading wraps only between
    its words now; a cell's label still breaks anywhere."""
    from actdict.analyze.report_features import write_feature_page

    feats = [{"i": i, "fires": 4 + i, "density": 0.5, "max": 2.0, "min": 0.5, "hist": {"pos": [[32, 4]],
              "neg": []}, "top": [[2.0, i, 0, 1, [1, 2], 1]], "bottom": [], "quantiles": [],
              "fires_with": [[1 - i, 2]], "by_class": [["jargon", 40, 30, 1.5]]} for i in range(2)]
    data = {"version": 1, "name": "v", "k": 2, "n_rows": 10, "window": 1, "hist_edges": list(range(-4, 5)),
            "tokens": {"1": "a", "2": "hardware" * 8}, "wordpiece": False, "features": feats}
    page = write_feature_page(data, "v", {"variant": "vaease"}, {"hook": "h"}, tmp_path / "r" / "v.html")
    page.write_text(page.read_text().replace("</body>", _WORD_PROBE + "</body>"))
    dom = _dump(*chromium, page.as_uri() + "#f=0", "--window-size=700,700")
    assert 'data-broken="none"' in dom and "<th>Jaccard</th>" in dom and "<th>class</th>" in dom


def test_the_quantile_sections_say_they_are_groups_of_a_random_sample(chromium, tmp_path):
    """The quantile sections are a random sample of the active rows (analyze.quantiles x quantile_samples),
    sorted and cut into equal groups; each heading read 'Quantile 80-100% of active rows (codes 1.919 ..
    3.232)' on the demo's vaease #141, whose top code is 4.813: a quantile of every active row with those
    bounds, which it is not. The headings say 'of the sampled rows', and a note above the first says how
    many rows were drawn of how many and that the codes are the group's own range."""
    from actdict.analyze.report_features import write_feature_page

    def hit(v, row):
        return [v, row, 0, row, [1, 2], 1]

    f = {"i": 0, "fires": 50, "density": 0.5, "max": 5.0, "min": 0.1, "hist": {"pos": [[32, 50]], "neg": []},
         "top": [hit(5.0, 1)], "bottom": [], "quantiles": [
             {"lo": 0.5, "hi": 1.0, "vmin": 1.5, "vmax": 2.0, "hits": [hit(2.0, 3), hit(1.5, 4)]},
             {"lo": 0.0, "hi": 0.5, "vmin": 0.25, "vmax": 1.0, "hits": [hit(1.0, 5), hit(0.25, 6)]}]}
    data = {"version": 1, "name": "v", "k": 1, "n_rows": 100, "window": 1, "hist_edges": list(range(-4, 5)),
            "tokens": {"1": "a", "2": "b"}, "wordpiece": False, "features": [f]}
    page = write_feature_page(data, "v", {"variant": "vaease"}, {"hook": "h"}, tmp_path / "r" / "v.html")
    panel = _panel(*chromium, page.as_uri() + "#f=0")
    assert "<h3>Quantile 50\u2013100% of the sampled rows (codes 1.5 .. 2)</h3>" in panel
    assert "<h3>Quantile 0\u201350% of the sampled rows (codes 0.25 .. 1)</h3>" in panel
    assert panel.count("4 of its 50 active rows drawn at random, sorted by code and cut into 2 equal groups: "
                       "each heading gives its group's share of the sample and the range of its rows' codes, "
                       "not a quantile of every active row") == 1
    assert panel.index("4 of its 50 active rows") > panel.index("<h3>Quantile 50")  # under the first heading


def test_the_panel_writes_its_counts_with_thousands_separators(chromium, tmp_path):
    """The panel's counts read 'active on 1933 of 20480 test rows' and '4267', '1349 (32%)', where actdict
    feature and analyze print 1,933 and 20,480: they are written so now; codes and shares as before."""
    from actdict.analyze.report_features import write_feature_page

    f = {"i": 0, "fires": 1933, "density": 0.09438, "max": 4.813, "min": 0.5, "quantiles": [],
         "hist": {"pos": [[32, 1933]], "neg": []}, "top": [[4.813, 1, 0, 1, [1, 2], 1]], "bottom": [],
         "by_class": [["jargon", 4267, 1349, 0.5125]]}
    data = {"version": 1, "name": "v", "k": 1, "n_rows": 20480, "window": 1, "hist_edges": list(range(-4, 5)),
            "tokens": {"1": "a", "2": "b"}, "wordpiece": False, "features": [f]}
    page = write_feature_page(data, "v", {"variant": "vaease"}, {"hook": "h"}, tmp_path / "r" / "v.html")
    panel = _panel(*chromium, page.as_uri() + "#f=0")
    stats = '<p class="stats">active on 1,933 of 20,480 test rows (density 0.09438); max 4.813, min 0.5</p>'
    assert stats in panel
    assert ('<tr><td>jargon</td><td class="num">4,267</td><td class="num">1,349 (32%)</td>'
            '<td class="num">0.5125</td></tr>') in panel


_STICKY_PROBE = """<script>window.addEventListener("load", () => setTimeout(() => {
  const side = document.getElementById("side").getBoundingClientRect();
  const box = id => document.getElementById(id).getBoundingClientRect();
  const sel = document.querySelector("#list tr.sel").getBoundingClientRect();
  const seen = r => r.top >= side.top - 1 && r.bottom <= side.bottom + 1;
  document.body.setAttribute("data-sticky", [document.getElementById("side").scrollTop > 0,
    ["go", "sort", "q", "mind"].every(id => seen(box(id))), seen(sel),
    sel.top >= box("mind").bottom - 1].join(","));
}, 1000));</script>"""


def test_the_lists_controls_stay_in_view_for_a_feature_far_down(chromium, tmp_path):
    """A feature far down the list (#390 of 400 by index: after the first 200, a gap, then its row) scrolled
    the side panel to its row, and the number box, the sort, the search and the density filter above the
    list with it, out of view: they stay at the panel's top now, and the feature's row is shown below them,
    not under them."""
    page = _page_of_400(tmp_path, _STICKY_PROBE)
    for at in (390, 150):  # after the gap; among the first 200
        dom = _dump(*chromium, page.as_uri() + f"#f={at}", "--window-size=1000,600")
        assert f"<h2>Feature {at}</h2>" in dom
        assert 'data-sticky="true,true,true,true"' in dom, dom.split('data-sticky="')[1].split('"')[0]


_HEAD_PROBE = """<script>window.addEventListener("load", () => setTimeout(() => {
  const side = document.getElementById("side").getBoundingClientRect();
  const controls = document.getElementById("controls").getBoundingClientRect();
  const head = document.querySelector("#list tr.head th").getBoundingClientRect();
  const sel = document.querySelector("#list tr.sel").getBoundingClientRect();
  document.body.setAttribute("data-head", [document.getElementById("side").scrollTop > 0,
    head.top >= side.top && head.bottom <= side.bottom, Math.abs(head.top - controls.bottom) <= 1,
    sel.top >= head.bottom - 1].join(","));
}, 1000));</script>"""


def test_the_lists_column_names_stay_under_the_controls_for_a_feature_far_down(chromium, tmp_path):
    """The controls stayed at the side panel's top, but the list's header row (feature, density, max, top
    tokens) scrolled away with the rows, leaving columns of numbers without names: it sticks right under the
    controls now, and the row of the feature shown is below it, not under it."""
    page = _page_of_400(tmp_path, _HEAD_PROBE)
    dom = _dump(*chromium, page.as_uri() + "#f=390", "--window-size=1000,600")
    assert "<h2>Feature 390</h2>" in dom
    assert 'data-head="true,true,true,true"' in dom, dom.split('data-head="')[1].split('"')[0]


def _page_of_400(tmp_path, probe: str):
    """A feature page of 400 features (#i fires 400 - i times) with ``probe``'s script before </body>."""
    from actdict.analyze.report_features import write_feature_page

    feats = [{"i": i, "fires": 400 - i, "density": (400 - i) / 1000, "max": 2.0, "min": 0.0, "quantiles": [],
              "hist": {"pos": [[32, 400 - i]], "neg": []}, "top": [[2.0, i, 0, 1, [1, 2], 1]], "bottom": []}
             for i in range(400)]
    data = {"version": 1, "name": "v", "k": 400, "n_rows": 1000, "window": 1,
            "hist_edges": list(range(-4, 5)), "tokens": {"1": "a", "2": "b"}, "wordpiece": False,
            "features": feats}
    page = write_feature_page(data, "v", {"variant": "vaease"}, {"hook": "h"}, tmp_path / "r" / "v.html")
    page.write_text(page.read_text().replace("</body>", probe + "</body>"))
    return page
