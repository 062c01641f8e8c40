"""SAE-TopK (Makhzani & Frey 2013; Gao et al. 2024): keep the ``topk`` largest ReLU codes per sample.

z = relu(Linear(d, k)(x)), then every entry outside the ``topk`` largest of each row is set to 0 (ties
broken by ``torch.topk``). No sparsity penalty (h = 0) and, as in the paper, no AuxK loss and no
decoder renormalisation.
params: ``topk`` (default 30, the paper's LLM value), ``lam2`` (default 0.0: the paper gives no lam2 for TopK;
an open choice). Everything else: see ``_sae``.

Sparse path (linear encoder and decoder, the default): the pre-activations are computed densely without
grad, the top ``topk`` of relu(pre) per row are selected, and only those entries are differentiated
(``_sparse.gather_linear``: sparse grad of the encoder's weight and bias) and decoded
(``_sparse.sparse_decode``: x_hat = b_dec + sum_j z_j W_dec[:, j] over the kept j). The loss and every
gradient equal the dense computation's to float rounding; ``Forward.codes`` (the dense [B, k] z, no grad)
and ``activity`` are built only when read. Deep encoders / MLP decoders take the dense path. The linear
decoder's weight [d, k] is kept in [k, d] (latent-major) storage, a transposed view: the sparse decode
reads latent rows, and its gradient arrives latent-major, so neither is copied every step (4% of a step
at k = 4096, 10% at k = 16384 here); values, state dict and checkpoints are unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from actdict.config import ConfigError
from actdict.train.protocol import Forward, register, wants_input_grad
from actdict.train.variants._sae import SAEBase
from actdict.train.variants._sparse import Pattern


@register
class SAETopK(SAEBase):
    variant = "sae_topk"
    default_params = {"topk": 30, "lam2": 0.0}

    def __init__(self, d: int, k: int, **params) -> None:
        super().__init__(d, k, **params)
        if not 1 <= int(self.params["topk"]) <= k:
            raise ConfigError(f"sae_topk: topk must be in 1..k={k}, got {self.params['topk']}")
        if type(self.decoder) is nn.Linear:  # [d, k] values in [k, d] storage
            self.decoder.weight = nn.Parameter(self.decoder.weight.detach().t().contiguous().t())

    def to_saelens(self) -> dict:
        return super().to_saelens() | {"architecture": "topk", "k": int(self.params["topk"])}

    def encode(self, x: Tensor) -> Tensor:  # x: [B, d] -> z [B, k]
        z = torch.relu(self.encoder(x))  # [B, k]
        top = z.topk(int(self.params["topk"]), dim=-1)  # values/indices [B, topk]
        return torch.zeros_like(z).scatter(-1, top.indices, top.values)

    def forward(self, x: Tensor, sample: bool = True) -> Forward:  # x: [B, d]; deterministic
        enc, dec = self.encoder, self.decoder
        if wants_input_grad(x) or not (type(enc) is nn.Linear and type(dec) is nn.Linear):
            return super().forward(x, sample)  # the dense composition: relu, then the top of each row
        with torch.no_grad():
            pre = enc(x)  # [B, k]
            # top of pre, not of relu(pre): a row with fewer than topk positive entries keeps other zeros of
            # relu(pre) than the dense path does, which changes neither z, x_hat nor any gradient
            idx = pre.topk(int(self.params["topk"]), dim=-1).indices  # [B, topk]
        pat = Pattern.from_topk(idx, self.k)
        vals = torch.relu(self.gather_pre(x, pre, pat))  # [N] kept z
        return self.sparse_forward(vals, pat, {"h": x.new_zeros(len(x))})  # h = 0: no penalty
