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


def other_snapshots(run_dir: Path, name: str, config_hash: str, continued: str | None = None) -> list[Path]:
    """The snapshots of dictionary ``name`` that another training of it kept (another config_hash in their
    cfg.json, or none readable). Those of the finished run this one continues (``continued``: its config
    hash, a ``train.keep_state`` extension) are this run's first steps: they take ``config_hash`` and stay."""
    root = run_dir / "dicts" / name / SNAPSHOTS
    out = []
    for p in sorted(root.glob("step-*")) if root.is_dir() else []:
        try:
            rec = json.loads((p / checkpoint.CFG).read_text())
            kept = rec.get("config_hash")
        except (OSError, ValueError, AttributeError):
            kept = None
        if continued is not None and kept == continued:
            write_atomic(p / checkpoint.CFG, json.dumps(rec | {"config_hash": config_hash}, indent=1))
        elif kept != config_hash:
            out.append(p)
    return out


def drop_other_snapshots(run_dir: Path, name: str, config_hash: str, continued: str | None = None) -> None:
    """Remove the snapshots of dictionary ``name`` that another training of it kept (``other_snapshots``)."""
    for old in other_snapshots(run_dir, name, config_hash, continued):
        shutil.rmtree(old, ignore_errors=True)
