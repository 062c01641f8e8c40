"""Property tests of the metrics and the analysis' streaming statistics against direct recomputation."""

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from actdict.analyze import metrics as M
from actdict.analyze.config import AnalyzeConfig
from actdict.analyze.evaluate import ModelEval
from actdict.analyze.streaming import LogHistogram, Reservoir, TopRows, pair_keys
from actdict.train.protocol import make
from tests.properties_helpers import FEW, SOME

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
