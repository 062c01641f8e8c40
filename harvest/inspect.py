"""``actdict store PATH [--hook H] [--verify | --repair] [--json]``: what a store holds, hook by hook.

Per hook: whether the harvest finished, rows, width d, stored dtype, shards and chunks, bytes on disk,
and where the rows came from (model, numerics, corpus, from the manifest). An unfinished store
is described by its complete shards. ``--verify`` re-reads every shard and checks its checksums
(``ActivationStore.verify``): a damaged shard is named and the command exits 2. ``--repair`` re-reads every
shard too, removes the damaged ones and marks their hook unfinished (``resume.repair``): the harvest command
that made the store then writes only those shards again. Local folders and fsspec URLs alike.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from actdict.errors import ActdictError, printable
from actdict.files import check_not_linked
from actdict.harvest.layout import (
    SHARDS,
    StoreError,
    fs_of,
    human_size,
    is_local,
    list_hooks,
    shard_gaps,
    whole_shards,
)
from actdict.harvest.resume import repair, repair_manifest, store_lock
from actdict.harvest.store import ActivationStore, hook_folder, open_store, reimport_command


def describe(store: ActivationStore) -> dict:
    """The summary of one opened hook: layout, size and provenance (no activation is read). ``rows``,
    ``shards`` and ``chunks`` count what can be read: an unfinished hook's whole shards 0, 1, ... up to
    the first gap; ``on_disk`` counts every whole shard there, ``missing`` the gaps below the last one (the
    first 1,000: a stray folder may be named 10**12)."""
    m = store.manifest
    on_disk = sorted(int(n) for n in whole_shards(store.fs, store.dir))
    missing = shard_gaps(set(on_disk), on_disk[-1] + 1, 1000)[0] if on_disk else []  # a folder 10**12
    return {"hook": store.hook, "complete": bool(m.get("complete")), "rows": len(store), "d": store.d,
            "dtype": store.dtype_name, "shards": store.num_shards, "chunks": store.num_chunks,
            "chunk_rows": store.chunk_rows, "bytes": int(store.fs.du(store.dir)), "on_disk": len(on_disk),
            "missing": missing, "model": m.get("model"), "numerics": m.get("numerics"),
            "corpus": m.get("corpus")}


def line(info: dict) -> str:
    state = "complete" if info["complete"] else "INCOMPLETE (harvest not finished; complete shards only)"
    if info["on_disk"] > info["shards"] and info["missing"]:  # rows are read in order: a gap hides the
        gaps = ", ".join(map(str, info["missing"][:8])) + (", ..." if len(info["missing"]) > 8 else "")
        state += (f"; {info['on_disk']} whole shards on disk, shard(s) {gaps} missing: the rows above are "
                  "those before the first gap, and the harvest command writes the missing ones")
    elif info["on_disk"] > info["shards"]:  # object stores write shards in place: some are not whole yet
        state += (f"; {info['on_disk'] - info['shards']} more shard folder(s) on disk are not whole (being "
                  "written, or cut short by a kill): the harvest command rewrites them")
    return printable(f"{info['hook']}: {info['rows']:,} rows x d {info['d']} {info['dtype']}, "
                     f"{info['shards']} shards, {info['chunks']} chunks of {info['chunk_rows']}, "
                     f"{human_size(info['bytes'])}; {state}\n"
                     f"  model {info['model'] or '- (no model: imported vectors)'}; "
                     f"{info['numerics'] or 'numerics not recorded'}\n"
                     f"  corpus {info['corpus'] or 'not recorded'}")  # a shared manifest: no control codes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="actdict store", description=(__doc__ or "").split("\n")[0])
    ap.add_argument("path", help="store root, or one hook's folder <store>/<hook> (folder or fsspec URL)")
    ap.add_argument("--hook", action="append", help="only this hook (repeatable); default every hook")
    ap.add_argument("--verify", action="store_true", help="re-read every shard and check its checksums")
    ap.add_argument("--repair", action="store_true", help="re-read every shard, remove the damaged ones and "
                    "mark their hook unfinished: the same harvest command then writes them again")
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    a = ap.parse_args(argv)
    out, bad = [], 0
    try:
        hooks = list_hooks(a.path)
        if not hooks and (own := hook_folder(a.path)):  # a hook's own folder: that hook of its store
            if a.hook and set(a.hook) != {own[1]}:
                raise StoreError(f"{a.path} is the folder of hook {own[1]!r} alone, not of "
                                 f"{sorted(set(a.hook))}")
            a.path, hooks = own[0], [own[1]]
        elif a.hook:
            hooks = list(dict.fromkeys(a.hook))  # each hook once, in the order given
        if not hooks:
            raise StoreError(f"no activation store at {a.path} (no <hook>/manifest.json found)")
        if a.repair:
            return repair_hooks(a.path, hooks)
        for hook in hooks:
            store = open_store(a.path, hook, allow_partial=True)
            info = describe(store)
            if a.verify:
                try:
                    store.verify(progress=True)  # (on a terminal only)
                    info["verified"] = "ok"
                except StoreError as e:
                    info["verified"], bad = str(e), bad + 1
            out.append(info)
            if not a.json:
                verified = printable(f"\n  verify: {info['verified']}") if a.verify else ""
                print(line(info) + verified, flush=True)
    except ActdictError as e:  # StoreError, FolderInUse
        print(printable(f"actdict store: {e}"), file=sys.stderr)  # not in the report (--json) on stdout
        return 2
    if a.json:
        print(json.dumps(out, indent=1, default=str))
    return 2 if bad else 0


def repair_hooks(path: str, hooks: list[str]) -> int:
    """``--repair``: each hook's damaged shards removed, holding the store's lock; every hook's manifest is
    read first, so that a bad one stops the command before anything is changed. Exit status 0."""
    with store_lock(path) as writing:
        writing()  # a training or analysis reading the store finishes first
        if is_local(fs_of(path)[0]):  # a shared store's link would lead the removals out of it
            root = fs_of(path)[1]
            check_not_linked([p for h in hooks for p in (Path(root, h), Path(root, h, SHARDS))],
                             "the repaired hook's files")
        manifests = {hook: repair_manifest(path, hook) for hook in hooks}
        removed = {}
        for hook in hooks:
            removed[hook] = bad = repair(path, hook, manifests[hook])
            said = "; ".join(f"{name}: {why}" for name, why in bad.items())
            state = f"{len(bad)} shard(s) to write again ({said})" if bad else "intact"
            print(printable(f"{hook}: {state}"), flush=True)
    harvested = {h: manifests[h].get("config_hash") for h, bad in removed.items() if bad}
    if any(harvested.values()):
        print(printable(f"the store is now unfinished: run the harvest command that made it (the same config "
                        f"and store {path}) to write those shards again; a token harvest computes only them"))
    if len(set(filter(None, harvested.values()))) > 1:  # a layer added later: two configs, each its hooks
        names = lambda h: (manifests[h].get("harvest") or {}).get("hooks") or []  # noqa: E731
        for h in sorted(harvested, key=lambda h: (len(names(h)), h)):  # the config naming fewer hooks first
            print(printable(f"{h}: written by the config with hooks {json.dumps(names(h))} "
                            f"({harvested[h]}): run that one for it, those naming fewer hooks first"))
    for h, bad in removed.items():
        if bad and not (m := manifests[h]).get("config_hash"):  # write_vectors / the vectors module
            print(printable(f"{h}: vectors written from Python or by `python -m actdict.harvest.vectors` "
                            f"have no harvest to rerun: import them again in the same layout: "
                            f"{reimport_command(path, h, m)}"))
    return 0
