"""Dictionary variants' registry and params: documented defaults, bad params, seeds, normalising."""

import pytest
import torch

from actdict.train import checkpoint
from actdict.train.protocol import is_loss_weight, make, registry


def test_all_models_registered():
    assert {"vaease", "vae", "sae_l1", "sae_log", "sae_topk", "sae_topk_auxk", "sae_batchtopk",
            "sae_jumprelu", "sae_gated", "sae_l1_decnorm", "sae_kl", "sosae", "lse"} <= set(registry())


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
                      "threshold_beta": 0.999, "threshold_skip_steps": 0},
    "sae_jumprelu": {"lam": 1.0, "bandwidth": 1e-3, "threshold_init": 1e-3, "lam_warmup_steps": 0},
    "sae_gated": {"lam": 1.0},
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
            ("sae_l1_decnorm", {"lam_warmup_steps": -5}, "lam_warmup_steps counts steps and must be >= 0"),
            ("sae_batchtopk", {"topk": 2, "threshold_skip_steps": -1}, "threshold_skip_steps counts steps")):
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


@pytest.mark.parametrize("variant", sorted(registry()))
def test_the_seed_sets_the_initialisation(variant):
    a, b, c = (make(variant, 4, 64, seed=s).state_dict() for s in (1, 1, 2))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)
