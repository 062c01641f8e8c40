"""The feature page's stylesheet and script (``report_features.render_feature_page`` inlines both): kept
as Python strings, so that the installed package carries them without package data."""

PAGE_CSS = """
body { font-family: system-ui, sans-serif; margin: 0; color: #222; }
header { padding: 10px 16px; background: #f4f4f4; border-bottom: 1px solid #ddd; }
header a { margin-right: 1em; } .stats { color: #555; }
main { display: grid; grid-template-columns: min(440px, 40vw) 1fr; height: calc(100vh - 62px); }
#side { border-right: 1px solid #ddd; overflow-y: auto; padding: 0 8px 8px; }
#controls { position: sticky; top: 0; z-index: 2; background: #fff; padding: 8px 0 4px;
  border-bottom: 1px solid #eee; }  /* in view when the list is scrolled to a feature far down */
#side input, #side select { margin: 2px 0; } #list { width: 100%; border-collapse: collapse; font-size: 90%; }
#list td, #list th { padding: 2px 6px; text-align: right; } #list tr { cursor: pointer; }
#list tr:hover { background: #eef; } #list tr.sel { background: #dde6ff; }
#list tr.head th { position: sticky; top: var(--controls, 0); z-index: 1; background: #fff;
  box-shadow: inset 0 -1px #eee; }  /* the column names, in view under the controls */
#list td { white-space: nowrap; }
#list .lab { text-align: left; width: 100%; max-width: 0; overflow: hidden; text-overflow: ellipsis; }
#panel { overflow-y: auto; padding: 8px 20px; }
.ctx { font-family: ui-monospace, monospace; white-space: pre-wrap; overflow-wrap: anywhere; margin: 1px 0;
  padding: 1px 0; border-bottom: 1px solid #f0f0f0; }
.ctx { padding-left: 6.5em; text-indent: -6.5em; }  /* a wrapped context continues right of the codes */
.act { display: inline-block; min-width: 5.5em; color: #666; text-align: right; margin-right: 1em;
  text-indent: 0; }
.ctx span { unicode-bidi: isolate; }  /* a corpus string's bidi control reorders only itself */
.hl { background: #ffd54f; font-weight: bold; border-radius: 2px; } .neg .hl { background: #90caf9; }
.dim { color: #555; } h3 { margin: 1em 0 0.3em; } .note { color: #777; font-size: 90%; }
#mixed { color: #a00; font-weight: bold; margin: 0; padding: 8px 16px; }
.txt { font-family: system-ui, sans-serif; } .where { color: #888; font-size: 85%; margin-left: 1em; }
.tok { font-family: ui-monospace, monospace; background: #f0f0f0; white-space: pre; }
table.with { border-collapse: collapse; font-size: 90%; color: #555; margin: -0.6em 0 0.8em; }
table.with td, table.with th { padding: 1px 8px; text-align: left; }
table.with td { overflow-wrap: anywhere; }  /* a long label breaks; a heading wraps only between words */
table.with td.num { text-align: right; white-space: nowrap; }
"""

PAGE_JS = r"""
const D = JSON.parse(document.getElementById('feature-data').textContent);
const META = JSON.parse(document.getElementById('page-meta').textContent);
const TOK = D.tokens, LABT = D.label_texts || {}, F = D.features, EDGES = D.hist_edges, PAGE = 200;
const LABELS = D.has_tokens || D.has_texts;  // a store of vectors (token ids -1, no texts): nothing to list
const TEXTS = {}, PARTS = {}, WAITING = {};  // texts of the rows of the parts loaded so far; parts by number
let shown = PAGE, current = null;
window.actdictPart = (n, data, run) => { if (WAITING[n]) WAITING[n]([data, run]); };
const RUN = new URLSearchParams(location.search).get('run');  // the run of the overview that linked here
if (RUN && META.run && RUN !== META.run) mixed('the overview that linked here is of run ' + RUN);
function mixed(what) {  // outputs of two analyses side by side: a later one was stopped part way
  const b = document.getElementById('mixed');
  b.hidden = false;
  b.textContent = 'This page is of analysis run ' + META.run + ', but ' + what + ': an analysis was ' +
    'stopped before it rewrote every file of the report. Rerun actdict analyze.';
}
function partFile(n) { return encodeURIComponent(META.parts) + '/' + String(n).padStart(5, '0') + '.js'; }
function loadPart(n) {  // a <script src> beside the page: allowed from disk, where fetch() is not
  if (!PARTS[n]) PARTS[n] = new Promise((resolve, reject) => {
    WAITING[n] = resolve;
    const s = document.createElement('script');
    s.src = partFile(n);
    s.onerror = () => { delete PARTS[n]; reject(new Error(partFile(n))); };
    document.head.appendChild(s);
  });
  return PARTS[n];
}
async function feature(i) {  // the full record of feature i (its part loaded once)
  if (!Number.isInteger(i) || i < 0 || i >= F.length) return null;
  const [part, run] = await loadPart(Math.floor(i / D.part));
  if (META.run && run !== META.run) {
    mixed('its part ' + partFile(Math.floor(i / D.part)) + ' is of run ' + run);
    throw Object.assign(new Error('its part is of another analysis run (see above)'), {mixed: true});
  }
  Object.assign(TEXTS, part.texts || {});
  return part.features[i % D.part];
}
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function fmt(v) {  // 4 significant digits; tiny values as 1.715e-6, not 0.000001715
  if (v === null || v === undefined) return '\u2013';
  return v !== 0 && Math.abs(v) < 1e-3 ? (+v).toExponential(3).replace(/\.?0+e/, 'e')
                                       : String(+(+v).toPrecision(4));
}
function count(n) {  // a count as actdict feature and analyze print it: 20,480
  return Number(n).toLocaleString('en-US');
}
function tokRaw(id) {  // the vocabulary's string: a token by itself (a label, a logit) shows it ('##ing')
  const s = TOK[String(id)];
  return s === undefined ? '' : s;
}
function tokStr(id) {  // toptokens.display_strings: a context's token, joined as text
  const s = tokRaw(id);
  return D.wordpiece ? (s.startsWith('##') ? s.slice(2) : ' ' + s) : s;
}
function ctxLine(hit, neg) {
  const [act, row, doc, pos, ids, c] = hit;
  const d = el('div', 'ctx' + (neg ? ' neg' : ''));
  d.title = 'row ' + row + ', doc ' + doc + ', pos ' + pos;
  d.appendChild(el('span', 'act', fmt(act)));
  const text = TEXTS[String(row)];
  if (text !== undefined || ids[c] < 0) {  // an embedded document / paragraph: its text, not tokens
    d.classList.add('txt');
    if (text !== undefined) d.appendChild(el('span', '', text));
    d.appendChild(el('span', 'where', 'doc ' + doc + ', pos ' + pos));
    return d;
  }
  const tok = tokStr(ids[c]), lead = strip(tok) ? /^ */.exec(tok)[0] : '';  // ' of': highlight 'of'
  const ctx = ids => contextText(ids.map(tokStr));  // as the report
  d.appendChild(el('span', 'dim', ctx(ids.slice(0, c)) + lead));
  d.appendChild(el('span', 'hl', alone(tok.slice(lead.length))));
  d.appendChild(el('span', 'dim', ctx(ids.slice(c + 1))));
  return d;
}
function topTokens(f) {  // distinct tokens of a live feature's top contexts (embedded rows: their texts)
  if (f.tokens === undefined) {
    const seen = [];
    for (const [row, id] of (f.fires ? f.tops : [])) {
      const t = LABT[String(row)];
      const s = t !== undefined ? t : tokenLabel(tokRaw(id));  // toptokens.token_label: an indent as ␣
      if (s && !seen.includes(s)) seen.push(s);
    }
    f.tokens = seen;
  }
  return f.tokens;
}
function sorted() {
  const key = document.getElementById('sort').value;
  const minD = parseFloat(document.getElementById('mind').value) || 0;
  const q = document.getElementById('q').value.trim().toLowerCase();
  let fs = F.filter(f => f.density >= minD);
  if (q) fs = fs.filter(f => topTokens(f).some(s => s.toLowerCase().includes(q)));
  const by = {fires: f => -f.fires, max: f => -(f.max || 0), index: f => f.i, density: f => f.fires}[key];
  return fs.sort((a, b) => by(a) - by(b) || a.i - b.i);
}
function renderList() {
  const tb = document.getElementById('list');
  tb.replaceChildren();
  const hd = el('tr', 'head');
  for (const h of ['feature', 'density', 'max']) hd.appendChild(el('th', '', h));
  if (LABELS) hd.appendChild(el('th', 'lab', D.has_texts ? 'top texts' : 'top tokens'));
  tb.appendChild(hd);
  const fs = sorted();
  for (const f of fs.slice(0, shown)) tb.appendChild(listRow(f));
  const at = fs.findIndex(f => f.i === current);
  if (at >= shown) {  // the feature shown lies further down: listed after a gap, with its place
    const gap = tb.appendChild(el('tr', 'note'));
    gap.appendChild(el('td', '', '\u22ee')).colSpan = LABELS ? 4 : 3;
    tb.appendChild(listRow(fs[at])).title = 'number ' + (at + 1) + ' of ' + fs.length + ' in this order';
  }
  const more = document.getElementById('more');
  more.style.display = fs.length > shown ? '' : 'none';
  document.getElementById('count').textContent = fs.length + (fs.length === 1 ? ' feature' : ' features');
}
function listRow(f) {
  const tr = el('tr', current === f.i ? 'sel' : '');
  tr.dataset.i = f.i;
  tr.appendChild(el('td', '', '#' + f.i));
  tr.appendChild(el('td', '', fmt(f.density)));
  tr.appendChild(el('td', '', fmt(f.max)));
  if (LABELS) tr.appendChild(el('td', 'lab', topTokens(f).slice(0, 3).join(', ')));
  tr.onclick = () => { location.hash = 'f=' + f.i; };
  return tr;
}
function listSelected() {  // the list, scrolled to the feature shown when it is among the rows listed
  renderList();
  const tr = document.querySelector('#list tr.sel');
  underControls();
  if (tr) tr.scrollIntoView({block: 'nearest'});
}
function underControls() {  // the list's column names stick below the controls, the row shown below both
  const side = document.getElementById('side'), h = document.getElementById('controls').offsetHeight;
  const head = document.querySelector('#list tr.head');
  side.style.setProperty('--controls', h + 'px');
  side.style.scrollPaddingTop = h + (head ? head.offsetHeight : 0) + 'px';
}
function histogram(f, parent) {  // drawn once in the page, so that plotly sizes it to the panel's width
  const mids = EDGES.slice(0, -1).map((e, i) => (e + EDGES[i + 1]) / 2);
  const w = EDGES[1] - EDGES[0], traces = [];
  for (const [key, name] of [['pos', 'positive codes'], ['neg', 'negative codes']]) {
    if (!f.hist[key].length) continue;
    traces.push({type: 'bar', name: name, x: f.hist[key].map(([b]) => mids[b]), width: w * 0.95,
                 y: f.hist[key].map(([, c]) => c), opacity: 0.75,
                 hovertemplate: '|code| %{customdata}<br>%{y} rows<extra></extra>',
                 customdata: f.hist[key].map(([b]) => fmt(Math.pow(10, EDGES[b])) + ' .. ' +
                                                       fmt(Math.pow(10, EDGES[b + 1])))});
  }
  const layout = {height: 250, margin: {t: 30, l: 50, r: 10, b: 40}, barmode: 'overlay',
    title: {text: 'activation histogram (rows where the feature is active)', font: {size: 13}},
    xaxis: {title: {text: 'log10 |code|'}}, showlegend: traces.length > 1,
    yaxis: {title: {text: 'rows'}, rangemode: 'tozero'}};
  const most = Math.max(0, ...traces.flatMap(t => t.y));
  if (most < 10) layout.yaxis.dtick = 1;  // whole rows: no 0.2 ticks for a feature active on a few
  const div = parent.appendChild(el('div'));
  div.id = 'hist';
  if (window.Plotly) Plotly.newPlot(div, traces, layout, {displayModeBar: false, responsive: true});
  else div.appendChild(el('p', 'note', 'plotly.min.js not found next to this page: no histogram'));
}
function section(title, hits, neg, note) {
  const s = el('div');
  s.appendChild(el('h3', '', title));
  if (note) s.appendChild(el('p', 'note', note));
  for (const h of hits) s.appendChild(ctxLine(h, neg));
  return s;
}
async function renderFeature(i) {
  const p = document.getElementById('panel');
  current = i;
  document.getElementById('go').value = i;  // the number box names the feature shown
  let f;
  try {
    f = await feature(i);
  } catch (e) {
    p.replaceChildren(el('p', '', 'feature ' + i + ': ' + (e.mixed ? e.message : 'its part ' + e.message +
      ' did not load (the page needs the folder ' + META.parts + ' beside it)')));
    return;
  }
  if (current !== i) return;  // another feature was asked for meanwhile
  p.replaceChildren();
  if (!f) {
    p.appendChild(el('p', '', 'no feature ' + i + ' (features 0..' + (D.k - 1) + ')'));
    listSelected();
    return;
  }
  p.appendChild(el('h2', '', 'Feature ' + f.i));
  p.appendChild(el('p', 'stats', 'active on ' + count(f.fires) + ' of ' + count(D.n_rows) +
    ' test rows (density ' + fmt(f.density) + '); max ' + fmt(f.max) + ', min ' + fmt(f.min)));
  const near = Object.entries(f.nearest || {});
  if (near.length) {  // its closest feature in each other dictionary's page (the same folder)
    const q = p.appendChild(el('p', 'stats', 'nearest by decoder direction: '));
    near.forEach(([other, n], j) => {
      const a = el('a', '', other + ' #' + n.feature);
      const run = META.run ? '?run=' + encodeURIComponent(META.run) : '';
      a.href = encodeURIComponent(other + '.html') + run + '#f=' + n.feature;
      q.append(j ? ', ' : '', a, ' (cos ' + fmt(n.cos) + ')');
    });
  }
  const formed = f.formed || [];
  if (formed.length) {  // its best cosine among the decoder columns of each snapshot shown (page_parts)
    const at = (D.formation_shown || []).map((j, m) => D.formation_steps[j] + ': ' + fmt(formed[m]));
    p.appendChild(el('p', 'stats', 'its direction in the snapshots (best cosine, by step): ' +
                     at.join(', ')));
  }
  const withs = f.fires_with || [];
  if (withs.length) {  // the features active on the same rows (analyze.cofire), by Jaccard similarity
    p.appendChild(el('p', 'stats', 'fires with (by Jaccard similarity of the rows each is active on, ' +
      'highest first; the rows both fire on as a share of this feature\'s and of the partner\'s):'));
    const t = p.appendChild(el('table', 'with'));
    const hd = t.appendChild(el('tr'));
    const lab = D.has_texts ? 'its top texts' : 'its top tokens';  // as the list's column
    for (const h of ['feature', lab, 'Jaccard', 'of #' + f.i + '\'s rows', 'of its rows']) {
      hd.appendChild(el('th', '', h));
    }
    const pct = v => Math.round(100 * v) + '%';
    for (const [j, both] of withs) {
      const tr = t.appendChild(el('tr'));
      const a = tr.appendChild(el('td')).appendChild(el('a', '', '#' + j));
      a.href = '#f=' + j;
      tr.appendChild(el('td', '', LABELS && F[j] ? topTokens(F[j]).slice(0, 3).join(', ') : ''));
      tr.appendChild(el('td', 'num', F[j] ? (both / (f.fires + F[j].fires - both)).toFixed(2) : ''));
      tr.appendChild(el('td', 'num', pct(both / f.fires)));
      tr.appendChild(el('td', 'num', F[j] ? pct(both / F[j].fires) : ''));
    }
  }
  const classes = f.classes || [];
  if (classes.length) {  // analyze.class_features: the classes whose rows it separates from the others
    const auc = (a, e) => a == null ? '' :  // AUROC of |code|, its bound where it reaches the 2nd decimal
      ', AUROC ' + a.toFixed(2) + (e >= 0.005 ? ' \u00b1 ' + e.toFixed(2) : '');
    p.appendChild(el('p', 'stats', 'sets apart the rows of class ' + classes.map(
      ([label, d, a, e]) => String(label) + ' (d ' + (d === null ? '\u221e' : fmt(d)) + auc(a, e) + ')'
    ).join(', ')));
  }
  const byClass = f.by_class || [];
  if (byClass.length) {  // the classes with the most of its active rows
    p.appendChild(el('p', 'stats', 'fires most on the rows of class (most active rows first, not the ' +
      'largest share; its mean |code| over all the class\'s rows, active or not):'));
    const t = p.appendChild(el('table', 'with'));
    const hd = t.appendChild(el('tr'));
    for (const h of ['class', 'rows', 'active on', 'mean |code| (all rows)']) hd.appendChild(el('th', '', h));
    for (const [label, rows, active, mean] of byClass) {
      const tr = t.appendChild(el('tr'));
      tr.appendChild(el('td', '', String(label)));
      tr.appendChild(el('td', 'num', count(rows)));
      tr.appendChild(el('td', 'num', count(active) + ' (' + Math.round(100 * active / Math.max(1, rows)) +
                                     '%)'));
      tr.appendChild(el('td', 'num', fmt(mean)));
    }
  }
  for (const [side, word] of [['up', 'raises the logits of'], ['down', 'lowers the logits of']]) {
    const pairs = (f.logits || {})[side] || [];  // direct logit effects (analyze.logit_effects)
    if (!pairs.length) continue;
    const q = p.appendChild(el('p', 'stats', word + ': '));
    pairs.forEach(([id, v], j) => q.append(j ? ', ' : '', el('span', 'tok', alone(tokRaw(id))),
                                           ' ' + fmt(v)));
  }
  if (!f.fires) {  // a dead latent: its largest codes are those of rows where it is not active
    p.appendChild(el('p', 'note', 'dead latent: never active on the test rows, so no histogram; the ' +
      'codes below are its largest and most negative ones, all on rows where it is inactive'));
    if (f.top.length) p.appendChild(section('Largest codes (inactive rows)', f.top, false));
    if (f.bottom.length) p.appendChild(section('Most negative codes (inactive rows)', f.bottom, true));
    listSelected();
    return;
  }
  histogram(f, p);
  p.appendChild(section('Top activations', f.top, false,
    !f.top.length ? 'no positive activation on the test rows'
      : D.has_texts ? 'the text of each row (doc: its document, pos: its paragraph in the harvest; '
                      + 'imported vectors: doc is the row)'
      : !D.has_tokens ? undefined  // vectors: each row by its doc and pos, no token to highlight
      : 'highlighted: the token of the row' + (D.window > 0 ? '; up to ' + D.window +
                                                ' tokens of context each side' : '')));
  if (f.bottom.length && -f.min >= 0.1 * Math.abs(f.max || 0)) {
    p.appendChild(section('Most negative activations', f.bottom, true));
  } else if (f.bottom.length) {
    p.appendChild(el('p', 'note', 'negative codes are negligible (min ' + fmt(f.min) + '): not shown'));
  }
  const sampled = f.quantiles.reduce((n, q) => n + q.hits.length, 0);
  f.quantiles.forEach((q, j) => {  // groups of a random sample of the active rows, highest codes first
    p.appendChild(section('Quantile ' + Math.round(q.lo * 100) + '\u2013' + Math.round(q.hi * 100) +
      '% of the sampled rows (codes ' + fmt(q.vmin) + ' .. ' + fmt(q.vmax) + ')', q.hits, false, j ? undefined
      : sampled + ' of its ' + count(f.fires) + ' active rows drawn at random, sorted by code and cut into ' +
        f.quantiles.length + ' equal groups: each heading gives its group\'s share of the sample and the ' +
        'range of its rows\' codes, not a quantile of every active row'));
  });
  listSelected();
}
function route() {
  const m = /f=(\d+)/.exec(location.hash);
  renderFeature(m ? +m[1] : sorted().length ? sorted()[0].i : 0);
}
document.getElementById('sort').onchange = () => { shown = PAGE; renderList(); };
document.getElementById('mind').oninput = () => { shown = PAGE; renderList(); };
document.getElementById('q').oninput = () => { shown = PAGE; renderList(); };
document.getElementById('qbox').hidden = !LABELS;  // no top tokens to search
if (D.has_texts) {  // embedded rows: the list shows the start of their texts
  document.getElementById('qlabel').textContent = 'top text';
  document.getElementById('q').placeholder = 'e.g. kernel';
}
document.getElementById('more').onclick = () => { shown += PAGE; renderList(); };
document.getElementById('go').onchange = e => { location.hash = 'f=' + e.target.value; };
window.addEventListener('hashchange', route);
window.addEventListener('resize', underControls);  // the controls wrap to more lines in a narrower window
document.getElementById('title').textContent = META.name + ' (' + META.variant + ', k = ' + D.k + ')';
route();
"""
