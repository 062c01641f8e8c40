"""Per-feature records of one dictionary (JSON-ready), from a ``toptokens.FeatureTracker``.

Schema of ``<run_dir>/features/<name>.json`` (what the report's feature pages render)::

    {"version": 1, "name": str, "k": int, "n_rows": int, "window": int,
     "config_hash": str | null,           # the checkpoint's cfg.json config_hash (which training of `name`)
     "run_id": str,                       # the analysis that wrote it (summary.json's run_id)
     "hist_edges": [float],               # log10 |code| bin edges shared by every feature
     "tokens": {"<id>": str},             # decoded string of every token id used below
     "wordpiece": bool,                   # "##" continuations: show " " + token, "##x" as "x"
     "texts": {"<row>": str},             # embeddings stores only: the text each hit's row embeds (clipped)
     "formation_steps": [int],            # train.snapshot_every: its training's snapshots (analyze.formation)
     "features": [{"i": int, "fires": int, "density": float, "max": float | null, "min": float | null,
                   "hist": {"pos": [[bin, count]], "neg": [[bin, count]]},   # sparse, active rows only
                   "top": [HIT], "bottom": [HIT],   # bottom: most negative codes (signed codes only)
                   "quantiles": [{"lo": float, "hi": float, "vmin": float, "vmax": float, "hits": [HIT]}],
                   "nearest": {"<other>": {"feature": int, "cos": float}},  # analyze.compare; optional
                   "fires_with": [[feature, rows both fire]],   # analyze.cofire; optional, see below
                   "formed": [float | null],   # its best cosine among each snapshot's decoder columns
                   "classes": [[label, d, auroc, auroc_err]],   # analyze.class_features: the classes
                                                                # whose list it is in
                   "by_class": [[label, rows, active, mean]],   # and the classes it fires on most
                   "logits": {"up": [[token id, float]], "down": [[token id, float]]}}]}  # analyze.logits;
                                                                     # only with analyze.logit_effects
    HIT = [act, row, doc, pos, [token ids of the context], index of the row's token in that list]

``nearest``: the feature's closest live feature (by decoder direction) in each other dictionary of the
analysis, where it has a direction and that one has a live feature (written by ``analyze.run``; beyond
``KEEP_NEAREST`` = 8 others, in the 8 of highest cosine).
``fires_with``: the features that fire on the same rows, by Jaccard similarity of their active rows, best
first (present when ``analyze.cofire`` > 0 and ``analyze.cofire_max_mib`` held its counts).
``classes``: with ``analyze.labels``, the classes whose ``class_features`` (summary.json) list the feature,
with its Cohen's d there (null: infinite), AUROC of |z| and that AUROC's bound (``analyze.auroc``; both
null: not counted, past ``analyze.budget.CLASS_AUROC_MAX_MIB``), largest d first (written by ``analyze.run``;
absent on the others).
``by_class``: with them, the ``analyze.class_features`` classes with the most of its active rows, most first:
the label, the class's evaluated rows, those where the feature is active, its mean |code| on them all
(``metrics.class_profile``; absent on a feature never active on a labelled row).
Quantile ``lo``/``hi`` are fractions (0..1) of the feature's sampled active rows, ordered by code.
"""

from __future__ import annotations

import math

import numpy as np

from actdict.analyze.cofire import partners
from actdict.analyze.toptokens import Contexts, Decoder, FeatureTracker, is_wordpiece, read_contexts

FEATURES_VERSION = 1


def _sparse(counts: np.ndarray) -> list[list[int]]:
    nz = np.flatnonzero(counts)
    return [[int(b), int(counts[b])] for b in nz]


def _f(v: float) -> float:
    return float(f"{float(v):.5g}")


def build_features(tracker: FeatureTracker, fires: np.ndarray, n_rows: int, store, window: int,
                   decode: Decoder, quantiles: int, cofire: int = 0) -> tuple[dict, Contexts, dict[int, int]]:
    """(feature records as above, the contexts read, row -> index into them). fires [k] active-row counts;
    ``cofire``: partners listed per feature when the tracker counted co-activations."""
    _, top_r, top_v = tracker.top.result()  # [k, t]
    _, bot_r, bot_v = tracker.bottom.result()
    smp_r, smp_v = tracker.sample.result()  # [k, R]
    top_ok = (top_v > 0) & (top_r >= 0)
    bot_ok = (bot_v < 0) & (bot_r >= 0)
    smp_ok = smp_r >= 0
    rows = np.unique(np.concatenate([top_r[top_ok], bot_r[bot_ok], smp_r[smp_ok]]).astype(np.int64))
    ctx = read_contexts(store, rows, window)
    where = {int(r): h for h, r in enumerate(rows.tolist())}
    used = np.unique(ctx.ids[ctx.valid]) if len(rows) else np.empty(0, np.int64)
    strings = decode(used.tolist()) if len(used) else []
    wordpiece = getattr(decode, "wordpiece", None)  # token_decoder's, told by the tokenizer
    wordpiece = is_wordpiece(strings) if wordpiece is None else wordpiece  # a plain function's: guessed
    cache: dict[int, list] = {}

    def hit(act: float, r: int) -> list:
        h = where[int(r)]
        if h not in cache:
            ids, c = ctx.row(h)
            cache[h] = [int(r), int(ctx.doc[h]), int(ctx.pos[h]), ids, c]
        return [_f(act), *cache[h]]

    counts = tracker.hist.counts.cpu().numpy()  # [k, 2, nb]
    with_j, with_c = (None, None) if tracker.cofire is None or cofire < 1 else \
        (x.numpy() for x in partners(tracker.cofire.counts, cofire))  # [k, n] each
    feats = []
    for f in range(len(fires)):
        t = [hit(v, r) for v, r, ok in zip(top_v[f], top_r[f], top_ok[f], strict=True) if ok]
        b = [hit(v, r) for v, r, ok in zip(bot_v[f], bot_r[f], bot_ok[f], strict=True) if ok]
        ok = np.flatnonzero(smp_ok[f])
        order = ok[np.argsort(smp_v[f, ok], kind="stable")]  # sampled active rows by code, ascending
        groups = []
        if len(order):
            parts = np.array_split(order, min(quantiles, len(order)))
            for gi, g in enumerate(parts):
                m = len(parts)
                groups.append({"lo": _f(gi / m), "hi": _f((gi + 1) / m), "vmin": _f(smp_v[f, g].min()),
                               "vmax": _f(smp_v[f, g].max()),
                               "hits": [hit(smp_v[f, j], smp_r[f, j]) for j in g[::-1]]})
        feats.append({"i": f, "fires": int(fires[f]), "density": _f(fires[f] / max(n_rows, 1)),
                      "max": _f(top_v[f, 0]) if top_v.shape[1] else None,
                      "min": _f(bot_v[f, 0]) if bot_v.shape[1] else None,
                      "hist": {"pos": _sparse(counts[f, 0]), "neg": _sparse(counts[f, 1])},
                      "top": t, "bottom": b, "quantiles": groups[::-1]})
        if with_j is not None:
            feats[-1]["fires_with"] = [[int(j), int(c)] for j, c in zip(with_j[f], with_c[f], strict=True)
                                       if j >= 0]
    data = {"version": FEATURES_VERSION, "k": len(fires), "n_rows": int(n_rows), "window": window,
            "hist_edges": [_f(e) for e in tracker.hist.edges],
            "wordpiece": wordpiece,
            "tokens": {str(i): s for i, s in zip(used.tolist(), strings, strict=True)}, "features": feats}
    return data, ctx, where


SHOWN_SNAPSHOTS = 12


def shown_snapshots(n: int) -> list[int]:
    """Which of ``n`` snapshots (``formation_steps``) a feature's formation is shown at, in its page and by
    ``actdict feature``: every ceil(n / 12)th from the first, so about 12 of them at most, and the last.
    The page embeds these indices (``report_features.page_index``) rather than choosing them itself."""
    every = -(-n // SHOWN_SNAPSHOTS)
    return [j for j in range(n) if j % every == 0 or j == n - 1]


def feature_hits(f: dict) -> list:
    """Every hit of one feature of a features file: top, bottom and quantile samples."""
    return [*f["top"], *f["bottom"], *(h for q in f["quantiles"] for h in q["hits"])]


def hit_keys(data: dict) -> set[tuple[int, int, int]]:
    """(row, doc, pos) of every hit of the features file ``data``."""
    return {(int(hit[1]), int(hit[2]), int(hit[3])) for f in data["features"] for hit in feature_hits(f)}


def summary_hits(data: dict, feature: int) -> list[dict]:
    """The top hits of ``feature`` in summary.json's (version 1) format: act, row, doc, pos, token_id,
    token, before, after; and ``text`` where the features file has the row's text (embeddings stores)."""
    tok, texts = data["tokens"], data.get("texts", {})
    out = []
    for act, row, doc, pos, ids, c in data["features"][feature]["top"]:
        s = [tok.get(str(i), "") for i in ids]
        hit = {"act": act, "row": row, "doc": doc, "pos": pos, "token_id": ids[c], "token": s[c],
               "before": s[:c], "after": s[c + 1 :]}
        if str(row) in texts:
            hit["text"] = texts[str(row)]
        out.append(hit)
    return out


def d_order(d: float | None) -> float:
    """Sort key of a Cohen's d of ``metrics.class_separation``, largest first: None (infinite, a perfect
    separator) before every finite d. The features file's ``classes`` and ``actdict feature --class``."""
    return -math.inf if d is None else -d


def add_classes(records: list[dict], class_features: list[dict], profile: list[list[tuple]], labels: list,
                class_n: list[int]) -> None:
    """With ``analyze.labels`` and class features, each feature record's ``classes`` (the classes whose
    ``class_features`` entry of summary.json lists it, [label, d, AUROC, its bound], largest d first, d
    None: infinite, a perfect separator, first of all; AUROC None where not counted) and ``by_class``
    (``metrics.class_profile``: the classes with the most of its active rows, [label, rows of the class,
    rows active, mean |z|]), in place."""
    for c in class_features:
        for f in c["features"]:
            records[f["feature"]].setdefault("classes", []).append(
                [c["label"], f["d"], f.get("auroc"), f.get("auroc_err")])
    for rec in records:
        if "classes" in rec:
            rec["classes"].sort(key=lambda ld: d_order(ld[1]))
    for rec, prof in zip(records, profile, strict=False):
        if prof:
            rec["by_class"] = [[labels[c], class_n[c], a, _f(v)] for c, a, v in prof]
