"""Failures inside TransformerLens' TransformerBridge reach the researcher as an actdict error that names the
hook or the model's architecture, the transformer-lens version and the bridge's error in a few words, before
anything is written (``harvest.models``): found on random-init tiny models (``tiny_models``)."""

import pytest
import torch
from test_harvest import harvest
from tiny_models import folder_maker

from actdict.harvest.bridge import tl_version
from actdict.harvest.models import HookError, ModelError, load_model
from actdict.harvest.store import list_hooks
from actdict.signals import Terminated


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """family -> its model folder, built once per module on first use."""
    return folder_maker(tmp_path_factory)


def test_a_hook_that_never_fires_is_refused_as_such(tmp_path, tiny):
    """GPT-1's blocks.L.hook_resid_post never fires under the bridge: the refusal ended 'is not one vector per
    token', as if its shape were wrong, and told the researcher to harvest blocks.L.hook_resid_post."""
    with pytest.raises(HookError) as e:
        harvest(tmp_path / "run", model=str(tiny("gpt1")), hooks=["blocks.1.hook_resid_post"], max_tokens=40)
    said = str(e.value)
    assert said.startswith(f"hook 'blocks.1.hook_resid_post' (it does not fire in this model's forward: "
                           f"gated off, or never called) of {tiny('gpt1')} gives no activations to store "
                           f"under TransformerLens {tl_version()}'s TransformerBridge: harvest another hook")
    assert "the next block's hook_resid_pre" in said and "not one vector per token" not in said
    assert not (tmp_path / "run").exists()


def tiny_codegen(path) -> str:
    """A tiny random-init CodeGen (CodeGenForCausalLM), GPT-2's tokenizer: TransformerBridge (4.3.0) loads it
    and then fails in every forward ('CodeGenAttention' object has no attribute 'embed_positions'). Where
    this transformers' CodeGenAttention still holds embed_positions (5.9, pyproject's lowest, does; 5.25
    moved it out), CodeGen runs under the bridge and there is no failing forward to test: skipped."""
    from tiny_models import family_tokenizer
    from transformers import CodeGenConfig, CodeGenForCausalLM

    tok = family_tokenizer("gpt2")
    cfg = CodeGenConfig(vocab_size=len(tok), n_embd=64, n_layer=1, n_head=4, rotary_dim=8, n_positions=128,
                        n_ctx=128)
    model = CodeGenForCausalLM(cfg)
    if hasattr(model.transformer.h[0].attn, "embed_positions"):
        pytest.skip("this transformers' CodeGen runs under TransformerBridge (its attention holds "
                    "embed_positions): no failing forward to test")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_a_model_whose_forward_fails_in_the_bridge_stops_at_the_probe(tmp_path):
    """The harvest's first (probe) forward of a CodeGen model raised the bridge's AttributeError from deep
    inside it, with no word of the model's architecture or that the bridge was where it failed."""
    model = tiny_codegen(tmp_path / "codegen")
    with pytest.raises(ModelError) as e:
        harvest(tmp_path / "run", model=model, hooks=["blocks.0.hook_resid_post"], max_tokens=40)
    said = str(e.value)
    assert said.startswith(f"the forward of model {model} (CodeGenForCausalLM; model_type codegen) failed "
                           f"inside TransformerLens {tl_version()}'s TransformerBridge (AttributeError: ")
    assert "embed_positions" in said and "this architecture does not run under this transformer-lens" in said
    assert isinstance(e.value.__cause__, AttributeError) and not (tmp_path / "run").exists()


def test_a_hook_the_bridge_fails_on_is_refused_by_name(tmp_path, tiny):
    """blocks.1.hook_resid_mid of a post-LN OPT (do_layer_norm_before false) stopped the harvest inside the
    bridge with a bare IndexError; a pattern matching it with other hooks lost them all."""
    model = str(tiny("opt_post"))
    with pytest.raises(HookError) as e:
        harvest(tmp_path / "run", model=model, hooks=["blocks.1.hook_resid_mid"], max_tokens=40)
    assert str(e.value).startswith(
        f"hook 'blocks.1.hook_resid_mid' (TransformerBridge's forward fails when it is hooked (IndexError: "
        f"too many indices for tensor of dimension 2)) of {model} gives no activations to store under "
        f"TransformerLens {tl_version()}'s TransformerBridge: harvest another hook")
    assert not (tmp_path / "run").exists()
    common, _ = harvest(tmp_path / "run", model=model, hooks=["blocks.1.hook_resid_*"], max_tokens=40)
    assert list_hooks(common.store_path) == ["blocks.1.hook_resid_post", "blocks.1.hook_resid_pre"]


def test_a_supported_architecture_the_bridge_fails_to_load_is_named(tmp_path):
    """A Falcon with new_decoder_architecture and 2 KV heads (an architecture TransformerBridge supports)
    fails in the bridge's load (split_with_sizes); the load then told the researcher to check that the
    folder holds an HF model, which it does."""
    from tiny_models import family_tokenizer
    from transformers import FalconConfig, FalconForCausalLM

    tok, path = family_tokenizer("gpt2"), tmp_path / "falcon"
    cfg = FalconConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                       new_decoder_architecture=True, num_kv_heads=2)
    FalconForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    with pytest.raises(ModelError) as e:
        load_model(str(path))
    said = str(e.value)
    assert said.startswith(f"could not load model '{path}': TransformerLens {tl_version()}'s "
                           "TransformerBridge supports its architecture (FalconForCausalLM; model_type "
                           "falcon) but failed to load this model (RuntimeError: split_with_sizes expects")
    assert "check that the folder" not in said and "\n" not in said
    with pytest.raises(ModelError, match="check that the folder holds an HF model"):  # no HF model there
        (tmp_path / "empty").mkdir()
        load_model(str(tmp_path / "empty"))


def test_ce_loss_at_a_hook_the_bridge_cannot_edit_is_refused_before_the_pass(tiny, lm_run, monkeypatch):
    """OLMo 1's norms have no weight: a forward that edits their hook_normalized fails in the bridge, so
    analyze.ce_loss stopped after the whole analysis pass. It is refused before it now, saying what to set."""
    from actdict.analyze import run
    from actdict.analyze.config import AnalyzeConfig
    from actdict.analyze.inputs import AnalyzeError
    from actdict.config import Common
    from actdict.train.protocol import make

    hook = "blocks.1.ln2.hook_normalized"
    run_dir = lm_run(str(tiny("olmo")), hook, 64)
    monkeypatch.setattr(run, "load_models", lambda *a: {"sae": make("sae_l1", 64, 6, seed=0)})
    monkeypatch.setattr(run, "one_pass", None)  # never reached
    cfg = AnalyzeConfig(ce_loss=True, ce_windows=2, ce_ctx=12, ce_batch_size=2, device="cpu")
    with pytest.raises(AnalyzeError) as e:
        run.main(Common(run_dir=str(run_dir)), cfg)
    assert str(e.value) == (
        f"analyze.ce_loss: TransformerLens {tl_version()}'s TransformerBridge cannot run a forward of "
        f"{tiny('olmo')} that edits its hook {hook} (AttributeError: 'NormalizationBridge' object has no "
        "attribute 'weight'), so no dictionary can be spliced there: set analyze.ce_loss=false (the rest of "
        "the analysis runs as it would; reading the hook, as the harvest and the logit effects do, works)")
    assert not (run_dir / "summary.json").exists()


def test_the_lens_says_the_bridges_failures_as_the_harvest_does(tmp_path, tiny):
    """actdict lens runs the model on its text (``text_rows``): a model whose forward fails in the bridge
    (CodeGen), or a hook it fails on (post-LN OPT's blocks.1.hook_resid_mid), raised the bridge's error."""
    from actdict.analyze.lens import text_rows
    from actdict.config import build
    from actdict.harvest.config import HarvestConfig

    cfg = build(HarvestConfig, {"ctx": 8, "batch_size": 2})
    codegen = tiny_codegen(tmp_path / "codegen")
    with pytest.raises(ModelError, match=rf"^the forward of model {codegen} \(CodeGenForCausalLM; model_type "
                                         r"codegen\) failed inside TransformerLens .*embed_positions"):
        text_rows(load_model(codegen), cfg, "blocks.0.hook_resid_post", "Owls are quiet at night.")
    opt = str(tiny("opt_post"))
    with pytest.raises(HookError, match=r"^hook 'blocks\.1\.hook_resid_mid' \(TransformerBridge's forward "
                                        r"fails when it is hooked \(IndexError: too many indices"):
        text_rows(load_model(opt), cfg, "blocks.1.hook_resid_mid", "Owls are quiet at night.")
    lm, text = load_model(opt), "Owls are quiet at night."
    ids, x = text_rows(lm, cfg, "blocks.1.hook_resid_post", text)  # the model runs
    assert ids.tolist() == lm.tokenizer.encode(text, add_special_tokens=False) and x.shape == (8, 64)


def test_hooks_that_fail_only_together_are_named(tiny, monkeypatch):
    """A bridge whose forward fails with two hooks at once and runs with each alone (no model found here
    does that: a stand-in) raised its own error, naming no hook."""
    lm = load_model(str(tiny("gpt2")))
    real = lm.bridge.run_with_cache

    def fails_with_two(ids, names_filter, **kw):
        if len(names_filter) > 1:
            raise IndexError("too many indices for tensor of dimension 2")
        return real(ids, names_filter=names_filter, **kw)

    monkeypatch.setattr(lm.bridge, "run_with_cache", fails_with_two)
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    with pytest.raises(ModelError) as e:
        lm.row_problems(hooks)
    assert str(e.value) == (f"the forward of model {lm.name} with the hooks {hooks} together failed inside "
                            f"TransformerLens {tl_version()}'s TransformerBridge (IndexError: too many "
                            "indices for tensor of dimension 2), where each hook alone runs: harvest them in "
                            "separate runs (harvest.hooks)")
    assert lm.row_problems(hooks[:1]) == {}


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("CUDA error: device-side assert triggered"), Terminated()],
                         ids=["oom", "cuda", "sigterm"])
@pytest.mark.parametrize("every", [True, False], ids=["every-forward", "first-forward"])
def test_the_machines_errors_in_the_probe_are_not_the_bridges(tiny, monkeypatch, error, every):
    """Out of GPU memory or a CUDA error in the probe forward was reworded as the model's ModelError (its
    architecture 'does not run under this transformer-lens') or, when it passed, as hooks that fail only
    together: each sent the researcher to another model, where a free GPU or a smaller batch was what it
    took. The error now reaches them as torch raised it, as Ctrl-C and SIGTERM always did."""
    lm = load_model(str(tiny("gpt2")))
    forward, calls = lm.bridge.run_with_cache, []

    def short_of_memory(*a, **kw):
        calls.append(kw["names_filter"])
        if every or len(calls) == 1:
            raise error
        return forward(*a, **kw)

    monkeypatch.setattr(lm.bridge, "run_with_cache", short_of_memory)
    with pytest.raises(type(error)) as e:
        lm.row_problems(["blocks.0.hook_resid_post"])
    assert e.value is error and calls == [["blocks.0.hook_resid_post"]]  # no second probe tried


def test_the_machines_errors_in_the_splice_probe_and_the_load_are_not_the_bridges(tiny, monkeypatch):
    """The same for analyze.ce_loss' identity splice (it said to set analyze.ce_loss=false) and the model's
    load (it said the bridge supports the architecture and 'does not handle' this configuration)."""
    from transformer_lens.model_bridge import TransformerBridge

    from actdict.analyze.splice import Windows, splice_fails

    lm, oom = load_model(str(tiny("gpt2"))), torch.OutOfMemoryError("CUDA out of memory")
    every = torch.ones(1, 3, dtype=torch.bool)
    windows = Windows(torch.tensor([[5, 6, 7]]), every, every)
    assert splice_fails(lm.bridge, windows, "blocks.0.hook_resid_post") is None

    def fails(error):
        def run(*a, **kw):
            raise error
        return run

    monkeypatch.setattr(lm.bridge, "run_with_hooks", fails(AttributeError("'OlmoLayerNorm' has no 'weight'")))
    assert splice_fails(lm.bridge, windows, "blocks.0.hook_resid_post") == \
        "AttributeError: 'OlmoLayerNorm' has no 'weight'"
    monkeypatch.setattr(lm.bridge, "run_with_hooks", fails(oom))
    with pytest.raises(torch.OutOfMemoryError):
        splice_fails(lm.bridge, windows, "blocks.0.hook_resid_post")
    monkeypatch.setattr(TransformerBridge, "boot_transformers", fails(oom))
    with pytest.raises(torch.OutOfMemoryError) as e:
        load_model(str(tiny("gpt2")))
    assert e.value is oom


def test_a_model_whose_weight_files_are_missing_or_cut_short_is_said_so(tmp_path, tiny, monkeypatch):
    """A folder with config.json and no weights, or a truncated model.safetensors, was said to be a
    configuration the bridge 'does not handle' (use another model or transformer-lens); a hub model whose
    config is cached and whose weights are not lost the load's advice to download it where the hub can be
    reached. Each now says what is wrong with the files, and a hub model what to do, as before."""
    import shutil

    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoConfig

    from actdict.harvest import bridge

    none, cut = tmp_path / "none", tmp_path / "cut"
    for path in (none, cut):
        shutil.copytree(tiny("gpt2"), path)
    (none / "model.safetensors").unlink()
    whole = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(whole[: len(whole) // 2])
    for path, error in ((none, "OSError: Error no file named model.safetensors"), (cut, "SafetensorError: ")):
        with pytest.raises(ModelError) as e:
            load_model(str(path))
        assert str(e.value).startswith(f"could not load model '{path}' ({error}")
        assert str(e.value).endswith("; its config reads, but its weight files (model.safetensors or "
                                     "pytorch_model.bin, or their shards and index) are missing or cut "
                                     "short: copy or download the model again, whole")
    repo = "EleutherAI/pythia-70m-deduped"  # its config in the HF cache, its weights not: offline
    monkeypatch.setattr(bridge, "_hf_config", lambda target: AutoConfig.from_pretrained(tiny("gpt2")))

    def offline(*a, **kw):
        raise OSError(f"{repo} does not appear to have a file named pytorch_model.bin or model.safetensors.")

    monkeypatch.setattr(TransformerBridge, "boot_transformers", offline)
    with pytest.raises(ModelError) as e:
        load_model(repo, found=("hub", repo, repo))
    assert str(e.value) == (f"could not load model '{repo}' (OSError: {repo} does not appear to have a file "
                            f"named pytorch_model.bin or model.safetensors.); download '{repo}' on a machine "
                            f"with hub access (e.g. `hf download {repo} --local-dir DIR`) and set "
                            "harvest.model to that local folder, or fill the Hugging Face cache (HF_HOME) "
                            "with it and set HF_HUB_OFFLINE=1; for an offline run use all-MiniLM-L6-v2")


def test_a_splice_probe_that_fails_with_no_edit_too_is_not_the_hooks(tiny):
    """A token id past the embedding in the held-out windows (a store not of this model's harvest) failed
    the identity splice's forward, and the analysis said the bridge cannot edit the hook: set
    analyze.ce_loss=false. The forward with no edit fails the same, so the error is raised as it is."""
    from actdict.analyze.splice import Windows, splice_fails

    lm = load_model(str(tiny("gpt2")))
    every = torch.ones(1, 3, dtype=torch.bool)
    past = Windows(torch.tensor([[5, lm.n_vocab + 7, 6]]), every, every)
    with pytest.raises(IndexError, match="index out of range"):
        splice_fails(lm.bridge, past, "blocks.0.hook_resid_post")
    inside = Windows(torch.tensor([[5, 6, 7]]), every, every)
    assert splice_fails(lm.bridge, inside, "blocks.0.hook_resid_post") is None


def test_a_probe_error_that_does_not_recur_is_raised_as_it_is(tiny, monkeypatch):
    """One hook whose first probe failed and whose probe alone then ran (an error that does not recur) was
    said as 'the hooks [it] together failed ..., where each hook alone runs: harvest them in separate
    runs', advice that cannot apply to one hook. Its error is raised as it is."""
    lm = load_model(str(tiny("gpt2")))
    forward, calls = lm.bridge.run_with_cache, []

    def once(*a, **kw):
        calls.append(kw["names_filter"])
        if len(calls) == 1:
            raise IndexError("index 3 is out of bounds for dimension 0 with size 3")
        return forward(*a, **kw)

    monkeypatch.setattr(lm.bridge, "run_with_cache", once)
    with pytest.raises(IndexError, match="^index 3 is out of bounds"):
        lm.row_problems(["blocks.0.hook_resid_post"])
    hook = ["blocks.0.hook_resid_post"]
    assert calls == [hook, [], [], hook, hook]  # the probe; with no hook (2 forwards); the hook alone (2)
