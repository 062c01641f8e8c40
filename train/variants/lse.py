"""Decoder-free LSE + InfoMax encoder (Oursland 2026, "Deriving Decoder-Free Sparse Autoencoders from First
Principles", arXiv 2601.06478; official code alanoursland/implicit_em_in_neural_activations,
``encoder_study/src/{model,losses,metrics}.py``).

* energies E = phi(x @ W^T + b)  [B, k] with W [k, d] (one Linear layer), phi = ReLU (default, the paper's
  primary choice) or softplus (``activation``).
* loss (official ``combined_loss``) =
    lam_lse * ( - sum_b logsumexp_j(-E_bj) )                       (summed over the batch, as the code)
  + lam_var * ( - sum_j log(Var_b(E_j) + var_eps) )                (unbiased batch variance)
  + lam_tc  * sum_{i != j} Corr_b(E)_ij^2                          (batch correlation, std + 1e-8)
  + lam_wr  * ||W_n W_n^T - I||_F^2, W_n = rows of W over their norms (+1e-8)   (optional, default off).
  Defaults as the paper/code: lam_lse = lam_var = lam_tc = 1, lam_wr = 0, var_eps = 1e-6. (The LSE term is
  that of the code's revision fee2327, whose gradient is the responsibility softmax(-E), the paper's
  identity; an earlier revision, 3cd3262, had + mean_b logsumexp(-E), the opposite sign.) There is no
  reconstruction term. The batch statistics need B >= 2; under torchrun they are the global batch's
  (``batch_moments``), and the summed LSE term is the global batch's sum, so 2 ranks train as one process.
* x_hat: the model has no decoder. We define x_hat = E @ W (the transposed encoder as a pseudo-decoder, no
  bias), the x_hat of the paper's "reconstruction MSE ... use W^T as a pseudo-decoder" (official
  ``reconstruction_mse``), so reconstruction-based analysis (RE, masked-dimension curves) can be computed;
  ``decode(codes) = codes @ W``. Nothing is trained through x_hat. Open choice: analysis reports RE as for
  every variant, the per-row sum of squared error; the official metric is the mean over elements (RE / d).
* ``Forward.codes`` = E, ``activity`` = log|E| (exact zeros of the ReLU -> -inf), ``active_side = "high"``:
  analysis counts nonzero energies (L0) and the Otsu split's active ones (AD: the nonzero ones on a row with
  an exact zero), as for every SAE. Open choice: the official ``sparsity_l0`` counts |E| > 0.01, so its L0
  is at most ours. (In the mixture reading a low energy is a good match; both count large energies as
  active.)
* Exports to SAELens "standard" (relu only): W_enc = W^T, b_enc = b, W_dec = W, b_dec = 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actdict.config import ConfigError
from actdict.train import dist as dist_
from actdict.train.protocol import Dictionary, Forward, register

_DEFAULTS = {"lam_lse": 1.0, "lam_var": 1.0, "lam_tc": 1.0, "lam_wr": 0.0, "var_eps": 1e-6,
             "activation": "relu"}


def batch_moments(e: Tensor) -> tuple[Tensor, Tensor]:  # e: [b, k] -> (var [k], cov [k, k])
    """Unbiased variance and covariance of the batch's columns; under torchrun the global batch's. The mean
    is detached: a centred moment's gradient through its own mean is zero (the deviations sum to zero), so in
    one process this changes only rounding, and under torchrun every moment is then a plain global mean of
    row terms, which ``dist.global_mean`` makes exact."""
    n = dist_.global_rows(len(e))
    c = e - dist_.batch_mean(e).detach()  # [b, k]
    cov = dist_.global_mean(c.T @ c / len(e), len(e)) * (n / (n - 1))  # [k, k]
    return cov.diagonal(), cov


def correlation_penalty(var: Tensor, cov: Tensor) -> Tensor:  # [k], [k, k] -> sum of squared off-diag corr
    # [k] (the official code: e.std(0) + 1e-8). The clamp keeps sqrt's gradient finite where a latent's energy
    # is the same on every row of the batch (var 0: all rows alike, an all-zero batch), where 1 / (2 sqrt 0)
    # times a zero upstream gradient would be NaN and poison the weights; above 1e-38 it changes nothing
    std = var.clamp_min(torch.finfo(var.dtype).tiny).sqrt() + 1e-8
    corr = cov / (std[:, None] * std[None, :])
    off = corr - torch.eye(len(var), device=var.device, dtype=var.dtype)
    return off.pow(2).sum() - off.diagonal().pow(2).sum()


def weight_redundancy(w: Tensor) -> Tensor:  # w: [k, d]
    wn = w / (w.norm(dim=1, keepdim=True) + 1e-8)
    return (wn @ wn.T - torch.eye(len(w), device=w.device, dtype=w.dtype)).pow(2).sum()


@register
class LSE(Dictionary):
    variant = "lse"
    trains_reconstruction = False  # x_hat = E @ W is a by-product: training's divergence warning ignores it
    batch_loss = True  # batch variance and covariance (batch_moments): a batch of 1 row has none
    default_params = _DEFAULTS  # the kinds and ranges ``protocol.check_params`` checks
    positive = ("var_eps",)
    active_side = "high"

    def __init__(self, d: int, k: int, **params) -> None:
        unknown = sorted(set(params) - set(_DEFAULTS))
        if unknown:
            raise ConfigError(f"lse: unknown params {unknown}; valid: {sorted(_DEFAULTS)}")
        p = _DEFAULTS | params
        if p["activation"] not in ("relu", "softplus"):
            raise ConfigError(f"lse: activation must be 'relu' or 'softplus', got {p['activation']!r}")
        super().__init__(d, k, **p)
        self.linear = nn.Linear(d, k)  # the official model's one layer (default nn.Linear init)

    def energies(self, x: Tensor) -> Tensor:  # [B, d] -> [B, k]
        z = self.linear(x)
        return torch.relu(z) if self.params["activation"] == "relu" else F.softplus(z)

    def forward(self, x: Tensor, sample: bool = True) -> Forward:  # x: [B, d]; deterministic
        e = self.energies(x)
        return Forward(x_hat=self.decode(e), codes=e, activity=lambda: e.abs().log(), extras={"e": e})

    def decode(self, codes: Tensor) -> Tensor:  # pseudo-decoder W^T: [B, k] @ [k, d]
        return codes @ self.linear.weight

    def loss_terms(self, x: Tensor, out: Forward) -> dict[str, Tensor]:
        e = out.extras["e"]
        p = self.params
        lse = -dist_.batch_mean(torch.logsumexp(-e, dim=1)) * dist_.global_rows(len(e))  # the batch's sum
        v, cov = batch_moments(e)
        var = -torch.log(v + p["var_eps"]).sum()
        tc = correlation_penalty(v, cov)
        loss = p["lam_lse"] * lse + p["lam_var"] * var + p["lam_tc"] * tc
        terms = {"lse": lse.detach(), "var": var.detach(), "tc": tc.detach()}
        if p["lam_wr"]:
            wr = weight_redundancy(self.linear.weight)
            loss = loss + p["lam_wr"] * wr
            terms["wr"] = wr.detach()
        sse = (x - out.x_hat).pow(2).sum(-1).mean().detach()
        return {"loss": loss, "sse": sse, **terms}

    def to_saelens(self) -> dict:
        if self.params["activation"] != "relu":
            raise NotImplementedError("lse with a softplus activation has no SAELens architecture")
        w, b = self.linear.weight.detach().float().cpu(), self.linear.bias.detach().float().cpu()
        return {"architecture": "standard", "apply_b_dec_to_input": False, "W_enc": w.T.clone(),
                "b_enc": b.clone(), "W_dec": w.clone(), "b_dec": torch.zeros(self.d)}
