"""SAE-l1 (paper eq. 1 with h(z) = sum_j |z_j|; Cunningham et al. 2024).

params: ``lam1`` (default 0.32), ``lam2`` (default 0.2): the paper's LLM-activation values (App. D.3, read as
3.2e-1 and 2e-1; the extracted text lost the exponent signs). Other data need other values (App. D.2/D.3).
Training (gradients on) with the linear encoder and decoder runs the fused step of ``_fused_l1`` (the same
loss and gradients, fewer passes over [B, k]); deep encoders / MLP decoders and no-grad forwards (analysis)
take the plain path. Everything else: see ``_sae``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from actdict.train.protocol import Forward, register
from actdict.train.variants._fused_l1 import relu_l1_sae
from actdict.train.variants._sae import SAEBase


@register
class SAEL1(SAEBase):
    variant = "sae_l1"
    default_params = {"lam1": 0.32, "lam2": 0.2}

    def penalty(self, z: Tensor) -> Tensor:  # z: [B, k] -> [B]
        return z.abs().sum(-1)

    def forward(self, x: Tensor, sample: bool = True) -> Forward:  # x: [B, d]
        enc, dec = self.encoder, self.decoder
        if not (torch.is_grad_enabled() and type(enc) is nn.Linear and type(dec) is nn.Linear):
            return super().forward(x, sample)
        x_hat, h, z = relu_l1_sae(x, enc.weight, enc.bias, dec.weight, dec.bias)  # [B, d], [B], [B, k]
        return Forward(x_hat=x_hat, codes=lambda: z, activity=lambda: z.abs().log(), extras={"h": h})
