"""Which training a trained dictionary is: its config hash (``dict_hash``: its DictConfig, the training
settings, the seed, the split and the store's identity, ``store_key`` of what ``describe_store`` records),
and, for a finished checkpoint a run would overwrite, what differs (``replaced``, ``replace_note``). The
train stage (``train.run``) skips a dictionary whose finished checkpoint has its hash; analysis compares the
store each dictionary recorded with the one it reads (``analyze.inputs.other_store``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from actdict.config import Common
from actdict.config_data import config_changes, to_dict
from actdict.files import disk_path
from actdict.train import checkpoint
from actdict.train.config import DictConfig, TrainConfig
from actdict.train.resume import listed

_UNHASHED = ("dicts", "device", "checkpoint_every", "log_every", "resume",  # no change to the result,
             "resume_drop", "keep_state", "hook", "probe_rows",  # or that the store's identity holds (hook)
             "snapshot_every")
_LATER = {"grad_clip": 0.0}  # settings added after the first release: hashed only when not at their default,
# so runs made before them keep their hashes (and resume / count as finished)


def dict_hash(dc: DictConfig, cfg: TrainConfig, common: Common, store_id: dict, split: dict,
              legacy: bool = False) -> str:
    """Everything that determines a trained dictionary, hashed (sorted JSON, sha256, 16 hex chars).
    ``legacy``: the hash of checkpoints made before 2026-12-05, which hashed the store's path as spelled
    (they still count as finished, and their resume states still resume)."""
    settings = {k: v for k, v in _hashed(to_dict(cfg)).items() if not (k in _LATER and v == _LATER[k])}
    store = {k: v for k, v in store_id.items() if k in _LEGACY_STORE} if legacy else store_key(store_id)
    blob = {"dict": to_dict(dc), "train": settings, "seed": common.seed, "store": store,
            "train_chunks": split["train_chunks"]}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _hashed(settings: dict) -> dict:
    """The train settings that change a dictionary (those ``dict_hash`` and ``replaced`` compare)."""
    return {k: v for k, v in settings.items() if k not in _UNHASHED}


_LEGACY_STORE = ("path", "hook", "rows", "d", "config_hash")  # the store's part of the pre-2026-12-05 hash
_RECORDED_LATER = ("revision", "source_fingerprint", "content")  # store keys checkpoints record since then


def legacy_store(folder: Path, store_id: dict) -> dict:
    """``store_id`` as a checkpoint in ``folder`` made before 2026-12-05 hashed it: with the path its record
    spells when it learned this same harvested store (the config_hash, which identifies the rows, is
    the same), so that a run folder or store moved since (or spelled otherwise) still counts as finished and
    is not retrained, as a newer checkpoint is not (the path is no part of a harvested store's identity)."""
    old = (checkpoint.finished_record(folder) or {}).get("store") or {}
    if store_id.get("config_hash") and old.get("config_hash") == store_id["config_hash"] and old.get("path"):
        return store_id | {"path": old["path"]}
    return store_id


def store_key(store_id: dict) -> dict:
    """What identifies a store's rows: its harvest's config_hash, hook, rows, d, source fingerprint and model
    revision; and, for a store with no config_hash (``write_vectors`` from Python, the vectors import), its
    path (a local one resolved, spelled as its disk holds it: one folder, one key, ``files.disk_path``) and
    the digest of its shards (``content``, recorded by the writer since 2026-12-05), so that other vectors
    imported over it retrain its dictionaries. Not its model's name: recorded for the exports, implied by
    the rest."""
    store_id = {k: v for k, v in store_id.items() if k != "model"}
    if store_id.get("config_hash"):
        return {k: v for k, v in store_id.items() if k != "path"}
    path = store_id.get("path")
    if path is None:
        return store_id
    return store_id | {"path": path.rstrip("/") if "://" in path else disk_path(path)}  # one spelling


def other_split(run_dir: Path, names: set[str], split: dict) -> list[str]:
    """The finished dictionaries of ``run_dir`` outside ``names`` whose held-out chunks are not ``split``'s:
    analysis reads one split per run folder, so a run that wrote ``split`` would leave them unreadable."""
    root = run_dir / "dicts"
    folders = [p for p in sorted(root.iterdir()) if p.name not in names] if root.is_dir() else []
    records = {p.name: checkpoint.finished_record(p) for p in folders}
    return [n for n, r in records.items() if r and r.get("test_chunks") not in (None, split["test_chunks"])]


def identity(dc: DictConfig, cfg: TrainConfig, seed: int, store_id: dict) -> dict:
    """A dictionary's config as ``replaced`` and a refused resume compare it (JSON types)."""
    new = {"dict": to_dict(dc), "train": _hashed(to_dict(cfg)), "seed": seed, "store": store_key(store_id)}
    return json.loads(json.dumps(new, default=str))


def replaced(path: Path, dc: DictConfig, cfg: TrainConfig, seed: int, store_id: dict) -> str | None:
    """When ``path`` holds a finished checkpoint that this run will overwrite: what differs, in words."""
    if (old := checkpoint.finished_record(path)) is None:
        return None
    if isinstance(imported := old.get("imported"), dict):  # no training to compare with
        return f"an SAE imported from {imported.get('from')} (actdict import)"
    new = identity(dc, cfg, seed, store_id)
    recorded = old.get("store") or {}  # what an older actdict did not record is not a change
    new["store"] = {k: v for k, v in new["store"].items() if k in recorded or k not in _RECORDED_LATER}
    was = {"dict": old.get("dict_config"), "seed": old.get("seed"), "store": store_key(recorded),
           "train": _hashed(old.get("train_config") or {})}
    return "; ".join(config_changes(was, new)[:6]) or "the split, or its weights file is missing or damaged"


def describe_store(store, path: str) -> dict:
    """What a checkpoint records of the store it learned (``store`` in cfg.json; ``store_key`` of it is
    hashed): path, hook, rows, d and the manifest's identity of the rows."""
    manifest = getattr(store, "manifest", {})
    store_id = {"path": str(store.path) if hasattr(store, "path") else path,
                "hook": getattr(store, "hook", None), "rows": len(store), "d": store.d,
                "config_hash": manifest.get("config_hash"), "source_fingerprint":
                manifest.get("source_fingerprint"), "revision": manifest.get("revision"),
                "model": manifest.get("model")}
    if manifest.get("content"):  # a store with no harvest config (your own vectors): its rows' digest
        store_id["content"] = manifest["content"]
    return store_id


def replace_note(names: list[str], what: str, keep_state: bool) -> str:
    """The line saying that the finished checkpoints of ``names`` (which differ alike, as a sweep's do) will
    be replaced; when their epochs changed and no state is kept (``keep_state`` False: neither asked for
    nor left by an earlier run), how to keep one."""
    hint = ("; train.keep_state=true keeps a finished run's state, so that raising epochs continues it"
            if "train.epochs:" in what and not keep_state else "")
    one = len(names) == 1
    why = (f"{'it holds' if one else 'they hold'} {what}" if what.startswith("an SAE imported")
           else f"{'it was' if one else 'they were'} trained with another config: {what}")
    whose = "its finished checkpoint" if one else "their finished checkpoints"
    return (f"train: {listed(names)}: {whose} will be replaced ({why}); set run_dir, or rename the "
            f"dictionar{'y' if one else 'ies'}, to keep both{hint}")
