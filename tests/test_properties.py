"""Property-based tests (hypothesis) of the pure parts: the store round trip (and the vectors import), the
batch stream, the split, the metrics and the analysis' streaming statistics, the token windows and the rows
they store, the CE evaluation's held-out windows and the analysis' contexts, each against a direct
recomputation on random inputs.

Small example counts (``FEW``/``SOME``) keep the whole file under ~40 s on one core. The examples are the
same on every run (``derandomize``: CI passes or fails on the code, not on the draw); to explore further,
``ACTDICT_EXPLORE=N`` draws N fresh random examples per test."""

import os
import tempfile
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actdict.analyze import metrics as M
from actdict.analyze.config import AnalyzeConfig
from actdict.analyze.evaluate import ModelEval
from actdict.analyze.features import build_features
from actdict.analyze.run import held_out_batches
from actdict.analyze.splice import SpliceError, heldout_windows
from actdict.analyze.streaming import LogHistogram, Reservoir, TopRows, pair_keys
from actdict.analyze.toptokens import FeatureTracker, read_contexts
from actdict.harvest.layout import decode_acts, encode_acts
from actdict.harvest.plan import RowStream, shard_work, stored_positions
from actdict.harvest.sources import buffer_shuffle, token_windows
from actdict.harvest.store import Rows, StoreWriter, open_store
from actdict.harvest.vectors import import_vectors
from actdict.harvest.writer import CHUNK_ROWS, default_layout
from actdict.train.data import SplitError, iter_rows, last_batches, make_split, steps_in_epoch
from actdict.train.protocol import make

EXPLORE = int(os.environ.get("ACTDICT_EXPLORE", 0))  # > 0: that many random examples per test
_ALL = {"deadline": None, "database": None, "suppress_health_check": [HealthCheck.too_slow],
        "derandomize": not EXPLORE}
FEW = settings(max_examples=EXPLORE or 30, **_ALL)
SOME = settings(max_examples=EXPLORE or 60, **_ALL)
MANIFEST = {"model": "toy", "hook": "h", "config_hash": "x"}
SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # tmpfs: a shard's fsync costs nothing


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


def _store_data(n, d, seed, doc_runs=None):
    """Acts [n, d] (some all-zero rows, else |x| >= 0.05: within float16's normal range), token ids unique
    per row, doc/pos as documents of random lengths (or ``doc_runs``)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) * 10.0 ** rng.integers(-1, 3)
    x += np.where(x < 0, -0.05, 0.05)
    x[rng.random(n) < 0.1] = 0.0
    tok = (np.arange(n) * 7 + 1000).astype(np.int32)
    lens = doc_runs if doc_runs is not None else rng.integers(1, 8, n)
    doc = np.repeat(np.arange(len(lens)), lens)[:n].astype(np.int64)
    pos = np.concatenate([np.arange(m) for m in lens])[:n].astype(np.int32)
    return x, tok, doc, pos


def _write_store(path, x, tok, doc, pos, dtype, chunk, shard, pieces):
    with StoreWriter(path, MANIFEST, d=x.shape[1], dtype=dtype, shard_rows=shard, chunk_rows=chunk) as w:
        a = 0
        for p in pieces:
            w.append(x[a:a + p], tok[a:a + p], doc[a:a + p], pos[a:a + p])
            a += p
    return open_store(path, "h")


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


# ------------------------------------------------------------------------------------------- metrics

def _otsu_low_count(row):
    """Brute force in Fractions: the low group's size at the first minimum of i var(L) + (k-i) var(R)."""
    v = sorted(Fraction(int(a)) for a in row)
    k = len(v)
    if k == 1 or v[0] == v[-1]:
        return k

    def ss(g):
        m = sum(g) / len(g)
        return sum((a - m) ** 2 for a in g)

    costs = [ss(v[:i]) + ss(v[i:]) for i in range(1, k)]
    thr = v[costs.index(min(costs))]
    return sum(a <= thr for a in v)


int_rows = st.integers(1, 6).flatmap(lambda n: st.integers(1, 10).flatmap(
    lambda k: st.lists(st.lists(st.integers(-5, 5), min_size=k, max_size=k), min_size=n, max_size=n)))


@SOME
@given(int_rows)
def test_otsu_split_equals_brute_force(rows):
    v = torch.tensor(rows, dtype=torch.float64)  # [n, k], ties and constant rows are common
    low = M.otsu_split_batched(v).tolist()
    assert low == [_otsu_low_count(r) for r in rows]
    flat = [len(set(r)) == 1 for r in rows]
    assert M.active_dims(v, "low").tolist() == low
    high = [len(r) if f else len(r) - c for r, f, c in zip(rows, flat, low, strict=True)]
    assert M.active_dims(v, "high").tolist() == high


@SOME
@given(int_rows, st.integers(0, 2**16))
def test_sae_metrics_equal_numpy(rows, seed):
    z = np.asarray(rows, np.float64) * (np.random.default_rng(seed).random((len(rows), len(rows[0]))) < 0.6)
    n, k = z.shape
    act = np.log(np.abs(z), where=z != 0, out=np.full(z.shape, -np.inf))  # an SAE's activity: log|z|
    ad = M.active_dims(act, "high").numpy()
    l0 = (z != 0).sum(1)
    has_zero = (z == 0).any(1)
    assert np.array_equal(ad[has_zero], l0[has_zero]) and (ad <= l0).all()  # AD = L0 on a row with a zero
    assert M.l0(z) == pytest.approx(l0.mean())
    fires = M.active_mask(act, "high").numpy().sum(0)
    assert M.dead_latents(fires) == int((fires == 0).sum()) and (fires <= (z != 0).sum(0)).all()
    assert M.feature_density(fires, n).numpy() == pytest.approx(fires / n)
    x = np.random.default_rng(seed + 1).standard_normal((n, 3))
    x_hat = x + np.random.default_rng(seed + 2).standard_normal((n, 3)) * (seed % 3)
    sse = ((x - x_hat) ** 2).sum(1)
    assert M.reconstruction_error(x, x_hat) == pytest.approx(sse.mean())
    var = ((x - x.mean(0)) ** 2).sum()
    if n > 1:
        assert M.explained_variance(x, x_hat) == pytest.approx(1 - sse.sum() / var)
        assert M.fvu_from_moments(sse.sum(), x.sum(0), (x * x).sum(0), n) == pytest.approx(sse.sum() / var)
    else:  # one row: no variance, FVU is nan (never a division by zero)
        assert np.isnan(M.fvu(x, x_hat))


@FEW
@given(st.sampled_from(["sae_l1", "sae_topk", "vaease"]), st.integers(1, 40), st.integers(1, 8),
       st.integers(0, 99), st.data())
def test_model_summary_is_batch_independent_and_direct(variant, n, k, seed, data):
    model = make(variant, 3, k, seed, **({"topk": min(2, k)} if variant == "sae_topk" else {}))
    x = torch.tensor(np.random.default_rng(seed).standard_normal((n, 3)) * 3, dtype=torch.float32)  # [n, 3]
    cfg = AnalyzeConfig(top_k=2, quantiles=1, quantile_samples=2)
    ev = ModelEval(model, cfg, seed, torch.device("cpu"))
    cuts = sorted(data.draw(st.lists(st.integers(1, n), max_size=3)))
    for a, b in zip([0, *cuts], [*cuts, n], strict=True):
        if b > a:
            ev.update(x[a:b], torch.arange(a, b))
    x64 = x.double()
    got = ev.summary(n, x64.sum(0), (x64 * x64).sum(0))
    with torch.no_grad():
        out = model.eval()(x, sample=False)
    mask = M.active_mask(out.activity, model.active_side).numpy()  # [n, k]
    err = ((x64 - out.x_hat.double()) ** 2).sum(1).numpy()
    ad = mask.sum(1)
    assert got["re_det"] == pytest.approx(err.mean()) and got["l0"] == pytest.approx((out.codes != 0).sum(1)
                                                                                     .double().mean())
    assert got["ad"] == pytest.approx(ad.mean()) and got["ad_std"] == pytest.approx(ad.std(), abs=1e-12)
    assert got["dead"] == int((mask.sum(0) == 0).sum()) and ev.fire.tolist() == mask.sum(0).tolist()
    assert got["dense"] == int((mask.mean(0) > cfg.dense_threshold).sum())
    var = ((x64 - x64.mean(0)) ** 2).sum().item()
    if n > 1:  # (x_hat of other batch shapes: float32 rounding apart)
        assert got["ev"] == pytest.approx(1 - err.sum() / var, rel=1e-5, abs=1e-5)
    else:
        assert np.isnan(got["ev"]) and np.isnan(got["fvu"])
    assert sum(got["ad_hist"]["counts"]) == n


@SOME
@given(st.integers(1, 30), st.integers(1, 6), st.integers(1, 5), st.integers(0, 2**16), st.data())
def test_trackers_are_batch_independent_and_exact(n, k, t, seed, data):
    rng = np.random.default_rng(seed)
    codes = torch.tensor(rng.permutation(n * k).reshape(n, k) - n * k / 2, dtype=torch.float32)  # distinct
    active = torch.tensor(rng.random((n, k)) < 0.5)
    rows = torch.arange(n) + 100
    cut = sorted(data.draw(st.lists(st.integers(0, n), max_size=3)))
    top, res, hist = TopRows(k, t), Reservoir(k, t, seed), LogHistogram(k)
    one = Reservoir(k, t, seed)
    one.update(codes, active, rows)
    for a, b in zip([0, *cut], [*cut, n], strict=True):
        if b > a:
            top.update(codes[a:b], rows[a:b])
            res.update(codes[a:b], active[a:b], rows[a:b])
            hist.update(codes[a:b], active[a:b])
    score, r, _ = top.result()
    for f in range(k):
        best = np.argsort(-codes[:, f].numpy())[:t]
        assert r[f].tolist() == (best + 100).tolist()
    assert np.array_equal(res.result()[0], one.result()[0])
    got = {(f, int(x)) for f in range(k) for x in res.result()[0][f] if x >= 0}
    assert all(active[x - 100, f] for f, x in got)
    assert [len([1 for g, _ in got if g == f]) for f in range(k)] == [min(t, int(active[:, f].sum()))
                                                                        for f in range(k)]
    keys = pair_keys(rows[:, None], torch.arange(k)[None], seed).numpy()  # [n, k]: the R largest active keys
    for f in range(k):
        act = np.flatnonzero(active[:, f].numpy())
        kept = res.result()[0][f]
        assert sorted(kept[kept >= 0]) == sorted(act[np.argsort(-keys[act, f])[:t]] + 100)
    assert hist.counts.sum(dim=(1, 2)).tolist() == active.sum(0).tolist()
    b, f = np.nonzero(active.numpy())
    v = codes.numpy()[b, f].astype(np.float64)
    with np.errstate(divide="ignore"):  # a code 0 goes to bin 0
        bins = np.clip(np.floor((np.log10(np.abs(v)) + 4) * 8), 0, 63).astype(int)  # 8 a decade from 1e-4
    want = np.zeros((k, 2, 64), int)
    np.add.at(want, (f, (v < 0).astype(int), bins), 1)
    assert np.array_equal(hist.counts.numpy(), want)


@SOME
@given(st.integers(1, 8), st.integers(2, 12), st.integers(0, 2**16))
def test_float_otsu_equals_brute_force(n, k, seed):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, k)) * 10.0 ** rng.integers(-3, 4, (n, 1))  # [n, k], no ties
    v[rng.random((n, k)) < 0.2] = -np.inf  # an SAE's exact zeros
    got = M.otsu_split_batched(v).tolist()
    for row, low in zip(v, got, strict=True):
        if np.isneginf(row).any():  # the -inf values are exactly the low group
            assert low == int(np.isneginf(row).sum())
            continue
        srt = np.sort(row)
        cost = [srt[:i].var() * i + srt[i:].var() * (k - i) for i in range(1, k)]
        assert low == int(np.argmin(cost)) + 1


@SOME
@given(st.integers(1, 200), st.integers(1, 40))
def test_kept_grid_rises_from_0_to_k(k, points):
    g = M.kept_grid(k, points)
    assert g[0] == 0 and g[-1] == k and all(a < b for a, b in zip(g, g[1:], strict=False))
    assert g == list(range(k + 1)) if points >= k else len(g) <= points + 2


@SOME
@given(st.lists(st.integers(0, 50), min_size=1, max_size=30), st.integers(1, 20), st.integers(1, 100))
def test_histograms_count_every_latent(fires, bins, n):
    density = M.feature_density(fires, max(n, max(fires)))
    h = M.log_density_histogram(density, bins)
    assert sum(h["counts"]) + h["dead"] == len(fires) and h["dead"] == M.dead_latents(fires)
    c = M.bincount_histogram(torch.bincount(torch.tensor(fires)))
    assert dict(zip(c["values"], c["counts"], strict=True)) == {v: fires.count(v) for v in set(fires)}


@SOME
@given(st.lists(st.integers(), max_size=40, unique=True), st.integers(1, 50), st.integers(0, 99))
def test_buffer_shuffle_is_a_seeded_permutation(items, size, seed):
    got = list(buffer_shuffle(items, size, seed))
    assert sorted(got) == sorted(items) and got == list(buffer_shuffle(items, size, seed))


# ------------------------------------------------------------------------------------------- windows

@st.composite
def window_cases(draw):
    docs = draw(st.lists(st.lists(st.integers(1, 50), max_size=12), max_size=6))
    prefix = draw(st.sampled_from([(), (100,)]))
    suffix = draw(st.sampled_from([(), (101,)]))
    sep = draw(st.sampled_from([(), (102,), (102, 103)]))
    ctx = draw(st.integers(len(prefix) + len(suffix) + 1, 9))
    return docs, ctx, draw(st.sampled_from(["concat", "per_doc"])), prefix, suffix, sep


@SOME
@given(window_cases())
def test_windows_account_for_every_token(case):
    docs, ctx, mode, prefix, suffix, sep = case
    ws = list(token_windows(docs, ctx, mode, prefix, suffix, sep, pad_id=0))
    body = ctx - len(prefix) - len(suffix)
    kept = [(t, d, p) for w in ws for t, d, p, k in zip(w.tokens, w.doc, w.pos, w.keep, strict=True) if k]
    want = [(t, i, p) for i, doc in enumerate(docs) for p, t in enumerate(doc)]
    assert [tuple(map(int, x)) for x in kept] == want  # every document token once, in order, with its place
    for w in ws:
        n_body = ctx - len(prefix) - len(suffix) - w.n_pad
        assert len(w.tokens) == len(w.doc) == len(w.pos) == len(w.keep) == ctx and 0 <= w.n_pad < body
        assert w.tokens[:len(prefix)].tolist() == list(prefix)
        assert w.tokens[len(prefix) + n_body:ctx - w.n_pad].tolist() == list(suffix)
        assert (w.tokens[ctx - w.n_pad:] == 0).all() and (w.keep == (w.doc >= 0)).all()
        assert ((w.pos >= 0) == w.keep).all()
    stream = [t for w in ws for t in w.tokens[len(prefix):len(prefix) + body - w.n_pad].tolist()]
    nonempty = [d for d in docs if d]
    if mode == "concat":  # documents joined with sep, the stream cut into full windows (only the last short)
        joined = [t for i, d in enumerate(nonempty) for t in [*(sep if i else ()), *d]]
        assert stream == joined and all(w.n_pad == 0 for w in ws[:-1])
    else:  # each document cut alone
        assert len(ws) == sum(-(-len(d) // body) for d in nonempty) and stream == sum(nonempty, [])
    for j, w in enumerate(ws):  # resuming at any window's cursor gives the rest of the stream
        rest = list(token_windows(docs[w.start[0]:], ctx, mode, prefix, suffix, sep, pad_id=0, start=w.start))
        assert [(v.tokens.tolist(), v.doc.tolist(), v.pos.tolist()) for v in rest] == \
            [(v.tokens.tolist(), v.doc.tolist(), v.pos.tolist()) for v in ws[j:]]


@SOME
@given(window_cases(), st.integers(1, 7), st.none() | st.integers(1, 40))
def test_rows_fall_in_consecutive_shards(case, shard_rows, limit):
    docs, ctx, mode, prefix, suffix, sep = case
    special = {100, 101, 102, 103, 7}  # 7: a special token inside the text, not stored
    items = list(RowStream(token_windows(docs, ctx, mode, prefix, suffix, sep),
                           lambda w: stored_positions(w, special, True), limit=limit))
    want = [(i, p) for i, doc in enumerate(docs) for p, t in enumerate(doc) if t != 7][:limit]
    rows = [(int(it.window.doc[q]), int(it.window.pos[q])) for it in items for q in it.rows]
    assert rows == want
    works = list(shard_work(items, shard_rows, lambda s: True))
    assert [w.index for w in works] == list(range(len(works)))
    got = [(int(it.window.doc[q]), int(it.window.pos[q])) for w in works for it, a, b in w.pieces
           for q in it.rows[a:b]]
    assert got == want and all(w.n_rows == shard_rows for w in works[:-1])


@SOME
@given(window_cases(), st.integers(1, 7), st.none() | st.integers(1, 40))
def test_a_resumed_stream_writes_the_same_shards(case, shard_rows, limit):
    docs, ctx, mode, prefix, suffix, sep = case
    keep = lambda w: stored_positions(w, {100, 101, 102, 103, 7}, True)  # noqa: E731

    def shards(start, first_row, first_index, k):  # (index, rows as (doc, pos)) of shards k.., and end_row
        stream = RowStream(token_windows(docs[start[0]:], ctx, mode, prefix, suffix, sep, start=start), keep,
                           first_index=first_index, first_row=first_row, limit=limit)
        got = [(w.index, [(int(it.window.doc[q]), int(it.window.pos[q])) for it, a, b in w.pieces
                          for q in it.rows[a:b]]) for w in shard_work(stream, shard_rows, lambda s: s >= k)]
        return got, stream.end_row

    full, end = shards((0, 0), 0, 0, 0)
    works = list(shard_work(RowStream(token_windows(docs, ctx, mode, prefix, suffix, sep), keep, limit=limit),
                            shard_rows, lambda s: True))
    for k in range(1, len(works)):  # the harvest restarts at the first window of the last whole shard
        c = works[k - 1].pieces[0][0].cursor
        assert shards((c["doc"], c["offset"]), c["row"], c["window"], k) == (full[k:], end)


class MetaStore:
    """``read_chunk`` of a store of token rows (acts left out) in chunks of given sizes."""

    def __init__(self, ids, doc, pos, sizes):
        self.ids, self.doc, self.pos, self.ends = ids, doc, pos, np.cumsum([0, *sizes])

    def read_chunk(self, c, raw=False):
        a, b = self.ends[c], self.ends[c + 1]
        return Rows(np.empty((b - a, 0)), self.ids[a:b], self.doc[a:b], self.pos[a:b])


@SOME
@given(st.lists(st.lists(st.integers(1, 50), min_size=1, max_size=9), min_size=1, max_size=6),
       st.integers(1, 6), st.integers(1, 8), st.sampled_from([(), (100,)]), st.sampled_from([(), (102,)]),
       st.booleans(), st.integers(1, 30), st.data())
def test_heldout_windows_are_the_harvests_stream(docs, chunk, ctx, prefix, sep, join, n_windows, data):
    ids = np.asarray(sum(docs, []), np.int32)
    doc = np.concatenate([[i] * len(d) for i, d in enumerate(docs)]).astype(np.int64)
    pos = np.concatenate([np.arange(len(d)) for d in docs]).astype(np.int32)
    sizes = [chunk] * (len(ids) // chunk) + ([len(ids) % chunk] if len(ids) % chunk else [])
    chunks = sorted(data.draw(st.sets(st.integers(0, len(sizes) - 1), min_size=1)))
    ends = np.cumsum([0, *sizes])
    stretches, prev = [], None  # direct: per run of adjacent chunks, its rows as the harvest's stream
    for c in chunks:
        if prev is None or c != prev + 1:
            stretches.append([])
        for r in range(ends[c], ends[c + 1]):
            if stretches[-1] and doc[r] != stretches[-1][-1][2]:  # a document boundary inside the stretch
                if not join:
                    stretches.append([])
                else:
                    stretches[-1] += [(t, False, doc[r]) for t in sep]
            stretches[-1].append((int(ids[r]), True, doc[r]))
        prev = c
    want = [s[a:a + ctx] for s in stretches for a in range(0, len(s), ctx)]
    want = [win for win in want if len(prefix) + len(win) >= 2][:n_windows]  # one prediction at least
    if not want:
        with pytest.raises(SpliceError):
            heldout_windows(MetaStore(ids, doc, pos, sizes), chunks, n_windows, ctx, prefix, sep, join)
        return
    w = heldout_windows(MetaStore(ids, doc, pos, sizes), chunks, n_windows, ctx, prefix, sep, join)
    assert len(w) == len(want) and w.tokens.shape[1] == len(prefix) + ctx
    for i, win in enumerate(want):
        real = w.real[i].tolist()
        assert real == [True] * (len(prefix) + len(win)) + [False] * (ctx - len(win))
        assert w.tokens[i, len(prefix):len(prefix) + len(win)].tolist() == [t for t, _, _ in win]
        flags = [f for _, f, _ in win]
        assert w.spliced[i].tolist() == [False] * len(prefix) + flags + [False] * (ctx - len(win))


# ------------------------------------------------------------------------------------------ contexts

@FEW
@given(st.lists(st.integers(1, 9), min_size=1, max_size=12), st.integers(0, 4), st.sampled_from([1, 2, 4]),
       st.data())
def test_contexts_centre_on_the_row_and_stop_at_documents(lens, w, chunk, data):
    n = sum(lens)
    x, tok, doc, pos = _store_data(n, 2, 0, doc_runs=lens)
    rows = np.asarray(data.draw(st.lists(st.integers(0, n - 1), max_size=6)), np.int64)
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        store = _write_store(tmp, x, tok, doc, pos, "float32", chunk, 2 * chunk, [n])
        ctx = read_contexts(store, rows, w)
    assert ctx.ids.shape == ctx.valid.shape == (len(rows), 2 * w + 1)
    for h, r in enumerate(rows):
        want = [j for j in range(r - w, r + w + 1) if 0 <= j < n and doc[j] == doc[r]]
        assert ctx.valid[h].tolist() == [j in want for j in range(r - w, r + w + 1)]
        ids, c = ctx.row(h)
        assert ids == tok[want].tolist() and ids[c] == tok[r] and (ctx.doc[h], ctx.pos[h]) == (doc[r], pos[r])



@FEW
@given(st.lists(st.integers(1, 9), min_size=1, max_size=10), st.integers(1, 5), st.integers(1, 4),
       st.integers(0, 3), st.integers(1, 4), st.integers(0, 2**16))
def test_feature_hits_are_their_rows_in_context(lens, k, t, w, quantiles, seed):
    n = sum(lens)
    x, tok, doc, pos = _store_data(n, 2, 0, doc_runs=lens)
    rng = np.random.default_rng(seed)
    codes = torch.tensor(rng.standard_normal((n, k)) * (rng.random((n, k)) < 0.7), dtype=torch.float32)
    active = codes != 0
    tracker = FeatureTracker(k, t, 2 * t, seed)
    for a in range(0, n, 5):
        tracker.update(codes[a:a + 5], active[a:a + 5], torch.arange(a, min(a + 5, n)))
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        store = _write_store(tmp, x, tok, doc, pos, "float32", 4, 8, [n])
        data, _, _ = build_features(tracker, active.sum(0).numpy(), n, store, w,
                                    lambda ids: [f"t{i}" for i in ids], quantiles)
    for f, rec in enumerate(data["features"]):
        c = codes[:, f].numpy()
        top, bottom = [h[0] for h in rec["top"]], [h[0] for h in rec["bottom"]]
        assert top == sorted(top, reverse=True) and bottom == sorted(bottom)
        assert len(top) == min(t, int((c > 0).sum())) and len(bottom) == min(t, int((c < 0).sum()))
        if top:
            assert top[0] == pytest.approx(c.max(), rel=1e-4)
        hits = [*rec["top"], *rec["bottom"], *(h for q in rec["quantiles"] for h in q["hits"])]
        for act, row, d, p, ids, i in hits:  # the context's centre is the row's own token, in its document
            assert ids[i] == tok[row] and (d, p) == (doc[row], pos[row])
            assert act == pytest.approx(c[row], rel=1e-4)
            assert ids == tok[max(row - i, 0):row - i + len(ids)].tolist() and len(ids) <= 2 * w + 1
            assert (doc[row - i:row - i + len(ids)] == doc[row]).all()
            assert data["tokens"][str(ids[i])] == f"t{tok[row]}"
        sampled = [h[1] for q in rec["quantiles"] for h in q["hits"]]
        assert len(sampled) == len(set(sampled)) == min(2 * t, int(active[:, f].sum()))
