"""VAE and VAEase: their loss, gradients and variance heads against hand arithmetic."""

import math

import numpy as np
import pytest
import torch

from actdict.train.protocol import make
from tests.variants_helpers import _np


@pytest.mark.parametrize("variant", ["vaease", "vae"])
def test_vae_loss_by_hand(variant, monkeypatch):
    d, k = 3, 2
    m = make(variant, d, k, loggamma_init=-1.5)
    W1 = np.array([[0.5, -0.2, 0.1], [0.3, 0.4, -0.6], [-0.7, 0.2, 0.2], [0.1, 0.1, 0.9]])  # [2k, d]
    b1 = np.array([0.1, -0.1, 0.2, 0.0])
    Wv, bv = np.array([[0.8, -0.3], [0.2, 0.5]]), np.array([-1.0, 0.5])  # [k, k], [k]
    Wd, bd = np.array([[1.0, 0.5], [-0.5, 2.0], [0.3, -1.2]]), np.array([0.05, 0.0, -0.1])  # [d, k], [d]
    with torch.no_grad():
        for lin, (w, b) in ((m.encoder[0], (W1, b1)), (m.var_head, (Wv, bv)), (m.decoder, (Wd, bd))):
            lin.weight.copy_(torch.tensor(w))
            lin.bias.copy_(torch.tensor(b))
    x = np.array([[1.0, -2.0, 0.5], [0.3, 0.2, -1.0]])  # [B=2, d]
    eps = np.array([[0.7, -1.1], [0.2, 0.4]])  # [B, k]

    # independent numpy arithmetic
    pre = x @ W1.T + b1
    h = pre / (1 + np.exp(-pre))  # swish
    mu, s = h[:, :k], h[:, k:]
    var = np.maximum(1 / (1 + np.exp(-(s @ Wv.T + bv))), 1e-7)
    z = mu + np.sqrt(var) * eps
    dec_in = (1 - np.sqrt(var)) * z if variant == "vaease" else z
    x_hat = dec_in @ Wd.T + bd
    lg = -1.5
    per = ((x - x_hat) ** 2).sum(1) / math.exp(lg) + d * lg + d * math.log(2 * math.pi) \
        + (var + mu**2 - np.log(var)).sum(1) - k
    expected = per.mean()

    eps_t = torch.tensor(eps, dtype=torch.float32)
    monkeypatch.setattr(torch, "randn_like", lambda t, *a, **kw: eps_t.to(t.dtype))  # fixed eps
    out = m(torch.tensor(x, dtype=torch.float32), sample=True)
    terms = m.loss_terms(torch.tensor(x, dtype=torch.float32), out)
    assert terms["loss"].item() == pytest.approx(expected, rel=1e-5)
    kl = 0.5 * ((var + mu**2 - np.log(var) - 1).sum(1)).mean()  # KL(N(mu, var) || N(0, 1)), batch mean
    assert terms["kl"].item() == pytest.approx(kl, rel=1e-5)  # the logged KL is the KL, not 2x it
    assert terms["sse"].item() == pytest.approx(((x - x_hat) ** 2).sum(1).mean(), rel=1e-5)
    np.testing.assert_allclose(out.x_hat.detach().numpy(), x_hat, rtol=1e-5, atol=1e-6)
    # extras["dec_in"] is what the decoder read (analysis' masked-dimensions curve edits and decodes it)
    np.testing.assert_allclose(out.extras["dec_in"].detach().numpy(), dec_in, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.decode(out.extras["dec_in"]).detach().numpy(), x_hat, rtol=1e-5, atol=1e-6)
    codes = (1 - np.sqrt(var)) * mu if variant == "vaease" else mu
    np.testing.assert_allclose(out.codes.detach().numpy(), codes, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out.activity.detach().numpy(), np.log(var), rtol=1e-5)
    # the deterministic forward (analysis' "RE det") decodes the posterior mean through the same gate
    det = m(torch.tensor(x, dtype=torch.float32), sample=False)
    np.testing.assert_allclose(det.x_hat.detach().numpy(), codes @ Wd.T + bd, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(det.codes.detach().numpy(), codes, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("variant", ["vaease", "vae"])
def test_logvar_head_clamps_to_the_prior_variance(variant):
    """head="logvar": log var = clamp(Linear(k, k)(s), logvar_min, 0), so var never exceeds the prior's 1."""
    m = make(variant, 3, 4, head="logvar", logvar_min=-5.0)
    with torch.no_grad():
        m.var_head.weight.zero_()
        m.var_head.bias.copy_(torch.tensor([3.0, -0.7, -9.0, 0.0]))
    out = m(torch.randn(2, 3), sample=False)
    want = torch.tensor([0.0, -0.7, -5.0, 0.0]).expand(2, 4)
    torch.testing.assert_close(out.activity, want)
    torch.testing.assert_close(out.extras["var"], want.exp())


@pytest.mark.parametrize("variant", ["vaease", "vae"])
def test_sigmoid_head_floors_the_variance_at_var_min(variant):
    """head="sigmoid": var = clamp(sigmoid(Linear(k, k)(s)), min=var_min): a head driven to sigmoid = 0
    (float32) gives var_min and log(var_min), so the KL term's -log var stays finite."""
    m = make(variant, 3, 4, var_min=1e-5)
    with torch.no_grad():
        m.var_head.weight.zero_()
        m.var_head.bias.copy_(torch.tensor([-200.0, 0.0, -200.0, 3.0]))
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    out = m(x)
    want = torch.tensor([1e-5, 0.5, 1e-5, 1 / (1 + math.exp(-3.0))]).expand(2, 4)
    torch.testing.assert_close(out.extras["var"], want)
    torch.testing.assert_close(out.activity, want.log())
    assert torch.isfinite(m.loss_terms(x, out)["loss"])


@pytest.mark.parametrize("variant", ["vaease", "vae"])
def test_vae_gradients_are_those_of_the_documented_loss(variant, monkeypatch):
    """Every parameter's gradient equals autograd's on the module docstring's 2 x negative ELBO written out
    here in float64 from the model's weights (the loss value alone would not see a term whose gradient is
    lost, e.g. a detached log var in the KL)."""
    import torch.nn.functional as F

    d, k, B = 5, 4, 6
    m = make(variant, d, k, seed=11, loggamma_init=-0.5)
    x = torch.randn(B, d, generator=torch.Generator().manual_seed(12))
    eps = torch.randn(B, k, generator=torch.Generator().manual_seed(13))
    monkeypatch.setattr(torch, "randn_like", lambda t, *a, **kw: eps.to(t.dtype))  # fixed eps
    m.loss_terms(x, m(x, sample=True))["loss"].backward()
    p = {n: t.detach().double().requires_grad_() for n, t in m.named_parameters()}
    xd = x.double()
    h = F.silu(xd @ p["encoder.0.weight"].T + p["encoder.0.bias"])
    mu, s = h[:, :k], h[:, k:]
    var = torch.sigmoid(s @ p["var_head.weight"].T + p["var_head.bias"]).clamp(min=1e-7)
    z = mu + var.sqrt() * eps.double()
    dec_in = (1 - var.sqrt()) * z if variant == "vaease" else z
    x_hat = dec_in @ p["decoder.weight"].T + p["decoder.bias"]
    lg = p["loggamma"]
    loss = (((xd - x_hat) ** 2).sum(1) / lg.exp() + d * lg + d * math.log(2 * math.pi)
            + (var + mu**2 - var.log()).sum(1) - k).mean()
    loss.backward()
    for n, t in m.named_parameters():
        torch.testing.assert_close(t.grad.double(), p[n].grad, rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("head", ["logvar", "clip"])
@pytest.mark.parametrize("variant", ["vaease", "vae"])
def test_log_variance_heads_sample_and_gate_with_the_standard_deviation(variant, head, monkeypatch):
    """The log-variance heads: std = exp(log var / 2) scales the noise, z = mu + std eps, and is VAEase's
    gate, decoder input (1 - std) z and codes (1 - std) mu; not var = exp(log var)."""
    d, k = 3, 4
    m = make(variant, d, k, seed=0, head=head, **({"encoder": "mlp", "hidden": 5} if head == "clip" else {}))
    if head == "logvar":
        with torch.no_grad():
            m.var_head.weight.zero_()
            m.var_head.bias.copy_(torch.tensor([-4.0, -1.0, 0.0, -2.0]))
    x = torch.randn(2, d, generator=torch.Generator().manual_seed(1))
    eps = torch.randn(2, k, generator=torch.Generator().manual_seed(2))
    monkeypatch.setattr(torch, "randn_like", lambda t, *a, **kw: eps.to(t.dtype))  # fixed eps
    with torch.no_grad():
        mu, s = (_np(t) for t in m.encoder(x).chunk(2, dim=-1))  # the body's output, split as documented
    logvar = np.broadcast_to([-4.0, -1.0, 0.0, -2.0], (2, k)) if head == "logvar" else np.minimum(s, 0.0)
    std = np.exp(logvar / 2)
    assert (std < 0.99).any()  # some latent's std differs from its var
    gate = 1 - std if variant == "vaease" else np.ones_like(std)
    dec_in = gate * (mu + std * _np(eps))
    out = m(x, sample=True)
    np.testing.assert_allclose(_np(out.extras["dec_in"]), dec_in, rtol=1e-5, atol=1e-6)
    Wd, bd = _np(m.decoder.weight), _np(m.decoder.bias)
    np.testing.assert_allclose(_np(out.x_hat), dec_in @ Wd.T + bd, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_np(out.codes), gate * mu, rtol=1e-5, atol=1e-6)
    det = m(x, sample=False)
    np.testing.assert_allclose(_np(det.x_hat), (gate * mu) @ Wd.T + bd, rtol=1e-5, atol=1e-6)
