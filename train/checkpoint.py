"""Checkpoints: ``<dir>/model.safetensors`` (weights) + ``<dir>/cfg.json`` (how to rebuild). Never pickle.

cfg.json holds at least ``variant``, ``d``, ``k``, ``params`` (the variant's keyword args) and whatever the
caller adds (the training record, ``finished``, ``config_hash``). It is written last, so a folder with a
cfg.json has whole weights. A model trained on normalised inputs (:class:`Normalized`) also stores
``norm_mean`` / ``norm_scale`` tensors and ``"normalized": true``; ``load`` rebuilds the wrapper, so callers
always feed raw rows.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from actdict.config import ConfigError
from actdict.errors import ActdictError
from actdict.files import WriteError, remove_temps, write_atomic
from actdict.train.protocol import Dictionary, Forward, make, make_meta, plugin_hint, registry

WEIGHTS, CFG = "model.safetensors", "cfg.json"


class Normalized(Dictionary):
    """Wraps a dictionary trained on x_n = (x - mean) / scale so that it reads and reconstructs raw rows.

    forward(x) runs the inner model on x_n and returns x_hat in raw space (x_hat_n * scale + mean); the
    loss is the inner model's loss in normalised space.
    """

    def __init__(self, inner: Dictionary, mean: Tensor, scale: float) -> None:  # mean: [d]
        super().__init__(inner.d, inner.k, **inner.params)
        self.inner = inner
        self.variant, self.active_side = inner.variant, inner.active_side  # type: ignore[misc]
        self.trains_reconstruction = inner.trains_reconstruction  # type: ignore[misc]
        self.batch_loss = inner.batch_loss  # type: ignore[misc]
        self.register_buffer("norm_mean", torch.as_tensor(mean, dtype=torch.float32).reshape(inner.d))
        self.register_buffer("norm_scale", torch.tensor(float(scale)))

    def forward(self, x: Tensor, sample: bool = True) -> Forward:  # x: [B, d] raw
        out = self.inner((x - self.norm_mean) / self.norm_scale, sample=sample)
        extras = dict(out.extras, x_hat_norm=out.x_hat)
        return out.replace(x_hat=out.x_hat * self.norm_scale + self.norm_mean, extras=extras)

    def decode(self, codes: Tensor) -> Tensor:  # codes: [B, k] -> raw-space x_hat [B, d]
        return self.inner.decode(codes) * self.norm_scale + self.norm_mean

    def loss_terms(self, x: Tensor, out: Forward) -> dict[str, Tensor]:
        inner_out = out.replace(x_hat=out.extras["x_hat_norm"])
        return self.inner.loss_terms((x - self.norm_mean) / self.norm_scale, inner_out)

    def after_step(self) -> None:
        self.inner.after_step()


class CheckpointError(ActdictError, FileNotFoundError):
    """A dictionary folder without a finished checkpoint, or with a damaged one."""


def write_safetensors(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` to ``path`` atomically (a temporary file, then a rename), with the permissions any
    new file gets here (safetensors creates its files with mode 0600, unreadable to the rest of a group).
    A failed write leaves ``path`` as it was and no temporary file (``WriteError``)."""
    os.replace(safetensors_temp(tensors, path, metadata), path)


def temp_path(path: Path) -> Path:
    """The one temporary name of a safetensors file ``path`` (one writer per folder: the run folder's lock),
    so a killed write's leftover is reused, or removed by name."""
    return path.with_name(f".{path.name}.tmp")


def safetensors_temp(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    """``tensors`` written whole to a temporary file beside ``path`` (``temp_path``), to be renamed to it;
    returns it."""
    tmp = temp_path(path)
    try:
        save_file(tensors, str(tmp), metadata=metadata)
    except (SafetensorError, OSError) as e:
        tmp.unlink(missing_ok=True)
        raise WriteError(f"could not write {path}: {e} ({path} is as it was)") from e
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
    except OSError:  # a file system without modes (some CIFS / FUSE mounts): keep what it gave
        pass
    return tmp


def _proc_umask() -> int | None:
    """The process's umask as Linux says it (/proc), read without changing it; None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return None


def _read_umask() -> int:
    """The process's umask: from /proc where Linux says it, else set and restored, once, at import (before
    any thread of ours runs: os.umask cannot read without setting)."""
    if (mask := _proc_umask()) is not None:
        return mask
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def current_umask() -> int:
    """The umask now (Linux: read at each save, so that a notebook's ``os.umask`` after the import counts),
    else the one at import."""
    mask = _proc_umask()
    return _UMASK if mask is None else mask


def save(dir: str | Path, model: Dictionary, cfg_dict: dict[str, Any]) -> Path:
    """Write weights then cfg.json (variant, d, k, params + ``cfg_dict``) into ``dir``. The new weights are
    written whole to a temporary file, then an older cfg.json goes, then the weights are renamed into place
    and the record written: a kill in between leaves a folder with no cfg.json (unfinished: train trains it
    again), never new weights under an old record; a failed write (a full disk) leaves the old checkpoint."""
    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = safetensors_temp(state, out / WEIGHTS)
    (out / CFG).unlink(missing_ok=True)
    os.replace(tmp, out / WEIGHTS)
    cfg = dict(cfg_dict) | {"variant": model.variant, "d": model.d, "k": model.k, "params": model.params,
                            "normalized": isinstance(model, Normalized)} | plugin_of(model)
    write_atomic(out / CFG, json.dumps(cfg, indent=1, default=str))
    remove_temps(out, CFG)  # a killed save's (one writer: the run folder's lock)
    return out


def plugin_of(model: Dictionary) -> dict[str, str]:
    """``{"plugin": module}`` for a variant of another package (``train.plugins``), so that a folder read
    where that package is missing names it; {} for actdict's own."""
    module = type(model.inner if isinstance(model, Normalized) else model).__module__
    return {} if module.startswith("actdict.") else {"plugin": module}


def unknown_variant(cfg: dict[str, Any]) -> str | None:
    """Why no class here builds the variant a cfg.json record names (None: one does)."""
    classes = registry()
    if cfg["variant"] in classes:
        return None
    made = f" (it was trained with module {cfg['plugin']!r}, a plugin)" if cfg.get("plugin") else ""
    return (f"its variant {cfg['variant']!r} is provided by no package installed here{made}: install the "
            f"package that provides it (docs/variants.md, 'Your own variant'); registered: "
            f"{', '.join(sorted(classes))}{plugin_hint()}")


def weights_readable(path: Path) -> bool:
    """``path`` is a whole safetensors file (its header read and checked against the file's size)."""
    try:
        with safe_open(str(path), "pt"):
            return True
    except (SafetensorError, OSError):
        return False


def _read(d: Path) -> tuple[str, dict[str, Tensor]] | None:
    """cfg.json's text and the weights of the checkpoint in ``d``, read as one: None when a training saved
    it meanwhile (cfg.json is held open while the weights are read; ``save`` replaces the weights only after
    removing it, so a cfg.json still in place afterwards names the weights read)."""
    try:
        with open(d / CFG, encoding="utf-8") as f:
            text, state = f.read(), load_file(str(d / WEIGHTS))
            now = os.stat(d / CFG)
            same = (now.st_ino, now.st_dev) == (os.fstat(f.fileno()).st_ino, os.fstat(f.fileno()).st_dev)
    except FileNotFoundError:  # removed by a save in progress
        return None
    return (text, state) if same else None


def damaged(d: Path, why: object) -> str:
    """What a checkpoint folder ``d`` whose files cannot be read is told (``why``: what was wrong). A
    snapshot (train.snapshot_every) is not written again by a training that finds its dictionary done."""
    if d.parent.name == "snapshots":
        return f"{d} holds a damaged snapshot: delete it, no training writes it again ({why})"
    return f"{d} holds a damaged checkpoint: rerun actdict train, which trains it again ({why})"


def changed(d: Path, cfg: dict[str, Any], why: object) -> str:
    """What a checkpoint folder ``d`` of a plugin's variant is told when that variant's code, as installed
    now, builds another model than the weights saved there (a parameter renamed or dropped since)."""
    return (f"{d}: variant {cfg['variant']!r} of module {cfg['plugin']!r} (a plugin), as installed here, "
            "does not build the model saved there: its code changed since the training? Install the version "
            f"it was trained with, or delete the folder and rerun actdict train ({why})")


def _check_whole(d: Path) -> None:
    if not (d / CFG).is_file() or not (d / WEIGHTS).is_file():
        raise CheckpointError(f"{d} has no {CFG} + {WEIGHTS}: not a (finished) checkpoint")


def load(dir: str | Path, device: str | torch.device = "cpu") -> tuple[Dictionary, dict[str, Any]]:
    """Rebuild the model saved in ``dir`` (eval mode, on ``device``) -> (model, cfg dict). A checkpoint that
    a training saves while it is read is read again once it is whole (an analysis beside a training)."""
    d = Path(dir)
    _check_whole(d)
    for _ in range(50):  # a save between the check and the read: its cfg.json is back within ~1 ms
        try:
            if got := _read(d):
                break
        except (UnicodeDecodeError, SafetensorError) as e:
            raise CheckpointError(damaged(d, e)) from e
        time.sleep(0.1)
    else:
        _check_whole(d)  # a save killed part way
        raise CheckpointError(f"{d} was saved again and again while it was read (a training writing it?): "
                              "rerun when that training is done")
    try:
        cfg, state = json.loads(got[0]), got[1]
    except ValueError as e:
        raise CheckpointError(damaged(d, e)) from e
    if not isinstance(cfg, dict) or not {"variant", "d", "k", "params"} <= set(cfg):
        raise CheckpointError(damaged(d, f"its {CFG} is not an actdict checkpoint's record"))
    if why := unknown_variant(cfg):
        raise CheckpointError(f"{d}: {why}")
    try:
        why = other_shapes(cfg, state)
    except ConfigError as e:  # the record's params, refused by the variant's code
        why = f"its {CFG} records params the variant refuses: {e}"
    if why:
        raise CheckpointError(changed(d, cfg, why) if cfg.get("plugin") else damaged(d, why))
    if bad := [k for k, v in state.items() if v.is_floating_point() and (v.isnan() | v.isposinf()).any()]:
        raise CheckpointError(f"{d} holds weights with NaN or +inf values ({', '.join(bad[:3])}; a training "
                              "saves none: an edit or a broken copy): delete the folder and rerun actdict "
                              "train, which trains it again")  # (-inf: the log of 0, a JumpReLU threshold)
    model: Dictionary = make(cfg["variant"], cfg["d"], cfg["k"], **cfg["params"])
    if cfg.get("normalized"):
        model = Normalized(model, state["norm_mean"], float(state["norm_scale"]))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), cfg


def other_shapes(cfg: dict[str, Any], state: dict[str, Tensor]) -> str | None:
    """How the model that ``cfg`` (a cfg.json record) describes differs from the weights ``state``, in words:
    its d, k or params are not numbers and a mapping, or its tensors' names and shapes (built on the meta
    device: nothing allocated) are not the weights'; None when they match. A record edited or taken from
    another checkpoint (k = 10**9 beside weights of k = 384) is named before any memory is taken for it."""
    if not all(isinstance(cfg[n], int) and not isinstance(cfg[n], bool) and cfg[n] >= 1 for n in ("d", "k")):
        return f"its {CFG} records d={cfg['d']!r}, k={cfg['k']!r}: not whole numbers >= 1"
    if not isinstance(cfg["params"], dict):
        return f"its {CFG} records params {cfg['params']!r}: not a mapping"
    model = make_meta(cfg["variant"], cfg["d"], cfg["k"], **cfg["params"])
    if model is None:  # a plugin's that cannot be built on the meta device: built for real
        model = make(cfg["variant"], cfg["d"], cfg["k"], **cfg["params"])
    if cfg.get("normalized"):
        with torch.device("meta"):
            model = Normalized(model, torch.zeros(cfg["d"]), 1.0)
    want = {k: list(v.shape) for k, v in model.state_dict().items()}
    got = {k: list(v.shape) for k, v in state.items()}
    if diff := sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k)):
        said = ", ".join(f"{k} {got.get(k, 'missing')} (the record's: {want.get(k, 'none')})"
                         for k in diff[:3])
        return (f"its {WEIGHTS} does not hold the tensors its {CFG} describes ({cfg['variant']}, "
                f"d={cfg['d']}, k={cfg['k']}): {said}")
    return None


def finished_record(path: Path) -> dict | None:
    """The cfg.json record of the finished checkpoint in ``path`` (None: none, or not finished)."""
    try:
        record = json.loads((path / CFG).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("finished") else None


def is_finished(path: Path, *hashes: str) -> bool:
    """``path`` holds a finished checkpoint whose config_hash is one of ``hashes``."""
    record = finished_record(path) or {}
    return record.get("config_hash") in hashes and weights_readable(path / WEIGHTS)
