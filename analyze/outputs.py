"""Reading back what ``actdict analyze`` wrote (``summary.json``, ``features/<name>.json``), and the helpers
its writing shares: the run id every output carries, the JSON's rounding, the temporary files of a killed one.

A damaged file (an analysis killed while writing one before they were written atomically, a disk full, a
hand edit) is one clear error naming the file and the command that rewrites it, not a JSONDecodeError
traceback.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from pathlib import Path

from actdict.errors import ActdictError
from actdict.files import remove_temps


class OutputError(ActdictError, ValueError):
    """An analysis output that cannot be read: rerunning ``actdict analyze`` rewrites it."""


def read_output(path: Path) -> dict:
    """The JSON object in the analysis output ``path``; OutputError when it is truncated, corrupt or not an
    object (what every reader of these files expects)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OutputError(f"{path} is truncated or corrupt (not valid JSON: {e}): rerun `actdict analyze` to "
                          "rewrite it") from e
    if not isinstance(data, dict):
        raise OutputError(f"{path} is corrupt (a JSON {type(data).__name__}, not the object analyze writes): "
                          "rerun `actdict analyze` to rewrite it")
    return data


def not_a_snapshot(folder: Path, command: str) -> None:
    """OutputError when ``folder`` holds a snapshot (``train.snapshot_every``: its cfg.json names what it is
    a snapshot of), which no analysis reads: ``command`` is for analysed dictionaries."""
    try:
        record = json.loads((folder / "cfg.json").read_text())
    except (OSError, ValueError):
        return
    if isinstance(record, dict) and record.get("snapshot_of"):
        raise OutputError(f"{folder} is a snapshot of {record['snapshot_of']} at step {record.get('step')}, "
                          f"which analysis does not read: actdict compare it with the dictionary "
                          f"({folder.parent.parent}), or {command} that one")


def new_run_id() -> str:
    """An analysis run's id, e.g. '20261205-135210-3f9a1c': its start time (UTC) and 6 random hex digits."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def previous_models(run_dir: Path) -> list[str]:
    """The dictionaries of the summary.json this analysis replaces ([] if none, or unreadable)."""
    try:
        return list(json.loads((run_dir / "summary.json").read_text())["models"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def remove_output_temps(run_dir: Path) -> None:
    """The temporary files of outputs a killed analysis was writing (each output is written to one and
    renamed, ``actdict.files.write_atomic``); the analysis lock says no other analysis is writing them."""
    for folder, pattern in ((run_dir, "summary.json"), (run_dir, "report.html"),
                            (run_dir / "features", "*.json"), (run_dir / "report", "*")):
        remove_temps(folder, pattern)


def clean_json(x):
    """Round floats to 6 significant digits, non-finite -> None, tensors/numpy scalars -> Python."""
    if isinstance(x, dict):
        return {str(k): clean_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean_json(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float):
        return float(f"{x:.6g}") if math.isfinite(x) else None
    return x
