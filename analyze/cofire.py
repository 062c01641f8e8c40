"""Which features fire together: exact co-activation counts of every pair of features over the test rows.

:class:`CoFire` keeps C [k, k] int32, C[i, j] = the rows on which features i and j are both active (the
analysis' active split, as for AD and density), so C[i, i] is feature i's fire count. Memory k^2 x 4 bytes
(64 MiB at k 4,096, 1 GiB at 16,384): ``analyze.cofire_max_k`` bounds it. Each batch adds its active
pattern's pair counts, by whichever of two exact paths is cheaper:

* dense: A^T A of the [B, k] 0/1 matrix (float32 matmul, exact below 2^24 rows per batch): B k^2 work,
  fast for small k and on a GPU;
* pairs: every (i, j) pair of each row's active features, counted with one sort (``torch.unique``): sum over
  rows of AD^2 work, the cheaper path for a large k with few active features per row (a TopK SAE of 16,384
  with AD 32: ~40x less work than the matmul on a CPU).

:func:`partners` ranks each feature's partners by Jaccard similarity C_ij / (C_ii + C_jj - C_ij) (rows where
both fire over rows where either fires), which neither rewards a partner for being dense (as P(j | i) does)
nor for being rare (as P(i | j) does).

Shapes: B = batch rows, k = features, n = partners kept per feature.
"""

from __future__ import annotations

import torch
from torch import Tensor

DENSE_RATIO = 20.0  # the pairs path when k > 20 x the rows' RMS active count (CPU; measured: see docs)


def active_pairs(active: Tensor) -> Tensor:
    """[B, k] bool -> [P] int64 flat pair keys i * k + j of every ordered pair (i, j) of features both
    active on one row (i == j included), P = sum over rows of AD^2."""
    b, j = active.nonzero(as_tuple=True)  # [m] row-major: each row's features contiguous
    c = active.sum(1)  # [B] active per row
    rep = c[b]  # [m] partners of each entry (its row's count)
    first = torch.cumsum(c, 0) - c  # [B] where each row's entries start in j
    e = torch.repeat_interleave(torch.arange(len(j), device=j.device), rep)  # [P] the entry of each pair
    nth = torch.arange(len(e), device=j.device) - torch.repeat_interleave(torch.cumsum(rep, 0) - rep, rep)
    partner = j[first[b[e]] + nth]  # [P] the nth feature of the entry's row
    return j[e] * active.shape[1] + partner


class CoFire:
    """Running co-activation counts C [k, k] of all feature pairs."""

    def __init__(self, k: int, device: str | torch.device = "cpu") -> None:
        self.k = k
        self.counts = torch.zeros((k, k), dtype=torch.int32, device=device)  # [k, k]

    def update(self, active: Tensor) -> None:
        """active [B, k] bool: the features active on each row."""
        active = active.to(self.counts.device)
        c = active.sum(1, dtype=torch.float64)  # [B]
        rms = float((c * c).mean()) ** 0.5 if len(c) else 0.0
        if self.counts.is_cuda or self.k <= DENSE_RATIO * rms:
            for s in range(0, len(active), 1 << 23):  # float32 counts exact below 2^24 rows
                a = active[s : s + (1 << 23)].to(torch.float32)  # [B', k]
                self.counts += (a.T @ a).to(torch.int32)
            return
        keys, n = torch.unique(active_pairs(active), return_counts=True)  # [u] sorted: few cache misses
        self.counts.view(-1).index_add_(0, keys, n.to(torch.int32))

    def nbytes(self) -> int:
        return self.counts.numel() * self.counts.element_size()


def partners(counts: Tensor, n: int, block: int = 1024) -> tuple[Tensor, Tensor]:
    """Each feature's n partners of highest Jaccard similarity: counts [k, k] -> (features [k, n] int64,
    rows both fire [k, n] int64), best first, equal similarity by the smaller index; -1 / 0 where a
    feature has fewer than n partners (never itself, never one it does not fire with)."""
    k = counts.shape[0]
    fires = counts.diagonal().to(torch.float64)  # [k]
    out_j = torch.full((k, n), -1, dtype=torch.long)
    out_c = torch.zeros((k, n), dtype=torch.long)
    for s in range(0, k, block):
        c = counts[s : s + block].to(torch.float64)  # [b, k]
        union = fires[s : s + block, None] + fires[None] - c  # [b, k]
        jac = torch.where(c > 0, c / union.clamp_min(1.0), torch.zeros_like(c))  # [b, k]
        rows = torch.arange(len(c), device=c.device)
        jac[rows, rows + s] = 0.0  # never itself
        order = jac.argsort(dim=1, descending=True, stable=True)[:, :n]  # [b, n'] ties: smaller index
        keep = jac.gather(1, order) > 0
        out_j[s : s + block, : order.shape[1]] = torch.where(keep, order, -1).cpu()
        out_c[s : s + block, : order.shape[1]] = torch.where(keep, c.gather(1, order), 0).long().cpu()
    return out_j, out_c
