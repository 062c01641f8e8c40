"""Co-activation counts (analyze/cofire.py): both counting paths equal A^T A, the partners' Jaccard ranking,
and the features file's ``fires_with`` against a brute-force count over the analysed rows."""

import json

import numpy as np
import pytest
import torch

from actdict.analyze import budget, cofire, metrics, run
from actdict.analyze.config import AnalyzeConfig
from actdict.analyze.streaming import where_true
from actdict.config import Common
from actdict.harvest.store import open_store
from actdict.train.checkpoint import load
from tests.test_analyze_outputs import _run_dir


def _pattern(rows: int, k: int, p: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    active = torch.rand(rows, k, generator=g) < p  # [B, k]
    active[0] = False  # a row with nothing active
    active[1] = True  # a row with everything active
    return active


@pytest.mark.parametrize("k,p", [(6, 0.5), (200, 0.02), (200, 0.3)])
def test_both_paths_count_every_pair_exactly(k, p, monkeypatch):
    """The dense matmul and the pairs path (forced by DENSE_RATIO) both give A^T A, over several batches."""
    batches = [_pattern(b, k, p, s) for s, b in enumerate((37, 5, 64))]
    a = torch.cat(batches).to(torch.int64)
    want = a.T @ a  # [k, k]
    got = {}
    for ratio in (1e9, 0.0):  # every update dense, then every update by pairs
        monkeypatch.setattr(cofire, "DENSE_RATIO", ratio)
        c = cofire.CoFire(k)
        for b in batches:
            c.update(b)
        got[ratio] = c.counts
    assert torch.equal(got[1e9].long(), want) and torch.equal(got[0.0].long(), want)
    assert got[0.0].dtype == torch.int32 and c.nbytes() == k * k * 4


def test_pairs_of_one_row_are_every_ordered_pair_of_its_features():
    active = torch.tensor([[True, False, True, True], [False, False, False, False],
                           [False, True, False, False]])
    keys = sorted(cofire.active_pairs(active).tolist())
    want = sorted(i * 4 + j for i in (0, 2, 3) for j in (0, 2, 3)) + [1 * 4 + 1]
    assert keys == sorted(want)


@pytest.mark.parametrize("k2", [None, 11])
def test_pairs_come_feature_by_feature_each_once(k2):
    """active_pairs (the pairs path's adds, no sort) gives every (i, j) pair of a row once, in order of i,
    with a second dictionary's features (k2) too, rows of none and of all active; empty: no pair."""
    a = _pattern(40, 9, 0.3, 1)
    o = None if k2 is None else _pattern(40, k2, 0.4, 2)
    other = a if o is None else o
    keys = cofire.active_pairs(a, o)
    want = sorted(i * other.shape[1] + j for r in range(40) for i in a[r].nonzero()[:, 0].tolist()
                  for j in other[r].nonzero()[:, 0].tolist())
    assert keys.dtype == torch.int64 and sorted(keys.tolist()) == want
    i = keys.div(other.shape[1], rounding_mode="floor")
    assert bool((i[1:] >= i[:-1]).all())
    assert torch.equal(cofire.active_pairs(a, o, where_true(a)), keys)  # the caller's where_true(a)
    assert len(cofire.active_pairs(torch.zeros(3, 4, dtype=torch.bool))) == 0


def test_partners_rank_by_jaccard_ties_by_index_never_self_or_strangers():
    # fires: 0:10, 1:10, 2:4, 3:10, 4:0; both: (0,1) 5, (0,2) 4, (0,3) 5
    c = torch.zeros(5, 5, dtype=torch.int32)
    for i, f in enumerate((10, 10, 4, 10, 0)):
        c[i, i] = f
    for i, j, n in ((0, 1, 5), (0, 2, 4), (0, 3, 5)):
        c[i, j] = c[j, i] = n
    feats, both = cofire.partners(c, 3, block=2)  # blocks of 2 rows: the block edges too
    # 0: J(0,2) = 4/10 = .4 first (2 is rare: P(2|0) is only .4 but P(0|2) is 1), then 1 and 3 (5/15 each,
    # tied: the smaller index first)
    assert feats[0].tolist() == [2, 1, 3] and both[0].tolist() == [4, 5, 5]
    assert feats[1].tolist() == [0, -1, -1] and both[1].tolist() == [5, 0, 0]
    assert feats[4].tolist() == [-1, -1, -1]  # a dead feature fires with nothing
    assert feats[2].tolist() == [0, -1, -1]
    jac = cofire.jaccard(c, c.diagonal(), c.diagonal(), feats)  # the values of that ranking; -1: 0
    assert jac[0].tolist() == pytest.approx([0.4, 1 / 3, 1 / 3]) and jac[1].tolist() == [1 / 3, 0.0, 0.0]
    assert jac[4].tolist() == [0.0, 0.0, 0.0]


def test_a_few_dense_rows_are_counted_in_bounded_pieces(monkeypatch):
    """Rows of ~50 active features and a few of thousands (a [CLS] row of an L1 SAE) chose the pairs path by
    the RMS, and sorted every pair at once: at k 8,192, 8 rows of 3,000 of 4,096 took 3.7 GB and 12 s (the
    matmul 1.2 GB, 7 s). More than MAX_PAIRS pairs are now counted in halves of the rows, each by its
    cheaper path, exactly: no sort holds more than MAX_PAIRS."""
    sizes = []
    real = cofire.active_pairs
    monkeypatch.setattr(cofire, "active_pairs", lambda *a: sizes.append(len(p := real(*a))) or p)
    monkeypatch.setattr(cofire, "MAX_PAIRS", 1000, raising=False)
    g = torch.Generator().manual_seed(0)
    a = torch.rand(64, 3000, generator=g) < 0.001
    a[[5, 40], :100] = True  # two dense rows: 10,000 pairs each, 20,000 + the rest's in all
    co = cofire.CoFire(3000)
    co.update(a)
    assert torch.equal(co.counts, (a.T.double() @ a.double()).int())
    assert sizes and max(sizes) <= 1000  # the dense rows, alone in their halves, go to the matmul


@pytest.mark.parametrize("k, ad, pairs", [(1024, 32, False), (2048, 64, False), (4096, 32, True)])
def test_each_batch_takes_the_path_measured_cheaper(monkeypatch, k, ad, pairs):
    """benchmarks/cofire.py (B 4,096, one thread): k 1,024 AD 32 dense 0.118 s, pairs 0.366; k 2,048 AD 64
    0.42 / 1.77; k 4,096 AD 32 1.56 / 0.51: even at k 2,048 AD 32 (0.433 / 0.419). k > 20 x AD took the
    pairs path at three times the matmul's cost."""
    calls = []
    real = cofire.active_pairs
    monkeypatch.setattr(cofire, "active_pairs", lambda *a: calls.append(1) or real(*a))
    a = torch.zeros(64, k, dtype=torch.bool)
    a.scatter_(1, torch.stack([torch.randperm(k)[:ad] for _ in range(64)]), True)  # ad active on every row
    cofire.CoFire(k).update(a)
    assert bool(calls) == pairs


def test_the_callers_pairs_reach_active_pairs_in_the_one_call(monkeypatch):
    """``CoFire.update(active, pairs=where_true(active))`` (toptokens' call) passes the caller's pairs on to
    ``active_pairs`` (one call for both cases) and counts what it counts without them: A^T A."""
    seen = []
    real = cofire.active_pairs
    monkeypatch.setattr(cofire, "active_pairs", lambda *a: seen.append(a[2:]) or real(*a))
    g = torch.Generator().manual_seed(0)
    a = torch.rand(64, 4096, generator=g) < 32 / 4096  # ~32 active of 4,096: the pairs path
    given, plain = cofire.CoFire(4096), cofire.CoFire(4096)
    given.update(a, pairs=where_true(a))
    plain.update(a)
    assert torch.equal(given.counts, plain.counts)
    assert torch.equal(plain.counts, (a.T.double() @ a.double()).int())
    assert [len(s) for s in seen] == [1, 1] and seen[1][0] is None
    assert all(torch.equal(x, y) for x, y in zip(seen[0][0], where_true(a), strict=True))


def test_partners_beyond_the_features_are_as_many_as_there_are():
    """analyze.cofire (or compare --partners) of 1e13 allocated k x 1e13 partners (a memory error)."""
    c = torch.tensor([[3, 2, 0], [2, 2, 0], [0, 0, 1]], dtype=torch.int32)
    feats, both = cofire.partners(c, 10**13)
    assert feats.tolist() == [[1, -1, -1], [0, -1, -1], [-1, -1, -1]] and both.shape == (3, 3)


def test_the_features_file_lists_partners_counted_over_the_analysed_rows(tmp_path, monkeypatch):
    """fires_with of every feature = the top Jaccard partners of a brute-force A^T A of the test rows'
    active split; the counts are the rows both fire on (so at most each one's fires); 0 turns it off."""
    run_dir = _run_dir(tmp_path, monkeypatch)
    run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(device="cpu", top_k=2, context=1, cofire=3))
    data = json.loads((run_dir / "features" / "sae.json").read_text())
    model = load(run_dir / "dicts" / "sae")[0].eval()
    store = open_store(str(run_dir / "store"))
    x = torch.as_tensor(np.concatenate([store.read_chunk(c).acts for c in (4, 5)]))  # the test rows
    with torch.no_grad():
        act = metrics.active_mask(model(x, sample=False).activity, model.active_side).long()  # [32, 8]
    brute = act.T @ act
    feats, both = cofire.partners(brute, 3)
    fires = [f["fires"] for f in data["features"]]
    assert fires == brute.diagonal().tolist()
    listed = 0
    for f, rec in enumerate(data["features"]):
        want = [[j, c] for j, c in zip(feats[f].tolist(), both[f].tolist(), strict=True) if j >= 0]
        assert rec["fires_with"] == want
        assert all(0 < c <= min(fires[f], fires[j]) and j != f for j, c in rec["fires_with"])
        listed += len(want)
    assert listed > 0
    summary = json.loads((run_dir / "summary.json").read_text())["models"]["sae"]["features"]
    assert summary and all(f["fires_with"] == data["features"][f["index"]]["fires_with"] for f in summary
                           if data["features"][f["index"]]["fires_with"])
    run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(device="cpu", top_k=2, context=1, cofire=0))
    data = json.loads((run_dir / "features" / "sae.json").read_text())
    assert all("fires_with" not in rec for rec in data["features"])


def test_dictionaries_beyond_the_memory_budget_are_not_counted_largest_first(tmp_path, monkeypatch, capsys):
    """cofire_max_mib bounds every dictionary's k^2 int32 counts together: smallest k first; a note names
    the others, which list no fires_with."""
    from types import SimpleNamespace as NS

    models = {"big": NS(k=1024), "small": NS(k=512), "mid": NS(k=724)}  # 4, 1 and ~2 MiB
    assert budget.cofire_within(models, AnalyzeConfig(cofire_max_mib=3)) == {"small", "mid"}
    assert "no fires_with for big: " in capsys.readouterr().out
    assert budget.cofire_within(models, AnalyzeConfig(cofire_max_mib=7)) == {"small", "mid", "big"}
    assert budget.cofire_within(models, AnalyzeConfig(cofire=0)) == set()
    run_dir = _run_dir(tmp_path, monkeypatch)
    run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(device="cpu", top_k=2, context=1, cofire_max_mib=0))
    data = json.loads((run_dir / "features" / "sae.json").read_text())
    assert all("fires_with" not in rec for rec in data["features"])  # 8^2 x 4 bytes > 0


def test_negative_settings_are_refused():
    from actdict.config import ConfigError

    with pytest.raises(ConfigError, match="analyze.cofire must be >= 0"):
        AnalyzeConfig(cofire=-1)


def test_counts_past_an_int32_become_int64_instead_of_wrapping(capsys):
    """CoFire's counts were int32 whatever the rows: past 2^31 rows a feature's fire count (its diagonal) or a
    pair's wrapped to a negative number, and fires_with ranked partners by it. Once the rows counted pass
    2^31 - 1 the counts are int64 (both paths); the budget prices 8 bytes for that many rows. The rows
    counted and a count are set next to the limit directly."""
    from types import SimpleNamespace as NS

    for k in (3, 4096):  # the dense path (small k) and the pairs path (k > 64 x the active count)
        co = cofire.CoFire(k)
        co.rows, co.counts[0, 0], co.counts[0, 1] = 2 ** 31 - 2, 2 ** 31 - 2, 5
        a = torch.zeros(3, k, dtype=torch.bool)
        a[:, 0] = True
        a[0, 1] = True
        co.update(a)
        assert co.counts.dtype == torch.int64 and co.rows == 2 ** 31 + 1
        assert (int(co.counts[0, 0]), int(co.counts[0, 1]), int(co.counts[1, 0])) == (2 ** 31 + 1, 6, 1)
    small = cofire.CoFire(3)
    small.update(torch.ones(5, 3, dtype=torch.bool))
    assert small.counts.dtype == torch.int32 and small.rows == 5  # fewer rows: as before
    models = {"m": NS(k=1024)}  # 4 MiB as int32, 8 as int64
    assert budget.cofire_within(models, AnalyzeConfig(cofire_max_mib=5)) == {"m"}
    assert budget.cofire_within(models, AnalyzeConfig(cofire_max_mib=5), rows=2 ** 31) == set()
    assert "(k^2 x 8 bytes each)" in capsys.readouterr().out
