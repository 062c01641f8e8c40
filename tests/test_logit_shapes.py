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
