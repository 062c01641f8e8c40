"""One fused forward/backward for the linear ReLU SAE with an L1 penalty (the dense training step of
``sae_l1`` and, with per-latent weights s, of ``sae_l1_decnorm``).

    z = relu(x W_e^T + b_e)   [B, k]        x_hat = z W_d^T + b_d   [B, d]        h = sum_j s_j z_j   [B]

(s = 1: h = ||z||_1 since z >= 0; s = the decoder columns' norms: the April-2024 penalty.) Autograd would
keep relu's output, |z|, sign(z), the two partial gradients of z and their sum, each a [B, k] pass; here the
backward is

    g = dL/dx_hat [B, d];  dz = g W_d + dL/dh s^T [B, k];  dpre = dz * (z > 0)  (one threshold_backward)
    dW_e = dpre^T x;  db_e = sum_b dpre;  dW_d = g^T z;  db_d = sum_b g;  ds = z^T dL/dh [k]

so a step makes 4 passes over [B, k] besides the 5 matmuls (measured on 2 CPU cores at d 512, k 4096,
B 4096: 18% faster in float32, where the matmuls are ~90% of the step, 30% in bf16 autocast). Under
autocast the matmuls and the [B, k] tensors are in the autocast dtype (bf16), as autocast would run them;
weights and their gradients stay float32. The reductions over [B, k] (h's row sums, b_e's gradient) run in
that dtype too: the CPU kernels accumulate in float32 and round the result once (<= 0.3% in bf16), while
asking for a float32 result converts the whole [B, k] first (~20 ms each at k 4096, 2 cores). h is
returned as float32; its rounding reaches only the reported loss (dL/dh does not depend on h). Gradients
equal autograd's on the unfused composition (tests/test_fused_l1.py, float64 gradcheck).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _compute_dtype(x: Tensor) -> torch.dtype:
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


def relu_codes(x: Tensor, w_enc: Tensor, b_enc: Tensor) -> Tensor:
    """z = relu(x W_e^T + b_e) [B, k] in the compute dtype (autocast's where it is on), without gradient."""
    dt = _compute_dtype(x)
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        return torch.addmm(b_enc.to(dt), x.to(dt), w_enc.to(dt).t()).relu_()


class _ReluL1SAE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w_enc: Tensor, b_enc: Tensor, w_dec: Tensor, b_dec: Tensor, z: Tensor | None,
                s: Tensor | None):
        dt = _compute_dtype(x)
        wide = torch.float64 if dt == torch.float64 else torch.float32
        with torch.autocast(x.device.type, enabled=False):
            xc, wd = x.to(dt), w_dec.to(dt)  # [B, d], [d, k]
            if z is None:
                z = torch.addmm(b_enc.to(dt), xc, w_enc.to(dt).t()).relu_()  # [B, k]
            x_hat = torch.addmm(b_dec.to(dt), z, wd.t())  # [B, d]
            sc = None if s is None else s.detach().to(dt)  # [k]
            h = (z.sum(-1) if sc is None else torch.mv(z, sc)).to(wide)  # [B]
        ctx.save_for_backward(xc, wd, z, sc)
        ctx.param_dtype = w_enc.dtype
        ctx.mark_non_differentiable(z)
        return x_hat, h, z

    @staticmethod
    def backward(ctx, g_xhat: Tensor | None, g_h: Tensor | None, _g_z: None):
        xc, wd, z, sc = ctx.saved_tensors
        dt = z.dtype
        g = g_xhat.to(dt) if g_xhat is not None else torch.zeros(z.shape[0], wd.shape[0], dtype=dt,
                                                                   device=z.device)  # [B, d]
        dz = g @ wd  # [B, k]
        if g_h is not None and sc is None:
            dz.add_(g_h.to(dt)[:, None])
        elif g_h is not None:
            dz.addr_(g_h.to(dt), sc)  # + dL/dh s^T
        dpre = torch.ops.aten.threshold_backward(dz, z, 0)  # [B, k]: dz where z > 0, else 0
        pt = ctx.param_dtype  # float32 (float64 in gradcheck)
        wide = torch.float64 if pt == torch.float64 else torch.float32
        d_w_enc = (dpre.t() @ xc).to(pt)  # [k, d]
        d_b_enc = dpre.sum(0).to(pt)  # [k]
        d_w_dec = (g.t() @ z).to(pt)  # [d, k]
        d_b_dec = g.sum(0, dtype=wide).to(pt)  # [d]
        d_s = None
        if sc is not None and g_h is not None and ctx.needs_input_grad[6]:
            d_s = torch.mv(z.t(), g_h.to(dt)).to(pt)  # [k]
        return None, d_w_enc, d_b_enc, d_w_dec, d_b_dec, None, d_s


def relu_l1_sae(x: Tensor, w_enc: Tensor, b_enc: Tensor, w_dec: Tensor, b_dec: Tensor,
                z: Tensor | None = None, s: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(x_hat [B, d], h = sum_j s_j z_j per row [B] float32, z [B, k] without gradient) of the linear ReLU
    SAE (w_enc [k, d], b_enc [k], w_dec [d, k], b_dec [d]); gradients reach the four parameters and s (not
    x). ``s`` [k]: per-latent penalty weights (None: all 1, h = ||z||_1), differentiable (a function of the
    weights, e.g. the decoder columns' norms). ``z``: the codes if the caller has them (``relu_codes`` of
    the same arguments): not recomputed."""
    return _ReluL1SAE.apply(x, w_enc, b_enc, w_dec, b_dec, z, s)
