"""The training data: the train/test split, the shuffled batch stream and the normalisation statistics."""

import threading

import numpy as np
import pytest
import torch

from actdict.harvest.store import write_vectors
from actdict.train.data import iter_batches, iter_rows, make_split, norm_stats
from tests import train_store

store = train_store.store  # a fixture: the tests below take it as an argument


def rows_of(batches) -> list[int]:
    return [int(v) for b in batches for v in b[:, 0].tolist()]


def test_split_is_a_seeded_partition(store):
    s = make_split(store.num_chunks, 0.2, seed=5)
    assert sorted(s["train_chunks"] + s["test_chunks"]) == list(range(store.num_chunks))
    assert len(s["test_chunks"]) == round(0.2 * store.num_chunks) and s["seed"] == 5
    assert make_split(store.num_chunks, 0.2, seed=5) == s != make_split(store.num_chunks, 0.2, seed=6)
    assert len(make_split(3, 0.01, 0)["test_chunks"]) == 1  # at least one test chunk
    with pytest.raises(ValueError, match="none left for training"):
        make_split(2, 0.9, 0)
    with pytest.raises(ValueError, match=r"1 chunk: none can be held out.*--chunk-rows N.*test_fraction=0"):
        make_split(1, 0.1, 0)  # it used to train on every row and leave analyze nothing to evaluate
    assert make_split(1, 0.0, 0) == {"train_chunks": [0], "test_chunks": [], "seed": 0}


def test_epoch_sees_every_train_row_once(store):
    s = make_split(store.num_chunks, 0.25, seed=1)
    train_rows = {r for c in s["train_chunks"] for r in range(*store.chunk_bounds(c))}
    test_rows = {r for c in s["test_chunks"] for r in range(*store.chunk_bounds(c))}
    for epoch in (0, 1):
        batches = list(iter_batches(store, s["train_chunks"], 50, 3, seed=1, epoch=epoch))
        seen = rows_of(batches)
        assert sorted(seen) == sorted(train_rows) and not set(seen) & test_rows
        assert all(len(b) == 50 for b in batches[:-1]) and 0 < len(batches[-1]) <= 50
        assert batches[0].dtype == torch.float32 and batches[0].shape[1] == 3


def test_batch_order_depends_on_seed_and_epoch(store):
    chunks = list(range(store.num_chunks))
    a = rows_of(iter_batches(store, chunks, 32, 2, seed=0, epoch=0))
    assert a == rows_of(iter_batches(store, chunks, 32, 2, seed=0, epoch=0))
    assert a != rows_of(iter_batches(store, chunks, 32, 2, seed=1, epoch=0))
    assert a != rows_of(iter_batches(store, chunks, 32, 2, seed=0, epoch=1))
    assert a != sorted(a)  # shuffled inside the buffer


def test_float16_store_streams_float16_batches_of_the_same_rows(store, tmp_path):
    """A float16 store is shuffled and yielded as stored (half the bytes); the values are the float32
    reads of the same rows, and a resumed stream (rows carried over between buffers) matches too."""
    x = np.concatenate([store.read_chunk(c).acts for c in range(store.num_chunks)])  # [1000, 3]
    x[:, 0] = np.arange(1000) % 2048  # exact in float16
    half = write_vectors(str(tmp_path / "half"), x, dtype="float16", shard_rows=256, chunk_rows=64)
    chunks = list(range(half.num_chunks))
    full = [(b.clone(), r) for b, r in iter_rows(half, chunks, 48, 2, seed=3, epoch=0)]
    assert {b.dtype for b, _ in full} == {torch.float16}
    want = x.astype(np.float16).astype(np.float32)
    for b, r in full:
        np.testing.assert_array_equal(b.float().numpy(), want[r])
    tail = list(iter_batches(half, chunks, 48, 2, seed=3, epoch=0, start=7))
    assert all(torch.equal(a, b) for a, (b, _) in zip(tail, full[7:], strict=True))


def test_resume_position_and_rank_parts_give_the_same_batches(store):
    chunks = make_split(store.num_chunks, 0.2, seed=2)["train_chunks"]
    full = [(x.clone(), r) for x, r in iter_rows(store, chunks, 48, 2, seed=2, epoch=1)]
    assert [int(v) for x, r in full for v in x[:, 0]] == [int(v) for _, r in full for v in r]  # row ids
    for start in (0, 1, 5, 6, 13, len(full) - 1, len(full)):  # inside, at the start and end of buffers
        tail = list(iter_batches(store, chunks, 48, 2, seed=2, epoch=1, start=start))
        assert len(tail) == len(full) - start
        assert all(torch.equal(a, b) for a, (b, _) in zip(tail, full[start:], strict=True))
    for world in (2, 3):
        parts = [list(iter_batches(store, chunks, 48, 2, seed=2, epoch=1, part=(r, world)))
                 for r in range(world)]
        joined = [torch.cat(ps) for ps in zip(*parts, strict=True)]
        assert all(torch.equal(a, b) for a, (b, _) in zip(joined, full, strict=True))
        assert {len(p) for p in parts[0][:-1]} == {48 // world}


class CountingStore:
    """A store that records how many chunks were read whenever a batch is taken."""

    def __init__(self, inner):
        self.inner, self.reads, self.lock = inner, 0, threading.Lock()
        self.d, self.chunk_rows, self.chunk_bounds = inner.d, inner.chunk_rows, inner.chunk_bounds
        self.acts_dtype = inner.acts_dtype

    def read_acts(self, i, out=None):  # called from the stream's reader threads
        with self.lock:
            self.reads += 1
        return self.inner.read_acts(i, out)


def test_stream_reads_at_most_two_buffers_ahead(store):
    counting = CountingStore(store)
    chunks = list(range(store.num_chunks))
    reads = [counting.reads for _ in iter_batches(counting, chunks, 16, 2, seed=0, epoch=0)]
    assert store.num_chunks == 16 and reads[0] <= 4 and counting.reads == 16  # each chunk once per epoch
    # rows read but not yet yielded stay below two buffers (current + read ahead) + 1 chunk
    assert all(r * 64 - (b + 1) * 16 <= (2 * 2 + 1) * 64 for b, r in enumerate(reads))


def test_stream_shuffles_without_an_unshuffled_copy_of_the_buffer(tmp_path):
    """The buffer was read whole into a numpy array in plan order, then gathered into the shuffled torch
    buffer: three buffers in RAM with the one being consumed (1,050 MiB at buffer_chunks 128, float16,
    d = 256), not the two that docs/training.md promises. Chunks now go straight to their shuffled places:
    the numpy memory the stream allocates (tracemalloc traces numpy, not torch) stays below one buffer."""
    import tracemalloc

    x = np.random.default_rng(0).standard_normal((2048, 64)).astype(np.float32)
    s = write_vectors(str(tmp_path / "store"), x, shard_rows=256, chunk_rows=32)  # 64 chunks of 8 KiB
    buffer_bytes = 32 * 32 * 64 * 4  # buffer_chunks = 32: 256 KiB
    list(iter_batches(s, range(64), 100, 32, seed=0, epoch=1))  # first calls import and open what they use
    tracemalloc.start()
    try:
        got = torch.cat(list(iter_batches(s, range(64), 100, 32, seed=0, epoch=0)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < buffer_bytes  # it held a whole buffer in plan order (and more) before
    assert sorted(got[:, 0].tolist()) == sorted(x[:, 0].tolist())  # every row once


def test_steps_in_epoch_counts_the_short_last_batch(store):
    from actdict.train.data import steps_in_epoch

    chunks = list(range(store.num_chunks))
    assert steps_in_epoch(store, chunks, 48) == 21 == len(list(iter_batches(store, chunks, 48, 2, 0, 0)))
    assert steps_in_epoch(store, chunks, 100) == 10
    assert steps_in_epoch(store, [15], 10) == 4  # the last chunk: rows 960..999
    assert steps_in_epoch(store, chunks, 37) == 27  # 1000 = 27 x 37 + 1: no batch of one lone row
    for epoch in range(6):
        for buffer in (1, 2, 16):  # whichever buffer the lone row falls in
            sizes = [len(b) for b in iter_batches(store, chunks, 37, buffer, 0, epoch)]
            assert len(sizes) == 27 and min(sizes) >= 2 and sum(sizes) == 999
    x = np.random.default_rng(1).standard_normal((257, 3)).astype(np.float32)  # chunk 4 holds 1 row
    small = write_vectors(str(store.path) + "-257", x, shard_rows=256, chunk_rows=64)
    for epoch in range(8):  # the 1-row chunk is alone in the last buffer in some epochs (256 = 8 x 32)
        sizes = [len(b) for b in iter_batches(small, range(5), 32, 1, 0, epoch)]
        assert sizes == [32] * 8 == [32] * steps_in_epoch(small, range(5), 32)
    # an epoch of that one row alone is one batch of it (not 0 steps: a lone row sits out only beside others)
    lone = [len(b) for b in iter_batches(small, [4], 32, 1, 0, 0)]
    assert lone == [1] == [1] * steps_in_epoch(small, [4], 32)


def test_norm_stats(store):
    mean, scale = norm_stats(store, list(range(store.num_chunks)), n_chunks=100, seed=0)
    x = store.read_rows(0, len(store)).acts.astype(np.float64)
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-5)
    assert scale == pytest.approx(np.sqrt(((x - x.mean(0)) ** 2).sum(1).mean() / 3), rel=1e-6)


def test_norm_stats_of_constant_rows_is_a_config_error(tmp_path):
    from actdict.config import ConfigError

    const = write_vectors(str(tmp_path / "c"), np.ones((64, 3), np.float32), chunk_rows=16, shard_rows=64)
    with pytest.raises(ConfigError, match=r"the 32 rows of train chunks \[1, 2\] have scale 0.0 .* "
                                          r"set train.normalize=none"):
        norm_stats(const, [1, 2], n_chunks=4, seed=0)


def test_norm_stats_reads_n_chunks_picked_by_the_seed(store):
    """n_chunks < the chunks given: the statistics are those of n_chunks whole chunks of the list (row i has
    x[:, 0] == i, so the mean of x[:, 0] over chunks a and b of 64 rows is 32 (a + b) + 31.5), and the seed
    picks which (not always the first ones)."""
    chunks = [1, 4, 7, 9, 12]
    sums = {a + b for a in chunks for b in chunks if a < b}
    picked = set()
    for seed in range(6):
        mean, _ = norm_stats(store, chunks, n_chunks=2, seed=seed)
        pair = (float(mean[0]) - 31.5) / 32
        assert pair == pytest.approx(round(pair), abs=1e-4) and round(pair) in sums
        picked.add(round(pair))
    assert len(picked) > 1


def test_pinned_stream_yields_the_same_batches(store, monkeypatch):
    """pin=True (CUDA's page-locked buffers; the allocation is faked here so that the CPU runs the same
    code: shuffle into a torch tensor's memory, batches as its slices, the leftover carried over) gives
    exactly the batches of the plain stream."""
    chunks = list(range(store.num_chunks))
    plain = list(iter_rows(store, chunks, 48, 3, seed=5, epoch=1, start=2))
    made = []
    real_empty = torch.empty

    def fake_empty(*shape, pin_memory=False, **kw):
        made.append(pin_memory)
        return real_empty(*shape, **kw)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch, "empty", fake_empty)
    pinned = list(iter_rows(store, chunks, 48, 3, seed=5, epoch=1, start=2, pin=True))
    assert made and all(made)  # every buffer was asked for in page-locked memory
    assert len(pinned) == len(plain) == 1000 // 48 + 1 - 2
    for (x, rows), (y, rows_y) in zip(pinned, plain, strict=True):
        assert torch.equal(x, y) and np.array_equal(rows, rows_y)
        np.testing.assert_array_equal(x[:, 0].numpy(), rows)  # row i has x[:, 0] == i


def test_split_note_warns_when_whole_chunks_miss_the_test_fraction():
    from actdict.train.data import split_note

    sizes = [4096, 904]  # 5,000 vectors imported with the default 4,096-row chunks
    note = split_note(sizes, {"test_chunks": [0], "train_chunks": [1]}, 0.2)
    assert note.startswith("the held-out chunks 0 hold 82% of the rows, not train.test_fraction=0.2")
    assert split_note(sizes, {"test_chunks": [1], "train_chunks": [0]}, 0.2) is None  # 18%: close
    assert split_note([64] * 49 + [32], {"test_chunks": [0, 1, 2, 3, 4]}, 0.1) is None  # 10.1%
    assert split_note([10] * 4, {"test_chunks": []}, 0.0) is None


def test_split_note_allows_exactly_a_tenth_off():
    """The note is for a held-out share more than 0.1 from test_fraction: 20% of the rows held out for
    test_fraction=0.1 is within it, 30% is not."""
    from actdict.train.data import split_note

    assert split_note([10] * 10, {"test_chunks": [0, 1]}, 0.1) is None
    assert split_note([10] * 10, {"test_chunks": [0, 1, 2]}, 0.1).startswith("the held-out chunks 0, 1, 2 "
                                                                            "hold 30% of the rows")


def test_each_epoch_reads_the_chunks_in_its_own_seeded_order(store):
    """Buffers of one chunk: the chunks are read in a permutation of (seed, epoch), not in store order, and
    another epoch reads them in another order (not only the rows inside a buffer are shuffled)."""

    class Recording(CountingStore):
        def read_acts(self, i, out=None):
            self.order.append(int(i))
            return self.inner.read_acts(i, out)

    def order(seed, epoch):
        s = Recording(store)
        s.order = []
        list(iter_batches(s, list(range(16)), 32, 1, seed=seed, epoch=epoch))
        return s.order

    orders = [order(0, e) for e in range(3)]
    assert all(sorted(o) == list(range(16)) for o in orders) and order(0, 1) == orders[1]
    assert orders[0] != list(range(16)) and len({tuple(o) for o in orders}) == 3
