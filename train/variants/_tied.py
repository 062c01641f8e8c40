"""Shared machinery of the "modern" SAEs (TopK+AuxK, BatchTopK, JumpReLU, April-2024 L1, SOSAE).

Parameters are named as in SAELens (so export is a copy): ``W_enc`` [d, k], ``b_enc`` [k], ``W_dec`` [k, d],
``b_dec`` [d]. Row i of ``W_dec`` is latent i's dictionary direction.

* pre-activation: pre = (x - b_dec) @ W_enc + b_enc when ``apply_b_dec_to_input`` (Gao et al.'s b_pre tied
  to the decoder bias), else pre = x @ W_enc + b_enc.
* decode(z) = z @ W_dec + b_dec.
* ``init_tied``: W_dec rows drawn uniformly on the sphere and scaled to ``dec_norm``; W_enc = W_dec^T;
  b_enc = b_dec = 0 (the papers' data-dependent b_pre init, e.g. the geometric median, is not done: the
  protocol builds a model before it sees data; the loop's optional input normalisation centres the data).
* ``unit_norm_decoder`` variants keep every W_dec row at unit L2 norm: the component of W_dec's gradient
  parallel to its row is projected out in backward (a tensor hook, Gao et al. / Bussmann et al.), and the
  rows are renormalised in ``after_step`` (the official codes renormalise just before the optimizer step;
  after it is the same constraint one step later). A tensor hook belongs to the Parameter object, and
  ``copy.deepcopy`` or a move that replaces the Parameter (``.to("meta")``) drops it silently, so the hook is
  re-attached after every ``_apply`` (``.to``, ``.cuda``, ``.float``) and every unpickling or deep copy.
* ``DeadTracker``: per-latent count of tokens (or batches) since it last fired, a buffer, so it is saved in
  checkpoints and a resumed run sees the same dead set. Updated only in training mode.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from actdict.config import ConfigError
from actdict.train import dist as dist_
from actdict.train.protocol import Dictionary, Forward
from actdict.train.variants._sparse import Pattern, gather_linear, sparse_forward


class TiedSAE(Dictionary):
    active_side = "high"
    apply_b_dec_to_input: ClassVar[bool] = True
    unit_norm_decoder: ClassVar[bool] = True
    default_params: ClassVar[dict[str, Any]] = {}

    def __init__(self, d: int, k: int, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.default_params))
        if unknown:
            valid = sorted(self.default_params)
            raise ConfigError(f"{self.variant}: unknown params {unknown}; valid: {valid}")
        super().__init__(d, k, **(self.default_params | params))
        self.W_enc = nn.Parameter(torch.empty(d, k))
        self.b_enc = nn.Parameter(torch.zeros(k))
        self.W_dec = nn.Parameter(torch.empty(k, d))
        self.b_dec = nn.Parameter(torch.zeros(d))
        self.init_tied(1.0)
        self._attach_projection()

    def _attach_projection(self) -> None:
        """Hook ``_project_grad`` onto the current W_dec Parameter unless this module's hook is on it."""
        if not self.unit_norm_decoder:
            return
        hooks = (self.W_dec._backward_hooks or {}).values()
        ours = (getattr(h, "__func__", None) is TiedSAE._project_grad and h.__self__ is self for h in hooks)
        if not any(ours):
            self.W_dec.register_hook(self._project_grad)

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(), .float(), ... may replace the Parameter
        out = super()._apply(fn, *args, **kwargs)
        self._attach_projection()
        return out

    def __setstate__(self, state: dict) -> None:  # copy.deepcopy and pickle build new Parameters
        super().__setstate__(state)
        self._attach_projection()

    @torch.no_grad()
    def init_tied(self, dec_norm: float) -> None:
        w = torch.randn(self.k, self.d)  # [k, d]
        self.W_dec.copy_(w / w.norm(dim=-1, keepdim=True) * dec_norm)
        self.W_enc.copy_(self.W_dec.T)

    def _project_grad(self, g: Tensor) -> Tensor:  # g: [k, d] -> [k, d]
        """g - <g, w> w for each decoder row w: the projection off the row only while w has unit norm (a row
        of norm r would lose r^2 times its parallel part), which every path into a backward keeps: the rows
        start at norm 1 (``init_tied(1.0)``; a subclass starting them at another norm sets
        ``unit_norm_decoder`` False, as ``sae_l1_decnorm``), ``after_step`` renormalises them after every
        optimizer step (``step.step``), and a resume loads in place weights saved between steps. A checkpoint
        (``checkpoint.load``, a SAELens import) is never trained further; bf16 autocast casts copies for its
        matmuls, so W_dec and the gradient here stay float32; under torchrun each rank projects its gradient
        of the same W_dec before the average (linear in g). No check here: it would read a value back from
        the device at every backward (a sync on CUDA); ``tests/test_variants_topk.py`` checks these paths."""
        w = self.W_dec.detach()
        return g - (g * w).sum(-1, keepdim=True) * w

    def pre(self, x: Tensor) -> Tensor:  # x: [B, d] -> [B, k]
        return ((x - self.b_dec) if self.apply_b_dec_to_input else x) @ self.W_enc + self.b_enc

    def decode(self, codes: Tensor) -> Tensor:  # [B, k] -> [B, d]
        return codes @ self.W_dec + self.b_dec

    def gather_pre(self, x: Tensor, pre: Tensor, pat: Pattern) -> Tensor:  # -> [N]
        """The pre-activations at the kept entries ``pat`` with the sparse backward (``pre`` [B, k] computed
        without grad by the caller)."""
        c = self.b_dec if self.apply_b_dec_to_input else None
        return gather_linear(x, c, self.W_enc.T, self.b_enc, pre, pat)

    def sparse_forward(self, vals: Tensor, pat: Pattern, extras: dict[str, Tensor]) -> Forward:
        """Forward of a code with only the entries ``pat`` (values vals [N]): x_hat by the sparse decode;
        the dense codes and their activity are built only if analysis reads them (no graph kept)."""
        return sparse_forward(vals, self.W_dec, self.b_dec, pat, extras)

    @torch.no_grad()
    def after_step(self) -> None:
        if self.unit_norm_decoder:
            self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    def to_saelens(self) -> dict[str, Any]:
        """The SAELens view of this model: ``architecture``, tensors ``W_enc`` [d, k], ``b_enc``, ``W_dec``
        [k, d], ``b_dec`` (+ ``threshold`` [k] for jumprelu), ``apply_b_dec_to_input`` and extra cfg fields.
        Variants that do not map raise (see ``actdict.train.export``)."""
        raise NotImplementedError

    def _saelens(self, architecture: str, **extra: Any) -> dict[str, Any]:
        t = {n: getattr(self, n).detach().float().cpu().clone() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
        return {"architecture": architecture, "apply_b_dec_to_input": self.apply_b_dec_to_input, **t, **extra}


def warmed_up(value: float, steps: Tensor, warm: int) -> Tensor:
    """``value`` * min(1, steps / warm) as a [] tensor on ``steps``' device (``warm`` <= 0: ``value``): a loss
    weight warmed up linearly from 0 over the first ``warm`` optimizer steps (``steps`` counts those done),
    read on the device, so no host round trip per step (sae_l1_decnorm's lam, sae_jumprelu's)."""
    frac = (steps / warm).clamp(max=1.0) if warm > 0 else torch.ones((), device=steps.device)
    return float(value) * frac


def sparse_codes(z: Tensor) -> Tensor:  # [B, k] -> log|z| (exact zeros -> -inf: on their rows AD counts L0)
    return z.abs().log()


def fired_latents(cols: Tensor, hit: Tensor, k: int) -> Tensor:  # cols [N] long, hit [N] bool -> [k] bool
    """Latent j fired iff hit[n] for some n with cols[n] == j: an OR by scatter, which unlike indexing with a
    boolean mask reads no count back from the device (a sync per step on CUDA)."""
    return hit.new_zeros(k, dtype=torch.uint8).scatter_reduce_(0, cols, hit.to(torch.uint8), "amax") > 0


class DeadTracker(nn.Module):
    """``since[j]``: units (``"rows"`` or ``"batches"``) since latent j last fired; latents above ``limit``
    are dead. Under torchrun the counts are those of the global batch on every rank: ``fired`` is OR-ed
    over the ranks and, for rows, the amounts summed (one all-reduce of k + 1 values per step)."""

    def __init__(self, k: int, unit: str = "rows") -> None:
        super().__init__()
        self.per_row = unit == "rows"
        self.register_buffer("since", torch.zeros(k, dtype=torch.long))

    @torch.no_grad()
    def update(self, fired: Tensor, amount: int) -> None:  # fired: [k] bool
        if dist_.group_size() > 1:
            buf = dist_.reduce_(torch.cat([fired.float(), fired.new_tensor([amount], dtype=torch.float)]))
            fired, amount = buf[:-1] > 0, int(buf[-1]) if self.per_row else amount
        self.since.add_(amount).masked_fill_(fired, 0)

    def dead(self, limit: int) -> Tensor:  # -> [k] bool
        return self.since > limit
