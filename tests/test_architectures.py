"""The harvest and the analysis on the model families researchers train dictionaries on, beyond MiniLM and
the Pythia shape: random-init tiny GPT-2, Llama, Gemma-2 and Qwen2 folders (``tiny_models``), each with its
family's special tokens. Every stored row is checked against the HF model run directly, at every block."""

import json

import numpy as np
import pytest
import torch
from test_harvest import check_aligned, harvest, reference
from tiny_models import FAMILIES, block_outputs, folder_maker, make_tiny

from actdict.harvest.models import load_model
from actdict.harvest.store import open_store

# the tokenizer's ids as the bridge leaves them: it sets a missing pad to EOS, a missing BOS to EOS
SPECIALS = {  # family: (bos, eos, pad, special_ids, EOS as text)
    "gpt2": (50256, 50256, 50256, {50256}, "<|endoftext|>"),
    "llama": (1, 2, 2, {1, 2}, "</s>"),  # <unk> (0) is real text
    "gemma2": (2, 1, 0, {0, 1, 2}, "<eos>"),  # <unk> (3) is real text
    "qwen2": (50256, 50256, 50256, {50256}, "<|endoftext|>"),  # no BOS of its own: EOS begins a window
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """family -> its model folder, built once per module on first use."""
    return folder_maker(tmp_path_factory)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_boots_with_its_special_tokens_and_the_usual_hooks(tiny, family):
    lm = load_model(str(tiny(family)))
    bos, eos, pad, special, _ = SPECIALS[family]
    assert (lm.kind, lm.bos_id, lm.eos_id, lm.pad_id) == ("causal", bos, eos, pad)
    assert set(lm.special_ids) == special
    assert lm.d_model == 64 and lm.n_ctx == 128 and lm.n_layers == (3 if family == "gemma2" else 2)
    last = lm.n_layers - 1
    for h in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out"):
        lm.check_hooks([f"blocks.0.{h}", f"blocks.{last}.{h}"])
    assert lm.stop_at_layer(["blocks.0.hook_resid_post"]) == 1
    assert lm.stop_at_layer([f"blocks.{last}.hook_resid_post"]) is None
    ids = torch.tensor([[bos, 100, 200, 300, 400, 500, 600]])
    with torch.no_grad():  # what a block adds to the residual (Gemma-2: after its post-norms)
        _, c = lm.bridge.run_with_cache(ids)
        _, early = lm.bridge.run_with_cache(ids, names_filter=["blocks.0.hook_resid_post"], stop_at_layer=1)
    assert torch.equal(early["blocks.0.hook_resid_post"], c["blocks.0.hook_resid_post"])  # stopped: the same
    for b in range(lm.n_layers):
        pre, mid, post = (c[f"blocks.{b}.hook_resid_{k}"] for k in ("pre", "mid", "post"))
        torch.testing.assert_close(c[f"blocks.{b}.hook_attn_out"], mid - pre, rtol=0, atol=1e-5)
        torch.testing.assert_close(c[f"blocks.{b}.hook_mlp_out"], post - mid, rtol=0, atol=1e-5)
    assert ("blocks.0.ln2_post.hook_out" in lm.bridge.hook_dict) == (family == "gemma2")


@pytest.mark.parametrize("mode", ["concat", "per_doc"])  # per_doc pads each document's last window
@pytest.mark.parametrize("family", FAMILIES)
def test_rows_align_with_hf_at_every_block(tmp_path, tiny, family, mode):
    """Rows of every block's hook_resid_post (hooks: [all]) equal HF's block outputs at the row's window
    position, the windows made as the family's tokenizer says: its BOS first, EOS between documents, its
    pad after a short window; a literal EOS in the text is not stored, a literal <unk> is."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny(family)
    bos, eos, pad, _, eos_text = SPECIALS[family]
    texts = ["The ferry leaves at nine, rain or shine.", f"Owls are quiet {eos_text} at night <unk>.",
             "A tidy kitchen makes a calm cook; the orchard is full of apples this year."]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    source = {"kind": "files", "path": str(tmp_path / "docs.jsonl")}
    common, cfg = harvest(tmp_path / "run", model=str(path), hooks=["all"], window_mode=mode, ctx=12,
                          source=source, store_dtype="float32")
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(path)
    ref, docs = reference(block_outputs(model), tok, cfg, (bos,), (), (eos,), pad, trim=False)
    literal = ref["tokens"] == eos  # skip_special drops its row
    assert literal.sum() == 1
    for layer in range(len(ref["hs"]) - 1):
        store = open_store(common.store_path, f"blocks.{layer}.hook_resid_post")
        rows = store.read_rows(0, len(store))
        check_aligned(rows, ref, docs, layer, rtol=1e-4, atol=1e-5, mask=~literal)
    if mode == "per_doc":  # actdict lens reads a text as a per_doc harvest stores it
        from actdict.analyze.lens import text_rows

        ids, x = text_rows(load_model(str(path)), cfg, f"blocks.{layer}.hook_resid_post", texts[1])
        mine = np.flatnonzero(rows.doc == 1)  # the text with a literal EOS: not read either
        np.testing.assert_array_equal(ids, rows.token_ids[mine])
        np.testing.assert_allclose(x.numpy(), rows.acts[mine], rtol=1e-5, atol=1e-6)
    # the last block's rows are its output, not HF's last hidden state (after the final norm)
    normed = reference(lambda ids: model(input_ids=ids, output_hidden_states=True).hidden_states, tok, cfg,
                       (bos,), (), (eos,), pad, trim=False)[0]["hs"][-1][~literal]  # [n, d]
    assert np.abs(normed - rows.acts).max() > 0.1
    assert len(set(ref["doc"])) == 3 and np.isin(0 if family == "llama" else 3, ref["tokens"]) == (
        family in ("llama", "gemma2"))  # <unk> stored where it is one token


@pytest.mark.filterwarnings("ignore:test_identity has no decode")
@pytest.mark.parametrize("family", FAMILIES)
def test_ce_loss_and_logit_effects_on_each_family(tiny, lm_run, monkeypatch, family):
    """analyze.ce_loss: the clean CE is HF's own next-token loss on the held-out windows (Gemma-2's logits
    softcapped), an identity splice recovers it all. analyze.logit_effects: each feature's tokens are the
    ones its direction raises and lowers most through HF's own final norm and unembedding (GPT-2's LayerNorm
    centres; Gemma's RMSNorm scales by 1 + weight; Gemma and Qwen2 tie the unembedding to the embedding)."""
    from test_splice import Identity
    from tiny_models import final_norm
    from transformers import AutoModelForCausalLM

    from actdict.analyze import run
    from actdict.analyze.config import AnalyzeConfig
    from actdict.analyze.lm import splice_setup
    from actdict.analyze.splice import next_token_ce
    from actdict.config import Common
    from actdict.train.protocol import make

    path, d = tiny(family), 64
    run_dir = lm_run(str(path), "blocks.1.hook_resid_post", d)
    sae = make("sae_l1", d, 6, seed=0)
    monkeypatch.setattr(run, "load_models", lambda *a: {"id": Identity(d, d), "sae": sae})
    monkeypatch.setattr(run, "resolve_decoder", lambda m: lambda ids: [str(i) for i in ids])
    cfg = AnalyzeConfig(ce_loss=True, ce_windows=2, ce_ctx=12, ce_batch_size=2, logit_effects=3, device="cpu")
    run.main(Common(run_dir=str(run_dir)), cfg)
    s = json.loads((run_dir / "summary.json").read_text())
    hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    windows = splice_setup(load_model(str(path)), cfg, open_store(str(run_dir / "store")), [2, 3])[1]
    assert (windows.tokens[:, 0] == SPECIALS[family][0]).all()  # the family's BOS (Qwen2: EOS) first
    with torch.no_grad():
        ce = next_token_ce(hf(input_ids=windows.tokens).logits, windows.tokens)[windows.real[:, 1:]]
        assert s["ce"]["ce_clean"] == pytest.approx(float(ce.double().mean()), rel=1e-5)
        assert s["models"]["id"]["ce_recovered"] == 1.0 and s["models"]["id"]["kl"] == 0.0
        col = sae.decoder.weight.detach().T  # [k, d]
        norm = final_norm(hf)
        bias = 0 if getattr(norm, "bias", None) is None else norm.bias
        through = (norm(col / col.norm(dim=1, keepdim=True)) - bias) @ hf.lm_head.weight.T  # [k, V]
    feats = json.loads((run_dir / "features" / "sae.json").read_text())["features"]
    assert len(feats) == 6
    for f in feats:
        eff = through[f["i"]]  # [V] the feature's effect, up to its positive scale
        assert [i for i, _ in f["logits"]["up"]] == eff.topk(3).indices.tolist()
        assert [i for i, _ in f["logits"]["down"]] == eff.topk(3, largest=False).indices.tolist()


def test_an_architecture_the_bridge_lacks_is_named_with_the_ones_it_supports(tmp_path):
    """BioGPT (an HF causal LM that TransformerBridge has no adapter for): the load said 'check that the
    folder holds an HF model', which it does, after the bridge's unsorted dump of what it supports."""
    from tiny_models import family_tokenizer
    from transformers import BioGptConfig, BioGptForCausalLM

    from actdict.harvest.models import ModelError

    tok = family_tokenizer("gpt2")
    cfg = BioGptConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                       intermediate_size=128, max_position_embeddings=128)
    BioGptForCausalLM(cfg).save_pretrained(tmp_path / "biogpt")
    tok.save_pretrained(tmp_path / "biogpt")
    with pytest.raises(ModelError) as e:
        load_model(str(tmp_path / "biogpt"))
    said = str(e.value)
    assert said.startswith(f"could not load model '{tmp_path / 'biogpt'}': its architecture "
                           "(BioGptForCausalLM; model_type biogpt) is not one that TransformerLens ")
    assert "TransformerBridge supports: use a model of a supported architecture" in said
    supported = said.split("Supported: ")[1].split(", ")
    assert {"GPT2LMHeadModel", "LlamaForCausalLM", "Gemma2ForCausalLM", "Qwen2ForCausalLM"} <= set(supported)
    assert supported == sorted(supported, key=str.lower) and "check that the folder" not in said


@pytest.mark.parametrize("unk", [True, False])
def test_a_tokenizer_without_eos_is_refused_not_joined_with_an_invented_token(tmp_path, unk):
    """A Llama whose tokenizer has no EOS: the bridge names '<|endoftext|>' its EOS and pad, a token the
    model never saw. With an <unk> in the vocabulary it read as <unk> (id 0: documents were joined with
    <unk>); without, it was added at id 50257, one past the embedding (an IndexError in the forward)."""
    from test_harvest import harvest
    from tiny_models import EOT, bpe_tokenizer

    from actdict.harvest.run import HarvestError

    head, roles = (["<unk>", "<s>"], {"unk_token": "<unk>"}) if unk else (["<s>"], {})
    tok = bpe_tokenizer(head, [], absent=(EOT,), bos_token="<s>", **roles)
    path = make_tiny("llama", tmp_path / "m", tok=tok)
    lm = load_model(str(path))
    assert (lm.bos_id, lm.eos_id, lm.pad_id, lm.n_vocab) == (len(head) - 1, None, None, len(head) + 50256)
    assert set(lm.special_ids) == {len(head) - 1} | ({len(head) + 50256} if not unk else set())  # <s>, the
    # added '<|endoftext|>' (not stored if a text holds it literally); <unk> is real text
    texts = ["The ferry leaves at nine.", "Owls are quiet at night."]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    source = {"kind": "files", "path": str(tmp_path / "docs.jsonl")}
    with pytest.raises(HarvestError, match=r"has no EOS token to join documents with: set harvest\."
                       r"join_with_eos: false \(documents run on\) or harvest\.window_mode: per_doc"):
        harvest(tmp_path / "run", model=str(path), ctx=12, source=source, hooks=["blocks.0.hook_resid_post"])
    common, _ = harvest(tmp_path / "run", model=str(path), ctx=12, source=source, join_with_eos=False,
                        hooks=["blocks.0.hook_resid_post"])
    store = open_store(common.store_path, "blocks.0.hook_resid_post")
    rows = store.read_rows(0, len(store))
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    np.testing.assert_array_equal(rows.token_ids, np.concatenate(ids))  # no separator, nothing invented


def test_a_token_past_the_embedding_in_a_text_is_refused_naming_it(tmp_path):
    """The bridge adds '<|endoftext|>' to a tokenizer with neither EOS nor UNK, at id 50257, one past the
    embedding: a text holding it literally stopped the harvest with an IndexError deep in the forward."""
    from test_harvest import harvest
    from tiny_models import EOT, bpe_tokenizer

    from actdict.harvest.run import HarvestError

    tok = bpe_tokenizer(["<s>"], [], absent=(EOT,), bos_token="<s>")
    path = make_tiny("llama", tmp_path / "m", tok=tok)
    texts = ["The ferry leaves at nine.", f"Owls {EOT} at night."]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    source = {"kind": "files", "path": str(tmp_path / "d.jsonl")}
    with pytest.raises(HarvestError, match=r"^document 1 holds token 50257 \('<\|endoftext\|>'\), which "
                       r".*'s tokenizer has but its embedding lacks \(ids 0\.\.50256\): remove that text"):
        harvest(tmp_path / "run", model=str(path), ctx=12, join_with_eos=False,
                hooks=["blocks.0.hook_resid_post"], source=source)


def test_a_token_past_the_embedding_in_a_lens_text_is_refused_naming_it(tmp_path):
    """actdict lens reads its text as the harvest reads a document, but without harvest.windows.in_vocab: a
    text holding the '<|endoftext|>' the bridge added past the embedding stopped with an IndexError deep in
    the forward, where the harvest names the token; the lens names it too (a LensError: one error line)."""
    from test_harvest import harvest
    from tiny_models import EOT, bpe_tokenizer

    from actdict.analyze.lens import LensError, text_rows

    tok = bpe_tokenizer(["<s>"], [], absent=(EOT,), bos_token="<s>")
    path = make_tiny("llama", tmp_path / "m", tok=tok)
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": "The ferry leaves at nine."}) + "\n")
    source = {"kind": "files", "path": str(tmp_path / "d.jsonl")}
    _, cfg = harvest(tmp_path / "run", model=str(path), ctx=12, join_with_eos=False,
                     hooks=["blocks.0.hook_resid_post"], source=source)
    lm = load_model(str(path))
    ids, _ = text_rows(lm, cfg, "blocks.0.hook_resid_post", "Owls at night.")
    np.testing.assert_array_equal(ids, tok("Owls at night.", add_special_tokens=False)["input_ids"])
    with pytest.raises(LensError, match=r"^the text holds token 50257 \('<\|endoftext\|>'\), which .*'s "
                       r"tokenizer has but its embedding lacks \(ids 0\.\.50256\): leave that text out$"):
        text_rows(lm, cfg, "blocks.0.hook_resid_post", f"Owls {EOT} at night.")
