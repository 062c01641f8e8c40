"""What each feature writes to the next-token logits directly (``analyze.logit_effects``): its decoder
direction read through the language model's final norm and unembedding, the "logit lens" of a feature.

For a feature of unit direction u [d] (``analyze.compare.directions``) at a residual-stream hook of a causal
LM, or one added to it (``ADDED``: an attention's or MLP's output, the embedding), the effect on the logits
is ``W_U^T (g * c(u))`` [vocab]: ``c`` centres u when the final norm is a LayerNorm (which subtracts the mean
over d; an RMSNorm does not), ``g`` is that norm's gain (``norm_action`` measures both: Gemma's RMSNorm
scales by 1 + weight; OLMo's and Cohere's LayerNorms centre), and the norm's division by the residual's
scale is left out, as it is the same for every token (it scales the effect, it does not reorder it); so
are Gemma-2's final logit softcap and Cohere's logit_scale (> 0), which keep the order.
This is the direct path only: what the feature adds to the residual at the hook, read as if it reached the
unembedding unchanged. At the last layer that is exact up to that scale; at earlier ones the later blocks
also read the direction, and the effects are a first look, as in the logit lens. At the final norm's output
(``FINAL``) it is ``W_U^T (g * u)``, exact: no centring, no scale (but a logit scale: Cohere's factor). The
``n`` tokens each feature raises most and the ``n`` it lowers most are reported with their effects (in
logits per unit of the residual's scale).
Shapes: k features, d model width, V vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor

RESIDUAL = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post")
ADDED = ("hook_attn_out", "hook_mlp_out", "hook_embed", "hook_pos_embed")
"""Hooks whose activation is added to the residual stream as it is (a pre-norm causal LM: Pythia, GPT-2,
Llama): what a block's attention or MLP, or the embedding, writes; their directions reach the unembedding
by the same direct path as the residual's (the direct logit attribution of a component's output)."""
FINAL = "ln_final.hook_normalized"
"""The final norm's output before its weight: the unembedding reads g * x + b of it, so a direction u there
has the effect W_U^T (g * u) exactly, neither centred nor divided by a scale."""


def not_residual(hook: str, d: int, d_model: int) -> str | None:
    """Why the store's hook ``hook`` of width ``d`` has no direct logit effects, in words; None when it is
    a residual-stream hook, one added to it (``ADDED``) or the final norm's output (``FINAL``), of the
    model's width ``d_model``."""
    if not (hook.endswith(RESIDUAL + ADDED) or hook == FINAL):
        return (f"its hook {hook} is neither in the residual stream ({', '.join(RESIDUAL)}) nor added to it "
                f"({', '.join(ADDED)}) nor the final norm's output ({FINAL}): its directions reach the "
                "unembedding only through weights in between (an MLP's neurons, the attention heads' "
                "hook_z, a norm's scale)")
    if d != d_model:
        return f"its rows have d = {d}, the model's residual stream d_model = {d_model}"
    return None


def no_direct_path(bridge, d_model: int) -> str | None:
    """Why a causal LM's residual stream has no direct path to its unembedding, in words; None for a pre-norm
    model, where every block adds to one residual stream that a final norm reads. A post-LN model (OPT-350m:
    do_layer_norm_before false; GPT-1, whose config has no such flag) closes each block with a LayerNorm
    and has no final norm, so what a block adds or the residual holds reaches the logits only through every
    later norm, which centres and rescales each token by its own residual: W_U^T (g * c(u)) is no effect of
    that model's (GPT-1's were reported as W_U^T u). An unembedding of another width than the residual
    (OPT-350m projects 1024 -> 512 before it) stopped the analysis after its pass on a matrix product that
    did not fit."""
    post_ln = getattr(bridge.cfg, "do_layer_norm_before", True) is False
    if post_ln or getattr(bridge, "ln_final", None) is None:
        return ("its model is post-LN (each block ends in a LayerNorm, and no final norm follows the last: "
                "GPT-1, OPT-350m), so a direction reaches the unembedding only through every later block's "
                "norm, and it has no direct logit effect")
    if (d := bridge.W_U.shape[0]) != d_model:
        return (f"its model's unembedding reads d = {d}, not the residual stream's d_model = {d_model} (a "
                "projection in between, as OPT-350m's project_out)")
    return None


def unembedding(bridge, hook: str | None = None) -> tuple[Tensor, Tensor | None, bool]:
    """(W_U [d, V], the final norm's per-dimension gain [d] or None, whether to centre a direction: the norm
    centres and ``hook`` comes before it, not ``FINAL``) of a TransformerBridge, the norm as it acts
    (``norm_action``), whatever its class."""
    norm = getattr(getattr(bridge, "ln_final", None), "_original_component", None)
    w_u = bridge.W_U.detach().float()
    gain, centres = norm_action(norm, w_u.shape[0])
    return w_u, gain, centres and hook != FINAL


@torch.no_grad()
def norm_action(norm: torch.nn.Module | None, d: int) -> tuple[Tensor | None, bool]:
    """(gain [d], whether it centres) of a final norm as it acts, whatever it stores or subclasses: applied to
    constant vectors of rms 100 (its eps then weighs nothing), a norm that centres (a LayerNorm) gives its
    bias whatever the sign, one that does not (an RMSNorm) gives +-gain (+ bias); applied to a vector e of
    mean 0, rms 100 and no zero entry, it gives gain * e / 100 + bias. So Gemma's RMSNorm has gain
    1 + weight (its stored weight is centred on 0: read as the gain, it made a Gemma model's effects noise),
    and OLMo 1's LayerNorm (F.layer_norm without weights) and Cohere's (a weight, no bias), which are no
    ``torch.nn.LayerNorm``, centre: taken for RMSNorms by their class, OLMo's effects were not centred and
    Cohere's gain was its output for a constant vector, 0. (None, False) without a final norm."""
    if norm is None:
        return None, False
    p = next(norm.parameters(), None)
    dtype, dev = (torch.float32, None) if p is None else (p.dtype, p.device)
    e = torch.arange(d, dtype=torch.float32) % 2 * 2 - 1  # +-1
    e = e - e.mean()  # mean 0 (d odd: +-1 - 1/d), no zero entry
    e = e * 100 / e.pow(2).mean().sqrt()
    probe = torch.stack([torch.full((d,), 100.0), torch.full((d,), -100.0), e])  # [3, d]
    plus, minus, out = norm(probe.to(dtype=dtype, device=dev)).float().cpu()
    bias = (plus + minus) / 2
    centres = bool((plus - minus).abs().max() <= 1e-3 * max(1.0, float(out.abs().max())))
    return (out - bias) * 100 / e, centres


@torch.no_grad()
def logit_effects(unit: Tensor, w_u: Tensor, g: Tensor | None, centre: bool, n: int, chunk: int = 256
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """unit [k, d] directions (a NaN row: a feature without one) -> (ids [k, n] of the tokens each raises
    most, their effects [k, n], ids [k, n] of those it lowers most, their effects [k, n], most negative
    first); -1 and NaN on the rows of features without a direction."""
    k, n, dev = len(unit), min(n, w_u.shape[1]), unit.device
    w_u = w_u.to(dev)
    none, nan = torch.full((k, n), -1, device=dev), torch.full((k, n), torch.nan, device=dev)  # int64, float
    out = [none, nan, none.clone(), nan.clone()]  # up ids [k, n], their effects, down ids, their effects
    for a in range(0, k, chunk):
        u = unit[a:a + chunk]  # [c, d]
        ok = ~u.isnan().any(1)  # [c]
        u = torch.nan_to_num(u)
        if centre:
            u = u - u.mean(1, keepdim=True)
        if g is not None:
            u = u * g.to(u.device)
        eff = u @ w_u  # [c, V]
        up, down = eff.topk(n, dim=1), eff.topk(n, dim=1, largest=False)
        for slot, (vals, ids) in ((0, (up.values, up.indices)), (2, (down.values, down.indices))):
            out[slot][a:a + chunk] = torch.where(ok[:, None], ids, -1)
            out[slot + 1][a:a + chunk] = torch.where(ok[:, None], vals, torch.nan)
    return out[0], out[1], out[2], out[3]


def records(up_ids: Tensor, up: Tensor, down_ids: Tensor, down: Tensor) -> list[dict | None]:
    """Per feature {"up": [[token id, effect]], "down": [[token id, effect]]} (JSON-ready), None for a
    feature without a direction."""
    rows = zip(up_ids.tolist(), up.tolist(), down_ids.tolist(), down.tolist(), strict=True)
    return [{"up": [[i, v] for i, v in zip(ui, uv, strict=True)],
             "down": [[i, v] for i, v in zip(di, dv, strict=True)]} if ui and ui[0] >= 0 else None
            for ui, uv, di, dv in rows]
