"""Direct logit effects (``analyze.logits``) and the harvest's rows on HF classes whose norms and blocks are
shaped otherwise than Pythia's and ``test_architectures``' families (``tiny_models.SHAPES``): a final
LayerNorm that is no ``torch.nn.LayerNorm`` (OLMo 1, Cohere), an embedding LayerNorm (BLOOM), parallel
attention and MLP (GPT-J, Phi), a post-LN model with a projection before the unembedding (OPT-350m's
shape)."""

import json

import pytest
import torch
from test_harvest import check_aligned, harvest, reference
from tiny_models import SHAPES, block_outputs, final_norm, make_tiny

from actdict.analyze.logits import logit_effects, norm_action, unembedding
from actdict.harvest.models import load_model
from actdict.harvest.store import open_store

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


@pytest.mark.parametrize("d", [6, 7])
def test_norm_action_of_torchs_own_norms_with_and_without_weights(d):
    """A LayerNorm without elementwise_affine (gain 1), one with a bias (left out: the same for every
    direction), an RMSNorm with a weight; an odd width (the probe of mean 0 is then +-1 - 1/d)."""
    g = torch.linspace(0.5, 2.0, d)
    affine = torch.nn.LayerNorm(d)
    with torch.no_grad():
        affine.weight.copy_(g)
        affine.bias.copy_(torch.linspace(-3.0, 3.0, d))
    rms = torch.nn.RMSNorm(d)
    with torch.no_grad():
        rms.weight.copy_(-g)
    plain, ones = torch.nn.LayerNorm(d, elementwise_affine=False), torch.ones(d)
    for norm, want, centres in ((plain, ones, True), (affine, g, True), (rms, -g, False),
                                (torch.nn.RMSNorm(d), ones, False)):
        gain, c = norm_action(norm, d)
        assert c == centres
        torch.testing.assert_close(gain, want, rtol=1e-4, atol=1e-4)
    assert norm_action(None, d) == (None, False)


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


@pytest.mark.parametrize("family, hook", [
    ("opt_post", "blocks.1.hook_resid_post"), ("opt_post", "blocks.0.hook_attn_out"),
    ("gpt1", "blocks.0.hook_resid_post"), ("gpt1", "blocks.1.hook_mlp_out")])
def test_a_post_ln_model_has_no_logit_effects_and_says_so_before_the_pass(tiny, lm_run, monkeypatch, family,
                                                                         hook):
    """OPT-350m's shape (do_layer_norm_before: false, project_out 64 -> 32 before the unembedding) and GPT-1
    (whose config has no such flag): each block ends in a LayerNorm and no final norm follows, so a
    direction has no direct path to the logits. OPT's analysis stopped after its pass on a matrix product
    of widths 64 and 32; GPT-1's reported W_U^T u, as if the later blocks' norms were not there."""
    from actdict.analyze import run
    from actdict.analyze.config import AnalyzeConfig
    from actdict.config import Common
    from actdict.train.protocol import make

    path, lm, _ = tiny(family)
    assert lm.d_model == 64 and lm.bridge.W_U.shape == (32 if family == "opt_post" else 64, 50257)
    run_dir = lm_run(str(path), hook, 64)
    monkeypatch.setattr(run, "load_models", lambda *a: {"sae": make("sae_l1", 64, 4, seed=0)})
    monkeypatch.setattr(run, "ModelEval", None)  # the pass never starts
    with pytest.raises(run.AnalyzeError) as e:
        run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(logit_effects=3, device="cpu"))
    assert str(e.value) == (
        "analyze.logit_effects: its model is post-LN (each block ends in a LayerNorm, and no final norm "
        "follows the last: GPT-1, OPT-350m), so a direction reaches the unembedding only through every later "
        "block's norm, and it has no direct logit effect: set analyze.logit_effects=0")


def test_every_other_shape_has_a_direct_path(tiny):
    """Pre-norm models, parallel blocks and an embedding LayerNorm included; the width check on its own."""
    from types import SimpleNamespace

    from actdict.analyze.logits import no_direct_path

    for family in ("gpt2", "olmo", "cohere", "bloom", "gptj", "phi"):
        assert no_direct_path(tiny(family)[1].bridge, 64) is None
    projected = SimpleNamespace(cfg=SimpleNamespace(), ln_final=torch.nn.LayerNorm(64),
                                W_U=torch.zeros(32, 10))  # [d, V]
    assert no_direct_path(projected, 64) == (
        "its model's unembedding reads d = 32, not the residual stream's d_model = 64 (a projection in "
        "between, as OPT-350m's project_out)")


@pytest.mark.parametrize("family, hook", [
    ("gptj", "blocks.1.hook_attn_out"), ("gptj", "blocks.1.hook_mlp_out"),
    ("phi", "blocks.1.hook_attn_out"), ("phi", "blocks.1.hook_mlp_out"), ("olmo", "blocks.1.hook_resid_post"),
    ("cohere", "blocks.1.hook_mlp_out"), ("bloom", "blocks.1.hook_attn_out")])
def test_adding_a_direction_at_the_last_blocks_hook_moves_the_logits_as_reported(tiny, family, hook):
    """Through the model itself: t * u added at the last block's hook (t = 1e6, the residual then u's
    multiple up to ~1e-4) makes the logits, less what the final norm's bias and lm_head's bias give every
    token, rank the tokens as the effects do, at every position (up to near ties: the logits at the reported
    tokens are the 5 highest, and the 5 lowest). GPT-J's and Phi's attention and MLP both
    read one norm and add to one residual: each one's output reaches the final norm as it is."""
    _, lm, hf = tiny(family)
    unit = torch.randn(4, lm.d_model, generator=torch.Generator().manual_seed(1))
    unit = unit / unit.norm(dim=1, keepdim=True)  # [4, d]
    up, _, down, _ = logit_effects(unit, *unembedding(lm.bridge, hook), 5)
    norm, tokens = final_norm(hf), torch.tensor([[EOT, 464, 26450, 5667, 379, 5193]])
    with torch.no_grad():
        offset = hf.lm_head(getattr(norm, "bias", None) if getattr(norm, "bias", None) is not None
                            else torch.zeros(lm.d_model)) * getattr(hf, "logit_scale", 1.0)  # [V]
        for u, ids_up, ids_down in zip(unit, up, down, strict=True):
            moved = lm.bridge.run_with_hooks(tokens, return_type="logits", fwd_hooks=[
                (hook, lambda act, hook=None, u=u: act + 1e6 * u)])[0] - offset  # [6, V]
            for ids, largest in ((ids_up, True), (ids_down, False)):  # a near tie may swap two: their values
                top = moved.topk(5, largest=largest).values  # [6, 5]
                torch.testing.assert_close(moved[:, ids], top, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", SHAPES)
def test_rows_align_with_hf_at_every_block(tmp_path, tiny, family):
    """Every block's hook_resid_post rows (concat windows of 12: EOS first and between documents) equal
    HF's own block outputs at the row's window position; the last block's is the input of the final norm
    (OPT's post-LN shape: of project_out, after the block's own closing LayerNorm). GPT-1's hook_resid_post
    does not fire under the bridge (the harvest refuses it, saying so): its hook_resid_pre rows are HF's
    embeddings and block outputs instead."""
    from transformers import AutoTokenizer

    path, lm, hf = tiny(family)
    texts = ["The ferry leaves at nine, rain or shine.", "Owls are quiet at night.",
             "A tidy kitchen makes a calm cook; the orchard is full of apples this year."]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    kind, shift = ("pre", -1) if family == "gpt1" else ("post", 0)  # GPT-1's hook_resid_post never fires
    hooks = [f"blocks.{b}.hook_resid_{kind}" for b in range(lm.n_layers)]
    source = {"kind": "files", "path": str(tmp_path / "docs.jsonl")}
    common, cfg = harvest(tmp_path / "run", model=str(path), hooks=hooks, window_mode="concat", ctx=12,
                          source=source, store_dtype="float32")
    tok = AutoTokenizer.from_pretrained(path)
    ref, docs = reference(block_outputs(hf), tok, cfg, (EOT,), (), (EOT,), EOT, trim=False)
    assert len(ref["hs"]) == lm.n_layers + 1 and len(set(ref["doc"])) == 3
    for layer, hook in enumerate(hooks):
        store = open_store(common.store_path, hook)
        check_aligned(store.read_rows(0, len(store)), ref, docs, layer + shift, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["bloom", "gemma2"])
def test_hook_embed_is_what_the_first_block_reads(tiny, family):
    """hook_embed's directions reach the residual as they are: BLOOM's is after its embedding LayerNorm,
    Gemma's after the multiplication by sqrt(d_model), both equal to blocks.0.hook_resid_pre; the raw
    embedding (BLOOM's embed.hook_out) is not."""
    _, lm, hf = tiny(family)
    tokens = torch.tensor([[2, 464, 26450, 5667, 379, 5193]])
    with torch.no_grad():
        _, c = lm.bridge.run_with_cache(tokens, names_filter=["hook_embed", "blocks.0.hook_resid_pre"])
        raw = hf.get_input_embeddings().weight[tokens]  # [1, 6, d] the rows as stored
    assert torch.equal(c["hook_embed"], c["blocks.0.hook_resid_pre"])
    assert (c["hook_embed"] - raw).abs().max() > 0.5
    if family == "gemma2":
        torch.testing.assert_close(c["hook_embed"], raw * 8.0)  # sqrt(64)


@pytest.mark.filterwarnings("ignore:A forward hook edited hook_scale/hook_normalized")  # u is added there
@pytest.mark.parametrize("family, scale", [("cohere", 0.5), ("gptj", 1.0), ("bloom", 1.0)])
def test_at_the_final_norms_output_the_effect_is_exact_up_to_a_logit_scale(tiny, family, scale):
    """u added at ln_final.hook_normalized moves every logit by W_U^T (g * u), times Cohere's logit_scale."""
    from actdict.analyze.logits import FINAL

    _, lm, _ = tiny(family)
    w_u, g, centre = unembedding(lm.bridge, FINAL)
    u = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(3))
    eff = ((u / u.norm()) * g) @ w_u  # [V]
    tokens = torch.tensor([[EOT, 464, 26450, 5667, 379, 5193]])
    with torch.no_grad():
        clean = lm.bridge.run_with_hooks(tokens, return_type="logits")[0]  # [6, V]
        moved = lm.bridge.run_with_hooks(tokens, return_type="logits", fwd_hooks=[
            (FINAL, lambda act, hook=None: act + u / u.norm())])[0]
    assert not centre
    torch.testing.assert_close(moved - clean, scale * eff.expand_as(clean), rtol=1e-4, atol=1e-4)
