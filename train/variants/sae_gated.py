"""Gated SAE (Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated Sparse Autoencoders",
arXiv 2404.16014, Sec. 3.2).

Which latents fire and how strongly are two paths of one encoder that share their weights:

* x' = x - b_dec; g = x' @ W_enc  [B, k] (W_enc = the paper's W_gate^T, [d, k]);
  pi_gate = g + b_gate; pi_mag = g * exp(r_mag) + b_mag (the paper's W_mag = exp(r_mag) (.) W_gate, per
  latent, without forming it: one matmul for both paths);
* z = 1[pi_gate > 0] * relu(pi_mag)  [B, k]; x_hat = z @ W_dec + b_dec.
* loss = batch mean of [ ||x - x_hat||^2 + lam ||relu(pi_gate)||_1 + ||x - x_hat_frozen(relu(pi_gate))||^2 ]
  where x_hat_frozen decodes with W_dec and b_dec detached (the paper's frozen copy of the decoder: the
  auxiliary term trains the gate path only). The Heaviside gate passes no gradient, so the gate learns
  from the L1 and auxiliary terms, the magnitudes (r_mag, b_mag) from the reconstruction, and W_enc from
  both.

Open choices (the paper's text; where it is silent, said so):

* decoder rows kept at unit norm (the paper's constraint, without which the L1 term shrinks by scaling
  W_dec up): the gradient component along each row is projected out and the rows renormalised after each
  step (``_tied``). SAELens' training of this architecture (jbloomAus/SAELens
  ``sae_lens/saes/gated_sae.py``, ``GatedTrainingSAE.calculate_aux_loss``) drops the constraint and weights
  the L1 by the decoder rows' norms, with an unfrozen auxiliary decoder (the authors' later variant); we
  follow the paper.
* no resampling of dead latents (the original training resampled them, as the authors wrote when they
  proposed the later variant without it; no other variant here resamples either).
* init (the paper does not fix one that we follow): W_dec rows uniform on the sphere, W_enc = W_dec^T,
  b_gate = b_mag = r_mag = 0, b_dec = 0 (``_tied.init_tied``); SAELens starts r_mag, b_gate, b_mag at 0 too.
* ``lam`` default 1.0 (SAELens' default ``l1_coefficient``; the paper sweeps it to set L0, on inputs
  scaled by one scalar to E||x||^2 = d; the loop's ``normalize: mean_scale``, off by default, also centres
  them: ``sae_jumprelu``'s docstring says how the two differ).
* ``b_enc`` holds the paper's b_gate (the shared ``_tied`` machinery's name; the SAELens export writes it as
  ``b_gate``). Codes: ``Forward.codes`` = z, ``activity`` = log|z|; ``active_side = "high"``.

SAELens' ``gated`` architecture computes exactly this forward: ``actdict export`` writes it, ``actdict
import`` reads it (SAELens' own gated SAEs, trained its way, import as this variant).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from actdict.train.protocol import Forward, register
from actdict.train.variants._tied import TiedSAE, sparse_codes


@register
class SAEGated(TiedSAE):
    variant = "sae_gated"
    apply_b_dec_to_input = True
    default_params = {"lam": 1.0}

    def __init__(self, d: int, k: int, **params: Any) -> None:
        super().__init__(d, k, **params)
        self.r_mag = nn.Parameter(torch.zeros(k))
        self.b_mag = nn.Parameter(torch.zeros(k))

    def forward(self, x: Tensor, sample: bool = True) -> Forward:  # x: [B, d]; deterministic
        g = (x - self.b_dec) @ self.W_enc  # [B, k]
        pi_gate = g + self.b_enc  # [B, k]
        z = (pi_gate > 0).to(g.dtype) * torch.relu(g * self.r_mag.exp() + self.b_mag)  # [B, k]
        return Forward(x_hat=self.decode(z), codes=z, activity=lambda: sparse_codes(z),
                       extras={"gate": torch.relu(pi_gate)})

    def loss_terms(self, x: Tensor, out: Forward) -> dict[str, Tensor]:
        gate = out.extras["gate"]  # [B, k]
        sse = (x - out.x_hat).pow(2).sum(-1).mean()
        l1 = gate.sum(-1).mean()  # gate >= 0
        via_gate = gate @ self.W_dec.detach() + self.b_dec.detach()  # [B, d]: the frozen decoder
        aux = (x - via_gate).pow(2).sum(-1).mean()
        return {"loss": sse + self.params["lam"] * l1 + aux, "sse": sse.detach(), "l1": l1.detach(),
                "aux": aux.detach()}

    def to_saelens(self) -> dict[str, Any]:
        view = self._saelens("gated")
        view["b_gate"] = view.pop("b_enc")
        return view | {n: getattr(self, n).detach().float().cpu().clone() for n in ("r_mag", "b_mag")}
