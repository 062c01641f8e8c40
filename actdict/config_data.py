"""A config as plain data, and what tells two apart: ``to_dict`` (for manifests and cfg.json), its short
hash (``config_hash``, ``data_hash``: a store's or a checkpoint's identity) and the keys where two differ
(``config_changes``: what a refusal names)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-data form of a config dataclass (for manifests and cfg.json)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_hash(cfg: Any) -> str:
    """Stable short hash of a config dataclass (sorted JSON, sha256, 16 hex chars)."""
    return data_hash(to_dict(cfg))


def data_hash(data: dict) -> str:
    """``config_hash`` of a config as plain data (a manifest's ``harvest``, as ``to_dict`` wrote it)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def config_changes(old, new, prefix: str = "") -> list[str]:
    """Where two configs (as JSON dicts) differ: 'dotted.key: old -> new' per differing leaf, sorted."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [] if old == new else [f"{prefix.rstrip('.') or 'config'}: {_short(old)} -> {_short(new)}"]
    out = []
    for k in sorted(set(old) | set(new), key=str):
        out += config_changes(old.get(k, _UNSET), new.get(k, _UNSET), f"{prefix}{k}.")
    return out


_UNSET = object()  # a key one of the two configs lacks


def _short(v, width: int = 60) -> str:
    r = "unset" if v is _UNSET else repr(v)
    return r if len(r) <= width else r[:width - 3] + "..."
