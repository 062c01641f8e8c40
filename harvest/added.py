"""Hooks added to a complete store: a token harvest whose config is the store's but for its ``hooks`` keeps
the hooks the store holds (``reuse.held_hooks``) and writes only those it lacks, beside them, with the
forward stopped after the deepest new one (a layer harvested later, ``hooks: [all]`` after one layer).

Training, analysis and ``actdict compare`` pair the hooks of a store row for row, so an added hook's rows
must be the held ones': what the manifests record of the model's and the source files' versions must match
(``check_added``), each shard's token ids, documents and positions are compared with the held hook's same
rows before it is written (``check_rows``), and the row count at the end (``harvest.run``). The config is
the store's, so these fail only when the files changed in place (the fingerprint holds sizes and times, not
contents) or a hub source gives other documents now.
"""

from __future__ import annotations

import numpy as np

from actdict.harvest.resume import HarvestError, identity_diff


def remove_added(path: str, hooks: list[str]) -> str:
    """What to do when an added hook's rows are not the store's."""
    folders = ", ".join(f"{path}/{h}" for h in hooks)
    return (f"the source or the model gives other rows than when the store was harvested: delete {folders} "
            "(the hooks being added) and harvest them into another store (set store / run_dir), or delete "
            f"{path} to harvest every hook again")


def check_added(found: dict, expected: dict, where: str, path: str, hooks: list[str]) -> None:
    """Before hooks are added beside a held hook (manifest ``found``): what this harvest's manifests would
    record besides its config (``expected``: the model's revision, the source files' fingerprint, an
    encoder's attention mask) must be the held hook's."""
    keys, diff = identity_diff(found, expected)
    if keys:
        raise HarvestError(f"{where} was harvested from other files ({diff}), so {hooks} cannot be added "
                           "beside it: harvest them into another store (set store / run_dir), or delete "
                           f"{path} to harvest every hook again")


def check_rows(ref, start: int, data: dict[str, np.ndarray], hooks: list[str]) -> None:
    """The rows ``start``.. of a shard about to be written for the added ``hooks`` (``data``: its
    token_ids, doc, pos) are rows ``start``.. of ``ref`` (an ``ActivationStore`` of a held hook): else
    HarvestError naming the first row that differs, and nothing of the shard is written."""
    n, held = len(data["token_ids"]), len(ref)
    stop = min(start + n, held)
    mine = [np.asarray(data[k][:max(stop - start, 0)], dtype=np.int64) for k in ("doc", "pos", "token_ids")]
    theirs = [a.astype(np.int64) for a in (ref.read_meta(start, stop) if stop > start else [np.empty(0)] * 3)]
    theirs = [theirs[1], theirs[2], theirs[0]]  # (doc, pos, token id), as mine
    differs = np.flatnonzero(np.any([a != b for a, b in zip(mine, theirs, strict=True)], axis=0))
    if len(differs):
        i = int(differs[0])
        said = [f"doc {a[i]}, position {b[i]}, token id {c[i]}" for a, b, c in (mine, theirs)]
        why = f"its row {start + i:,} would be {said[0]}, but hook {ref.hook!r} holds {said[1]} there"
    elif start + n > held:
        why = f"the source gives more rows than hook {ref.hook!r} holds ({held:,})"
    else:
        return
    raise HarvestError(f"store {ref.path}: {hooks} cannot be added: {why}; {remove_added(ref.path, hooks)}")


def check_count(ref, rows: int, hooks: list[str]) -> None:
    """Once the stream has ended: the added ``hooks`` hold as many rows as ``ref`` (a held hook's store)."""
    if rows != len(ref):
        raise HarvestError(f"store {ref.path}: {hooks} cannot be added: the source gave {rows:,} rows, but "
                           f"hook {ref.hook!r} holds {len(ref):,}; {remove_added(ref.path, hooks)}")
