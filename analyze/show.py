"""``actdict feature RUN_DIR/dicts/NAME [I ...]``: a dictionary's features in the terminal, from the features
file analysis wrote (``features/<name>.json``), for a researcher on a remote machine without a browser.

With feature indices: each one's activity (rows, density, code range), its top-activating contexts with the
row's token in «», its most negative ones (signed codes, when not negligible: as the feature page), a few
quantile samples, the features it fires with and its nearest direction in the other dictionaries analysed
(with their top tokens), and its direct logit effects (``analyze.logit_effects``). Without: the ``--list``
most active features, one line each with their top tokens; with ``--search WORD``, the features whose top
contexts have WORD as their token (a text: hold it), most such contexts first. Rows of embedded texts (or
``analyze.texts``) show their text; rows of vectors without texts, their row, doc and pos. Every string
from the corpus is printed with control characters escaped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from actdict.analyze.features import d_order, shown_snapshots
from actdict.analyze.lens import dict_features, labels_of
from actdict.analyze.outputs import OutputError, not_a_snapshot, read_output
from actdict.analyze.texts import clip
from actdict.analyze.toptokens import alone, context_text, display_strings
from actdict.errors import ActdictError, printable
from actdict.train import checkpoint


def read_features(dict_dir: Path) -> tuple[dict, dict]:
    """(the features file of the dictionary in ``dict_dir`` (RUN_DIR/dicts/NAME), its labels: feature ->
    (top tokens, bottom tokens)); OutputError when analysis has not written one for this training."""
    not_a_snapshot(dict_dir, "actdict feature")  # train.snapshot_every's: never analysed
    try:
        k = json.loads((dict_dir / checkpoint.CFG).read_text())["k"]  # as load reads it; not the weights
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise OutputError(f"{dict_dir}: no trained dictionary there (RUN_DIR/dicts/NAME, with its cfg.json: "
                          f"{type(e).__name__})") from e
    run_dir, name = dict_dir.parent.parent, dict_dir.name
    data, why = dict_features(run_dir, name, k)
    if data is None:  # no features file, or another training's
        raise OutputError(why.removeprefix("no corpus labels: "))
    return data, labels_of(data, 3, run_dir / "features" / f"{name}.json")


def context(data: dict, hit: list, width: int = 96) -> str:
    """One hit [act, row, doc, pos, ids, c] as text: its context with the row's token in «» (or the row's
    text, or where it lies), about ``width`` characters."""
    _, row, doc, pos, ids, c = hit
    if (text := data.get("texts", {}).get(str(row))) is not None:
        return f"{clip(text, width)}  (doc {doc}, pos {pos})"
    if ids[c] < 0:  # a store of vectors: no token, no text
        return f"row {row} (doc {doc}, pos {pos})"
    s = display_strings([data["tokens"].get(str(i), f"#{i}") for i in ids], data.get("wordpiece"))
    left, mid, right = context_text(s[:c]), s[c], context_text(s[c + 1:])  # as the report
    lead = mid[:len(mid) - len(mid.lstrip(" "))] if mid.strip() else ""  # a word's spaces, all of them,
    left, mid = left + lead, mid[len(lead):]  # stay outside the marks, as the report and the page leave them
    mid = alone(mid)
    room = max(8, (width - len(mid)) // 2)
    left = left if len(left) <= room else "…" + left[-room:]
    right = right if len(right) <= room else right[:room] + "…"
    return f"{left}«{mid}»{right}  (doc {doc}, pos {pos})"


def _hits(data: dict, hits: list, n: int) -> list[str]:
    return [f"  {hit[0]:>9.4g}  {context(data, hit)}" for hit in hits[:n]]


def feature_lines(data: dict, labels: dict, i: int, top: int) -> list[str]:
    """The lines ``actdict feature`` prints of feature ``i``."""
    f = data["features"][i]
    n = data.get("n_rows") or 0
    lines = [f"#{i}: active on {f['fires']:,} of {n:,} held-out rows (density {f['density']:.4g})"
             + (f"; codes {f['min']:.4g} .. {f['max']:.4g}" if f.get("max") is not None else "")]
    if not f["fires"]:
        return [*lines, "  dead: active on no held-out row"]
    lines += ["  top activations:", *_hits(data, f["top"], top)]
    if f["bottom"] and -(f.get("min") or 0) >= 0.1 * abs(f.get("max") or 0):  # as the feature page
        lines += ["  most negative:", *_hits(data, f["bottom"], top)]
    sampled = sum(len(q["hits"]) for q in f.get("quantiles", []))  # a random sample of its active rows
    for q in sorted(f.get("quantiles", []), key=lambda q: -q["lo"]):  # one sample each, highest first
        if q["hits"]:  # the codes: the group's own range, not a quantile of every active row
            lines.append(f"  quantile {q['lo']:.0%}-{q['hi']:.0%} of {sampled} sampled rows "
                         f"({q['vmin']:.3g} .. {q['vmax']:.3g}):")
            lines += _hits(data, q["hits"], 1)
    if w := f.get("fires_with"):  # Jaccard of the active rows, from both fire counts
        fires = {g["i"]: g["fires"] for g in data["features"]}
        m, what = (1, "text") if data.get("texts") else (3, "tokens")  # a text's first words, or three tokens
        lines += [f"  fires with (Jaccard, rows both fire, its top {what}):", *(
            f"  {'#' + str(j):>9}  {both / max(1, f['fires'] + fires[j] - both):.2f}  {both:>7,}  "
            f"{', '.join(labels.get(j, ([], []))[0][:m])}" for j, both in w[:6])]
    if cl := f.get("classes"):  # analyze.class_features: the classes whose rows it sets apart
        lines.append("  sets apart the rows of class " + ", ".join(map(_class_said, cl)))
    if bc := f.get("by_class"):  # and the classes with the most of its active rows
        lines += ["  fires most on the rows of class (most active rows first: active of its rows, mean "
                  "|code| on them all):", *(
            f"    {str(lab)[:30]:<30} {a:>7,} of {n:>7,} ({a / max(1, n):>4.0%})  {v:.3g}"
            for lab, n, a, v in bc)]
    for other, near in (f.get("nearest") or {}).items():
        lines.append(f"  nearest direction in {other}: #{near['feature']} (cos {near['cos']:.3f})")
    if formed := f.get("formed"):  # train.snapshot_every: its best cosine in each snapshot, as its page
        by_step = list(zip(data["formation_steps"], formed, strict=True))
        at = [f"{step}: " + ("n/a" if c is None else f"{c:.3g}")
              for step, c in (by_step[j] for j in shown_snapshots(len(by_step)))]
        lines.append("  its direction in the snapshots (best cosine, by step): " + ", ".join(at))
    if lg := f.get("logits"):
        tok = data["tokens"]
        for side in ("up", "down"):
            lines.append(f"  logits {side}: " + ", ".join(f"{alone(tok.get(str(t), str(t)))!r} {v:+.3g}"
                                                        for t, v in lg[side]))
    return lines


def _d(d: float | None) -> str:
    """A class feature's Cohen's d; None: infinite (constant in the class and in the others)."""
    return "inf" if d is None else f"{d:.3g}"


def _auroc(auc: float | None, err: float | None) -> str:
    """A class feature's AUROC of |code| (``analyze.auroc``), with its bound where that reaches 0.005 (the
    second decimal); "" where it was not counted (an older features file, past the bins' memory cap)."""
    if auc is None:
        return ""
    return f"{auc:.2f}" + (f" ± {err:.2f}" if err is not None and err >= 0.005 else "")


def _class_said(entry: list) -> str:
    """One of a feature's ``classes``, [label, d, AUROC, bound] (an older file's: [label, d]): 'label (d 0.81,
    AUROC 0.64)'."""
    lab, d, *rest = entry
    auc = _auroc(*(rest + [None, None])[:2])
    return f"{lab!s} (d {_d(d)}" + (f", AUROC {auc}" if auc else "") + ")"


def list_lines(data: dict, labels: dict, n: int) -> list[str]:
    """The ``n`` most active features: index, rows, density, largest code, top tokens."""
    feats = sorted(data["features"], key=lambda f: (-f["fires"], f["i"]))[:n]
    what = "texts" if data.get("texts") else "tokens"
    out = [f"{'feature':>8} {'fires':>9} {'density':>9} {'max':>8}  top {what}"]
    for f in feats:
        mx = f"{f['max']:.4g}" if f.get("max") is not None else ""
        out.append(f"{'#' + str(f['i']):>8} {f['fires']:>9,} {f['density']:>9.4g} {mx:>8}  "
                   + ", ".join(labels.get(f["i"], ([], []))[0][:4]))
    return out


def matches(data: dict, hit: list, word: str) -> bool:
    """Whether a hit's token is ``word`` (case and a WordPiece '##' aside), or its row's text holds it."""
    if (text := data.get("texts", {}).get(str(hit[1]))) is not None:
        return word.lower() in text.lower()
    ids, c = hit[4], hit[5]
    token = data["tokens"].get(str(ids[c]), "") if ids[c] >= 0 else ""
    return token.strip().removeprefix("##").lower() == word.lower() != ""


def search_lines(data: dict, labels: dict, word: str, n: int) -> list[str]:
    """The ``n`` features whose top contexts most often have ``word`` as their token (or in their text): how
    many of their top hits, the largest such code, their fires and top tokens."""
    found = []
    for f in data["features"]:
        acts = [h[0] for h in f["top"] if matches(data, h, word)]
        if acts:
            found.append((-len(acts), -max(acts), f["i"], len(acts), len(f["top"]), max(acts), f["fires"]))
    if not found:
        return [f"no feature has {word!r} among its top contexts"]
    out = [f"{'feature':>8} {'top hits':>9} {'max':>8} {'fires':>9}  top tokens (hits: with {word!r})"]
    for *_, i, hits, top, mx, fires in sorted(found)[:n]:
        out.append(f"{'#' + str(i):>8} {f'{hits}/{top}':>9} {mx:>8.4g} {fires:>9,}  "
                   + ", ".join(labels.get(i, ([], []))[0][:4]))
    return out


def class_lines(data: dict, labels: dict, name: str, n: int, shares: dict | None = None) -> list[str]:
    """The ``n`` features that most set apart the rows of class ``name`` (its ``class_features``, from each
    feature's ``classes``; a label matched as text: stars 5 is '5'), largest d first: d, the share of the
    class's rows where each is active and of the other labelled rows, its AUROC of |code| (a bound beside
    it where that reaches 0.005) (``shares``: feature -> (fire_in,
    fire_out), from summary.json, ``summary_shares``; without it the first from its ``by_class``, where the
    class is among its top ones), its fires and top tokens. Without it, the classes the file knows."""
    found, known = [], set()
    for f in data["features"]:
        for lab, d, *auc in f.get("classes", []):
            known.add(str(lab))
            if str(lab) == name:
                share = next((a / max(1, rows) for lab2, rows, a, _ in f.get("by_class", [])
                              if str(lab2) == name), None)
                both = (shares or {}).get(f["i"], (share, None))
                found.append((d_order(d), f["i"], d, _auroc(*(auc + [None, None])[:2]), both, f["fires"]))
    if not found:
        if not known:
            return ["no class features in this features file: analyze with analyze.labels or labels_field"]
        return [f"no feature sets apart class {name!r}; classes: {', '.join(sorted(known))}"]
    what = "texts" if data.get("texts") else "tokens"
    shown = sorted(found)[:n]
    w = max(5, *(len(auc) for _, _, _, auc, _, _ in shown))  # 0.64, or 0.64 ± 0.01 where the bound shows
    out = [f"{'feature':>8} {'d':>7} {'AUROC':>{w}} {'in / out':>11} {'fires':>9}  top {what}  (in / out: "
           "active on the class's rows / the other labelled rows'; AUROC of |code|, class vs the rest)"]
    for _, i, d, auc, (fin, fout), fires in shown:
        sh = ("" if fin is None else f"{fin:.0%}") + ("" if fout is None else f" / {fout:.0%}")
        out.append(f"{'#' + str(i):>8} {_d(d):>7} {auc:>{w}} {sh:>11} {fires:>9,}  "
                   + ", ".join(labels.get(i, ([], []))[0][:4]))
    return out


def summary_shares(dict_dir: Path, data: dict, name: str) -> dict | None:
    """feature -> (fire_in, fire_out) of class ``name`` from the run's summary.json, where it is the same
    analysis as the features file ``data`` (its run_id); None otherwise (no summary, another analysis). A
    damaged summary (unreadable, not JSON, not analyze's object or entries) gives None too, on purpose:
    ``class_lines`` then shows the class's share from the features file's by_class, the listing it decorates
    never stops over it."""
    try:
        summary = read_output(dict_dir.parent.parent / "summary.json")
    except (OSError, OutputError):
        return None
    if summary.get("run_id") != data.get("run_id") or data.get("run_id") is None:
        return None
    try:
        entries = summary["models"][data["name"]].get("class_features") or []
        return {f["feature"]: (f["fire_in"], f["fire_out"]) for c in entries if str(c["label"]) == name
                for f in c["features"]}
    except (KeyError, TypeError, AttributeError):
        return None


def main(argv: list[str] | None = None) -> int:
    """``actdict feature DICT [I ...]`` (``python -m actdict.analyze.show``)."""
    p = argparse.ArgumentParser(prog="actdict feature", description="A dictionary's features in the "
                                "terminal, from the features file analysis wrote: each chosen feature's "
                                "contexts, partners and directions, or the most active ones.")
    p.add_argument("dict", help="a trained and analysed dictionary: RUN_DIR/dicts/NAME")
    p.add_argument("features", nargs="*", default=[], type=int, metavar="I",  # default: not named as required
                   help="feature indices (none: --list)")
    p.add_argument("--top", type=int, default=8, help="contexts shown per kind (default 8)")
    p.add_argument("--list", type=int, default=20, help="features listed without indices (default 20)")
    p.add_argument("--search", metavar="WORD", help="list the features whose top contexts have WORD as their "
                   "token (or, for texts, hold it), most such contexts first")
    p.add_argument("--class", dest="cls", metavar="LABEL", help="list the features that most set apart the "
                   "rows of class LABEL from the others (analyze.labels or labels_field), largest d first")
    a = p.parse_args(argv)
    if a.top < 1 or a.list < 1:
        p.error("--top and --list must be >= 1")
    if a.search is not None and not a.search.strip():  # '' was the plain list, as if no --search
        p.error("--search needs a word (a token of the contexts)")
    if sum(x is not None and x != [] for x in (a.search, a.cls, a.features or None)) > 1:  # one was dropped
        p.error("give feature indices, --search WORD or --class LABEL, one of them")
    try:
        data, labels = read_features(Path(a.dict))
        k = len(data["features"])
        if bad := [i for i in a.features if not 0 <= i < k]:
            raise OutputError(f"{a.dict} has features 0..{k - 1}; no {bad}")
        lines = [f"{a.dict} ({data.get('name')}, k {k}; {data.get('n_rows', 0):,} held-out rows analysed)"]
        if a.features:
            for i in a.features:
                lines += ["", *feature_lines(data, labels, i, a.top)]
        elif a.search:
            lines += search_lines(data, labels, a.search, a.list)
        elif a.cls is not None:
            lines += class_lines(data, labels, a.cls, a.list, summary_shares(Path(a.dict), data, a.cls))
        else:
            lines += list_lines(data, labels, a.list)
    except (ActdictError, KeyError, TypeError, IndexError) as e:  # a features file of other records
        what = e if isinstance(e, ActdictError) else f"the features file's records are not analyze's ({e!r})"
        print(printable(f"actdict: {type(e).__name__}: {what}"), file=sys.stderr)
        return 2
    print(printable("\n".join(lines)))
    return 0


if __name__ == "__main__":
    from actdict.errors import run_command

    run_command(main)
