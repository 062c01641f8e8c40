"""Shuffled batches from an activation store, read chunk by chunk (never per-row random reads).

Per epoch: the train chunks are permuted (seed, epoch), read ``buffer_chunks`` at a time into RAM (the next
group is read by a background thread while the current one is consumed), the rows of the buffer (plus the
leftover of the previous group) are permuted and cut into batches. Every train row is yielded once per
epoch (the last batch of an epoch may be short), but a lone last row (``last_batches``). At most two
groups plus one batch of rows are in RAM, whatever the size of the store.

The order is planned on global row indices before any data is read (:func:`epoch_plan`), so batch ``i`` of
epoch ``e`` is a pure function of (chunk sizes, seed, e, i): a resumed run skips to batch ``i`` without
reading the batches before it, and each rank of a distributed run takes its own slice (``part``) of every
global batch. Works with any object with ``d``, ``acts_dtype``, ``chunk_bounds(i)`` and ``read_acts(i, out)``
(``actdict.harvest.store.ActivationStore``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from actdict.config import ConfigError
from actdict.errors import ActdictError
from actdict.files import write_atomic


class SplitError(ActdictError, ValueError):
    """The store's chunks cannot be split as asked (the data, not the config, is the problem)."""


def make_split(num_chunks: int, test_fraction: float, seed: int) -> dict:
    """Seeded permutation of chunk indices -> {"train_chunks", "test_chunks", "seed"} (each list sorted)."""
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if test_fraction > 0 and num_chunks == 1:
        raise SplitError(f"the store has 1 chunk: none can be held out for testing (test_fraction="
                          f"{test_fraction}; the split is by chunk). Write the store with smaller chunks "
                          "(harvest.chunk_rows; `python -m actdict.harvest.vectors --chunk-rows N`), or set "
                          "train.test_fraction=0 (analyze then has no held-out rows)")
    perm = np.random.default_rng(seed).permutation(num_chunks)
    n_test = int(round(test_fraction * num_chunks))
    if test_fraction > 0 and num_chunks >= 2:
        n_test = max(1, n_test)
    if num_chunks - n_test < 1:
        raise SplitError(f"the store has {num_chunks} chunk(s): none left for training "
                         f"(test_fraction={test_fraction}); harvest more rows or use smaller chunk_rows")
    return {"train_chunks": sorted(int(c) for c in perm[n_test:]),
            "test_chunks": sorted(int(c) for c in perm[:n_test]), "seed": int(seed)}


def split_note(sizes: list[int], split: dict, test_fraction: float) -> str | None:
    """A warning when the held-out chunks (``sizes``: rows per chunk) hold a share of the rows far from
    ``test_fraction`` (more than 0.1 off): the split is by whole chunks, and few or unequal chunks (a short
    last one) move it. None when the share is close."""
    held = sum(sizes[c] for c in split["test_chunks"]) / max(1, sum(sizes))
    if abs(held - test_fraction) <= 0.1:
        return None
    chunks = ", ".join(map(str, split["test_chunks"]))
    return (f"the held-out chunks {chunks} hold {held:.0%} of the rows, not "
            f"train.test_fraction={test_fraction:g}: the split is by whole chunks, and this store has "
            f"{len(sizes)} chunks of up to {max(sizes)} rows; a store with smaller chunks "
            "(harvest.chunk_rows, the vectors import's --chunk-rows) splits closer")


def write_split(run_dir: str | Path, split: dict) -> Path:
    """``<run_dir>/split.json``, written whole or not at all (a temporary file, then a rename)."""
    path = Path(run_dir) / "split.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, json.dumps(split, indent=1))


def split_readable(run_dir: str | Path) -> bool:
    """``<run_dir>/split.json`` exists and holds a split (not one cut short by a kill or a full disk)."""
    try:
        return "test_chunks" in json.loads((Path(run_dir) / "split.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


@dataclass(frozen=True)
class GroupPlan:
    """One RAM buffer: the chunks it reads and the order of its rows, as global store row indices."""

    chunks: list[int]
    left: np.ndarray  # [n_left] rows carried over from the previous buffer (first in the buffer)
    perm: np.ndarray  # [n_left + rows of chunks] shuffle of the buffer
    rows: np.ndarray  # [same] global row index of each shuffled buffer position
    first_batch: int  # index (within the epoch) of the first batch cut from this buffer
    n_batches: int  # batches cut from this buffer (the epoch's last buffer also yields its short tail)


def epoch_plan(store, chunks: Sequence[int], batch_size: int, buffer_chunks: int, seed: int,
               epoch: int) -> Iterator[GroupPlan]:
    """The buffers of one epoch, lazily, from chunk sizes only (no data read)."""
    if batch_size < 1 or buffer_chunks < 1:
        raise ConfigError(f"batch_size ({batch_size}) and buffer_chunks ({buffer_chunks}) must be >= 1")
    rng = np.random.default_rng([seed, epoch])
    order = [int(c) for c in rng.permutation(np.asarray(chunks, dtype=np.int64))]
    total = last_batches(sum(b - a for a, b in map(store.chunk_bounds, order)), batch_size)  # the epoch's
    left = np.empty(0, np.int64)
    first = 0
    for gi in range(0, len(order), buffer_chunks):
        group = order[gi:gi + buffer_chunks]
        rows = np.concatenate([left, *(np.arange(*store.chunk_bounds(c)) for c in group)])
        perm = rng.permutation(len(rows))
        rows = rows[perm]
        last = gi + buffer_chunks >= len(order)
        n = total - first if last else len(rows) // batch_size
        yield GroupPlan(group, left, perm, rows, first, n)
        left = rows[n * batch_size:]
        first += n


def last_batches(rows: int, batch_size: int) -> int:
    """Batches of an epoch of ``rows`` rows: a short last batch too, unless it would hold one row alone (a
    batch of one row has no batch statistics: lse's variance, the spread; that row sits this epoch out,
    and the next epoch's shuffle puts another row last)."""
    return -(-rows // batch_size) if rows % batch_size != 1 or rows == 1 else rows // batch_size


def steps_in_epoch(store, chunks: Sequence[int], batch_size: int) -> int:
    return last_batches(sum(b - a for a, b in map(store.chunk_bounds, chunks)), batch_size)


def rank_slice(n: int, part: tuple[int, int]) -> slice:
    """The rows of a global batch of n that rank ``part[0]`` of ``part[1]`` trains on (contiguous)."""
    rank, world = part
    return slice(n * rank // world, n * (rank + 1) // world)


PROBE_CHUNKS = 16
"""Held-out chunks ``train.probe_rows``' rows are spread over, at most (evenly spaced among the test chunks):
a chunk holds neighbouring rows of a few documents, so the rows of one chunk would measure those documents."""


def probe_chunks(test_chunks: Sequence[int], most: int = PROBE_CHUNKS) -> list[int]:
    """Up to ``most`` of ``test_chunks``, evenly spaced (the first and the last among them), ascending."""
    m = min(most, len(test_chunks))
    return sorted({test_chunks[round(i * (len(test_chunks) - 1) / max(1, m - 1))] for i in range(m)})


def held_out_rows(store, test_chunks: Sequence[int], n: int) -> np.ndarray:
    """``n`` held-out rows for ``train.probe_rows``, read once: the first rows of each of ``probe_chunks``
    (ceil(n / their number) each, the others' share growing where a chunk is shorter: ``shares``; at most
    ``n`` in all, fewer only when those chunks hold fewer) -> [m, d] float32."""
    chunks = probe_chunks(test_chunks)
    take = shares([b - a for a, b in map(store.chunk_bounds, chunks)], n)
    parts = [store.read_acts(c)[:t] for c, t in zip(chunks, take, strict=True) if t]  # [t, d] as stored
    x = np.concatenate(parts) if parts else np.empty((0, store.d), np.float32)  # [<= n, d]
    return np.asarray(x, dtype=np.float32)


def shares(sizes: Sequence[int], n: int) -> list[int]:
    """Rows to take from each of chunks of ``sizes``, in order: ceil(n / their number) each while rows are
    left (the last fewer), a short chunk's whole rows and its shortfall taken from the others alike."""
    take, left = [0] * len(sizes), n
    while left > 0 and (open_ := [i for i, s in enumerate(sizes) if take[i] < s]):
        each = -(-left // len(open_))
        for i in open_:
            t = min(each, sizes[i] - take[i], left)
            take[i], left = take[i] + t, left - t
    return take


def _gather(store, chunks: Sequence[int], rows: np.ndarray) -> np.ndarray:
    """Rows [n] (global indices inside ``chunks``) read chunk by chunk -> [n, d] as stored (see ``_read``).
    Used once on resume, for the rows a buffer carries over from the previous one (fewer than one batch)."""
    bounds = sorted(store.chunk_bounds(int(c)) + (int(c),) for c in chunks)
    starts = np.asarray([a for a, _, _ in bounds], np.int64)
    which = np.searchsorted(starts, rows, side="right") - 1  # [n] position in ``bounds``
    out = None
    for w in np.unique(which):
        a, _, c = bounds[int(w)]
        sel = which == w
        acts = _read(store, [c])
        out = np.empty((len(rows), store.d), acts.dtype) if out is None else out
        out[sel] = acts[rows[sel] - a]
    return out if out is not None else np.empty((0, store.d), np.float32)


def _read(store, group: Sequence[int]) -> np.ndarray:
    """The rows of ``group`` [n, d] as stored: float16 stays float16 (half the bytes to shuffle; the training
    loop casts each batch on its device, where the cast is cheap); float32 and bfloat16 give float32."""
    return np.concatenate([store.read_acts(int(c)) for c in group])


def reader_threads() -> int:
    """Threads that read a buffer's chunks: one per core, at most 8 (a local disk or page cache)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores))


def iter_rows(store, chunks: Sequence[int], batch_size: int, buffer_chunks: int, seed: int, epoch: int,
              start: int = 0, part: tuple[int, int] = (0, 1), pin: bool = False
              ) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """Batches ``start, start+1, ...`` of one epoch as (x [b, d], global row index [b] of each row); x is
    float16 for float16 stores, else float32 (see ``_read``).

    ``part=(rank, world)``: only the rank's contiguous slice of every global batch (the global batches are
    the same for every ``world``). ``pin``: the buffers are shuffled into page-locked memory (CUDA), so
    that ``x.to(device, non_blocking=True)`` is an asynchronous copy at full bus speed (a pageable one
    took ~40% of a TopK step's GPU time on an H200, docs/training.md).
    """
    pin = pin and torch.cuda.is_available()  # page-locked memory needs a CUDA driver
    plans = (p for p in epoch_plan(store, chunks, batch_size, buffer_chunks, seed, epoch)
             if p.first_batch + p.n_batches > start)
    plan = next(plans, None)
    if plan is None:
        return

    n_threads = reader_threads()

    def shuffled(p: GroupPlan, left: np.ndarray) -> torch.Tensor:  # -> [n, d] the shuffled buffer of p
        sizes = np.asarray([b - a for a, b in map(store.chunk_bounds, p.chunks)])  # [n_chunks] rows each
        ends = len(left) + np.cumsum(sizes)  # [n_chunks] end of each chunk's rows in plan order
        dtype = torch.from_numpy(np.empty(0, store.acts_dtype)).dtype
        out = torch.empty((int(ends[-1]), store.d), dtype=dtype, pin_memory=pin)  # [n, d]
        dst, to = out.numpy(), np.empty_like(p.perm)
        to[p.perm] = np.arange(len(to))  # [n] the shuffled position of each row in plan order
        dst[to[:len(left)]] = left

        def put(c: int, a: int, b: int) -> None:  # chunk c, rows a..b in plan order, to their positions
            dst[to[a:b]] = store.read_acts(c)  # one chunk at a time: no second buffer in plan order

        list(readers.map(put, p.chunks, ends - sizes, ends))
        return out

    # the read and the shuffle of the next buffer run in a background thread while this one is consumed;
    # the chunks of a buffer are read, and each scattered to its rows' places, by ``readers`` concurrently
    # (``pool`` exits first: a pending shuffle finishes before its readers shut down)
    with ThreadPoolExecutor(n_threads) as readers, ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(shuffled, plan, _gather(store, chunks, plan.left))
        while plan is not None:
            buf = pending.result()  # [n, d]
            nxt = next(plans, None)
            if nxt is not None:
                pending = pool.submit(shuffled, nxt, buf[plan.n_batches * batch_size:].numpy())
            for i in range(max(start - plan.first_batch, 0), plan.n_batches):
                a = i * batch_size
                s = rank_slice(min(batch_size, len(buf) - a), part)
                yield buf[a + s.start:a + s.stop], plan.rows[a + s.start:a + s.stop]
            plan = nxt


def iter_batches(store, chunks: Sequence[int], batch_size: int, buffer_chunks: int, seed: int,
                 epoch: int, start: int = 0, part: tuple[int, int] = (0, 1), pin: bool = False
                 ) -> Iterator[torch.Tensor]:
    """One epoch of shuffled batches [<= batch_size, d] (float16 or float32, see :func:`iter_rows`)."""
    for x, _ in iter_rows(store, chunks, batch_size, buffer_chunks, seed, epoch, start, part, pin):
        yield x


def norm_stats(store, chunks: Sequence[int], n_chunks: int, seed: int) -> tuple[np.ndarray, float]:
    """(mean [d] float32, scale) from ``n_chunks`` seeded train chunks: scale = sqrt(E||x - mean||^2 / d)."""
    pick = np.random.default_rng([seed, 7919]).permutation(np.asarray(chunks))[:max(1, n_chunks)]
    x = np.concatenate([store.read_chunk(int(c)).acts for c in pick]).astype(np.float64)  # [n, d]
    mean = x.mean(0)
    scale = float(np.sqrt(((x - mean) ** 2).sum(1).mean() / x.shape[1]))
    if not np.isfinite(scale) or scale <= 0:
        raise ConfigError(f"train.normalize: mean_scale cannot normalise this store: the {len(x)} rows of "
                          f"train chunks {sorted(int(c) for c in pick)} have scale {scale} (every row the "
                          "same?): set train.normalize=none, or raise train.norm_chunks")
    return mean.astype(np.float32), scale
