"""Direct logit effects (``analyze.logits``) and the harvest's rows on HF classes whose norms and blocks are
shaped otherwise than Pythia's and ``test_architectures``' families (``tiny_models.SHAPES``): a final
LayerNorm that is no ``torch.nn.LayerNorm`` (OLMo 1, Cohere), an embedding LayerNorm (BLOOM), parallel
attention and MLP (GPT-J, Phi), a post-LN model with a projection before the unembedding (OPT-350m's
shape)."""

import pytest
import torch
from tiny_models import final_norm, make_tiny

from actdict.analyze.logits import logit_effects, norm_action, unembedding
from actdict.harvest.models import load_model

EOT = 50256  # GPT-2's tokenizer: BOS, EOS and pad


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """family -> (its model folder, the bridge's LoadedModel, the HF model), built once per module."""
    from transformers import AutoModelForCausalLM

    made = {}

    def get(family: str):
        if family not in made:
            path = make_tiny(family, tmp_path_factory.mktemp(family))
            hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
            made[family] = path, load_model(str(path)), hf
        return made[family]

    return get


@pytest.mark.parametrize("family, centres, gain", [
    ("gpt2", True, "weight"), ("llama", False, "weight"), ("gemma2", False, "1 + weight"),
    ("olmo", True, "1"), ("cohere", True, "weight"), ("bloom", True, "weight")])
def test_the_final_norm_is_read_as_it_acts(tiny, family, centres, gain):
    """OLMo 1's LayerNorm (F.layer_norm without weights) and Cohere's (a weight, no bias) are no
    ``torch.nn.LayerNorm``: read as RMSNorms by their class, OLMo's directions were not centred and
    Cohere's gain was the norm's output for a constant vector, 0."""
    _, lm, hf = tiny(family)
    norm = final_norm(hf)
    g, c = norm_action(lm.bridge.ln_final._original_component, lm.d_model)
    want = {"1": torch.ones(lm.d_model), "weight": getattr(norm, "weight", None),
            "1 + weight": 1 + getattr(norm, "weight", torch.zeros(1))}[gain]
    assert c == centres and g.shape == (lm.d_model,)
    torch.testing.assert_close(g, want.detach().float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["olmo", "cohere", "bloom", "gptj", "phi"])
def test_effects_rank_tokens_as_hfs_final_norm_and_unembedding(tiny, family):
    """Each direction's tokens raised and lowered most are those of HF's own final norm and lm_head
    applied to it (its bias left out: the same for every direction; Cohere's logit_scale 0.5 multiplies
    every logit, keeping the order)."""
    _, lm, hf = tiny(family)
    unit = torch.randn(16, lm.d_model, generator=torch.Generator().manual_seed(0))
    unit = unit / unit.norm(dim=1, keepdim=True)  # [16, d]
    up, _, down, _ = logit_effects(unit, *unembedding(lm.bridge, "blocks.1.hook_resid_post"), 5)
    norm = final_norm(hf)
    with torch.no_grad():
        bias = 0 if getattr(norm, "bias", None) is None else norm.bias
        through = hf.lm_head(norm(unit) - bias) * getattr(hf, "logit_scale", 1.0)  # [16, V]
    assert torch.equal(up, through.topk(5).indices)
    assert torch.equal(down, through.topk(5, largest=False).indices)


@pytest.mark.parametrize("hook", ["blocks.1.hook_resid_post", "blocks.0.hook_attn_out"])
def test_a_post_ln_model_has_no_logit_effects_and_says_so_before_the_pass(tiny, lm_run, monkeypatch, hook):
    """OPT-350m's shape (do_layer_norm_before: false, no final norm, project_out 64 -> 32 before the
    unembedding): each block ends in a LayerNorm, so a direction has no direct path to the logits; the
    analysis stopped after its pass on a matrix product of widths 64 and 32."""
    from actdict.analyze import run
    from actdict.analyze.config import AnalyzeConfig
    from actdict.config import Common
    from actdict.train.protocol import make

    path, lm, _ = tiny("opt_post")
    assert lm.d_model == 64 and lm.bridge.W_U.shape == (32, 50257)
    run_dir = lm_run(str(path), hook, 64)
    monkeypatch.setattr(run, "load_models", lambda *a: {"sae": make("sae_l1", 64, 4, seed=0)})
    monkeypatch.setattr(run, "ModelEval", None)  # the pass never starts
    with pytest.raises(run.AnalyzeError) as e:
        run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(logit_effects=3, device="cpu"))
    assert str(e.value) == (
        "analyze.logit_effects: its model is post-LN (do_layer_norm_before: false, as OPT-350m): each block "
        "ends in a LayerNorm, so a direction reaches the unembedding only through every later block's norm, "
        "and it has no direct logit effect: set analyze.logit_effects=0")


def test_every_other_shape_has_a_direct_path(tiny):
    """Pre-norm models, parallel blocks and an embedding LayerNorm included; the width check on its own."""
    from types import SimpleNamespace

    from actdict.analyze.logits import no_direct_path

    for family in ("gpt2", "olmo", "cohere", "bloom", "gptj", "phi"):
        assert no_direct_path(tiny(family)[1].bridge, 64) is None
    projected = SimpleNamespace(cfg=SimpleNamespace(), W_U=torch.zeros(32, 10))
    assert no_direct_path(projected, 64) == (
        "its model's unembedding reads d = 32, not the residual stream's d_model = 64 (a projection in "
        "between, as OPT-350m's project_out)")
