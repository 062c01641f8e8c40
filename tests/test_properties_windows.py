"""Property tests of the token windows and the rows they store, held-out CE windows and contexts."""

import tempfile

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from actdict.analyze.features import build_features
from actdict.analyze.splice import SpliceError, heldout_windows
from actdict.analyze.toptokens import FeatureTracker, read_contexts
from actdict.harvest.plan import RowStream, shard_work, stored_positions
from actdict.harvest.sources import buffer_shuffle
from actdict.harvest.windows import token_windows
from tests.properties_helpers import FEW, SCRATCH, SOME, _store_data, _write_store


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
    """``chunk_bounds`` and ``read_meta`` of a store of token rows in chunks of given sizes."""

    def __init__(self, ids, doc, pos, sizes):
        self.ids, self.doc, self.pos, self.ends = ids, doc, pos, np.cumsum([0, *sizes])

    def chunk_bounds(self, c):
        return int(self.ends[c]), int(self.ends[c + 1])

    def read_meta(self, a, b):
        return self.ids[a:b], self.doc[a:b], self.pos[a:b]


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
