"""SAE-l1 (paper eq. 1 with h(z) = sum_j |z_j|; Cunningham et al. 2024).

params: ``lam1`` (default 0.32), ``lam2`` (default 0.2): the paper's LLM-activation values (App. D.3, read as
3.2e-1 and 2e-1; the extracted text lost the exponent signs). Other data need other values (App. D.2/D.3).
Training (gradients on) with the linear encoder and decoder computes the codes z = relu(x W_e^T + b_e)
[B, k] once, without gradient, and counts their nonzeros:
* at most ``sparse_below`` of them (5% on the CPU): the sparse step of the TopK family (``_sparse``): only
  the N nonzero codes are differentiated (``gather_linear``: relu is the identity there, and a zero code
  gets no gradient through relu either way) and decoded (``sparse_decode``), and ||z||_1 is their row sum.
  A trained L1 dictionary lives here (tens of codes of thousands per row). On 2 CPU cores (d 512, B 4096,
  forward + backward) 3.2x faster than the dense step at 1% density, 1.9x at 5%; break-even at ~12%
  (k 4096) and ~8% (k 16384). Off on CUDA (the count is a sync; the crossover there is not measured).
* otherwise the fused dense step of ``_fused_l1`` (fewer passes over [B, k] than autograd).
Both give the same loss and gradients to float rounding (tests/test_fused_l1.py). Deep encoders / MLP
decoders and no-grad forwards (analysis) take the plain path. Everything else: see ``_sae``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from actdict.train.protocol import Forward, register
from actdict.train.variants._fused_l1 import relu_codes, relu_l1_sae
from actdict.train.variants._sae import SAEBase
from actdict.train.variants._sparse import Pattern, gather_linear, sparse_decode


@register
class SAEL1(SAEBase):
    variant = "sae_l1"
    default_params = {"lam1": 0.32, "lam2": 0.2}
    # the sparse step runs when at most this fraction of the [B, k] codes is nonzero, per device type; a
    # type not listed never does (the count is read back: a sync on CUDA, where the crossover is not measured)
    sparse_below = {"cpu": 0.05}

    def penalty(self, z: Tensor) -> Tensor:  # z: [B, k] -> [B]
        return z.abs().sum(-1)

    def forward(self, x: Tensor, sample: bool = True) -> Forward:  # x: [B, d]
        enc, dec = self.encoder, self.decoder
        if not (torch.is_grad_enabled() and type(enc) is nn.Linear and type(dec) is nn.Linear):
            return super().forward(x, sample)
        z = relu_codes(x, enc.weight, enc.bias)  # [B, k], no grad
        pat = Pattern.if_sparse(z, self.sparse_below)  # the N nonzero codes, if few
        if pat is not None:
            return self._sparse_forward(x, z, pat)
        x_hat, h, z = relu_l1_sae(x, enc.weight, enc.bias, dec.weight, dec.bias, z)  # [B, d], [B], [B, k]
        return Forward(x_hat=x_hat, codes=lambda: z, activity=lambda: z.abs().log(), extras={"h": h})

    def _sparse_forward(self, x: Tensor, z: Tensor, pat: Pattern) -> Forward:  # x [B, d], z [B, k] no grad
        enc, dec = self.encoder, self.decoder
        vals = gather_linear(x, None, enc.weight, enc.bias, z, pat)  # [N] > 0: relu is the identity there
        x_hat = sparse_decode(vals, dec.weight.T, pat) + dec.bias  # [B, d]
        h = vals.new_zeros(len(x), dtype=torch.float32).index_add(0, pat.rows, vals.float())  # [B] ||z||_1
        kept = vals.detach()
        return Forward(x_hat=x_hat, codes=lambda: pat.dense(kept), activity=lambda: pat.log_abs(kept),
                       extras={"h": h})
