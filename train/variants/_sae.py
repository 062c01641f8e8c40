"""Shared SAE machinery of ``sae_l1``, ``sae_log`` and ``sae_topk`` (paper Sec. 2.1, eq. 1).

* encoder z = relu(Linear(d, k)(x)) (paper App. D.3: "one linear layer and a ReLU layer");
  decoder Linear(k, d) with bias.
* loss = batch mean of [ sum_d (x - x_hat)^2 + lam1 * h(z) ] + lam2 * (||W_dec||^2 + ||b_dec||^2)
  (eq. 1: theta = the decoder's weight and bias, as in the official code; the encoder is not penalised).
* ``Forward.codes`` = z; ``Forward.activity`` = log|z| (exact zeros give -inf, so on a row with at least one
  exact zero the Otsu split counts its L0; a row with every code nonzero is split among its values),
  computed only when read (training never reads it; the log of a mostly-zero [4096, k] z took ~0.2 s at
  k = 4096 and ~0.85 s at k = 16384 per step on 2 CPU cores); ``active_side = "high"``.
* Synthetic sets (App. D.2): ``encoder`` "mlp" (4 Swish-joined Linear layers, hidden 2k), "resmlp"
  (3 residual blocks, hidden 8k) or "resmlp_bn" (the authors' BatchNorm body, a 2k stream) before the
  ReLU, ``decoder`` "mlp" (2-layer leaky-ReLU MLP); ``hidden`` sets their width (0 = the paper's),
  ``decoder_hidden`` the MLP decoder's alone (0 = as ``hidden``). See ``_nets``. With an MLP decoder lam2
  penalises all its weights and biases. These keys are stored in ``params`` only when given. The ReLU
  follows every encoder body: the official ``MLP_Encoder_SAE`` ends in one too, its ``Sparse_Encoder`` (4
  Linear layers) does not.
* No decoder renormalisation, no tied init, no AuxK: ``after_step`` does nothing (the paper relies on lam2).
* ``loss_terms`` takes h from ``extras["h"]`` [B] when the forward computed it (``sae_l1``'s fused step;
  ``sae_topk``'s sparse path: zeros), else h(``extras["z"]``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from actdict.config import ConfigError
from actdict.train.protocol import Dictionary, Forward
from actdict.train.variants._nets import (
    ARCH,
    check_arch,
    deep_encoder,
    default_hidden,
    make_decoder,
)
from actdict.train.variants._sparse import Pattern, gather_linear, sparse_forward


class SAEBase(Dictionary):
    active_side = "high"
    default_params: dict[str, Any] = {}
    optional_params: dict[str, Any] = ARCH  # the deep bodies' keys, stored in params only when given

    def __init__(self, d: int, k: int, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.default_params) - set(self.optional_params))
        if unknown:
            valid = sorted([*self.default_params, *self.optional_params])
            raise ConfigError(f"{self.variant}: unknown params {unknown}; valid: {valid}")
        enc, dec, hidden, dec_hidden = (params.get(key, ARCH[key]) for key in ARCH)
        check_arch(self.variant, enc, dec, hidden, dec_hidden)
        super().__init__(d, k, **(self.default_params | params))
        self.encoder = (nn.Linear(d, k) if enc == "linear"
                        else deep_encoder(enc, d, k, int(hidden) or default_hidden(enc, k)))
        self.decoder = make_decoder(dec, k, d, hidden, dec_hidden)

    def encode(self, x: Tensor) -> Tensor:  # x: [B, d] -> z [B, k]
        return torch.relu(self.encoder(x))

    def penalty(self, z: Tensor) -> Tensor:  # z: [B, k] -> h(z) [B]
        return torch.zeros(z.shape[0], device=z.device, dtype=z.dtype)

    def forward(self, x: Tensor, sample: bool = True) -> Forward:  # x: [B, d]; SAEs are deterministic
        return self.dense_forward(self.encode(x))

    def dense_forward(self, z: Tensor) -> Forward:  # z: [B, k], the codes
        return Forward(x_hat=self.decoder(z), codes=z, activity=lambda: z.abs().log(), extras={"z": z})

    def gather_pre(self, x: Tensor, pre: Tensor, pat: Pattern) -> Tensor:  # -> [N]
        """The linear encoder's pre-activations at the entries ``pat`` with the sparse backward (``pre``
        [B, k] computed without grad by the caller; relu(pre) may stand for it at positive entries)."""
        return gather_linear(x, None, self.encoder.weight, self.encoder.bias, pre, pat)

    def sparse_forward(self, vals: Tensor, pat: Pattern, extras: dict[str, Tensor]) -> Forward:
        """``_sparse.sparse_forward`` through the linear decoder (weight [d, k] read latent-major)."""
        return sparse_forward(vals, self.decoder.weight.T, self.decoder.bias, pat, extras)

    def decode(self, codes: Tensor) -> Tensor:  # codes = z: [B, k] -> [B, d]
        return self.decoder(codes)

    def to_saelens(self) -> dict[str, Any]:
        """The SAELens view (``actdict.train.export``): "standard" with the linear encoder and decoder (a
        deep body has no SAELens architecture: NotImplementedError)."""
        enc, dec = self.encoder, self.decoder
        if not (type(enc) is nn.Linear and type(dec) is nn.Linear):
            raise NotImplementedError("a deep encoder/decoder has no SAELens architecture (only the linear "
                                      "encoder + linear decoder SAE maps)")
        t = {"W_enc": enc.weight.T, "b_enc": enc.bias,  # [d, k], [k]
             "W_dec": dec.weight.T, "b_dec": dec.bias}  # [k, d], [d]
        return {"architecture": "standard", "apply_b_dec_to_input": False,
                **{n: v.detach().float().cpu().clone() for n, v in t.items()}}

    def loss_terms(self, x: Tensor, out: Forward) -> dict[str, Tensor]:
        sse = (x - out.x_hat).pow(2).sum(-1).mean()
        h = out.extras["h"] if "h" in out.extras else self.penalty(out.extras["z"])  # [B]
        pen = h.mean()
        lam2 = self.params["lam2"]
        with torch.set_grad_enabled(torch.is_grad_enabled() and lam2 != 0):  # lam2 = 0 (TopK): logged only
            wd = sum(p.pow(2).sum() for p in self.decoder.parameters())  # linear: ||W||^2 + ||b||^2
        loss = sse + self.params.get("lam1", 0.0) * pen + (lam2 * wd if lam2 else 0.0)
        return {"loss": loss, "sse": sse, "penalty": pen.detach(), "decoder_sq_norm": wd.detach()}
