"""The resume state of a training run: one file ``<run_dir>/train_state.safetensors``, written atomically
(temporary file + rename), never pickled.

Tensors: every dictionary's weights (``<name>/model/<key>``) and Adam state (``<name>/opt/<param>/<key>``),
and the torch CPU random state (``rng/torch``; the loop reseeds every step from (seed, step), so this is
only a record). The safetensors metadata holds one JSON document: the batch position (epoch, batch, step),
the run's segments so far (one per process start: steps from and to, ranks, wall seconds), per dictionary
its config hash, Adam's param groups and scalar state, the epoch history and the running sums of the current
epoch, and what its training warning reads (``Member.diverged``: the SSE's moving average, its first step's
SSE, the last epoch's baseline, spread and mean squared row norm, the current epoch's baseline sums and row
moments), so that a resumed run warns as the uninterrupted one. A state is used only when the set of
dictionaries and their config hashes match.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from actdict.config_data import config_changes
from actdict.errors import ActdictError
from actdict.train import checkpoint
from actdict.train.checkpoint import write_safetensors
from actdict.train.config import TrainConfig
from actdict.train.dist import like_param
from actdict.train.member import Member, Position

STATE = "train_state.safetensors"
KEPT = "kept_state.safetensors"  # a finished run's state, in its dictionary's folder (train.keep_state)
_KEY = "actdict_train_state"


def save_state(path: str | Path, members: list[Member], hashes: dict[str, str], pos: Position,
               configs: dict[str, dict] | None = None, final: bool = False,
               segments: list[dict] | None = None) -> Path:
    """``configs``: each member's config as JSON (what its hash covers), kept so that a refused resume can
    say what changed. ``final``: the state of a finished run, kept (``train.keep_state``) to be extended.
    ``segments``: the run's segments so far (steps, ranks, wall seconds each), carried across resumes."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {"rng/torch": torch.get_rng_state()}
    meta: dict = {"position": vars(pos), "members": {}} | ({"final": True} if final else {}) | (
        {"segments": segments} if segments else {})
    for m in members:
        for k, v in m.model.state_dict().items():
            tensors[f"{m.name}/model/{k}"] = v
        opt = m.opt.state_dict()
        scalars: dict[str, dict] = {}
        for pid, st in opt["state"].items():
            for k, v in st.items():
                if isinstance(v, torch.Tensor):
                    tensors[f"{m.name}/opt/{pid}/{k}"] = v
                else:
                    scalars.setdefault(str(pid), {})[k] = v
        meta["members"][m.name] = {"config_hash": hashes[m.name], "param_groups": opt["param_groups"],
                                   "opt_scalars": scalars, "history": m.history, "sums": m.sums,
                                   "ema": list(m.ema), "baseline": m.baseline, "spread": m.spread,
                                   "norm2": m.norm2, "first_sse": m.first, "epoch_acc": m.epoch_acc,
                                   "window": m.window, "window_n": m.window_n}
        if configs is not None:
            meta["members"][m.name]["config"] = configs[m.name]
    write_safetensors(unshared(tensors), path, metadata={_KEY: json.dumps(meta)})
    return path


def unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` on the CPU, contiguous, each with memory of its own, as safetensors needs: a copy only of
    one whose storage an earlier one uses. (A copy of each doubled the memory of every dictionary's weights
    and Adam state at each checkpoint: +271 MiB for 20 sae_l1 of k = 1,536 at d = 384.)"""
    out, seen = {}, set()
    for k, v in tensors.items():
        v = v.detach().cpu().contiguous()
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


class ResumeConflict(ActdictError):
    """The run folder holds the resume state of another run: continuing would be wrong, starting over
    would discard it."""


def read_meta(path: str | Path) -> dict | None:
    """The JSON part of a state file, or None if there is none (or it is unreadable: ``unreadable``, or not a
    state's: its ``members`` not a mapping of names to records with a ``config_hash``, or no ``position``)."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata()[_KEY])
    except (OSError, KeyError, ValueError, TypeError, SafetensorError):
        return None
    members = meta.get("members") if isinstance(meta, dict) else None
    if not (isinstance(members, dict) and isinstance(meta.get("position"), dict) and all(
            isinstance(m, dict) and isinstance(m.get("config_hash"), str) for m in members.values())):
        return None  # another program's JSON, an edit: a traceback wherever it was read
    return meta


def unreadable(path: Path) -> bool:
    """``path`` exists but holds no readable state (truncated, damaged, or not a state file)."""
    return path.is_file() and read_meta(path) is None


def state_matches(meta: dict, hashes: dict[str, str], legacy: dict[str, str] | None = None,
                  finished: set[str] = frozenset()) -> bool:
    """The state (``read_meta``) holds exactly the members ``hashes`` names with those config hashes (or the
    ``legacy`` ones), besides the ``finished`` members it may still hold (and those the run drops)."""
    held = {n: m["config_hash"] for n, m in meta["members"].items() if n not in finished}
    return held in (hashes, legacy)


_LENGTH_FREE = ("cosine_restarts", "constant")  # schedules whose rate at a step ignores the run length


def extension(kept: dict[str, dict], hashes: dict[str, str],
              configs: dict[str, dict]) -> tuple[dict[str, str] | None, str]:
    """Whether the kept final states of finished runs (``kept``: each dictionary's ``read_meta`` of its
    ``KEPT`` file, ``train.keep_state``) continue into this run: (their config hashes, to load them with,
    or None; why not, in words). They do when every dictionary of this run has one, each configured as now
    but for a smaller ``train.epochs``, all at the end of that last epoch (the same step), and the schedule
    ignores the run length."""
    if missing := sorted(set(hashes) - set(kept)):
        return None, (f"{missing} have no kept state (added since, or trained without train.keep_state); "
                      "to continue the others, train those in a run folder of their own")
    if len({m["position"]["step"] for m in kept.values()}) > 1:
        return None, "the kept states stand at different steps"
    for n, meta in kept.items():
        m = meta["members"][n]
        old, new = m.get("config") or {}, configs[n]
        changes = config_changes(old, new)
        if [c.split(":")[0] for c in changes] != ["train.epochs"]:
            return None, f"{n}: {'; '.join(changes[:4]) or 'the same config'}"
        was, now, pos = old["train"]["epochs"], new["train"]["epochs"], meta["position"]
        if now < was or (pos["epoch"], pos["batch"]) != (was, 0):
            return None, f"{n}: train.epochs {was} -> {now}, the state at epoch {pos['epoch']}"
        if new["train"]["schedule"] not in _LENGTH_FREE:
            return None, (f"{n}: schedule {new['train']['schedule']} decays over the whole run, so a longer "
                          "run is another run")
    return {n: meta["members"][n]["config_hash"] for n, meta in kept.items()}, ""


def conflict(meta: dict, hashes: dict[str, str], configs: dict[str, dict], ignored: set[str]) -> str:
    """Why the state (``read_meta``) is not this run's, per dictionary, and what to do: the state's members
    this run lacks, this run's members the state lacks, and what changed in the others' configs (when the
    state recorded them, as states do since 2026-12-05)."""
    held = {n: m for n, m in meta["members"].items() if n not in ignored}
    extra = sorted(set(held) - set(hashes))
    why = [(n, "in the state, not in train.dicts") for n in extra]
    why += [(n, "not in the state") for n in sorted(set(hashes) - set(held))]
    store_only = True  # every change recorded is the store's
    unrecorded = False  # a changed member whose config the state lacks (an actdict of before 2026-12-05)
    for n in sorted(set(hashes) & set(held)):
        if held[n]["config_hash"] != hashes[n]:
            old = held[n].get("config")
            unrecorded = unrecorded or not old
            changes = config_changes(old, configs[n]) if old else []
            store_only = store_only and bool(changes) and all(c.startswith("store.") for c in changes)
            why.append((n, "; ".join(changes[:4]) or "another config or store"))
    added = sorted(set(hashes) - set(held))
    changed = why[len(extra) + len(added):]
    if changed and store_only and not extra and not added:
        todo = ("the store changed since that run began (grown, or written again), so it cannot continue: "
                "point `store` at the store it trained on, if you have it")
    elif extra and set(hashes) <= set(held) and not changed:
        todo = (f"to resume {sorted(hashes)} and drop the progress of {extra}, set "
                f"train.resume_drop=[{','.join(extra)}]; to continue all, rerun that run's command")
    elif added and not extra and not changed:
        todo = (f"dictionaries join a run only at its start: finish this one first (leave {added} out of "
                "train.dicts for that run, then add them: they train on their own)")
    else:
        then = (", with `store` spelled as it was then (an actdict of before 2026-12-05 wrote this state: it "
                "records no config, and hashed the store's path as spelled; a moved store resumes through a "
                "symlink at its old path)" if unrecorded else "")
        todo = (f"rerun that run's command{then} to continue it (or leave the changed dictionaries out of "
                "train.dicts and name them in train.resume_drop to resume the rest)")
    reasons = {r: [n for n, r2 in why if r2 == r] for _, r in why}  # a sweep's dictionaries change alike
    said = "; ".join(f"{listed(ns)}: {r}" for r, ns in reasons.items())
    state = sorted(meta["members"])
    state = listed(state) if len(state) > LISTED else f"dictionaries {state}"
    return (f"holds the resume state of another run ({state} at step "
            f"{meta['position']['step']}; {said or 'another config or store'}): {todo}, or set "
            "train.resume=false to start this one over (the state is then replaced)")


LISTED = 3  # dictionaries a message names one by one; more (a sweep's): ``listed``


def listed(names: list[str]) -> str:
    """Dictionaries in a message: up to ``LISTED`` by name, more (a sweep's) by number, first and last."""
    if len(names) <= LISTED:
        return ", ".join(names)
    return f"{len(names)} dictionaries {names[0]} ... {names[-1]}"


def load_state(path: str | Path, members: list[Member], hashes: dict[str, str],
               legacy: dict[str, str] | None = None, finished: set[str] = frozenset(),
               meta: dict | None = None) -> Position | None:
    """Load the state into ``members`` (models and optimizers already built and set up); returns the
    position to continue from, or None (nothing loaded) when the file is absent or belongs to another run
    (its members' config hashes are neither ``hashes`` nor ``legacy``, the same run's older hashes).
    ``finished``: members of the state that have since been saved as finished (ignored). ``meta``: the
    file's ``read_meta`` when the caller has it (not read again), else read here."""
    meta = read_meta(path) if meta is None else meta
    if meta is None or not state_matches(meta, hashes, legacy, finished):
        return None
    # copies: a tensor that safe_open gives keeps the file mapped while it lives (Adam's moments live on),
    # and Windows replaces no mapped file: the run's next save over this one failed there
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k).clone() for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    for m in members:
        mm = meta["members"][m.name]
        try:
            _load_member(m, mm, tensors)
        except (RuntimeError, KeyError, ValueError, TypeError) as e:  # a hand-made or damaged file
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ResumeConflict(f"{path} holds a state of {m.name} that does not fit its dictionary "
                                 f"({first}): it is damaged or not this run's; remove it, or set "
                                 "train.resume=false to start over") from e
        m.history, m.sums = mm["history"], mm["sums"]
        # what the training warning reads (states written before 2026-12-05 lack them: it restarts them)
        m.ema, m.baseline, m.spread = tuple(mm.get("ema", (0.0, 0.0))), mm.get("baseline"), mm.get("spread")
        m.norm2, m.first, m.epoch_acc = mm.get("norm2"), mm.get("first_sse"), mm.get("epoch_acc")
        m.window, m.window_n = mm.get("window", {}), mm.get("window_n", 0)  # the open log interval (12-06)
        m.resumed = (set(m.sums) if m.sums else None, set(m.window) if m.window_n else None)
    torch.set_rng_state(tensors["rng/torch"])
    return Position(**meta["position"])


def _load_member(m: Member, mm: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Member ``m``'s weights and Adam state from the state's tensors and its metadata ``mm``."""
    model_sd = {k.split("/", 2)[2]: v for k, v in tensors.items() if k.startswith(f"{m.name}/model/")}
    m.model.load_state_dict(model_sd, strict=True)
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith(f"{m.name}/opt/"):
            pid, key = k.split("/", 3)[2:]
            state.setdefault(int(pid), {})[key] = v
    for pid, sc in mm["opt_scalars"].items():
        state.setdefault(int(pid), {}).update(sc)
    m.opt.load_state_dict({"state": state, "param_groups": mm["param_groups"]})
    _match_layout(m.opt)


def _match_layout(opt: torch.optim.Optimizer) -> None:
    """Give each parameter-shaped state tensor (Adam's moments, held contiguous in the file) its parameter's
    memory layout (``dist.like_param``)."""
    for p, st in opt.state.items():
        for key, v in st.items():
            if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                st[key] = like_param(p, v)


def stale_state(run_dir: Path, meta: dict) -> bool:
    """The resume state (``read_meta``) holds only dictionaries that have finished checkpoints of the
    state's own configs: what a kill after the final saves, before the state's removal, leaves. Nothing in
    it is to resume."""
    return all(checkpoint.is_finished(run_dir / "dicts" / n, m["config_hash"])
               for n, m in meta["members"].items())


def remove_stale(state_path: Path, why: str, say: Callable[[str], None]) -> None:
    """Remove a resume state nothing will resume, saying ``why``."""
    try:
        state_path.unlink()
        say(f"train: removed {state_path}: {why}")
    except OSError as e:
        say(f"train: note: {state_path} is {why}, but cannot be removed ({e.strerror})")


def set_aside(run_dir: Path, cfg: TrainConfig, meta: dict,
              hashes: dict[str, str]) -> tuple[set[str], set[str]]:
    """The members of the resume state (``read_meta``) that a run of the dictionaries ``hashes`` names
    leaves aside: (those finished since, a kill between the final saves; those ``train.resume_drop``
    drops)."""
    done = {n for n, m in meta["members"].items()  # a kill between the final saves leaves finished members
            if n not in hashes and checkpoint.is_finished(run_dir / "dicts" / n, m["config_hash"])}
    return done, {n for n in cfg.resume_drop if n in meta["members"] and n not in hashes} - done


def unused_line(state_path: Path, meta: dict) -> str:
    """What ``train.resume=false`` does with the resume state ``meta`` at ``state_path`` (the training says
    it, and ``actdict train --dry-run`` first)."""
    return (f"train.resume=false: the resume state {state_path} (step {meta['position']['step']} of "
            f"{listed(sorted(meta['members']))}) is not used, and this run's replaces it")


def resume_state(run_dir: Path, cfg: TrainConfig, hashes: dict[str, str], legacy: dict[str, str],
                 configs: dict[str, dict], say: Callable[[str], None],
                 meta: dict | None) -> tuple[dict | None, set[str]]:
    """The run folder's resume state (``meta``: its ``read_meta``, None when there is none or it is
    unreadable) when this run continues it -> (its meta or None, the state's members to ignore: finished
    since, or dropped by ``train.resume_drop``); ResumeConflict when it is another run's. Damaged states and
    kept states are named."""
    state_path = run_dir / STATE
    damaged = [state_path] if meta is None and unreadable(state_path) else []  # read again only then
    for path in damaged + [p for n in hashes if unreadable(p := run_dir / "dicts" / n / KEPT)]:
        say(f"train: note: {path} is damaged or not a resume state (a full disk, a copy cut short?): it "
            "is not used, and this run replaces or removes it")
    if not cfg.resume:
        if meta:
            say(f"train: {unused_line(state_path, meta)}")
        return None, set()
    if meta is None:
        return None, set()
    done, drop = set_aside(run_dir, cfg, meta, hashes)
    if not state_matches(meta, hashes, legacy, done | drop):  # before the models and stats
        raise ResumeConflict(f"{state_path} " + conflict(meta, hashes, configs, done))
    if drop:
        say(f"train: resuming without {listed(sorted(drop))} (train.resume_drop): their progress in the "
            "resume state is dropped")
    return meta, done | drop


def kept_states(run_dir: Path, cfg: TrainConfig, hashes: dict[str, str],
                configs: dict[str, dict]) -> tuple[dict[str, dict], dict[str, str] | None, str | None]:
    """Finished runs' states (``train.keep_state``) of the dictionaries to train -> (their metas, the hashes
    to load them with when they continue this run, else None; what that means for the run, None without any
    kept state: the training says it, and ``actdict train --dry-run`` says it first)."""
    kept = {n: k for n in hashes if (k := read_meta(run_dir / "dicts" / n / KEPT))}
    if kept and not cfg.resume:
        return {}, None, f"train.resume=false: the kept states of {listed(sorted(kept))} are not used"
    if not kept:
        return {}, None, None
    kept_hashes, why = extension(kept, hashes, configs)
    epoch = next(iter(kept.values()))["position"]["epoch"]
    line = (f"continues the finished run kept at epoch {epoch} (train.keep_state) to epoch {cfg.epochs}"
            if kept_hashes else f"the kept states of {listed(sorted(kept))} do not continue this run "
            f"({why}); every dictionary starts over, and the kept states are " + (
                "replaced when it ends (stop it now to keep them)" if cfg.keep_state else
                "removed when it ends (train.keep_state is off)"))
    return kept, kept_hashes, line
