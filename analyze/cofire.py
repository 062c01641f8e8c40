"""Which features fire together: exact co-activation counts of every pair of features over the test rows.

:class:`CoFire` keeps C [k, k] int32, C[i, j] = the rows on which features i and j are both active (the
analysis' active split, as for AD and density), so C[i, i] is feature i's fire count. Memory k^2 x 4 bytes
(64 MiB at k 4,096, 1 GiB at 16,384): ``analyze.cofire_max_mib`` bounds it for all dictionaries together.
Past 2^31 - 1 rows counted a count could wrap, so C becomes int64 (k^2 x 8 bytes) before the row that
could pass it (``CoFire.update``; the budget prices int64 for that many rows: ``budget.cofire_within``).
Each batch adds its active pattern's pair counts, by whichever of two exact paths is cheaper:

* dense: A^T A of the [B, k] 0/1 matrix (float32 matmul, exact below 2^24 rows per batch): B k^2 work,
  fast for small k and on a GPU;
* pairs: every (i, j) pair of each row's active features, made feature by feature (all of feature i's pairs,
  then i + 1's) and added one by one into C: sum over rows of AD^2 work, the cheaper path for a large k with
  few active features per row (a TopK SAE of 16,384 with AD 32: ~40x less work than the matmul on a CPU); in
  that order the adds sweep C a row at a time, so no sort (``torch.unique``) is needed to keep them in
  cache; above ``MAX_PAIRS`` pairs in a batch (a few rows of thousands active among sparse ones), the rows in
  halves, each counted by its own cheaper path.

:func:`partners` ranks each feature's partners by Jaccard similarity C_ij / (C_ii + C_jj - C_ij) (rows where
both fire over rows where either fires), which neither rewards a partner for being dense (as P(j | i) does)
nor for being rare (as P(i | j) does).

Shapes: B = batch rows, k = features, n = partners kept per feature.
"""

from __future__ import annotations

import torch
from torch import Tensor

from actdict.analyze.streaming import count_dtype, row_counts, where_true

DENSE_RATIO = 64.0  # the pairs path when k > 64 x the rows' RMS active count (CPU; measured: see docs)
MAX_PAIRS = 1 << 24  # pairs counted at once (~0.7 GB of int64 keys and indices); more: the rows in halves


def active_pairs(active: Tensor, other: Tensor | None = None, pairs: tuple[Tensor, Tensor] | None = None
                 ) -> Tensor:
    """[B, k] bool (and [B, k2] bool, default ``active`` itself) -> [P] int64 flat keys i * k2 + j of every
    pair (i, j) of a feature i active on a row and a feature j of ``other`` active on the same row (i == j
    included when ``other`` is ``active``), P = sum over rows of AD x AD2; in order of i (a stable sort of the
    active entries, not of the P pairs), so that adding them sweeps the counts a row at a time: at k 16,384,
    AD 32, B 4,096 (4.2M pairs) the adds take ~0.1 s, against ~0.7 s for ``torch.unique``'s sort that kept
    random adds in cache. ``pairs``: ``where_true(active)`` if the caller has it."""
    other = active if other is None else other
    b, i = where_true(active) if pairs is None else pairs  # [m] row-major
    j = i if other is active else where_true(other)[1]  # [m2] row-major: each row's features contiguous
    c = row_counts(other, (b, i) if other is active else None)  # [B] other's active per row
    by_i = i.argsort(stable=True)  # [m] the entries of active in order of feature
    b, i = b[by_i], i[by_i]
    rep = c[b]  # [m] partners of each entry (its row's count in other)
    e = torch.repeat_interleave(rep)  # [P] the entry of each pair
    skip = (torch.cumsum(c, 0) - c)[b] - (torch.cumsum(rep, 0) - rep)  # [m] its row's start in j less its
    pos = torch.arange(len(e), device=i.device).add_(skip[e])  # first pair's: [P] the pair's feature in j
    return (i * other.shape[1])[e].add_(j[pos])


class CoFire:
    """Running co-activation counts C [k, k2] of every feature of one dictionary with every feature of a
    second (``k2``; default: itself, C [k, k])."""

    def __init__(self, k: int, device: str | torch.device = "cpu", k2: int | None = None) -> None:
        self.k, self.k2 = k, k if k2 is None else k2
        self.counts = torch.zeros((k, self.k2), dtype=torch.int32, device=device)  # [k, k2]
        self.rows = 0  # counted: past 2^31 - 1, the counts are int64 (no count exceeds the rows: count_dtype)

    def update(self, active: Tensor, other: Tensor | None = None, pairs: tuple[Tensor, Tensor] | None = None
               ) -> None:
        """active [B, k] bool: the features active on each row; ``other`` [B, k2] bool, the second
        dictionary's on the same rows (None: the counts are of ``active`` with itself); pairs:
        ``streaming.where_true(active)`` if the caller has it."""
        self.rows += len(active)
        if (dtype := count_dtype(self.rows)) != self.counts.dtype:  # a count could wrap: int64 from here
            self.counts = self.counts.to(dtype)
        self._add(active, other, pairs)

    def _add(self, active: Tensor, other: Tensor | None, pairs: tuple[Tensor, Tensor] | None = None) -> None:
        """``update``'s counting, by the cheaper path (the rows in halves past ``MAX_PAIRS``)."""
        active = active.to(self.counts.device)
        other = active if other is None else other.to(self.counts.device)
        na = row_counts(active, pairs)  # [B] active per row (from the pairs where they are few)
        nb = na if other is active else row_counts(other)
        c = na.to(torch.float64) * nb.to(torch.float64)  # [B] pairs per row
        rms = float(c.mean()) ** 0.5 if len(c) else 0.0
        if self.counts.is_cuda or (self.k * self.k2) ** 0.5 <= DENSE_RATIO * rms:
            for s in range(0, len(active), 1 << 23):  # float32 counts exact below 2^24 rows
                a = active[s : s + (1 << 23)].to(torch.float32)  # [B', k]
                self.counts += (a.T @ other[s : s + (1 << 23)].to(torch.float32)).to(self.counts.dtype)
            return
        if float(c.sum()) > MAX_PAIRS and len(active) > 1:  # a few dense rows ([CLS]): halves, each its path
            h = len(active) // 2
            for part in (slice(0, h), slice(h, None)):
                self._add(active[part], None if other is active else other[part])
            return
        moved = None if pairs is None else tuple(p.to(self.counts.device) for p in pairs)
        keys = active_pairs(active, other, moved)  # [P] by feature: the adds sweep the counts a row at a time
        ones = torch.ones(len(keys), dtype=self.counts.dtype, device=keys.device)
        self.counts.view(-1).index_add_(0, keys, ones)

    def nbytes(self) -> int:
        return self.counts.numel() * self.counts.element_size()


def partners(counts: Tensor, n: int, fires: tuple[Tensor, Tensor] | None = None, block: int = 1024
             ) -> tuple[Tensor, Tensor]:
    """Each feature's n partners of highest Jaccard similarity: counts [k, k2] -> (features [k, n] int64,
    rows both fire [k, n] int64), best first, equal similarity by the smaller index; -1 / 0 where a feature
    has fewer than n partners (never one it does not fire with). ``fires``: (the k features' fire counts,
    the k2 partners'), for the counts of two dictionaries; None: ``counts`` is one dictionary's with itself
    (fires on its diagonal), and a feature is never its own partner. n beyond k2 is read as k2."""
    k, k2 = counts.shape
    n = min(n, k2)  # no more partners than features (analyze.cofire or --partners can be any size)
    fa, fb = (counts.diagonal(), counts.diagonal()) if fires is None else fires
    fa, fb = fa.to(counts.device, torch.float64), fb.to(counts.device, torch.float64)  # [k], [k2]
    out_j = torch.full((k, n), -1, dtype=torch.long)
    out_c = torch.zeros((k, n), dtype=torch.long)
    for s in range(0, k, block):
        c = counts[s : s + block].to(torch.float64)  # [b, k2]
        union = fa[s : s + block, None] + fb[None] - c  # [b, k2]
        jac = torch.where(c > 0, c / union.clamp_min(1.0), torch.zeros_like(c))  # [b, k2]
        if fires is None:
            rows = torch.arange(len(c), device=c.device)
            jac[rows, rows + s] = 0.0  # never itself
        order = jac.argsort(dim=1, descending=True, stable=True)[:, :n]  # [b, n'] ties: smaller index
        keep = jac.gather(1, order) > 0
        out_j[s : s + block, : order.shape[1]] = torch.where(keep, order, -1).cpu()
        out_c[s : s + block, : order.shape[1]] = torch.where(keep, c.gather(1, order), 0).long().cpu()
    return out_j, out_c


def jaccard(counts: Tensor, fires_a: Tensor, fires_b: Tensor, feats: Tensor) -> Tensor:
    """[k, n] Jaccard similarity of each feature with its partners ``feats`` [k, n] (``partners``; -1: 0)."""
    c = counts.to(torch.float64).gather(1, feats.clamp(min=0).to(counts.device))  # [k, n]
    union = fires_a.to(c)[:, None] + fires_b.to(c)[feats.clamp(min=0)] - c
    return torch.where(feats.to(c.device) >= 0, c / union.clamp_min(1.0), torch.zeros_like(c)).cpu()
