"""L1 SAE with the penalty weighted by decoder norms (Anthropic, "Circuits Updates - April 2024", training
set-up update; Conerly et al.).

* f = relu(x @ W_enc + b_enc)  [B, k] (no b_dec subtraction); x_hat = f @ W_dec + b_dec.
* loss = batch mean of [ sum_d (x - x_hat)^2 + lam * sum_i f_i * ||W_dec,i||_2 ]: the decoder rows are NOT
  constrained to unit norm (the penalty removes the scale degeneracy instead); ``after_step`` does nothing.
* init (update): W_dec rows in random directions with L2 norm ``dec_init_norm`` (0.1; "0.05 to 1" in the
  update), W_enc = W_dec^T, b_enc = b_dec = 0.
* lam (default 5.0, the update's value for inputs scaled so that E||x||_2 = sqrt(d)) is warmed up linearly
  from 0 over the first ``lam_warmup_steps`` optimizer steps (the update: 5% of training; default 0 = off,
  because a variant does not know the run length: set it to 5% of your step count). The step count is a
  buffer, so a resumed run continues the warm-up. The update's other choices (input scaling, Adam
  betas (0.9, 0.999), lr decay over the last 20%, gradient clipping at 1) belong to
  the loop and are not done here.
* ``Forward.codes`` = f, ``activity`` = log|f|; ``active_side = "high"``. Exports to SAELens "standard"
  (relu) with ``apply_b_dec_to_input = false``.
* Training runs ``sae_l1``'s two steps: with at most ``sparse_below`` of the codes nonzero (5% on the CPU;
  off on CUDA) the sparse step (``_sparse``: only the N nonzero codes are differentiated and decoded, the
  penalty summed over them), else the fused dense step of ``_fused_l1`` with the decoder norms as its
  per-latent weights. Both equal autograd on the plain composition (the no-grad forward) to float rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from actdict.train.protocol import Forward, register, wants_input_grad
from actdict.train.variants._fused_l1 import relu_codes, relu_l1_sae
from actdict.train.variants._sparse import SPARSE_BELOW, Pattern
from actdict.train.variants._tied import TiedSAE, sparse_codes, warmed_up


@register
class SAEL1DecNorm(TiedSAE):
    variant = "sae_l1_decnorm"
    apply_b_dec_to_input = False
    unit_norm_decoder = False
    default_params = {"lam": 5.0, "lam_warmup_steps": 0, "dec_init_norm": 0.1}
    positive = ("dec_init_norm",)
    sparse_below = SPARSE_BELOW

    def __init__(self, d: int, k: int, **params) -> None:
        super().__init__(d, k, **params)
        self.init_tied(float(self.params["dec_init_norm"]))
        self.register_buffer("steps", torch.tensor(0, dtype=torch.long))

    def lam_now(self) -> Tensor:  # [] on the model's device: lam * s / warm at step s
        return warmed_up(self.params["lam"], self.steps, int(self.params["lam_warmup_steps"]))

    def forward(self, x: Tensor, sample: bool = True) -> Forward:  # x: [B, d]; deterministic
        if not torch.is_grad_enabled() or wants_input_grad(x):  # analysis, attribution: the plain composition
            f = torch.relu(self.pre(x))  # [B, k]
            return Forward(x_hat=self.decode(f), codes=f, activity=lambda: sparse_codes(f), extras={"f": f})
        w_enc, w_dec = self.W_enc.T, self.W_dec.T  # [k, d], [d, k] views: nn.Linear's layout
        z = relu_codes(x, w_enc, self.b_enc)  # [B, k], no grad
        pat = Pattern.if_sparse(z, self.sparse_below)  # the N nonzero codes, if few
        if pat is not None:
            vals = self.gather_pre(x, z, pat)  # [N] > 0: relu is the identity there
            return self.sparse_forward(vals, pat, {"vals": vals, "pat": pat})
        x_hat, h, z = relu_l1_sae(x, w_enc, self.b_enc, w_dec, self.b_dec, z, self.W_dec.norm(dim=-1))
        return Forward(x_hat=x_hat, codes=lambda: z, activity=lambda: sparse_codes(z), extras={"h": h})

    def loss_terms(self, x: Tensor, out: Forward) -> dict[str, Tensor]:
        sse = (x - out.x_hat).pow(2).sum(-1).mean()
        if "h" in out.extras:  # the fused dense step: h = sum_i f_i ||W_dec,i|| [B]
            pen = out.extras["h"].mean()
        elif "pat" in out.extras:  # the sparse step: sum_n f_n ||W_dec,col(n)|| / B
            norms = self.W_dec.norm(dim=-1)  # [k]
            pen = (out.extras["vals"] * norms[out.extras["pat"].cols]).sum() / len(x)
        else:
            pen = (out.extras["f"] * self.W_dec.norm(dim=-1)).sum(-1).mean()
        lam = self.lam_now()
        return {"loss": sse + lam * pen, "sse": sse.detach(), "penalty": pen.detach(), "lam": lam}

    @torch.no_grad()
    def after_step(self) -> None:
        self.steps.add_(1)

    def to_saelens(self) -> dict:
        return self._saelens("standard")
