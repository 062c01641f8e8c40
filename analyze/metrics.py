"""Evaluation metrics: pure functions of tensors (torch or numpy in, torch / Python numbers out).

Shapes: n = samples (rows), k = latents, d = input width.

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
* A degenerate row (all values equal, or k == 1) has no split: everything is in the low group
  (threshold = the common value), and ``active_mask`` counts every latent of it active on either side
  (AD = k: for an SAE, equal nonzero codes, e.g. the one code of a k = 1 dictionary, are all active, as
  their L0 says), but for a row of -inf alone: an all-zero SAE code has AD = 0 = L0.
* NaN or +inf activity is an error.
Near-ties between split costs (relative to the row's total sum of squares, 1e-10) count as ties, so
floating-point rounding does not change which minimum is "first".
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
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
    if torch.isnan(v).any() or torch.isposinf(v).any():
        raise ValueError("activity contains NaN or +inf")
    n, k = v.shape
    block = max(1, _BLOCK_ELEMS // max(k, 1))
    out = [_thresholds_block(v[s : s + block]) for s in range(0, n, block)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.float64, device=v.device)


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


def active_mask(activity, side: Side) -> Tensor:
    """[n, k] bool: which latents are active per sample (side "low": low group, "high": high group; a
    degenerate row, all of it: module doc)."""
    a = _tensor(activity)
    if side not in ("low", "high"):
        raise ValueError(f"side must be 'low' or 'high', got {side!r}")
    low = a <= otsu_thresholds(a).to(a.dtype)[:, None]  # thresholds are member values: exact cast
    if side == "low":
        return low
    flat = (a == a[:, :1]).all(1) & torch.isfinite(a[:, 0])  # [n] degenerate rows: every latent active
    return ~low | flat[:, None]


def active_dims(activity, side: Side) -> Tensor:
    """Per-sample number of active dimensions: activity [n, k] -> [n] int64."""
    return active_mask(activity, side).sum(1)


def ad_per_group(activity, side: Side, labels: Sequence[Hashable]) -> dict[Hashable, int]:
    """Paper Table 2 for VAEs: per label (e.g. manifold), mean activity (log var, the official code's
    statistic) over its rows, then the Otsu split. SAEs average |z| and split its log instead (a mean of
    log|z| is -inf for a latent that is 0 on any one row): ``analyze/evaluate.py``, ``paper_tables.group_ad``.

    activity [n, k], labels [n] -> {label: active dimensions of the group's mean activity}.
    """
    a = _tensor(activity).to(torch.float64)
    lab = np.asarray(labels)
    if lab.shape != (a.shape[0],):
        raise ValueError(f"labels must have shape ({a.shape[0]},), got {lab.shape}")
    out: dict[Hashable, int] = {}
    for g in np.unique(lab):
        idx = torch.as_tensor(np.flatnonzero(lab == g), device=a.device)
        mean = a.index_select(0, idx).mean(0, keepdim=True)  # [1, k]; a -inf anywhere gives -inf
        out[g.item() if hasattr(g, "item") else g] = int(active_dims(mean, side)[0])
    return out


def sq_err(x, x_hat) -> Tensor:
    """Per-sample sum of squared error: [n, d], [n, d] -> [n] (float64)."""
    x, x_hat = _tensor(x).to(torch.float64), _tensor(x_hat).to(torch.float64)
    if x.shape != x_hat.shape:
        raise ValueError(f"x {tuple(x.shape)} and x_hat {tuple(x_hat.shape)} differ in shape")
    return ((x - x_hat) ** 2).sum(-1)


def reconstruction_error(x, x_hat) -> float:
    """Paper RE: batch mean of the per-sample sum of squared error."""
    return float(sq_err(x, x_hat).mean())


def l0(codes) -> float:
    """Mean number of non-zero codes per sample: codes [n, k]."""
    return float((_tensor(codes) != 0).sum(1).to(torch.float64).mean())


def fvu_from_moments(sse: float, sum_x, sum_x2, n: int) -> float:
    """Fraction of variance unexplained from streamed sums: total squared error, per-dim sum of x [d],
    per-dim sum of x^2 [d], n rows. Variance about the per-dimension mean; nan if x is constant."""
    s1, s2 = _tensor(sum_x).to(torch.float64), _tensor(sum_x2).to(torch.float64)
    total = float((s2 - s1 * s1 / n).sum())
    return float(sse) / total if total > 0 else float("nan")


def fvu(x, x_hat) -> float:
    """Fraction of variance unexplained: sum sq err / sum sq of (x - per-dim mean); x [n, d]."""
    x64 = _tensor(x).to(torch.float64)
    return fvu_from_moments(float(sq_err(x64, x_hat).sum()), x64.sum(0), (x64 * x64).sum(0), x64.shape[0])


def explained_variance(x, x_hat) -> float:
    """1 - FVU."""
    return 1.0 - fvu(x, x_hat)


def dead_latents(fire_counts) -> int:
    """Number of latents that never fired: fire_counts [k] (times each latent was active)."""
    return int((_tensor(fire_counts) == 0).sum())


def feature_density(fire_counts, n_rows: int) -> Tensor:
    """Fraction of rows on which each latent was active: [k] -> [k] float64."""
    if n_rows <= 0:
        raise ValueError("n_rows must be positive")
    return _tensor(fire_counts).to(torch.float64) / n_rows


def count_histogram(counts) -> dict[str, list[int]]:
    """Histogram of non-negative integers (e.g. per-sample AD): {"values": [...], "counts": [...]},
    only the values that occur, ascending."""
    c = _tensor(counts).long().flatten().cpu()
    values, freq = torch.unique(c, return_counts=True)
    return {"values": values.tolist(), "counts": freq.tolist()}


def log_density_histogram(density, bins: int) -> dict[str, list | int]:
    """Histogram of log10 feature density [k]: {"edges": [bins+1], "counts": [bins], "dead": int}.
    Dead latents (density 0) are counted apart, not binned."""
    dens = _tensor(density).to(torch.float64).flatten().cpu()
    alive = dens[dens > 0].log10()
    if alive.numel() == 0:
        return {"edges": [], "counts": [], "dead": int(dens.numel())}
    lo, hi = float(alive.min()), float(alive.max())
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    counts = torch.histc(alive, bins=bins, min=lo, max=hi)
    edges = torch.linspace(lo, hi, bins + 1)
    return {"edges": edges.tolist(), "counts": counts.long().tolist(), "dead": int((dens == 0).sum())}


def cosine_similarity(x, x_hat) -> Tensor:
    """Per-sample cosine of x and x_hat: [n, d], [n, d] -> [n] float64 (0 when either row is all zero)."""
    x, x_hat = _tensor(x).to(torch.float64), _tensor(x_hat).to(torch.float64)
    if x.shape != x_hat.shape:
        raise ValueError(f"x {tuple(x.shape)} and x_hat {tuple(x_hat.shape)} differ in shape")
    norms = x.norm(dim=-1) * x_hat.norm(dim=-1)  # [n]
    dots = (x * x_hat).sum(-1)  # [n]
    return torch.where(norms > 0, dots / norms.clamp_min(1e-300), torch.zeros_like(dots))


def dense_latents(density, threshold: float) -> int:
    """Number of latents active on more than ``threshold`` (a fraction) of the rows: density [k]."""
    return int((_tensor(density) > threshold).sum())


def ad_per_class(ad, labels) -> dict[Hashable, float]:
    """Mean per-sample active dimensions of each class: ad [n], labels [n] -> {label: mean AD}."""
    a = _tensor(ad).to(torch.float64).cpu().numpy()
    lab = np.asarray(labels)
    if lab.shape != a.shape:
        raise ValueError(f"labels must have shape {a.shape}, got {lab.shape}")
    return {(g.item() if hasattr(g, "item") else g): float(a[lab == g].mean()) for g in np.unique(lab)}


def kept_grid(k: int, points: int) -> list[int]:
    """Numbers of kept latents for the masked-dimensions curve: 0, then ~``points`` geometrically spaced
    values in 1..k (every integer at the small end, where the curve bends), always ending at k."""
    if k < 1 or points < 1:
        raise ValueError(f"k and points must be >= 1, got k={k}, points={points}")
    if points >= k:
        return list(range(k + 1))
    ratio = k ** (1 / max(points - 1, 1))
    grid, v = [0], 1
    while v < k:
        grid.append(v)
        v = max(v + 1, int(round(v * ratio)))
    return [*grid, k]


def activity_rank(activity, side: Side, tiebreak=None) -> Tensor:
    """[n, k] int64: each latent's rank in its row, 0 = most active (side "high": largest activity first,
    "low": smallest first). Ties are broken by the larger |``tiebreak``| [n, k] when given (e.g. the
    codes: VAE variances clamped at their floor tie exactly), then by latent index (stable sorts)."""
    a = _tensor(activity)
    if side not in ("low", "high"):
        raise ValueError(f"side must be 'low' or 'high', got {side!r}")
    if tiebreak is None:
        order = torch.sort(a, dim=1, descending=(side == "high"), stable=True).indices  # [n, k]
    else:  # sort by |tiebreak| first; the stable sort by activity keeps that order within ties
        pre = torch.sort(_tensor(tiebreak).abs().to(a.device), dim=1, descending=True, stable=True).indices
        order = pre.gather(1, torch.sort(a.gather(1, pre), dim=1, descending=(side == "high"),
                                         stable=True).indices)  # [n, k]
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(a.shape[1], device=a.device).expand_as(order))
    return ranks


def masked_re_curve(x, codes, activity, side: Side, decode, kept: Sequence[int]) -> list[float]:
    """Paper Fig. 4: RE as latents are masked out in order of activity.

    For each m in ``kept``: per sample keep the m most active latents (by ``activity`` on ``side``; equally
    active ones by the larger |code|: see ``activity_rank``), zero
    the other entries of ``codes`` [n, k] (the decoder input), decode with ``decode`` ([n, k] -> [n, d])
    and return the RE (batch mean of per-sample sum of squared error) against x [n, d]."""
    c = _tensor(codes)
    xt = _tensor(x).to(c.dtype)  # differences in the codes' precision, their squares summed in float64
    ranks = activity_rank(activity, side, tiebreak=c)  # [n, k]; equal activity: larger |code| first
    out = []
    with torch.no_grad():
        for m in kept:
            x_hat = decode(torch.where(ranks < m, c, torch.zeros_like(c)))  # [n, d]
            # squared in float64: float32 squares of rows beyond ~1e19 (a bfloat16 store holds up to 3e38)
            # overflow to inf, and the curve came out all null while re_det, in float64, was finite
            out.append(float((xt - x_hat).to(torch.float64).pow(2).sum(-1).mean()))
    return out
