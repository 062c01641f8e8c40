"""SAE-l1 (paper eq. 1 with h(z) = sum_j |z_j|; Cunningham et al. 2024).

params: ``lam1`` (default 0.32), ``lam2`` (default 0.2): the paper's LLM-activation values (App. D.3, read as
3.2e-1 and 2e-1; the extracted text lost the exponent signs). Other data need other values (App. D.2/D.3).
Training (gradients on) with the linear encoder and decoder computes the codes z = relu(x W_e^T + b_e)
[B, k] once, without gradient, and counts their nonzeros:
* at most ``sparse_below`` of them (``_sparse.SPARSE_BELOW``: 5% on the CPU, off on CUDA; the measured
  crossover is noted there): the sparse step of the TopK family (``_sparse``): only the N nonzero codes are
  differentiated (``gather_linear``: relu is the identity there, and a zero code gets no gradient through
  relu either way) and decoded (``sparse_decode``), and ||z||_1 is their row sum. A trained L1 dictionary
  lives here (tens of codes of thousands per row).
* otherwise the fused dense step of ``_fused_l1`` (fewer passes over [B, k] than autograd).
Both give the same loss and gradients to float rounding (tests/test_fused_l1.py). Deep encoders / MLP
decoders and no-grad forwards (analysis) take the plain path. Everything else: see ``_sae``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from actdict.train.protocol import Forward, register, wants_input_grad
from actdict.train.variants._fused_l1 import relu_codes, relu_l1_sae
from actdict.train.variants._sae import SAEBase
from actdict.train.variants._sparse import SPARSE_BELOW, Pattern


@register
class SAEL1(SAEBase):
    variant = "sae_l1"
    default_params = {"lam1": 0.32, "lam2": 0.2}
    sparse_below = SPARSE_BELOW  # the sparse step at most this fraction of nonzero codes, per device type

    def penalty(self, z: Tensor) -> Tensor:  # z: [B, k] -> [B]
        return z.abs().sum(-1)

    def forward(self, x: Tensor, sample: bool = True) -> Forward:  # x: [B, d]
        enc, dec = self.encoder, self.decoder
        fast = torch.is_grad_enabled() and not wants_input_grad(x)  # training: the fused / sparse steps
        if not (fast and type(enc) is nn.Linear and type(dec) is nn.Linear):
            return super().forward(x, sample)
        z = relu_codes(x, enc.weight, enc.bias)  # [B, k], no grad
        pat = Pattern.if_sparse(z, self.sparse_below)  # the N nonzero codes, if few
        if pat is not None:  # z is the pre-activation at its nonzero entries
            vals = self.gather_pre(x, z, pat)  # [N] > 0: relu is the identity there
            return self.sparse_forward(vals, pat, {"h": pat.row_sums(vals)})  # h = ||z||_1 [B]
        x_hat, h, z = relu_l1_sae(x, enc.weight, enc.bias, dec.weight, dec.bias, z)  # [B, d], [B], [B, k]
        return Forward(x_hat=x_hat, codes=lambda: z, activity=lambda: z.abs().log(), extras={"h": h})
