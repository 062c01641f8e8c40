"""Checkpoints saved without their language-model head, booted by TransformerBridge with one drawn at random
(``harvest.bridge.untrained_hooks``): a bare causal model (``GPTNeoXModel``, ``LlamaModel``: no
``lm_head``) booted as its ``ForCausalLM``, whose unembedding's hooks are refused as they are for a bare
encoder's masked-LM head (tests/test_encoder_tokens.py), while a tied unembedding (``GPT2Model``,
``Qwen2Model``: the token embedding) is trained and harvested; and a config.json that names no class,
whose weights then say whether the head was saved (docs/harvest.md, 'Model families')."""

import json
from pathlib import Path

import pytest
import torch
from test_harvest import harvest
from tiny_encoders import make_encoder, make_masked_lm
from tiny_models import family_config, family_tokenizer, make_bare, make_tiny

from actdict.harvest.bridge import UNTRAINED, untrained_hooks
from actdict.harvest.models import HookError, load_model
from actdict.harvest.store import list_hooks
from actdict.rng import kept_rng

HEAD = ["unembed.hook_in", "unembed.hook_out", "hook_unembed", "ln_final.hook_normalized"]


def loads(folder: str) -> tuple[list[dict], dict]:
    """The caches of ``HEAD`` on one text from two loads of ``folder`` under torch seeds 0 and 1, and the
    untrained hooks of the last load."""
    caches = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        lm = load_model(folder)
        ids = torch.tensor([lm.tokenizer("the river stone")["input_ids"]])  # [1, n]
        caches.append(lm.bridge.run_with_cache(ids, names_filter=HEAD, return_cache_object=False)[1])
    return caches, untrained_hooks(lm.bridge, folder)


@kept_rng()
def make_classifier(family: str, path: Path) -> Path:
    """A tiny ``family`` (tiny_models) saved as its ForSequenceClassification: the base model and a score
    head, no lm_head."""
    import transformers as tf

    tok = family_tokenizer(family)
    torch.manual_seed(0)
    getattr(tf, CLASSIFIERS[family])(family_config(family, tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


CLASSIFIERS = {"llama": "LlamaForSequenceClassification", "qwen2": "Qwen2ForSequenceClassification"}


@pytest.mark.parametrize("family", ["gpt_neox", "llama", "llama_classifier"])
def test_the_random_unembedding_of_a_bare_causal_checkpoint_is_refused(tmp_path, family):
    """A bare GPTNeoXModel / LlamaModel folder, or a LlamaForSequenceClassification one, boots as its
    ForCausalLM with an lm_head drawn at load: its unembed.hook_out and hook_unembed rows changed with
    torch's seed, and a harvest stored them. They are refused now, named or all a pattern matches; the
    unembedding's input and the final norm (the base model's) are the same from load to load, and a
    pattern keeps them."""
    kind = family.removesuffix("_classifier")
    made = make_bare(kind, tmp_path / "m") if kind == family else make_classifier(kind, tmp_path / "m")
    folder = str(made)
    booted = {"gpt_neox": "GPTNeoX", "llama": "Llama"}[kind]
    arch = CLASSIFIERS[kind] if kind != family else f"{booted}Model"
    (a, b), untrained = loads(folder)
    assert (a["unembed.hook_out"] - b["unembed.hook_out"]).abs().max() > 1e-2  # another draw
    for h in ("unembed.hook_in", "ln_final.hook_normalized"):
        torch.testing.assert_close(a[h], b[h], rtol=0, atol=0)
    assert sorted(untrained) == ["hook_unembed", "unembed.hook_out"]
    said = (f"hook 'unembed.hook_out' of {folder} gives no rows of the model's trained weights: {UNTRAINED}: "
            f"the unembedding it adds to this model ({arch}, booted as {booted}ForCausalLM; not tied "
            "to the embedding); its input, unembed.hook_in, is the model's")
    with pytest.raises(HookError) as e:
        harvest(tmp_path / "run", model=folder, hooks=["blocks.0.hook_resid_post", "unembed.hook_out"])
    assert str(e.value) == said
    with pytest.raises(HookError, match="all that 'unembed.hook_o\\*' matches"):
        harvest(tmp_path / "run", model=folder, hooks=["unembed.hook_o*"])
    assert not [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    common, _ = harvest(tmp_path / "run", model=folder, hooks=["unembed.*", "ln_final.hook_normalized"])
    assert sorted(list_hooks(common.store_path)) == ["ln_final.hook_normalized", "unembed.hook_in"]


@pytest.mark.parametrize("family", ["gpt2", "qwen2", "qwen2_classifier"])
def test_a_tied_unembedding_of_a_bare_checkpoint_is_trained(tmp_path, family):
    """GPT2Model and Qwen2Model (and a Qwen2ForSequenceClassification) tie the unembedding to the token
    embedding, which the checkpoint holds: the booted lm_head is that embedding, the same from load to load,
    and nothing is refused."""
    kind = family.removesuffix("_classifier")
    folder = str(make_bare(kind, tmp_path / "m") if kind == family else make_classifier(kind, tmp_path / "m"))
    (a, b), untrained = loads(folder)
    assert untrained == {}
    for h in HEAD:
        torch.testing.assert_close(a[h], b[h], rtol=0, atol=0)


def unnamed(folder: Path) -> str:
    """``folder`` with its config.json's ``architectures`` taken out (a hand-written or old config)."""
    conf = json.loads((folder / "config.json").read_text())
    conf.pop("architectures")
    (folder / "config.json").write_text(json.dumps(conf))
    return str(folder)


def pythia_as_saved(path: Path) -> Path:
    """A tiny GPTNeoXForCausalLM whose unembedding is saved as ``embed_out.weight``, as Pythia's hub
    checkpoints hold it (transformers 5 names the module lm_head, and renames the tensor when it loads)."""
    from safetensors.torch import load_file, save_file

    folder = make_bare("gpt_neox", path)
    conf = json.loads((folder / "config.json").read_text())
    weights = {f"gpt_neox.{k}": v for k, v in load_file(folder / "model.safetensors").items()}
    torch.manual_seed(0)
    weights["embed_out.weight"] = torch.randn(conf["vocab_size"], conf["hidden_size"])
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(conf | {"architectures": ["GPTNeoXForCausalLM"]}))
    return folder


@pytest.mark.parametrize("kind", ["gpt_neox", "bert", "roberta", "llama_head", "bert_head", "roberta_head",
                                  "pythia_head"])
def test_a_config_naming_no_class_is_judged_by_its_weights(tmp_path, kind):
    """A config.json without ``architectures`` boots by its model_type (GPTNeoXForCausalLM,
    BertForMaskedLM), and said nothing about a head its weights lack: the random head's hooks were
    harvested. The weights' tensor names now tell, as transformers renames them at load: a head saved
    (LlamaForCausalLM's lm_head, BertForMaskedLM's cls, Pythia's unembedding saved as embed_out.weight,
    GPTNeoXForCausalLM's lm_head) is trained; none saved, its hooks are refused, saying so. A RoBERTa
    config naming no class, whose model_type the bridge maps to no adapter, was refused at load as an
    unsupported architecture: it boots as RobertaForMaskedLM (``bridge.masked_lm_for``), as one naming
    RobertaModel does."""
    made = {"gpt_neox": lambda p: make_bare("gpt_neox", p), "llama_head": lambda p: make_tiny("llama", p),
            "bert": lambda p: make_encoder("bert", p).parent / "hf",
            "roberta": lambda p: make_encoder("roberta", p).parent / "hf",
            "bert_head": lambda p: make_masked_lm("bert", p),
            "roberta_head": lambda p: make_masked_lm("roberta", p), "pythia_head": pythia_as_saved}
    folder = unnamed(Path(made[kind](tmp_path / "m")))
    (a, b), untrained = loads(folder)
    if kind.endswith("_head"):
        assert untrained == {}
        torch.testing.assert_close(a["hook_unembed"], b["hook_unembed"], rtol=0, atol=0)
        return
    assert (a["hook_unembed"] - b["hook_unembed"]).abs().max() > 1e-2
    head = {"gpt_neox": "lm_head", "bert": "cls", "roberta": "lm_head"}[kind]
    assert {"unembed.hook_out", "hook_unembed"} <= set(untrained)
    assert f"(config.json names no class and its weights no {head}.*, booted as " in untrained["hook_unembed"]


@pytest.mark.parametrize("family", ["gpt_neox", "gpt2"])
def test_the_analysis_needs_the_models_own_unembedding(tmp_path, family):
    """analyze.ce_loss and analyze.logit_effects of a store harvested from a bare GPTNeoXModel ran through
    the unembedding the bridge drew at load (the logits, and so CE and each feature's logit effects, of
    random weights, changing from run to run); they are refused now, saying so and what to set. A bare
    GPT2Model's tied unembedding is its own: the model loads for them."""
    from types import SimpleNamespace

    from actdict.analyze import lm as lm_mod
    from actdict.analyze.config import AnalyzeConfig
    from actdict.analyze.inputs import AnalyzeError

    folder = str(make_bare(family, tmp_path / "m"))
    store = SimpleNamespace(manifest={"model": folder, "hook": "blocks.1.hook_resid_post"}, d=64)
    for cfg, off in ((AnalyzeConfig(logit_effects=3), "analyze.logit_effects=0"),
                     (AnalyzeConfig(ce_loss=True), "analyze.ce_loss=false")):
        if family == "gpt2":
            assert lm_mod.causal_lm(store, "cpu", cfg).name == folder
            continue
        with pytest.raises(AnalyzeError) as e:
            lm_mod.causal_lm(store, "cpu", cfg)
        assert str(e.value).startswith(f"{off.split('=')[0]} needs the model's logits, and {folder}'s "
                                       f"unembedding is not its own (unembed.hook_out: {UNTRAINED}: ")
        assert str(e.value).endswith(f"): set {off}")


def test_the_saved_names_are_read_from_each_kind_of_weight_file(tmp_path):
    """``bridge.saved_names`` (what a config naming no class is judged by): a sharded checkpoint's index, a
    ``pytorch_model.bin`` (loaded onto the meta device: no weights read) and a safetensors header give the
    tensors' names; a folder with none of them, or a hub model not in the cache, gives None."""
    from safetensors.torch import save_file

    from actdict.harvest.bridge import saved_names

    names = {"gpt_neox.embed_in.weight": torch.zeros(3, 2), "embed_out.weight": torch.ones(3, 2)}
    for kind in ("index", "bin", "safetensors", "none"):
        folder = tmp_path / kind
        folder.mkdir()
        if kind == "index":
            index = {"weight_map": {k: "model-00001-of-00002.safetensors" for k in names}}
            (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        elif kind == "bin":
            torch.save(names, folder / "pytorch_model.bin")
        elif kind == "safetensors":
            save_file(names, folder / "model.safetensors")
        got = saved_names(str(folder))
        assert (got if got is None else sorted(got)) == (None if kind == "none" else sorted(names))
    assert saved_names("no-such-owner/no-such-model") is None


@pytest.mark.parametrize("kind", ["pythia_head", "gpt_neox"])
def test_a_pythia_head_counts_as_saved_without_transformers_renames(tmp_path, monkeypatch, kind):
    """Where transformers has no ``conversion_mapping.get_model_conversion_mapping`` (its renames unknown),
    a config naming no class was judged by the raw tensor names: Pythia's unembedding, saved as
    ``embed_out.weight``, was no ``lm_head.*`` and its trained hooks were refused as random.
    ``bridge.HEAD_ALIASES`` now counts it as lm_head's; a bare GPTNeoXModel is still refused."""
    import transformers.conversion_mapping as cm

    folder = unnamed(Path(pythia_as_saved(tmp_path / "m") if kind == "pythia_head"
                          else make_bare("gpt_neox", tmp_path / "m")))
    lm = load_model(folder)
    monkeypatch.delattr(cm, "get_model_conversion_mapping")
    untrained = untrained_hooks(lm.bridge, folder)
    assert sorted(untrained) == ([] if kind == "pythia_head" else ["hook_unembed", "unembed.hook_out"])
