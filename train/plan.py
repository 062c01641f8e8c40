"""Where each dictionary of a train section stands in its run folder, and ``actdict train CONFIG --dry-run``.

``standing`` is what ``actdict train`` decides before it trains: which dictionaries have a finished
checkpoint of this very config (skipped), which replace a finished checkpoint of another (and what
differs), which are new. ``plan`` prints that, one line per dictionary after a sweep's expansion, with
the resume state the run would continue, and changes nothing: a researcher reads a sweep's names and
params, and what an override would retrain, before an hour of training.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from actdict.config import Common, ConfigError
from actdict.dryrun import StagePlan
from actdict.harvest.store import StoreError
from actdict.lock import write_problem
from actdict.train import checkpoint
from actdict.train.config import DictConfig, TrainConfig
from actdict.train.data import make_split, steps_in_epoch
from actdict.train.identity import describe_store, dict_hash, identity, legacy_store, other_split, replaced
from actdict.train.log import LOGS
from actdict.train.loop import total_steps
from actdict.train.resume import (
    KEPT,
    STATE,
    kept_states,
    listed,
    read_meta,
    set_aside,
    stale_state,
    state_matches,
    unused_line,
)
from actdict.train.snapshot import SNAPSHOTS


@dataclass(frozen=True)
class Standing:
    """Where the dictionaries of a train section stand in their run folder: ``todo`` those to train (the
    others have finished checkpoints of this config), ``replaced`` what differs in the finished checkpoints
    of ``todo`` that training replaces, by name; the split, the store's identity and each dictionary's
    config hash (and legacy hash) and seed they were judged by."""

    split: dict
    store_id: dict
    hashes: dict[str, str]
    legacy: dict[str, str]
    seeds: dict[str, int]
    todo: list[DictConfig]
    replaced: dict[str, str]


def standing(common: Common, cfg: TrainConfig, store) -> Standing:
    """The ``Standing`` of ``cfg.dicts`` in ``common.run_dir`` on ``store`` (the opened hook)."""
    run_dir = Path(common.run_dir)
    split = make_split(store.num_chunks, cfg.test_fraction, common.seed)
    store_id = describe_store(store, common.store_path)
    hashes = {dc.name: dict_hash(dc, cfg, common, store_id, split) for dc in cfg.dicts}
    legacy = {dc.name: dict_hash(dc, cfg, common, legacy_store(run_dir / "dicts" / dc.name, store_id), split,
                                 legacy=True) for dc in cfg.dicts}
    todo = [dc for dc in cfg.dicts
            if not checkpoint.is_finished(run_dir / "dicts" / dc.name, hashes[dc.name], legacy[dc.name])]
    seeds = {dc.name: common.seed if dc.seed is None else dc.seed for dc in cfg.dicts}
    what = {dc.name: w for dc in todo if (w := replaced(run_dir / "dicts" / dc.name, dc, cfg, seeds[dc.name],
                                                        store_id))}
    return Standing(split, store_id, hashes, legacy, seeds, todo, what)


def split_refusal(common: Common, cfg: TrainConfig, store, stand: Standing) -> str | None:
    """Why the training stops before it trains (the run folder's other finished dictionaries were held out
    other chunks than this run's split), or None."""
    run_dir = Path(common.run_dir)
    if not stand.todo or not (others := other_split(run_dir, {dc.name for dc in cfg.dicts}, stand.split)):
        return None
    tests = len(stand.split["test_chunks"])
    return (f"{run_dir} holds finished dictionaries {others} trained with other held-out chunks than this "
            f"run's ({tests} test chunks from seed {common.seed}, train.test_fraction={cfg.test_fraction:g} "
            f"and the store's {store.num_chunks} chunks), and analysis reads one split per run folder: give "
            "this run its own run_dir (store= keeps the store), or train those with these settings too (add "
            "them to train.dicts)")


def case_refusal(run_dir: Path, todo: list[DictConfig]) -> str | None:
    """Why the training stops before it trains (a dictionary to train whose name differs only in case from
    a folder of ``run_dir``/dicts: 'sae' beside dicts/SAE, a renamed dictionary), or None. On a
    case-insensitive file system (macOS', Windows' default) the two are one folder, so the training would
    write over the other dictionary, announced as its replacement; on Linux it would make a run folder
    that such a file system cannot hold. Refused on every platform, as ``names.case_clash`` refuses such
    names within one config."""
    root = run_dir / "dicts"
    folders = {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()
    pairs = [(dc.name, other) for dc in todo if dc.name not in folders
             for other in sorted(folders) if other.casefold() == dc.name.casefold()]
    if not pairs:
        return None
    (name, other), more = pairs[0], len(pairs) - 1
    alike = f" (and {more} more dictionar{'y' if more == 1 else 'ies'} alike)" if more else ""
    return (f"train.dicts[{name}]: {root} holds {other!r}{alike}, a name that differs only in case, which a "
            f"case-insensitive file system (macOS', Windows' default) takes for the same folder: training "
            f"{name!r} would write over the dictionary {other!r} there. A dictionary's name is part of its "
            f"training, so a rename trains it again: name it {other!r} as before to keep it, or move "
            f"{root / other} out of the run folder (or set run_dir) to train {name!r}")


def params_text(dc: DictConfig) -> str:
    """A dictionary's params as ``key=value`` pairs in key order ('-' for none)."""
    return ", ".join(f"{k}={v}" for k, v in sorted(dc.params.items())) or "-"


def states(cfg: TrainConfig, stand: Standing | None, refused: bool = False) -> dict[str, str]:
    """Each dictionary's state in words: skipped, replaces (what differs), new; without a store to judge
    by (``stand`` None), to train once it is harvested, or not trained when the training stops (the store
    is there and ``refused``)."""
    if stand is None:
        said = "not trained: the training stops" if refused else "to train (once the store is harvested)"
        return {dc.name: said for dc in cfg.dicts}
    todo = {dc.name for dc in stand.todo}
    return {dc.name: ("finished with this config: skipped" if dc.name not in todo else
                      f"replaces its finished checkpoint ({stand.replaced[dc.name]})"
                      if dc.name in stand.replaced else "new") for dc in cfg.dicts}


def resume_lines(run_dir: Path, cfg: TrainConfig, stand: Standing) -> tuple[list[str], bool]:
    """What the run folder's resume state means for this run: continued (from its step), another run's
    (the training stops: ResumeConflict), or not used (``train.resume=false``, nor are the kept states);
    without one, or when every member has finished since (it is removed), what the kept states mean
    (``kept_line``); and whether the training stops on it."""
    meta = read_meta(run_dir / STATE)
    kept = [line] if stand.todo and (line := kept_line(run_dir, cfg, stand)) else []
    if meta is None or stale_state(run_dir, meta) or not stand.todo:
        return kept, False
    step, held = meta["position"]["step"], sorted(meta["members"])
    if not cfg.resume:
        return [unused_line(run_dir / STATE, meta), *kept], False
    hashes, legacy = ({dc.name: h[dc.name] for dc in stand.todo} for h in (stand.hashes, stand.legacy))
    done, drop = set_aside(run_dir, cfg, meta, hashes)
    if state_matches(meta, hashes, legacy, done | drop):
        dropped = (f" without {listed(sorted(drop))} (train.resume_drop): their progress in it is dropped"
                   if drop else "")
        return [f"continues the resume state {run_dir / STATE} at step {step}{dropped}"], False
    return [f"the resume state {run_dir / STATE} (step {step} of {listed(held)}) is another run's: training "
            "stops (ResumeConflict) until its command finishes it, or train.resume=false starts over"], True


def kept_line(run_dir: Path, cfg: TrainConfig, stand: Standing) -> str | None:
    """Whether the finished runs' kept states (``train.keep_state``) of the dictionaries to train continue
    into this run (a larger ``train.epochs``), in the training's own words (``resume.kept_states``); None
    without any."""
    configs = {dc.name: identity(dc, cfg, stand.seeds[dc.name], stand.store_id) for dc in stand.todo}
    return kept_states(run_dir, cfg, {dc.name: stand.hashes[dc.name] for dc in stand.todo}, configs)[2]


_COLUMNS = ("dict", "variant", "k", "lr", "params")


def steps(n: int) -> str:
    return f"{n:,} step{'s' * (n != 1)}"


def length(cfg: TrainConfig, per_epoch: int | None) -> str:
    """How long the run is: its epochs, their steps when the store is known (``per_epoch``), the total
    (``train.max_steps`` may end it first), and the snapshots it keeps."""
    if per_epoch is None:
        said = f"{cfg.epochs} epoch(s)" + (f", stopping at step {cfg.max_steps}" if cfg.max_steps else "")
    else:
        total = total_steps(per_epoch, cfg)
        said = (f"{cfg.epochs} epoch(s) of {steps(per_epoch)} (batch {cfg.batch_size:,}): {steps(total)}"
                + (" (train.max_steps)" if cfg.max_steps and total == cfg.max_steps else ""))
    return said + (f"; a snapshot every {cfg.snapshot_every:,} steps" if cfg.snapshot_every else "")


def opened(common: Common, cfg: TrainConfig, after_harvest: bool) -> tuple[object | None, str, bool]:
    """(the store's hook as the training opens it, or None; the plan's first line; whether the training
    stops): written by ``actdict run``'s harvest first (``after_harvest``), or refused (not there: the
    training stops on that too, and so does ``actdict run`` without a harvest section)."""
    from actdict.train.run import open_hook  # the stage's own opening of the store

    if after_harvest:
        return None, "train: once the harvest above has written the store", False
    try:
        return open_hook(common.store_path, cfg.hook), "", False
    except (StoreError, ConfigError) as e:
        return None, f"train: would stop: {e}", True


WRITES = "the checkpoints, resume states and training logs"  # what a training writes in its run folder


def written_folders(run_dir: Path, todo: list[DictConfig]) -> list[Path]:
    """The folders a training of ``todo`` writes in that exist now, and the run folder itself (made if
    missing): what ``run.ready_folder`` checks before the first step."""
    names = [run_dir / "dicts" / dc.name for dc in todo]
    inner = [run_dir / "dicts", *names, run_dir / LOGS, *(p / SNAPSHOTS for p in names)]
    return [run_dir, *(p for p in inner if p.is_dir())]


TEMP = ".cfg.json.tmp-12345678"  # the longest name in a dictionary's folder: write_atomic's cfg.json


def longest_file(run_dir: str, cfg: TrainConfig) -> str:
    """The longest path of a file that a training of ``cfg`` (and the analysis after it) writes in
    ``run_dir``, made absolute: a snapshot's temporary cfg.json (with ``train.snapshot_every``), else a
    report part's temporary file (``report/<name>.parts/``) or a kept state's. Windows refuses a path of
    more than 259 characters (``names.long_path_problem``)."""
    tails = [("report", "{}.parts", ".00000.js.tmp-12345678"), ("dicts", "{}", f".{KEPT}.tmp")]
    tails += [("dicts", "{}", SNAPSHOTS, "step-0000000", TEMP)] if cfg.snapshot_every else []
    root = os.path.abspath(run_dir)
    return max((os.path.join(root, *(p.format(dc.name) for p in t)) for dc in cfg.dicts for t in tails),
               key=len, default=root)  # no dictionary (the Python API; a config needs one): the folder


def plan(common: Common, cfg: TrainConfig, after_harvest: bool = False) -> StagePlan:
    """``actdict train CONFIG --dry-run``: the lines saying what the stage would do (``standing``), with
    nothing trained, written or removed. ``after_harvest``: ``actdict run``'s harvest writes the store first
    (new, continued or grown), so the store as it is now decides nothing."""
    store, head, refused = opened(common, cfg, after_harvest)
    stand = None if store is None else standing(common, cfg, store)
    if stand is not None and (why := split_refusal(common, cfg, store, stand)):
        stand, head, refused = None, f"train: would stop: {why}", True
    if stand is not None and (why := case_refusal(Path(common.run_dir), stand.todo)):
        stand, head, refused = None, f"train: would stop: {why}", True
    todo = cfg.dicts if stand is None else stand.todo
    if not refused and todo and (why := write_problem(written_folders(Path(common.run_dir), todo), WRITES)):
        stand, head, refused = None, f"train: would stop: {why}", True
    if stand is not None:
        chunks = stand.split["train_chunks"]
        rows = sum(b - a for a, b in map(store.chunk_bounds, chunks))
        n = len(cfg.dicts)
        head = (f"train: {n} dictionar{'y' if n == 1 else 'ies'} on {rows:,} rows of {store.hook} "
                f"({len(chunks)} of {store.num_chunks} chunks, d {store.d}) in {common.run_dir}")
    head += "" if refused else "; " + length(cfg, None if stand is None else steps_in_epoch(
        store, stand.split["train_chunks"], cfg.batch_size))
    cols = [(dc.name, dc.variant, str(dc.k), f"{dc.lr:g}", params_text(dc)) for dc in cfg.dicts]
    said = states(cfg, stand, refused)
    w = [max(len(h), *(len(c[i]) for c in cols)) for i, h in enumerate(_COLUMNS)]
    lines = [head, "  " + " ".join(f"{h:<{w[i]}}" for i, h in enumerate(_COLUMNS)) + " state"]
    lines += ["  " + " ".join(f"{c[i]:<{w[i]}}" for i in range(5)) + f" {said[c[0]]}" for c in cols]
    said, conflict = ([], False) if stand is None else resume_lines(Path(common.run_dir), cfg, stand)
    return StagePlan(lines + [f"train: {line}" for line in said], stops=refused or conflict)
