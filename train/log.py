"""The training log: each dictionary's loss terms, averaged over every ``train.log_every`` steps, as they are
trained, in ``<run_dir>/logs/<name>.jsonl`` (the loss curves of ``report.html``).

One JSON object per line. The first names the training it logs::

    {"config_hash": str, "dict": str, "variant": str}

then one per interval, appended (and flushed) as it ends: every ``log_every`` steps, and at the end of each
epoch (a shorter interval when ``log_every`` does not divide the epoch; 0 = once per epoch)::

    {"step": int, "epoch": int, "steps": int, "lr": float, "time": float, "<term>": float, ...,
     "eval_ad": float, "eval_l0": float, "eval_ev": float, "eval_live": float,
     "held_ad": float, "held_l0": float, "held_ev": float, "held_live": float}   # held_*: train.probe_rows

``step``: the steps done at its end; ``steps``: how many it averages (the terms are means over them, of
what the progress bar shows per step); ``lr``: its last step's learning rate; ``time``: Unix time at its end;
``eval_*``: the dictionary's sparsity and fit on the interval's last batch, as analysis measures them
(``actdict.train.probe``; values of that one batch, not means over the interval); ``held_*``: the same of
``train.probe_rows`` held-out rows, the same rows every interval (with that setting only).
A resumed run first drops the records after the step it resumes from (a kill between an interval's record
and the next resume state leaves some; the resume state carries the open interval's sums), so the log of an
interrupted run equals an uninterrupted run's but for ``time``. A training that starts over (another
config, or no resume state) starts the file over; the log of another config it replaces is kept as
``logs/.previous/<name>.jsonl`` (``previous_path``), since that config's checkpoint stays in ``dicts/<name>``
until the new training finishes, and analysis still draws its curves when that training is interrupted.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from actdict.files import write_atomic

LOGS = "logs"


def log_path(run_dir: str | Path, name: str) -> Path:
    return Path(run_dir) / LOGS / f"{name}.jsonl"


def previous_path(path: Path) -> Path:
    """Where ``start_log`` keeps the log of another config that it replaces: a hidden folder, which no
    dictionary's name can be (names never start with ``.``)."""
    return path.parent / ".previous" / path.name


def read_log(path: str | Path) -> tuple[dict | None, list[dict]]:
    """(the header, the records) of a log; (None, []) when there is none. A line a kill cut short (not
    JSON, or not an object), the last one, is left out."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (FileNotFoundError, UnicodeDecodeError):
        return None, []
    objs = []
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            break
        if not isinstance(obj, dict):
            break
        objs.append(obj)
    if not objs or "config_hash" not in objs[0]:
        return None, []
    return objs[0], [o for o in objs[1:] if isinstance(o.get("step"), int)]


def start_log(path: Path, header: dict, from_step: int = 0, from_hash: str | None = None,
              keep: str | None = None) -> None:
    """Make ``path`` the log of the training ``header`` names, which resumes at ``from_step`` a state written
    by the training of config hash ``from_hash`` (its own, or a finished run's kept state that it extends):
    the records up to that step are kept when the file logs that training; everything else goes, but for a
    log of ``keep`` (the config hash of the finished checkpoint in ``dicts/<name>``, which stays there until
    this training's replaces it), which moves to ``previous_path``. A log of another training (one replaced
    and interrupted before) is not kept: it would push out the finished checkpoint's."""
    old, records = read_log(path)
    same = old is not None and from_step > 0 and old["config_hash"] == from_hash
    kept = [r for r in records if r["step"] <= from_step] if same else []
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = previous_path(path)
    if old is not None and old["config_hash"] not in (header["config_hash"], None) and \
            old["config_hash"] == keep and not previous.parent.is_symlink():
        previous.parent.mkdir(exist_ok=True)  # its checkpoint stays until this one's: keep its log
        os.replace(path, previous)  # (not through a link)
    write_atomic(path, "".join(json.dumps(o, allow_nan=False) + "\n" for o in [header, *kept]))


def append_record(path: Path, record: dict) -> None:
    """One interval's record (non-finite values as null), appended and flushed. Bytes, as ``start_log``
    writes the lines before it: Windows' text mode ends a line with '\\r\\n', and a log resumed there held
    lines of both endings, a file unlike the one Linux writes of the same training."""
    clean = {k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in record.items()}
    with open(path, "ab") as f:
        f.write((json.dumps(clean, allow_nan=False) + "\n").encode("utf-8"))


def curve(records: list[dict], points: int = 1000) -> dict[str, list]:
    """The records merged into at most ``points`` consecutive groups (each term: the step-weighted mean of
    its group; step, epoch, lr: the group's last) as columns: {"step": [...], "epoch": [...], "lr": [...],
    "<term>": [...]} (a term a record lacks, or null: null for the group)."""
    if not records:
        return {}
    g = math.ceil(len(records) / points)
    terms = sorted({k for r in records for k in r} - {"step", "epoch", "steps", "lr", "time"})
    out: dict[str, list] = {k: [] for k in ("step", "epoch", "lr", *terms)}
    for i in range(0, len(records), g):
        group = records[i:i + g]
        for k in ("step", "epoch", "lr"):
            out[k].append(group[-1].get(k))
        for k in terms:
            vals = [(r.get(k), r.get("steps", 1)) for r in group]
            if any(v is None for v, _ in vals):
                out[k].append(None)
            else:
                out[k].append(sum(v * n for v, n in vals) / sum(n for _, n in vals))
    return out


def trained_curve(run_dir: str | Path, name: str, config_hash: str | None, points: int = 1000) -> dict | None:
    """``curve`` of the log of the training whose checkpoint has ``config_hash`` (``logs/<name>.jsonl``, or
    the one a retraining with another config, started since, replaced: ``previous_path``); None when neither
    logs it (a checkpoint older than logs)."""
    for path in (log_path(run_dir, name), previous_path(log_path(run_dir, name))):
        head, records = read_log(path)
        if head is not None and config_hash is not None and head["config_hash"] == config_hash:
            return curve(records, points) or None
    return None
