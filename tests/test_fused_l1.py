"""sae_l1's fused training step (train/variants/_fused_l1.py) against autograd on the plain composition."""

import pytest
import torch

from actdict.train.protocol import make
from actdict.train.variants._fused_l1 import relu_l1_sae


def _plain(x, w_enc, b_enc, w_dec, b_dec):
    z = torch.relu(x @ w_enc.T + b_enc)  # [B, k]
    return z @ w_dec.T + b_dec, z.abs().sum(-1), z


def _params(d=6, k=9, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(k, d), (k,), (d, k), (d,)]
    return [torch.randn(*s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


def test_gradcheck_float64():
    """Both outputs' gradients (x_hat and h) reach every parameter exactly as the derivative says."""
    x = torch.randn(7, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ps = _params()
    torch.autograd.gradcheck(lambda *p: relu_l1_sae(x, *p)[:2], ps)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_equals_autograd_on_the_plain_composition(dtype):
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(2), dtype=dtype) * 2
    w = torch.randn(6, generator=torch.Generator().manual_seed(3), dtype=dtype)
    grads, outs = [], []
    for fn in (_plain, relu_l1_sae):
        ps = _params(dtype=dtype)
        x_hat, h, z = fn(x, *ps)
        ((x - x_hat).pow(2).sum() + 0.3 * h.sum() + (x_hat * w).sum()).backward()
        grads.append([p.grad for p in ps])
        outs.append((x_hat.detach(), h.detach(), z.detach()))
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    for a, b in zip(outs[0], outs[1], strict=True):
        torch.testing.assert_close(b, a, **tol)
    assert (outs[0][2] == 0).float().mean() > 0.2  # the ReLU mask matters in this test
    for a, b in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(b, a, **tol)


def test_sae_l1_trains_the_same_with_and_without_the_fused_step(monkeypatch):
    """Five Adam steps of sae_l1 (fused, the default) end where the plain autograd path ends."""
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(4)) * 2
    ends = []
    for fused in (True, False):
        m = make("sae_l1", 8, 16, seed=5, lam1=0.05, lam2=0.01)
        if not fused:  # the parent class's forward: plain z, penalty from extras["z"]
            monkeypatch.setattr(type(m), "forward", type(m).__mro__[1].forward)
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        for _ in range(5):
            out = m(x)
            assert ("h" in out.extras) == fused
            terms = m.loss_terms(x, out.float())
            opt.zero_grad()
            terms["loss"].backward()
            opt.step()
        ends.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        monkeypatch.undo()
    for k, v in ends[0].items():
        torch.testing.assert_close(v, ends[1][k], rtol=1e-5, atol=1e-6, msg=k)
    start = make("sae_l1", 8, 16, seed=5).state_dict()["encoder.weight"]
    assert not torch.allclose(ends[0]["encoder.weight"], start)  # the steps moved it


def test_no_grad_forward_is_the_plain_one():
    m = make("sae_l1", 8, 16, seed=6)
    x = torch.randn(5, 8)
    with torch.no_grad():
        out = m(x)
    assert "z" in out.extras and "h" not in out.extras
    torch.testing.assert_close(m(x).x_hat.detach(), out.x_hat)


L1_PARAMS = {"sae_l1": {"lam1": 0.05, "lam2": 0.01}, "sae_l1_decnorm": {"lam": 0.05},
             "sae_log": {"lam1": 0.05, "lam2": 0.01}}


def _sparse_l1(variant="sae_l1", d=16, k=64, density=0.03, seed=7):
    """A ``variant`` with the encoder bias lowered so that ~``density`` of the codes of x are nonzero; x."""
    x = torch.randn(256, d, generator=torch.Generator().manual_seed(seed))
    m = make(variant, d, k, seed=seed, **L1_PARAMS[variant])
    bias, pre = (m.encoder.bias, m.encoder) if hasattr(m, "encoder") else (m.b_enc, m.pre)
    with torch.no_grad():
        bias -= torch.quantile(pre(x).flatten(), 1 - density)
    return m, x


def _step(m, x, below, monkeypatch, autocast=False):
    """(loss, penalty, codes, grads) of one training forward/backward with the sparse step
    below ``below``; also whether the sparse step ran."""
    cls = type(m)
    calls = []
    real = cls.sparse_forward
    monkeypatch.setattr(cls, "sparse_below", {"cpu": below})
    monkeypatch.setattr(cls, "sparse_forward", lambda self, *a: calls.append(1) or real(self, *a))
    m.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = m(x)
        terms = m.loss_terms(x, out)
    terms["loss"].backward()
    monkeypatch.undo()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    return terms["loss"].detach(), terms["penalty"], out.codes.detach(), grads, bool(calls)


@pytest.mark.parametrize("variant", ["sae_l1", "sae_l1_decnorm", "sae_log"])
def test_sparse_step_equals_the_dense_one(monkeypatch, variant):
    """Below the density threshold the step runs on the nonzero codes only (Pattern, gather_linear,
    sparse_decode): same loss, penalty, codes and gradients as the dense step (fused for the L1 SAEs, autograd
    for sae_log, whose zero codes each add log(eps) to the penalty)."""
    m, x = _sparse_l1(variant)
    sparse = _step(m, x, 1.0, monkeypatch)
    dense = _step(m, x, 0.0, monkeypatch)
    assert sparse[4] and not dense[4]
    density = float((dense[2] != 0).float().mean())
    assert 0.02 < density < 0.04 and (dense[2] != 0).sum(-1).max() > 0  # sparse, yet codes to decode
    for a, b in zip(sparse[:3], dense[:3], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for name, g in dense[3].items():
        assert g.abs().sum() > 0, name  # every parameter gets a gradient
        torch.testing.assert_close(sparse[3][name], g, rtol=1e-4, atol=1e-5, msg=name)


def test_the_step_is_chosen_by_the_codes_density(monkeypatch):
    """The default threshold (5% on the CPU): a fresh SAE (about half its codes on) takes the dense step, a
    sparse one the sparse step; under bf16 autocast the two agree to bf16 rounding."""
    m, x = _sparse_l1(density=0.5)
    assert not _step(m, x, make("sae_l1", 4, 4).sparse_below["cpu"], monkeypatch)[4]
    m, x = _sparse_l1(density=0.02)
    default = make("sae_l1", 4, 4).sparse_below["cpu"]
    sparse = _step(m, x, default, monkeypatch, autocast=True)
    dense = _step(m, x, 0.0, monkeypatch, autocast=True)
    assert sparse[4] and not dense[4]
    torch.testing.assert_close(sparse[0], dense[0], rtol=2e-2, atol=1e-2)
    for name, g in dense[3].items():
        torch.testing.assert_close(sparse[3][name], g, rtol=5e-2, atol=5e-2, msg=name)


def test_gradcheck_with_per_latent_weights_float64():
    """h = sum_j s_j z_j: gradients reach the four parameters and s."""
    x = torch.randn(7, 6, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    ps = _params(seed=9)
    s = torch.rand(9, generator=torch.Generator().manual_seed(10), dtype=torch.float64) + 0.5  # [k]
    s.requires_grad_()
    torch.autograd.gradcheck(lambda *p: relu_l1_sae(x, *p[:4], None, p[4])[:2], [*ps, s])


def test_decnorm_training_step_equals_autograd_on_the_plain_composition(monkeypatch):
    """sae_l1_decnorm's fused dense step (weights = the decoder rows' norms, which W_dec's gradient goes
    through) against autograd on f = relu(x W_enc + b_enc), the April-2024 loss written out."""
    m, x = _sparse_l1("sae_l1_decnorm", density=0.4)
    loss, _, codes, grads, sparse = _step(m, x, 0.0, monkeypatch)
    assert not sparse
    ps = {n: p.detach().clone().requires_grad_() for n, p in m.named_parameters()}
    f = torch.relu(x @ ps["W_enc"] + ps["b_enc"])  # [B, k]
    x_hat = f @ ps["W_dec"] + ps["b_dec"]
    plain = (x - x_hat).pow(2).sum(-1).mean() + 0.05 * (f * ps["W_dec"].norm(dim=-1)).sum(-1).mean()
    plain.backward()
    torch.testing.assert_close(loss, plain.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(codes, f.detach())
    for name, p in ps.items():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_count_nonzero_bits_counts_the_nonzero_codes(dtype):
    from actdict.train.variants._sparse import count_nonzero_bits

    z = torch.randn(64, 48, generator=torch.Generator().manual_seed(11)).relu_().to(dtype)  # [B, k]
    z[3] = 0  # an empty row
    assert count_nonzero_bits(z) == int(torch.count_nonzero(z)) == int((z.float() > 0).sum())
    assert 0.3 < count_nonzero_bits(z) / z.numel() < 0.6
