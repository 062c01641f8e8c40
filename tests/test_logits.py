"""Direct logit effects of features (``analyze.logit_effects``, ``actdict.analyze.logits``): the decoder
direction through the final norm and the unembedding, the tokens raised and lowered most, in the features
file, summary.json and the report; refused, before the pass, where they do not apply."""

import json

import pytest
import torch

from actdict.analyze import run
from actdict.analyze.config import AnalyzeConfig
from actdict.analyze.logits import logit_effects, not_residual, records, unembedding
from actdict.config import Common
from actdict.train.protocol import make

HOOK = "blocks.1.hook_resid_post"


def test_effects_are_the_centred_scaled_direction_through_the_unembedding():
    g = torch.Generator().manual_seed(0)
    unit = torch.nn.functional.normalize(torch.randn(5, 6, generator=g), dim=1)  # [k, d]
    unit[3] = torch.nan  # a feature without a direction
    w_u, gain = torch.randn(6, 30, generator=g), torch.rand(6, generator=g) + 0.5
    up_ids, up, down_ids, down = logit_effects(unit, w_u, gain, True, 4, chunk=2)
    for f in (0, 1, 2, 4):
        eff = ((unit[f] - unit[f].mean()) * gain) @ w_u  # [V]
        order = eff.argsort(descending=True)
        assert up_ids[f].tolist() == order[:4].tolist() and down_ids[f].tolist() == order.flip(0)[:4].tolist()
        torch.testing.assert_close(up[f], eff[order[:4]])
        torch.testing.assert_close(down[f], eff[order.flip(0)[:4]])
    assert up_ids[3].tolist() == [-1] * 4 and down[3].isnan().all()
    plain = logit_effects(unit, w_u, None, False, 2)[0]  # an RMSNorm without weight: u @ W_U as it is
    assert plain[0].tolist() == (unit[0] @ w_u).topk(2).indices.tolist()
    recs = records(up_ids, up, down_ids, down)
    assert recs[3] is None and recs[0]["up"][0] == [up_ids[0, 0].item(), pytest.approx(up[0, 0].item())]


def test_only_residual_hooks_of_the_models_width_have_effects():
    assert not_residual("blocks.3.hook_resid_post", 512, 512) is None
    assert not_residual("blocks.0.hook_resid_pre", 512, 512) is None
    assert "neither in the residual stream" in not_residual("blocks.3.mlp.hook_post", 2048, 512)
    assert "d = 384" in not_residual("blocks.3.hook_resid_post", 384, 512)


def test_analysis_reports_each_features_logit_effects(lm, lm_run, monkeypatch):
    d = lm.d_model
    tmp_path = lm_run(str(lm.path), HOOK, d)
    sae = make("sae_l1", d, 6, seed=0)
    monkeypatch.setattr(run, "load_models", lambda *a: {"sae": sae})
    monkeypatch.setattr(run, "resolve_decoder", lambda m: lambda ids: [f"<t{i}>" for i in ids])
    run.main(Common(run_dir=str(tmp_path)), AnalyzeConfig(logit_effects=3, n_features=2, device="cpu"))
    w_u, gain, centre = unembedding(lm.bridge)
    assert centre and gain is not None and w_u.shape == (d, 50304)  # Pythia's final LayerNorm
    col = sae.decoder.weight.detach().T  # [k, d]
    feats = json.loads((tmp_path / "features" / "sae.json").read_text())
    for f in feats["features"]:
        u = col[f["i"]] / col[f["i"]].norm()
        eff = ((u - u.mean()) * gain) @ w_u
        top, bottom = eff.topk(3), eff.topk(3, largest=False)
        assert [i for i, _ in f["logits"]["up"]] == top.indices.tolist()
        assert [i for i, _ in f["logits"]["down"]] == bottom.indices.tolist()
        assert [v for _, v in f["logits"]["up"]] == pytest.approx(top.values.tolist(), rel=1e-4)
        assert all(feats["tokens"][str(i)] == f"<t{i}>" for i, _ in f["logits"]["up"] + f["logits"]["down"])
    listed = json.loads((tmp_path / "summary.json").read_text())["models"]["sae"]["features"]
    first = feats["features"][listed[0]["index"]]["logits"]
    assert listed[0]["logits"]["up"][0] == [f"<t{first['up'][0][0]}>", pytest.approx(first["up"][0][1])]
    html = (tmp_path / "report.html").read_text()
    assert "raises the logits of: <span class=\"tok\">&lt;t" in html  # token strings escaped


@pytest.mark.parametrize("model, hook, d, match", [
    ("all-MiniLM-L6-v2", "blocks.3.hook_resid_post", 384, "encoder: set analyze.logit_effects=0"),
    (None, "blocks.1.mlp.hook_post", 2048, "neither in the residual stream.*logit_effects=0")])
def test_logit_effects_are_refused_before_the_pass_where_they_do_not_apply(lm, lm_run, monkeypatch, model,
                                                                          hook, d, match):
    tmp_path = lm_run(model or str(lm.path), hook, d)
    monkeypatch.setattr(run, "load_models", lambda *a: {"sae": make("sae_l1", d, 4, seed=0)})
    monkeypatch.setattr(run, "ModelEval", None)  # the pass never starts
    with pytest.raises(run.AnalyzeError, match=match):
        run.main(Common(run_dir=str(tmp_path)), AnalyzeConfig(logit_effects=3, device="cpu"))


def test_an_embeddings_store_has_no_logit_effects_or_ce_whatever_its_model(monkeypatch):
    """A store of pooled sentence embeddings (harvest.mode: embeddings) of a causal model's hidden states:
    its rows are no activation at a hook, so logit effects and CE are refused before the model loads."""
    from types import SimpleNamespace

    from actdict.analyze import lm as lm_mod

    store = SimpleNamespace(manifest={"kind": "embeddings", "model": "some-decoder-embedder",
                                      "hook": "blocks.5.hook_resid_post"}, d=8)
    monkeypatch.setattr("actdict.harvest.models.load_model", None)  # never reached
    for cfg, off in ((AnalyzeConfig(logit_effects=3), "analyze.logit_effects=0"),
                     (AnalyzeConfig(ce_loss=True), "analyze.ce_loss=false")):
        with pytest.raises(run.AnalyzeError, match=f"pooled sentence embeddings of some-decoder-embedder: "
                                                   f"set {off}"):
            lm_mod.causal_lm(store, "cpu", cfg)


@pytest.mark.parametrize("d", [6, 7])
def test_each_final_norms_gain_and_centring_are_read_as_it_acts(d):
    """Whatever a final norm stores, the effects are W_U^T of what it does to the direction, up to a positive
    scale: Llama's RMSNorm (weight) and Gemma's (1 + weight) do not centre; OLMo's LayerNorm (no weight) and
    Cohere's (a weight, no bias) do, which, taken for RMSNorms, left OLMo's uncentred and made Cohere's gain
    0 (its constant probe centred away: every effect 0); Nemotron's LayerNorm1P, a torch LayerNorm that
    scales by 1 + weight, was read as one that scales by its weight (biased norms: their bias left out); a
    bfloat16 norm's gain is its weight to bf16's precision. An odd d too (the zero-mean probe's last
    entries)."""
    from types import SimpleNamespace

    from transformers.models.cohere.modeling_cohere import CohereLayerNorm
    from transformers.models.gemma2.modeling_gemma2 import Gemma2RMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    from transformers.models.nemotron.modeling_nemotron import NemotronLayerNorm1P
    from transformers.models.olmo.modeling_olmo import OlmoLayerNorm

    g = torch.Generator().manual_seed(1)
    norms = {"llama": (LlamaRMSNorm(d), False), "gemma2": (Gemma2RMSNorm(d), False),
             "olmo": (OlmoLayerNorm(d), True), "cohere": (CohereLayerNorm(d), True),
             "nemotron": (NemotronLayerNorm1P(d), True), "layernorm": (torch.nn.LayerNorm(d), True)}
    one_plus = ("gemma2", "nemotron")  # scale by 1 + weight
    w_u = torch.randn(d, 40, generator=g)
    unit = torch.nn.functional.normalize(torch.randn(3, d, generator=g), dim=1)  # [3, d]
    for name, (norm, centres) in norms.items():
        with torch.no_grad():
            for p in norm.parameters():
                p.copy_(torch.randn(d, generator=g) * 0.5 + (0 if name in one_plus else 1))
        _, gain, centre = unembedding(SimpleNamespace(ln_final=SimpleNamespace(_original_component=norm),
                                                      W_U=w_u))
        assert centre is centres, name
        want = torch.ones(d) if name == "olmo" else norm.weight.detach() + (1 if name in one_plus else 0)
        torch.testing.assert_close(gain, want)
        ids = logit_effects(unit, w_u, gain, centre, 5)
        with torch.no_grad():
            through = (norm(unit * 10) - norm(-unit * 10)) @ w_u  # [3, V] its bias, if any, cancelled
        assert ids[0].tolist() == through.topk(5).indices.tolist(), name
        assert ids[2].tolist() == through.topk(5, largest=False).indices.tolist(), name
    half = LlamaRMSNorm(d).to(torch.bfloat16)
    with torch.no_grad():
        half.weight.copy_(torch.randn(d, generator=g) + 1)
    bf = unembedding(SimpleNamespace(ln_final=SimpleNamespace(_original_component=half), W_U=w_u))
    assert bf[1].dtype == torch.float32 and not bf[2]
    torch.testing.assert_close(bf[1], half.weight.float(), rtol=1e-2, atol=0)
