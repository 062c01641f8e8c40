"""The ``train`` stage: ``main(common, cfg)`` trains every dictionary of ``cfg.dicts`` on one batch stream.

Writes ``<run_dir>/split.json`` (seeded chunk split; one that differs from the split on disk only with the
final checkpoints, so that an interrupted run leaves the finished dictionaries' split for analyze),
``<run_dir>/train_state.safetensors`` (the resume state, every ``checkpoint_every`` steps, on SIGTERM and
on a first Ctrl-C; removed when the run ends), ``<run_dir>/logs/<name>.jsonl`` (the loss terms every
``log_every`` steps, as they are trained: ``actdict.train.log``) and ``<run_dir>/dicts/<name>/`` (final
checkpoint, its ``cfg.json`` recording the test chunks). A dictionary whose finished checkpoint has the same
``config_hash`` (its DictConfig, the training settings, the seed, the store's identity (``store_key``:
not how its path is spelled) and the split) is skipped; the others are
(re)trained together (a finished checkpoint they replace is announced, with what differs), continuing
from the resume state when it belongs to the same set; a resume state of another run is refused, not
silently dropped (``train.resume=false`` starts over).
Under ``torchrun`` every rank runs this; rank 0 writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path

import torch

from actdict.config import Common, ConfigError, config_changes, to_dict
from actdict.files import check_not_linked, remove_temps
from actdict.harvest.store import list_hooks, open_store, read_lock
from actdict.lock import check_writable, folder_lock
from actdict.train import checkpoint
from actdict.train import dist as dist_
from actdict.train.config import DictConfig, TrainConfig
from actdict.train.data import (
    iter_rows,
    make_split,
    norm_stats,
    split_note,
    split_readable,
    steps_in_epoch,
    write_split,
)
from actdict.train.log import LOGS, append_record, log_path, start_log
from actdict.train.loop import Member, Position, check_device, resolve_device, train
from actdict.train.protocol import make, registry
from actdict.train.resume import (
    KEPT,
    STATE,
    kept_states,
    listed,
    load_state,
    read_meta,
    remove_stale,
    resume_state,
    save_state,
    stale_state,
)

_UNHASHED = ("dicts", "device", "checkpoint_every", "log_every", "resume",  # no change to the result,
             "resume_drop", "keep_state", "hook")  # or that the store's identity holds (its hook)
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
    path (a local one resolved: one folder, one key) and the digest of its shards (``content``, recorded by
    the writer since 2026-12-05), so that other vectors imported over it retrain its dictionaries. Not its
    model's name: recorded for the exports, implied by the rest."""
    store_id = {k: v for k, v in store_id.items() if k != "model"}
    if store_id.get("config_hash"):
        return {k: v for k, v in store_id.items() if k != "path"}
    path = store_id.get("path")
    if path is None:
        return store_id
    return store_id | {"path": path.rstrip("/") if "://" in path else os.path.realpath(path)}  # one spelling


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


@contextmanager
def sigterm_flag(sigint: bool = False) -> Iterator[Callable[[], bool]]:
    """While inside: SIGTERM only sets a flag (the loop saves its resume state and stops at the end of the
    step). ``sigint``: so does a first Ctrl-C (a second interrupts at once); a SIGINT the process was
    started ignoring (``nohup``, a background job) stays ignored."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag.is_set
        return

    def on_int(*_) -> None:
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()
        if os.environ.get("RANK", "0") == "0":  # one line under torchrun; os.write: no buffered-IO reentry
            try:
                os.write(2, b"\nCtrl-C: saving a resume state at the end of this step (Ctrl-C again to stop "
                            b"at once)\n")
            except OSError:
                pass

    old = {signal.SIGTERM: signal.signal(signal.SIGTERM, lambda *_: flag.set())}
    if sigint and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        old[signal.SIGINT] = signal.signal(signal.SIGINT, on_int)
    try:
        yield flag.is_set
    finally:
        for sig, handler in old.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: not set from Python


def main(common: Common, cfg: TrainConfig) -> None:
    d = dist_.from_env()
    device = resolve_device(cfg.device, d.local_rank)
    dist_.init(d, device)
    try:
        # rank 0 holds the run folder's lock for all ranks: a second training there would spoil train_state;
        # and the store's readers lock: a harvest growing the store, or vectors imported over it, waits
        lock = folder_lock(common.run_dir, f"run folder {common.run_dir}", wait=not d.on) if d.main else (
            nullcontext())
        with lock, read_lock(common.store_path, wait=not d.on) if d.main else nullcontext():
            _main(common, cfg, d, device)
    finally:
        dist_.close(d)


_STAND_IN_D = 16  # the width check() builds with: no variant's params are checked against d


def check(common: Common, cfg: TrainConfig) -> None:
    """Reject a bad train section before anything runs (``actdict run`` calls it before the harvest): the
    dictionary names, and every dictionary's variant and params, built once on the meta device (no memory)
    with a stand-in width, since the store's d is not known yet."""
    names = [dc.name for dc in cfg.dicts]
    if len(set(names)) != len(names) or not names:
        raise ConfigError(f"train.dicts needs at least one dictionary and unique names, got {names}")
    check_device(cfg.device, "train.device")
    world = dist_.from_env().world
    for dc in cfg.dicts:
        check_batch_rows(dc, meta_model(dc), cfg.batch_size, world)


def meta_model(dc: DictConfig):
    """``dc``'s dictionary built on the meta device (no memory, no values) with a stand-in width; its config
    errors named after it."""
    try:
        with torch.device("meta"):
            return make(dc.variant, _STAND_IN_D, dc.k, **dc.params)
    except ConfigError as e:
        raise ConfigError(f"train.dicts[{dc.name}]: {e}") from e


def batch_rows_needed(model) -> str:
    """Why ``model`` needs batches of 2 rows or more ('' = it does not): its loss's batch statistics
    (``Dictionary.batch_loss``) or its encoder's BatchNorm (``dist.batch_statistics``)."""
    if dist_.batch_statistics(model):
        return "its encoder normalises with batch statistics (BatchNorm)"
    if model.batch_loss:
        return f"its loss ({model.variant}) uses statistics across a batch's rows"
    return ""


def check_batch_rows(dc: DictConfig, model, batch_size: int, world: int) -> None:
    """A dictionary whose training uses batch statistics needs batches of 2 rows or more
    (``batch_rows_needed``); one whose encoder has BatchNorm also one process (``dist.batch_statistics``)."""
    if (why := batch_rows_needed(model)) and batch_size < 2:
        raise ConfigError(f"train.dicts[{dc.name}]: {why}, which a batch of {batch_size} row has not: set "
                          "train.batch_size >= 2")
    if world > 1 and dist_.batch_statistics(model):
        raise ConfigError(f"train.dicts[{dc.name}]: its encoder normalises with batch statistics (BatchNorm, "
                          f"encoder: {dc.params.get('encoder')}) and trains in one process only, not under "
                          f"torchrun ({world} ranks): run it without torchrun, or use encoder: resmlp")


def open_hook(path: str, hook: str):
    """The store's hook ``hook`` ('' = its only one), refused with the hooks to choose from when the store has
    several and ``hook`` names none of them."""
    hooks = list_hooks(path)
    if len(hooks) > 1 and hook not in hooks:
        said = f"train.hook={hook!r} is not one of them" if hook else "name the one the dictionaries learn"
        raise ConfigError(f"store {path} holds {len(hooks)} hooks; {said}: train.hook=HOOK, one of {hooks}")
    return open_store(path, hook or None, hooks=hooks)


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


def replace_note(name: str, what: str, keep_state: bool) -> str:
    """The line saying that ``name``'s finished checkpoint will be replaced; when its epochs changed and no
    state is kept (``keep_state`` False: neither asked for nor left by an earlier run), how to keep one."""
    hint = ("; train.keep_state=true keeps a finished run's state, so that raising epochs continues it"
            if "train.epochs:" in what and not keep_state else "")
    why = (f"it holds {what}" if what.startswith("an SAE imported")
           else f"it was trained with another config: {what}")
    return (f"train: {name}: its finished checkpoint will be replaced ({why}); set run_dir, or rename the "
            f"dictionary, to keep both{hint}")


def member(dc: DictConfig, d: int, seed: int, norm: tuple | None, device: torch.device) -> Member:
    """A dictionary to train, built from its seed (wrapped in the normalisation when there is one)."""
    model = make(dc.variant, d, dc.k, seed=seed, **dc.params)
    if norm is not None:
        model = checkpoint.Normalized(model, torch.from_numpy(norm[0]), norm[1])
    m = Member(dc.name, model.to(device).train(), dc.lr)
    m.setup(device)
    return m


def save_finished(folder: Path, m: Member, record: dict, say: Callable[[str], None]) -> None:
    """The final checkpoint, with its training warning (``Member.diverged``) recorded and said."""
    checkpoint.save(folder, m.model, record | {"history": m.history, "warning": (warning := m.diverged())})
    last = ", ".join(f"{k} {v:.5g}" for k, v in (m.history[-1] if m.history else {}).items())
    say(f"train: saved {folder} (last epoch: {last})")
    if warning:
        say(f"train: warning: {warning}")


def start_logs(run_dir: Path, todo: list[DictConfig], hashes: dict[str, str], from_hashes: dict[str, str],
               start: Position | None, say: Callable[[str], None]) -> Callable[[dict[str, dict]], None]:
    """Start the training logs of ``todo`` (``actdict.train.log``; a resumed run keeps the records up to its
    step) -> the loop's ``log``, which appends each record. A log that cannot be written is said once and
    no longer written: the training goes on."""
    step = start.step if start else 0
    for dc in todo:
        header = {"config_hash": hashes[dc.name], "dict": dc.name, "variant": dc.variant}
        start_log(log_path(run_dir, dc.name), header, step, from_hashes.get(dc.name))
    failed: list[str] = []

    def log(records: dict[str, dict]) -> None:
        now = round(time.time(), 3)
        for name, rec in records.items():
            if failed:
                return
            try:
                append_record(log_path(run_dir, name), rec | {"time": now})
            except OSError as e:
                failed.append(name)
                say(f"train: warning: could not append to {log_path(run_dir, name)} ({e.strerror or e}): the "
                    "training logs are no longer written in this run; the training goes on")

    return log


def _main(common: Common, cfg: TrainConfig, d: dist_.Dist, device: torch.device) -> None:
    say = print if d.main else (lambda *a, **k: None)
    check(common, cfg)
    store = open_hook(common.store_path, cfg.hook)
    run_dir = Path(common.run_dir)
    split = make_split(store.num_chunks, cfg.test_fraction, common.seed)
    if note := split_note([b - a for a, b in map(store.chunk_bounds, range(store.num_chunks))], split,
                          cfg.test_fraction):
        say(f"train: note: {note}")
    store_id = describe_store(store, common.store_path)
    hashes = {dc.name: dict_hash(dc, cfg, common, store_id, split) for dc in cfg.dicts}
    legacy = {dc.name: dict_hash(dc, cfg, common, legacy_store(run_dir / "dicts" / dc.name, store_id), split,
                                 legacy=True) for dc in cfg.dicts}
    todo = [dc for dc in cfg.dicts
            if not checkpoint.is_finished(run_dir / "dicts" / dc.name, hashes[dc.name], legacy[dc.name])]
    seeds = {dc.name: common.seed if dc.seed is None else dc.seed for dc in cfg.dicts}
    done = [dc.name for dc in cfg.dicts if dc not in todo]
    for names in [listed(done)] if len(done) > 3 else done:  # a sweep's: one line
        say(f"train: {names}: finished checkpoint{'s' * (len(done) > 3)} with the same config "
            f"exist{'s' * (len(done) <= 3)}, skipped")
    for dc in todo:
        if what := replaced(run_dir / "dicts" / dc.name, dc, cfg, seeds[dc.name], store_id):
            kept = (run_dir / "dicts" / dc.name / KEPT).is_file()  # it may continue that run (kept_states)
            say(replace_note(dc.name, what, cfg.keep_state or kept))
    if todo and (others := other_split(run_dir, {dc.name for dc in cfg.dicts}, split)):
        raise ConfigError(
            f"{run_dir} holds finished dictionaries {others} trained with other held-out chunks than this "
            f"run's ({len(split['test_chunks'])} test chunks from seed {common.seed}, train.test_fraction="
            f"{cfg.test_fraction:g} and the store's {store.num_chunks} chunks), and analysis reads one split "
            "per run folder: give this run its own run_dir (store= keeps the store), or train those with "
            "these settings too (add them to train.dicts)")
    if todo and d.main:  # before the work, not when its results are saved
        inner = [run_dir / "dicts", *(run_dir / "dicts" / dc.name for dc in todo), run_dir / LOGS]
        check_not_linked(inner, "the checkpoints, kept states and training logs")
        check_writable([run_dir, *(p for p in inner if p.is_dir())], "the checkpoints, resume states and "
                       "training logs", owner="train")
    if d.main:  # the temporary files of a split or resume state whose write a kill cut short (our lock)
        with suppress(OSError):  # a read-only folder keeps them (and says so when it matters, above)
            remove_temps(run_dir, "split.json")
            checkpoint.temp_path(run_dir / STATE).unlink(missing_ok=True)
    if d.main and not split_readable(run_dir):  # another split is written with the checkpoints: until
        write_split(run_dir, split)  # then it is the finished dictionaries' (analyze reads their test rows)
    state_path = run_dir / STATE
    held = read_meta(state_path)  # the state there now (None: none, or unreadable), read once: passed on
    if held and stale_state(run_dir, held):
        if d.main:
            remove_stale(state_path, "a resume state whose dictionaries all finished after it (a kill "
                         "between the last checkpoint and its removal)", say)
        held = None  # on every rank: nothing to resume
    elif d.main and not todo and held is None and state_path.is_file():
        remove_stale(state_path, "a damaged resume state (a full disk, a copy cut short?), and every "
                     "dictionary is finished", say)
    elif d.main and held and not todo:
        say(f"train: note: {state_path} holds the unfinished run of {sorted(held['members'])} (at step "
            f"{held['position']['step']}), another config than this one's: it is kept; that run's command "
            "continues it")
    dist_.barrier(d)
    if not todo:
        return
    for dc in todo if cfg.autocast else []:
        if note := registry()[dc.variant].autocast_note:
            say(f"train: warning: {dc.name} ({dc.variant}) under train.autocast: {note}; docs/training.md "
                "advises float32 for it")
    todo_hashes = {dc.name: hashes[dc.name] for dc in todo}
    todo_legacy = {dc.name: legacy[dc.name] for dc in todo}
    configs = {dc.name: identity(dc, cfg, seeds[dc.name], store_id) for dc in todo}
    meta, done = resume_state(run_dir, cfg, todo_hashes, todo_legacy, configs, say, held)
    kept, kept_hashes = kept_states(run_dir, cfg, todo_hashes, configs, say) if meta is None else ({}, None)
    chunks = split["train_chunks"]
    train_rows = sum(b - a for a, b in map(store.chunk_bounds, chunks))
    if train_rows < 2 and (needy := [dc.name for dc in todo if batch_rows_needed(meta_model(dc))]):
        raise ConfigError(f"the train split holds {train_rows} row, and {needy} train on batches of 2 "
                          "rows or more (batch statistics): give the store more rows, or lower "
                          "train.test_fraction")
    norm = norm_stats(store, chunks, cfg.norm_chunks, common.seed) if cfg.normalize == "mean_scale" else None
    members = [member(dc, store.d, seeds[dc.name], norm, device) for dc in todo]
    start = None if meta is None else load_state(state_path, members, todo_hashes, todo_legacy, done, meta)
    if kept_hashes:  # each from its own file; extension() checked they stand at the same position
        start = [load_state(run_dir / "dicts" / m.name / KEPT, [m], {m.name: kept_hashes[m.name]},
                            meta=kept[m.name]) for m in members][0]
    prior = (meta or next(iter(kept.values()), {}) if start else {}).get("segments", [])  # earlier segments
    log = start_logs(run_dir, todo, hashes, kept_hashes or todo_hashes, start, say) if d.main else None
    world = f" x {d.world} ranks" if d.on else ""
    names = [m.name for m in members]
    names = names if len(names) <= 3 else listed(names)  # a sweep's: their number, first and last
    say(f"train: {names} on {train_rows} rows ({len(chunks)} chunks, d={store.d}) for "
        f"{cfg.epochs} epoch(s)" + (f", stopping at step {cfg.max_steps} (train.max_steps)" if cfg.max_steps
                                     else "") + f" on {device}{world}"
        + (f"; resumed at step {start.step}" if start else "")
        + ("; losses in normalised units (train.normalize: mean_scale; analysis reports raw-space errors)"
           if norm is not None else ""))

    def segments(to_step: int) -> list[dict]:  # this process's segment after the earlier ones
        return prior + [{"from_step": start.step if start else 0, "to_step": to_step, "world_size": d.world,
                         "device": str(device), "wall_s": round(time.time() - t0, 3)}]

    def save(pos: Position) -> None:
        if d.main:
            save_state(state_path, members, todo_hashes, pos, configs, segments=segments(pos.step))
        dist_.barrier(d)

    def batches(epoch: int, first: int = 0):
        return iter_rows(store, chunks, cfg.batch_size, cfg.buffer_chunks, common.seed, epoch, first,
                         part=(d.rank, d.world), pin=device.type == "cuda")

    t0 = time.time()
    with sigterm_flag(sigint=True) as stop:
        per_epoch = steps_in_epoch(store, chunks, cfg.batch_size)
        steps = train(members, batches, cfg, device, per_epoch,
                      seed=common.seed, start=start, save=save, stop=stop, dist=d, log=log, probe=True)
    segs = segments(steps)
    if d.main:
        write_split(run_dir, split)
        keep = cfg.keep_state and steps >= per_epoch * cfg.epochs  # ended after its last epoch
        if cfg.keep_state and not keep:
            say("train: train.keep_state: no state kept, since the run stopped at train.max_steps, inside an "
                "epoch (a longer run continues from the end of an epoch)")
        common_record = {"train_config": {k: v for k, v in to_dict(cfg).items() if k != "dicts"},
                         "store": store_id, "train_rows": train_rows, "test_chunks": split["test_chunks"],
                         "steps": steps, "world_size": d.world,
                         "resumed_at_step": start.step if start else None,
                         "wall_s": round(sum(g["wall_s"] for g in segs), 3), "segments": segs}
        for dc, m in zip(todo, members, strict=True):
            kept_path = run_dir / "dicts" / dc.name / KEPT  # before the checkpoint: a kill in between leaves
            if keep:  # the resume state, from which a rerun finishes both again
                kept_path.parent.mkdir(parents=True, exist_ok=True)
                save_state(kept_path, [m], todo_hashes, Position(cfg.epochs, 0, steps), configs, final=True,
                           segments=segs)
            else:  # an older training's kept state goes
                kept_path.unlink(missing_ok=True)
            save_finished(run_dir / "dicts" / dc.name, m, {
                "name": dc.name, "finished": True, "config_hash": hashes[dc.name], "dict_config": to_dict(dc),
                "seed": seeds[dc.name]} | common_record, say)
        state_path.unlink(missing_ok=True)
    dist_.barrier(d)
