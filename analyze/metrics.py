"""Evaluation metrics: pure functions of tensors (torch or numpy in, torch / Python numbers out).

Shapes: n = samples (rows), k = latents, d = input width.

Active dimensions (AD, the paper's sparsity measure): ``actdict.train.active`` (Otsu's split per row),
re-exported here: ``otsu_thresholds``, ``otsu_split``, ``otsu_split_batched``, ``active_mask``,
``active_split``, ``active_dims``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import torch
from torch import Tensor

from actdict.train.active import (  # noqa: F401  (re-exported: the analysis' names for them)
    Side,
    _tensor,
    active_dims,
    active_mask,
    active_split,
    otsu_split,
    otsu_split_batched,
    otsu_thresholds,
)


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
    per-dim sum of x^2 [d], n rows (of x minus one fixed row, as analysis sums: the variance is the same, and
    constant rows give exactly 0). Variance about the per-dimension mean; nan if x is constant."""
    s1, s2 = _tensor(sum_x).to(torch.float64), _tensor(sum_x2).to(torch.float64)
    total = float((s2 - s1 * s1 / n).sum())
    return float(sse) / total if total > 0 else float("nan")


def fvu(x, x_hat) -> float:
    """Fraction of variance unexplained: sum sq err / sum sq of (x - per-dim mean); x [n, d]."""
    x64 = _tensor(x).to(torch.float64)
    c = x64 - x64[:1]  # [n, d] about the first row, as analysis sums (rows that do not vary: exactly 0)
    return fvu_from_moments(float(sq_err(x64, x_hat).sum()), c.sum(0), (c * c).sum(0), x64.shape[0])


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


def bincount_histogram(freq) -> dict[str, list[int]]:
    """The values that occur in a bincount: freq [m] (freq[v] = how many rows have value v, e.g. per-row AD)
    -> {"values": [...], "counts": [...]}, ascending, zero-frequency values left out."""
    f = _tensor(freq).long().flatten().cpu()
    values = f.nonzero()[:, 0]
    return {"values": values.tolist(), "counts": f[values].tolist()}


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


ROUNDING = 8 * 2.0 ** -52
"""A float64 sum of n terms is off by about ROUNDING * sqrt(n) of the sum of their magnitudes (float64's
epsilon, its random walk over the additions, a margin of 8): the noise floor of a variance from sums."""


def _shift(shift, k: int) -> Tensor:
    """The [k] or [C, k] float64 values ``ModelEval`` subtracted from |z| before summing per class (its
    ``class_shift``: each class's own), which ``class_separation`` and ``class_profile`` add back to their
    means: zeros [k] where ``shift`` is None."""
    return torch.zeros(k, dtype=torch.float64) if shift is None else _tensor(shift).to(torch.float64)


def _merge(a: tuple, b: tuple) -> tuple:
    """Chan's parallel merge of two groups' (rows, mean [k], sum of squared deviations [k]): no sums of
    squares of the values themselves, so no cancellation of the means' squares."""
    (na, ma, qa), (nb, mb, qb) = a, b
    n = na + nb
    if not na or not nb:
        return a if nb == 0 else b
    delta = mb - ma
    return n, ma + delta * (nb / n), qa + qb + delta * delta * (na * nb / n)


def _others(cnt: Tensor, mean: Tensor, m2: Tensor):
    """For each class c in turn, the (rows, mean [k], m2 [k]) of every other class together, by Chan's merge
    of the classes before c and those after it (the suffixes kept: [C, k] twice; the prefix one at a time)."""
    empty = (0.0, torch.zeros_like(mean[0]), torch.zeros_like(m2[0]))
    suffix = [empty]
    for c in range(len(cnt) - 1, 0, -1):
        suffix.append(_merge((float(cnt[c]), mean[c], m2[c]), suffix[-1]))
    prefix = empty
    for c in range(len(cnt)):
        yield _merge(prefix, suffix.pop())  # classes < c, classes > c
        prefix = _merge(prefix, (float(cnt[c]), mean[c], m2[c]))


def class_separation(sums, squares, fires, n, top: int, shift=None) -> list[list[dict]]:
    """Per class, the ``top`` features whose code's magnitude |z| most separates its rows from every other
    labelled row: Cohen's d, d = (mean_in - mean_out) / sqrt((var_in + var_out) / 2) of |z| (population
    variances, the two groups weighted alike whatever their sizes), largest first, d > 0 only (features
    more active in the class). |z|, not z: a VAE's codes are signed, and a latent that one class uses in
    both directions has a mean near 0 there (an SAE's codes are >= 0: |z| = z). From per-class sums, not
    rows: sums, squares [C, k] (sum of x and of x^2 over the class's rows, x = |z| - shift), fires [C, k]
    (rows where the feature is active), n [C] rows, shift [C, k] (or [k], or None: 0) a value near each
    class's mean |z| of each feature, which ``ModelEval`` subtracts before summing: var = E[x^2] - E[x]^2
    cancels the mean's square, and from float64 sums of |z| itself a code of mean 3,000 and sd 0.002 (one
    part in 1.5e6) had d 1.29 where its rows give 0.49; d does not depend on the shift. Each class's mean
    and squared deviations come from its own sums, the other classes' merged by Chan's formula (no
    cancellation: one shift [k] for all classes was far from a class's mean wherever another class's mean
    was far from it: a code 0 on one class and 3,000 +- 0.002 on the other read as a perfect separator, d
    null, where its rows give d 2.1e6).

    -> for each class, a list of ``{"feature", "d", "abs_in", "abs_out", "fire_in", "fire_out"}`` (abs: the
    mean |z|; fire: the share of the rows where it is active). A class with fewer than 2 rows, or with
    fewer than 2 other rows, lists none. A feature constant within both groups (pooled variance within the
    sums' rounding, ``ROUNDING``, of 0: a constant code's rounding gave a d of ~1e7 or none at random) has
    no finite d: where its class's constant is larger than the others' (beyond the means' rounding) it
    separates them perfectly, and is listed first with ``"d": None`` (JSON null: infinite), the larger
    difference of means first; otherwise it is not listed. Memory: the classes' means and squared
    deviations and the merges' suffixes beside the inputs ([C, k] float64 four times), a class at a time."""
    s, q = _tensor(sums).to(torch.float64), _tensor(squares).to(torch.float64)  # [C, k]
    f, cnt = _tensor(fires), _tensor(n).to(torch.float64)  # [C, k], [C]
    total = float(cnt.sum())
    rows = cnt.clamp(min=1)[:, None]  # [C, 1]
    mean = s / rows + _shift(shift, s.shape[1])  # [C, k] each class's mean |z|
    m2 = (q - s * s / rows).clamp(min=0)  # [C, k] its squared deviations, from sums about its own shift
    q_all, f_all = q.sum(0), f.sum(0).to(torch.float64)  # [k]: every labelled row
    out: list[list[dict]] = []
    for c, (_, m_out, m2_out) in zip(range(len(cnt)), _others(cnt, mean, m2), strict=True):
        n_in, n_out = float(cnt[c]), total - float(cnt[c])
        if n_in < 2 or n_out < 2:
            out.append([])
            continue
        m_in, e_in = mean[c], q[c] / n_in  # [k] mean |z|, mean x^2 (x = |z| - shift)
        pooled = (m2[c] / n_in + m2_out / n_out) / 2  # [k]
        noise = ROUNDING * (n_in ** 0.5 * e_in + total ** 0.5 * q_all / n_out) / 2  # the classes' own sums
        gap = m_in - m_out  # [k]
        finite = pooled > noise
        edge = (n_in * e_in).sqrt() + total * q_all.sqrt() / n_out + m_in.abs() + m_out.abs()  # the means'
        perfect = ~finite & (gap > ROUNDING * edge)  # [k]
        d = torch.where(finite, gap / pooled.sqrt(), -torch.inf)  # [k]
        rank = torch.where(perfect, torch.inf, d)  # [k] perfect separators first, among them
        order = torch.argsort(-rank, stable=True)  # ties: the lower feature index first
        order = order[torch.argsort(-torch.where(perfect, gap, 0.0)[order], stable=True)][:top]  # by gap
        fire_in = f[c].to(torch.float64)  # [k] rows active
        out.append([{"feature": int(j), "d": None if perfect[j] else float(d[j]),
                     "abs_in": float(m_in[j]), "abs_out": float(m_out[j]),
                     "fire_in": float(fire_in[j]) / n_in, "fire_out": float(f_all[j] - fire_in[j]) / n_out}
                    for j in order.tolist() if perfect[j] or d[j] > 0])
    return out


PROFILE_CODES = 1 << 22
"""Class-and-feature entries ``class_profile`` sorts at once."""


def class_profile(fires, sums, n, top: int, shift=None) -> list[list[tuple[int, int, float]]]:
    """Per feature, the ``top`` classes with the most of its active rows: ``(class, rows active, mean |z| on
    the class's rows)``, most first (ties: the lower class index), classes where it is never active left out.
    fires [C, k] (rows active), sums [C, k] (sum of |z| - shift over the class's rows), n [C] rows, shift
    [C, k] or [k] (or None: 0), as ``class_separation`` reads them. Where a feature's activity comes from,
    beside the classes it sets apart (Cohen's d): a feature of GitHub code on a Pile harvest names its
    classes here even where it fires on too few of them for a large d. Memory: [C, PROFILE_CODES / C]
    temporaries, a block of features at a time (a whole [C, k] sort would add 16 bytes per class and latent
    to the 32 kept)."""
    f = _tensor(fires)  # [C, k]
    s, cnt = _tensor(sums).to(torch.float64), _tensor(n).to(torch.float64)  # [C, k], [C]
    k = f.shape[1]
    ref = _shift(shift, k)  # [k]
    out: list[list[tuple[int, int, float]]] = []
    block = max(1, PROFILE_CODES // max(1, f.shape[0]))  # features per block
    for j0 in range(0, k, block):
        cols = slice(j0, j0 + block)
        order = torch.argsort(-f[:, cols], dim=0, stable=True)[:top]  # [t, b] class indices
        act = torch.gather(f[:, cols], 0, order)  # [t, b] rows active
        back = torch.gather(ref[:, cols], 0, order) if ref.ndim == 2 else ref[cols]  # [t, b] or [b] shift
        mean = torch.gather(s[:, cols], 0, order) / cnt[order].clamp(min=1) + back  # [t, b] mean |z|
        out += [[(c, a, v) for c, a, v in zip(oc, ac, mc, strict=True) if a > 0]
                for oc, ac, mc in zip(order.T.tolist(), act.T.tolist(), mean.T.tolist(), strict=True)]
    return out
