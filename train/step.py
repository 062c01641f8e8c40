"""One optimizer step of one dictionary (``step``), the per-step seeds (``step_seed``, ``seed_step``) and the
checks of a step's reduced values (``check_step``, ``exact_grad_norms``): what ``loop.train`` runs once per
dictionary and batch."""

from __future__ import annotations

import zlib

import numpy as np
import torch
from torch import Tensor

from actdict.errors import ActdictError
from actdict.train import dist as dist_
from actdict.train.member import Member, Position


class TrainingError(ActdictError, FloatingPointError):
    """Non-finite input rows or loss: the message names the dictionary, the step and the batch."""


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
    """``vals`` (the step's reduced vector, as ``check_step`` reads it) with each non-finite ``grad_norm`` of
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


def check_step(members: list[Member], keys: list[list[str]], vals: list[float], pos: Position, rows) -> None:
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
