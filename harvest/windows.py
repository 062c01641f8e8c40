"""Token windows: the model inputs of fixed length that a token harvest cuts its documents into.

``token_windows`` is the pure cut (token ids -> windows of exactly ``ctx`` tokens, resumable at any window's
cursor); ``model_windows`` reads a source's documents, tokenizes them (``tokenized``: under torchrun each
rank tokenizes its share) and cuts them with a model's special tokens (``window_specials``), refusing a token
its embedding lacks (``in_vocab``). The harvest (``actdict.harvest.run``) and ``actdict lens`` read text as
model inputs through here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np

from actdict.harvest.config import HarvestConfig
from actdict.harvest.dist import Ranks
from actdict.harvest.models import LoadedModel
from actdict.harvest.resume import HarvestError
from actdict.harvest.sources import iter_documents


@dataclass
class Window:
    """One model input of ctx tokens and, per token, where it came from and whether to store its row."""

    tokens: np.ndarray  # [ctx] int64 model input ids
    doc: np.ndarray  # [ctx] int64 document index in iteration order (-1 for specials/pad)
    pos: np.ndarray  # [ctx] int32 index of the token within its document (-1 for specials/pad)
    keep: np.ndarray  # [ctx] bool rows to store (False for prefix/suffix/sep/pad)
    n_pad: int = 0
    """Padding tokens at the end (only the stream's or a document's last window has any): an encoder's
    attention mask hides exactly these."""
    start: tuple[int, int] = (0, 0)
    """Stream cursor of its first body token: (document index, offset in it); a negative offset is a
    separator token before that document. ``token_windows(..., start=w.start)`` resumes at this window."""


def token_windows(docs: Iterable[Sequence[int]], ctx: int, mode: str = "concat", prefix: Sequence[int] = (),
                  suffix: Sequence[int] = (), sep: Sequence[int] = (), pad_id: int = 0,
                  start: tuple[int, int] = (0, 0)) -> Iterator[Window]:
    """Cut tokenized documents into windows of exactly ``ctx`` tokens: prefix + body + suffix + padding.

    ``concat``: documents joined with ``sep`` into one stream, cut into bodies of ctx - len(prefix) -
    len(suffix) tokens (a document may continue in the next window). ``per_doc``: each document cut on its
    own (``sep`` unused). Only the last window of the stream (concat) or of each document (per_doc) is
    short; it is padded after the suffix with ``pad_id``. Only document tokens have keep=True.

    ``start``: resume at a window's ``start`` cursor; ``docs`` then begins with document ``start[0]``
    (the caller skips the earlier ones) and the windows are exactly those of the full stream from there.
    """
    if mode not in ("concat", "per_doc"):
        raise ValueError(f"mode must be 'concat' or 'per_doc', got {mode!r}")
    body = ctx - len(prefix) - len(suffix)
    if body <= 0:
        raise ValueError(f"ctx={ctx} leaves no room for document tokens after prefix {list(prefix)} "
                         f"and suffix {list(suffix)}")
    special = (np.asarray(prefix, np.int64), np.asarray(suffix, np.int64), np.asarray(sep, np.int64))
    first, offset = start
    pending: list[tuple[np.ndarray, ...]] = []  # (tokens, doc, pos, cursor doc, cursor offset) [m] each
    n_pending, started = 0, first > 0
    for i, toks in enumerate(docs, start=first):
        toks = np.asarray(toks, dtype=np.int64).reshape(-1)  # [n]
        if len(toks) == 0:
            continue
        at = max(offset, 0) if i == first else 0  # resume inside the first document
        piece = _piece(toks[at:], i, np.arange(at, len(toks)), i)
        if mode == "per_doc":
            yield from _cut([piece], body, special, pad_id)
            continue
        if started and len(sep) and not (i == first and offset >= 0):  # sep between documents
            skip = len(sep) + offset if i == first else 0  # resume inside the separator
            pending.append(_piece(special[2][skip:], -1, np.arange(skip - len(sep), 0), i))
            n_pending += len(sep) - skip
        started = True
        pending.append(piece)
        n_pending += len(piece[0])
        if n_pending >= body:
            stream = [np.concatenate(parts) for parts in zip(*pending, strict=True)]
            full = (n_pending // body) * body
            yield from _cut([tuple(a[:full] for a in stream)], body, special, pad_id)
            rest = tuple(a[full:] for a in stream)
            pending, n_pending = ([rest], len(rest[0])) if len(rest[0]) else ([], 0)
    if mode == "concat" and n_pending:
        yield from _cut(pending, body, special, pad_id)


def _piece(toks: np.ndarray, doc: int, offsets: np.ndarray, cursor_doc: int) -> tuple[np.ndarray, ...]:
    """(tokens, doc, pos, cursor doc, cursor offset) [m] of m stream tokens; separators have doc = pos = -1
    and a negative cursor offset into the document they precede."""
    m = len(toks)
    return (toks, np.full(m, doc, np.int64), np.where(offsets >= 0, offsets, -1).astype(np.int32),
            np.full(m, cursor_doc, np.int64), offsets.astype(np.int64))


def _cut(pieces, body: int, special, pad_id: int) -> Iterator[Window]:
    """Windows of the concatenated (tokens, doc, pos, cursor) pieces; only the last one may be padded."""
    prefix, suffix, _ = special
    toks, doc, pos, cdoc, coff = (np.concatenate(parts) for parts in zip(*pieces, strict=True))
    for a in range(0, len(toks), body):
        t, d, p = toks[a:a + body], doc[a:a + body], pos[a:a + body]
        head, tail = len(prefix), len(suffix) + body - len(t)  # non-document slots before / after
        yield Window(
            tokens=np.concatenate([prefix, t, suffix, np.full(body - len(t), pad_id, np.int64)]),
            doc=np.concatenate([np.full(head, -1, np.int64), d, np.full(tail, -1, np.int64)]),
            pos=np.concatenate([np.full(head, -1, np.int32), p, np.full(tail, -1, np.int32)]),
            keep=np.concatenate([np.zeros(head, bool), d >= 0, np.zeros(tail, bool)]),
            start=(int(cdoc[a]), int(coff[a])),
            n_pad=body - len(t),
        )


def window_specials(lm: LoadedModel, cfg: HarvestConfig) -> dict:
    """prefix/suffix/sep/pad_id for ``token_windows`` of this model."""
    if cfg.pad_id is not None and cfg.pad_id >= lm.n_vocab:  # else an IndexError deep in the forward
        raise HarvestError(f"harvest.pad_id {cfg.pad_id} is no token of {lm.name}: its ids are 0.."
                           f"{lm.n_vocab - 1} (null: the tokenizer's pad token, else EOS)")
    if lm.kind == "encoder":
        if lm.cls_id is None or lm.sep_id is None:
            raise HarvestError(f"encoder {lm.name} has no [CLS]/[SEP] token")
        pad = cfg.pad_id if cfg.pad_id is not None else lm.pad_id if lm.pad_id is not None else 0
        return {"prefix": (lm.cls_id,), "suffix": (lm.sep_id,), "sep": (lm.sep_id,), "pad_id": pad}
    bos = lm.bos_id if lm.bos_id is not None else lm.eos_id
    if cfg.prepend_bos and bos is None:  # else windows would start with no BOS, unannounced
        raise HarvestError(f"{lm.name}'s tokenizer has no BOS or EOS token to begin each window with: set "
                           f"harvest.prepend_bos: false (windows start with document text)")
    if cfg.join_with_eos and cfg.window_mode == "concat" and lm.eos_id is None:
        raise HarvestError(f"{lm.name}'s tokenizer has no EOS token to join documents with: set harvest."
                           f"join_with_eos: false (documents run on) or harvest.window_mode: per_doc")
    prefix = (bos,) if cfg.prepend_bos else ()
    sep = (lm.eos_id,) if cfg.join_with_eos and lm.eos_id is not None else ()
    pad = next(i for i in (cfg.pad_id, lm.pad_id, lm.eos_id, 0) if i is not None)
    return {"prefix": prefix, "suffix": (), "sep": sep, "pad_id": pad}


def tokenized(tokenizer, texts: Iterable[str], group: int = 64, ranks: Ranks | None = None
              ) -> Iterator[Sequence[int]]:
    """Token ids of each text, no special tokens added (tokenized ``group`` texts at a time). A fast
    tokenizer's Rust backend is called directly (the same ids, ~15% less time: no offsets, no masks).

    ``ranks`` (torchrun): every rank reads the same rounds of ``group * world`` texts, tokenizes its own
    contiguous share of each round and receives the rest from the others (``Ranks.share``), so each
    document is tokenized once in all, and every rank still sees every document's ids in order."""
    encode = _encoder(tokenizer)
    world, rank = (ranks.world, ranks.rank) if ranks is not None else (1, 0)
    it = iter(texts)
    while batch := list(islice(it, group * world)):
        if world == 1:
            yield from encode(batch)
            continue
        k = -(-len(batch) // world)  # this round's share per rank; the last rounds' may be short or empty
        mine = batch[rank * k:(rank + 1) * k]
        yield from ranks.share(encode(mine) if mine else [])


def _encoder(tokenizer) -> Callable[[list[str]], list[Sequence[int]]]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    fast = getattr(backend, "encode_batch_fast", None)
    if fast is not None:
        return lambda batch: [e.ids for e in fast(batch, add_special_tokens=False)]
    return lambda batch: tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]


def model_windows(lm: LoadedModel, cfg: HarvestConfig, start: tuple[int, int] = (0, 0),
                  ranks: Ranks | None = None) -> Iterator[Window]:
    """The model input windows of ``cfg.source`` for ``lm``, in harvest order, from cursor ``start``
    (the documents before ``start[0]`` are read but not tokenized). ``ranks``: tokenize together
    (``tokenized``); every rank must then iterate the same windows."""
    if cfg.ctx > lm.n_ctx:
        raise HarvestError(f"harvest.ctx={cfg.ctx} exceeds the context of {lm.name} ({lm.n_ctx})")
    docs = tokenized(lm.tokenizer, islice(iter_documents(cfg.source), start[0], None), ranks=ranks)
    windows = token_windows(docs, cfg.ctx, mode=cfg.window_mode, start=start, **window_specials(lm, cfg))
    return in_vocab(windows, lm)


def in_vocab(windows: Iterable[Window], lm: LoadedModel) -> Iterator[Window]:
    """``windows``, refused at the first token id past ``lm``'s embedding, else an IndexError deep in the
    forward: a tokenizer may hold tokens its model lacks (TransformerBridge adds '<|endoftext|>' to one
    with neither EOS nor UNK, and a literal one in a text is read as that token)."""
    for w in windows:
        if said := past_vocab(w.tokens, lm):
            at = int(np.argmax(w.tokens >= lm.n_vocab))
            raise HarvestError(f"document {int(w.doc[at])} holds {said}: remove that text from the source, "
                               "or give the model a tokenizer without it")
        yield w


def past_vocab(ids: np.ndarray, lm: LoadedModel) -> str | None:
    """The first of ``ids`` [n] past ``lm``'s embedding in words ("token 50257 ('<|endoftext|>'), which
    ...'s tokenizer has but its embedding lacks (ids 0..50256)"), or None: the harvest's refusal
    (``in_vocab``) and the lens' (``analyze.lens.text_rows``)."""
    if not len(ids) or int(ids.max()) < lm.n_vocab:
        return None
    i = int(ids[int(np.argmax(ids >= lm.n_vocab))])
    return (f"token {i} ({lm.tokenizer.convert_ids_to_tokens(i)!r}), which {lm.name}'s tokenizer has but its "
            f"embedding lacks (ids 0..{lm.n_vocab - 1})")
