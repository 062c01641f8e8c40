"""The App. D.2 bodies (``encoder: mlp | resmlp | resmlp_bn``, ``decoder: mlp``) of SAE and VAE variants."""

import pytest
import torch
from torch import nn

from actdict.config import ConfigError
from actdict.train.protocol import make
from actdict.train.variants._nets import BNResBlock, ResBlock, res_mlp


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
    with pytest.raises(ConfigError, match="decoder_hidden sets the MLP decoder's width, and the decoder is"):
        make("vaease", 8, 4, encoder="resmlp_bn", decoder_hidden=16)  # would build Linear(4, 8) silently
    with pytest.raises(ConfigError, match="hidden sets the width of an MLP encoder or decoder, and both are"):
        make("sae_topk", 8, 4, topk=2, hidden=16)


def test_resmlp_bn_is_the_authors_mlp_encoder():
    """``resmlp_bn`` = models.py's MLP_Encoder: Linear(d, 2k), BN, Swish, 3 x ResMLP(2k, 2k) with inner width
    4 x 2k = 8k, Linear(2k, 2k) (VAE) or Linear(2k, k) + the SAE's ReLU (MLP_Encoder_SAE)."""
    d, k = 12, 6
    vae = make("vaease", d, k, seed=0, encoder="resmlp_bn", decoder="mlp", decoder_hidden=2 * d, head="clip")
    body = vae.encoder
    assert [type(m) for m in body[:3]] == [nn.Linear, nn.BatchNorm1d, nn.SiLU]
    assert body[0].out_features == 2 * k and body[-1].out_features == 2 * k
    blocks = [m for m in body if isinstance(m, BNResBlock)]
    assert len(blocks) == 3 and len(body) == 7
    assert [m.out_features for m in blocks[0].body if isinstance(m, nn.Linear)] == [8 * k, 8 * k, 2 * k]
    assert [m.num_features for m in blocks[0].body if isinstance(m, nn.BatchNorm1d)] == [8 * k, 2 * k]
    assert [m.out_features for m in vae.decoder if isinstance(m, nn.Linear)] == [2 * d, d]  # FCNDecoder
    h = torch.randn(5, 2 * k)
    with torch.no_grad():  # the block's last BatchNorm at 0: Swish(0) = 0, the block is the identity
        blocks[0].body[-2].weight.zero_()
        blocks[0].body[-2].bias.zero_()
    assert torch.equal(blocks[0](h), h)
    sae = make("sae_l1", d, k, seed=0, encoder="resmlp_bn", hidden=10)
    assert sae.encoder[0].out_features == 10 and sae.encoder[-1].out_features == k
    assert (sae(torch.randn(4, d)).codes >= 0).all()
    with pytest.raises(ConfigError, match="var_min is the floor of head 'sigmoid', and the head is 'clip'"):
        make("vaease", d, k, encoder="mlp", head="clip", var_min=1e-20)
    with pytest.raises(ConfigError, match="logvar_min is the floor of head 'logvar', and the head is 'sigm"):
        make("vae", d, k, logvar_min=-5)
    with pytest.raises(ConfigError, match="head 'clip' reads log var off the encoder's output"):
        make("vae", d, k, head="clip")  # the linear encoder's Swish output is >= -0.28: var >= 0.76


def test_clip_head_is_the_clipped_encoder_output():
    """head="clip" (models.py's Linear_Encoder / MLP_Encoder): log var = min(s, 0) of the encoder's second
    half, no Linear(k, k) on it, no lower bound."""
    m = make("vae", 5, 4, seed=1, encoder="mlp", head="clip")
    assert not hasattr(m, "var_head")
    x = torch.randn(64, 5)
    for shift in (0.0, -50.0):  # -50: s far below any floor (the logvar head's default -20)
        with torch.no_grad():
            m.encoder[-1].bias[4:] += shift
            mu, s = m.encoder(x).chunk(2, dim=-1)
            got_mu, var, logvar = m.encode(x)
        assert torch.equal(got_mu, mu) and torch.equal(logvar, torch.minimum(s, torch.zeros(())))
        assert torch.equal(var, logvar.exp())
        assert ((s > 0).any() and (s < 0).any()) if shift == 0 else logvar.max() < -40
    with torch.no_grad():  # far below: var underflows to 0 in float32, the loss's gradient stays finite
        m.encoder[-1].bias[4:] -= 300
    terms = m.loss_terms(x, out := m(x))
    terms["loss"].backward()
    assert (out.extras["var"] == 0).all() and torch.isfinite(terms["loss"])
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())
    m = make("vae", 5, 4, seed=1, head="logvar", logvar_min=-300)  # a floor set as low: the same
    with torch.no_grad():
        m.var_head.bias.fill_(-150)
    terms = m.loss_terms(x, out := m(x))
    terms["loss"].backward()
    assert (out.extras["var"] == 0).all() and all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_batchnorm_bodies_are_refused_under_torchrun(monkeypatch):
    from actdict.config import Common
    from actdict.train.config import DictConfig, TrainConfig
    from actdict.train.precheck import check

    official = DictConfig("v", "vaease", k=4, params={"encoder": "resmlp_bn", "head": "clip"})
    cfg = TrainConfig(dicts=[DictConfig("s", "sae_l1", k=4, params={"encoder": "resmlp"}), official])
    check(Common(), cfg)  # one process: fine
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"train.dicts\[v\]: its encoder normalises with batch statistics "
                                          r"\(BatchNorm, encoder: resmlp_bn\) and trains in one process"):
        check(Common(), cfg)
    check(Common(), TrainConfig(dicts=cfg.dicts[:1]))  # resmlp has no BatchNorm: torchrun is fine
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ConfigError, match=r"train.dicts\[v\]: .* which a batch of 1 row has not"):
        check(Common(), TrainConfig(dicts=[official], batch_size=1))


def test_batch_statistics_sees_every_batchnorm_kind():
    """Any torch BatchNorm (1d, 2d, Sync) normalises with its batch: all count, LayerNorm does not."""
    from actdict.train.dist import batch_statistics

    assert not batch_statistics(make("vaease", 8, 4, seed=0, encoder="resmlp"))
    assert batch_statistics(make("vaease", 8, 4, seed=0, encoder="resmlp_bn"))
    for norm in (nn.BatchNorm2d(3), nn.SyncBatchNorm(3)):
        assert batch_statistics(nn.Sequential(nn.Linear(3, 3), norm))
    assert not batch_statistics(nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)))


def test_batch_loss_needs_two_rows(tmp_path, capsys):
    """lse's loss is made of batch statistics: a batch_size of 1 is refused up front, and so is a train
    split of one row (257 rows in chunks of 256: seed 0 holds the big chunk out), which gave one-row batches
    and a ZeroDivisionError; a variant without batch statistics trains on it."""
    from actdict.cli import main as actdict_main
    from actdict.config import Common
    from actdict.harvest.store import write_vectors
    from actdict.train.config import DictConfig, TrainConfig
    from actdict.train.precheck import check

    lse = DictConfig("e", "lse", k=4)
    with pytest.raises(ConfigError, match=r"train.dicts\[e\]: its loss \(lse\) uses statistics across a "
                                          r"batch's rows, which a batch of 1 row has not"):
        check(Common(), TrainConfig(dicts=[lse], batch_size=1))
    check(Common(), TrainConfig(dicts=[lse], batch_size=2))
    with pytest.raises(ConfigError, match=r"its loss \(sae_topk_auxk\) uses statistics"):  # the spread
        check(Common(), TrainConfig(dicts=[DictConfig("t", "sae_topk_auxk", k=8, params={"topk": 2})],
                                    batch_size=1))
    write_vectors(str(tmp_path / "store"), torch.randn(257, 6, generator=torch.Generator().manual_seed(0)
                                                       ).numpy(), chunk_rows=256, shard_rows=512)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\nstore: {tmp_path / 'store'}\nthreads: 1\n"
                   "train: {epochs: 1, batch_size: 8, test_fraction: 0.1,\n"
                   "        dicts: [{name: e, variant: lse, k: 4}]}\n")
    assert actdict_main(["train", str(cfg)]) == 2
    assert "the train split holds 1 row, and ['e'] train on batches of 2 rows" in capsys.readouterr().err
    assert actdict_main(["train", str(cfg), "train.normalize=mean_scale"]) == 2  # before the statistics
    assert "the train split holds 1 row" in capsys.readouterr().err
    assert actdict_main(["train", str(cfg), "train.dicts.e.variant=sae_l1"]) == 0


def test_res_mlp_is_linear_three_blocks_swish_linear():
    """``resmlp``: Linear(d, H); 3 residual blocks; then Swish and Linear(H, out) (the module docstring)."""
    net = res_mlp(10, 4, 16)
    h = torch.randn(5, 10, generator=torch.Generator().manual_seed(0))
    blocks = [m for m in net if isinstance(m, ResBlock)]
    first, last = net[0], net[-1]
    assert isinstance(first, nn.Linear) and isinstance(last, nn.Linear) and len(blocks) == 3
    with torch.no_grad():
        a = first(h)
        for blk in blocks:
            a = blk(a)
        want = (a * torch.sigmoid(a)) @ last.weight.T + last.bias  # Swish(a) = a sigmoid(a)
        torch.testing.assert_close(net(h), want)
