"""The penalty SAEs (L1, log, TopK, L1-decnorm, KL, SOSAE) and LSE against hand arithmetic."""

import math

import numpy as np
import pytest
import torch

from actdict.train.protocol import make
from tests import variants_helpers
from tests.variants_helpers import _np, _relu, _topk_rows

xb = variants_helpers.xb  # a fixture: the tests below take it as an argument


def test_sae_losses_by_hand():
    torch.manual_seed(0)
    x = torch.randn(4, 6)  # [B, d]
    for variant, lam1 in (("sae_l1", 0.3), ("sae_log", 0.02)):
        m = make(variant, 6, 5, lam1=lam1, lam2=0.1)
        out = m(x)
        z = torch.relu(x @ m.encoder.weight.T + m.encoder.bias)  # [B, k]
        h = z.abs().sum(1) if variant == "sae_l1" else (z.abs() + 1e-4).log().sum(1)
        wd = m.decoder.weight.pow(2).sum() + m.decoder.bias.pow(2).sum()
        expected = ((x - out.x_hat) ** 2).sum(1).mean() + lam1 * h.mean() + 0.1 * wd
        assert m.loss_terms(x, out)["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
        assert torch.equal(out.activity, z.abs().log())
    m = make("sae_topk", 6, 5, topk=2)
    z = m(x).codes
    assert ((z != 0).sum(1) <= 2).all()
    full = torch.relu(m.encoder(x))
    assert torch.allclose(z.sum(1), full.topk(2, dim=1).values.sum(1))


def test_sae_penalty_gradients_are_those_of_the_documented_loss():
    """sae_l1 / sae_log: the gradients of the fused or sparse training step equal autograd's on eq. 1
    written out here (float64): SSE + lam1 h(z) + lam2 (||W_dec||^2 + ||b_dec||^2), h = sum |z| or
    sum log(|z| + eps)."""
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(3)) * 2
    for variant, lam1 in (("sae_l1", 0.7), ("sae_log", 0.3)):
        m = make(variant, 6, 5, seed=4, lam1=lam1, lam2=0.1)
        m.loss_terms(x, m(x))["loss"].backward()
        p = {n: t.detach().double().requires_grad_() for n, t in m.named_parameters()}
        z = torch.relu(x.double() @ p["encoder.weight"].T + p["encoder.bias"])
        h = z.abs().sum(1) if variant == "sae_l1" else (z.abs() + 1e-4).log().sum(1)
        x_hat = z @ p["decoder.weight"].T + p["decoder.bias"]
        wd = p["decoder.weight"].pow(2).sum() + p["decoder.bias"].pow(2).sum()
        (((x.double() - x_hat) ** 2).sum(1).mean() + lam1 * h.mean() + 0.1 * wd).backward()
        for n, t in m.named_parameters():
            torch.testing.assert_close(t.grad.double(), p[n].grad, rtol=1e-4, atol=1e-5, msg=f"{variant} {n}")


def test_sae_topk_by_hand_on_rows_with_fewer_positive_codes_than_topk(xb):
    """sae_topk: z = the topk largest of relu(pre) per row, and at the default lam2 = 0 the loss is the SSE
    alone (no decoder penalty, penalty 0). Every row here has fewer than topk = 4 positive pre-activations,
    so a negative pre-activation kept without its relu would show, on the training (sparse) path and on
    the dense one (an input that wants its gradient)."""
    m = make("sae_topk", 6, 10, seed=9, topk=4)
    with torch.no_grad():
        m.encoder.bias.copy_(torch.tensor([0.5, 0.5] + [-20.0] * 8))  # at most 2 positive per row
        m.decoder.bias.copy_(torch.linspace(-1, 1, 6))
    x, We, be = _np(xb), _np(m.encoder.weight), _np(m.encoder.bias)
    Wd, bd = _np(m.decoder.weight), _np(m.decoder.bias)
    pre = x @ We.T + be
    assert ((pre > 0).sum(1) <= 2).all() and (pre > 0).sum() > 4
    z = _topk_rows(_relu(pre), 4)
    x_hat = z @ Wd.T + bd
    for inp in (xb, xb.clone().requires_grad_()):
        out = m(inp)
        terms = m.loss_terms(inp, out)
        np.testing.assert_allclose(_np(out.codes), z, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(_np(out.x_hat), x_hat, rtol=1e-5, atol=1e-5)
        assert terms["loss"].item() == pytest.approx(((x - x_hat) ** 2).sum(1).mean(), rel=1e-5)
        assert terms["penalty"].item() == 0


def test_l1_decnorm_by_hand_with_warmup(xb):
    m = make("sae_l1_decnorm", 6, 10, seed=5, lam=2.0, lam_warmup_steps=4)
    torch.testing.assert_close(m.W_dec.norm(dim=1), torch.full((10,), 0.1))
    with torch.no_grad():
        m.W_dec.mul_(torch.linspace(0.5, 3.0, 10)[:, None])  # decoder norms are free
    for step in range(6):
        out = m(xb)
        x, We, be, Wd, bd = _np(xb), _np(m.W_enc), _np(m.b_enc), _np(m.W_dec), _np(m.b_dec)
        f = _relu(x @ We + be)
        lam = 2.0 * min(1.0, step / 4)
        pen = (f * np.linalg.norm(Wd, axis=1)).sum(1).mean()
        expected = ((x - (f @ Wd + bd)) ** 2).sum(1).mean() + lam * pen
        assert m.loss_terms(xb, out)["loss"].item() == pytest.approx(expected, rel=1e-5)
        with torch.no_grad():  # the plain (analysis) forward: the same codes, the same loss
            plain = m(xb)
            assert m.loss_terms(xb, plain)["loss"].item() == pytest.approx(expected, rel=1e-5)
        np.testing.assert_allclose(_np(plain.codes), f, rtol=1e-5, atol=1e-6)
        norms = m.W_dec.norm(dim=1).clone()
        m.after_step()
        assert torch.equal(m.W_dec.norm(dim=1), norms)  # no renormalisation


def test_kl_sparsity_by_hand(xb):
    m = make("sae_kl", 6, 10, seed=6, rho=0.1, beta=2.0, lam=0.01)
    out = m(xb)
    x = _np(xb)
    W1, b1, W2, b2 = (_np(t) for t in (m.encoder.weight, m.encoder.bias, m.decoder.weight, m.decoder.bias))
    h = 1 / (1 + np.exp(-(x @ W1.T + b1)))
    q = h.mean(0)
    kl = (0.1 * np.log(0.1 / q) + 0.9 * np.log(0.9 / (1 - q))).sum()
    expected = 0.5 * ((x - (h @ W2.T + b2)) ** 2).sum(1).mean() + 0.005 * ((W1**2).sum() + (W2**2).sum()) \
        + 2.0 * kl
    assert m.loss_terms(xb, out)["loss"].item() == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(_np(out.activity), np.log(h), rtol=1e-5)
    r = math.sqrt(6 / (6 + 10 + 1))  # UFLDL init range
    assert m.encoder.weight.abs().max() <= r and m.encoder.bias.abs().sum() == 0


def test_kl_sparsity_clamps_rho_hat_and_decays_weights_not_biases(xb):
    """rho_hat is clamped to [1e-6, 1 - 1e-6] (a unit on, or off, on every row gives a large finite KL), and
    the weight decay is (lam / 2)(||W1||^2 + ||W2||^2): the biases are not decayed."""
    m = make("sae_kl", 6, 4, seed=6, rho=0.1, beta=1.0, lam=0.5)
    with torch.no_grad():
        m.encoder.weight.zero_()
        m.encoder.bias.copy_(torch.tensor([100.0, -100.0, 0.0, 0.0]))  # h = 1, ~0, 1/2, 1/2 on every row
        m.decoder.bias.copy_(torch.linspace(-2, 2, 6))
    terms = m.loss_terms(xb, m(xb))

    def kl(q):
        return 0.1 * math.log(0.1 / q) + 0.9 * math.log(0.9 / (1 - q))

    high = float(np.float32(1 - 1e-6))  # the clamp's upper bound as a float32
    assert terms["kl"].item() == pytest.approx(kl(high) + kl(1e-6) + 2 * kl(0.5), rel=1e-4)
    W2, b2 = _np(m.decoder.weight), _np(m.decoder.bias)
    x_hat = np.array([1.0, 0.0, 0.5, 0.5]) @ W2.T + b2  # the same h on every row
    assert terms["weight_sq"].item() == pytest.approx((W2**2).sum(), rel=1e-6)
    expected = 0.5 * ((_np(xb) - x_hat) ** 2).sum(1).mean() + 0.25 * (W2**2).sum() + terms["kl"].item()
    assert terms["loss"].item() == pytest.approx(expected, rel=1e-5)


def test_sosae_push_loss_and_truncation(xb):
    from actdict.train.variants.sosae import active_length, truncate

    m = make("sosae", 6, 10, seed=7, alpha=0.5, lam_push=0.1, lam_jac=0.05)
    out = m(xb)
    x, We, be, Wd, bd = _np(xb), _np(m.W_enc), _np(m.b_enc), _np(m.W_dec), _np(m.b_dec)
    h = _relu(x @ We + be)
    push = (h * 1.5 ** np.arange(10)).sum(1).mean()
    jac = ((h > 0) * (We**2).sum(0)).sum(1).mean()
    expected = ((x - (h @ Wd + bd)) ** 2).sum(1).mean() + 0.1 * push + 0.05 * jac
    assert m.loss_terms(xb, out)["loss"].item() == pytest.approx(expected, rel=1e-5)
    with torch.no_grad():  # make the last 4 latents inactive on this batch
        m.b_enc[6:] = -100.0
    n = active_length(m(xb).codes)
    assert n <= 6
    short = truncate(m, n)
    assert short.k == n
    torch.testing.assert_close(short(xb).x_hat, m(xb).x_hat)
    from actdict.train.checkpoint import Normalized  # a mean_scale checkpoint is loaded wrapped

    wrapped = Normalized(m, torch.linspace(-1, 1, 6), 3.0)
    short = truncate(wrapped, n)
    assert isinstance(short, Normalized) and short.k == n and float(short.norm_scale) == 3.0
    torch.testing.assert_close(short(xb).x_hat, wrapped(xb).x_hat)
    with pytest.raises(ValueError, match="alpha"):
        make("sosae", 6, 100_000, alpha=0.01)


def test_sosae_gradients_are_those_of_the_documented_loss(xb):
    """Gradients equal autograd's on the docstring's loss written out here (float64): SSE + lam_push
    sum_j (1 + alpha)^j h_j + lam_jac sum_j 1[h_j > 0] ||W_enc[:, j]||^2 (the Jacobian term trains W_enc
    too)."""
    m = make("sosae", 6, 10, seed=7, alpha=0.5, lam_push=0.1, lam_jac=0.05)
    m.loss_terms(xb, m(xb))["loss"].backward()
    p = {n: t.detach().double().requires_grad_() for n, t in m.named_parameters()}
    h = torch.relu(xb.double() @ p["W_enc"] + p["b_enc"])  # [B, k]
    x_hat = h @ p["W_dec"] + p["b_dec"]
    push = (h * 1.5 ** torch.arange(10, dtype=torch.float64)).sum(1).mean()
    jac = ((h > 0).double() * p["W_enc"].pow(2).sum(0)).sum(1).mean()
    (((xb.double() - x_hat) ** 2).sum(1).mean() + 0.1 * push + 0.05 * jac).backward()
    for n, t in m.named_parameters():
        torch.testing.assert_close(t.grad.double(), p[n].grad, rtol=1e-4, atol=1e-6, msg=n)


def test_lse_loss_is_finite_with_a_dead_latent(xb):
    """A latent at zero on the whole batch has zero variance: its correlations are 0 / (0 + 1e-8) = 0 (the
    official e.std(0) + 1e-8), not NaN."""
    m = make("lse", 6, 10, seed=8, lam_var=0.5, lam_tc=2.0)
    with torch.no_grad():
        m.linear.bias[3] = -1e3  # relu(...) = 0 on every row
    out = m(xb)
    terms = m.loss_terms(xb, out)
    e = _np(out.codes)
    assert (e[:, 3] == 0).all() and torch.isfinite(terms["loss"])
    live = np.delete(e, 3, axis=1)
    corr = np.corrcoef(live.T)
    assert terms["tc"].item() == pytest.approx((corr**2).sum() - len(corr), rel=1e-4)


def test_lse_loss_by_hand(xb):
    m = make("lse", 6, 10, seed=8, lam_var=0.5, lam_tc=2.0, lam_wr=0.1)
    out = m(xb)
    x, W, b = _np(xb), _np(m.linear.weight), _np(m.linear.bias)
    e = _relu(x @ W.T + b)
    lse = -np.log(np.exp(-e).sum(1)).sum()
    var = -np.log(e.var(0, ddof=1) + 1e-6).sum()
    corr = np.cov(e.T) / np.outer(e.std(0, ddof=1) + 1e-8, e.std(0, ddof=1) + 1e-8)
    tc = (corr**2).sum() - (np.diag(corr) ** 2).sum()
    wn = W / (np.linalg.norm(W, axis=1, keepdims=True) + 1e-8)
    wr = ((wn @ wn.T - np.eye(10)) ** 2).sum()
    expected = lse + 0.5 * var + 2.0 * tc + 0.1 * wr
    assert m.loss_terms(xb, out)["loss"].item() == pytest.approx(expected, rel=1e-4)
    np.testing.assert_allclose(_np(out.x_hat), e @ W, rtol=1e-5, atol=1e-6)  # W^T pseudo-decoder
    # the paper's identity: d(-sum logsumexp(-E)) / dE = softmax(-E), the responsibilities
    E = torch.tensor(e, requires_grad=True)
    (-torch.logsumexp(-E, 1).sum()).backward()
    np.testing.assert_allclose(E.grad.numpy(), np.exp(-e) / np.exp(-e).sum(1, keepdims=True), rtol=1e-10)


def test_sae_topk_dense_path_keeps_topk_codes_per_row(xb):
    """The dense composition (an input that wants its gradient; a deep encoder) keeps the topk largest of
    relu(pre) per row, as the sparse training path does. Every row here has more than topk = 3 positive
    pre-activations, so keeping one code more or fewer would show."""
    m = make("sae_topk", 6, 10, seed=9, topk=3)
    with torch.no_grad():
        m.encoder.bias.fill_(1.0)
    x, We, be = _np(xb), _np(m.encoder.weight), _np(m.encoder.bias)
    pre = x @ We.T + be
    assert ((pre > 0).sum(1) > 3).all()
    z = _topk_rows(_relu(pre), 3)
    x_hat = z @ _np(m.decoder.weight).T + _np(m.decoder.bias)
    for inp in (xb, xb.clone().requires_grad_()):  # the sparse path, then the dense one
        out = m(inp)
        np.testing.assert_allclose(_np(out.codes), z, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(_np(out.x_hat), x_hat, rtol=1e-5, atol=1e-5)
    deep = make("sae_topk", 6, 10, seed=9, topk=3, encoder="mlp", hidden=8)
    with torch.no_grad():
        deep.encoder[-1].bias.fill_(5.0)  # every code positive: the top 3 of 10 are kept
        full = _relu(_np(deep.encoder(xb)))  # the body's output, then the documented relu and top 3
    assert ((full > 0).sum(1) > 3).all()
    np.testing.assert_allclose(_np(deep(xb).codes), _topk_rows(full, 3), rtol=1e-6, atol=1e-7)


def test_lse_gradient_is_finite_when_the_batch_rows_are_all_alike():
    """Rows all alike (an all-zero batch, duplicated vectors): every energy is constant over the batch, its
    variance 0 (or rounding's). The loss is finite, and so must its gradient be: sqrt's at 0 was inf, times
    a zero upstream gradient NaN, and training stopped one step later with a non-finite loss."""
    for x in (torch.zeros(8, 4), torch.tensor([[0.5, -1.0, 2.0, 0.1]]).repeat(8, 1)):
        m = make("lse", 4, 6, seed=0)
        opt = torch.optim.Adam(m.parameters(), lr=0.005)
        for _ in range(3):
            opt.zero_grad()
            terms = m.loss_terms(x, m(x))
            assert all(torch.isfinite(t).all() for t in terms.values())
            terms["loss"].backward()
            assert all(torch.isfinite(p.grad).all() for p in m.parameters())
            opt.step()
