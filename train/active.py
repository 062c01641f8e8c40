"""Active dimensions: which latents of a dictionary are active on a row, by the protocol's ``active_side``.

The definition lives with the protocol because training reports it too (``actdict.train.probe``, the
training log) and the analysis (``actdict.analyze.metrics`` re-exports it) must count it the same way.

Shapes: n = samples (rows), k = latents.

Active dimensions (AD, the paper's sparsity measure, Sec. 5.1 and App. D): per sample, sort the k
activity values and split them in two groups by Otsu's criterion: choose the split i in 1..k-1
minimising ``i * var(left) + (k - i) * var(right)`` (population variances, i.e. the within-group sums
of squares), taking the FIRST minimum. This is the official code's ``find_optimal_threshold_torch``; the
paper's words ("the average variance above ... and below the threshold is minimum") read literally as an
unweighted mean of the two variances, which picks another split on many rows: we follow the code, with
which the paper's numbers were made. The threshold is the largest value of the left (low)
group and the low group is every value ``<= threshold``. VAE models (activity = log posterior variance) count
the low group as active, SAE models (activity = log|z|) the high group.

Conventions beyond the paper (no NaN ever comes out):
* ``-inf`` values (log|z| of exact zeros) form exactly the low group of their row: this is the limit
  of replacing -inf by -M, M -> inf. So for an SAE, a row with at least one exact zero has AD == its L0
  (its active latents are its nonzero codes), but a row whose k codes are all nonzero has no -inf and is
  split among its nonzero values like any row (AD < L0 = k, unless they are all equal: below): an SAE's AD is
  at most its L0, equal when every row has an exact zero or equal codes.
* A row of no values (k == 0) has the threshold -inf: nothing in either group (AD 0, an empty mask).
* A degenerate row (all values equal, or k == 1) has no split: everything is in the low group
  (threshold = the common value), and ``active_mask`` counts every latent of it active on either side
  (AD = k: for an SAE, equal nonzero codes, e.g. the one code of a k = 1 dictionary, are all active, as
  their L0 says), but for a row of -inf alone: an all-zero SAE code has AD = 0 = L0.
* NaN or +inf activity is an error.
Near-ties between split costs (relative to the row's total sum of squares, 1e-10) count as ties, so
floating-point rounding does not change which minimum is "first".
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

Side = Literal["low", "high"]
_TIE_RTOL = 1e-10
_BLOCK_ELEMS = 1 << 22  # rows per block in the batched split: ~4M float64 values (32 MB) per temporary


def _tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))


def otsu_thresholds(values) -> Tensor:
    """Per-row Otsu threshold of ``values`` [n, k] -> [n] float64 (low group = values <= threshold).

    Vectorised with cumulative sums over sorted rows (no loop over samples; rows are processed in
    blocks to bound memory). Stays on the input's device.
    """
    v = _tensor(values)
    if v.ndim != 2:
        raise ValueError(f"otsu_thresholds expects [n, k] values, got shape {tuple(v.shape)}")
    _refuse_nan_posinf(v)
    n, k = v.shape
    if k == 0:  # no value: no split to compute (arange(1, 0) raised), nothing in the low group
        return torch.full((n,), -torch.inf, dtype=torch.float64, device=v.device)
    block = max(1, _BLOCK_ELEMS // max(k, 1))
    out = [_thresholds_block(v[s : s + block]) for s in range(0, n, block)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.float64, device=v.device)


def _refuse_nan_posinf(v: Tensor) -> None:
    """ValueError if ``v`` holds a NaN or +inf (its max is then one: a single pass)."""
    if v.numel() and not bool(v.max() < torch.inf):
        raise ValueError("activity contains NaN or +inf")


def _thresholds_block(v: Tensor) -> Tensor:  # v: [b, k] -> [b]
    has_neginf = torch.isneginf(v).any(1)  # [b]: threshold -inf, no split to compute (fast SAE path)
    thr = torch.full((v.shape[0],), -torch.inf, dtype=torch.float64, device=v.device)
    rest = (~has_neginf).nonzero()[:, 0]
    if rest.numel():
        thr[rest] = _otsu_finite(v.index_select(0, rest))
    return thr


def _otsu_finite(v: Tensor) -> Tensor:  # v: [b, k] finite -> [b] thresholds
    b, k = v.shape
    srt = torch.sort(v, dim=1).values.to(torch.float64)  # [b, k]
    if k == 1:
        return srt[:, 0]
    s = srt - srt.mean(1, keepdim=True)  # centring keeps the cumulative sums well conditioned
    c1, c2 = s.cumsum(1), (s * s).cumsum(1)  # [b, k]
    i = torch.arange(1, k, device=v.device, dtype=torch.float64)  # left sizes 1..k-1
    l1, l2 = c1[:, :-1], c2[:, :-1]  # [b, k-1] left sums for split i
    r1, r2 = c1[:, -1:] - l1, c2[:, -1:] - l2
    cost = (l2 - l1 * l1 / i).clamp_min(0) + (r2 - r1 * r1 / (k - i)).clamp_min(0)  # [b, k-1]
    total = c2[:, -1]  # [b] total sum of squares (the mean is 0 after centring)
    best = cost.min(1).values
    first = (cost <= (best + _TIE_RTOL * total)[:, None]).int().argmax(1)  # first (near-)minimum
    thr = srt.gather(1, first[:, None])[:, 0]  # largest value of the left group
    return torch.where(total <= 0, srt[:, -1], thr)  # degenerate row: all in the low group


def otsu_split_batched(values) -> Tensor:
    """Per-row count of values in the low group: [n, k] -> [n] int64."""
    v = _tensor(values)
    return (v <= otsu_thresholds(v).to(v.dtype)[:, None]).sum(1)  # thr is a member value: exact


def otsu_split(values) -> int:
    """Number of values in the low group of a 1-D vector [k] (split index after sorting)."""
    v = _tensor(values)
    if v.ndim != 1:
        raise ValueError(f"otsu_split expects a 1-D vector, got shape {tuple(v.shape)}")
    return int(otsu_split_batched(v[None])[0])


def _neginf_mask(a: Tensor, side: Side) -> tuple[Tensor, bool]:
    """(a's -inf entries (side "low") or the others ("high": NaN among them), whether every row has one).
    On a CPU by numpy: one [n, k] temporary and ~3x torch's speed at [4096, 16384] (its compare 125 ms,
    isneginf then ~ a second fresh n x k bytes, the row check 50 ms; numpy's 40 ms and 1 ms)."""
    if a.device.type == "cpu" and a.dtype in (torch.float32, torch.float64):
        v = a.detach().numpy()
        m = v > -np.inf if side == "high" else v == -np.inf
        every = not m.all(1).any() if side == "high" else bool(m.any(1).all())
        return torch.from_numpy(m), every
    m = a > -torch.inf if side == "high" else torch.isneginf(a)
    return m, (not bool(m.all(1).any())) if side == "high" else bool(m.any(1).all())


def active_mask(activity, side: Side) -> Tensor:
    """[n, k] bool: which latents are active per sample (side "low": low group, "high": high group; a
    degenerate row, all of it: module doc)."""
    return active_split(activity, side)[0]


def active_split(activity, side: Side) -> tuple[Tensor, bool]:
    """(``active_mask``, whether it is exactly the activity's -inf entries (side "low") or all its others
    ("high"): every row had a -inf, so no row was split). The analysis then knows an SAE's mask to be its
    finite log|z| entries, its nonzero codes, without comparing the activity again."""
    a = _tensor(activity)
    if side not in ("low", "high"):
        raise ValueError(f"side must be 'low' or 'high', got {side!r}")
    if a.ndim == 2 and a.shape[0] and a.shape[1] and a.is_floating_point():
        mask, every_row = _neginf_mask(a, side)
        if every_row:  # every row has a -inf (or a NaN, refused here): its low group is exactly its -inf
            _refuse_nan_posinf(a)  # (module doc), no split, no degenerate row: ~4x faster than the split
            return mask, True
    low = a <= otsu_thresholds(a).to(a.dtype)[:, None]  # thresholds are member values: exact cast
    if side == "low":
        return low, False
    flat = (a == a[:, :1]).all(1) & torch.isfinite(a[:, :1]).all(1)  # [n] degenerate rows: every latent
    return ~low | flat[:, None], False  # active (k = 0: an empty mask, where a[:, 0] raised)


def active_dims(activity, side: Side) -> Tensor:
    """Per-sample number of active dimensions: activity [n, k] -> [n] int64."""
    return active_mask(activity, side).sum(1)
