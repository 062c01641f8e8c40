"""A decoder-configured RoBERTa (config.json naming ``RobertaForCausalLM``, ``XLMRobertaForCausalLM`` or
``CamembertForCausalLM``, ``is_decoder: true``) was refused as an architecture TransformerBridge does not
support, though its encoder and ``lm_head`` are RobertaForMaskedLM's modules. It now boots as that masked LM
(``harvest.bridge.CAUSAL_AS_MASKED``); the bridge runs HF's own forward, so its attention stays causal: the
rows are HF's causal hidden states, not the bidirectional ones, and ``hook_unembed`` is its own next-token
logits (docs/harvest.md, 'Encoder families')."""

import json

import numpy as np
import pytest
import torch
from test_encoder_tokens import SPECIALS, source  # noqa: F401  (a fixture)
from test_harvest import check_aligned, harvest, reference
from tiny_encoders import family_model, family_tokenizer

from actdict.harvest.bridge import untrained_hooks
from actdict.harvest.store import open_store
from actdict.rng import kept_rng

NAMES = {"roberta": "Roberta", "xlmr": "XLMRoberta", "camembert": "Camembert"}


@kept_rng()
def make_causal(family: str, path):
    """A tiny random-init ``{family}ForCausalLM``, ``is_decoder: true``, and its tokenizer, in ``path``."""
    import transformers as tf

    path.mkdir(parents=True, exist_ok=True)
    tok = family_tokenizer(family, path)
    cfg = family_model(family, tok).config
    cfg.is_decoder = True
    torch.manual_seed(0)
    getattr(tf, f"{NAMES[family]}ForCausalLM")(cfg).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("mode", ["concat", "per_doc"])  # per_doc pads: the padding mask and the causal one
@pytest.mark.parametrize("family", ["roberta", "xlmr", "camembert"])
def test_a_causal_roberta_is_harvested_with_causal_attention(tmp_path, source, family, mode):  # noqa: F811
    import transformers as tf

    from actdict.harvest.models import load_model

    folder = make_causal(family, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    assert (config["architectures"], config["is_decoder"]) == ([f"{NAMES[family]}ForCausalLM"], True)
    lm = load_model(str(folder))  # was: ModelError, not an architecture the bridge supports
    assert untrained_hooks(lm.bridge, str(folder)) == {}  # lm_head saved: its head is trained
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    common, cfg = harvest(tmp_path / "run", model=str(folder), hooks=hooks, window_mode=mode, source=source,
                          store_dtype="float32")
    cls, sep, pad = SPECIALS[family]
    causal = getattr(tf, f"{NAMES[family]}ForCausalLM").from_pretrained(folder, attn_implementation="eager")
    both = tf.AutoModel.from_pretrained(folder, attn_implementation="eager", is_decoder=False)
    refs = [reference(lambda ids, m=m: m.eval()(input_ids=ids, output_hidden_states=True).hidden_states,
                      lm.tokenizer, cfg, (cls,), (sep,), (sep,), pad, trim=True) for m in (causal, both)]
    for layer, hook in enumerate(hooks):
        store = open_store(common.store_path, hook)
        rows = store.read_rows(0, len(store))
        check_aligned(rows, *refs[0], layer, rtol=0, atol=2e-6)  # HF's causal hidden states
        assert np.abs(rows.acts - refs[1][0]["hs"][layer + 1]).max() > 1e-2  # not the bidirectional ones
    ids = torch.tensor([lm.tokenizer("the river stone")["input_ids"]])  # [1, n]
    with torch.no_grad():
        logits = causal(input_ids=ids).logits
    got = lm.bridge.run_with_cache(ids, names_filter=["hook_unembed"], return_cache_object=False)[1]
    torch.testing.assert_close(got["hook_unembed"], logits, rtol=0, atol=1e-5)  # its own trained lm_head
