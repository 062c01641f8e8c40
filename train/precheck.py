"""The train section's check before anything runs (``check``: ``actdict run`` calls it before the harvest,
``train.run._main`` before it trains): the dictionary names, the device, every dictionary's variant and params
built once on the meta device (``meta_model``), and the batch rows each needs (``batch_rows_needed``)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from actdict.config import Common, ConfigError, check_device
from actdict.errors import ActdictWarning
from actdict.names import case_clash, long_path_problem
from actdict.train import checkpoint
from actdict.train import dist as dist_
from actdict.train.config import DictConfig, TrainConfig
from actdict.train.plan import longest_file
from actdict.train.protocol import make_meta, registry

_STAND_IN_D = 16  # the width check() builds with: no variant's params are checked against d


def check(common: Common, cfg: TrainConfig) -> None:
    """Reject a bad train section before anything runs (``actdict run`` calls it before the harvest): the
    dictionary names, and every dictionary's variant and params, built once on the meta device (no memory)
    with a stand-in width, since the store's d is not known yet."""
    names = [dc.name for dc in cfg.dicts]
    if len(set(names)) != len(names) or not names:
        raise ConfigError(f"train.dicts needs at least one dictionary and unique names, got {names}")
    if clash := case_clash(names):
        raise ConfigError(f"train.dicts names {clash[0]!r} and {clash[1]!r}, which differ only in case: on a "
                          "case-insensitive file system (macOS', Windows' default) they are one folder "
                          f"dicts/{clash[0]}, and one dictionary would overwrite the other; rename one")
    check_device(cfg.device, "train.device", float64=True)
    if why := long_path_problem(longest_file(common.run_dir, cfg), "this training (and its analysis)"):
        warnings.warn(why, ActdictWarning, stacklevel=2)
    world = dist_.from_env().world
    for dc in cfg.dicts:
        if dc.variant not in registry() and (trained := plugin_trained(Path(common.run_dir), dc.variant)):
            raise ConfigError(f"train.dicts[{dc.name}]: unknown dictionary variant {dc.variant!r}: {trained}")
        check_batch_rows(dc, meta_model(dc), cfg.batch_size, world)


def plugin_trained(run_dir: Path, variant: str) -> str:
    """Where the run folder says a plugin's ``variant`` came from (a dictionary of it trained there, its
    cfg.json's ``plugin`` module), as the words of an error; '' when none says so."""
    for record in sorted((run_dir / "dicts").glob("*/" + checkpoint.CFG)):
        try:
            said = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(said, dict) and said.get("variant") == variant and said.get("plugin"):
            return (f"{record.parent} was trained with it from module {said['plugin']!r}, a plugin: install "
                    "the package that provides it here (docs/variants.md, 'Your own variant')")
    return ""


def meta_model(dc: DictConfig):
    """``dc``'s dictionary built on the meta device (no memory, no values) with a stand-in width; its config
    errors named after it. None: a plugin's that cannot be built there (``make_meta``), left to its build."""
    try:
        return make_meta(dc.variant, _STAND_IN_D, dc.k, **dc.params)
    except ConfigError as e:
        raise ConfigError(f"train.dicts[{dc.name}]: {e}") from e


def batch_rows_needed(model) -> str:
    """Why ``model`` needs batches of 2 rows or more ('' = it does not): its loss's batch statistics
    (``Dictionary.batch_loss``) or its encoder's BatchNorm (``dist.batch_statistics``); '' for None."""
    if model is None:  # not built on the meta device (``meta_model``)
        return ""
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
    if world > 1 and model is not None and dist_.batch_statistics(model):
        raise ConfigError(f"train.dicts[{dc.name}]: its encoder normalises with batch statistics (BatchNorm, "
                          f"encoder: {dc.params.get('encoder')}) and trains in one process only, not under "
                          f"torchrun ({world} ranks): run it without torchrun, or use encoder: resmlp")
