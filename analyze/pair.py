"""``actdict compare A B``: which features of two dictionaries are the same, across run folders: the layers
of one harvest (a feature at layer 2 and the one at layer 3 that fires on the same tokens), seeds, sizes.

Two measures, each of A's features against all of B's and B's against A's:

* by **co-activation**, when A and B were trained on the same rows (one harvest: the same store, any two of
  its hooks, whose rows are the same tokens; two stores of one harvest but for their hooks, a later layer
  harvested into a store of its own, every row's token checked as it is read, on the rows both hold where
  one was harvested with a larger max_tokens; one store that grew between the two trainings, on the rows
  both learned (``grown_store``); or one store of vectors):
  one pass over the rows both held out (their ``test_chunks`` in common, at most ``--rows``), both
  dictionaries' active splits (as analysis' AD), and exact counts of the rows each pair of features fires
  on together (``cofire.CoFire``). A
  feature's best partner is the one of highest Jaccard similarity of their active rows; ``mean_jaccard`` is
  the mean of that best value over the features active on some row, ``matched`` the share of them whose
  best is at least ``MATCHED`` (0.5: more rows shared than not; an open choice);
* by **decoder direction**, when both have one d (analysis' ``compare``: the same directions, live
  features, MMCS and its ``matched`` at cosine 0.9). Across layers the residual stream's basis drifts, so
  directions can differ where the activations agree: the co-activation is the measure of "the same
  feature" there, the directions say whether it is written the same way.

Prints both summaries and a table of A's most active features beside their best partners in B (with each
one's top tokens from its run folder's ``features/<name>.json`` when analysis wrote one); ``--json`` writes
every feature's partners. Shapes: B = rows, ka / kb = features, n = partners kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from actdict.analyze.cofire import CoFire, jaccard, partners
from actdict.analyze.compare import directions, live, similarity
from actdict.analyze.inputs import AnalyzeError, other_store
from actdict.analyze.metrics import active_mask
from actdict.analyze.storepath import located
from actdict.analyze.streaming import count_dtype  # the counts: int64 past 2^31 - 1 rows (CoFire)
from actdict.config import check_device
from actdict.errors import ActdictError, one_line, printable
from actdict.files import write_atomic
from actdict.harvest.store import ActivationStore, StoreError, open_store
from actdict.train import checkpoint
from actdict.train.identity import describe_store, store_key
from actdict.train.loop import resolve_device

MATCHED = 0.5


def same_rows(a: dict, b: dict) -> str | None:
    """Why the stores two checkpoints record (cfg.json ``store``) do not hold the same rows, or None when
    they do: the same harvest (config_hash, rows, source, revision; any hooks), or one store of vectors."""
    if not all((s or {}).get("rows") for s in (a, b)):  # an import records a hook at most
        return "a dictionary records no store it was trained on (an import?): name one with --store"
    ka, kb = (store_key(s) | {"hook": None, "d": None} for s in (a, b))  # per hook: the rows are one
    diff = sorted(k for k in set(ka) | set(kb) if ka.get(k) != kb.get(k))
    return f"they were trained on different stores ({', '.join(diff)} differ)" if diff else None


def grown_store(a: dict, b: dict) -> tuple[ActivationStore, int] | None:
    """(The store's hook, opened, for ``compare`` to read; the rows both records ``a``, ``b`` (cfg.json
    ``store``, one path and hook) learned) when the store grew between their trainings (a larger
    harvest.max_tokens, docs/harvest.md), else None. Each record must be the store as it is now or an earlier
    max_tokens of it: no more rows than it holds, its d, source fingerprint and model revision, and the
    config_hash of the store's harvest config with max_tokens its rows (a token harvest's max_tokens counts
    its rows; the manifest keeps only the latest config, so this recovers the earlier one's hash, and with it
    that nothing but max_tokens changed). A harvest's rows are one stream that max_tokens only cuts
    (harvest/plan.py), so the fewer rows are the store's first ones; a store harvested again with another
    config, of vectors, or one that does not open gives None."""
    from actdict.config_data import data_hash

    try:
        st = open_store(a["path"], a["hook"])
    except (StoreError, KeyError, TypeError):
        return None
    m = st.manifest
    harvest = m.get("harvest")
    if not isinstance(harvest, dict) or harvest.get("mode", "tokens") != "tokens":
        return None
    for r in (a, b):
        if not (isinstance(r.get("rows"), int) and r["rows"] <= len(st) and r.get("d") == st.d and all(
                r.get(k) == m.get(k) for k in ("source_fingerprint", "revision"))):
            return None
        if r.get("config_hash") not in (m.get("config_hash"), data_hash(harvest | {"max_tokens": r["rows"]})):
            return None
    return st, min(a["rows"], b["rows"])


def twin_stores(a: dict, b: dict) -> tuple[tuple | None, str | None]:
    """Whether the two stores two checkpoints record (cfg.json ``store``, at different paths) are one
    harvest's rows written twice: (the two hooks, opened, when each opens at its recorded path and their
    manifests record one harvest but for its hooks (``rows_view`` without them; the same rows, source
    fingerprint and model revision): a later layer harvested into a store of its own, or added to the same
    store (docs/harvest.md, "Adding a layer"; the two hooks' manifests then name other hooks), or one of
    them harvested with a larger max_tokens (or grown since: ``prefix``), else None; why it is not known,
    when one does not open (a path relative to where it was trained), else None). ``count`` then checks
    every row's token, document and position as it reads them."""
    from actdict.harvest.config import rows_view

    stores = []
    for name, s in (("A", a), ("B", b)):
        try:
            stores.append(open_store(s["path"], s["hook"]))
        except (StoreError, KeyError, TypeError):
            return None, (f"{name}'s store {s.get('path')} does not open from this folder (nor from its run "
                          "folder or above), so whether the two hold one harvest's rows (a later layer in a "
                          "store of its own) is not known: run actdict compare from the folder they were "
                          "trained in")
    ma, mb = (st.manifest for st in stores)
    ha, hb = (m.get("harvest") for m in (ma, mb))
    same = (isinstance(ha, dict) and isinstance(hb, dict) and all(
        ma.get(k) == mb.get(k) for k in ("source_fingerprint", "revision")) and (
        (rows_view(ha, ("hooks",)) == rows_view(hb, ("hooks",)) and ma.get("n_rows") == mb.get("n_rows"))
        or prefix(ma, mb)))
    return (tuple(stores) if same else None), None


def prefix(ma: dict, mb: dict) -> bool:
    """The manifests ``ma``, ``mb`` record harvests of one config but for their hooks and max_tokens, the
    one of fewer rows with the smaller max_tokens (or both as many), in one store format: the rows of a
    harvest are one stream that max_tokens only cuts (harvest/plan.py), so the fewer rows are the first rows
    of the other (as a growth keeps them), in the same chunks but for the last, which the other holds
    whole."""
    from actdict.harvest.config import rows_view
    from actdict.harvest.reuse import grows_to

    ha, hb = (m.get("harvest") for m in (ma, mb))
    aside = ("hooks", "max_tokens")
    if rows_view(ha, aside) != rows_view(hb, aside) or ma.get("format_version") != mb.get("format_version"):
        return False
    (small, n), (large, n2) = sorted([(ha, ma.get("n_rows") or 0), (hb, mb.get("n_rows") or 0)],
                                     key=lambda x: x[1])
    return n == n2 or small.get("max_tokens") == large.get("max_tokens") or grows_to(
        small.get("max_tokens"), large.get("max_tokens"))  # equal: both ended with the source


def common_rows(rec_a: dict, rec_b: dict, n_chunks: int) -> list[int]:
    """The chunks both dictionaries held out (their cfg.json ``test_chunks``), ascending; one that records
    none (an import: its training rows are unknown) leaves the other's, and two such leave every chunk."""
    held = [set(r["test_chunks"]) for r in (rec_a, rec_b) if r.get("test_chunks") is not None]
    return sorted(set.intersection(*held) if held else set(range(n_chunks)))


@torch.no_grad()
def count(models: tuple, stores: tuple, chunks: list[int], limit: int, batch: int, device: str,
          upto: int | None = None) -> tuple[CoFire, torch.Tensor, torch.Tensor, int]:
    """(co-activation counts [ka, kb], fires of A [ka], of B [kb], rows) over ``chunks`` (at most ``limit``
    rows) of the two hooks' stores, each row through both dictionaries' deterministic forward. ``upto``:
    only the rows before it (twin stores of which one holds more: ``prefix``)."""
    (ma, mb), (sa, sb) = models, stores
    co = CoFire(ma.k, device, k2=mb.k)
    fa = torch.zeros(ma.k, dtype=torch.long, device=device)
    fb = torch.zeros(mb.k, dtype=torch.long, device=device)
    n = 0
    for c in chunks:
        rows_a = read_upto(sa, c, upto)
        rows_b = rows_a if sb is sa else same_tokens(rows_a, read_upto(sb, c, upto), c)
        xa, xb = rows_a.acts[: limit - n], rows_b.acts[: limit - n]
        for s in range(0, len(xa), batch):
            acts = []
            for m, x in ((ma, xa), (mb, xb)):
                out = m(torch.as_tensor(x[s : s + batch], dtype=torch.float32, device=device), sample=False)
                acts.append(active_mask(out.activity, m.active_side))  # [B, k]
            co.update(*acts)
            fa += acts[0].sum(0)
            fb += acts[1].sum(0)
        n += len(xa)
        if n >= limit:
            break
    return co, fa, fb, n


def read_upto(store, chunk: int, upto: int | None):
    """The rows of ``chunk`` of ``store`` before global row ``upto`` (None: all of them)."""
    if upto is None:
        return store.read_chunk(chunk)
    start, stop = store.chunk_bounds(chunk)
    return store.read_rows(start, min(stop, upto))


def same_tokens(a, b, chunk: int):
    """``b`` (``Rows`` of chunk ``chunk`` of B's hook) when its rows are ``a``'s (the same token, document and
    position on every row), else an AnalyzeError: two stores that claim one harvest's rows and hold others
    (``twin_stores``), or two hooks of a store whose rows differ (a damaged store)."""
    if len(a) != len(b) or not all(np.array_equal(x, y) for x, y in ((a.token_ids, b.token_ids),
                                                                     (a.doc, b.doc), (a.pos, b.pos))):
        raise AnalyzeError(f"the rows of A's and B's stores differ in chunk {chunk} (tokens, documents or "
                           "positions): they are not one harvest's rows, and co-activation needs those; name "
                           "one store with --store")
    return b


def side(counts, fires_a, fires_b, n: int) -> tuple[dict, list]:
    """(summary of A's features against B: mean best Jaccard, matched share, live; per feature of A its n
    best partners [[j, jaccard, rows both]])."""
    feats, both = partners(counts, n, fires=(fires_a, fires_b))  # [ka, n]
    jac = jaccard(counts, fires_a, fires_b, feats)  # [ka, n]
    on = fires_a.cpu() > 0
    best = jac[:, 0][on]
    out = {"mean_jaccard": float(best.mean()) if len(best) else None,
           "matched": float((best >= MATCHED).double().mean()) if len(best) else None, "live": int(on.sum())}
    per = [[[int(j), round(float(v), 4), int(c)] for j, v, c in zip(fj, fv, fc, strict=True) if j >= 0]
           for fj, fv, fc in zip(feats.tolist(), jac.tolist(), both.tolist(), strict=True)]
    return out, per


def token_labels(dict_dir: Path, k: int) -> tuple[dict[int, str], bool]:
    """(feature -> its first 3 distinct top tokens (of a run whose rows have texts: the first words of its
    top texts), whether they are texts), read as actdict lens reads them (``lens.dict_features``: the run
    folder's features file of this training of the dictionary in ``dict_dir``); ({}, False) when there is
    none (a snapshot's, another training's), OutputError when it is damaged."""
    from actdict.analyze.lens import dict_features, labels_of

    data, _ = dict_features(dict_dir.parent.parent, dict_dir.name, k)
    if data is None:
        return {}, False
    path = dict_dir.parent.parent / "features" / f"{dict_dir.name}.json"
    return {i: ", ".join(top) for i, (top, _) in labels_of(data, 3, path).items()}, bool(data.get("texts"))


def compare(dir_a: str, dir_b: str, store: str | None = None, limit: int = 65536, n: int = 3,
            batch: int = 4096, device: str = "cpu", max_mib: float = 4096) -> dict:
    """Everything ``actdict compare`` reports (and ``--json`` writes) of dictionaries ``dir_a``, ``dir_b``."""
    (ma, ra), (mb, rb) = (checkpoint.load(d, device) for d in (dir_a, dir_b))
    ma, mb = ma.eval(), mb.eval()
    out: dict = {"a": _about(dir_a, ma, ra), "b": _about(dir_b, mb, rb), "cofire": None, "directions": None,
                 "notes": []}
    if not store:  # a path relative to the folder their training ran in: from their run folder too
        (ra, na), (rb, nb) = (located(r, Path(d)) for r, d in ((ra, dir_a), (rb, dir_b)))
        out["notes"] += [n for n in dict.fromkeys((na, nb)) if n]
    why = None if store else same_rows(ra.get("store"), rb.get("store"))
    sa_, sb_ = (r.get("store") or {} for r in (ra, rb))  # an import may record no store, or a hook only
    apart = bool(why) and bool(sa_.get("rows") and sb_.get("rows")) and (  # a later layer in a store of its
        sa_.get("path"), sa_.get("hook")) != (sb_.get("path"), sb_.get("hook"))  # own, or added to this one
    twins, lost = twin_stores(sa_, sb_) if apart else (None, None)  # (harvest/added.py): its rows are
    if lost:  # checked as they are read
        why += f"; {lost}"
    grown = grown_store(sa_, sb_) if why and not apart and sa_.get("rows") and sb_.get("rows") else None
    grew = grown[1] if grown else None  # one path and hook (not apart): one store, A's and B's
    why = None if twins or grew else why
    paths = [sa_["path"], sb_["path"]] if twins else [store or sa_.get("path")] * 2
    if not why and (need := ma.k * mb.k * (size := count_dtype(limit).itemsize) / 2**20) > max_mib:
        why = (f"its counts ({ma.k:,} x {mb.k:,} int{8 * size}, {need:,.0f} MiB) would pass --max-mib "
               f"{max_mib:,}: raise it where the memory is there")
    fires = None
    if why:
        out["notes"].append(f"no co-activation: {why}")
    else:
        path = paths[0]
        hooks = [(r.get("store") or {}).get("hook") for r in (ra, rb)]
        if None in hooks:
            raise AnalyzeError(f"{dir_a if hooks[0] is None else dir_b} records no store hook: it cannot be "
                               "read from a store (an import: 'actdict import --overwrite --hook HOOK' names "
                               "it)")
        try:
            sa = twins[0] if twins else grown[0] if grown else open_store(path, hooks[0])  # opened once,
            sb = twins[1] if twins else sa if hooks[1] == hooks[0] else open_store(path, hooks[1])  # by them
        except StoreError as e:  # a path relative to where A was trained, read from elsewhere
            if store:
                raise
            raise StoreError(f"{e} (the store {Path(dir_a) / 'cfg.json'} records; name another with --store)"
                             ) from e
        for s_, m in ((sa, ma), (sb, mb)):
            if s_.d != m.d:
                raise AnalyzeError(f"store {path} hook {s_.hook} has d={s_.d}, its dictionary d={m.d}")
        sides = (("A", sa, ra, path), ("B", sb, rb, paths[1]))
        out["notes"] += [] if grew else changed(sides)  # grown: the note below says how it changed
        upto = min(len(sa), len(sb)) if twins and len(sa) != len(sb) else None  # one of more (``prefix``)
        if grew:  # the rows both learned: the first of the store
            upto = grew
            out["notes"].append(
                f"the store {path} hook {sa.hook} grew between the two trainings (A learned {sa_['rows']:,} "
                f"rows, B {sb_['rows']:,}, it holds {len(sa):,}: a larger harvest.max_tokens keeps the first "
                f"rows): co-activation counted on the first {upto:,}, the rows both learned")
        elif upto is not None:
            out["notes"].append(
                f"A's store {path} holds {len(sa):,} rows and B's {paths[1]} {len(sb):,} (one harvest, with "
                f"a larger max_tokens or grown since): co-activation counted on the first {upto:,}, the rows "
                "both hold, each row's token checked")
        n_chunks = min(sa.num_chunks, sb.num_chunks)
        chunks = [c for c in common_rows(ra, rb, n_chunks) if c < n_chunks and (
            upto is None or sa.chunk_bounds(c)[0] < upto)]  # grown: the chunks held before it grew
        if not chunks:
            out["notes"].append("no co-activation: the two held out no chunk in common (different splits)")
        else:
            co, fa, fb, rows = count((ma, mb), (sa, sb), chunks, limit, batch, device, upto)
            fires = (fa, fb)
            sum_a, per_a = side(co.counts, fa, fb, n)
            sum_b, per_b = side(co.counts.T, fb, fa, n)
            b_apart = {"store_b": paths[1]} if paths[1] != path else {}
            out["cofire"] = {"store": path, **b_apart, "rows": rows, "chunks": chunks, "a_in_b": sum_a,
                             "b_in_a": sum_b}
            out["a"] |= {"fires": fa.tolist(), "cofire": per_a}
            out["b"] |= {"fires": fb.tolist(), "cofire": per_b}
    if ma.d == mb.d:
        out["directions"] = _directions(ma, mb, fires, out, device)
    else:
        out["notes"].append(f"no decoder directions compared: d {ma.d} and {mb.d}")
    return out


def changed(sides: tuple) -> list[str]:
    """Notes on the stores read for the (name, store, record, path) ``sides`` that are not the ones their
    records learned (as analysis tells it: ``other_store``), one per hook and difference (A and B on one
    hook: one): re-harvested since at that path, or grown (a larger max_tokens keeps the rows held out;
    anything else may put rows they learned into their held-out chunks). Counted all the same: both
    dictionaries read the same rows, which is what co-activation needs."""
    found: dict[tuple, list[str]] = {}
    for name, store, record, path in sides:
        if diff := other_store({name: record}, describe_store(store, path)).get(name):
            harvested = bool((record.get("store") or {}).get("config_hash"))  # vectors do not grow
            found.setdefault((path, store.hook, tuple(diff[:4]), harvested), []).append(name)
    notes = []
    for (path, hook, diff, harvested), names in found.items():
        who = " and ".join(names)
        notes.append(f"the store {path} hook {hook} is not the one {who} learned ({', '.join(diff)}): "
                     + ("if it grew since (a larger harvest.max_tokens), its held-out chunks hold the same "
                        "rows; otherwise " if harvested else "")
                     + f"they may hold rows {who} learned")
    return notes


def _about(path: str, model, record: dict) -> dict:
    return {"path": str(path), "variant": model.variant, "k": model.k, "d": model.d,
            "hook": (record.get("store") or {}).get("hook"), "config_hash": record.get("config_hash")}


def _directions(ma, mb, fires, out: dict, device: str) -> dict | None:
    """MMCS both ways (analysis' ``similarity``), and each feature's nearest direction [j, cos] in the other;
    live by co-activation fires when counted, else every feature with a decoder column."""
    dirs = {"a": directions(ma, ma.k, ma.d, device), "b": directions(mb, mb.k, mb.d, device)}
    if None in dirs.values():
        out["notes"].append("no decoder directions compared: a dictionary has no decode")
        return None
    f = dict(zip("ab", fires, strict=True)) if fires else {"a": torch.ones(ma.k), "b": torch.ones(mb.k)}
    alive = {x: live(f[x].to(dirs[x][1].device), dirs[x][1]) for x in "ab"}
    sim, pairs = similarity({x: u for x, (u, _) in dirs.items()}, alive)
    for x, y in (("a", "b"), ("b", "a")):
        best, arg = pairs[x, y]
        out[x]["direction"] = [[int(j), round(float(c), 4)] if j >= 0 else None
                               for j, c in zip(arg.tolist(), best.tolist(), strict=True)]
    return {"a_in_b": sim["a"]["b"], "b_in_a": sim["b"]["a"]}


def report_lines(out: dict, top: int, labels: tuple[dict, dict], what: tuple[str, str] = ("tokens", "tokens")
                 ) -> list[str]:
    """The printed summary: both measures both ways, then A's ``top`` most active features (by fires when
    co-activation was counted, else by index) beside their best partner in B by each measure, labelled by
    their top ``what`` (A's, B's: tokens, or texts)."""
    a = out["a"]
    name = {x: f"{Path(out[x]['path']).name} ({out[x]['variant']}, k {out[x]['k']}, "
               f"{out[x]['hook'] or 'hook not recorded'})" for x in "ab"}  # an import's may be None
    lines = [f"compare: A = {out['a']['path']}: {name['a']}", f"compare: B = {out['b']['path']}: {name['b']}"]
    if co := out["cofire"]:
        lines.append(f"co-activation on {co['rows']:,} rows both held out: best partner's Jaccard, mean "
                     f"(share >= {MATCHED}): A in B {_num(co['a_in_b'])}; B in A {_num(co['b_in_a'])}")
    if dr := out["directions"]:
        lines.append(f"decoder directions, MMCS (share >= 0.9): A in B {_num(dr['a_in_b'], 'mmcs')}; "
                     f"B in A {_num(dr['b_in_a'], 'mmcs')}")
    lines += [f"compare: note: {note}" for note in out["notes"]]
    order = (sorted(range(a["k"]), key=lambda i: (-a["fires"][i], i)) if co else range(a["k"]))
    shown = [i for i in order if not co or a["fires"][i] > 0][:top]
    if not shown or not (co or out["directions"]):  # neither measure: no table of empty rows
        return lines
    la, lb = labels
    if blank := [x for x, lab in zip("AB", labels, strict=True) if not lab]:  # their columns would be blank
        lines.append(f"compare: note: no labels for {' and '.join(blank)}: no features file of this training "
                     "in its run folder (actdict analyze there writes it)")
    fires = {i: f"{a['fires'][i]:,}" if co else "" for i in shown}  # 4,691: as analyze and actdict feature
    fw = max(7, *map(len, fires.values()))  # write counts; a wider column for --rows of millions
    lines.append(f"{'A':>6} {'fires':>{fw}}  {what[0]:<24} {'B (co-act.)':>11} {'Jacc.':>6}  {what[1]:<24} "
                 f"{'B (dir.)':>8} {'cos':>6}")
    for i in shown:
        best = (a.get("cofire") or [[]] * a["k"])[i][:1]  # [[j, jaccard, rows]] or []
        bj, jac = ("#" + str(best[0][0]), f"{best[0][1]:.3f}") if best else ("", "")
        near = (a.get("direction") or [None] * a["k"])[i]  # [j, cos] or None
        dj, cos = ("#" + str(near[0]), f"{near[1]:.3f}") if near else ("", "")
        lines.append(f"{'#' + str(i):>6} {fires[i]:>{fw}}  {la.get(i, '')[:24]:<24} "
                     f"{bj:>11} {jac:>6}  {lb.get(best[0][0], '') if best else '':<24.24} {dj:>8} {cos:>6}")
    return lines


def _num(s: dict, key: str = "mean_jaccard") -> str:
    if s.get(key) is None:
        return "none live"
    return f"{s[key]:.3f} ({s['matched']:.1%} of {s['live']:,} live)"


def main(argv: list[str] | None = None) -> int:
    """``actdict compare DICT_A DICT_B`` (``python -m actdict.analyze.pair``)."""
    p = argparse.ArgumentParser(prog="actdict compare", description="which features of two dictionaries "
                                "(two layers of one harvest, two seeds, two sizes) are the same: by "
                                "co-activation on the rows both held out, and by decoder direction")
    p.add_argument("a", help="a trained dictionary: RUN_DIR/dicts/NAME")
    p.add_argument("b", help="another one (e.g. the next layer's run folder)")
    p.add_argument("--store", help="the store to read (default: the one A's cfg.json records); naming it "
                   "also skips the check that both were trained on its rows (an import records none)")
    p.add_argument("--rows", type=int, default=65536, help="at most this many held-out rows (default 65536)")
    p.add_argument("--partners", type=int, default=3, help="partners kept per feature in --json (default 3)")
    p.add_argument("--top", type=int, default=12, help="A's most active features printed (default 12)")
    p.add_argument("--json", help="write every feature's partners here")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:1...")
    p.add_argument("--max-mib", type=float, default=4096, help="memory for the co-activation counts, k_A x "
                   "k_B x 4 bytes (default 4096: two dictionaries of 32,768); beyond it they are not counted")
    args = p.parse_args(argv)
    if min(args.rows, args.partners) < 1 or args.top < 0 or not args.max_mib >= 0:  # (nan: counted always)
        p.error("--rows and --partners must be >= 1, --top and --max-mib >= 0")
    if args.json and not (Path(args.json).parent.is_dir() and not Path(args.json).is_dir()):
        p.error(f"--json {args.json}: not a file in an existing folder")
    try:
        check_device(args.device, "--device", float64=True)  # gpu; cuda unseen; mps: one line, as train's
        device = str(resolve_device(args.device))
        out = compare(args.a, args.b, args.store, args.rows, args.partners, device=device,
                      max_mib=args.max_mib)
        found = [token_labels(Path(out[x]["path"]), out[x]["k"]) for x in "ab"]
    except ActdictError as e:
        print(printable(f"actdict: {type(e).__name__}: {e}"), file=sys.stderr)
        return 2
    labels, what = tuple(lab for lab, _ in found), tuple("texts" if t else "tokens" for _, t in found)
    if args.json:  # before the table: a reader closing stdout early (| head) must not lose it
        write_atomic(Path(args.json), json.dumps(out, separators=(",", ":"), allow_nan=False))
    print(printable("\n".join(report_lines(out, args.top, labels, what))))  # tokens, hooks: no control codes
    if args.json:
        print(one_line(f"compare: wrote {args.json}"))
    return 0


if __name__ == "__main__":
    from actdict.errors import run_command

    run_command(main)
