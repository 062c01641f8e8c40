"""Shared VAE machinery of ``vae`` and ``vaease`` (the two differ only in what the decoder receives).

Paper Sec. 2.2-3 and the official code (LLM/Yelp setting; README, "VAEase: the formulas"):

* encoder (``encoder="linear"``, the official LLM/Yelp model ``Simple_Linear_Encoder``): h = Swish(Linear(d,
  2k)(x)); mu, s = h.chunk(2). (App. D.3's text says "one linear layer and a ReLU layer"; we follow the
  code's Swish, which lets mu be negative.)
* encoder (``encoder="mlp"``, paper App. D.2 linear-subspace data): 4 Linear layers joined by Swish, hidden
  width 2k, the last one giving 2k outputs without activation; mu, s = its chunk(2). (Open choice: the paper
  does not say whether the last layer is activated; we leave it linear so mu is unconstrained.)
* encoder ``"resmlp"`` (App. D.2 MLP-manifold data: 3 residual blocks of 3 Linear layers, hidden 8k) and
  decoder ``"mlp"`` (2-layer leaky-ReLU(0.2) MLP) instead of the linear decoder: see ``_nets``; ``hidden``
  sets their width (0 = the paper's: 2k for ``mlp``, 8k for ``resmlp`` and the MLP decoder; ``resmlp_bn``, the
  authors' BatchNorm body, has a 2k stream);
  ``decoder_hidden`` (0 = as ``hidden``) sets the MLP decoder's alone (the paper does not state it).
* variance head (``head="sigmoid"``, official): var = clamp(sigmoid(Linear(k, k)(s)), min=var_min);
  (``head="logvar"``, our clipped log-variance head for synthetic data, an open choice of this repo):
  log var = clamp(Linear(k, k)(s), logvar_min, 0), so var in [exp(logvar_min), 1] (1 = the prior's variance).
  (``head="clip"``, the official synthetic encoders ``Linear_Encoder`` and ``MLP_Encoder``): log var =
  clamp(s, max=0), s itself, with no Linear(k, k) and no lower bound. See ``_nets`` for the bodies; with
  ``encoder="mlp"`` or ``"resmlp_bn"`` and ``head="clip"`` the encoder is the official one.
* z = mu + sqrt(var) * eps (``sample=True``) or mu (``sample=False``); decoder Linear(k, d) with bias.
* loss per sample = sum_d (x - x_hat)^2 / exp(loggamma) + d * loggamma + d * log(2 pi)
                    + sum_k (var + mu^2 - log var) - k,
  then the batch mean. This is 2x the negative ELBO (paper eq. 3) with a one-sample reparameterised estimate;
  the factor 2 is the official code's scaling (it only rescales the learning rate under Adam, i.e. nothing).
  loggamma (log of the decoder variance gamma) is a learned scalar, init ``loggamma_init`` (-10 for LLM
  activations, official).
* ``Forward.activity`` = log var, ``active_side = "low"`` (small posterior variance = active dimension).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from actdict.config import ConfigError
from actdict.train import dist as dist_
from actdict.train.protocol import Dictionary, Forward
from actdict.train.variants._nets import (
    check_arch,
    deep_encoder,
    default_hidden,
    make_decoder,
)

HEADS = ("sigmoid", "logvar", "clip")


class VAEBase(Dictionary):
    active_side = "low"
    gate_decoder_input: bool = False  # VAEase: decode (1 - sqrt(var)) * z
    positive = ("var_min",)  # the params' kinds: ``protocol.check_params``, from the defaults below

    def __init__(self, d: int, k: int, loggamma_init: float = -10.0, encoder: str = "linear",
                 head: str = "sigmoid", var_min: float = 1e-7, logvar_min: float = -20.0,
                 decoder: str = "linear", hidden: int = 0, decoder_hidden: int = 0, **extra: Any) -> None:
        if extra:
            raise ConfigError(f"{self.variant}: unknown params {sorted(extra)}; valid: loggamma_init, "
                             "encoder, head, var_min, logvar_min, decoder, hidden, decoder_hidden")
        check_arch(self.variant, encoder, decoder, hidden, decoder_hidden)
        if head not in HEADS:
            raise ConfigError(f"{self.variant}: head must be one of {HEADS}, got {head!r}")
        for name, value, default, used_by in (("var_min", var_min, 1e-7, "sigmoid"),
                                              ("logvar_min", logvar_min, -20.0, "logvar")):
            if value != default and head != used_by:  # it would be ignored without a word
                raise ConfigError(f"{self.variant}: {name} is the floor of head {used_by!r}, and the head is "
                                  f"{head!r}: leave {name} out")
        if head == "clip" and encoder == "linear":  # Swish(.) >= -0.28: var >= 0.76, never an active latent
            raise ConfigError(f"{self.variant}: head 'clip' reads log var off the encoder's output, which "
                              "the linear encoder's Swish bounds below by -0.28: use it with encoder mlp, "
                              "resmlp or resmlp_bn (the authors' synthetic models), or head 'sigmoid'")
        super().__init__(d, k, loggamma_init=float(loggamma_init), encoder=encoder, head=head,
                         var_min=float(var_min), logvar_min=float(logvar_min), decoder=decoder,
                         hidden=int(hidden), decoder_hidden=int(decoder_hidden))
        if encoder == "linear":
            self.encoder = nn.Sequential(nn.Linear(d, 2 * k), nn.SiLU())
        else:
            self.encoder = deep_encoder(encoder, d, 2 * k, int(hidden) or default_hidden(encoder, k))
        if head != "clip":
            self.var_head = nn.Linear(k, k)
        self.decoder = make_decoder(decoder, k, d, hidden, decoder_hidden)
        self.loggamma = nn.Parameter(torch.tensor(float(loggamma_init)))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # x: [B, d]
        """-> mu [B, k], var [B, k], log var [B, k]."""
        mu, s = self.encoder(x).chunk(2, dim=-1)  # [B, k] each
        head = self.params["head"]
        if head == "sigmoid":
            var = torch.sigmoid(self.var_head(s)).clamp(min=self.params["var_min"])  # [B, k]
            return mu, var, var.log()
        if head == "logvar":
            logvar = self.var_head(s).clamp(self.params["logvar_min"], 0.0)  # [B, k]
        else:  # "clip"
            logvar = s.clamp(max=0.0)  # [B, k]
        return mu, logvar.exp(), logvar

    def forward(self, x: Tensor, sample: bool = True) -> Forward:  # x: [B, d]
        mu, var, logvar = self.encode(x)
        # [B, k]; a log-variance head's var underflows to 0 below log var -103 (clip has no floor, logvar_min
        # may be set that low), where sqrt has an infinite gradient; exp(log var / 2) (the official code's)
        # has none. The sigmoid head's var >= var_min keeps sqrt (its numbers stay as they were)
        std = var.sqrt() if self.params["head"] == "sigmoid" else (0.5 * logvar).exp()
        z = mu + std * dist_.noise_like(mu) if sample else mu  # [B, k]
        gate = (1.0 - std) if self.gate_decoder_input else torch.ones_like(std)  # [B, k]
        dec_in = gate * z  # [B, k]
        return Forward(x_hat=self.decoder(dec_in), codes=gate * mu, activity=logvar,
                       extras={"mu": mu, "var": var, "logvar": logvar, "dec_in": dec_in})

    def decode(self, codes: Tensor) -> Tensor:  # codes = gate * mu (deterministic decoder input) -> [B, d]
        return self.decoder(codes)

    def loss_terms(self, x: Tensor, out: Forward) -> dict[str, Tensor]:
        mu, var, logvar = out.extras["mu"], out.extras["var"], out.extras["logvar"]
        sse = (x - out.x_hat).pow(2).sum(-1)  # [B]
        rec = sse / self.loggamma.exp() + self.d * (self.loggamma + math.log(2 * math.pi))  # [B]
        kl2 = (var + mu.pow(2) - logvar).sum(-1) - self.k  # [B] = 2 KL(q(z|x) || N(0, I))
        return {"loss": (rec + kl2).mean(), "sse": sse.mean(), "kl": 0.5 * kl2.mean(),
                "loggamma": self.loggamma.detach().clone()}  # not a view: the step updates the parameter
