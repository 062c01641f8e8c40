"""What the training log records of a dictionary beside its loss terms: its sparsity and fit on the batch that
ends a log interval, measured as the analysis measures them on held-out rows (``actdict.analyze``): eval mode
(BatchTopK's learned threshold, BatchNorm's running statistics), no gradient, the deterministic forward
(a VAE's posterior mean), float32.

- ``eval_ad``: mean active dimensions per row (the paper's Otsu split, ``actdict.train.active``);
- ``eval_l0``: mean exact nonzeros of the codes per row (a VAE's codes are rarely exactly 0: AD is its
  measure);
- ``eval_ev``: explained variance of the batch, 1 - SSE / the rows' squared deviations from their mean;
- ``eval_live``: the fraction of latents active on at least one row of the batch (1 - the batch's dead
  fraction; a batch of B rows misses latents rarer than about 1/B, which analysis' ``dead`` counts over every
  held-out row).

These are values of one batch, not means over the interval (the loss terms are). Under torchrun each rank
measures its rows and the sums are added (an all-reduce, after one of the rows' mean row), so the values
are the global batch's. Nothing of the training changes: no parameter, buffer or random number is touched
(a resumed run logs what an uninterrupted one does).
"""

from __future__ import annotations

import torch
from torch import Tensor

from actdict.train import dist as dist_
from actdict.train.active import active_mask
from actdict.train.protocol import Dictionary

_N, _L0, _AD, _SSE = range(4)  # slots of ``sums`` before sum x [d], sum x^2 [d], fired [k]


def wide(device: torch.device) -> torch.dtype:
    """The dtype sums are kept in on ``device`` (here and in ``member.Spread``): float64, but float32 on MPS
    (no float64 there)."""
    return torch.float64 if device.type in ("cpu", "cuda") else torch.float32


@torch.no_grad()
def center(x: Tensor, on: bool) -> Tensor:
    """The mean row [d] of the rows x [b, d] of every rank (``on``: under torchrun, one all-reduce), in
    ``wide``: what ``sums`` sums x about, so that rows that do not vary sum to exactly 0."""
    w = wide(x.device)
    v = torch.cat([x.to(w).sum(0), torch.full((1,), float(len(x)), dtype=w, device=x.device)])  # [d + 1]
    v = dist_.reduce_(v) if on else v
    return v[:-1] / v[-1].clamp_min(1)


@torch.no_grad()
def sums(model: Dictionary, x: Tensor, mean: Tensor | None = None) -> Tensor:
    """x [b, d] float32 -> [4 + 2d + k]: rows, sum of L0, sum of AD, SSE, sum x [d], sum x^2 [d], the number
    of rows each latent is active on [k] (the model is left in the mode it was in); the sums of x and x^2 are
    of x - ``mean`` (``center``) when given (the variance is the same)."""
    d, k = x.shape[1], model.k
    w = wide(x.device)
    if not len(x):  # this rank's part of a short last batch
        return torch.zeros(4 + 2 * d + k, dtype=w, device=x.device)
    was_training = model.training
    model.eval()
    try:
        out = model(x, sample=False)
        mask = active_mask(out.activity, model.active_side)  # [b, k]
        xw = x.to(w)
        head = torch.stack([torch.tensor(float(len(x)), device=x.device, dtype=w),
                            torch.count_nonzero(out.codes).to(w), torch.count_nonzero(mask).to(w),
                            (xw - out.x_hat.to(w)).pow(2).sum()])  # [4]
        c = xw - mean.to(w) if mean is not None else xw  # [b, d]
        return torch.cat([head, c.sum(0), c.pow(2).sum(0), mask.sum(0).to(w)])
    finally:
        model.train(was_training)


def record(v: Tensor, k: int) -> dict[str, float]:
    """The ``eval_*`` values of ``sums``' vector v (every rank's, added)."""
    v = v.cpu().double()
    n = float(v[_N])
    if n <= 0:
        return {}
    d = (len(v) - 4 - k) // 2
    s1, s2, fired = v[4:4 + d], v[4 + d:4 + 2 * d], v[4 + 2 * d:]
    spread = float((s2 - s1 * s1 / n).sum())
    return {"eval_ad": float(v[_AD]) / n, "eval_l0": float(v[_L0]) / n,
            "eval_ev": 1.0 - float(v[_SSE]) / spread if spread > 0 else float("nan"),
            "eval_live": float((fired > 0).sum()) / k}


def measure(models: dict[str, Dictionary], x: Tensor, on: bool) -> dict[str, dict[str, float]]:
    """``record`` of each model on batch x [b, d] (this rank's rows); ``on``: under torchrun (every rank must
    call this at the same step: two all-reduces, of the rows' mean and of all the models' sums)."""
    mean = center(x, on) if models else None  # [d]
    vecs = {name: sums(m, x, mean) for name, m in models.items()}
    if on and vecs:
        flat = dist_.reduce_(torch.cat(list(vecs.values())))
        vecs = dict(zip(vecs, flat.split([len(v) for v in vecs.values()]), strict=True))
    return {name: record(v, models[name].k) for name, v in vecs.items()}
