"""Property tests of the store round trip, the vectors import, the split and the batch stream."""

import tempfile

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from actdict.analyze.run import held_out_batches
from actdict.harvest.layout import decode_acts, encode_acts
from actdict.harvest.vectors import import_vectors
from actdict.harvest.writer import CHUNK_ROWS, default_layout
from actdict.train.data import SplitError, iter_rows, last_batches, make_split, steps_in_epoch
from tests.properties_helpers import FEW, SCRATCH, SOME, _store_data, _write_store

# ------------------------------------------------------------------------------------------- the store

@st.composite
def layouts(draw):
    """(n rows, d, dtype, chunk_rows, shard_rows, append sizes, seed)."""
    chunk = draw(st.sampled_from([1, 2, 3, 4, 8]))
    shard = chunk * draw(st.integers(1, 4))
    n = draw(st.integers(1, 5 * shard + 3))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=4)))
    pieces = np.diff([0, *cuts, n]).tolist()
    return (n, draw(st.integers(1, 5)), draw(st.sampled_from(["float32", "float16", "bfloat16"])), chunk,
            shard, pieces, draw(st.integers(0, 2**16)))


@FEW
@given(layouts(), st.booleans(), st.data())
def test_store_round_trip(layout, remote, data):
    n, d, dtype, chunk, shard, pieces, seed = layout
    x, tok, doc, pos = _store_data(n, d, seed)
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        where = f"memory://{tmp}" if remote else tmp  # an fsspec store: zarr reads, no direct chunk files
        s = _write_store(where, x, tok, doc, pos, dtype, chunk, shard, pieces)
        want = decode_acts(encode_acts(x, dtype), dtype)  # [n, d] float32
        if dtype == "bfloat16":  # the bits are torch's round to nearest even
            assert np.array_equal(want, torch.from_numpy(x).to(torch.bfloat16).float().numpy())
        assert (len(s), s.d, s.num_shards) == (n, d, -(-n // shard))
        r = s.read_rows(0, n)
        assert r.acts.dtype == np.float32 and np.array_equal(r.acts, want)
        assert np.array_equal(r.token_ids, tok) and np.array_equal(r.doc, doc) and np.array_equal(r.pos, pos)
        bounds = [s.chunk_bounds(i) for i in range(s.num_chunks)]  # cover 0..n, never across a shard
        assert [a for a, _ in bounds] == [0, *[b for _, b in bounds[:-1]]] and bounds[-1][1] == n
        assert all(b - a <= chunk and a // shard == (b - 1) // shard for a, b in bounds)
        for i, (a, b) in enumerate(bounds):
            raw = s.read_acts(i)
            assert raw.dtype == s.acts_dtype and np.array_equal(raw.astype(np.float32), want[a:b])
            out = np.full((b - a, d), np.nan, s.acts_dtype)
            assert np.array_equal(s.read_acts(i, out=out).astype(np.float32), want[a:b])
        lo = data.draw(st.integers(0, n))
        hi = data.draw(st.integers(lo, n))
        part = s.read_rows(lo, hi, raw=True)
        assert len(part) == hi - lo and np.array_equal(part.acts.astype(np.float32), want[lo:hi])
        assert np.array_equal(part.token_ids, tok[lo:hi]) and np.array_equal(part.pos, pos[lo:hi])
        s.verify()
        bs, buf = data.draw(st.integers(1, 9)), data.draw(st.integers(1, 3))
        for x_b, r_b in iter_rows(s, range(s.num_chunks), bs, buf, seed, 0):  # the stream's reads: its rows
            assert x_b.dtype == torch.from_numpy(want[:0].astype(s.acts_dtype)).dtype
            assert np.array_equal(x_b.float().numpy(), want[r_b])
        if remote:
            s.fs.rm(f"{tmp}/h", recursive=True)


@SOME
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=64))
def test_bfloat16_encoding_is_torchs_for_any_bits(bits):
    x = np.asarray(bits, np.uint32).view(np.float32)[None]  # [1, m]: NaN payloads, infs, subnormals
    want = torch.from_numpy(x.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    got = encode_acts(x, "bfloat16")
    nan = np.isnan(x)
    assert np.array_equal(got[~nan], want[~nan]) and np.isnan(decode_acts(got, "bfloat16")[nan]).all()


@SOME
@given(st.integers(1, 10**7), st.sampled_from([0, 1, 4, 96, 4096]), st.sampled_from([0, 8, 4096, 65536]))
def test_default_layout_is_a_valid_one_with_chunks_to_hold_out(n, chunk, shard):
    c, s = default_layout(n, chunk, shard)
    assert (c, s) == (chunk or c, shard or 16 * c) and c >= 1
    if not chunk and (not shard or shard % c == 0):
        assert s % c == 0 and c <= CHUNK_ROWS and c & (c - 1) == 0  # a power of two that divides the shard
        assert n // c >= 8 or c == 1 or (n >= 8 * CHUNK_ROWS and c == CHUNK_ROWS)


@FEW
@given(st.integers(1, 40), st.integers(1, 5), st.integers(1, 16),
       st.sampled_from(["npy", "st", "pq", "pq-cols"]),
       st.sampled_from([np.float64, np.float32, np.int32]), st.integers(0, 2**16))
def test_imported_vectors_are_the_files_rows(n, d, block, fmt, dtype, seed):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.numpy import save_file

    x = (np.random.default_rng(seed).standard_normal((n, d)) * 100).astype(dtype)  # [n, d]
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        f = f"{tmp}/v.{ {'npy': 'npy', 'st': 'safetensors'}.get(fmt, 'parquet')}"
        if fmt == "npy":
            np.save(f, x)
        elif fmt == "st":
            save_file({"v": x}, f)
        elif fmt == "pq":
            pq.write_table(pa.table({"id": np.arange(n), "v": list(x)}), f, row_group_size=max(1, n // 3))
        else:
            pq.write_table(pa.table({f"c{j}": x[:, j] for j in range(d)}), f, row_group_size=max(1, n // 2))
        s = import_vectors(f, f"{tmp}/store", key="v" if fmt == "pq" else "", block_rows=block)
        r = s.read_rows(0, len(s))
    assert len(r) == n and np.array_equal(r.acts, x.astype(np.float32))
    assert (r.token_ids == -1).all() and np.array_equal(r.doc, np.arange(n)) and (r.pos == 0).all()


# ------------------------------------------------------------------------------------ split and stream

@SOME
@given(st.integers(1, 60), st.floats(0, 0.95), st.integers(0, 2**32 - 1))
def test_split_is_a_seeded_partition(n, frac, seed):
    try:
        sp = make_split(n, frac, seed)
    except SplitError:
        assert (frac > 0 and n == 1) or n - max(1, round(frac * n)) < 1
        return
    train, test = sp["train_chunks"], sp["test_chunks"]
    assert sorted(train + test) == list(range(n)) and train == sorted(train) and test == sorted(test)
    assert len(test) == (max(1, round(frac * n)) if frac > 0 else 0) and len(train) >= 1
    assert sp == make_split(n, frac, seed)


class RowsStore:
    """The stream's store protocol over chunks of given sizes; row r's acts are [r, -r]."""

    def __init__(self, sizes):
        self.ends = np.cumsum(sizes)
        self.d, self.acts_dtype = 2, np.dtype(np.float32)

    def chunk_bounds(self, i):
        return int(self.ends[i - 1]) if i else 0, int(self.ends[i])

    def read_acts(self, i, out=None):
        r = np.arange(*self.chunk_bounds(i), dtype=np.float32)
        acts = np.stack([r, -r], 1)
        if out is None:
            return acts
        out[...] = acts
        return out


@st.composite
def streams(draw):
    sizes = draw(st.lists(st.integers(1, 9), min_size=2, max_size=8))
    sp = make_split(len(sizes), draw(st.sampled_from([0.0, 0.2, 0.5])), draw(st.integers(0, 99)))
    return (RowsStore(sizes), sp, draw(st.integers(1, 10)), draw(st.integers(1, 4)), draw(st.integers(0, 99)),
            draw(st.integers(0, 3)))


def _epoch(store, sp, bs, buf, seed, epoch, **kw):
    batches = iter_rows(store, sp["train_chunks"], bs, buf, seed, epoch, **kw)
    return [(x.clone().numpy(), r.copy()) for x, r in batches]


@SOME
@given(streams(), st.data())
def test_stream_epoch_is_each_train_row_once(stream, data):
    store, sp, bs, buf, seed, epoch = stream
    got = _epoch(store, sp, bs, buf, seed, epoch)
    train = np.concatenate([np.arange(*store.chunk_bounds(c)) for c in sp["train_chunks"]])
    rows = np.concatenate([r for _, r in got])
    for x, r in got:  # each batch's acts are its rows'
        assert np.array_equal(x[:, 0], r) and np.array_equal(x[:, 1], -r.astype(np.float32))
    assert len(np.unique(rows)) == len(rows) and np.isin(rows, train).all()
    lone = len(train) % bs == 1 and len(train) > 1  # a last batch of one row is not made (docs/training.md)
    assert len(rows) == len(train) - lone
    assert [len(r) for _, r in got[:-1]] == [bs] * (len(got) - 1) and 1 <= len(got[-1][1]) <= bs
    assert len(got) == steps_in_epoch(store, sp["train_chunks"], bs) == last_batches(len(train), bs)
    again = _epoch(store, sp, bs, buf, seed, epoch)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(got, again, strict=True))
    other = _epoch(store, sp, bs, data.draw(st.integers(1, 5)), seed, epoch)  # another buffer: same rows
    assert np.array_equal(np.sort(np.concatenate([r for _, r in other])), np.sort(rows)) or lone
    start = data.draw(st.integers(0, len(got)))
    tail = _epoch(store, sp, bs, buf, seed, epoch, start=start)
    assert [r.tolist() for _, r in tail] == [r.tolist() for _, r in got[start:]]
    world = data.draw(st.integers(2, 3))
    parts = [_epoch(store, sp, bs, buf, seed, epoch, part=(k, world)) for k in range(world)]
    for i, (_, r) in enumerate(got):
        assert np.concatenate([p[i][1] for p in parts]).tolist() == r.tolist()


@FEW
@given(st.lists(st.integers(1, 9), min_size=1, max_size=6), st.integers(1, 10),
       st.none() | st.integers(0, 40), st.data())
def test_held_out_batches_are_the_test_rows_in_order(sizes, bs, limit, data):
    store = RowsStore(sizes)
    store.read_chunk = lambda c: type("R", (), {"acts": store.read_acts(c)})
    test = sorted(data.draw(st.sets(st.integers(0, len(sizes) - 1), min_size=1)))
    got = list(held_out_batches(store, test, bs, limit))
    want = np.concatenate([np.arange(*store.chunk_bounds(c)) for c in test])[:limit]
    rows = np.concatenate([r for _, r in got]) if got else np.empty(0, int)
    assert rows.tolist() == want.tolist() and all(np.array_equal(x[:, 0], r) for x, r in got)
    assert all(len(r) == bs for _, r in got[:-1]) and all(1 <= len(r) <= bs for _, r in got)
