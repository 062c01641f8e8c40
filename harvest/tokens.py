"""A model's tokenizer, offline, and the display strings of its token ids (``token_decoder``: what the
analysis shows for a store's tokens)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


def load_tokenizer(name_or_path: str) -> Any:
    """The tokenizer of a model name or folder, offline only (local folder, package, or HF cache)."""
    from transformers import AutoTokenizer

    from actdict.harvest.models import ModelError, _what_to_do, resolve_model  # (models imports us)

    where, name, target = resolve_model(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(target, local_files_only=True)
    except Exception as e:
        todo = f"; {_what_to_do(name)}" if where == "hub" else ""
        raise ModelError(f"tokenizer of {name!r} is not available offline "
                         f"({type(e).__name__}: {e}){todo}") from e


@dataclass
class TokenDecoder:
    """``ids -> list[str]``: one display string per token id (``token_decoder``). ``wordpiece``: whether the
    tokenizer is WordPiece, whose ``##`` continuations contexts join into words (None: no tokenizer).
    Told by the tokenizer, not guessed from the strings: GPT-2's vocabulary has a '##' token (Markdown
    headings), and one in a context made the report join a GPT-2 dictionary's contexts as WordPiece."""

    text: Callable[[int], str] | None
    wordpiece: bool | None

    def __post_init__(self) -> None:
        self._cache: dict[int, str] = {-1: ""}

    def __call__(self, ids: Sequence[int]) -> list[str]:
        out = []
        for i in ids:
            i = int(i)
            if i not in self._cache:
                self._cache[i] = "" if i < 0 else f"#{i}" if self.text is None else self.text(i)
            out.append(self._cache[i])
        return out


def token_decoder(manifest: dict) -> TokenDecoder:
    """The ``TokenDecoder`` of the tokenizer the manifest records. -1 ids (user vectors) give ""; a manifest
    without a tokenizer gives "#id" for other ids. Each token's text is ``harvest.tokentext``'s (a partial
    UTF-8 character's bytes as ``<0xE7>``, not '�')."""
    from actdict.harvest.tokentext import is_wordpiece_tokenizer, token_texts

    ref = manifest.get("tokenizer") or manifest.get("model")
    tok = load_tokenizer(ref) if ref else None
    if tok is None:
        return TokenDecoder(None, None)
    return TokenDecoder(token_texts(tok), is_wordpiece_tokenizer(tok))
