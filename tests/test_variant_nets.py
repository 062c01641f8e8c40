"""The App. D.2 bodies (``encoder: mlp | resmlp``, ``decoder: mlp``) of SAE and VAE variants."""

import pytest
import torch
from torch import nn

from actdict.config import ConfigError
from actdict.train.protocol import make
from actdict.train.variants._nets import ResBlock, res_mlp


def test_resblock_is_identity_plus_three_layer_body():
    blk = ResBlock(6)
    lins = [m for m in blk.body if isinstance(m, nn.Linear)]
    assert len(lins) == 3 and all(m.weight.shape == (6, 6) for m in lins)
    h = torch.randn(5, 6)
    with torch.no_grad():
        lins[-1].weight.zero_()
        lins[-1].bias.zero_()
    assert torch.equal(blk(h), h)
    net = res_mlp(10, 4, 16)
    assert sum(isinstance(m, ResBlock) for m in net) == 3 and net(torch.randn(2, 10)).shape == (2, 4)


@pytest.mark.parametrize("variant", ["sae_l1", "sae_log", "sae_topk", "vae", "vaease"])
def test_deep_bodies_shapes_widths_and_decode(variant):
    d, k = 12, 6
    params = {"topk": 2} if variant == "sae_topk" else {}
    m = make(variant, d, k, seed=0, encoder="resmlp", decoder="mlp", **params)
    hidden = [mod.out_features for mod in m.encoder if isinstance(mod, nn.Linear)]
    assert hidden[0] == 8 * k  # the paper's 8k residual width
    assert m.encoder[-1].out_features == (2 * k if variant.startswith("vae") else k)
    assert [mod.out_features for mod in m.decoder if isinstance(mod, nn.Linear)] == [8 * k, d]
    assert any(isinstance(mod, nn.LeakyReLU) and mod.negative_slope == 0.2 for mod in m.decoder)
    x = torch.randn(7, d)
    out = m(x, sample=False)
    assert out.x_hat.shape == (7, d) and out.codes.shape == (7, k)
    torch.testing.assert_close(m.decode(out.codes), out.x_hat)
    small = make(variant, d, k, seed=0, encoder="mlp", hidden=5, **params)
    assert small.encoder[0].out_features == 5 and isinstance(small.decoder, nn.Linear)
    # App. D.2's linear-subspace encoder: 4 Linear layers joined by Swish, the last one not activated
    layers = [mod.out_features for mod in small.encoder if isinstance(mod, nn.Linear)]
    assert layers == [5, 5, 5, 2 * k if variant.startswith("vae") else k]
    assert [type(mod) for mod in small.encoder][1::2] == [nn.SiLU] * 3
    assert isinstance(small.encoder[-1], nn.Linear)


@pytest.mark.parametrize("variant", ["sae_l1", "vaease"])
def test_decoder_hidden_sets_the_mlp_decoder_width_alone(variant):
    d, k = 12, 6
    m = make(variant, d, k, seed=0, encoder="resmlp", decoder="mlp", hidden=10, decoder_hidden=30)
    assert [mod.out_features for mod in m.decoder if isinstance(mod, nn.Linear)] == [30, d]
    assert m.encoder[0].out_features == 10 and m.params["decoder_hidden"] == 30
    same = make(variant, d, k, seed=0, encoder="resmlp", decoder="mlp", hidden=10)  # 0 = as hidden
    assert [mod.out_features for mod in same.decoder if isinstance(mod, nn.Linear)] == [10, d]
    assert m(torch.randn(3, d), sample=False).x_hat.shape == (3, d)


def test_sae_lam2_penalises_every_decoder_parameter():
    m = make("sae_l1", 8, 4, seed=0, decoder="mlp", hidden=3, lam1=0.0, lam2=1.0)
    x = torch.randn(5, 8)
    with torch.no_grad():
        out = m(x)
        wd = sum(float(p.pow(2).sum()) for p in m.decoder.parameters())
        sse = float((x - out.x_hat).pow(2).sum(-1).mean())
        assert float(m.loss_terms(x, out)["loss"]) == pytest.approx(sse + wd, rel=1e-5)


def test_arch_keys_are_optional_and_checked():
    assert "encoder" not in make("sae_l1", 8, 4).params  # unchanged default params of the LLM setting
    with pytest.raises(ConfigError, match="encoder must be one of"):
        make("sae_l1", 8, 4, encoder="conv")
    with pytest.raises(ConfigError, match="decoder one of"):
        make("vaease", 8, 4, decoder="attention")
    for variant in ("sae_l1", "sae_topk", "vae"):  # widths: whole numbers >= 0 (0 = the default)
        for bad in (2.5, -3, "8", True):
            with pytest.raises(ConfigError, match=r"hidden must be an integer"):
                make(variant, 8, 4, encoder="mlp", hidden=bad)
        with pytest.raises(ConfigError, match=r"decoder_hidden must be an integer >= 0"):
            make(variant, 8, 4, decoder="mlp", decoder_hidden=-1)
    assert make("sae_l1", 8, 4, encoder="mlp", hidden=6.0).encoder[0].out_features == 6
