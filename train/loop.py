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

One dictionary's step, its seed and the checks of the step's values: ``train.step``; its running record and
the epoch's row moments its ``diverged`` warning is judged against: ``train.member``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext

import torch
from torch import Tensor
from tqdm import tqdm

from actdict.bars import bar_disabled, bar_timing
from actdict.errors import ActdictError
from actdict.train import dist as dist_
from actdict.train import probe as probe_
from actdict.train.config import TrainConfig
from actdict.train.data import rank_slice
from actdict.train.member import Member, Position, Spread
from actdict.train.schedule import lr_at
from actdict.train.step import check_step, exact_grad_norms, seed_step, step, step_seed


class Interrupted(ActdictError):
    """The run was asked to stop (SIGTERM); its resume state was saved."""


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    return torch.device(name)


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
                # flag: vals[0] = bad_x, vals[-2] = base, vals[-1] = stop (``check_step`` reads it alike)
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
                check_step(members, keys, vals, pos, rows)
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
