"""Sparse encoder gradient and sparse decode of the TopK-family SAEs (``sae_topk``, ``sae_topk_auxk``,
``sae_batchtopk``), so that training does no dense [B, k] x [k, d] work past the encoder's forward matmul.

A TopK code has N = B * topk nonzeros of B * k entries (topk = 32 of k = 4096..16384). The dense path scatters
them into z [B, k] and runs ``z @ W_dec`` (2 B k d FLOPs) and its backward (grad W_dec = z^T g and grad z =
g W_dec^T, 4 B k d), and the encoder's backward grad W_enc = x^T grad_pre (2 B k d, with grad_pre zero off
the kept entries; the tied variants also pay grad x = grad_pre W_enc^T for b_pre, 2 B k d). Here:

* :class:`Pattern`: the kept entries, row-major (``rows``, ``cols`` [N], embedding_bag offsets per row), and
  the same entries grouped by column (``by_col``, ``col_start``) for the column-wise gradient sums. Rows may
  hold different numbers of entries (BatchTopK); a row may be empty.
* :func:`gather_linear`: vals[n] = pre[rows[n], cols[n]] for pre = (x - c) @ W^T + b, with ``pre`` computed
  densely (no grad) by the caller, who needs all of it for the top-k selection. Backward (g [N]):
  grad W[j] = sum_{n: cols[n] = j} g[n] (x - c)[rows[n]] and grad b[j] = sum_{n: cols[n] = j} g[n] (one
  ``embedding_bag`` over the column-grouped entries with the rows of [x - c, 1] as the table: B topk d
  FLOPs), grad c = -grad_b @ W (no [B, d] product), grad x = per row sum_n g[n] W[cols[n]] (only if x
  needs it).
* :func:`sparse_decode`: x_hat = sum_n vals[n] W[cols[n]] per row (``embedding_bag``, mode "sum",
  ``per_sample_weights``). Backward (g [B, d]): grad vals[n] = <g[rows[n]], W[cols[n]]> (a sampled dense
  product, ``torch.sparse.sampled_addmm`` on the CSR pattern) and grad W[j] = sum_{n: cols[n] = j} vals[n]
  g[rows[n]] (``embedding_bag`` over the column-grouped entries, table g).

Measured on 2 CPU cores, d = 512, B = 4096, topk = 32 (ms, best of 3): decode forward embedding_bag 14 / 17
(k = 4096 / 16384); grad W_dec (and likewise grad W_enc) by the column-grouped embedding_bag 15 / 24 vs
dense z^T g 188 / 638 and vs index_add_ of the materialised [N, d] products 377; grad vals sampled_addmm
10 / 35 vs gathered W[idx] + bmm 170 / 199; torch's own embedding_bag backward 230 / 260 (hence the custom
backward). Column grouping (stable argsort of N indices) ~3 ms. Sums run in a different order than the
dense matmuls: results agree to float rounding (``tests/test_sparse_topk.py``). Deterministic on CPU. On an
H200 (2026-12-04) the contract tests pass on CUDA and each op chosen here is also the fastest of the
alternatives above (``benchmarks/sparse_ops.py``; docs/training.md, "On a GPU").
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function

from actdict.train.protocol import Forward

# The L1-penalised SAEs (sae_l1, sae_l1_decnorm, sae_log) take the sparse step when at most this fraction of a
# batch's codes is nonzero, per device type; a type not listed never does (the count is read back: a sync on
# CUDA, where the crossover is not measured). 2 CPU cores, d 512, B 4096, forward + backward: 3.2x the dense
# step at 1% density, 1.9x at 5%; break-even at ~12% (k 4096) and ~8% (k 16384).
SPARSE_BELOW = {"cpu": 0.05}


def _counts(x: Tensor, n: int) -> Tensor:
    """[n] occurrences of each of 0..n-1 in x [N] (long): ``torch.bincount(x, minlength=n)`` without its
    device sync (CUDA's bincount reads max(x) back to size its output: ~0.2 ms of CPU stall per call)."""
    return torch.zeros(n, dtype=torch.long, device=x.device).index_add_(0, x, torch.ones_like(x))


_SAME_SIZE_INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def count_nonzero_bits(z: Tensor) -> int:
    """Entries of z whose bits are not all zero (= nonzero entries, but -0.0 counts), read back to the host.
    On a same-size integer view: on the CPU ~20x faster than ``torch.count_nonzero`` of a float tensor with
    half its entries zero (1.9 vs 37 ms for a [4096, 4096] float32 z; bf16: 1.8 vs 48 ms)."""
    return int(torch.count_nonzero(z.view(_SAME_SIZE_INT[z.element_size()])))


@dataclass
class Pattern:
    """The N kept entries of a [B, k] code, sorted by row (then column)."""

    B: int
    k: int
    rows: Tensor  # [N] long
    cols: Tensor  # [N] long
    crow: Tensor  # [B + 1] CSR row pointers; row b holds entries crow[b]:crow[b + 1]
    by_col: Tensor  # [N] permutation grouping the entries by column (stable: row order kept within a column)
    col_start: Tensor  # [k] first position of each column's group in by_col order

    @classmethod
    def from_counts(cls, rows: Tensor, cols: Tensor, B: int, k: int, crow: Tensor | None = None) -> Pattern:
        """``rows`` sorted; ``cols`` sorted within each row; ``crow`` if the caller knows it."""
        if crow is None:
            crow = torch.zeros(B + 1, dtype=torch.long, device=rows.device)
            crow[1:] = _counts(rows, B).cumsum(0)
        by_col = torch.argsort(cols, stable=True)
        col_start = torch.zeros(k, dtype=torch.long, device=rows.device)
        col_start[1:] = _counts(cols, k).cumsum(0)[:-1]
        return cls(B, k, rows, cols, crow, by_col, col_start)

    @classmethod
    def from_topk(cls, idx: Tensor, k: int) -> Pattern:  # idx: [B, m] column indices per row
        B, m = idx.shape
        cols = idx.sort(-1).values.reshape(-1)
        rows = torch.arange(B, device=idx.device)[:, None].expand(B, m).reshape(-1)  # [B m] (no sync)
        crow = torch.arange(0, B * m + 1, m, device=idx.device)  # [B + 1]: m entries in every row
        return cls.from_counts(rows, cols, B, k, crow)

    @classmethod
    def from_flat(cls, pos: Tensor, B: int, k: int) -> Pattern:  # pos: [N] indices into the flattened [B, k]
        pos = pos.sort().values
        return cls.from_counts(pos // k, pos % k, B, k)

    @classmethod
    def if_sparse(cls, z: Tensor, below: dict[str, float]) -> Pattern | None:
        """The nonzero entries of z [B, k] if at most the fraction ``below[z.device.type]`` (absent: 0, off)
        of them is nonzero, else None. The count is read back to the host (a sync on CUDA), so a device
        type not in ``below`` is not counted at all."""
        frac = below.get(z.device.type, 0.0)
        if frac <= 0 or count_nonzero_bits(z) > frac * z.numel():
            return None
        return cls.from_flat(z.reshape(-1).nonzero().squeeze(1), *z.shape)

    @property
    def row_start(self) -> Tensor:  # [B] embedding_bag offsets of the row bags
        return self.crow[:-1]

    def row_sums(self, w: Tensor) -> Tensor:  # [N] -> [B] float32: sum of each row's entries (differentiable)
        return w.new_zeros(self.B, dtype=torch.float32).index_add(0, self.rows, w.float())

    def take(self, dense: Tensor) -> Tensor:  # [B, k] -> [N]
        return dense.reshape(-1)[self.rows * self.k + self.cols]

    def dense(self, vals: Tensor) -> Tensor:  # [N] -> [B, k] with zeros off the pattern (no grad)
        with torch.no_grad():
            out = torch.zeros(self.B, self.k, dtype=vals.dtype, device=vals.device)
            return out.index_put_((self.rows, self.cols), vals.detach())

    def log_abs(self, vals: Tensor) -> Tensor:  # [N] -> [B, k]: log|dense(vals)| (-inf off the pattern)
        with torch.no_grad():
            out = torch.full((self.B, self.k), -torch.inf, dtype=vals.dtype, device=vals.device)
            return out.index_put_((self.rows, self.cols), vals.detach().abs().log())

    def by_column(self, table: Tensor, weights: Tensor) -> Tensor:
        """[B, w] table, [N] weights -> [k, w]: out[j] = sum_{n: cols[n] = j} weights[n] table[rows[n]]."""
        return F.embedding_bag(self.rows[self.by_col], table, self.col_start, mode="sum",
                               per_sample_weights=weights[self.by_col])

    def by_row(self, table: Tensor, weights: Tensor) -> Tensor:
        """[k, w] table, [N] weights -> [B, w]: out[b] = sum_{n: rows[n] = b} weights[n] table[cols[n]]."""
        return F.embedding_bag(self.cols, table, self.row_start, mode="sum", per_sample_weights=weights)

    def sampled_dot(self, a: Tensor, w: Tensor) -> Tensor:
        """a [B, d], w [k, d] -> [N]: <a[rows[n]], w[cols[n]]>."""
        with warnings.catch_warnings():  # "sparse CSR support is in beta" (once per process)
            warnings.simplefilter("ignore", UserWarning)
            csr = torch.sparse_csr_tensor(self.crow, self.cols, a.new_zeros(len(self.cols)), (self.B, self.k))
        return torch.sparse.sampled_addmm(csr, a, w.T, beta=0.0).values()


class _GatherLinear(Function):
    @staticmethod
    def forward(ctx, x: Tensor, c: Tensor | None, W: Tensor, b: Tensor | None, pre: Tensor,  # noqa: D102
                pat: Pattern) -> Tensor:
        ctx.save_for_backward(x, c, W)
        ctx.pat, ctx.has_b = pat, b is not None
        return pat.take(pre)

    @staticmethod
    def backward(ctx, g: Tensor):  # noqa: D102  g: [N]
        x, c, W = ctx.saved_tensors
        pat = ctx.pat
        g = g.to(W.dtype)
        gx = gc = gW = gb = None
        if ctx.needs_input_grad[0]:
            gx = pat.by_row(W.contiguous(), g).to(x.dtype)  # [B, d]
        if any(ctx.needs_input_grad[1:4]):
            xin = (x - c if c is not None else x).to(W.dtype)  # [B, d]
            table = torch.cat([xin, xin.new_ones(len(xin), 1)], 1)  # [B, d + 1]: the 1 gives grad b
            both = pat.by_column(table, g)  # [k, d + 1]
            gW, gb_all = both[:, :-1], both[:, -1]
            gb = gb_all if ctx.has_b else None
            if c is not None and ctx.needs_input_grad[1]:
                gc = -(gb_all @ W).to(c.dtype)  # [d]: sum over rows of -grad x
        return gx, gc, gW, gb, None, None


def gather_linear(x: Tensor, c: Tensor | None, W: Tensor, b: Tensor | None, pre: Tensor,
                  pat: Pattern) -> Tensor:
    """[N] entries of pre = (x - c) @ W^T + b at ``pat``, differentiable in x, c, W, b with sparse backward.

    x [B, d]; c [d] or None; W [k, d] (row j = latent j's encoder weights; pass ``W_enc.T`` for a [d, k]
    W_enc); b [k] or None; ``pre`` [B, k] that product, computed by the caller without grad."""
    return _GatherLinear.apply(x, c, W, b, pre.detach(), pat)


class _SparseDecode(Function):
    @staticmethod
    def forward(ctx, vals: Tensor, W: Tensor, pat: Pattern) -> Tensor:  # noqa: D102
        vals, W = vals.to(W.dtype), W.contiguous()  # [k, d] rows: copied once, reused by the backward
        ctx.save_for_backward(vals, W)
        ctx.pat, ctx.vals_dtype = pat, vals.dtype
        return pat.by_row(W, vals)  # [B, d]

    @staticmethod
    def backward(ctx, g: Tensor):  # noqa: D102  g: [B, d]
        vals, W = ctx.saved_tensors
        pat = ctx.pat
        g = g.contiguous().to(W.dtype)
        gv = pat.sampled_dot(g, W) if ctx.needs_input_grad[0] else None  # [N]
        gW = pat.by_column(g, vals) if ctx.needs_input_grad[1] else None  # [k, d]
        return gv, gW, None


def sparse_forward(vals: Tensor, W: Tensor, b: Tensor, pat: Pattern, extras: dict[str, Tensor]) -> Forward:
    """Forward of a code with only the entries ``pat`` (values vals [N]): x_hat = sparse_decode + b [B, d]
    (W [k, d] as in ``sparse_decode``, b [d]); the dense codes and their activity are built only if
    analysis reads them (no graph kept)."""
    x_hat = sparse_decode(vals, W, pat) + b  # [B, d]
    kept = vals.detach()
    return Forward(x_hat=x_hat, codes=lambda: pat.dense(kept), activity=lambda: pat.log_abs(kept),
                   extras=extras)


def sparse_decode(vals: Tensor, W: Tensor, pat: Pattern) -> Tensor:
    """[B, d] = dense(vals) @ W without the dense code: vals [N] at ``pat``, W [k, d] (row j = latent j's
    decoder direction; pass ``decoder.weight.T`` for an ``nn.Linear(k, d)``). No bias."""
    return _SparseDecode.apply(vals, W, pat)
