"""SOSAE: Self-Organizing Sparse AutoEncoder (Modi et al. 2025, arXiv 2507.04644; papers/sosae-summary.md).

* one Linear encoder and one Linear decoder: h = relu(x @ W_enc + b_enc)  [B, k]; x_hat = h @ W_dec + b_dec.
  (The summary gives a single FC layer each way but no activation: ReLU is our choice, so that trailing
  latents are exactly 0 and can be cut without any loss.)
* push loss: P(h) = sum_j (1 + alpha)^j |h_j|, j = 0..k-1 (a positional weight growing with the index, times
  the magnitude), so active latents gather at the low indices and the tail is pushed to exactly 0.
* optional Jacobian (contractive) term: ||dh/dx||_F^2 = sum_j 1[h_j > 0] ||W_enc[:, j]||^2 (exact for ReLU).
* loss = batch mean of [ sum_d (x - x_hat)^2 + lam_push * P(h) + lam_jac * ||J||_F^2 ].
* truncation: after training, :func:`active_length` (1 + the last index whose |h_j| exceeds ``tol`` on a
  set of rows) says how many leading latents are in use and :func:`truncate` returns a SOSAE with only those
  k' latents (same outputs when the cut latents are exactly 0 on the data).
* Open choices (the paper's exact values are not available to us): ``alpha`` = 1e-3 (index 0 gets weight 1,
  index k-1 weight (1.001)^(k-1), 60 at k = 4096); ``lam_push`` = 1e-3; ``lam_jac`` = 0 (off). alpha is
  refused when (1 + alpha)^(k-1) would exceed 1e30. Init: PyTorch's nn.Linear default for both layers.
  Also ours: the index j starts at 0 (from 1, every weight, so in effect lam_push, grows by 1 + alpha);
  alpha is a fixed number (the summary says it "follows a specific proportional condition", not which);
  the reconstruction term is the per-row sum of squared error over d, as every variant here, not a mean.
* ``Forward.codes`` = h, ``activity`` = log|h|; ``active_side = "high"``. Exports to SAELens "standard".
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from actdict.config import ConfigError
from actdict.train.protocol import Dictionary, Forward, register
from actdict.train.variants._tied import TiedSAE, sparse_codes


@register
class SOSAE(TiedSAE):
    variant = "sosae"
    apply_b_dec_to_input = False
    unit_norm_decoder = False
    default_params = {"alpha": 1e-3, "lam_push": 1e-3, "lam_jac": 0.0}

    def __init__(self, d: int, k: int, **params) -> None:
        super().__init__(d, k, **params)
        alpha = float(self.params["alpha"])
        if alpha < 0 or (k - 1) * math.log1p(alpha) > math.log(1e30):
            raise ConfigError(f"sosae: alpha={alpha} gives push weights (1+alpha)^{k - 1} beyond 1e30 (or "
                              f"alpha < 0); use alpha <= {math.expm1(math.log(1e30) / max(k - 1, 1)):.3g}")
        enc, dec = nn.Linear(d, k), nn.Linear(k, d)
        with torch.no_grad():
            self.W_enc.copy_(enc.weight.T)
            self.b_enc.copy_(enc.bias)
            self.W_dec.copy_(dec.weight.T)
            self.b_dec.copy_(dec.bias)

    def push_weights(self) -> Tensor:  # [k]: (1 + alpha)^j
        j = torch.arange(self.k, device=self.W_enc.device, dtype=self.W_enc.dtype)
        return torch.exp(j * math.log1p(float(self.params["alpha"])))

    def forward(self, x: Tensor, sample: bool = True) -> Forward:  # x: [B, d]; deterministic
        pre = self.pre(x)  # [B, k]
        h = torch.relu(pre)  # [B, k]
        return Forward(x_hat=self.decode(h), codes=h, activity=lambda: sparse_codes(h), extras={"h": h})

    def loss_terms(self, x: Tensor, out: Forward) -> dict[str, Tensor]:
        h = out.extras["h"]  # [B, k]
        sse = (x - out.x_hat).pow(2).sum(-1).mean()
        push = (h.abs() * self.push_weights()).sum(-1).mean()
        loss = sse + self.params["lam_push"] * push
        terms = {"sse": sse.detach(), "push": push.detach()}
        if self.params["lam_jac"]:
            jac = ((h > 0).to(h.dtype) * self.W_enc.pow(2).sum(0)).sum(-1).mean()
            loss = loss + self.params["lam_jac"] * jac
            terms["jacobian"] = jac.detach()
        return {"loss": loss, **terms}

    def to_saelens(self) -> dict:
        return self._saelens("standard")


@torch.no_grad()
def active_length(codes: Tensor, tol: float = 0.0) -> int:
    """1 + the last latent index with |h_j| > tol in any row of ``codes`` [N, k] (0 when none is active)."""
    used = (codes.abs() > tol).any(0).nonzero()
    return int(used.max()) + 1 if len(used) else 0


@torch.no_grad()
def truncate(model: Dictionary, n: int) -> Dictionary:
    """A SOSAE with the first ``n`` latents of ``model`` (1 <= n <= k), same params and weights; a loaded
    ``mean_scale`` checkpoint (``checkpoint.Normalized``) stays wrapped with the same statistics."""
    from actdict.train.checkpoint import Normalized

    if isinstance(model, Normalized):
        return Normalized(truncate(model.inner, n), model.norm_mean, float(model.norm_scale)).to(
            model.norm_mean.device).train(model.training)
    if not 1 <= n <= model.k:
        raise ConfigError(f"sosae: truncation length must be in 1..{model.k}, got {n}")
    out = SOSAE(model.d, n, **model.params)
    out.W_enc.copy_(model.W_enc[:, :n])
    out.b_enc.copy_(model.b_enc[:n])
    out.W_dec.copy_(model.W_dec[:n])
    out.b_dec.copy_(model.b_dec)
    return out.to(model.W_enc.device).train(model.training)
