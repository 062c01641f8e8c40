"""Token-level harvests (``harvest.mode: tokens``) of encoders beyond MiniLM (test_harvest): a tiny
random-init RoBERTa (``RobertaForMaskedLM``, byte-level BPE), XLM-RoBERTa (``XLMRobertaForMaskedLM``,
SentencePiece unigram) and CamemBERT (``CamembertForMaskedLM``, unigram, ``<s>`` 5) booted with RoBERTa's
adapter, and BERT (``BertForMaskedLM``, WordPiece) run through
TransformerBridge store HF's own hidden states, padding masked out, and their tokens read back as the text,
sentence-transformers RoBERTa and XLM-R folders too; special tokens written in a text are dropped by
skip_special ([UNK] kept); what each residual hook of their post-LN blocks holds; the encoder classes
transformer-lens 4.3.0 has no adapter for are refused saying so (docs/harvest.md, 'Encoder families')."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_harvest import check_aligned, harvest, reference
from tiny_encoders import WORDS, family_model, family_tokenizer, make_encoder, make_masked_lm

from actdict.analyze.toptokens import context_text, display_strings
from actdict.config import apply_overrides
from actdict.harvest.bridge import UNTRAINED, post_ln_note, tl_version, untrained_hooks
from actdict.harvest.models import HookError, ModelError, load_model, rows_refused
from actdict.harvest.rows import expand_hooks, row_hooks
from actdict.harvest.store import list_hooks, open_store
from actdict.harvest.tokentext import token_texts
from actdict.rng import kept_rng

DOCS = ["the river stone café, a naïve lantern by the harbor window and the quiet market",
        "猫 sat on the velvet ladder.", "winter bread engine violin letter garden storm copper orchard"]
# family: the ids of [CLS], [SEP] and the padding as the harvest finds them ([MASK] is special too)
SPECIALS = {"roberta": (0, 2, 1), "xlmr": (0, 2, 1), "bert": (2, 3, 0), "camembert": (5, 6, 1)}
UNUSED = {"camembert": {0, 2, 4}}
"""CamemBERT's '<s>NOTUSED', '</s>NOTUSED' and '<unk>NOTUSED' (ids 0, 2, 4): special tokens of its
tokenizer (and of camembert-base's), never in a text it tokenizes."""


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("docs") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS), encoding="utf-8")
    return {"kind": "files", "path": str(path)}


@pytest.mark.parametrize("mode", ["concat", "per_doc"])  # per_doc pads: the attention mask
@pytest.mark.parametrize("family", ["roberta", "xlmr", "bert", "camembert"])
def test_encoder_rows_are_hf_hidden_states(tmp_path, source, family, mode):
    from transformers import AutoModel

    folder = make_masked_lm(family, tmp_path / "model")
    lm = load_model(str(folder))
    cls, sep, pad = SPECIALS[family]
    assert (lm.kind, lm.cls_id, lm.sep_id, lm.pad_id) == ("encoder", cls, sep, pad)
    assert set(lm.special_ids) == {cls, sep, pad, lm.tokenizer.mask_token_id} | UNUSED.get(family, set())
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    common, cfg = harvest(tmp_path / "run", model=str(folder), hooks=hooks, window_mode=mode, source=source,
                          store_dtype="float32")
    hf = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        ref, docs = reference(lambda ids: hf(input_ids=ids, output_hidden_states=True).hidden_states,
                              lm.tokenizer, cfg, (cls,), (sep,), (sep,), pad, trim=True)
    for layer, hook in enumerate(hooks):  # post-LN encoders: the last block's output is HF's last state
        store = open_store(common.store_path, hook)
        assert store.manifest["attention_mask"] == "padding"
        check_aligned(store.read_rows(0, len(store)), ref, docs, layer, rtol=0, atol=2e-6)
    rows = store.read_rows(0, len(store))
    text = token_texts(lm.tokenizer)
    pieces = [[text(int(i)) for i in rows.token_ids[rows.doc == d]] for d in range(len(DOCS))]
    if family == "roberta":  # byte-level: each document's tokens are its text, '猫' in three bytes
        assert [context_text(p) for p in pieces] == DOCS
        assert pieces[1][:3] == ["<0xE7>", "<0x8C>", "<0xAB>"]
    elif family in ("xlmr", "camembert"):  # '▁' read as a space; a character the unigram lacks is <unk>
        known = set("".join(WORDS)) | {" "}
        assert [context_text(p).strip() for p in pieces] == [
            "".join(c if c in known else "<unk>" for c in doc) for doc in DOCS]
    else:  # WordPiece: lower-cased, accents and spacing as BERT's tokenizer leaves them
        shown = "".join(display_strings(pieces[0])).strip()
        assert shown.startswith("the river stone cafe , a naive lantern")
        assert pieces[1][0] == "[UNK]"


@pytest.mark.parametrize("kind", ["masked_lm", "sentence_transformers"])
@pytest.mark.parametrize("family", ["modernbert", "distilbert", "mpnet"])
def test_encoders_the_bridge_lacks_are_refused_naming_the_architecture(tmp_path, source, family, kind):
    """A token harvest of an encoder transformer-lens 4.3.0 has no adapter for stops at the load, before
    anything is written, in one line: its architecture, the transformer-lens version, the architectures the
    bridge supports, and harvest.mode: embeddings (its documents' embeddings), which it did not say."""
    make = make_masked_lm if kind == "masked_lm" else make_encoder
    folder = make(family, tmp_path / "model")
    arch = json.loads((folder / "config.json").read_text())["architectures"][0]
    with pytest.raises(ModelError) as e:
        harvest(tmp_path / "run", model=str(folder), hooks=["blocks.0.hook_resid_post"], source=source)
    said = str(e.value)
    assert re.fullmatch(rf"could not load model '{re.escape(str(folder))}': its architecture \({arch}; "
                        r"model_type [-a-z]+\) is not one that TransformerLens "
                        rf"{re.escape(tl_version())}'s TransformerBridge supports: for one row per document "
                        r"\(.*\), set harvest\.mode=embeddings; for one per token, use a model of a "
                        r"supported architecture, .*\. Supported: .*", said)
    advice = re.search(r", set (\S+); for one per token", said).group(1)  # as typed after the config
    assert apply_overrides({"harvest": {"mode": "tokens"}}, [advice]) == {"harvest": {"mode": "embeddings"}}
    assert {"BertForMaskedLM", "RobertaForMaskedLM"} <= set(said.split("Supported: ")[1].split(", "))
    assert not [p for p in (tmp_path / "run").rglob("*") if p.is_file()]  # no store, no manifest, no lock


@pytest.mark.parametrize("family", ["roberta", "xlmr", "camembert"])
def test_a_sentence_transformers_roberta_folder_is_harvested_as_its_masked_lm(tmp_path, source, family):
    """A sentence-transformers RoBERTa folder's config.json names RobertaModel, for which transformer-lens
    4.3.0 has no adapter (its model_type roberta maps to none, where bert maps to BertForMaskedLM): the load
    was refused, naming the architecture. It now boots as RobertaForMaskedLM (an adapter the bridge has),
    and its rows are the folder's own hidden states; an XLM-R folder's XLMRobertaModel and a CamemBERT
    folder's CamembertModel too."""
    from transformers import AutoModel

    folder = make_encoder(family, tmp_path / "st")  # harvest.model names it: config.json at its root
    arch = {"roberta": "RobertaModel", "xlmr": "XLMRobertaModel", "camembert": "CamembertModel"}[family]
    assert json.loads((folder / "config.json").read_text())["architectures"] == [arch]
    lm = load_model(str(folder))
    cls, sep, pad = SPECIALS[family]
    assert (lm.kind, lm.cls_id, lm.sep_id, lm.pad_id) == ("encoder", cls, sep, pad)
    common, cfg = harvest(tmp_path / "run", model=str(folder), hooks=["blocks.1.hook_resid_post"],
                          window_mode="per_doc", source=source, store_dtype="float32")
    hf = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        ref, docs = reference(lambda ids: hf(input_ids=ids, output_hidden_states=True).hidden_states,
                              lm.tokenizer, cfg, (cls,), (sep,), (sep,), pad, trim=True)
    store = open_store(common.store_path, "blocks.1.hook_resid_post")
    check_aligned(store.read_rows(0, len(store)), ref, docs, 1, rtol=0, atol=2e-6)


def test_a_t5_encoder_boots_as_seq2seq_and_its_harvest_stops_saying_the_forward_failed(tmp_path, source):
    """sentence-t5's T5EncoderModel folder: the bridge boots T5ForConditionalGeneration (encoder_blocks.L,
    decoder_blocks.L hooks), whose forward wants decoder inputs; nothing is stored."""
    folder = make_encoder("t5", tmp_path / "st")
    said = (r"\(T5EncoderModel; model_type t5\) failed inside TransformerLens [\d.]+'s TransformerBridge "
            r"\(ValueError: (You must specify exactly one|You have to specify either decoder_input_ids)")
    # transformers' words for the missing decoder inputs: 5.25's, then 5.9's (pyproject's lowest)
    with pytest.raises(ModelError, match=said):
        harvest(tmp_path / "run", model=str(folder), hooks=["encoder_blocks.1.hook_resid_post"],
                source=source)
    assert not list((tmp_path / "run").rglob("shards/*"))


LITERALS = {"bert": "[CLS] [SEP] [PAD] [MASK] [UNK]", "roberta": "<s> </s> <pad> <mask> <unk>",
            "xlmr": "<s> </s> <pad> <mask> <unk>", "camembert": "<s> </s> <pad> <mask> <unk>"}
"""Each family's special tokens, [UNK] last, written in a text: its tokenizer reads each as that token."""


@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("family", ["bert", "roberta", "xlmr", "camembert"])
def test_special_tokens_written_in_a_text(tmp_path, family, skip):
    """A literal [CLS]/<s>, [SEP]/</s>, pad or [MASK] in a text is that token: skip_special drops its row
    and keeps [UNK]'s (text the vocabulary lacks); without skip_special every row is stored. Either way the
    stored rows are HF's hidden states of the window as the model saw it (RoBERTa's position ids skip a
    literal <pad>, in HF as under the bridge)."""
    from transformers import AutoModel

    folder = make_masked_lm(family, tmp_path / "model")
    lm = load_model(str(folder))
    words = LITERALS[family].split()
    text = " ".join(f"{w} {s}" for w, s in zip(("river", "stone", "market", "winter", "bread"), words,
                                               strict=True)) + " garden"
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in (text, DOCS[2])), encoding="utf-8")
    common, cfg = harvest(tmp_path / "run", model=str(folder), hooks=["blocks.1.hook_resid_post"],
                          window_mode="per_doc", source={"kind": "files", "path": str(path)},
                          store_dtype="float32", skip_special=skip)
    cls, sep, pad = SPECIALS[family]
    literal = lm.tokenizer.convert_tokens_to_ids(words)  # [5] ids of the specials as written
    assert literal == [cls, sep, pad, lm.tokenizer.mask_token_id, lm.tokenizer.unk_token_id]
    hf = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        ref, docs = reference(lambda ids: hf(input_ids=ids, output_hidden_states=True).hidden_states,
                              lm.tokenizer, cfg, (cls,), (sep,), (sep,), pad, trim=True)
    assert set(literal) <= set(docs[0])
    dropped = set(literal[:4]) if skip else set()  # [UNK] is text
    store = open_store(common.store_path, "blocks.1.hook_resid_post")
    rows = store.read_rows(0, len(store))
    assert [int(i) for i in rows.token_ids[rows.doc == 0]] == [i for i in docs[0] if i not in dropped]
    check_aligned(rows, ref, docs, 1, rtol=0, atol=2e-6, mask=~np.isin(ref["tokens"], list(dropped)))


@pytest.mark.parametrize("family", ["bert", "roberta", "xlmr", "camembert"])
def test_what_each_residual_hook_of_a_post_ln_block_holds(tmp_path, source, family, capsys):
    """BERT's and RoBERTa's blocks are post-LN: h = LN1(x + attn(x)), out = LN2(h + mlp(h)). Under
    TransformerBridge hook_resid_pre is x (HF's hidden_states[L]) and hook_resid_post out (hidden_states[L+1],
    the last block's too: no final norm), but hook_attn_out is h, after the LayerNorm (the stream the MLP
    reads, not what attention adds), and hook_resid_mid is LN2's input h + mlp(h), not x + attn_out
    (docs/harvest.md, 'Encoder families'). Windows of the model's whole context (RoBERTa's 64 of 66
    positions), padded, through both blocks."""
    from transformers import AutoModel

    folder = make_masked_lm(family, tmp_path / "model")
    lm = load_model(str(folder))
    kinds = ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post")
    common, cfg = harvest(tmp_path / "run", model=str(folder), hooks=[f"blocks.*.{k}" for k in kinds],
                          window_mode="per_doc", source=source, store_dtype="float32", ctx=lm.n_ctx)
    assert cfg.ctx == 64
    said = [line for line in capsys.readouterr().out.splitlines() if "post-LN" in line]  # the harvest's note
    odd = ", ".join(f"blocks.{i}.{k}" for k in ("hook_attn_out", "hook_resid_mid") for i in range(2))
    assert len(said) == 1 and f"post-LN, so of the hooks {odd}: hook_attn_out holds the " in said[0]
    hf = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    cls, sep, pad = SPECIALS[family]
    with torch.no_grad():
        ref, docs = reference(lambda ids: hf(input_ids=ids, output_hidden_states=True).hidden_states,
                              lm.tokenizer, cfg, (cls,), (sep,), (sep,), pad, trim=True)
    for layer, block in enumerate(hf.encoder.layer):
        rows = {k: open_store(common.store_path, f"blocks.{layer}.{k}").read_rows(0, len(ref["tokens"]))
                for k in kinds}  # each [n] rows, the same tokens
        check_aligned(rows["hook_resid_pre"], ref, docs, layer - 1, rtol=0, atol=2e-6)
        check_aligned(rows["hook_resid_post"], ref, docs, layer, rtol=0, atol=2e-6)
        h, mid, mlp = (torch.from_numpy(rows[k].acts) for k in kinds[1:4])  # [n, d] each
        with torch.no_grad():
            np.testing.assert_allclose(block.output.dense(block.intermediate(h)), mlp, rtol=0, atol=2e-6)
            np.testing.assert_allclose(mid, h + mlp, rtol=0, atol=2e-6)
            np.testing.assert_allclose(block.output.LayerNorm(mid), rows["hook_resid_post"].acts, rtol=0,
                                       atol=2e-6)
        x = rows["hook_resid_pre"].acts  # [n, d]
        assert np.abs(mid.numpy() - (x + h.numpy())).max() > 0.1  # resid_mid is not resid_pre + attn_out


HEAD = ["ln_final.hook_normalized", "ln_final.hook_out", "mlm_head.hook_out", "unembed.hook_in",
        "hook_unembed"]
"""Hooks of the masked-LM head the bridge gives a bare encoder (BertForMaskedLM's, RobertaForMaskedLM's)."""


@kept_rng()
def make_as(family: str, path: Path, cls: str) -> Path:
    """A tiny random-init ``family`` encoder saved as transformers' class ``cls`` with its tokenizer:
    BertForSequenceClassification, RobertaForSequenceClassification, XLMRobertaForSequenceClassification (a
    fine-tuned hub checkpoint: the encoder and a classifier, no masked-LM head) or BertForPreTraining
    (bert-base-uncased's class: the masked-LM head, cls.predictions, beside the next-sentence one)."""
    import transformers as tf

    path.mkdir(parents=True, exist_ok=True)  # the unigram's files
    tok = family_tokenizer(family, path)
    torch.manual_seed(0)
    getattr(tf, cls)(family_model(family, tok).config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


CLASSIFIERS = {"bert": "BertForSequenceClassification", "roberta": "RobertaForSequenceClassification",
               "xlmr": "XLMRobertaForSequenceClassification"}


@pytest.mark.parametrize("family", ["minilm", "roberta", "xlmr", "camembert", "bert_classifier",
                                    "roberta_classifier", "xlmr_classifier"])
def test_the_masked_lm_head_of_a_bare_encoder_is_refused(tmp_path, source, family):
    """MiniLM's checkpoint (BertModel), a sentence-transformers RoBERTa or XLM-R folder's (RobertaModel,
    XLMRobertaModel) and a BERT, RoBERTa or XLM-R classifier's hold no masked-LM head: the bridge boots
    them as masked LMs and
    draws the head's weights at load, so its hooks' rows changed from one load to the next (here with the
    torch seed), and a harvest stored them. Named, or all a pattern matches, they are refused before
    anything is written; a pattern leaves them out and keeps the head's input (mlm_head.hook_in), the last
    block's output."""
    kind = family.removesuffix("_classifier")
    made = {"minilm": lambda: "all-MiniLM-L6-v2",
            f"{kind}_classifier": lambda: make_as(kind, tmp_path / "c", CLASSIFIERS[kind])}
    folder = str(made.get(family, lambda: make_encoder(family, tmp_path / "st"))())
    last = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        lm = load_model(folder)
        ids = torch.tensor([lm.tokenizer("the river stone")["input_ids"]])  # [1, n]
        _, cache = lm.bridge.run_with_cache(ids, names_filter=HEAD + ["mlm_head.hook_in"],
                                            return_cache_object=False)
        last.append(cache)
    assert all((last[0][h] - last[1][h]).abs().max() > 1e-2 for h in HEAD)  # random: another draw
    torch.testing.assert_close(last[0]["mlm_head.hook_in"], last[1]["mlm_head.hook_in"], rtol=0, atol=0)
    said = (rf"of .* give[s]? no rows of the model's trained weights: {re.escape(UNTRAINED)}: the masked-LM "
            r"head it adds to this encoder \((Bert|Roberta|XLMRoberta|Camembert)"
            r"(Model|ForSequenceClassification), booted as (Bert|Roberta|XLMRoberta|Camembert)ForMaskedLM\); "
            r"the encoder's output is")
    for hooks in (["blocks.0.hook_resid_post", "ln_final.hook_normalized"], ["ln_final.*"], ["hook_unembed"]):
        with pytest.raises(HookError, match=said):
            harvest(tmp_path / "run", model=folder, hooks=hooks, source=source)
        assert not [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    out = f"blocks.{lm.n_layers - 1}.hook_resid_post"
    common, _ = harvest(tmp_path / "run", model=folder, hooks=["mlm_head.*", out], source=source,
                        store_dtype="float32", window_mode="per_doc")
    assert sorted(list_hooks(common.store_path)) == [out, "mlm_head.hook_in"]  # hook_out left out
    rows = [open_store(common.store_path, h) for h in (out, "mlm_head.hook_in")]
    np.testing.assert_array_equal(*(r.read_rows(0, len(r)).acts for r in rows))


@pytest.mark.parametrize("family", ["bert", "roberta", "xlmr"])
def test_a_classifier_is_harvested_as_its_masked_lm(tmp_path, source, family):
    """A fine-tuned RoBERTa or XLM-R classifier's folder (config.json naming
    RobertaForSequenceClassification, XLMRobertaForSequenceClassification) was refused as an architecture
    the bridge does not support, where a BERT one boots by its model_type. It now boots as
    RobertaForMaskedLM as a BERT one boots as BertForMaskedLM, and its rows are its own encoder's hidden
    states (its random masked-LM head refused: the test above)."""
    from transformers import AutoModel

    folder = make_as(family, tmp_path / "c", CLASSIFIERS[family])
    lm = load_model(str(folder))
    assert type(lm.bridge.original_model).__name__.endswith("ForMaskedLM") and lm.kind == "encoder"
    common, cfg = harvest(tmp_path / "run", model=str(folder), hooks=["blocks.*.hook_resid_post"],
                          window_mode="per_doc", source=source, store_dtype="float32")
    hf = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    cls, sep, pad = SPECIALS[family]
    with torch.no_grad():
        ref, docs = reference(lambda ids: hf(input_ids=ids, output_hidden_states=True).hidden_states,
                              lm.tokenizer, cfg, (cls,), (sep,), (sep,), pad, trim=True)
    for layer in range(2):
        store = open_store(common.store_path, f"blocks.{layer}.hook_resid_post")
        check_aligned(store.read_rows(0, len(store)), ref, docs, layer, rtol=0, atol=2e-6)


def test_one_refusal_says_each_hook_in_its_own_words(tmp_path):
    """A bare encoder's random head hooks named beside a hook that is no vector per token are refused in
    one HookError, each said as what it is: the head's as giving no rows of the trained weights, once for
    the two, the attention pattern as not one vector per token. The head's were refused alone first (the
    pattern unsaid), and ``rows_refused`` called them 'not one vector per token'."""
    folder = str(make_encoder("bert", tmp_path / "st"))
    lm = load_model(folder)
    head = ["ln_final.hook_normalized", "hook_unembed"]
    wanted = [*head, "blocks.0.attn.hook_pattern", "blocks.1.hook_resid_post"]
    with pytest.raises(HookError) as e:
        row_hooks(lm, wanted, expand_hooks(lm, wanted))
    said = str(e.value)
    assert said.startswith(f"hooks 'ln_final.hook_normalized', 'hook_unembed' of {folder} give no rows of "
                           f"the model's trained weights: {UNTRAINED}: the masked-LM head it adds to this "
                           "encoder (BertModel, booted as BertForMaskedLM); ")
    assert said.count(UNTRAINED) == 1
    assert "hook 'blocks.0.attn.hook_pattern' (it holds attention weights or scores" in said
    assert said.count("not one vector per token") == 1 and "'hook_unembed' (" not in said
    alone = str(rows_refused({h: why for h, why in untrained_hooks(lm.bridge, folder).items() if h in head}))
    assert "not one vector per token" not in alone and "trained weights" in alone


def test_the_post_ln_note_names_only_the_hooks_whose_names_mislead():
    """post_ln_note: BERT / RoBERTa / XLM-R model_types, blocks.L.hook_attn_out and hook_resid_mid only, in
    the harvest's order; None for a pre-LN model (GPT-NeoX) or the other residual hooks."""
    hooks = ["blocks.0.hook_resid_pre", "blocks.0.hook_attn_out", "blocks.1.hook_resid_mid",
             "blocks.1.attn.hook_z", "blocks.1.hook_resid_post"]
    for kind in ("bert", "roberta", "xlm-roberta", "camembert"):
        note = post_ln_note(kind, hooks)
        assert note.startswith(f"note: this {kind} encoder's blocks are post-LN, so of the hooks "
                               "blocks.0.hook_attn_out, blocks.1.hook_resid_mid: ")
    assert post_ln_note("gpt_neox", hooks) is None and post_ln_note(None, hooks) is None
    assert post_ln_note("bert", [h for h in hooks if "attn_out" not in h and "resid_mid" not in h]) is None




@pytest.mark.parametrize("family", ["bert", "pretraining", "roberta", "xlmr", "camembert"])
def test_the_masked_lm_head_of_a_trained_masked_lm_is_harvested(tmp_path, source, family):
    """The other side of the refusal above: a checkpoint that holds its masked-LM head (BertForMaskedLM,
    BertForPreTraining booted as BertForMaskedLM, RobertaForMaskedLM, XLMRobertaForMaskedLM booted with
    RoBERTa's adapter) has no untrained hooks, its head's rows are the same from one load to the next
    whatever the torch seed (its weights, not a draw), and a harvest of ln_final.* stores them."""
    folder = str(make_as("bert", tmp_path / "m", "BertForPreTraining") if family == "pretraining"
                 else make_masked_lm(family, tmp_path / "m"))
    last = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        lm = load_model(folder)
        assert untrained_hooks(lm.bridge, folder) == {}
        ids = torch.tensor([lm.tokenizer("the river stone")["input_ids"]])  # [1, n]
        last.append(lm.bridge.run_with_cache(ids, names_filter=HEAD, return_cache_object=False)[1])
    for h in HEAD:
        torch.testing.assert_close(last[0][h], last[1][h], rtol=0, atol=0)
    common, _ = harvest(tmp_path / "run", model=folder, hooks=["ln_final.*"], source=source,
                        store_dtype="float32")
    stored = set(list_hooks(common.store_path))
    assert stored >= {"ln_final.hook_in", "ln_final.hook_normalized", "ln_final.hook_out"}
