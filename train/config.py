"""The ``train`` section of an experiment YAML: :class:`TrainConfig` with a list of :class:`DictConfig`.

Several dictionaries train on the same shuffled batch stream in one run (one read of the store for a whole
sweep); each has its own optimizer and scheduler. Defaults follow the paper's LLM-activation setting
(App. D.3: Adam, lr 0.005, batch 2048, 35 epochs, CosineAnnealingWarmRestarts T_0=5, k=300).

A run writes a resume state every ``checkpoint_every`` steps and on SIGTERM; rerunning the same command
continues it (same batches, optimizer state and random numbers). ``torchrun --nproc-per-node N -m actdict.cli
train CONFIG`` splits every global batch between the N ranks.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from actdict.config import ConfigError, check_seed
from actdict.names import name_problem


def bad_name(name: str) -> str | None:
    """Why ``name`` cannot name a dictionary (a trained or an imported one), or None."""
    if name.startswith(".") or not name or any(c in name for c in "/\0") or len(name.encode()) > 200:
        return (f"{name!r} cannot name a dictionary: it names its folder (dicts/<name>) and files "
                "(features/<name>.json): not empty, not starting with '.', no '/' or NUL, at most 200 bytes")
    if why := name_problem(name):
        return f"{name!r} cannot name a dictionary here (it names its folder dicts/<name>): {why}; rename it"
    return None


@dataclass(frozen=True)
class DictConfig:
    """One dictionary to train."""

    name: str
    """Folder name under ``<run_dir>/dicts/`` (unique within the run)."""
    variant: str
    """Registered variant (``actdict.train.protocol.registry()``): vaease, vae, sae_l1, sae_log, sae_topk,
    sae_topk_auxk, sae_batchtopk, sae_jumprelu, sae_gated, sae_l1_decnorm, sae_kl, sosae, lse (and installed
    plugins'); their formulas and ``params`` in docs/variants.md and ``actdict variants``."""
    k: int = 300
    """Dictionary size (number of latents); paper LLM: 300."""
    lr: float = 0.005
    """Adam learning rate (the scheduler's maximum); paper LLM: 0.005."""
    params: dict[str, Any] = field(default_factory=dict)
    """Variant keyword arguments, e.g. {lam1: 0.32, lam2: 0.2}, {topk: 30}, {loggamma_init: -10}."""
    seed: int | None = None
    """Initialisation seed; None = the experiment seed."""

    def __post_init__(self) -> None:
        if why := bad_name(self.name):
            raise ConfigError(f"train.dicts: {why}")
        if self.k < 1:
            raise ConfigError(f"train.dicts[{self.name}].k must be >= 1, got {self.k}")
        if not (math.isfinite(self.lr) and self.lr >= 0):  # 0 keeps the initialisation
            raise ConfigError(f"train.dicts[{self.name}].lr must be a number >= 0, got {self.lr}")
        check_seed(self.seed, f"train.dicts[{self.name}].seed")


@dataclass(frozen=True)
class TrainConfig:
    """Training of every dictionary in ``dicts`` on one pass of shuffled batches per epoch."""

    dicts: list[DictConfig] = field(default_factory=lambda: [DictConfig(name="vaease", variant="vaease")])
    """The dictionaries trained together on the same batches."""
    hook: str = ""
    """The store's hook the dictionaries learn ('' = its only one; a store of several hooks, such as a harvest
    of ``hooks: [all]``, must name one). Analysis and the lens then read the hook the dictionaries were
    trained on. One hook per run folder: to learn dictionaries of several hooks of one store, give each
    its own ``run_dir`` and point ``store`` at the shared store (docs/training.md)."""
    epochs: int = 35
    """Passes over the train chunks; paper LLM: 35."""
    batch_size: int = 2048
    """Rows per optimizer step; paper LLM: 2048."""
    test_fraction: float = 0.1
    """Fraction of store chunks held out for analysis (at least one chunk when > 0 and the store has >= 2)."""
    buffer_chunks: int = 4
    """Chunks read into the RAM shuffle buffer at a time (rows are shuffled inside the buffer)."""
    schedule: Literal["cosine_restarts", "constant", "warmup_cosine", "linear_decay"] = "cosine_restarts"
    """Learning-rate schedule per optimizer step (``actdict.train.schedule``). 'cosine_restarts' (the paper):
    CosineAnnealingWarmRestarts(T_0=t0, T_mult=2, eta_min); 'warmup_cosine' / 'linear_decay': one cosine /
    linear decay from lr to eta_min over the run; 'constant'."""
    warmup_steps: int = 0
    """Linear learning-rate warmup over the first steps (0 = none, the paper)."""
    t0: int = 5
    """CosineAnnealingWarmRestarts T_0 in optimizer steps (stepped every iteration, like the official code);
    T_mult = 2."""
    eta_min: float = 1e-6
    """Minimum learning rate of the decaying schedules."""
    autocast: bool = False
    """bf16 autocast of the forward pass (its matmuls) on CUDA or CPU; the loss is computed on the forward's
    outputs upcast to float32 and the weights stay float32. Fast on GPUs and on CPUs with AMX / AVX512-BF16;
    ``sae_log``'s and ``sae_topk_auxk``'s gradients suffer (docs/training.md, "bf16 autocast")."""
    grad_clip: float = 0.0
    """Clip every dictionary's gradient to this global L2 norm before its Adam step (0 = off, the paper).
    Damps the loss spikes of VAE/VAEase at high learning rates (docs/results.md); under torchrun the norm is
    that of the rank-averaged gradient, so every rank clips alike."""
    checkpoint_every: int = 500
    """Write the resume state (weights, Adam state, batch position, epoch records) every this many steps
    (0 = only on SIGTERM). Not part of the config hash: it may change between a run and its resumption."""
    log_every: int = 100
    """Append each dictionary's loss terms, averaged over every this many steps (and over the rest of each
    epoch), to ``<run_dir>/logs/<name>.jsonl`` (0 = once per epoch; ``actdict.train.log``): the loss curves
    of the report; with them its AD, L0, explained variance and live latents on each interval's last batch
    (``actdict.train.probe``: one no-grad forward per interval). Not part of the config hash."""
    probe_rows: int = 0
    """Held-out rows (spread over up to 16 test chunks, evenly spaced: ``data.held_out_rows``; read once at
    the start) each log interval also measures every dictionary on: ``held_ad``, ``held_l0``, ``held_ev``,
    ``held_live`` in the log beside the last batch's ``eval_*``, the same rows every interval (a curve of
    held-out fit and sparsity, free of one batch's noise; one no-grad forward of these rows per interval). 0
    = off. Needs ``test_fraction`` > 0. Not part of the config hash."""
    snapshot_every: int = 0
    """Also keep every dictionary's weights every this many steps, as
    ``<run_dir>/dicts/<name>/snapshots/step-NNNNNNN/`` (safetensors + cfg.json, read by ``actdict compare``
    and ``actdict export`` as a dictionary's folder): how its features form over training. 0 = none. Not
    part of the config hash (the weights are the same); a retrained dictionary's older snapshots go."""
    resume: bool = True
    """Continue from ``<run_dir>/train_state.safetensors`` when it belongs to the same configuration."""
    keep_state: bool = False
    """Keep each dictionary's final state (weights, Adam state, position: about three times its checkpoint's
    size) beside its checkpoint (``dicts/<name>/kept_state.safetensors``), so that a later run differing
    only in a larger ``epochs`` continues from it instead of starting over, and ends where an uninterrupted
    run of those epochs ends. Only for schedules that do not depend on the run's length (cosine_restarts,
    constant): a decaying one's longer run is another run. Not part of the config hash."""
    resume_drop: list[str] = field(default_factory=list)
    """Dictionaries of the resume state that this run leaves out of ``dicts`` (one diverged, say): the others
    resume and these lose their progress in the state. A state holding dictionaries this run lacks is
    otherwise refused. Not part of the config hash."""
    device: str = "auto"
    """Torch device: 'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', ... Under torchrun,
    'auto'/'cuda' means cuda:LOCAL_RANK."""
    max_steps: int = 0
    """Stop after this many optimizer steps in total (0 = no limit); for smoke tests."""
    normalize: Literal["none", "mean_scale"] = "none"
    """Input normalisation. 'none' (the paper: raw activations). 'mean_scale': x -> (x - mean) / scale with
    the per-dimension mean and one scalar scale = sqrt(mean squared norm of the centred rows / d), estimated
    on ``norm_chunks`` train chunks; saved with each checkpoint and applied inside the loaded model, so
    analysis still feeds raw rows and gets raw-space reconstructions."""
    norm_chunks: int = 8
    """Train chunks (chosen by the seed) used to estimate the normalisation statistics. They are read at
    once in float64: about 3 x norm_chunks x chunk_rows x d x 8 bytes at the start (~1.5 GB at d = 4096
    with the defaults and 4,096-row chunks)."""

    @staticmethod
    def prepare(data: dict, where: str) -> dict:
        """The section's data with each dictionary's ``sweep`` expanded (``expand_sweeps``)."""
        if isinstance(data.get("dicts"), list):
            data = data | {"dicts": expand_sweeps(data["dicts"], f"{where}.dicts")}
        return data

    def __post_init__(self) -> None:
        least_of = {"epochs": 1, "batch_size": 1, "buffer_chunks": 1, "t0": 1, "norm_chunks": 1,
                    "warmup_steps": 0, "checkpoint_every": 0, "log_every": 0, "max_steps": 0, "probe_rows": 0,
                    "snapshot_every": 0}
        for name, least in least_of.items():
            if getattr(self, name) < least:
                raise ConfigError(f"train.{name} must be >= {least}, got {getattr(self, name)}")
        if not 0 <= self.test_fraction < 1:
            raise ConfigError(f"train.test_fraction must be in [0, 1), got {self.test_fraction}")
        if self.probe_rows and not self.test_fraction:
            raise ConfigError(f"train.probe_rows={self.probe_rows} measures held-out rows, and "
                              "train.test_fraction is 0: there are none (set test_fraction > 0, or "
                              "probe_rows 0)")
        for name in ("eta_min", "grad_clip"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ConfigError(f"train.{name} must be a number >= 0, got {getattr(self, name)}")
        under = [dc.name for dc in self.dicts if 0 < dc.lr < self.eta_min]  # (lr 0: no steps to decay)
        if under and self.schedule != "constant":
            raise ConfigError(f"train.eta_min={self.eta_min} is above the lr of {under}: the {self.schedule} "
                              "schedule would raise their learning rate to it, not decay it; set "
                              "train.eta_min below every lr (default 1e-06)")


SWEPT = ("k", "lr", "seed")  # the fields of a dictionary a ``sweep`` may vary, beside its ``params``
MAX_SWEEP = 1000  # dictionaries one sweep may expand into


def expand_sweeps(items: list, where: str = "train.dicts") -> list:
    """``train.dicts`` with every item that has a ``sweep`` replaced by one item per combination of its values
    (the product, in the order written), each named ``<name>_<key>-<value>...``::

        {name: l1, variant: sae_l1, k: 4096, sweep: {lr: [0.001, 0.003], params: {lam1: [0.1, 0.3]}}}
        -> l1_lr-0.001_lam1-0.1, l1_lr-0.001_lam1-0.3, l1_lr-0.003_lam1-0.1, l1_lr-0.003_lam1-0.3

    ``sweep`` maps ``k``, ``lr``, ``seed`` and ``params`` (a mapping of params) to lists of values; a swept
    key must not also be set outside the sweep (null there counts as unset: an override cannot delete a key);
    ``sweep: null`` is no sweep.
    Values in names: numbers as JSON writes them (0.001, 1e-05), strings as they are. Items without a sweep
    pass through unchanged (the data is plain YAML).
    """
    out: list = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "sweep" not in item:
            out.append(item)
            continue
        base = {k: v for k, v in item.items() if k != "sweep"}
        if item["sweep"] is None:  # no sweep (an override cannot delete the key: train.dicts.NAME.sweep=null)
            out.append(base)
            continue
        at = f"{where}[{item.get('name', i)}].sweep"
        axes = _sweep_axes(item["sweep"], base, at)
        if math.prod(len(v) for _, v in axes) > MAX_SWEEP:
            raise ConfigError(f"{at}: {' x '.join(str(len(v)) for _, v in axes)} combinations; at most "
                              f"{MAX_SWEEP} dictionaries per sweep")
        for combo in itertools.product(*(v for _, v in axes)):
            new = json.loads(json.dumps(base))  # a copy of plain YAML data
            labels = []
            for j, ((path, _), value) in enumerate(zip(axes, combo, strict=True)):
                if path[0] == "params":
                    new.setdefault("params", {})[path[1]] = value
                else:
                    new[path[0]] = value
                labels.append(f"{path[-1]}-{value if isinstance(value, str) else json.dumps(value)}")
                if isinstance(base.get("name"), str):  # (no name: the item is refused for that)
                    _check_label(labels[-1], value, path, at, base["name"], last=j == len(axes) - 1)
            if isinstance(new.get("name"), str):
                new["name"] = "_".join([new["name"], *labels])
            out.append(new)
    return out


def own_name(names: str) -> str:
    """A name for the item of its own that ``_check_label`` suggests: each run of characters but word
    characters, '.' and '-' as one '-' (``l1_act-{"a": 1}`` -> ``l1_act-a-1``), without a trailing '-', '.'
    or ' ': a name every platform takes, and plain YAML in the item's flow mapping as printed."""
    return re.sub(r"-{2,}", "-", re.sub(r"[^\w.-]+", "-", names)).rstrip("-. ")


def _check_label(label: str, value: Any, path: tuple[str, ...], at: str, name: str, last: bool = False
                 ) -> None:
    """ConfigError naming the swept key (``path``, under the sweep ``at``) when its ``label`` (``act-relu/2``:
    the key and value, a part of each of its dictionaries' names) holds a character no dictionary name may
    hold: '/' or NUL on every platform (a nested folder dicts/l1_act-relu/2/), Windows' reserved ones there
    (a mapping's ``{"a": 1}``), and, ``last`` (the label that ends the names), a trailing dot or space there
    (``relu.``). A sweep names its dictionaries by their values, so such a value is taken out of the sweep
    into an item of its own, which names itself."""
    bad = "".join(sorted({c for c in label if c in "/\0" or name_problem(f"_{c}_")}))
    end = label[-1] if last and label.endswith((".", " ")) and name_problem(f"_{label[-1]}") else ""
    if not (bad or end):
        return
    why = ("a nested folder dicts/<name>/... on every platform" if "/" in bad
           else "a name no file system takes (NUL)" if "\0" in bad
           else f"a name Windows cannot give a folder ({name_problem(f'_{bad}_' if bad else f'_{end}')})")
    puts = (f"puts {bad!r} into the names of its dictionaries" if bad
            else f"ends the names of its dictionaries with {end!r}")
    own = own_name(f"{name}_{label}")
    setting = f"{path[0]}: {{{path[1]}: {json.dumps(value)}}}" if path[0] == "params" else f"{path[0]}: ..."
    raise ConfigError(f"{at}.{'.'.join(path)}: the value {value!r} {puts} "
                      f"({name}_{label}...), which would make {why}: take it out of the sweep "
                      f"into an item of train.dicts of its own, which names itself ({{name: {own}, "
                      f"{setting}, ...}}, its sweep of the other keys kept)")


def _as_number(value: Any) -> Any:
    """``value`` with an integer or float as a float (1 and 1.0: one value of a param), the rest as is."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _sweep_axes(sweep: Any, base: dict, at: str) -> list[tuple[tuple[str, ...], list]]:
    """A dictionary's ``sweep`` as ((field,) or ("params", name), values) pairs, checked."""
    if not isinstance(sweep, dict) or not sweep:
        raise ConfigError(f"{at}: expected a mapping of {list(SWEPT)} and params to lists of values, "
                          f"got {sweep!r}")
    axes: list[tuple[tuple[str, ...], list]] = []
    for key, values in sweep.items():
        if key == "params":
            if not (isinstance(values, dict) and values):
                raise ConfigError(f"{at}.params: expected a mapping of the variant's params to lists of "
                                  f"values ({{lam1: [0.1, 0.3]}}), got {values!r}")
            axes += [(("params", str(p)), v) for p, v in values.items()]
        elif key in SWEPT:
            axes.append(((key,), values))
        else:
            raise ConfigError(f"{at}: cannot sweep {key!r}; valid: {list(SWEPT)} and params: {{NAME: [...]}}")
    if any(p[0] == "params" for p, _ in axes) and not isinstance(base.get("params", {}), dict):
        raise ConfigError(f"{at.removesuffix('.sweep')}.params: expected a mapping of the variant's params "
                          f"(the sweep adds its own to it), got {base['params']!r}")
    for path, values in axes:
        name = ".".join(path)
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{at}.{name}: expected a non-empty list of values, got {values!r}")
        if len({json.dumps(_as_number(v), sort_keys=True) for v in values}) < len(values):  # 1 and 1.0 too
            raise ConfigError(f"{at}.{name}: a value is listed twice: {values}")
        fixed = base.get("params") if path[0] == "params" else base
        if isinstance(fixed, dict) and fixed.get(path[-1]) is not None:  # null: unset (an override's way)
            unset = f"{at.split('[')[0]}.{base.get('name')}.{name}=null"
            raise ConfigError(f"{at}.{name}: also set outside the sweep ({fixed[path[-1]]!r}); set it in one "
                              f"place (an override {unset} unsets it)")
    return axes
