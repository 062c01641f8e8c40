"""Dictionary variants: losses against hand arithmetic (every variant's contract: test_variant_contract)."""

import copy
import math
import pickle

import numpy as np
import pytest
import torch

from actdict.train import checkpoint
from actdict.train.protocol import is_loss_weight, make, registry


def test_all_models_registered():
    assert {"vaease", "vae", "sae_l1", "sae_log", "sae_topk", "sae_topk_auxk", "sae_batchtopk",
            "sae_jumprelu", "sae_l1_decnorm", "sae_kl", "sosae", "lse"} <= set(registry())


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


def test_normalized_wrapper_round_trip(tmp_path):
    m = make("vaease", 4, 3, seed=0)
    mean, scale = torch.tensor([1.0, -2.0, 0.5, 3.0]), 2.5
    w = checkpoint.Normalized(m, mean, scale)
    x = torch.randn(5, 4) * 3 + mean  # [B, d] raw
    out = w(x, sample=False)
    inner = m((x - mean) / scale, sample=False)
    assert torch.allclose(out.x_hat, inner.x_hat * scale + mean)
    assert torch.isfinite(w.loss_terms(x, w(x))["loss"])
    sae = checkpoint.Normalized(make("sae_l1", 4, 3, seed=0), mean, scale)  # deterministic: same loss
    xn = (x - mean) / scale
    want = sae.inner.loss_terms(xn, sae.inner(xn))
    got = sae.loss_terms(x, sae(x))
    assert got["loss"].item() == pytest.approx(want["loss"].item(), rel=1e-6)
    xn_hat = (sae(x).x_hat.detach() - mean) / scale
    torch.testing.assert_close(sae.decode(sae(x).codes), sae(x).x_hat)  # decode gives raw rows too
    assert got["sse"].item() == pytest.approx(((xn - xn_hat) ** 2).sum(1).mean().item(), rel=1e-5)
    checkpoint.save(tmp_path / "n", w, {})
    w2, cfg = checkpoint.load(tmp_path / "n")
    assert cfg["normalized"] and torch.equal(w2(x, sample=False).x_hat, out.x_hat)


# docs/variants.md's table and the modules' docstrings (the papers' and official codes' values)
DOCUMENTED_DEFAULTS = {
    "vaease": {"loggamma_init": -10.0, "encoder": "linear", "head": "sigmoid", "var_min": 1e-7,
               "logvar_min": -20.0, "decoder": "linear"},
    "vae": {"loggamma_init": -10.0, "encoder": "linear", "head": "sigmoid", "var_min": 1e-7},
    "sae_l1": {"lam1": 0.32, "lam2": 0.2},
    "sae_log": {"lam1": 0.01, "lam2": 0.2, "eps": 1e-4},
    "sae_topk": {"topk": 30, "lam2": 0.0},
    "sae_topk_auxk": {"topk": 32, "k_aux": 256, "auxk_coef": 1 / 32, "dead_tokens": 10_000_000},
    "sae_batchtopk": {"topk": 32, "k_aux": 512, "aux_penalty": 1 / 32, "n_batches_to_dead": 5,
                      "threshold_beta": 0.999},
    "sae_jumprelu": {"lam": 1.0, "bandwidth": 1e-3, "threshold_init": 1e-3},
    "sae_l1_decnorm": {"lam": 5.0, "lam_warmup_steps": 0, "dec_init_norm": 0.1},
    "sae_kl": {"rho": 0.05, "beta": 3.0, "lam": 1e-4},
    "sosae": {"alpha": 1e-3, "lam_push": 1e-3, "lam_jac": 0.0},
    "lse": {"lam_lse": 1.0, "lam_var": 1.0, "lam_tc": 1.0, "lam_wr": 0.0, "var_eps": 1e-6,
            "activation": "relu"},
}


@pytest.mark.parametrize("variant", sorted(DOCUMENTED_DEFAULTS))
def test_defaults_are_the_documented_ones(variant):
    params = make(variant, 4, 64).params
    assert {k: params[k] for k in DOCUMENTED_DEFAULTS[variant]} == DOCUMENTED_DEFAULTS[variant]


def test_bad_params_are_errors():
    with pytest.raises(ValueError, match="unknown params"):
        make("sae_l1", 4, 3, lambda1=0.1)
    with pytest.raises(ValueError, match="unknown params"):
        make("vaease", 4, 3, gamma=0.1)
    with pytest.raises(ValueError, match="topk"):
        make("sae_topk", 4, 3, topk=5)
    with pytest.raises(ValueError, match="unknown dictionary variant"):
        make("nope", 4, 3)
    for variant, params, said in (  # each param of a default's kind, and the positive ones > 0
            ("sae_topk", {"topk": "two"}, "topk must be an integer, got 'two'"),
            ("sae_topk", {"topk": 2.5}, "topk must be an integer, got 2.5"),
            ("sae_topk", {"topk": True}, "topk must be an integer, got True"),
            ("sae_jumprelu", {"bandwidth": 0}, "bandwidth must be > 0, got 0"),
            ("sae_jumprelu", {"threshold_init": -1.0}, "threshold_init must be > 0"),
            ("sae_log", {"eps": float("nan")}, "eps must be a finite number, got nan"),
            ("sae_batchtopk", {"topk": 2, "threshold_beta": 2.0}, r"threshold_beta must be in \[0, 1\)"),
            ("sae_topk_auxk", {"topk": 2, "k_aux": 0}, "k_aux must be > 0"),
            ("vaease", {"loggamma_init": float("inf")}, "loggamma_init must be a finite number"),
            ("vae", {"var_min": 0.0}, "var_min must be > 0"),
            ("lse", {"var_eps": -1.0}, "var_eps must be > 0"), ("lse", {"var_eps": "x"}, "finite number"),
            ("sae_kl", {"rho": "x"}, "rho must be a finite number"),
            ("sae_l1_decnorm", {"lam_warmup_steps": -5}, "lam_warmup_steps counts steps and must be >= 0")):
        with pytest.raises(ValueError, match=said):
            make(variant, 4, 3, **params)
    make("sae_jumprelu", 4, 3, bandwidth=1)  # an integer where a float is the default: a number
    make("sae_topk", 4, 3, topk=2.0)  # an integral float (a YAML 2.0, 1.0e7) where an integer is


@pytest.mark.parametrize("variant", sorted(registry()))
def test_loss_weights_must_be_numbers_at_least_zero(variant):
    """Every variant's loss weights (lam*, alpha, beta, ...) refuse a negative, NaN or string value at
    construction, naming the param; zero is allowed (a term switched off)."""
    weights = [n for n in make(variant, 4, 64).params if is_loss_weight(n)]
    assert weights or variant in ("vae", "vaease")  # the VAEs weigh nothing by hand
    for name in weights:
        make(variant, 4, 64, **{name: 0})
        for bad in (-0.5, float("nan"), "0.1"):
            with pytest.raises(ValueError, match=f"{name} is a loss weight"):
                make(variant, 4, 64, **{name: bad})


# ---- the modern baselines (hand arithmetic in float64 numpy on the models' float32 weights) ----

def _np(t):
    return t.detach().double().numpy()


def _relu(a):
    return np.maximum(a, 0)


def _topk_rows(a, k):  # keep the k largest of each row
    out = np.zeros_like(a)
    idx = np.argsort(-a, axis=1)[:, :k]
    np.put_along_axis(out, idx, np.take_along_axis(a, idx, 1), 1)
    return out


def _nmse(r, t):
    return ((r - t) ** 2).mean() / ((t.mean(0, keepdims=True) - t) ** 2).mean()


@pytest.fixture
def xb():
    return torch.randn(8, 6, generator=torch.Generator().manual_seed(5)) * 1.5  # [B, d]


def test_topk_auxk_loss_by_hand(xb):
    k = 40  # topk 2 of 40 latents on 8 rows: at most 16 fire, so some stale latents stay dead
    since = torch.tensor([0, 500] * 20)
    m = make("sae_topk_auxk", 6, k, seed=1, topk=2, k_aux=4, dead_tokens=100)
    with torch.no_grad():
        m.b_dec.copy_(torch.linspace(-0.5, 0.5, 6))
        m.b_enc.copy_(torch.linspace(-0.2, 0.3, k))
        m.dead.since.copy_(since)
    m.train()
    out = m(xb)
    x, We, be, Wd, bd = _np(xb), _np(m.W_enc), _np(m.b_enc), _np(m.W_dec), _np(m.b_dec)
    pre = (x - bd) @ We + be
    z = _relu(_topk_rows(pre, 2))
    x_hat = z @ Wd + bd
    fired = (z > 1e-3).any(0)
    dead = ~fired & (since.numpy() + 8 > 100)
    assert 0 < dead.sum() < 20
    z_aux = _relu(_topk_rows(pre * dead, 4))
    expected = _nmse(x_hat, x) + _nmse(z_aux @ Wd, x - x_hat) / 32
    terms = m.loss_terms(xb, out)
    assert terms["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert terms["auxk"].item() > 0
    np.testing.assert_allclose(_np(out.codes), z, rtol=1e-5, atol=1e-6)
    assert torch.equal(m.dead.dead(100), torch.from_numpy(dead))
    assert (m.dead.since[torch.from_numpy(fired)] == 0).all()
    # every latent that did not fire waited one more batch of 8 rows (dead_tokens counts rows, not steps)
    assert torch.equal(m.dead.since, torch.where(torch.from_numpy(fired), 0, since + 8))
    terms["loss"].backward()  # the aux loss trains the dead latents' encoder columns
    assert m.W_enc.grad[:, torch.from_numpy(dead)].abs().sum() > 0


@pytest.mark.parametrize("how", ["built", "deepcopy", "pickle", "to_float64", "via_meta"])
def test_unit_norm_decoder_and_gradient_projection(xb, how):
    m = make("sae_topk_auxk", 6, 10, seed=2, topk=3)
    if how == "deepcopy":
        m = copy.deepcopy(m)
    elif how == "pickle":  # what DataParallel-style replication and torch.save of a module do
        m = pickle.loads(pickle.dumps(m))
    elif how == "to_float64":
        m = m.to(torch.float64).to(torch.float32)
    elif how == "via_meta":  # a move that replaces the Parameter objects (as some device moves do)
        state = m.state_dict()
        m = m.to("meta").to_empty(device="cpu")
        m.load_state_dict(state)
    torch.testing.assert_close(m.W_dec.norm(dim=1), torch.ones(10))
    torch.testing.assert_close(m.W_enc, m.W_dec.T)  # encoder init = decoder^T
    m.loss_terms(xb, m(xb))["loss"].backward()
    grad = m.W_dec.grad
    assert grad.abs().max() > 1e-3 and (grad * m.W_dec).sum(1).abs().max() < 1e-6  # none along the rows
    with torch.no_grad():
        m.W_dec.add_(torch.randn(10, 6))
    m.after_step()
    torch.testing.assert_close(m.W_dec.norm(dim=1), torch.ones(10))


def test_batchtopk_by_hand(xb):
    since = torch.tensor([0, 5, 5] * 10)  # 30 latents, at most 16 fire: some stale ones stay dead
    m = make("sae_batchtopk", 6, 30, seed=3, topk=2, n_batches_to_dead=2, k_aux=3, threshold_beta=0.9)
    with torch.no_grad():
        m.b_enc.fill_(0.1)
        m.b_dec.copy_(torch.linspace(-0.3, 0.3, 6))
        m.dead.since.copy_(since)
    m.train()
    out = m(xb)
    x, We, be, Wd, bd = _np(xb), _np(m.W_enc), _np(m.b_enc), _np(m.W_dec), _np(m.b_dec)
    acts = _relu((x - bd) @ We + be)  # [8, 30]
    flat = acts.ravel()
    keep = np.argsort(-flat)[:2 * 8]
    z = np.zeros_like(flat)
    z[keep] = flat[keep]
    z = z.reshape(acts.shape)
    assert (z > 0).sum() == 16  # k * B over the batch, not k per row
    x_hat = z @ Wd + bd
    fired = z.sum(0) > 0
    dead = ~fired & (since.numpy() + 1 >= 2)
    assert 3 < dead.sum() < 20
    a = acts[:, dead]
    x_aux = _topk_rows(a, min(3, dead.sum())) @ Wd[dead]  # no b_dec (official sae.py at b454c16)
    expected = ((x_hat - x) ** 2).mean() + ((x_aux - (x - x_hat)) ** 2).mean() / 32
    assert m.loss_terms(xb, out)["loss"].item() == pytest.approx(expected, rel=1e-5)
    theta1 = z[z > 0].min()
    assert m.threshold.item() == pytest.approx(theta1, rel=1e-6)  # first batch sets theta
    m(xb * 0.5)
    z2 = np.sort(_relu((0.5 * x - bd) @ We + be).ravel())[::-1][:16]
    assert m.threshold.item() == pytest.approx(0.9 * theta1 + 0.1 * z2[z2 > 0].min(), rel=1e-5)
    m.eval()  # inference: one threshold, per-row L0 varies
    ev = m(xb)
    np.testing.assert_allclose(_np(ev.codes), acts * (acts > m.threshold.item()), rtol=1e-5, atol=1e-7)


def test_topk_auxk_dead_means_more_than_dead_tokens_rows(xb):
    """Gao et al.: a latent is dead once it has not fired for more than ``dead_tokens`` tokens: after this
    batch of 8 rows, one idle for 92 rows before it has waited 100 (alive), one idle for 93 is dead."""
    m = make("sae_topk_auxk", 6, 40, seed=1, topk=2, k_aux=4, dead_tokens=100)
    with torch.no_grad():
        m.dead.since.copy_(torch.tensor([92, 93] * 20))
    m.train()
    out = m(xb)
    idle = m.dead.since > 0
    assert idle[0::2].any() and idle[1::2].any()
    assert torch.equal(m.dead.dead(100), idle & (m.dead.since == 101))
    assert m.loss_terms(xb, out)["dead"].item() == (idle & (m.dead.since == 101)).sum().item() > 0
    dead = _np(idle & (m.dead.since == 101)).astype(bool)  # AuxK reads exactly these latents
    pre = (_np(xb) - _np(m.b_dec)) @ _np(m.W_enc) + _np(m.b_enc)
    np.testing.assert_allclose(_np(out.extras["e_hat"]),  # the official decode: with b_pre
                               _relu(_topk_rows(pre * dead, 4)) @ _np(m.W_dec) + _np(m.b_dec), rtol=1e-5,
                               atol=1e-6)


def test_topk_auxk_moves_b_pre_as_the_official_loss(xb):
    """openai/sparse_autoencoder's AuxK is nmse(z_aux @ W_dec + b_pre, e + sg(b_pre)), e = x - sg(x_hat), on
    every step: with no latent dead (z_aux = 0) it still adds -2/(d S) mean_rows(e) / 32 to b_pre's gradient
    (S = the spread of e around its batch mean), and nothing to any other parameter."""
    grads, terms = {}, {}
    for coef in (1 / 32, 0.0):
        m = make("sae_topk_auxk", 6, 12, seed=1, topk=2, auxk_coef=coef)
        with torch.no_grad():
            m.b_dec.copy_(torch.linspace(-0.5, 0.5, 6))
        m.train()
        out = m(xb)
        terms[coef] = m.loss_terms(xb, out)
        terms[coef]["loss"].backward()
        grads[coef] = {n: p.grad.clone() for n, p in m.named_parameters()}
        e = _np(xb) - _np(out.x_hat)
    assert terms[1 / 32]["dead"].item() == 0
    spread = ((e.mean(0) - e) ** 2).mean()
    assert terms[1 / 32]["auxk"].item() == pytest.approx((e ** 2).mean() / spread, rel=1e-5)
    np.testing.assert_allclose(_np(grads[1 / 32]["b_dec"] - grads[0.0]["b_dec"]),
                               -2 / (6 * spread) * e.mean(0) / 32, rtol=1e-4, atol=1e-7)
    for n in grads[0.0]:
        if n != "b_dec":
            torch.testing.assert_close(grads[1 / 32][n], grads[0.0][n])


def test_topk_auxk_a_kept_latent_at_or_below_1e_3_has_not_fired(xb):
    """The official test of firing is z > 1e-3: a latent in every row's top k with z = 5e-4 stays idle."""
    m = make("sae_topk_auxk", 6, 10, seed=1, topk=2, dead_tokens=100)
    with torch.no_grad():
        m.W_enc[:, :2] = 0.0
        m.b_enc.copy_(torch.tensor([1.0, 5e-4] + [-100.0] * 8))  # pre = 1 and 5e-4 on every row (b_dec = 0)
        m.dead.since.fill_(50)
    m.train()
    z = m(xb).codes
    assert (z[:, 0] == 1).all() and torch.allclose(z[:, 1], torch.full((8,), 5e-4))
    assert m.dead.since[:2].tolist() == [0, 58]


@pytest.mark.parametrize("waited", [0, 1])
def test_batchtopk_latent_is_dead_after_n_batches_to_dead(xb, waited):
    """Official BatchTopK: a latent is dead when ``num_batches_not_active >= n_batches_to_dead``; with
    n_batches_to_dead = 2, a latent idle for 1 batch before this one is dead after it, one idle for 0 not."""
    m = make("sae_batchtopk", 6, 30, seed=3, topk=2, n_batches_to_dead=2, k_aux=3)
    with torch.no_grad():
        m.dead.since.fill_(waited)
    m.train()
    out = m(xb)
    idle = m.dead.since > 0  # the latents that did not fire on this batch
    assert torch.equal(m.dead.since, torch.where(idle, waited + 1, 0)) and 0 < idle.sum() < 30
    assert ("x_aux" in out.extras) == (waited == 1)
    assert (m.loss_terms(xb, out)["aux"].item() > 0) == (waited == 1)


def test_batchtopk_threshold_is_the_smallest_positive_kept_value(xb):
    """With fewer than k*B positive activations the batch's top k*B also keeps zeros; theta is set from the
    smallest positive kept value (official ``acts_topk[acts_topk > 0].min()``), not from a zero."""
    m = make("sae_batchtopk", 6, 30, seed=3, topk=2)
    with torch.no_grad():
        m.b_enc.fill_(-100.0)
        m.b_enc[:2] = 0.0  # only latents 0 and 1 can fire: at most 16 = k*B positives, fewer here
    m.train()
    m(xb)
    acts = torch.relu(xb @ m.W_enc + m.b_enc)  # b_dec = 0
    positive = acts[acts > 0]
    assert 0 < len(positive) < 16
    assert m.threshold.item() == pytest.approx(positive.min().item(), rel=1e-6)
    # the top k*B also kept zeros (of latents that cannot fire); only a positive kept value is a firing
    # (official: acts_topk.sum(0) > 0), so every latent without a positive activation waited one batch more
    fired = (acts > 0).any(0)
    assert torch.equal(m.dead.since, torch.where(fired, 0, 1)) and fired.sum() <= 2


def test_jumprelu_loss_and_ste_by_hand(xb):
    eps, lam = 0.8, 0.3
    m = make("sae_jumprelu", 6, 10, seed=4, lam=lam, bandwidth=eps, threshold_init=0.4)
    torch.testing.assert_close(m.log_threshold.exp(), torch.full((10,), 0.4))  # theta_0 = threshold_init
    with torch.no_grad():
        m.log_threshold.add_(torch.linspace(-0.5, 0.5, 10))
        m.b_dec.copy_(torch.linspace(-0.3, 0.3, 6))  # decodes only: pre = x W_enc + b_enc (the pseudo-code)
    out = m(xb)
    terms = m.loss_terms(xb, out)
    x, We, be, Wd, bd = _np(xb), _np(m.W_enc), _np(m.b_enc), _np(m.W_dec), _np(m.b_dec)
    theta = np.exp(_np(m.log_threshold))
    pre = _relu(x @ We + be)
    z = pre * (pre > theta)
    x_hat = z @ Wd + bd
    B = len(x)
    expected = ((x - x_hat) ** 2).sum(1).mean() + lam * (pre > theta).sum(1).mean()
    assert terms["loss"].item() == pytest.approx(expected, rel=1e-5)
    terms["loss"].backward()
    # straight-through gradient of log theta: theta * dL/dtheta with the rectangle kernel
    K = (np.abs(pre - theta) < eps / 2).astype(float)
    g_z = 2 * (x_hat - x) @ Wd.T / B  # dL/dz
    d_theta = (-(theta / eps) * K * g_z).sum(0) + lam * (-(1 / eps) * K).sum(0) / B
    assert K.sum() > 0
    np.testing.assert_allclose(_np(m.log_threshold.grad), theta * d_theta, rtol=1e-4, atol=1e-6)
    # the encoder learns from reconstruction only: d JumpReLU / d pre = H(pre - theta), d H / d pre = 0
    g_pre = g_z * (pre > theta)  # [B, k]; pre > theta > 0 implies the relu is open
    assert 0 < (pre > theta).sum() < (pre > 0).sum()  # some open relus are below their threshold
    np.testing.assert_allclose(_np(m.b_enc.grad), g_pre.sum(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(_np(m.W_enc.grad), x.T @ g_pre, rtol=1e-4, atol=1e-6)


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


@pytest.mark.parametrize("variant", sorted(registry()))
def test_the_seed_sets_the_initialisation(variant):
    a, b, c = (make(variant, 4, 64, seed=s).state_dict() for s in (1, 1, 2))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)


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


def test_batchtopk_inference_keeps_only_activations_above_theta(xb):
    """Eval mode: z = acts * (acts > theta), strictly (the official code; the exported JumpReLU's test too):
    an activation equal to theta is off. Here acts = relu(b_enc) on every row."""
    m = make("sae_batchtopk", 6, 4, seed=3, topk=1)
    with torch.no_grad():
        m.W_enc.zero_()
        m.b_enc.copy_(torch.tensor([0.25, 0.5, 0.75, -1.0]))
        m.b_dec.copy_(torch.linspace(-0.5, 0.5, 6))
        m.threshold.fill_(0.5)
    m.eval()
    out = m(xb)
    z = np.array([0.0, 0.0, 0.75, 0.0])
    np.testing.assert_array_equal(_np(out.codes), np.broadcast_to(z, (8, 4)))
    x_hat = z @ _np(m.W_dec) + _np(m.b_dec)
    np.testing.assert_allclose(_np(out.x_hat), np.broadcast_to(x_hat, (8, 6)), rtol=1e-6, atol=1e-7)


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


def test_topk_auxk_attribution_path_applies_relu_to_the_kept_pre_activations(xb):
    """Eval mode with an input that wants its gradient (attribution) runs the dense composition: z =
    relu(TopK(pre)). Rows here have fewer positive pre-activations than topk = 4, so a kept negative one
    would show; the codes and x_hat equal those of the no-grad forward."""
    m = make("sae_topk_auxk", 6, 10, seed=1, topk=4).eval()
    with torch.no_grad():
        m.b_enc.copy_(torch.tensor([0.5, 0.5] + [-3.0] * 8))
        m.b_dec.copy_(torch.linspace(-0.5, 0.5, 6))
    x, We, be, Wd, bd = _np(xb), _np(m.W_enc), _np(m.b_enc), _np(m.W_dec), _np(m.b_dec)
    pre = (x - bd) @ We + be
    assert ((pre > 0).sum(1) < 4).any()
    z = _relu(_topk_rows(pre, 4))
    for inp in (xb, xb.clone().requires_grad_()):
        out = m(inp)
        np.testing.assert_allclose(_np(out.codes), z, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(_np(out.x_hat), z @ Wd + bd, rtol=1e-5, atol=1e-5)


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
