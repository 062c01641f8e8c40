"""The harvest loop: documents -> tokens -> windows -> one forward per batch -> one store per hook.

Encoders (BERT/MiniLM) see ``[CLS] body [SEP]`` windows (concat mode joins documents with [SEP]); causal LMs
see ``BOS body`` windows with documents joined by EOS (TransformerLens' tokenize_and_concatenate recipe).
Only document tokens are stored. One forward feeds every hook and stops after the deepest requested block
(``stop_at_layer``).

Shards are computed independently (``actdict.harvest.plan``): a rerun of a killed harvest skips the whole
shards it finds (``actdict.harvest.resume``) and ends with the same bytes as an uninterrupted run; under
``torchrun`` rank r writes the shards s with s % world == r, and rank 0 marks the store complete.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import numpy as np

from actdict.bars import bar_disabled, bar_timing
from actdict.config import Common, ConfigError, device_said
from actdict.config_data import config_hash, to_dict
from actdict.errors import one_line
from actdict.harvest.added import check_added, check_count, check_rows
from actdict.harvest.bridge import post_ln_note
from actdict.harvest.config import HarvestConfig, hook_pattern
from actdict.harvest.dist import Ranks, init_ranks, rank_device
from actdict.harvest.layout import ACT_DTYPES, fs_of, human_size, write_shard
from actdict.harvest.models import (
    Found,
    LoadedModel,
    available,
    load_model,
    named_row_problem,
    resolve_device,
    rows_refused,
)
from actdict.harvest.pipeline import Behind, Prefetch
from actdict.harvest.plan import RowStream, ShardWork, owner, shard_work, stored_positions
from actdict.harvest.resume import (
    HarvestError,
    check_growth,
    check_manifest,
    clean,
    done_shards,
    finish,
    forward_numerics,
    growable,
    prefix_done,
    read_manifest,
    record,
    reopen,
    start_manifest,
    store_lock,
)
from actdict.harvest.reuse import (
    as_json,
    complete_for,
    complete_said,
    held_hooks,
    hook_manifests,
    to_add,
)
from actdict.harvest.rows import expand_hooks, row_hooks, shard_rows_of
from actdict.harvest.sources import (
    SourceConfig,
    check_source,
    require_readable,
    source_fingerprint,
)
from actdict.harvest.store import open_store
from actdict.harvest.windows import model_windows
from actdict.harvest.writer import CHUNK_ROWS, new_manifest
from actdict.precision import harvest_forward
from actdict.rng import kept_rng
from actdict.signals import under_torchrun

__all__ = ["HarvestError", "main", "describe_source"]
META_BYTES = 4 + 8 + 4  # token_ids int32 + doc int64 + pos int32, per row


def describe_source(src: SourceConfig) -> str:
    what = {"debian": "offline Debian demo corpus", "files": f"files {src.path}",
            "hub": f"hub dataset {src.name} (split {src.split})"}[src.kind]
    return what + (f", first {src.max_docs} docs" if src.max_docs is not None else "")


def rows_identity(lm: LoadedModel, cfg: HarvestConfig) -> dict:
    """What a hook's manifest records of where its rows came from beyond the config: the model's revision,
    the source files' fingerprint and, for an encoder, what its attention mask hides (stores begun before
    2026-12-06 hid a window's final [SEP] after a separator, so they neither resume nor grow)."""
    ident = {"revision": lm.revision, "source_fingerprint": source_fingerprint(cfg.source)}
    return ident | ({"attention_mask": "padding"} if lm.kind == "encoder" else {})


def check(common: Common, cfg: HarvestConfig) -> None:
    """Reject a harvest section that reads other data than it names, before anything runs (``actdict run``
    calls it with the other stages' checks): a source field its kind does not read (``check_source``); an
    ``embed`` or ``vectors`` section set for a token harvest, the default mode (``vectors: {path: x.npy}``
    without ``mode: vectors`` harvested the demo corpus; a mode named is taken as meant); a chunk_rows above
    both max_tokens and the default (its one chunk is stored whole, padded); a hook named outright that is,
    by its name, no vector per token (``models.named_row_problem``: an attention pattern; the harvest asks
    the model of every hook, ``row_hooks``)."""
    if cfg.mode != "vectors":  # a vectors import reads no source
        check_source(cfg.source)
        if cfg.max_tokens is not None and cfg.chunk_rows > max(cfg.max_tokens, CHUNK_ROWS):
            raise ConfigError(  # as an import's (writer.default_layout): 13 GB for 5,000 rows of d=384
                f"harvest.chunk_rows {cfg.chunk_rows:,} is more than the max_tokens={cfg.max_tokens:,} rows "
                f"to write (and the default {CHUNK_ROWS:,}), and a chunk is stored whole, padded: leave "
                f"harvest.chunk_rows out for the default, or give at most "
                f"{max(cfg.max_tokens, CHUNK_ROWS):,}")
    if cfg.mode == "tokens" and (named := {h: why for h in cfg.hooks if not hook_pattern(h) and
                                           (why := named_row_problem(h))}):
        raise rows_refused(named)  # as the harvest would, once the model is loaded: also for --dry-run
    for name, mode in (("embed", "embeddings"), ("vectors", "vectors")):
        sub = getattr(cfg, name)
        given = {k: v for k, v in vars(sub).items() if v != getattr(type(sub), k)}
        if cfg.mode == "tokens" and given:
            raise ConfigError(f"harvest.{name} is set ({given}) but harvest.mode='tokens' does not read it: "
                              f"set harvest.mode={mode}, or leave {name} out")


@kept_rng()
def main(common: Common, cfg: HarvestConfig, on_hooks: Callable[[list[str]], None] | None = None) -> None:
    """Harvest ``cfg.hooks`` of ``cfg.model`` on ``cfg.source`` into ``common.store_path``, holding the
    store's lock (``store_lock``) throughout. ``on_hooks``: called with the hook names once the model has
    expanded ``cfg.hooks``, before anything is computed (it may raise to stop the harvest)."""
    with store_lock(common.store_path) as writing:
        _main(common, cfg, on_hooks, writing)


def one_process(cfg: HarvestConfig) -> None:
    """Embeddings and vectors harvests write from one process (under torchrun every rank would write the
    whole hook): a ConfigError there, raised once the store is known to need writing."""
    if under_torchrun():
        raise ConfigError(f"harvest.mode {cfg.mode} runs in one process: torchrun splits token harvests "
                          "only; run `actdict harvest` once without torchrun (a complete store is then "
                          "skipped under torchrun too)")


def hooks_said(dims: dict[str, int]) -> str:
    """'blocks.1.hook_resid_post (d 384), blocks.3.hook_resid_post (d 384)': the hooks a harvest writes and
    each one's width, as its start line says them."""
    return ", ".join(f"{h} (d {d})" for h, d in dims.items())


def _main(common: Common, cfg: HarvestConfig, on_hooks: Callable[[list[str]], None] | None = None,
          writing: Callable[..., None] = lambda hooks=None: None) -> None:
    if cfg.mode != "tokens":  # one row per document (harvest/embed.py) or your own vectors (vectors.py)
        import importlib

        return importlib.import_module({"embeddings": "actdict.harvest.embed", "vectors":
                                        "actdict.harvest.vectors"}[cfg.mode]).main(common, cfg, writing)
    path, chash = common.store_path, config_hash(cfg)
    manifests = hook_manifests(path)
    grow = growable(manifests, as_json(cfg))  # a larger max_tokens: continue the store
    if not grow and complete_for(path, list(cfg.hooks), cfg, manifests):
        how, aside = complete_said(manifests, cfg)  # in this config's terms; hooks left to other configs
        _say(f"harvest: store {path} is already complete for this config (config hash {chash}{how}); "
             f"skipping{aside}")
        return
    if not any(m.get("complete") for m in manifests.values()):
        writing()  # a new or unfinished store: a training started while the model loads waits for it
    found = available(cfg.model)  # a model that cannot be had stops first, as the plan says (load_model
    require_readable(cfg.source)  # takes the answer), then a source that cannot be read: both before the load
    ranks = init_ranks()
    try:
        harvest(common, cfg, ranks, grow, on_hooks, writing, found)
    finally:
        ranks.close()


def harvest(common: Common, cfg: HarvestConfig, ranks: Ranks, grow: bool = False,
            on_hooks: Callable[[list[str]], None] | None = None,
            writing: Callable[..., None] = lambda hooks=None: None, found: Found | None = None) -> None:
    """The token harvest of one rank (see module doc). ``grow``: the store is complete with a smaller
    max_tokens; rank 0 reopens it first (``resume.reopen``) and the harvest continues it. ``writing``: rank 0
    calls it before its first change to the store (``resume.store_lock``). ``found``: ``available``'s
    answer for the model, when asked already (``load_model`` then does not probe the hub again)."""
    from tqdm import tqdm

    path, chash, say = common.store_path, config_hash(cfg), _say if ranks.rank == 0 else _quiet
    where = resolve_device(rank_device(cfg.device, ranks))  # 'auto' said as the device it is
    dtype, dtype_text, warn = harvest_forward(cfg.dtype, where)  # 'auto' too
    if warn:
        say(f"harvest: warning: {warn}")
    say(f"harvest: loading the model {cfg.model} (device {where}, {dtype_text})")  # a log that
    lm = load_model(cfg.model, device=where, dtype=dtype, found=found)  # ends here died loading it
    import torch

    random.seed(common.seed)
    np.random.seed(common.seed)
    torch.manual_seed(common.seed)
    widths, left_out = row_hooks(lm, cfg.hooks, expand_hooks(lm, cfg.hooks))
    hooks = list(widths)
    if left_out:
        each = "; ".join(f"{[h for h in left_out if left_out[h] == why]} ({why})" for why in
                         dict.fromkeys(left_out.values()))
        say(f"harvest: left out the hooks the patterns match that it cannot store (why, for each): {each}")
    model_type = getattr(getattr(lm.bridge.original_model, "config", None), "model_type", None)
    if note := post_ln_note(model_type, hooks):
        say(f"harvest: {note}")
    if on_hooks is not None:
        on_hooks(hooks)
    stored = {} if grow else hook_manifests(path)
    held = held_hooks(stored, cfg)  # complete: their rows are this harvest's
    if not grow and not (hooks := to_add(path, hooks, cfg, say, stored)):  # the store holds them all
        return
    same_as = open_store(path, min(held)) if held else None  # the rows each added hook's shard must have
    stop = lm.stop_at_layer(hooks)
    same = rows_identity(lm, cfg)  # what the manifest records of the rows besides the config
    numerics = forward_numerics(dtype, lm.device, cfg.store_dtype)
    if grow:  # on every rank, before rank 0 reopens: a store that cannot grow stays complete (its numerics
        for h in hooks:  # too: 'auto' may pick another dtype or device here, and the rows would mix two)
            check_growth(read_manifest(path, h), same | {"numerics": numerics}, f"store {path} hook {h!r}")
    for h, m in held.items():  # hooks added beside them: the same model files and source files
        check_added(m, same, f"store {path} hook {h!r}", path, hooks)
    if ranks.rank == 0:
        writing(hooks)  # from here on no training or analysis reads the store (but for new hooks only)
        for h in hooks:
            if grow:
                reopen(path, h, chash, as_json(cfg))
                say(f"harvest: growing {path} hook {h!r} to max_tokens {cfg.max_tokens}")
            for where in clean(path, h):
                say(f"harvest: removed {where} (left by a killed run; it is written again)")
        if grow:  # a shared store (one per layer's run folder) changes under every run that learned it
            say(f"harvest: note: dictionaries trained on {path} before it grew, in any run folder, learned "
                "another store: actdict train retrains them, actdict analyze refuses them")
    ranks.barrier()
    done = {h: done_shards(path, h) for h in hooks}
    done_all = set.intersection(*done.values())
    k = prefix_done(done_all)
    cursor = record(path, hooks[0], k - 1).get("start") if k else None
    cursor = cursor or {"window": 0, "doc": 0, "offset": 0, "row": 0}
    stream = RowStream(model_windows(lm, cfg, (cursor["doc"], cursor["offset"]), ranks),
                       lambda w: stored_positions(w, lm.special_ids, cfg.skip_special),
                       first_index=cursor["window"], first_row=cursor["row"], limit=cfg.max_tokens)
    items = iter(stream)
    first = next(items, None)
    manifests = {h: read_manifest(path, h) for h in hooks}
    if first is None and not any(manifests.values()):
        raise HarvestError(f"the source ({describe_source(cfg.source)}) gave no documents")
    if first is not None:  # each hook's width d, as row_hooks' probe saw it (no forward of its own)
        dims = {h: widths[h] for h in hooks}
    else:  # everything was harvested before a crash: only the manifests are left to write
        dims = {h: int(m["d"]) for h, m in manifests.items()}
    base = {"model": lm.name, "tokenizer": lm.name, "config_hash": chash, "numerics": numerics,
            "corpus": describe_source(cfg.source), "kind": lm.kind, "harvest": to_dict(cfg)} | same
    want = {h: new_manifest(base | {"hook": h}, dims[h], cfg.store_dtype, cfg.shard_rows, cfg.chunk_rows)
            for h in hooks}
    if ranks.rank == 0:
        for h in hooks:
            start_manifest(path, h, want[h])
    ranks.barrier()
    for h in hooks:
        check_manifest(read_manifest(path, h), want[h], f"store {path} hook {h!r}")
    per_row = sum(d * ACT_DTYPES[cfg.store_dtype].itemsize + META_BYTES for d in dims.values())
    say(f"harvest: {lm.name} ({lm.kind}, {device_said(lm.device)}, {dtype_text}) hooks {hooks_said(dims)} "
        f"stop_at_layer {stop}; "
        f"{planned(cfg.max_tokens, cfg.source.max_docs, per_row)} ({per_row} bytes/row, shard buffer "
        f"{human_size(cfg.shard_rows * per_row)}); "
        f"source: "
        f"{describe_source(cfg.source)} -> {path}" + (f"; {ranks.world} ranks" if ranks.world > 1 else ""))
    if any(done.values()):
        run = f"0..{k - 1} in a row; " if k else ""
        say(f"harvest: resuming: {len(done_all)} shard(s) whole in every hook ({run}they are skipped), "
            f"{sum(map(len, done.values()))} in all; the document stream restarts at document "
            f"{cursor['doc']} (row {cursor['row']:,})")
    fs, root = fs_of(path)
    skipped = sum(int(record(path, hooks[0], s)["n_rows"]) for s in done_all)  # the bar counts them done
    with tqdm(total=cfg.max_tokens, initial=skipped, unit="tok", unit_scale=True, desc="harvest",
              disable=bar_disabled(ranks.rank != 0), **bar_timing()) as bar:
        progress = _Progress(bar, ranks.world, cfg.max_tokens, cfg.source.max_docs is not None)
        # tokenising ahead of the forward (docs/harvest.md, "Throughput"), up to two rounds of shards (rows):
        # under torchrun every rank tokenises a share of every window, also of the shards it skips
        ahead = Prefetch(items, depth=2 * ranks.world * cfg.shard_rows, cost=lambda it: max(1, len(it.rows)))
        try:
            with Behind() as writer:  # the last finished shard is written while the next one is computed
                for work in shard_work(_chain(first, ahead), cfg.shard_rows,
                                       lambda s: owner(s, ranks.world) == ranks.rank and s not in done_all):
                    data = shard_rows_of(lm, work, hooks, stop, cfg.batch_size, cfg.store_dtype, progress)
                    if same_as is not None:  # before it is written: an added hook's rows are the store's
                        check_rows(same_as, work.index * cfg.shard_rows, data, hooks)
                    writer.submit(lambda work=work, data=data: _write(fs, root, work, data, hooks, done,
                                                                      cfg.chunk_rows))
        finally:  # also on an error: the tokenising thread stops instead of waiting on a full queue
            ahead.close()
    ranks.barrier()
    if same_as is not None:  # the source ended where the store's rows end
        check_count(same_as, stream.end_row, hooks)
    if ranks.rank == 0:
        for h in hooks:
            finish(path, h, want[h], stream.end_row, cfg.shard_rows)
    ranks.barrier()
    say(f"harvest: wrote {stream.end_row:,} rows per hook to {path}")


def _write(fs, root: str, work: ShardWork, data: dict, hooks: list[str], done: dict, chunk_rows: int) -> None:
    """Write one finished shard in every hook that lacks it (a crash may have left it whole in some)."""
    meta = {k: data[k] for k in ("token_ids", "doc", "pos")}
    for h in hooks:
        if work.index not in done[h]:
            write_shard(fs, f"{root}/{h}", work.index, meta | {"acts": data[h]}, chunk_rows,
                        record={"start": work.pieces[0][0].cursor})


def planned(max_tokens: int | None, max_docs: int | None, per_row: int) -> str:
    """What the start line says the harvest will write: the rows per hook and their size on disk, an upper
    bound when ``source.max_docs`` may end the source first (20 documents are far fewer than 100,000 rows)."""
    if max_tokens is None:
        return "the whole source" + ("" if max_docs is None else f" ({max_docs:,} documents)")
    size = f"{max_tokens:,} rows per hook, ~{human_size(max_tokens * per_row)} on disk"
    return size if max_docs is None else f"at most {size} (fewer if its {max_docs:,} documents end first)"


class _Progress:
    """Advances the bar after each batch; after the first one, prints the measured rate and the ETA."""

    def __init__(self, bar, world: int, planned: int | None, bound: bool = False):
        self.bar, self.world, self.planned, self.t0 = bar, world, planned, time.perf_counter()
        self.bound = bound  # source.max_docs may end the source before ``planned`` rows: the ETA is a bound
        self.first = True

    def __call__(self, n: int) -> None:
        step = n * self.world  # the other ranks go at about the same pace (an estimate: kept <= planned)
        self.bar.update(min(step, max(self.planned - self.bar.n, 0)) if self.planned else step)
        if self.first and not self.bar.disable:  # rank 0's bar only (tqdm.write prints whatever the bar)
            self.first = False
            rate = n * self.world / max(time.perf_counter() - self.t0, 1e-9)
            eta = (f", {'at most ' if self.bound else ''}~{(self.planned - self.bar.n) / rate:,.0f} s to go"
                   if self.planned else "")
            self.bar.write(f"harvest: first batch: ~{rate:,.0f} rows/s (first batches are slower){eta}")


def _chain(first, rest):
    if first is not None:
        yield first
        yield from rest


def _say(text: str) -> None:
    """Print a line of the harvest's, ``one_line``: it names the store path, the model and hooks, which a
    config or a manifest gives (an ESC in them would act on the terminal, a newline make a line of its
    own)."""
    print(one_line(text))


def _quiet(*args, **kwargs) -> None:
    pass
