"""AUROC of |z| between a class's rows and the other labelled rows, from counts of |z| in fixed bins.

``ModelEval`` keeps, per class and feature, how many of the class's rows have |z| in each bin (``ClassBins``;
no row kept), and its summary gives every listed class feature (``metrics.class_separation``) the AUROC of
|z|, class against the rest: the chance that a random row of the class has a larger |z| than a random other
labelled row, ties counting one half (the Mann-Whitney U over the product of the two groups' sizes). Unlike
Cohen's d it reads no mean or variance: on sparse codes (most rows exactly 0) a feature active on 30 % of a
class's rows and 1 % of the others' can have a small d and an AUROC of ~0.65, and one active on every row of
both with a tight spread a large d whatever the overlap.

Bins of |z| (as float32): bin 0 exact zeros (not counted: a class's rows less those counted in the others);
then one bin for 0 < |z| < 2^-20 (~9.5e-7); then 4 bins an octave from 2^-20 to 2^20 (~1.05e6), bin edges
2^e (1 + j / 4), j = 0..4 (the float32's exponent and two leading mantissa bits: no log taken, the widest bin
a factor 1.25); then one for |z| >= 2^20 (inf and NaN too): ``STORED`` = 162 counted bins. Pairs of rows in
one bin are counted as ties: the AUROC is exact up to ``auroc_err`` = 0.5 * sum over the counted bins of
p_class(b) * p_rest(b) (p: the group's share of rows in the bin), each such pair's true order being unknown;
exact zeros tie exactly and add nothing (a perfect separator, d null, is given 1 exactly by ``ModelEval``:
its two constants can share a bin). The bound is small wherever either group is mostly 0 or spread
over several bins (below 0.01 for every listed demo feature, whose streamed AUROC were within 0.00022 of
the rows' own: docs/results.md). Counts are int32, 648 bytes per class and feature, or int64 (1,296 bytes)
where a class has more labelled rows than an int32 holds (``streaming.count_dtype``: else its count in a
bin would wrap past 2^31 - 1 and give a wrong AUROC); ``analyze.budget.CLASS_AUROC_MAX_MIB`` caps them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from actdict.analyze.streaming import count_dtype  # int32 counts, int64 past 2^31 - 1 rows

E_LO, E_HI, SUB_BITS = -20, 20, 2
"""The fine bins' range, 2^E_LO .. 2^E_HI, and the mantissa bits that split each octave (2: 4 bins)."""
FINE = (E_HI - E_LO) << SUB_BITS
STORED = FINE + 2
"""Bins counted per class and feature: below 2^E_LO (but not 0), the FINE ones, at or above 2^E_HI."""
_BASE = (E_LO + 127) << SUB_BITS  # the float32 key (exponent and SUB_BITS mantissa bits) of 2^E_LO


def bin_index(z: Tensor) -> Tensor:
    """The counted bin (0 .. STORED - 1) of each |z| of z (any float dtype, any shape) as int32: 0 for
    0 < |z| < 2^E_LO (and for 0 itself, which callers leave out), 1 + the fine bin, STORED - 1 at or above
    2^E_HI. From the float32 bits: exponent and leading mantissa bits, a right shift (one temporary)."""
    key = z.to(torch.float32).abs().view(torch.int32)
    return key.bitwise_right_shift_(23 - SUB_BITS).sub_(_BASE - 1).clamp_(0, STORED - 1)


def lower_edges() -> Tensor:
    """[STORED] float64, the lower edge of each counted bin (0 for the one below 2^E_LO)."""
    i = torch.arange(FINE, dtype=torch.float64)
    fine = torch.pow(2.0, E_LO + (i // (1 << SUB_BITS))) * (1 + (i % (1 << SUB_BITS)) / (1 << SUB_BITS))
    return torch.cat([torch.zeros(1, dtype=torch.float64), fine, torch.tensor([2.0 ** E_HI])])


def auroc_from_counts(inn: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
    """inn, out [..., 1 + STORED] rows of the class and of the others in each bin, bin 0 the exact zeros
    (bins in increasing |z|) -> (AUROC [...], its bound [...]) as float64: P(class > other) + P(tie) / 2
    with pairs in one bin as ties, and 0.5 * sum over bins 1.. of p_in * p_out (how far it can be from
    the rows' own AUROC). NaN where either group has no row."""
    p = inn.to(torch.float64) / inn.sum(-1, keepdim=True)
    q = out.to(torch.float64) / out.sum(-1, keepdim=True)
    below = q.cumsum(-1) - q  # [..., nb] share of the others in lower bins
    auc = (p * (below + q / 2)).sum(-1)
    return auc, (p[..., 1:] * q[..., 1:]).sum(-1) / 2


class ClassBins:
    """Per class and feature, counts of the labelled rows' nonzero |z| in the counted bins: counts
    [C, STORED, k] int32 (flat index (class * STORED + bin) * k + feature: a row's codes land in a few runs of
    consecutive features, ~1.6x the speed of feature-major counts), indexed in int32 where they fit;
    ``most_rows``: the largest class's labelled rows (counts int64 past 2^31 - 1: ``count_dtype``)."""

    def __init__(self, n_classes: int, k: int, device: torch.device, most_rows: int = 0):
        self.k = k
        self.counts = torch.zeros(n_classes * STORED * k, dtype=count_dtype(most_rows), device=device)
        self.index = torch.int32 if len(self.counts) < 2 ** 31 else torch.int64
        self._total: Tensor | None = None  # [STORED, k] int64, every class's counts summed (``auroc``)

    def add_entries(self, lab: Tensor, f: Tensor, z: Tensor) -> None:
        """Entries (class lab [m], feature f [m], code z [m]) of nonzero codes; class -1 left out."""
        self._total = None
        keep = lab >= 0
        if not bool(keep.all()):
            lab, f, z = lab[keep], f[keep], z[keep]
        idx = (lab.to(self.index) * STORED + bin_index(z)) * self.k + f.to(self.index)  # [m]
        self.counts.index_add_(0, idx, torch.ones_like(idx, dtype=self.counts.dtype))

    def add_rows(self, codes: Tensor, lab: Tensor) -> None:
        """codes [b, k] of labelled rows of classes lab [b] (>= 0): every nonzero code (zeros add 0)."""
        self._total = None
        idx = bin_index(codes).to(self.index)  # [b, k], in place from here
        idx += (lab.to(self.index) * STORED)[:, None]
        idx *= self.k
        idx += torch.arange(self.k, dtype=self.index, device=codes.device)
        self.counts.index_add_(0, idx.view(-1), (codes != 0).view(-1).to(self.counts.dtype))

    def auroc(self, c: int, features: list[int], n: Tensor) -> tuple[list[float], list[float]]:
        """(AUROC, bound) of |z| for class c against the other labelled rows, per feature of ``features``;
        n [C] each class's labelled rows (those counted). The other classes' counts are every class's
        (summed once, [STORED, k] int64: 1,296 bytes per latent, kept until counts are added again) less
        this one's: summing the C classes' counts for each class in turn took 207 s for 2,000 classes at
        k 400 (5 features each; 1.1 s with the sum kept)."""
        if not features:
            return [], []
        counts = self.counts.view(-1, STORED, self.k)  # [C, STORED, k]
        if self._total is None:  # a class at a time: no int64 copy of all the counts
            self._total = torch.zeros(STORED, self.k, dtype=torch.int64, device=counts.device)
            for one in counts:
                self._total += one  # [STORED, k]
        inn = counts[c][:, features].T.to(torch.int64)  # [m, STORED]
        out = self._total[:, features].T - inn  # [m, STORED]
        n = n.to(torch.int64).to(inn.device)
        n_in, n_out = int(n[c]), int(n.sum()) - int(n[c])
        zero_in = (n_in - inn.sum(-1))[:, None]  # [m, 1] exact zeros
        zero_out = (n_out - out.sum(-1))[:, None]
        auc, err = auroc_from_counts(torch.cat([zero_in, inn], -1), torch.cat([zero_out, out], -1))
        return auc.cpu().tolist(), err.cpu().tolist()
