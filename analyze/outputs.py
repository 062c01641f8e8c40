"""Reading back what ``actdict analyze`` wrote (``summary.json``, ``features/<name>.json``).

A damaged file (an analysis killed while writing one before they were written atomically, a disk full, a
hand edit) is one clear error naming the file and the command that rewrites it, not a JSONDecodeError
traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

from actdict.errors import ActdictError


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
