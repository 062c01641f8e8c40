"""How a dictionary's features formed over its training, read from ``train.snapshot_every``'s snapshots.

For each snapshot of the training analysed (``train.snapshot.snapshots_of``: its cfg.json names this
training's config hash), the final dictionary's live features (active on some held-out row, with a decoder
column) are looked for among the snapshot's decoder directions, as ``actdict compare`` and the shared
directions look for one dictionary's features in another's: their mean best cosine (MMCS) and the share
within cosine 0.9 (``compare.MATCHED``). Every feature of the snapshot with a decoder column counts (no pass
over the rows for it), so a snapshot at the last step finds every live feature: MMCS 1. Steps where MMCS is
still low are those where the directions the run ends with were not there yet (docs/results.md, E32, reads
the same snapshots with ``actdict compare``, co-activation too). Each feature's page shows its own best
cosine in each snapshot: when its direction formed.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from actdict.analyze.compare import NOTE_MACS, directions, nearest, null_columns, shared_share
from actdict.bars import bar_disabled, bar_timing
from actdict.errors import ActdictWarning, one_line
from actdict.train import checkpoint
from actdict.train.snapshot import snapshots_of


def formation(run_dir: Path, name: str, config_hash: str | None, units: Tensor, alive: Tensor,
              device: torch.device) -> tuple[dict, Tensor] | None:
    """({"step": [...], "mmcs": [...], "matched": [...]}, each feature's best cosine in each snapshot
    [s, k] (-inf: a feature without a direction)) of dictionary ``name``'s snapshots of the training with
    ``config_hash``, by step, against the final dictionary's unit directions ``units`` [k, d] and live
    features ``alive`` [k]; None without snapshots. A snapshot that cannot be read (a damaged copy) is left
    out with a warning: the analysis does not stop for it."""
    snaps = snapshots_of(run_dir, name, config_hash)
    if not snaps:
        return None
    if (macs := len(snaps) * units.shape[0] ** 2 * units.shape[1]) > NOTE_MACS:  # as the shared directions
        print(one_line(f"analyze: {name}'s formation: {len(snaps):,} snapshots, {macs:.2g} multiply-adds "
                       "(analyze.shared_directions=false skips them)"))  # a name: any text
    out: dict[str, list] = {"step": [], "mmcs": [], "matched": []}
    cosines, unread = [], []
    for step, folder in tqdm(snaps, desc=one_line(f"formation {name}"), unit="snapshot", leave=False,
                             disable=bar_disabled(), **bar_timing()):
        try:
            model, _ = checkpoint.load(folder, device)
        except checkpoint.CheckpointError as e:
            unread.append(f"{name}'s formation leaves out its snapshot at step {step}: {e}")
            continue
        found = directions(model, model.k, model.d, device)
        if found is None:  # (a snapshot is its dictionary's variant: it has a decode when the final one has)
            return None
        snap_units, norm = found  # [k, d], [k]
        best, _ = nearest(units, snap_units, ~null_columns(norm))  # [k] each final feature's best cosine
        shared = shared_share(units, alive, best)
        for key, value in (("step", step), ("mmcs", shared["mmcs"]), ("matched", shared["matched"])):
            out[key].append(value)
        cosines.append(best.cpu())
    for why in unread:  # once the bar is gone: not on its line
        warnings.warn(why, ActdictWarning, stacklevel=2)
    return (out, torch.stack(cosines)) if cosines else None  # [s, k]


def feature_cosines(cosines: Tensor) -> list[list[float | None]]:
    """[k] lists of each feature's best cosine in each snapshot (``formation``'s [s, k]), 4 decimals, None
    where it has no direction: what a feature page shows."""
    return [[round(c, 4) if math.isfinite(c) else None for c in col] for col in cosines.T.tolist()]
