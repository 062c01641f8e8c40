"""``train.snapshot_every``: a dictionary's weights kept every N steps beside its checkpoint, as
``<run_dir>/dicts/<name>/snapshots/step-NNNNNNN/`` (a dictionary's folder: ``checkpoint.save``'s files, its
cfg.json naming the step and what it is a snapshot of). A retrained dictionary keeps its own training's
snapshots only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from actdict.files import write_atomic
from actdict.train import checkpoint

SNAPSHOTS = "snapshots"


def snapshot_path(run_dir: Path, name: str, step: int) -> Path:
    """Where ``train.snapshot_every`` keeps dictionary ``name``'s weights at ``step``."""
    return run_dir / "dicts" / name / SNAPSHOTS / f"step-{step:07d}"


def settle_snapshots(run_dir: Path, name: str, config_hash: str, continued: str | None = None) -> None:
    """Keep only this training's snapshots of dictionary ``name``: those of the finished run it continues
    (``continued``: its config hash, a ``train.keep_state`` extension) are its first steps and take
    ``config_hash``, the hashes they had kept in ``continued_from`` (until the extension is done, its
    finished run is the one analysed); those another training kept (another config_hash in their cfg.json,
    or none readable) are removed."""
    for p, rec in _records(run_dir, name):
        kept = rec.get("config_hash") if rec else None
        if continued is not None and kept == continued:
            was = {"config_hash": config_hash, "continued_from": [*rec.get("continued_from", []), continued]}
            write_atomic(p / checkpoint.CFG, json.dumps(rec | was, indent=1))
        elif kept != config_hash:
            shutil.rmtree(p, ignore_errors=True)


def _records(run_dir: Path, name: str) -> list[tuple[Path, dict | None]]:
    """Each snapshot folder of dictionary ``name``, by name (step), with its cfg.json record (None: none
    readable, or not a mapping)."""
    root, out = run_dir / "dicts" / name / SNAPSHOTS, []
    for p in sorted(root.glob("step-*")) if root.is_dir() else []:
        try:
            rec = json.loads((p / checkpoint.CFG).read_text())
        except (OSError, ValueError):
            rec = None
        out.append((p, rec if isinstance(rec, dict) else None))
    return out


def snapshots_of(run_dir: Path, name: str, config_hash: str | None) -> list[tuple[int, Path]]:
    """(step, folder) of the snapshots that the training of dictionary ``name`` with ``config_hash`` kept, by
    step: the ones whose cfg.json says so, as its config_hash or one of its ``continued_from`` (a
    ``train.keep_state`` extension of it, unfinished or not, took them); a folder without a readable one,
    or another training's, left out; [] without a config_hash to match."""
    out = []
    for p, rec in _records(run_dir, name) if config_hash else []:
        if rec is None:
            continue
        continued = rec.get("continued_from")
        hashes = [rec.get("config_hash"), *(continued if isinstance(continued, list) else [])]
        if config_hash in hashes and isinstance(step := rec.get("step"), int):
            out.append((step, p))
    return sorted(out)
