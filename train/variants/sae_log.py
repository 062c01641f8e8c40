"""SAE-log (paper eq. 1 with h(z) = sum_j log(|z_j| + eps), eps = 1e-4; Candes et al. 2008).

params: ``lam1`` (default 0.01), ``lam2`` (default 0.2): the paper's LLM-activation values (App. D.3, read as
1e-2 and 2e-1), ``eps`` (default 1e-4, App. D.1 / official code). h is negative for small codes (it is a
log, not a count); only its gradient matters. Training with the linear encoder and decoder and at most
``sparse_below`` of the codes nonzero (5% on the CPU, as ``sae_l1``; off on CUDA) runs the sparse step
(``_sparse``): only the N nonzero codes are differentiated and decoded, and h = sum over them of
log(z + eps) + (k - their count) log(eps) (a zero code adds log(eps) and, through relu, no gradient).
Same loss and gradients as the dense path. Everything else: see ``_sae``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from actdict.train.protocol import Forward, register, wants_input_grad
from actdict.train.variants._sae import SAEBase
from actdict.train.variants._sparse import SPARSE_BELOW, Pattern


@register
class SAELog(SAEBase):
    variant = "sae_log"
    autocast_note = ("bf16 pre-activations move codes near 0, and the penalty's gradient 1/(|z| + eps) "
                     "follows (40% off in tests/test_variant_contract.py)")
    default_params = {"lam1": 0.01, "lam2": 0.2, "eps": 1e-4}
    positive = ("eps",)
    sparse_below = SPARSE_BELOW

    def penalty(self, z: Tensor) -> Tensor:  # z: [B, k] -> [B]
        return (z.abs() + self.params["eps"]).log().sum(-1)

    def forward(self, x: Tensor, sample: bool = True) -> Forward:  # x: [B, d]
        enc, dec = self.encoder, self.decoder
        fast = torch.is_grad_enabled() and not wants_input_grad(x)  # training: the sparse step
        if not (fast and type(enc) is nn.Linear and type(dec) is nn.Linear):
            return super().forward(x, sample)
        pre = enc(x)  # [B, k]
        z = torch.relu(pre)  # [B, k]
        pat = Pattern.if_sparse(z.detach(), self.sparse_below)  # the N nonzero codes, if few
        if pat is None:  # the plain path, on these codes
            return self.dense_forward(z)
        vals = self.gather_pre(x, pre.detach(), pat)  # [N] > 0: relu is the identity there; the graph dropped
        eps = float(self.params["eps"])
        zeros = self.k - (pat.crow[1:] - pat.crow[:-1])  # [B] zero codes per row
        h = zeros.float() * math.log(eps) + pat.row_sums((vals.float() + eps).log())  # [B]
        return self.sparse_forward(vals, pat, {"h": h})
