"""KL-sparsity autoencoder (Ng, CS294A "Sparse autoencoder" lecture notes; papers/kl-sparse-autoencoder-*).

* h = sigmoid(W1 x + b1)  [B, k] (sigmoid hidden units); x_hat = W2 h + b2  [B, d]. The notes' decoder is
  sigmoid too, for data in [0, 1]; activations are unbounded, so ours is linear (an open choice).
* rho_hat_j = mean over the batch of h_j (the notes average over the training set; the batch is the estimate
  every minibatch implementation uses).
* loss = mean_batch (1/2) ||x - x_hat||^2 + (lam / 2) (||W1||_F^2 + ||W2||_F^2)
         + beta * sum_j KL(rho || rho_hat_j),
  KL(rho || q) = rho log(rho / q) + (1 - rho) log((1 - rho) / (1 - q)); rho_hat is clamped to
  [1e-6, 1 - 1e-6] so a saturated unit gives a large finite penalty, not inf.
* defaults: ``rho`` 0.05 (the notes' example), ``beta`` 3.0 and ``lam`` 1e-4 (the UFLDL exercise values).
* init (UFLDL): weights uniform in [-r, r], r = sqrt(6 / (d + k + 1)); biases 0.
* ``Forward.codes`` = h, ``activity`` = log h (never exactly -inf: a sigmoid unit is never exactly off, so the
  Otsu split separates strongly from weakly active units); ``active_side = "high"``.
* No SAELens export (sigmoid is not a SAELens activation).
* The tutorial in papers/ (kl-sparse-autoencoder-tutorial.txt) differs from the notes, which we follow: its
  reconstruction is a mean squared error without the 1/2 and it has no weight decay, beta = 1.0, weights
  N(0, 0.01^2), a sigmoid decoder. ``beta: 1, lam: 0`` gives its penalty weights (up to the 1/2 and the
  mean over d of its reconstruction term).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from actdict.config import ConfigError
from actdict.train import dist as dist_
from actdict.train.protocol import Dictionary, Forward, register

_CLAMP = 1e-6


def kl_bernoulli(rho: float, q: Tensor) -> Tensor:  # q: [k] -> [k]
    q = q.clamp(_CLAMP, 1 - _CLAMP)
    return rho * torch.log(rho / q) + (1 - rho) * torch.log((1 - rho) / (1 - q))


@register
class SAEKL(Dictionary):
    variant = "sae_kl"
    active_side = "high"

    def __init__(self, d: int, k: int, rho: float = 0.05, beta: float = 3.0, lam: float = 1e-4,
                 **extra) -> None:
        if extra:
            raise ConfigError(f"sae_kl: unknown params {sorted(extra)}; valid: beta, lam, rho")
        if not 0 < rho < 1:
            raise ConfigError(f"sae_kl: rho must be in (0, 1), got {rho}")
        super().__init__(d, k, rho=float(rho), beta=float(beta), lam=float(lam))
        self.encoder, self.decoder = nn.Linear(d, k), nn.Linear(k, d)
        r = math.sqrt(6 / (d + k + 1))
        with torch.no_grad():
            for lin in (self.encoder, self.decoder):
                lin.weight.uniform_(-r, r)
                lin.bias.zero_()

    def forward(self, x: Tensor, sample: bool = True) -> Forward:  # x: [B, d]; deterministic
        h = torch.sigmoid(self.encoder(x))  # [B, k]
        act = lambda: torch.log(h.clamp_min(1e-38))  # noqa: E731  [B, k], read by analysis only
        return Forward(x_hat=self.decoder(h), codes=h, activity=act, extras={"h": h})

    def decode(self, codes: Tensor) -> Tensor:  # h: [B, k] -> [B, d]
        return self.decoder(codes)

    def loss_terms(self, x: Tensor, out: Forward) -> dict[str, Tensor]:
        rec = 0.5 * (x - out.x_hat).pow(2).sum(-1).mean()
        wd = self.encoder.weight.pow(2).sum() + self.decoder.weight.pow(2).sum()
        rho_hat = dist_.batch_mean(out.extras["h"])  # [k]; under torchrun the global batch's
        kl = kl_bernoulli(self.params["rho"], rho_hat).sum()
        loss = rec + 0.5 * self.params["lam"] * wd + self.params["beta"] * kl
        return {"loss": loss, "sse": 2 * rec.detach(), "kl": kl.detach(), "weight_sq": wd.detach()}
