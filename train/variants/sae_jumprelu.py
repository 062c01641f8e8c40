"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction Fidelity with JumpReLU
Sparse Autoencoders", the paper's pseudo-code, App. J).

* pre = relu(x @ W_enc + b_enc)  [B, k] (no b_dec subtraction, as the pseudo-code);
  theta = exp(log_threshold)  [k], a learned per-latent threshold;
  z = JumpReLU_theta(pre) = pre * H(pre - theta); x_hat = z @ W_dec + b_dec.
* loss = batch mean of [ sum_d (x - x_hat)^2 + lam * sum_j H(pre_j - theta_j) ]  (L0 penalty).
* Straight-through estimators with the rectangle kernel K(u) = 1{-1/2 < u < 1/2} and bandwidth eps:
    d JumpReLU / d pre = H(pre - theta)      d JumpReLU / d theta = -(theta / eps) K((pre - theta) / eps)
    d H / d pre        = 0                   d H / d theta        = -(1 / eps) K((pre - theta) / eps)
  so theta only learns from pre-activations within eps/2 of it; the encoder learns from reconstruction.
* The L0 term's step reads the pre-activation, as the paper's equation (L0 = sum_j H(pi_j(x) - theta_j))
  and SAELens do. The paper's pseudo-code (App. J) writes ``step(feature_magnitudes, threshold)``, i.e.
  H(z - theta): the same value, but a pre-activation in (theta - eps/2, theta] has z = 0 there and gives
  theta no gradient (once theta >= eps/2), so the pseudo-code's threshold gradient is the one-sided half of
  the kernel estimate, about half of ours. Open choice; we follow the equation.
* Defaults (our reading of the paper, whose inputs are scaled by one fixed scalar to E||x||^2 = d):
  ``bandwidth`` eps = 0.001, ``threshold_init`` theta_0 = 0.001 (Gemma Scope's, Lieberum et al.
  2024, and SAELens' ``jumprelu_bandwidth`` / ``jumprelu_init_threshold`` until its later releases, whose
  defaults are 0.05 / 0.01: jbloomAus/SAELens ``sae_lens/saes/jumprelu_sae.py``), ``lam`` (sparsity
  coefficient) = 1.0 (SAELens' default ``l0_coefficient``; the paper sweeps it to set L0). eps and theta_0
  are pre-activation values, so they assume that scale.
* Inputs: the loop feeds this model the store's rows as they are (``train.normalize: none``, the default),
  or under ``normalize: mean_scale`` (x - mean) / scale: the per-dimension mean subtracted and one scalar
  making the centred rows' mean squared norm d (both from ``norm_chunks`` train chunks,
  ``train.data.norm_stats``; ``checkpoint.Normalized`` undoes it for analysis). That is the papers' scaling
  for rows of mean 0 only: centring alone is a shift of b_enc and b_dec (x W_enc + b_enc = (x - m) W_enc +
  b_enc + m W_enc), but the scalar divides by the rows' spread about their mean, not by their norm, so the
  deviations from the mean, which the encoder's directions read, come out larger than under the papers'
  scaling by sqrt(E||x||^2 / E||x - m||^2) (large for a large mean, as residual streams have). SAELens'
  option ``normalize_activations: expected_average_only_in`` scales by one scalar to E||x|| = sqrt(d),
  uncentred.
* lam warm-up: ``lam_warmup_steps`` > 0 raises lam linearly from 0 over that many optimizer steps (lam * s /
  warm at step s, then lam), as Gemma Scope trains (from 0 over its first 10,000 steps) and SAELens'
  ``l0_warm_up_steps`` does. Our default is 0 (off, SAELens' default), not Gemma Scope's 10,000: a short
  run would spend all of its steps in the warm-up. The step count is a buffer (only when the warm-up is
  on, so other checkpoints keep their keys), so a resumed run continues the warm-up.
* Decoder rows are kept at unit norm, the gradient along each row projected out (Gemma Scope's training
  set-up; ``_tied``). Init: W_dec rows uniform on the sphere at unit norm, W_enc = W_dec^T, biases 0
  (``_tied``); Gemma Scope draws W_dec He-uniform before the same normalisation (other directions' law, the
  same norms) and also starts W_enc at W_dec^T, b_enc = b_dec = 0.
* Not done: SAELens' later options from Anthropic's JumpReLU set-up (``jumprelu_sparsity_loss_mode``
  "tanh": a tanh of z * ||W_dec row|| in place of the step, and ``pre_act_loss_coefficient``'s penalty on
  dead latents' pre-activations below theta). Neither is in the paper; SAELens' defaults ("step", None) are
  the paper's loss, which is ours.
* ``Forward.codes`` = z, ``activity`` = log|z|; ``active_side = "high"``.
* A random batch gives log_threshold a zero gradient unless some pre-activation lies within eps/2 of theta:
  the contract test uses a wide bandwidth for that reason.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from actdict.train.protocol import Forward, register
from actdict.train.variants._tied import TiedSAE, sparse_codes, warmed_up


def _kernel(pre: Tensor, theta: Tensor, eps: float) -> Tensor:  # rectangle K((pre - theta) / eps)
    return ((pre - theta).abs() < eps / 2).to(pre.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx, g: Tensor):
        pre, theta = ctx.saved_tensors
        g_theta = -(theta / ctx.eps) * _kernel(pre, theta, ctx.eps) * g  # [B, k]
        return (pre > theta).to(g.dtype) * g, g_theta.sum(0), None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):
        pre, theta = ctx.saved_tensors
        g_theta = -(1.0 / ctx.eps) * _kernel(pre, theta, ctx.eps) * g
        return torch.zeros_like(pre), g_theta.sum(0), None


def jumprelu(pre: Tensor, theta: Tensor, eps: float) -> Tensor:  # pre [B, k], theta [k]
    return _JumpReLU.apply(pre, theta, eps)


def heaviside(pre: Tensor, theta: Tensor, eps: float) -> Tensor:
    return _Step.apply(pre, theta, eps)


@register
class SAEJumpReLU(TiedSAE):
    variant = "sae_jumprelu"
    apply_b_dec_to_input = False
    default_params = {"lam": 1.0, "bandwidth": 0.001, "threshold_init": 0.001, "lam_warmup_steps": 0}
    positive = ("bandwidth", "threshold_init")

    def __init__(self, d: int, k: int, **params) -> None:
        super().__init__(d, k, **params)
        self.log_threshold = nn.Parameter(torch.full((k,), math.log(float(self.params["threshold_init"]))))
        if self.warmup > 0:
            self.register_buffer("steps", torch.tensor(0, dtype=torch.long))

    @property
    def warmup(self) -> int:
        return int(self.params["lam_warmup_steps"])

    def lam_now(self) -> Tensor | float:  # lam * s / warm at step s ([] on the model's device), else lam
        lam = self.params["lam"]
        return warmed_up(lam, self.steps, self.warmup) if self.warmup > 0 else lam

    def forward(self, x: Tensor, sample: bool = True) -> Forward:  # x: [B, d]; deterministic
        pre = torch.relu(self.pre(x))  # [B, k]
        theta = self.log_threshold.exp()  # [k]
        eps = float(self.params["bandwidth"])
        z = jumprelu(pre, theta, eps)  # [B, k]
        return Forward(x_hat=self.decode(z), codes=z, activity=lambda: sparse_codes(z),
                       extras={"l0": heaviside(pre, theta, eps).sum(-1)})

    def loss_terms(self, x: Tensor, out: Forward) -> dict[str, Tensor]:
        sse = (x - out.x_hat).pow(2).sum(-1).mean()
        l0 = out.extras["l0"].mean()
        lam = self.lam_now()
        terms = {"loss": sse + lam * l0, "sse": sse.detach(), "l0": l0.detach()}
        return terms | ({"lam": lam} if self.warmup > 0 else {})

    @torch.no_grad()
    def after_step(self) -> None:
        super().after_step()  # the unit-norm decoder rows
        if self.warmup > 0:
            self.steps.add_(1)

    def to_saelens(self) -> dict:
        return self._saelens("jumprelu", threshold=self.log_threshold.detach().exp().float().cpu())
