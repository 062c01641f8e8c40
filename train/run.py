"""The ``train`` stage: ``main(common, cfg)`` trains every dictionary of ``cfg.dicts`` on one batch stream.

Writes ``<run_dir>/split.json`` (seeded chunk split; one that differs from the split on disk only with the
final checkpoints, so that an interrupted run leaves the finished dictionaries' split for analyze),
``<run_dir>/train_state.safetensors`` (the resume state, every ``checkpoint_every`` steps, on SIGTERM and
on a first Ctrl-C; removed when the run ends), ``<run_dir>/logs/<name>.jsonl`` (the loss terms every
``log_every`` steps, as they are trained: ``actdict.train.log``) and ``<run_dir>/dicts/<name>/`` (final
checkpoint, its ``cfg.json`` recording the test chunks). A dictionary whose finished checkpoint has the same
``config_hash`` (its DictConfig, the training settings, the seed, the store's identity, not how its path
is spelled, and the split: ``actdict.train.identity``) is skipped; the others are
(re)trained together (a finished checkpoint they replace is announced, with what differs), continuing
from the resume state when it belongs to the same set; a resume state of another run is refused, not
silently dropped (``train.resume=false`` starts over).
Under ``torchrun`` every rank runs this; rank 0 writes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import nullcontext, suppress
from pathlib import Path

import torch

from actdict.config import Common, ConfigError, device_said
from actdict.config_data import to_dict
from actdict.errors import one_line
from actdict.files import check_not_linked, remove_temps
from actdict.harvest.store import list_hooks, open_store, read_lock
from actdict.lock import check_writable, folder_lock
from actdict.precision import slow_bf16_note
from actdict.rng import kept_rng
from actdict.train import checkpoint
from actdict.train import dist as dist_
from actdict.train.config import DictConfig, TrainConfig
from actdict.train.data import (
    PROBE_CHUNKS,
    held_out_rows,
    iter_rows,
    norm_stats,
    rank_slice,
    split_note,
    split_readable,
    steps_in_epoch,
    write_split,
)
from actdict.train.identity import (
    identity,
    replace_note,
)
from actdict.train.log import LOGS, append_record, log_path, start_log
from actdict.train.loop import Interrupted, resolve_device, total_steps, train
from actdict.train.member import Member, Position
from actdict.train.plan import (
    WRITES,
    Standing,
    case_refusal,
    split_refusal,
    standing,
    written_folders,
)
from actdict.train.precheck import batch_rows_needed, check, meta_model
from actdict.train.protocol import make, registry
from actdict.train.resume import (
    KEPT,
    LISTED,
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
from actdict.train.schedule import restart_note
from actdict.train.snapshot import settle_snapshots, snapshot_path
from actdict.train.stopping import sigterm_ends, sigterm_flag


@kept_rng()
def main(common: Common, cfg: TrainConfig) -> None:
    with sigterm_ends() as begun:
        d = dist_.from_env()
        device = resolve_device(cfg.device, d.local_rank)
        dist_.init(d, device)
        try:
            # rank 0 holds the run folder's lock for all ranks: a second training there would spoil
            # train_state; and the store's readers lock: a harvest growing the store, or vectors imported over
            # it, waits
            lock = folder_lock(common.run_dir, f"run folder {common.run_dir}", wait=not d.on) if d.main else (
                nullcontext())
            with lock, read_lock(common.store_path, wait=not d.on) if d.main else nullcontext():
                _main(common, cfg, d, device, begun)
        finally:
            dist_.close(d)


def run_notes(todo: list[DictConfig], steps: int) -> dict[str, list[str]]:
    """The dictionaries of ``todo`` whose variant has a note for a run of ``steps`` steps
    (``Dictionary.run_note``: BatchTopK's lagging inference threshold), by note (a sweep's alike: one
    line)."""
    notes: dict[str, list[str]] = {}
    for dc in todo:
        if note := registry()[dc.variant].run_note(dc.params, steps):
            notes.setdefault(note, []).append(dc.name)
    return notes


def open_hook(path: str, hook: str):
    """The store's hook ``hook`` ('' = its only one), refused with the hooks to choose from when the store has
    several and ``hook`` names none of them."""
    hooks = list_hooks(path)
    if len(hooks) > 1 and hook not in hooks:
        said = f"train.hook={hook!r} is not one of them" if hook else "name the one the dictionaries learn"
        raise ConfigError(f"store {path} holds {len(hooks)} hooks; {said}: train.hook=HOOK, one of {hooks}")
    return open_store(path, hook or None, hooks=hooks)


def member(dc: DictConfig, d: int, seed: int, norm: tuple | None, device: torch.device) -> Member:
    """A dictionary to train, built from its seed (wrapped in the normalisation when there is one)."""
    try:
        model = make(dc.variant, d, dc.k, seed=seed, **dc.params)
    except ConfigError as e:  # one the meta build of ``check`` could not see (memory), named as check's are
        raise ConfigError(f"train.dicts[{dc.name}]: {e}") from e
    if norm is not None:
        model = checkpoint.Normalized(model, torch.from_numpy(norm[0]), norm[1])
    m = Member(dc.name, model.to(device).train(), dc.lr)
    m.setup(device)
    return m


def last_epoch(means: dict) -> str:
    """The saved line's words on the last epoch's ``means`` (a ``Member.history`` record): its number counted
    from 1, as 'for 14 epoch(s)' counts (the record's ``epoch`` counts from 0: the demo's line ended 'epoch
    13' after its 14 epochs), then each term's mean."""
    terms = ", ".join(f"{k} {v:.5g}" for k, v in means.items() if k != "epoch")
    return (f"epoch {means['epoch'] + 1}, the last: " if "epoch" in means else "last epoch: ") + terms


def save_finished(folder: Path, m: Member, record: dict, say: Callable[[str], None]) -> None:
    """The final checkpoint, with its training warning (``Member.diverged``) recorded and said."""
    checkpoint.save(folder, m.model, record | {"history": m.history, "warning": (warning := m.diverged())})
    say(f"train: saved {folder} ({last_epoch(m.history[-1] if m.history else {})})")
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
        finished = (checkpoint.finished_record(run_dir / "dicts" / dc.name) or {}).get("config_hash")
        start_log(log_path(run_dir, dc.name), header, step, from_hashes.get(dc.name), finished)
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


def standing_lines(cfg: TrainConfig, stand: Standing, run_dir: Path) -> list[str]:
    """What the run says of its dictionaries before it trains: those finished with this config (skipped),
    those whose finished checkpoints it replaces and why (a sweep's alike in one line)."""
    done = [dc.name for dc in cfg.dicts if dc not in stand.todo]
    many = len(done) > LISTED  # a sweep's: one line
    lines = [f"train: {names}: finished checkpoint{'s' * many} with the same config exist{'s' * (not many)}, "
             "skipped" for names in ([listed(done)] if many else done)]
    alike: dict[tuple[str, bool], list[str]] = {}  # a sweep's, changed alike (train.epochs): one line
    for name, what in stand.replaced.items():
        kept = (run_dir / "dicts" / name / KEPT).is_file()  # it may continue that run (kept_states)
        alike.setdefault((what, cfg.keep_state or kept), []).append(name)
    return lines + [replace_note(names, what, keep) for (what, keep), names in alike.items()]


def ready_folder(run_dir: Path, todo: list[DictConfig], split: dict) -> None:
    """The run folder before the work (rank 0): where ``todo`` will write is writable and not a link
    (checked now, not when the results are saved); the temporary files of a split or resume state whose
    write a kill cut short are removed (our lock); the split is written when none is readable there
    (another one is written with the checkpoints: until then it is the finished dictionaries', whose
    held-out rows analyze reads)."""
    if todo:
        inner = [run_dir / "dicts", *(run_dir / "dicts" / dc.name for dc in todo), run_dir / LOGS]
        check_not_linked(inner, "the checkpoints, kept states and training logs")
        check_writable(written_folders(run_dir, todo), WRITES, owner="train")
    with suppress(OSError):  # a read-only folder keeps them (and says so when it matters, above)
        remove_temps(run_dir, "split.json")
        checkpoint.temp_path(run_dir / STATE).unlink(missing_ok=True)
    if not split_readable(run_dir):
        write_split(run_dir, split)


def settled_state(run_dir: Path, todo: bool, main: bool, say: Callable[[str], None]) -> dict | None:
    """The run folder's resume state (``read_meta``; None: none, unreadable, or stale), once a stale one
    (every member finished after it: a kill between the last checkpoint and its removal) and, with nothing
    ``todo``, a damaged one are removed (by the ``main`` rank); a state of another run is kept, and said."""
    state_path = run_dir / STATE
    held = read_meta(state_path)
    if held and stale_state(run_dir, held):
        if main:
            remove_stale(state_path, "a resume state whose dictionaries all finished after it (a kill "
                         "between the last checkpoint and its removal)", say)
        return None  # on every rank: nothing to resume
    if main and not todo and held is None and state_path.is_file():
        remove_stale(state_path, "a damaged resume state (a full disk, a copy cut short?), and every "
                     "dictionary is finished", say)
    elif main and held and not todo:
        say(f"train: note: {state_path} holds the unfinished run of {listed(sorted(held['members']))} (at "
            f"step {held['position']['step']}), another config than this one's: it is kept; that run's "
            "command continues it")
    return held


def save_all(run_dir: Path, cfg: TrainConfig, stand: Standing, members: list[Member],
             configs: dict[str, dict], record: dict, whole: bool, say: Callable[[str], None]) -> None:
    """The end of a run (rank 0): the split, each dictionary's kept state (``train.keep_state``, when the
    run ended after its last epoch: ``whole``) then its finished checkpoint (``record`` beside its own
    config), and the resume state removed."""
    write_split(run_dir, stand.split)
    keep = cfg.keep_state and whole
    if cfg.keep_state and not keep:
        say("train: train.keep_state: no state kept, since the run stopped at train.max_steps, inside an "
            "epoch (a longer run continues from the end of an epoch)")
    hashes = {dc.name: stand.hashes[dc.name] for dc in stand.todo}
    for dc, m in zip(stand.todo, members, strict=True):
        kept_path = run_dir / "dicts" / dc.name / KEPT  # before the checkpoint: a kill in between leaves
        if keep:  # the resume state, from which a rerun finishes both again
            kept_path.parent.mkdir(parents=True, exist_ok=True)
            save_state(kept_path, [m], hashes, Position(cfg.epochs, 0, record["steps"]), configs, final=True,
                       segments=record["segments"])
        else:  # an older training's kept state goes
            kept_path.unlink(missing_ok=True)
        own = {"name": dc.name, "finished": True, "config_hash": stand.hashes[dc.name],
               "dict_config": to_dict(dc), "seed": stand.seeds[dc.name]}
        save_finished(run_dir / "dicts" / dc.name, m, own | record, say)
    (run_dir / STATE).unlink(missing_ok=True)


def resumed_said(start: Position, total: int) -> str:
    """What the start line of a resumed training says of it: where it continues and how much of the run was
    done before (``total``: the run's steps; 0 when unknown)."""
    done = 100 * start.step // total if total else 0  # floored: 35,990 of 36,000 is 99 %, not 100 %
    of = f" of {total} ({done}% done before)" if total else ""
    return f"resumed at step {start.step}{of}, epoch {start.epoch} batch {start.batch}"


def _say(text: str) -> None:
    """Print a line of the training's, ``one_line``: it names the run folder, the store, the dictionaries
    and their variants, which a config gives (an ESC there would act on the terminal, a newline make a
    line of its own)."""
    print(one_line(text))


def _main(common: Common, cfg: TrainConfig, d: dist_.Dist, device: torch.device,
          begun: threading.Event | None = None) -> None:
    say = _say if d.main else (lambda *a, **k: None)
    check(common, cfg)
    store = open_hook(common.store_path, cfg.hook)
    run_dir = Path(common.run_dir)
    stand = standing(common, cfg, store)
    split, store_id, hashes, legacy, seeds, todo = (stand.split, stand.store_id, stand.hashes, stand.legacy,
                                                   stand.seeds, stand.todo)
    if note := split_note([b - a for a, b in map(store.chunk_bounds, range(store.num_chunks))], split,
                          cfg.test_fraction):
        say(f"train: note: {note}")
    if why := case_refusal(run_dir, todo):  # before 'replaces', which it would be on macOS
        raise ConfigError(why)
    for line in standing_lines(cfg, stand, run_dir):
        say(line)
    if why := split_refusal(common, cfg, store, stand):
        raise ConfigError(why)
    if d.main:
        ready_folder(run_dir, todo, split)
    state_path = run_dir / STATE
    held = settled_state(run_dir, bool(todo), d.main, say)  # read once: passed on
    dist_.barrier(d)
    if not todo:
        return
    if cfg.autocast and (note := slow_bf16_note(str(device), "train.autocast (bf16 matmuls)",
                                                 "train.autocast=false")):
        say(f"train: warning: {note}")
    for dc in todo if cfg.autocast else []:
        if note := registry()[dc.variant].autocast_note:
            say(f"train: warning: {dc.name} ({dc.variant}) under train.autocast: {note}; docs/training.md "
                "advises float32 for it")
    todo_hashes = {dc.name: hashes[dc.name] for dc in todo}
    todo_legacy = {dc.name: legacy[dc.name] for dc in todo}
    configs = {dc.name: identity(dc, cfg, seeds[dc.name], store_id) for dc in todo}
    meta, done = resume_state(run_dir, cfg, todo_hashes, todo_legacy, configs, say, held)
    kept, kept_hashes, line = ({}, None, None) if meta is not None else kept_states(run_dir, cfg, todo_hashes,
                                                                                    configs)
    if line:
        say(f"train: {line}")
    for name, h in todo_hashes.items() if d.main else ():  # this training's snapshots only (an extended
        settle_snapshots(run_dir, name, h, (kept_hashes or {}).get(name))  # run's too), once no resume
        # state of another run stopped it (theirs stay then)
    chunks = split["train_chunks"]
    train_rows = sum(b - a for a, b in map(store.chunk_bounds, chunks))
    if train_rows < 2 and (needy := [dc.name for dc in todo if batch_rows_needed(meta_model(dc))]):
        raise ConfigError(f"the train split holds {train_rows} row, and {needy} train on batches of 2 "
                          "rows or more (batch statistics): give the store more rows, or lower "
                          "train.test_fraction")
    if cfg.batch_size > train_rows:  # one step an epoch: the run is far shorter than its epochs suggest
        say(f"train: note: train.batch_size={cfg.batch_size:,} exceeds the train split's {train_rows:,} "
            f"rows: each epoch is one step of them all ({total_steps(1, cfg)} steps in all)")
    norm = norm_stats(store, chunks, cfg.norm_chunks, common.seed) if cfg.normalize == "mean_scale" else None
    members = [member(dc, store.d, seeds[dc.name], norm, device) for dc in todo]
    start = None if meta is None else load_state(state_path, members, todo_hashes, todo_legacy, done, meta)
    probe_x = None  # [m, d] train.probe_rows' held-out rows (this rank's part) on the device
    if cfg.probe_rows:
        rows = held_out_rows(store, split["test_chunks"], cfg.probe_rows)  # [<= probe_rows, d]
        if len(rows) < cfg.probe_rows:
            say(f"train: note: train.probe_rows={cfg.probe_rows}: the held-out chunks it reads (up to "
                f"{PROBE_CHUNKS}) hold {len(rows):,} rows, all measured")
        probe_x = torch.from_numpy(rows[rank_slice(len(rows), (d.rank, d.world))]).to(device)
    if kept_hashes:  # each from its own file; extension() checked they stand at the same position
        start = [load_state(run_dir / "dicts" / m.name / KEPT, [m], {m.name: kept_hashes[m.name]},
                            meta=kept[m.name]) for m in members][0]
    prior = (meta or next(iter(kept.values()), {}) if start else {}).get("segments", [])  # earlier segments
    log = start_logs(run_dir, todo, hashes, kept_hashes or todo_hashes, start, say) if d.main else None
    world = f" x {d.world} ranks" if d.on else ""
    names = listed([m.name for m in members])  # a sweep's: their number, first and last
    say(f"train: {names} on {train_rows:,} rows ({len(chunks)} chunks, d {store.d}) for "
        f"{cfg.epochs} epoch(s)" + (f", stopping at step {cfg.max_steps} (train.max_steps)" if cfg.max_steps
                                     else "") + f" on {device_said(device)}{world}"
        + (f"; {resumed_said(start, total_steps(steps_in_epoch(store, chunks, cfg.batch_size), cfg))}"
           if start else "")
        + ("; losses in normalised units (train.normalize: mean_scale; analysis reports raw-space errors)"
           if norm is not None else ""))

    def segments(to_step: int) -> list[dict]:  # this process's segment after the earlier ones
        return prior + [{"from_step": start.step if start else 0, "to_step": to_step, "world_size": d.world,
                         "device": str(device), "wall_s": round(time.time() - t0, 3)}]

    def save(pos: Position) -> None:
        if d.main:
            save_state(state_path, members, todo_hashes, pos, configs, segments=segments(pos.step))
        dist_.barrier(d)

    def snapshot(pos: Position) -> None:  # train.snapshot_every: the weights now, beside the checkpoint
        if d.main:
            for dc, m in zip(todo, members, strict=True):
                checkpoint.save(snapshot_path(run_dir, dc.name, pos.step), m.model, {
                    "name": dc.name, "snapshot_of": dc.name, "step": pos.step, "epoch": pos.epoch,
                    "config_hash": hashes[dc.name], "dict_config": to_dict(dc), "seed": seeds[dc.name],
                    "store": store_id, "train_rows": train_rows, "test_chunks": split["test_chunks"]})

    def batches(epoch: int, first: int = 0):
        return iter_rows(store, chunks, cfg.batch_size, cfg.buffer_chunks, common.seed, epoch, first,
                         part=(d.rank, d.world), pin=device.type == "cuda")

    t0 = time.time()
    with sigterm_flag(sigint=True) as stop:  # from here through the final saves: SIGTERM waits for them
        if begun is not None:
            begun.set()
        per_epoch = steps_in_epoch(store, chunks, cfg.batch_size)
        if note := restart_note(total_steps(per_epoch, cfg), cfg.schedule, cfg.t0, cfg.warmup_steps):
            say(f"train: note: {note}")
        for note, names in run_notes(todo, total_steps(per_epoch, cfg)).items():
            say(f"train: note: {listed(names)}: {note}")
        steps = train(members, batches, cfg, device, per_epoch,
                      seed=common.seed, start=start, save=save, stop=stop, dist=d, log=log, probe=True,
                      held=probe_x, snapshot=snapshot)
        stop.saving = True
        segs = segments(steps)
        if d.main:
            record = {"train_config": {k: v for k, v in to_dict(cfg).items() if k != "dicts"},
                      "store": store_id, "train_rows": train_rows, "test_chunks": split["test_chunks"],
                      "steps": steps, "world_size": d.world, "resumed_at_step": start.step if start else None,
                      "wall_s": round(sum(g["wall_s"] for g in segs), 3), "segments": segs}
            save_all(run_dir, cfg, stand, members, configs, record, steps >= per_epoch * cfg.epochs, say)
        dist_.barrier(d)  # rank 0's saves are done: each rank has seen what reached it during them
        # one decision for every rank (a SIGTERM that reached some ranks stops them all); under torchrun the
        # flag is not read again, since one set after this would be this rank's alone
        stopped = dist_.any_rank(stop(), d, device)
    if stopped or (stop() and not d.on):  # SIGTERM (or a first Ctrl-C) during the final saves, which went
        # on to their end (one process: the flag as the block ends, as always)
        raise Interrupted(f"stopped at step {steps}, the training's last: its final checkpoints were saved "
                          f"first ({run_dir / 'dicts'}), so the training is complete")
