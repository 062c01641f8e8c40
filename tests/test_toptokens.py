"""Every feature's top / bottom rows, active-row sample and histogram from one streaming pass equal a
brute-force computation on a small store; tracker memory does not grow with the rows; contexts stay in
their document."""

import numpy as np
import pytest
import torch

from actdict.analyze.features import build_features, hit_keys, summary_hits
from actdict.analyze.metrics import active_mask
from actdict.analyze.streaming import LogHistogram, TopRows, sample_keys
from actdict.analyze.toptokens import FeatureTracker, display_strings, read_contexts, resolve_decoder, scan
from actdict.harvest.store import StoreWriter, open_store
from actdict.train.protocol import Dictionary, Forward

N, D, K = 300, 5, 7


class ReluDict(Dictionary):
    """codes = relu(x @ W): exact zeros, so "active" is codes != 0 and the expected rows are known."""

    variant = "test_relu"

    def __init__(self, d, k, W):
        super().__init__(d, k)
        self.register_buffer("W", torch.as_tensor(W, dtype=torch.float32))

    def forward(self, x, sample=True):
        z = torch.relu(x @ self.W)
        return Forward(z @ self.W.T, z, z.abs().log(), {})


class LinearDict(ReluDict):
    """codes = x @ W: signed, so the bottom rows are the most negative codes."""

    def forward(self, x, sample=True):
        z = x @ self.W
        return Forward(z @ self.W.T, z, z.abs().log(), {})


def make_store(path, n, seed=0):
    g = np.random.default_rng(seed)
    acts = g.standard_normal((n, D)).astype(np.float32)
    lengths = g.integers(1, 7, n)  # documents of 1..6 tokens
    doc = np.repeat(np.arange(n), lengths)[:n].astype(np.int64) + 1000
    pos = np.concatenate([np.arange(m) for m in lengths])[:n].astype(np.int32)
    token_ids = np.arange(n, dtype=np.int32) + 5  # token id = row + 5: contexts are checkable by row
    w = StoreWriter(path, {"hook": "blocks.0.hook_test", "model": "none"}, D, "float32", 64, 32)
    for s in range(0, n, 50):  # several appends, several shards and chunks
        w.append(acts[s : s + 50], token_ids[s : s + 50], doc[s : s + 50], pos[s : s + 50])
    w.close()
    return open_store(path), acts, doc


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    store, acts, doc = make_store(str(tmp_path_factory.mktemp("store") / "store"), N)
    W = np.random.default_rng(1).standard_normal((D, K)).astype(np.float32)
    return store, acts, doc, W


def decode(ids):
    return [f"t{i}" for i in ids]


@pytest.mark.parametrize("chunks, batch", [(None, 13), ([3, 0, 7], 64)])
def test_every_feature_equals_brute_force(data, chunks, batch):
    store, acts, _, W = data
    top_k, samples, seed = 5, 6, 3
    tr = scan(store, ReluDict(D, K, W), top_k, samples, chunks=chunks, batch_size=batch, seed=seed)
    allowed = np.arange(N) if chunks is None else np.concatenate(
        [np.arange(*store.chunk_bounds(c)) for c in chunks])
    codes = torch.relu(torch.as_tensor(acts) @ torch.as_tensor(W)).numpy()  # [N, K], as the model computes
    _, top_r, top_v = tr.top.result()
    _, bot_r, bot_v = tr.bottom.result()
    smp_r, smp_v = tr.sample.result()
    keys = sample_keys(torch.as_tensor(allowed), K, seed).numpy()  # [n, K]
    counts = tr.hist.counts.numpy()
    act_mask = active_mask(torch.as_tensor(codes).log(), "high").numpy()  # the Otsu mask = codes != 0 here,
    # except on rows with no zero at all
    for f in range(K):  # all features, not a chosen few
        ref = allowed[np.argsort(-codes[allowed, f], kind="stable")[:top_k]]
        assert top_r[f].tolist() == ref.tolist()
        np.testing.assert_allclose(top_v[f], codes[ref, f], rtol=1e-5)
        assert (bot_v[f] == 0).all()  # relu codes: nothing negative
        active = np.flatnonzero(act_mask[allowed, f])
        ref_s = allowed[active[np.argsort(-keys[active, f], kind="stable")[:samples]]]
        assert smp_r[f][smp_r[f] >= 0].tolist() == ref_s.tolist()
        np.testing.assert_allclose(smp_v[f][: len(ref_s)], codes[ref_s, f], rtol=1e-5)
        edges = LogHistogram(1).edges
        logv = np.clip(np.log10(codes[allowed[active], f]), edges[0], edges[-1] - 1e-9)
        ref_h = np.histogram(logv, bins=edges)[0]
        near_edge = int((np.abs(logv[:, None] - edges[None]) < 1e-5).sum())  # float32 rounding may move
        assert counts[f, 0].sum() == len(active) and np.abs(counts[f, 0] - ref_h).sum() <= 2 * near_edge
        assert counts[f, 1].sum() == 0


def test_tied_codes_keep_the_first_rows_whatever_the_batch(tmp_path):
    """Rows repeated in the store give equal codes here (x @ W, exactly equal on every row): the rows kept
    are the smallest of a tie, the same for every analyze.batch_size (torch.topk alone kept another set per
    batching)."""
    g = np.random.default_rng(2)
    acts = g.standard_normal((12, D)).astype(np.float32)[g.integers(0, 12, N)]  # 12 distinct rows
    meta = {"hook": "blocks.0.hook_test", "model": "none"}
    w = StoreWriter(str(tmp_path / "s"), meta, D, "float32", 64, 32)
    w.append(acts, np.arange(N, dtype=np.int32), np.arange(N, dtype=np.int64), np.zeros(N, np.int32))
    w.close()
    W = np.random.default_rng(1).standard_normal((D, K)).astype(np.float32)
    codes = (torch.as_tensor(acts) @ torch.as_tensor(W)).numpy()  # [N, K] signed
    for batch in (7, 64, 1000):
        tr = scan(open_store(str(tmp_path / "s")), LinearDict(D, K, W), 5, 4, batch_size=batch)
        _, top_r, top_v = tr.top.result()
        _, bot_r, _ = tr.bottom.result()
        for f in range(K):  # (value, row) order: the largest code first, ties by row
            assert top_r[f].tolist() == sorted(range(N), key=lambda r: (-codes[r, f], r))[:5]
            assert bot_r[f].tolist() == sorted(range(N), key=lambda r: (codes[r, f], r))[:5]
            assert (top_v[f][:-1] == top_v[f][1:]).any()  # ties among the kept rows
    nan = TopRows(1, 3, floor=0.0)  # NaN codes (topk's largest) beside a tie: that column is topk's alone
    nan.update(torch.tensor([[float("nan")], [float("nan")], [1.0], [1.0], [0.5]]), torch.arange(5))
    assert nan.result()[1].tolist() == [[0, 1, 2]]


def test_sample_is_uniform_and_batch_independent():
    rows = torch.arange(20000)
    keys = sample_keys(rows, 3, seed=0)
    assert keys.min() >= 0 and keys.max() < 2**62 and len(torch.unique(keys[:, 0])) == 20000
    assert not torch.equal(keys[:, 0], keys[:, 1]) and not torch.equal(keys, sample_keys(rows, 3, seed=1))
    assert torch.equal(keys[5:9], sample_keys(rows[5:9], 3, seed=0))  # a function of (row, feature, seed)
    assert not torch.equal(keys, sample_keys(rows, 3, seed=2**32))  # every bit of the seed counts
    top = keys[:, 0].topk(2000).indices  # the sample of 2,000 rows out of 20,000: roughly uniform
    assert abs(float((top < 10000).float().mean()) - 0.5) < 0.05


def test_memory_is_bounded_by_features_times_k(tmp_path):
    W = np.random.default_rng(1).standard_normal((D, K)).astype(np.float32)
    small, _, _ = make_store(str(tmp_path / "a"), 100)
    big, _, _ = make_store(str(tmp_path / "b"), 2000)
    a = scan(small, ReluDict(D, K, W), 4, 6, batch_size=32)
    b = scan(big, ReluDict(D, K, W), 4, 6, batch_size=32)
    assert a.nbytes() == b.nbytes()  # 20x the rows, same state
    nb = LogHistogram(K).bins
    assert b.nbytes() == K * (2 * 4 * (4 + 8 + 4) + 6 * (8 + 8 + 4) + 2 * nb * 8)


def test_log_histogram_bins_by_hand():
    h = LogHistogram(2, lo=-1.0, hi=1.0, per_decade=2)  # edges -1, -0.5, 0, 0.5, 1 (log10)
    codes = torch.tensor([[0.05, 1.0], [0.5, -2.0], [3.2, 1e6], [0.0, -0.4]])
    h.update(codes, torch.ones_like(codes, dtype=torch.bool))
    # 0.05 -> below range: bin 0; 0.5 -> log -0.30: bin 1; 3.2 -> 0.505: bin 3; 0 -> bin 0
    assert h.counts[0].tolist() == [[2, 1, 0, 1], [0, 0, 0, 0]]
    # 1.0 -> 0: bin 2; 1e6 -> beyond: bin 3; -2 -> 0.30: negative bin 2; -0.4 -> -0.40: negative bin 1
    assert h.counts[1].tolist() == [[0, 0, 1, 1], [0, 1, 1, 0]]


def test_signed_codes_bottom_and_tracker_order():
    t = TopRows(2, 3)
    t.update(torch.tensor([[1.0, -1.0], [3.0, 2.0]]), torch.tensor([10, 11]))
    t.update(torch.tensor([[2.0, 5.0]]), torch.tensor([12]))
    _, rows, vals = t.result()
    assert rows.tolist() == [[11, 12, 10], [12, 11, 10]] and vals.tolist() == [[3, 2, 1], [5, 2, -1]]
    ft = FeatureTracker(1, 2, 2, seed=0)
    ft.update(torch.tensor([[0.5], [-3.0], [-0.25]]), torch.tensor([[True], [True], [False]]),
              torch.tensor([0, 1, 2]))
    _, br, bv = ft.bottom.result()
    assert br.tolist() == [[1, 2]] and bv.tolist() == [[-3.0, -0.25]]
    assert ft.hist.counts[0, 1].sum() == 1 and ft.hist.counts[0, 0].sum() == 1  # only active rows
    with pytest.raises(ValueError, match="features"):
        t.update(torch.zeros(3, 5), torch.arange(3))


def test_contexts_stop_at_document_boundaries(data):
    store, _, doc, _ = data
    window = 4
    rows = np.array([0, 1, 17, 150, 151, 299, 63, 64])
    ctx = read_contexts(store, rows, window)
    cut_by_doc = 0
    for h, r in enumerate(rows):
        ids, c = ctx.row(h)
        before = [j for j in range(r - 1, max(r - window, 0) - 1, -1)]
        after = [j for j in range(r + 1, min(r + window + 1, N))]
        # contiguous same-document rows outward from r
        b = [j for j in before[: next((i for i, j in enumerate(before) if doc[j] != doc[r]), len(before))]]
        a = [j for j in after[: next((i for i, j in enumerate(after) if doc[j] != doc[r]), len(after))]]
        assert ids == [j + 5 for j in b[::-1] + [r] + a] and c == len(b)
        assert ctx.doc[h] == doc[r]
        cut_by_doc += len(b) < min(window, r)
    assert cut_by_doc > 0  # the boundary case is exercised


def test_build_features_quantiles(data):
    store, acts, _, W = data
    tr = scan(store, ReluDict(D, K, W), 3, 8, batch_size=50)
    codes = torch.relu(torch.as_tensor(acts) @ torch.as_tensor(W))
    fires = active_mask(codes.log(), "high").sum(0).numpy()
    out, _, _ = build_features(tr, fires, N, store, 2, decode, quantiles=4)
    assert len(out["features"]) == K and out["k"] == K
    for f, rec in enumerate(out["features"]):
        assert rec["fires"] == fires[f] and len(rec["top"]) == 3 and rec["bottom"] == []
        acts_top = [h[0] for h in rec["top"]]
        assert acts_top == sorted(acts_top, reverse=True) and rec["max"] == acts_top[0]
        qs = rec["quantiles"]  # highest quantile first, 8 samples in 4 groups of 2
        assert [len(q["hits"]) for q in qs] == [2, 2, 2, 2] and qs[0]["hi"] == 1.0 and qs[-1]["lo"] == 0.0
        vals = [h[0] for q in qs for h in q["hits"]]
        assert vals == sorted(vals, reverse=True) and all(v > 0 for v in vals)
        for _act, row, _, _, ids, c in rec["top"]:
            assert out["tokens"][str(ids[c])] == f"t{row + 5}"


def test_display_strings():
    assert display_strings(["the", "##ory", ","]) == [" the", "ory", " ,"]
    assert display_strings([" the", "ory"]) == [" the", "ory"]
    assert display_strings(["the", "world"], wordpiece=True) == [" the", " world"]  # no "##" in this list
    assert display_strings(["##s", "x"], wordpiece=False) == ["##s", "x"]


def test_a_store_whose_tokenizer_cannot_be_had_shows_token_ids(tmp_path):
    """A store harvested from a model folder since moved (or a hub model not in this machine's cache): the
    analysis ran its whole pass, then stopped at 'ModelError: model folder ... does not exist' instead of
    showing token ids, as resolve_decoder says it does."""
    with pytest.warns(UserWarning, match=r"no token decoder for this store \(model folder '.*gone' does not "
                      r"exist\); showing token ids"):
        decode = resolve_decoder({"model": str(tmp_path / "gone"), "hook": "h"})
    assert decode([5, 7]) == ["#5", "#7"]


def test_reservoir_of_a_rarely_active_feature_holds_only_its_active_rows():
    """A feature active on fewer rows than the sample size: its sample is exactly those rows (any batching),
    the other slots unfilled (row -1); a feature never active has no row at all."""
    from actdict.analyze.streaming import Reservoir

    codes = torch.arange(1.0, 19.0).reshape(6, 3)  # [6 rows, 3 features]
    active = torch.zeros(6, 3, dtype=torch.bool)
    active[[1, 4], 0] = True  # feature 0: 2 active rows of 6; feature 1: all 6; feature 2: none
    active[:, 1] = True
    r = Reservoir(3, 4, seed=0)
    r.update(codes[:3], active[:3], torch.arange(100, 103))
    r.update(codes[3:], active[3:], torch.arange(103, 106))
    rows, values = r.result()
    assert sorted(rows[0][rows[0] >= 0].tolist()) == [101, 104] and (rows[0] == -1).sum() == 2
    assert sorted(values[0][rows[0] >= 0].tolist()) == [4.0, 13.0]  # codes[1, 0], codes[4, 0]
    assert len(set(rows[1].tolist())) == 4 and set(rows[1].tolist()) <= set(range(100, 106))
    assert (rows[2] == -1).all()


def test_a_silent_feature_has_no_hits_and_densities_are_per_row(data):
    """A feature whose code is exactly 0 on every row has no top hits (a zero code is no activation), and
    each feature's density is its active rows over all the rows."""
    store, acts, _, W = data
    W = W.copy()
    W[:, 0] = 0  # feature 0: relu(0) = 0 everywhere
    tr = scan(store, ReluDict(D, K, W), 3, 8, batch_size=50)
    fires = active_mask(torch.relu(torch.as_tensor(acts) @ torch.as_tensor(W)).log(), "high").sum(0).numpy()
    out, _, _ = build_features(tr, fires, N, store, 2, decode, quantiles=4)
    silent = out["features"][0]
    assert silent["fires"] == 0 and silent["top"] == [] and silent["quantiles"] == []
    assert [f["density"] for f in out["features"]] == [float(f"{x / N:.5g}") for x in fires]


def test_summary_hits_and_hit_keys_by_hand():
    data = {"tokens": {"5": "a", "6": "b", "7": "c"},
            "features": [{"top": [[1.5, 10, 3, 2, [5, 6, 7], 1]], "bottom": [[-0.5, 12, 4, 9, [7], 0]],
                          "quantiles": [{"hits": [[0.5, 11, 3, 4, [6, 7], 0]]}]}]}
    assert summary_hits(data, 0) == [{"act": 1.5, "row": 10, "doc": 3, "pos": 2, "token_id": 6, "token": "b",
                                      "before": ["a"], "after": ["c"]}]
    assert hit_keys(data) == {(10, 3, 2), (12, 4, 9), (11, 3, 4)}


def test_contexts_inside_one_long_document(tmp_path):
    """Rows far apart (read in separate spans) in one document: each context is the 2w+1 rows around its row,
    whole, and carries the row's own document and position."""
    n, w = 256, 4
    pos = np.arange(n, dtype=np.int32) + 3
    with StoreWriter(str(tmp_path / "s"), {"hook": "h"}, 2, "float32", 128, 32) as wr:
        wr.append(np.zeros((n, 2), np.float32), np.arange(n) + 5, np.full(n, 7), pos)
    rows = np.array([40, 120, 200, 127, 128])
    ctx = read_contexts(open_store(str(tmp_path / "s")), rows, w)
    for h, r in enumerate(rows):
        assert ctx.row(h) == ([j + 5 for j in range(r - w, r + w + 1)], w)
        assert (ctx.doc[h], ctx.pos[h]) == (7, pos[r])


def test_contexts_read_a_chunk_at_a_time_and_keep_only_the_windows(tmp_path):
    """Hits closer than a chunk merge into one span; a span was read whole (activations included) and its
    rows' metadata all kept: with many features' hits the spans cover every held-out row. Now each span is
    read a chunk at a time and only the windows' rows are kept: numpy's peak stays well under the span."""
    import tracemalloc

    n, w, d = 20480, 2, 64  # 320 chunks of 64 rows, d = 64 float32: 5 MiB of acts, one span
    with StoreWriter(str(tmp_path / "s"), {"hook": "h"}, d, "float32", 4096, 64) as wr:
        wr.append(np.zeros((n, d), np.float32), np.arange(n) + 5, np.zeros(n, np.int64), np.arange(n))
    store, rows = open_store(str(tmp_path / "s")), np.arange(30, n, 40)  # 512 hits, 40 rows apart
    read_contexts(store, rows, w)  # the first call opens the shards (zarr's objects, kept)
    tracemalloc.start()
    try:
        ctx = read_contexts(store, rows, w)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    want = [([r + 5 + i for i in range(-w, w + 1)], w) for r in rows]  # token ids are row + 5
    assert [ctx.row(h) for h in range(len(rows))] == want
    assert peak < n * d * 4 / 8  # the whole span, 5 MiB of acts, was read at once before


def test_a_gpt2_hash_token_does_not_make_the_contexts_wordpiece(tmp_path):
    """GPT-2's vocabulary has '##' (Markdown headings): one in any context made the features file say
    WordPiece, and every context of the dictionary read '  Install', '  the' (a space added before each
    token). The tokenizer says which it is: GPT-2's is not, MiniLM's is."""
    from actdict.harvest.random_init import gpt2_tokenizer
    from actdict.harvest.tokens import token_decoder

    tok = gpt2_tokenizer()
    tok.save_pretrained(tmp_path / "tok")
    ids = tok("## Install\n\nRun the cat. " * 20, add_special_tokens=False)["input_ids"]
    assert ids[:7] == [2235, 15545, 198, 198, 10987, 262, 3797]
    n = len(ids)
    acts = np.random.default_rng(0).standard_normal((n, D)).astype(np.float32)
    w = StoreWriter(str(tmp_path / "store"), {"hook": "blocks.0.hook_test", "model": "none"}, D, "float32",
                    64, 32)
    w.append(acts, np.asarray(ids, np.int32), np.zeros(n, np.int64), np.arange(n, dtype=np.int32))
    w.close()
    store = open_store(str(tmp_path / "store"))
    W = np.random.default_rng(1).standard_normal((D, K)).astype(np.float32)
    tr = scan(store, ReluDict(D, K, W), 3, 8, batch_size=50)
    fires = (torch.relu(torch.as_tensor(acts) @ torch.as_tensor(W)) > 0).sum(0).numpy()
    decode = token_decoder({"tokenizer": str(tmp_path / "tok")})
    out, _, _ = build_features(tr, fires, n, store, 10, decode, 4)  # every context holds a '##'
    assert out["tokens"]["2235"] == "##" and out["tokens"]["262"] == " the" and out["wordpiece"] is False
    assert token_decoder({"tokenizer": "all-MiniLM-L6-v2"}).wordpiece is True


@pytest.mark.parametrize("coarse", [False, True])
def test_reservoir_sparse_path_holds_what_the_dense_one_does(coarse, monkeypatch):
    """Reservoir's pair sort (streaming.SPARSE_SHARE 1: every batch) keeps the same rows and values as its
    top-k over the columns (0: none), batch after batch, rows out of order, features active on fewer rows
    than the sample among them; with keys of 3 values (coarse) equal keys go to the smaller row in both."""
    import actdict.analyze.streaming as S

    if coarse:
        keys = S.pair_keys
        monkeypatch.setattr(S, "pair_keys", lambda r, f, seed: keys(r, f, seed) % 3)
    g = torch.Generator().manual_seed(4)
    codes = torch.randn(50, 9, generator=g)  # [rows, k]
    active = torch.rand(50, 9, generator=g) < torch.linspace(0.05, 0.9, 9)  # feature 0: 2 rows
    rows = torch.randperm(50, generator=g) + 1000
    got = {}
    for share in (0.0, 1.0):
        monkeypatch.setattr(S, "SPARSE_SHARE", share)
        r = S.Reservoir(9, 6, seed=7)
        for a, b in ((0, 4), (4, 30), (30, 50)):
            r.update(codes[a:b], active[a:b], rows[a:b])
        got[share] = r.result()
    (dr, dv), (sr, sv) = got[0.0], got[1.0]
    assert np.array_equal(dr, sr) and np.array_equal(dv[dr >= 0], sv[sr >= 0])
    assert (dr[0] == -1).sum() == 4 and (dr >= 0).sum() == 2 + 6 * 8
    lookup = {int(r): i for i, r in enumerate(rows)}
    assert all(active[lookup[int(x)], f] and sv[f, j] == codes[lookup[int(x)], f]
               for f in range(9) for j, x in enumerate(sr[f]) if x >= 0)


def test_where_true_is_nonzero_by_either_path():
    """streaming.where_true gives mask.nonzero(as_tuple=True), int64, row-major: by numpy's flat index for a
    sparse mask (a transposed view, a bool and a uint8 among them) and by torch for a dense or empty one."""
    from actdict.analyze.streaming import where_true

    g = torch.Generator().manual_seed(5)
    masks = [torch.rand(300, 70, generator=g) < p for p in (0.01, 0.05, 0.5)]
    masks += [masks[0].T, masks[1].to(torch.uint8), torch.zeros(0, 4, dtype=torch.bool),
              torch.ones(3, 1, dtype=torch.bool), torch.zeros(5, 6, dtype=torch.bool)]
    for m in masks:
        b, f = where_true(m)
        want_b, want_f = m.nonzero(as_tuple=True)
        assert b.dtype == f.dtype == torch.int64 and torch.equal(b, want_b) and torch.equal(f, want_f)
    assert len(where_true(masks[0])[0]) == int(masks[0].sum()) > 0


def test_bottom_rows_skip_batches_without_a_negative_code(monkeypatch):
    """FeatureTracker's bottom rows over batches with no code below 0 (one with -0.0) and batches with some
    (one with a NaN, which takes a place as before): the same rows and values below 0 as when every batch is
    ranked, and for the features without a NaN the t most negative codes, equal ones by the smaller row, as
    from all the rows at once; the state holds t rows whatever the batches (nbytes); negative_or_nan by hand.
    """
    import actdict.analyze.toptokens as T

    check = T.negative_or_nan

    g = torch.Generator().manual_seed(8)
    codes = torch.relu(torch.randn(60, 5, generator=g))  # [rows, k]
    codes[20:30] = -torch.randint(0, 3, (10, 5), generator=g).float()  # negatives, ties among them
    codes[40:50, 2] = -1.0
    codes[8, 1], codes[4, 1], codes[36, 3] = -0.0, -0.0, float("nan")
    t, got = 4, {}
    for ranked in (False, True):
        if ranked:
            monkeypatch.setattr(T, "negative_or_nan", lambda x: True)
        tr = T.FeatureTracker(5, t, 2, seed=0)
        for a, b in ((0, 10), (10, 20), (20, 35), (35, 40), (40, 60)):
            tr.update(codes[a:b], codes[a:b] != 0, torch.arange(a, b))
        _, rows, values = tr.bottom.result()
        got[ranked] = [[(float(v), int(r)) for v, r in zip(values[f], rows[f], strict=True) if v < 0]
                       for f in range(5)]
        assert rows.shape == (5, t) and tr.bottom.nbytes() == 5 * t * (4 + 8 + 4)
    assert got[False] == got[True]
    for f in (0, 1, 2, 4):
        assert got[False][f] == sorted((float(codes[r, f]), r) for r in range(60) if codes[r, f] < 0)[:t]
    assert len(got[False][3]) == t - 1  # the NaN's place
    nan = float("nan")
    cases = (codes[:10], codes[:30], torch.tensor([1.0, -0.0]), torch.tensor([nan, 2.0]), torch.zeros(0))
    assert [check(x) for x in cases] == [False, True, False, True, False]


def test_row_counts_are_the_rows_sums():
    """streaming.row_counts (numpy's sum on a CPU) gives mask.sum(1), int64, for a mask, a transposed view,
    an empty one and a mask of no column."""
    from actdict.analyze.streaming import row_counts

    m = torch.rand(23, 9, generator=torch.Generator().manual_seed(9)) < 0.4
    for mask in (m, m.T, m[:0], m[:, :0]):
        got = row_counts(mask)
        assert got.dtype == torch.int64 and got.tolist() == mask.sum(1).tolist()
    assert int(row_counts(m).sum()) == int(m.sum()) > 0


@pytest.mark.parametrize("coarse, shuffled", [(False, True), (True, True), (True, False)])
def test_top_rows_of_sparse_codes_from_their_positive_codes_alone(coarse, shuffled, monkeypatch):
    """FeatureTracker's top rows from the positive codes alone (streaming.SPARSE_SHARE 1: every batch without
    a negative code) hold the same rows and values above 0 as the column top-k (0: none), batch after batch,
    rows out of order (shuffled) or in order (no sort by row), a batch shorter than the list, features with
    fewer positive codes than the list, rows without a zero (the Otsu mask is then not the positive codes);
    coarse codes of 4 values: equal codes by the smaller row in both; and they are the t largest codes, ties
    by row, of all the rows at once. The sample and the bottom rows are the same too."""
    import actdict.analyze.streaming as S

    g = torch.Generator().manual_seed(11)
    codes = torch.relu(torch.randn(60, 9, generator=g) - torch.linspace(2.5, 0.0, 9))  # feature 0: ~0 rows
    if coarse:
        codes = codes.clamp(max=0.3).mul(10).round()  # 0, 1, 2, 3
    codes[[3, 41]] = torch.rand(2, 9, generator=g) + 0.1  # two rows with no zero: split by Otsu
    rows = (torch.randperm(60, generator=g) if shuffled else torch.arange(60)) + 500
    t, got = 5, {}
    for share in (0.0, 1.0):
        monkeypatch.setattr(S, "SPARSE_SHARE", share)
        tr = FeatureTracker(9, t, 4, seed=2)
        for a, b in ((0, 3), (3, 30), (30, 60)):
            tr.update(codes[a:b], active_mask(codes[a:b].log(), "high"), rows[a:b])
        _, top_r, top_v = tr.top.result()
        got[share] = ([[(float(v), int(r)) for v, r in zip(top_v[f], top_r[f], strict=True) if v > 0]
                       for f in range(9)], tr.sample.result(), tr.bottom.result()[2])
    assert got[0.0][0] == got[1.0][0]
    assert all(np.array_equal(x, y) for x, y in zip(got[0.0][1], got[1.0][1], strict=True))
    assert (got[0.0][2] == 0).all() and (got[1.0][2] == 0).all()
    for f in range(9):
        want = sorted((-float(codes[i, f]), int(rows[i])) for i in range(60) if codes[i, f] > 0)[:t]
        assert got[1.0][0][f] == [(-v, r) for v, r in want]
    assert len(got[1.0][0][0]) < t and sum(map(len, got[1.0][0])) > 5 * t


def test_positive_pairs_are_the_active_ones_when_they_are_the_nonzero_codes():
    """toptokens.positive_pairs: the mask's pairs themselves when they are the nonzero codes, else the codes
    above 0 (a row split by Otsu, a -0.0), None above streaming.SPARSE_SHARE."""
    from actdict.analyze.streaming import where_true
    from actdict.analyze.toptokens import positive_pairs

    codes = torch.zeros(20, 300)
    codes[torch.arange(20), torch.arange(20) * 7] = 2.0
    pairs = where_true(codes != 0)
    assert positive_pairs(codes, pairs) is pairs
    codes[5, 9] = 0.5  # a code the mask left out
    codes[6, 1] = -0.0
    got = positive_pairs(codes, pairs)
    assert got is not pairs and [x.tolist() for x in got] == [x.tolist() for x in where_true(codes > 0)]
    codes[:, :10] = 1.0  # 200 + 20 of 6,000 codes: above 1 %
    assert positive_pairs(codes, where_true(codes != 0)) is None


def test_a_jumprelus_negative_zeros_leave_its_sparse_codes_on_the_sparse_path():
    """A JumpReLU SAE's codes, pre * (pre > theta), are -0.0 wherever pre < 0 (about half of them): counted
    with the nonzero bits they put every batch above streaming.SPARSE_SHARE, so its top rows always took the
    transposed copy and the column top-k. positive_pairs now counts the codes above 0 there: the mask's
    pairs; and the tracker's top rows are those of the dense path (SPARSE_SHARE 0)."""
    import actdict.analyze.streaming as S
    from actdict.analyze.metrics import active_mask
    from actdict.analyze.streaming import where_true
    from actdict.analyze.toptokens import FeatureTracker, positive_pairs
    from actdict.train.variants.sae_jumprelu import jumprelu

    g = torch.Generator().manual_seed(3)
    pre = torch.randn(64, 500, generator=g)  # [B, k]
    codes = jumprelu(pre, torch.full((500,), 2.6), 0.001)  # ~0.5 % above theta
    assert int(torch.signbit(codes).sum()) > 10_000  # the -0.0
    pairs = where_true(active_mask(codes.abs().log(), "high"))
    assert 0 < len(pairs[0]) <= S.SPARSE_SHARE * codes.numel()
    assert positive_pairs(codes, pairs) is pairs
    tops = {}
    for share in (S.SPARSE_SHARE, 0.0):
        with pytest.MonkeyPatch.context() as m:
            m.setattr(S, "SPARSE_SHARE", share)
            tr = FeatureTracker(500, 3, 2, seed=0)
            tr.update(codes, codes > 0, torch.arange(64) + 10)
            tops[share] = tr.top.result()
    (s1, r1, v1), (s0, r0, v0) = tops.values()
    held = np.minimum(np.bincount(pairs[1].numpy(), minlength=500), 3)  # [k] each feature's best 3
    assert np.array_equal(s1 > 0, s0 > 0) and np.array_equal((s1 > 0).sum(1), held)
    assert np.array_equal(r1[s1 > 0], r0[s0 > 0]) and np.array_equal(v1[s1 > 0], v0[s0 > 0])
