"""Per-feature statistics gathered in one streaming pass over the test rows, in memory O(features x t).

Every tracker is updated batch by batch with the codes of all k features and never holds more than a
fixed number of entries per feature, whatever the number of rows:

* :class:`TopRows`: the t rows with the largest score per feature (``torch.topk`` merge per batch);
  with score = code it gives the top-activating rows, with score = -code the most negative ones. Equal
  scores go to the smaller row, so batching does not choose among them.
* :class:`Reservoir`: a uniform random sample (without replacement) of R of the rows on which each
  feature is active. Each (row, feature) gets a pseudo-random key that is a hash of (row, feature, seed),
  and the R largest keys are kept (a bottom-k / priority sample). Keys do not depend on batching or on
  the order of the chunks, so the sample is reproducible and equals a brute-force computation. Sorted by
  code value, the sample is split into equal-count groups: samples from each activation quantile.
* :class:`LogHistogram`: exact counts of |code| of active entries in fixed log10-spaced bins (one set
  for positive, one for negative codes; values beyond the range go to the end bins).

Shapes: B = batch rows, k = features, t = kept rows per feature.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

_M32 = 0xFFFFFFFF
SPARSE_SHARE = 0.01
"""Largest share of active (row, feature) pairs in a batch for which ``Reservoir`` sorts the pairs rather than
take a top-k over every feature's column (measured: see ``Reservoir._update_sparse``)."""


def where_true(mask: Tensor) -> tuple[Tensor, Tensor]:
    """[B, k] -> (rows, columns) [m] int64 of its nonzero entries, row-major: ``mask.nonzero(as_tuple=True)``,
    on a CPU by numpy's flat index when at most 1 in 16 entries are set, ~2-4x as fast (a [4096, 16384]
    bool with 32 a row: 92 -> 25 ms; 1 in 100: 105 -> 55 ms; half of them set: 0.7 s against 0.9-1.4 s)."""
    if mask.device.type != "cpu" or mask.ndim != 2 or not mask.numel():
        return mask.nonzero(as_tuple=True)
    m = mask.detach().numpy()
    if np.count_nonzero(m) * 16 > m.size:
        return mask.nonzero(as_tuple=True)
    flat = torch.from_numpy(np.flatnonzero(m))  # [m] int64
    return flat.div(m.shape[1], rounding_mode="floor"), flat % m.shape[1]


def row_counts(mask: Tensor, pairs: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """[B, k] bool -> [B] int64, the set entries of each row: ``mask.sum(1)``, on a CPU by numpy's sum, which
    converts a few thousand bytes at a time (torch's converts the whole mask first, to int64 or to the dtype
    asked: a [4096, 16384] mask, 0.38-0.43 s with the fresh copy's page faults; numpy 0.03 s). ``pairs``:
    ``where_true(mask)`` if the caller has it; on a CPU, where at most 1 in 16 entries is set, the bincount of
    its rows (the same counts without reading the mask: 0.5 against ~35 ms at that size with 32 a row)."""
    if mask.device.type != "cpu" or mask.ndim != 2:
        return mask.sum(1)
    if pairs is not None and len(pairs[0]) * 16 <= mask.numel():
        return torch.bincount(pairs[0], minlength=mask.shape[0])
    return torch.from_numpy(mask.detach().numpy().sum(1, dtype=np.int64))


def count_dtype(most_rows: int) -> torch.dtype:
    """The dtype of counts of at most ``most_rows`` rows each (a class's AUROC bins, co-activation counts):
    int32 while no count can pass 2^31 - 1, else int64."""
    return torch.int32 if most_rows <= 2 ** 31 - 1 else torch.int64


def nonzero_count(x: Tensor) -> int:
    """``int(torch.count_nonzero(x))`` (-0.0 is zero, NaN is not), on a CPU float tensor by numpy's, which
    does not slow down where zeros and nonzeros mix: a [4096, 4096] float32 of half zeros (a fresh L1 SAE's
    codes) 83 -> 9 ms; a TopK SAE's [4096, 16384] with 32 a row set, 34 ms either way (the read itself)."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64, torch.float16):
        return int(np.count_nonzero(x.detach().numpy()))
    return int(torch.count_nonzero(x))


def column_topk(score: Tensor, t: int) -> tuple[Tensor, Tensor]:
    """``score.topk(t, dim=0)`` ([B, k] -> values, indices [t, k]) by a top-k along the rows of its transposed
    copy: on a CPU ~2x as fast, the copy included (a [4096, 4096] float32 batch: 166 ms -> 75 ms; int64
    228 -> 105), since the top-k then reads contiguous memory; no copy at all for a score that is the
    transposed view of a [k, B] tensor (``FeatureTracker``, ``Reservoir``). Ties in any order, as topk's."""
    top = score.T.contiguous().topk(t, dim=1)  # [k, t]
    return top.values.T, top.indices.T


def top_first(score: Tensor, t: int, floor: float | None = None) -> Tensor:
    """[B, k] -> [min(t, B), k] row indices of the t largest scores of each column, ties going to the first
    rows: the same set whatever other rows share the threshold's value (``torch.topk`` picks any of them).
    Ties at or below ``floor`` (scores never reported) are left to ``torch.topk``."""
    if score.shape[0] <= t:
        return torch.arange(score.shape[0], device=score.device)[:, None].expand_as(score)
    values, indices = column_topk(score, t + 1)  # one more: is the t-th score tied with a row left out?
    thr = values[t - 1]  # [k] the t-th largest score
    cut = (values[t] == thr) & ~values.isnan().any(0)  # [k] ties at thr run past the kept t
    if floor is not None:
        cut &= thr > floor
    idx = indices[:t]
    if not bool(cut.any()):
        return idx
    cols = cut.nonzero()[:, 0]  # [c]
    first = torch.arange(score.shape[0], 0, -1, dtype=torch.int32, device=score.device)[:, None]  # [B, 1]
    tied = ((score.index_select(1, cols) == thr[cols]) * first).topk(t, dim=0).indices  # [t, c] first ties
    above = (values[:t, cols] > thr[cols]).sum(0)  # [c] kept rows above the threshold: topk's first
    at = torch.arange(t, device=score.device)[:, None]  # [t, 1]
    idx = idx.clone()  # the rows above the threshold, then the first tied rows
    idx[:, cols] = torch.where(at < above, idx[:, cols], tied.gather(0, (at - above).clamp(min=0)))
    return idx


def best_first(score: Tensor, rows: Tensor, t: int, floor: float | None = None) -> Tensor:
    """[n, k] scores and their rows -> [min(t, n), k] indices of each column's t largest scores, largest
    first, equal scores by the smaller row (those at or below ``floor`` in any order). Only columns with
    such ties (or a NaN) are sorted by (score, row): ``torch.topk`` orders the others, ~10x faster."""
    top = score.topk(min(t + 1, len(score)), dim=0)  # one more: a tie at the t-th score
    v = top.values
    tie = (v[1:] == v[:-1]) if floor is None else (v[1:] == v[:-1]) & (v[1:] > floor)
    tie = tie.any(0) | v.isnan().any(0)  # [k]
    idx = top.indices[:t]
    if not bool(tie.any()):
        return idx
    cols = tie.nonzero()[:, 0]  # [c]
    by_row = rows[:, cols].argsort(dim=0, stable=True)  # [n, c]
    by_score = score[:, cols].gather(0, by_row).argsort(dim=0, descending=True, stable=True)
    idx = idx.clone()
    idx[:, cols] = by_row.gather(0, by_score)[:t]
    return idx


def best_pairs(f: Tensor, score: Tensor, rows: Tensor, t: int, k: int) -> tuple[Tensor, Tensor]:
    """Pairs of features f [m] (of k), scores and rows [m] -> (at [m'] the pairs among each feature's t
    largest scores, equal scores by the smaller row; rank [m'] each one's place in its feature's list, 0 the
    best), by stable sorts of the m pairs: by row (none when they are in row order already: row-major pairs
    of a batch of increasing rows), by score, by feature. Scores without NaN."""
    ordered = len(rows) < 2 or bool((rows[1:] >= rows[:-1]).all())
    at = torch.arange(len(rows), device=rows.device) if ordered else rows.argsort(stable=True)  # [m]
    at = at[score[at].argsort(descending=True, stable=True)]
    at = at[f[at].argsort(stable=True)]  # [m] by (feature, -score, row)
    fs = f[at]
    n = torch.bincount(fs, minlength=k)  # [k] pairs of each feature
    rank = torch.arange(len(at), device=f.device) - (torch.cumsum(n, 0) - n)[fs]  # [m] its place in f
    keep = rank < t
    return at[keep], rank[keep]


class TopRows:
    """Running top-``t`` (score, global row, value) per feature column; equal scores above ``floor`` go to
    the smaller row (those at or below it, which the caller never reports, to any)."""

    def __init__(self, n_features: int, t: int, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", floor: float | None = None) -> None:
        if t < 1:
            raise ValueError(f"t must be >= 1, got {t}")
        self.t, self.floor = t, floor
        self.score = torch.empty((0, n_features), dtype=dtype, device=device)  # [<=t, k]
        self.rows = torch.empty((0, n_features), dtype=torch.long, device=device)  # [<=t, k]
        self.value = torch.empty((0, n_features), dtype=torch.float32, device=device)  # [<=t, k]

    def update(self, score: Tensor, rows: Tensor, value: Tensor | None = None) -> None:
        """score [B, k], rows [B] global row indices, value [B, k] (default: the score)."""
        k = self.score.shape[1]
        if score.ndim != 2 or score.shape[1] != k or rows.shape != score.shape[:1]:
            raise ValueError(f"score {tuple(score.shape)} / rows {tuple(rows.shape)} do not match "
                             f"{k} features")
        value = score if value is None else value
        score, rows = score.detach().to(self.score.dtype), rows.to(self.rows)
        if len(rows) > 1 and not bool((rows[1:] > rows[:-1]).all()):  # ties go to the smaller row
            order = rows.argsort()
            score, rows, value = score[order], rows[order], value[order]
        top = top_first(score, self.t, self.floor)  # [<=t, k]
        self.merge(score.gather(0, top), rows[top], value.detach().gather(0, top))

    def update_pairs(self, b: Tensor, f: Tensor, rows: Tensor, score: Tensor, value: Tensor) -> None:
        """``update`` of a batch whose scores are at or below ``floor`` (never reported) but at the pairs b, f
        [m] (row in the batch, feature), scores and values score, value [m]; rows [B] the batch's global rows.
        Each feature's t best pairs, equal scores by the smaller row, found by sorting the m pairs
        (``best_pairs``), not by a top-k over a [k, B] score: the same held entries above ``floor``; a
        feature with fewer than t pairs leaves score ``floor``, row 0, value 0 in the slots it does not fill
        (the dense path: any rows at or below ``floor`` there), which no reader reports."""
        if self.floor is None:
            raise ValueError("update_pairs needs a floor: the score of the entries it is not given")
        k, t, dev = self.score.shape[1], min(self.t, len(rows)), self.score.device
        held_rows = rows.to(dev)[b]  # [m]
        at, rank = best_pairs(f, score, held_rows, t, k)  # [m'] each
        fs = f[at]
        out_s = torch.full((t, k), self.floor, dtype=self.score.dtype, device=dev)  # [t, k]
        out_r = torch.zeros((t, k), dtype=torch.long, device=dev)
        out_v = torch.zeros((t, k), dtype=torch.float32, device=dev)
        out_s[rank, fs] = score[at].to(out_s)
        out_r[rank, fs] = held_rows[at]
        out_v[rank, fs] = value[at].detach().to(out_v)
        self.merge(out_s, out_r, out_v)

    def merge(self, score: Tensor, rows: Tensor, value: Tensor) -> None:
        """Keeps the best t of the held entries and a batch's own best ([<=t, k] each: its t largest scores
        per feature, equal ones above ``floor`` by the smaller row, as ``top_first`` gives them)."""
        s = torch.cat([self.score, score.to(self.score)])  # [<=2t, k]
        r = torch.cat([self.rows, rows.to(self.rows)])
        v = torch.cat([self.value, value.to(self.value)])
        best = best_first(s, r, self.t, self.floor)
        self.score, self.rows, self.value = s.gather(0, best), r.gather(0, best), v.gather(0, best)

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(score [k, t'], rows [k, t'], value [k, t']) on CPU, best first."""
        return self.score.T.cpu().numpy(), self.rows.T.cpu().numpy(), self.value.T.cpu().numpy()

    def nbytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in (self.score, self.rows, self.value))


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash (xor-shift-multiply) of int64 values in [0, 2^32); stays below 2^63."""
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    return (x >> 16) ^ x


def pair_keys(rows: Tensor, feats: Tensor, seed: int) -> Tensor:
    """Keys in [0, 2^62) of (row, feature) pairs: rows, feats int64 of one (broadcastable) shape; a fixed
    pseudo-random function of (row, feature, seed)."""
    r, f = rows.to(torch.long), feats.to(torch.long)
    a = _mix32((r & _M32) ^ (int(seed) & _M32))
    if high := (int(seed) >> 32) & _M32:  # seeds past 32 bits (those below keep the keys they always had)
        a = _mix32(a ^ high ^ 0x27D4EB2F)
    a = _mix32(a ^ ((r >> 32) & _M32) ^ 0x9E3779B9)
    h1 = _mix32(a ^ f)
    h2 = _mix32(h1 ^ 0x85EBCA6B)
    return (h1 << 30) | (h2 >> 2)


def sample_keys(rows: Tensor, k: int, seed: int) -> Tensor:
    """[B] global rows -> [B, k] keys of every (row, feature) pair (see :func:`pair_keys`)."""
    return pair_keys(rows[:, None], torch.arange(k, device=rows.device)[None], seed)


class Reservoir:
    """Uniform sample of ``size`` active rows per feature (largest hash keys among the active entries)."""

    def __init__(self, n_features: int, size: int, seed: int, device: str | torch.device = "cpu") -> None:
        self.k, self.seed = n_features, seed
        self.top = TopRows(n_features, size, torch.long, device, floor=-1)  # -1: not active

    def update(self, codes: Tensor, active: Tensor, rows: Tensor, pairs: tuple[Tensor, Tensor] | None = None
               ) -> None:
        """codes [B, k], active [B, k] bool, rows [B]; pairs: ``where_true(active)`` if the caller has it."""
        dev = self.top.rows.device
        b, f = where_true(active.to(dev)) if pairs is None else (pairs[0].to(dev), pairs[1].to(dev))
        if len(b) <= SPARSE_SHARE * active.numel():  # hash only the active pairs
            self._update_sparse(codes, b, f, rows.to(dev))
            return
        score = torch.full(active.shape[::-1], -1, dtype=torch.long, device=dev)  # [k, B] (column_topk's)
        score[f, b] = pair_keys(rows.to(dev)[b], f, self.seed)
        self.top.update(score.T, rows, codes)

    def _update_sparse(self, codes: Tensor, b: Tensor, f: Tensor, rows: Tensor) -> None:
        """``update`` from the active pairs alone (b, f [m]: row-major): each feature's ``size`` largest keys,
        equal keys by the smaller row, found by sorting the m pairs (``TopRows.update_pairs``), not by a top-k
        over a [k, B] score of -1 wherever a feature is inactive (~1 s at B 4,096, k 16,384). Same held rows
        and values; a feature active on fewer rows than the sample leaves row 0, value 0 in the slots it does
        not fill (the dense path: any rows' there), which ``result`` shows as row -1 either way."""
        key = pair_keys(rows[b], f, self.seed)  # [m]
        self.top.update_pairs(b, f, rows, key, codes[b, f])

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows [k, t'], values [k, t']); unfilled entries (feature active on < size rows) have row -1."""
        score, rows, value = self.top.result()
        rows = np.where(score >= 0, rows, -1)
        return rows, value

    def nbytes(self) -> int:
        return self.top.nbytes()


class LogHistogram:
    """Exact per-feature counts of log10|code| of active entries, positive and negative codes apart."""

    def __init__(self, n_features: int, lo: float = -4.0, hi: float = 4.0, per_decade: int = 8,
                 device: str | torch.device = "cpu") -> None:
        self.lo, self.hi, self.bins = lo, hi, int(round((hi - lo) * per_decade))
        self.counts = torch.zeros((n_features, 2, self.bins), dtype=torch.long, device=device)  # [k, +/-, nb]

    @property
    def edges(self) -> np.ndarray:
        """[nb + 1] log10 bin edges (the first and last bin also hold the values beyond them)."""
        return np.linspace(self.lo, self.hi, self.bins + 1)

    def bin_of(self, v: Tensor) -> Tensor:
        """log10|v| -> bin index in 0..nb-1 (zeros and tiny values: bin 0)."""
        w = (self.hi - self.lo) / self.bins
        return ((v.abs().log10() - self.lo) / w).floor().nan_to_num(0.0).clamp(0, self.bins - 1).long()

    def update(self, codes: Tensor, active: Tensor, pairs: tuple[Tensor, Tensor] | None = None) -> None:
        """codes [B, k], active [B, k] bool; pairs: ``where_true(active)`` if the caller has it."""
        b, f = where_true(active) if pairs is None else pairs  # [m] each
        v = codes[b, f].to(torch.float64)
        flat = (f * 2 + (v < 0).long()) * self.bins + self.bin_of(v)  # [m]
        self.counts.view(-1).index_add_(0, flat.to(self.counts.device), torch.ones_like(flat).to(self.counts))

    def nbytes(self) -> int:
        return self.counts.numel() * self.counts.element_size()
