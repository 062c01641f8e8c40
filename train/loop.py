"""The training loop: every dictionary of a run steps on the same batches; no variant is special-cased.

Per dictionary: Adam (fused when the device has it) with the learning rate of ``actdict.train.schedule`` set
before every optimizer step (default: the paper's CosineAnnealingWarmRestarts stepped per iteration), then
``model.after_step()``. The random numbers of step s of dictionary ``name`` come from a generator seeded with
(seed, s, name), so a run resumed at any step draws what the uninterrupted run drew; under torchrun every
rank seeds alike and draws the global batch's noise, keeping its own rows (``dist.noise_like``), so the
ranks draw what one process would.

Once per step the loss terms of every dictionary and a finiteness flag of the batch are gathered in one
tensor (one device sync; under torchrun one all-reduce, so every rank sees the global-batch means and stops
together). Non-finite input rows or a non-finite loss raise :class:`TrainingError` naming the step and the
batch. A stop request (SIGTERM) saves the resume state and raises :class:`Interrupted`.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from actdict.bars import bar_disabled, bar_timing
from actdict.errors import ActdictError
from actdict.train import dist as dist_
from actdict.train import probe as probe_
from actdict.train.config import TrainConfig
from actdict.train.data import rank_slice
from actdict.train.protocol import Dictionary
from actdict.train.schedule import lr_at


class TrainingError(ActdictError, FloatingPointError):
    """Non-finite input rows or loss: the message names the dictionary, the step and the batch."""


class Interrupted(ActdictError):
    """The run was asked to stop (SIGTERM); its resume state was saved."""


LEARNED_NOTHING = 0.95  # ``Member.diverged``: a recent SSE over this fraction of the rows' spread
RECENT = 0.02  # weight of each step in ``Member.recent``, the moving average of the SSE (~50 steps)


@dataclass
class Member:
    """One dictionary being trained, with its optimizer state and running record."""

    name: str
    model: Dictionary
    lr: float
    opt: torch.optim.Optimizer = field(init=False)
    history: list[dict[str, float]] = field(default_factory=list)  # per-epoch means of the loss terms
    sums: dict[str, float] = field(default_factory=dict)  # loss-term sums of the current epoch
    baseline: float | None = None  # the last epoch's mean SSE of predicting each batch's mean (this process)
    spread: float | None = None  # the last epoch's mean SSE of predicting every row by the epoch's mean row
    norm2: float | None = None  # the last epoch's mean squared norm of the rows (the SSE of predicting 0)
    first: float | None = None  # the SSE of its first step (its initialisation's); a resume state keeps it
    ema: tuple[float, float] = (0.0, 0.0)  # the SSE's moving sums (value, weight), carried by a resume
    epoch_acc: dict | None = None  # the current epoch's baseline sums and spread at the last save (``train``)
    window: dict[str, float] = field(default_factory=dict)  # loss-term sums of the open log interval
    window_n: int = 0  # its steps
    resumed: tuple[set | None, set | None] = (None, None)  # the terms of the resumed epoch's sums and window

    @property
    def recent(self) -> float | None:
        """The SSE's moving average over the last ~50 steps (bias-corrected, as Adam's moments)."""
        return self.ema[0] / self.ema[1] if self.ema[1] else None

    def record(self, key: str, value: float) -> None:
        """Add one step's value of a loss term to the epoch's sums (and the SSE to ``recent``); a term that a
        resumed epoch's sums (or interval's) lack, its resume state written before the term was logged
        (``grad_norm``, 2026-12-06), is left out of that epoch (interval): its mean would miss those steps."""
        if self.resumed[0] is None or key in self.resumed[0]:
            self.sums[key] = self.sums.get(key, 0.0) + value
        if self.resumed[1] is None or key in self.resumed[1]:
            self.window[key] = self.window.get(key, 0.0) + value
        if key == "sse":
            self.ema = ((1 - RECENT) * self.ema[0] + RECENT * value, (1 - RECENT) * self.ema[1] + RECENT)

    def close_window(self, pos: Position, lr: float) -> dict[str, float | int]:
        """The open log interval's record (``actdict.train.log``: means of its terms), and a new interval."""
        n, sums = self.window_n, self.window
        self.window, self.window_n, self.resumed = {}, 0, (self.resumed[0], None)
        means = {k: v / n for k, v in sums.items()}
        return {"step": pos.step, "epoch": pos.epoch, "steps": n, "lr": lr} | means

    def diverged(self) -> str | None:
        """A warning when the last epoch's reconstruction error is over 100x that of predicting each batch's
        mean row (a finite loss, so the run went on, but the dictionary blew up: too high an lr; said
        otherwise when that SSE is no worse than predicting 0, rows far from 0 not normalised, or below its
        first step's, a fresh dictionary far from trained), or when its SSE over the last ~50 steps
        (``recent``) is over ``LEARNED_NOTHING`` x that of predicting every row by the epoch's mean row (an
        explained variance near 0 or below at the end of training: e.g. a sparsity penalty too strong for the
        inputs' scale). Variants that do not train a reconstruction (``lse``) get neither."""
        sse = self.history[-1].get("sse") if self.history else None
        if sse is None or not getattr(self.model, "trains_reconstruction", True):
            return None
        scale = getattr(self.model, "norm_scale", None)  # train.normalize: the loss is in normalised units
        units = 1.0 / float(scale) ** 2 if scale is not None else 1.0
        base, spread = (v * units if v else None for v in (self.baseline, self.spread))
        if base and sse > 100 * base:
            if scale is None and self.norm2 and spread is not None and sse <= 2 * self.norm2:
                # no worse than x_hat = 0: not blown up, but rows far from 0 whose offset it has not learned
                return (f"{self.name}: its last epoch's reconstruction error {sse:.4g} is {sse / base:,.0f}x "
                        f"that of predicting each batch's mean row ({base:.4g}) but about that of predicting "
                        f"0 for every row ({self.norm2:.4g}): the rows sit far from 0 (their mean row's "
                        f"squared norm {self.norm2 - spread:.4g}, their spread about it {spread:.4g}) and it "
                        "has not learned their offset; set train.normalize: mean_scale (docs/training.md), "
                        "a lower lr would not help")
            if self.first is not None and sse < self.first:  # below its first step's: nothing blew up
                return (f"{self.name}: its last epoch's reconstruction error {sse:.4g} is still "
                        f"{sse / base:,.0f}x that of predicting each batch's mean row ({base:.4g}), down "
                        f"from {self.first:.4g} at its first step: it is far from trained, not diverged (a "
                        "fresh dictionary can start far off, e.g. with many more latents than input "
                        "dimensions); train it longer")
            return (f"{self.name}: its last epoch's reconstruction error {sse:.4g} is {sse / base:,.0f}x "
                    f"that of predicting each batch's mean row ({base:.4g}): it diverged; lower its lr (or "
                    "set train.grad_clip)")
        recent = self.recent if self.recent is not None else sse
        if spread and recent > LEARNED_NOTHING * spread:
            cause = ("" if scale is not None else ", or inputs whose scale the penalty does not suit: see "
                     "train.normalize in docs/training.md")
            return (f"{self.name}: its reconstruction error over its last steps {recent:.4g} is "
                    f"{recent / spread:.3g}x that of predicting every row by the mean row ({spread:.4g}; "
                    f"explained variance {1 - recent / spread:.2f}): it has learned almost nothing (too few "
                    f"steps, dead latents, a sparsity penalty too strong{cause})")
        return None

    def setup(self, device: torch.device) -> None:
        fused = device.type in ("cpu", "cuda")
        self.opt = torch.optim.Adam(self.model.parameters(), lr=self.lr, fused=fused or None,
                                    foreach=None if fused else True)


class Spread:
    """An epoch's rows as parallel variances: per batch its row count, mean and squared deviations around
    that mean (each batch centred on its own mean in float32, so rows far from 0 lose nothing to rounding),
    summed on the device in float64 (no sync until the epoch ends)."""

    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None  # [d + 3]: sum n m, sum n |m|^2, squared deviations, rows
        self.norm2: float | None = None  # set by ``end``: the ended epoch's mean squared row norm

    def add(self, x: torch.Tensor) -> torch.Tensor:
        """Add the batch x [b, d] float32 (this process's rows); -> the mean SSE of predicting each of its
        rows by its mean row (the ``diverged`` baseline; NaN for an empty batch)."""
        wide = probe_.wide(x.device)
        mu = x.mean(0)  # [d]
        c = x - mu  # [b, d]
        sq = c.pow(2).sum(-1)  # [b]
        shift = c.mean(0).to(wide)  # [d] float32's rounding of mu: the exact mean is mu + shift
        m = mu.to(wide) + shift  # [d]
        n = torch.full((1,), float(len(x)), device=x.device, dtype=wide)
        dev = sq.sum().to(wide) - n * shift.pow(2).sum()  # [1] sum over rows of |x - m|^2
        v = torch.nan_to_num(torch.cat([m * n, m.pow(2).sum() * n, dev, n]))  # [d + 3]; an empty batch: 0
        self.sums = v if self.sums is None else self.sums + v  # [d + 3]
        return sq.mean()

    def end(self, d: dist_.Dist) -> float | None:
        """The mean SSE of predicting each of the epoch's rows (every rank's) by their mean row; resets."""
        if self.sums is None:
            return None
        v, self.sums = self.sums, None
        if d.on:
            dist_.reduce_(v)
        n = v[-1]
        mean = v[:-3] / n  # [d]
        self.norm2 = float((v[-2] + v[-3]) / n)  # sum |x|^2 = deviations + sum n |m|^2, over the rows
        return float((v[-2] + v[-3] - n * mean.pow(2).sum()) / n)  # within batches + between them

    def state(self, d: dist_.Dist) -> list[float] | None:
        """The sums so far, every rank's (a collective under torchrun), as floats (exact in JSON)."""
        if self.sums is None:
            return None
        v = self.sums.clone()
        if d.on:
            dist_.reduce_(v)
        return v.tolist()

    def restore(self, sums: list[float] | None, device: torch.device, main: bool = True) -> None:
        """Continue from ``state``'s sums: the main process holds them, the other ranks start from 0."""
        if sums is not None:
            v = torch.tensor(sums, dtype=probe_.wide(device), device=device)
            self.sums = v if main else torch.zeros_like(v)


@dataclass
class Position:
    """Where the batch stream is: ``batch`` batches of ``epoch`` done, ``step`` optimizer steps in all."""

    epoch: int = 0
    batch: int = 0
    step: int = 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    return torch.device(name)


def step_seed(seed: int, step: int, name: str) -> int:
    """A distinct 63-bit seed per (seed, step, dictionary name) (cheap: called every step)."""
    h = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    return (h ^ zlib.crc32(name.encode()) << 32) & (2**63 - 1)


def seed_step(s: int, device: torch.device) -> None:
    """``torch.manual_seed(s)`` for the generators a step on ``device`` draws from (the CPU's, and CUDA's
    for a CUDA device): the same streams, without ``torch.manual_seed``'s cost on a machine without CUDA,
    where every call records a stack trace for a deferred CUDA seeding (~1 ms: a quarter of a small step)."""
    torch.random.default_generator.manual_seed(s)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(s)


def check_terms(m: Member, terms: object) -> None:
    """``loss_terms`` kept the protocol: a dict of scalar tensors, the total under ``"loss"`` (a plugin's
    slip is one line naming it, not a KeyError at the backward or a failed stack of the step's terms)."""
    if not isinstance(terms, dict):
        said = f"a {type(terms).__name__}"
    elif "loss" not in terms:
        said = f"the keys {list(terms)}"
    else:
        bad = [(k, v) for k, v in terms.items() if not (isinstance(v, Tensor) and v.dim() == 0)]
        if not bad:
            return
        k, v = bad[0]
        said = f"{k!r} of shape {list(v.shape)}" if isinstance(v, Tensor) else f"{k!r} a {type(v).__name__}"
    raise TrainingError(f"{m.name}: loss_terms of variant {m.model.variant!r} must return a dict of scalar "
                        f"tensors with the total under 'loss' (docs/variants.md); it returned {said}")


def step(m: Member, x: Tensor, lr: float, amp, weight: float | None, clip: float = 0.0) -> dict[str, Tensor]:
    """One optimizer step of one dictionary on batch x [B, d]; returns its detached loss terms and
    ``grad_norm``, the global L2 norm of its (averaged) gradient before any clipping (the training log's
    curve; a gradient that overflows is named at this step, not when its update reaches the next loss;
    float32: ``exact_grad_norms`` mends its false infs).

    ``weight``: under torchrun, this rank's share of the global batch (gradients are averaged across ranks).
    ``clip`` > 0: the (averaged) gradient is scaled down to at most this global L2 norm before Adam.
    """
    with amp:  # bf16 autocast (train.autocast) or nothing
        out = m.model(x, sample=True)
        terms = m.model.loss_terms(x, out.float())  # float32 losses; matmuls inside stay autocast
    check_terms(m, terms)
    m.opt.zero_grad(set_to_none=True)
    if len(x):  # an empty part of a short last batch (fewer rows than ranks) has no gradient to add
        terms["loss"].backward()
    if weight is not None:
        dist_.average_grads(m.model, weight)
    grads = [p.grad for p in m.model.parameters() if p.grad is not None]
    if clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(m.model.parameters(), clip, foreach=True)  # [] before clipping
    elif grads:
        norm = torch.nn.utils.get_total_norm(grads, foreach=True)
    else:  # no gradient: a rank's empty part of a short last batch, which weighs 0
        norm = torch.zeros((), device=x.device)
    for g in m.opt.param_groups:
        g["lr"] = lr
    m.opt.step()
    m.model.after_step()
    return {k: v.detach().float() for k, v in terms.items()} | {"grad_norm": norm.detach().float()}


def exact_grad_norms(members: list[Member], keys: list[list[str]], vals: list[float],
                     clip: float) -> list[float]:
    """``vals`` (the step's reduced vector, as ``_check`` reads it) with each non-finite ``grad_norm`` of
    finite gradients replaced by their norm summed in float64: gradient entries past ~1e19, on which Adam
    trains as on any (it is scale-free), square past float32's range, and their float32 norm is inf, a
    false alarm. Under ``train.grad_clip`` the clipping has scaled such gradients to 0 (torch's
    ``clip_grad_norm_``): their inf stands. Computed only then, on the host (the gradients are still there;
    under torchrun every rank holds the same averaged ones)."""
    at, out = 1, list(vals)
    for m, ks in zip(members, keys, strict=True):
        i = at + ks.index("grad_norm") if "grad_norm" in ks else None
        if i is not None and not np.isfinite(out[i]) and clip == 0:
            norms = [torch.linalg.vector_norm(p.grad, dtype=torch.float64) for p in m.model.parameters()
                     if p.grad is not None]
            out[i] = float(torch.linalg.vector_norm(torch.stack(norms)))  # inf or nan when one is
        at += len(ks)
    return out


BIG_SPREAD = 1e20
"""A batch's mean squared deviation from its mean row (``Spread.add``) above which a non-finite loss is
blamed on the rows' scale, not the lr: rows of norm ~1e10 and more (hnum: VAE/VAEase overflow at step 0
on 1e15-scale rows even at lr 0; LM activations have norms of 1e0-1e4)."""


def _check(members: list[Member], keys: list[list[str]], vals: list[float], pos: Position, rows) -> None:
    """``TrainingError`` for non-finite input rows (``vals[0]``) or a member's non-finite loss term; ``vals``
    is the step's reduced vector (``train``: bad_x, the terms in ``keys`` order, base, stop)."""
    if vals[0] > 0:
        bad = f"; store rows {rows[:8].tolist()}..." if rows is not None else ""
        raise TrainingError(f"non-finite values in the input batch at step {pos.step} (epoch {pos.epoch}, "
                            f"batch {pos.batch}){bad}. Check or re-harvest the store.")
    at = 1
    for m, ks in zip(members, keys, strict=True):
        t = dict(zip(ks, vals[at:at + len(ks)], strict=True))
        at += len(ks)
        if bad := [k for k, v in t.items() if not np.isfinite(v)]:
            why = ("The batch's rows are finite, but too large for float32 arithmetic (their squared "
                   "deviations from the batch mean overflow: values beyond ~1e19): set train.normalize: "
                   "mean_scale, or scale the vectors down." if not np.isfinite(vals[-2]) else
                   f"The batch's rows are far from unit scale (their mean squared deviation from the batch "
                   f"mean is {vals[-2]:.3g}), where the loss and its gradients overflow whatever the lr: set "
                   "train.normalize: mean_scale, or scale the vectors down." if vals[-2] > BIG_SPREAD else
                   "Lower its lr, or check the input rows and the variant's params.")  # vals[-2]: Spread.add
            if bad == ["grad_norm"]:  # (its update is made: nothing of this step is saved)
                why = f"Its loss is finite, but its gradient overflows float32. {why}"
            raise TrainingError(
                f"dictionary {m.name!r} ({m.model.variant}): {', '.join(bad)} not finite at step {pos.step} "
                f"(epoch {pos.epoch}, batch {pos.batch}); terms {t}. {why}")


POSTFIX = 4
"""The progress bar names each dictionary's loss up to this many dictionaries; a sweep's, their range."""


def postfix(losses: dict[str, float]) -> str:
    """The progress bar's postfix for the step's losses (name -> loss), headed 'loss' (the bar's
    'vaease=822.6, sae_l1=92.96' said of what nowhere): each by name, or for more than ``POSTFIX``
    dictionaries their range (20 names filled ~900 columns: a terminal cut them after the first two, and the
    bar itself shrank to one column; every value is in logs/<name>.jsonl)."""
    if len(losses) <= POSTFIX:
        return "loss " + ", ".join(f"{name} {v:.4g}" for name, v in losses.items())
    return f"loss of {len(losses)} dicts {min(losses.values()):.4g}..{max(losses.values()):.4g}"


def total_steps(steps_per_epoch: int | None, cfg: TrainConfig) -> int:
    """The steps a run takes: its epochs' (when ``steps_per_epoch`` is known), at most ``cfg.max_steps``
    (0: unknown, no max_steps and no epoch length)."""
    total = steps_per_epoch * cfg.epochs if steps_per_epoch else 0
    return min(total, cfg.max_steps) if total and cfg.max_steps else total or cfg.max_steps


def train(members: list[Member], epoch_batches: Callable[..., Iterable], cfg: TrainConfig,
          device: torch.device, steps_per_epoch: int | None = None, seed: int = 0,
          start: Position | None = None, save: Callable[[Position], None] | None = None,
          stop: Callable[[], bool] = lambda: False, dist: dist_.Dist | None = None,
          progress: bool = True, log: Callable[[dict[str, dict]], None] | None = None,
          probe: bool = False, held: Tensor | None = None,
          snapshot: Callable[[Position], None] | None = None) -> int:
    """Train ``members`` for ``cfg.epochs`` epochs (or ``cfg.max_steps`` steps); returns the steps taken.

    ``epoch_batches(epoch)`` (or ``epoch_batches(epoch, start)`` when resuming mid-epoch) yields the batches
    [B, d] of one epoch, or (batch, store row index [B]) pairs. ``start``: the position of a resumed run
    (members already hold its weights, ``opt`` state, history and sums). ``save(position)`` writes the resume
    state: every ``cfg.checkpoint_every`` steps and when ``stop()`` turns true. ``log(records)`` gets each
    member's record of a log interval (``Member.close_window``; name -> record) every ``cfg.log_every`` steps
    and at the end of each epoch, before a resume state is saved at that step (every rank closes its
    intervals alike; the caller writes them once). ``probe``: each record also holds the dictionary's
    sparsity and fit on the interval's last batch (``actdict.train.probe``: eval_ad, eval_l0, eval_ev,
    eval_live; under torchrun every rank must pass the same ``probe``), unless that batch holds fewer than
    half of ``cfg.batch_size`` rows (an epoch's short last batch: a few rows measure nothing). ``held``
    [n, d] float32 on ``device``: held-out rows (this rank's part) every record also measures, as
    ``held_ad``, ``held_l0``, ``held_ev``, ``held_live`` (``train.probe_rows``; every rank must pass some).
    ``snapshot(position)`` keeps the weights every ``cfg.snapshot_every`` steps.
    """
    d = dist or dist_.Dist()
    pos = Position(**vars(start)) if start else Position()
    for m in members:
        if not hasattr(m, "opt"):
            m.model.to(device).train()
            m.setup(device)
    total = total_steps(steps_per_epoch, cfg)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.autocast else nullcontext()
    bar = tqdm(total=total or None, initial=pos.step, desc="train", unit="step", dynamic_ncols=True,
               disable=bar_disabled(not (d.main and progress)), **bar_timing())
    base_sum, base_n = 0.0, 0  # this epoch's baseline SSE sum and steps
    spread = Spread()  # and its rows' moments; a run resumed inside an epoch continues the saved ones

    last: list = []  # the last batch [b, d] and the global batch's rows (``probe``)

    def close_windows() -> None:  # the open log intervals, at their last step's learning rate
        recs = {m.name: m.close_window(pos, lr_at(pos.step - 1, m.lr, cfg.schedule, total, cfg.warmup_steps,
                                                  cfg.eta_min, cfg.t0)) for m in members if m.window_n}
        if recs and probe and last and 2 * last[1] >= cfg.batch_size:  # not an epoch's short last batch
            evals = probe_.measure({m.name: m.model for m in members if m.name in recs}, last[0], d.on)
            recs = {name: rec | evals[name] for name, rec in recs.items()}
        if recs and held is not None:  # the same held-out rows every interval
            evals = probe_.measure({m.name: m.model for m in members if m.name in recs}, held, d.on)
            recs = {name: rec | {"held" + k[4:]: v for k, v in evals[name].items()}  # eval_ad -> held_ad
                    for name, rec in recs.items()}
        if recs and log is not None:
            log(recs)

    if start is not None and start.batch and members and (acc := members[0].epoch_acc):
        base_sum, base_n = acc["base_sum"], acc["base_n"]
        spread.restore(acc["spread"], device, d.main)
    try:
        # (a run resumed at max_steps still ends its open epoch: its history entry and last log record)
        while pos.epoch < cfg.epochs and (not (cfg.max_steps and pos.step >= cfg.max_steps) or pos.batch):
            batches = epoch_batches(pos.epoch, pos.batch) if pos.batch else epoch_batches(pos.epoch)
            for item in batches:
                if cfg.max_steps and pos.step >= cfg.max_steps:
                    break
                x, rows = item if isinstance(item, tuple) else (item, None)
                x = x.to(device, non_blocking=True).float()  # [b, d] (this rank's part of the batch)
                n_all = float(len(x))
                if d.on:  # the global batch size (a tensor from host values syncs on CUDA: only here)
                    n_all = float(dist_.reduce_(torch.tensor([n_all], device=device)).item())
                last[:] = [x, n_all]
                terms = []
                with dist_.batch_rows(rank_slice(int(n_all), (d.rank, d.world)).start, int(n_all)):
                    for m in members:
                        seed_step(step_seed(seed, pos.step, m.name), device)
                        lr = lr_at(pos.step, m.lr, cfg.schedule, total, cfg.warmup_steps, cfg.eta_min, cfg.t0)
                        terms.append(step(m, x, lr, amp, len(x) / n_all if d.on else None, cfg.grad_clip))
                keys = [list(t) for t in terms]
                bad_x = (~torch.isfinite(x)).any().float()
                base = spread.add(x)  # SSE of the batch mean row (``diverged``); the epoch's moments
                # the step's one vector: [bad_x, every member's terms in ``keys`` order, base], then the stop
                # flag: vals[0] = bad_x, vals[-2] = base, vals[-1] = stop (``_check`` reads it alike)
                vec = torch.stack([bad_x, *(v for t in terms for v in t.values()), base])
                if not len(x):  # a short last batch, fewer rows than ranks: this rank's means are 0/0
                    vec = torch.nan_to_num(vec, nan=0.0)  # and weigh 0 (its gradients are zeros)
                vec[1:] *= len(x) / n_all
                flag = [float(stop())]  # ranks must agree on stopping: under torchrun it is reduced too
                if d.on:
                    vals = dist_.reduce_(torch.cat([vec, torch.tensor(flag, device=device)])).tolist()
                else:
                    vals = vec.tolist() + flag  # the one sync of the step
                vals = exact_grad_norms(members, keys, vals, cfg.grad_clip)  # (float32's false infs)
                _check(members, keys, vals, pos, rows)
                at = 1
                for m, ks in zip(members, keys, strict=True):
                    for k, v in zip(ks, vals[at:at + len(ks)], strict=True):
                        m.record(k, v)
                        if k == "sse" and pos.step == 0:
                            m.first = v  # the fresh dictionary's SSE: ``diverged`` compares with it
                    m.window_n += 1
                    at += len(ks)
                base_sum, base_n = base_sum + vals[-2], base_n + 1
                pos.step += 1
                pos.batch += 1
                bar.update(1)
                bar.set_postfix_str(postfix({m.name: vals[1 + sum(map(len, keys[:i]))]
                                             for i, m in enumerate(members)}), refresh=False)
                if ((cfg.log_every and pos.step % cfg.log_every == 0) or pos.batch == steps_per_epoch
                        or pos.step == cfg.max_steps):  # an interval ends: closed before a save at this step
                    close_windows()  # (a run resumed from it has no batch of the interval to measure)
                if snapshot is not None and cfg.snapshot_every and pos.step % cfg.snapshot_every == 0:
                    snapshot(pos)
                if vals[-1] > 0 or (cfg.checkpoint_every and pos.step % cfg.checkpoint_every == 0):
                    if save is not None:
                        acc = {"base_sum": base_sum, "base_n": base_n, "spread": spread.state(d)}
                        for m in members:
                            m.epoch_acc = acc
                        save(pos)
                    if vals[-1] > 0:
                        raise Interrupted(f"stopped at step {pos.step} (epoch {pos.epoch}, batch "
                                          f"{pos.batch}); resume state saved: rerun the same command "
                                          "to continue")
            epoch_spread = spread.end(d)  # (a collective under torchrun: every rank ends its epoch here)
            close_windows()
            for m in members:  # the epoch (or the run, at max_steps) is over
                if pos.batch:
                    m.history.append({k: v / pos.batch for k, v in m.sums.items()} | {"epoch": pos.epoch})
                m.sums, m.baseline, m.epoch_acc = {}, base_sum / base_n if base_n else m.baseline, None
                m.resumed = (None, m.resumed[1])
                m.spread = epoch_spread if epoch_spread is not None else m.spread
                m.norm2 = spread.norm2 if epoch_spread is not None else m.norm2
            base_sum, base_n = 0.0, 0
            if cfg.max_steps and pos.step >= cfg.max_steps:
                break
            pos.epoch, pos.batch = pos.epoch + 1, 0
    finally:
        bar.close()
    return pos.step
