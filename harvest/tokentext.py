"""The text of one token, as actdict shows it wherever a token or a context appears (the report, the feature
browser, ``actdict feature``, ``actdict lens``, summary.json and the features files).

A context is shown as its tokens' texts joined, so each token's text is the piece of the document it
stands for. ``tokenizer.decode([id])`` is not that for the byte-level families:

* **GPT-2's byte-level BPE** (Pythia, Llama-3, Qwen): a token is a run of bytes; one that holds part of a
  multi-byte UTF-8 character (CJK, emoji, a rare accent) decodes alone to U+FFFD, so the three tokens of
  '猫' all read '�'. Here the bytes that are no character alone are shown as ``<0xE7>`` (SentencePiece's
  own notation): ``' <0xE7>'``, ``'<0x8C>'``, ``'<0xAB>'``.
* **SentencePiece with byte fallback** (Llama-2, Gemma, Mistral): a character outside the vocabulary is
  spelled as byte tokens ``<0xE7>``; those that are no character alone are shown so (not '�'), those
  that are (``<0x0A>``) as their character. A word starts with '▁', which ``decode`` makes a space but
  drops at the start of a text (Llama's decoder strips it; so does a ``Metaspace`` decoder): alone,
  '▁the' decoded to 'the' and '▁' to '', and a context read 'thecatsat'. Here '▁' is always a space.

Other tokenizers (WordPiece, whose ``##`` continuations ``toptokens.display_strings`` joins) and every
special or added token (``<|endoftext|>``, ``[CLS]``) are shown as ``decode`` gives them. These texts are
what summary.json and the features files hold; how a context and a token are shown from them (a split
character read whole, invisible characters marked) is ``analyze.toptokens.context_text`` and ``visible``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def shown_bytes(b: bytes) -> str:
    """``b`` as UTF-8 text, each byte that is no character alone (a partial multi-byte character, an invalid
    byte) written ``<0xNN>``: b'\\xe7\\x8c\\xab' -> '猫', b' \\xe7' -> ' <0xE7>'."""
    s = b.decode("utf-8", "surrogateescape")  # an undecodable byte N -> surrogate U+DC00 + N
    return re.sub("[\udc80-\udcff]", lambda m: f"<0x{ord(m[0]) - 0xDC00:02X}>", s)


def byte_level_chars() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character standing for each byte in a token ('Ġ' -> 32)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[chr(b)] = b
        else:
            out[chr(256 + extra)] = b
            extra += 1
    return out


def decoder_steps(tok: Any) -> list[str]:
    """The types of a fast tokenizer's decoder steps ('ByteLevel'; 'Replace', 'ByteFallback', ...), a
    Replace of '▁' by a space as 'Metaspace' (what Metaspace does); [] for a slow tokenizer or none."""
    try:
        spec = json.loads(tok.backend_tokenizer.decoder.__getstate__())
    except (AttributeError, TypeError, ValueError):
        return []
    steps = spec.get("decoders", [spec]) if spec.get("type") == "Sequence" else [spec]
    return ["Metaspace" if s.get("type") == "Replace" and s.get("pattern") == {"String": "▁"}
            and s.get("content") == " " else str(s.get("type")) for s in steps]


def is_wordpiece_tokenizer(tok: Any) -> bool:
    """Whether ``tok`` is WordPiece (BERT, MiniLM): its decoder's, or a slow tokenizer's, WordPiece."""
    return "WordPiece" in decoder_steps(tok) or hasattr(tok, "wordpiece_tokenizer")


def token_texts(tok: Any) -> Callable[[int], str]:
    """``id -> text`` of one token of ``tok`` (module doc)."""
    steps = decoder_steps(tok)
    added = {int(i) for i in getattr(tok, "added_tokens_decoder", {})} | set(tok.all_special_ids)
    chars = byte_level_chars() if "ByteLevel" in steps else {}

    def decoded(i: int) -> str:
        return tok.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def text(i: int) -> str:
        piece = tok.convert_ids_to_tokens(i) if i not in added else None
        if piece is None:
            return decoded(i)
        if chars and all(c in chars for c in piece):
            return shown_bytes(bytes(chars[c] for c in piece))
        if "ByteFallback" in steps and (m := BYTE_TOKEN.fullmatch(piece)):
            return shown_bytes(bytes([int(m[1], 16)]))
        if "Metaspace" in steps:  # decode drops a text's first space: '▁the' alone read 'the', '▁' ''
            return piece.replace("▁", " ")
        return decoded(i)

    return text
