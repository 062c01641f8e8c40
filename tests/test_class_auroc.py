"""The class features' AUROC of |z| (``analyze.auroc``): counts of |z| in fixed bins per class and feature,
kept by ``ModelEval`` in its one pass, against the AUROC counted from the rows themselves."""

import numpy as np
import pytest
import torch

from actdict.analyze import auroc as A
from actdict.analyze.config import AnalyzeConfig
from actdict.analyze.evaluate import ModelEval
from tests.test_class_features import Relu, Signed


def _exact(z: np.ndarray, lab: np.ndarray, c: int) -> np.ndarray:
    """[k] AUROC of |z| of class c's rows against the other labelled rows, every pair counted (ties 1/2)."""
    a, b = np.abs(z[lab == c]), np.abs(z[(lab != c) & (lab >= 0)])  # [n_in, k], [n_out, k]
    gt = (a[:, None] > b[None]).mean((0, 1))
    eq = (a[:, None] == b[None]).mean((0, 1))
    return gt + eq / 2


def _eval(model, x: torch.Tensor, lab: torch.Tensor, top: int, n_classes: int, auroc: bool = True
          ) -> ModelEval:
    """ModelEval over batches x [n_b, B, k] with labels lab [n_b, B], class features and their bins."""
    ev = ModelEval(model, AnalyzeConfig(top_k=2, quantiles=1, quantile_samples=1, class_features=top),
                   seed=0, device=torch.device("cpu"), n_classes=n_classes, class_features=True,
                   class_auroc=auroc)
    for b in range(len(x)):
        ev.update(x[b], torch.arange(x.shape[1]) + b * x.shape[1], lab[b])
    return ev


def _summary(ev: ModelEval, x: torch.Tensor, n_classes: int) -> list[dict]:
    flat = x.reshape(-1, x.shape[-1])
    out = ev.summary(len(flat), flat.sum(0), (flat ** 2).sum(0), classes=list(range(n_classes)))
    return out["class_features"]


def test_bins_are_the_float32_exponent_and_two_mantissa_bits():
    """bin_index against log2 computed apart: 1 + 4 (e - E_LO) + j for 2^e (1 + j / 4) <= |z| < 2^e (1 +
    (j + 1) / 4), 0 below 2^E_LO, the last bin at and above 2^E_HI (inf too); each bin's lower edge falls
    in it."""
    g = np.random.default_rng(0)
    v = np.concatenate([10.0 ** g.uniform(-8, 8, 5000), -(10.0 ** g.uniform(-8, 8, 500))]).astype(np.float32)
    edges = A.lower_edges().numpy()
    v = np.concatenate([v, edges[1:], [np.inf, 1e-30, 2.0 ** A.E_HI * 0.999]]).astype(np.float32)
    a = np.abs(v).astype(np.float64)
    with np.errstate(invalid="ignore"):  # inf / inf: NaN, past E_HI anyway
        e = np.floor(np.log2(a))
        want = 1 + 4 * (e - A.E_LO) + np.floor((a / 2.0 ** e - 1) * 4)
    want = np.where(a < 2.0 ** A.E_LO, 0, np.where(a >= 2.0 ** A.E_HI, A.STORED - 1, want))
    got = A.bin_index(torch.from_numpy(v)).numpy()
    assert np.array_equal(got, want) and A.STORED == 162
    assert np.array_equal(A.bin_index(A.lower_edges()[1:]).numpy(), np.arange(1, A.STORED))
    assert set(got.tolist()) >= {0, A.STORED - 1} and len(set(got.tolist())) > 100


@pytest.mark.parametrize("shift, codes_per_slice", [(2.0, 1 << 22), (0.0, 1 << 22), (0.0, 5 * 48)])
def test_streamed_auroc_is_the_rows_own_within_its_bound(shift, codes_per_slice, monkeypatch):
    """Sparse codes (relu(x - 2): ~2 % nonzero, counted from the mask's pairs) and dense ones (relu(x): half,
    counted a slice of rows at a time, whole batches or 5 rows), three batches with unlabelled rows: every
    listed feature's AUROC is within its bound of the AUROC of the rows' own |z|, and equals the AUROC of
    the rows' bins (pairs in one bin as ties), whose bound is 0.5 sum p_in p_out over the nonzero bins."""
    import actdict.analyze.evaluate as E

    monkeypatch.setattr(E, "CLASS_SLICE", codes_per_slice)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 60, 48, generator=g) - shift  # [batches, B, k]
    x[:, :, 0] = -1.0  # a zero on every row: the mask is codes != 0
    lab = torch.randint(-1, 3, (3, 60), generator=g)
    x[..., 5] += 2.5 * (lab == 1)  # a feature of class 1
    ev = _eval(Relu(48, 48), x, lab, top=6, n_classes=3)
    z, flat = torch.relu(x).reshape(-1, 48).numpy().astype(np.float64), lab.reshape(-1).numpy()
    got = _summary(ev, x, 3)
    binned = A.bin_index(torch.from_numpy(z)).numpy() + (z != 0)  # [n, k] 0: exact zeros, 1..: counted bins
    checked = 0
    for c, entry in enumerate(got):
        exact, ties = _exact(z, flat, c), _exact(binned.astype(np.float64), flat, c)
        for f in entry["features"]:
            j = f["feature"]
            assert abs(f["auroc"] - exact[j]) <= f["auroc_err"] + 1e-12
            assert f["auroc"] == pytest.approx(ties[j], abs=1e-12)
            p = [(binned[flat == c, j] == b).mean() for b in range(1, A.STORED + 1)]
            q = [(binned[(flat != c) & (flat >= 0), j] == b).mean() for b in range(1, A.STORED + 1)]
            assert f["auroc_err"] == pytest.approx(0.5 * np.dot(p, q), abs=1e-12)
            checked += 1
    assert checked >= 12 and got[1]["features"][0]["feature"] == 5 and got[1]["features"][0]["auroc"] > 0.8


def test_a_constant_above_another_constant_gives_1_and_identical_rows_give_one_half():
    """A code constant on class 1's rows (2.5) and constant, lower, on the others' (0.75, or 0: exact zeros)
    has AUROC 1 exactly, bound 0, beside its infinite d; a feature whose class 0 and class 1 rows are the same
    values (each row twice, once in each class) has 0.5 exactly, beside its d 0; class -1 rows, whatever their
    codes, count in no class: the bins are those of the labelled rows alone."""
    g = torch.Generator().manual_seed(6)
    half = torch.rand(40, 4, generator=g) * 3  # [40, k]
    x = torch.cat([half, half]).reshape(2, 40, 4)  # [batches, B, k]: batch 1 repeats batch 0
    lab = torch.stack([torch.zeros(40, dtype=torch.long), torch.ones(40, dtype=torch.long)])
    x[0, :, 1], x[1, :, 1] = 0.75, 2.5  # feature 1: 0.75 on class 0, 2.5 on class 1
    x[0, :, 2], x[1, :, 2] = 0.0, 2.5  # feature 2: 0 on class 0 (exact zeros), 2.5 on class 1
    ev = _eval(Signed(4, 4), x, lab, top=4, n_classes=2)
    feats = {f["feature"]: f for f in _summary(ev, x, 2)[1]["features"]}
    for j in (1, 2):
        assert feats[j]["d"] is None and feats[j]["auroc"] == 1.0 and feats[j]["auroc_err"] == 0.0
    auc, err = ev.class_bins.auroc(1, [0, 3], ev.class_n)
    assert auc == [0.5, 0.5] and 0 < min(err)
    noisy_x = torch.cat([x, 1e3 * torch.rand(1, 40, 4, generator=g)])  # unlabelled rows of large codes
    noisy = _eval(Signed(4, 4), noisy_x, torch.cat([lab, torch.full((1, 40), -1)]), top=4, n_classes=2)
    assert torch.equal(noisy.class_bins.counts, ev.class_bins.counts) and int(ev.class_bins.counts.sum()) > 0
    assert _summary(noisy, noisy_x, 2) == _summary(ev, x, 2)


def test_a_perfect_separator_whose_two_constants_share_a_bin_has_auroc_1():
    """Constants 1.0 on class 0 and 1.2 on class 1 fall in one bin ([1, 1.25)), whose counts alone give
    0.5 +- 0.5: every class-1 row is above every other row, so beside its infinite d (null) the AUROC is the
    rows' own, 1 exactly, bound 0; a feature in the same bin whose rows vary keeps the bins' AUROC."""
    g = torch.Generator().manual_seed(7)
    x = torch.rand(2, 40, 4, generator=g) * 3  # [batches, B, k]
    lab = torch.stack([torch.zeros(40, dtype=torch.long), torch.ones(40, dtype=torch.long)])
    x[0, :, 1], x[1, :, 1] = 1.0, 1.2  # feature 1: one bin, two constants
    spread = 0.04 * torch.rand(2, 40, generator=g)  # [batches, B]
    x[0, :, 3], x[1, :, 3] = 1.0 + spread[0], 1.2 + spread[1]  # feature 3: one bin, rows that vary
    ev = _eval(Signed(4, 4), x, lab, top=4, n_classes=2)
    assert A.bin_index(torch.tensor([1.0, 1.2, 1.04, 1.24])).unique().numel() == 1
    feats = {f["feature"]: f for f in _summary(ev, x, 2)[1]["features"]}
    z = x.reshape(-1, 4).abs().numpy().astype(np.float64)
    exact = _exact(z, lab.reshape(-1).numpy(), 1)
    assert feats[1]["d"] is None and exact[1] == 1.0
    assert (feats[1]["auroc"], feats[1]["auroc_err"]) == (1.0, 0.0)
    assert feats[3]["d"] > 5 and exact[3] == 1.0  # finite d: the bins' tie, within its bound
    assert (feats[3]["auroc"], feats[3]["auroc_err"]) == (0.5, 0.5)


def test_every_class_auroc_of_many_classes_is_read_from_one_sum_of_the_counts():
    """summary reads each class's listed features' AUROC in turn (ClassBins.auroc); the other classes'
    counts are every class's, summed once and kept until counts are added, less the class's own (summed again
    for each class, 3,000 classes at k 8 took ~2 minutes: O(C^2)); each class's AUROC and bound equal those
    of its counts against the other classes' summed apart, and counts added after a read are read. (The
    time is not asserted here: the one sum is, by the kept tensor's identity.)"""
    C, k, m = 300, 8, 5
    g = torch.Generator().manual_seed(8)
    bins = A.ClassBins(C, k, torch.device("cpu"))
    bins.counts.copy_(torch.randint(0, 4, (C * A.STORED * k,), generator=g, dtype=torch.int32))
    per = bins.counts.view(C, A.STORED, k)  # [C, STORED, k]
    n = per.sum(1).max(1).values.long() + torch.randint(0, 9, (C,), generator=g)  # [C] zeros beside
    def apart(c: int, n: torch.Tensor) -> tuple[list[float], list[float]]:
        inn = per[c, :, :m].T.long()  # [m, STORED]
        out = per[:, :, :m].sum(0).T.long() - inn
        zi, zo = n[c] - inn.sum(1, keepdim=True), n.sum() - n[c] - out.sum(1, keepdim=True)
        auc, err = A.auroc_from_counts(torch.cat([zi, inn], 1), torch.cat([zo, out], 1))
        return auc.tolist(), err.tolist()

    got = [bins.auroc(c, list(range(m)), n) for c in range(1)]
    total = bins._total  # [STORED, k] the one sum, read by every class after
    got += [bins.auroc(c, list(range(m)), n) for c in range(1, C)]
    assert total is not None and bins._total is total
    assert all(got[c] == apart(c, n) for c in (0, 17, C - 1))
    bins.add_rows(torch.full((3, k), 2.0), torch.tensor([0, 1, 1]))  # 3 more rows, |z| 2
    assert bins._total is None  # summed again at the next read
    n2 = n + torch.tensor([1, 2] + [0] * (C - 2))
    assert bins.auroc(0, list(range(m)), n2) == apart(0, n2) != got[0]


def test_without_bins_the_class_features_carry_no_auroc():
    """class_auroc False (past analyze.budget.CLASS_AUROC_MAX_MIB): no counts kept, the lists as before."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 50, 6, generator=g)
    lab = torch.randint(0, 2, (1, 50), generator=g)
    off, on = _eval(Relu(6, 6), x, lab, 3, 2, auroc=False), _eval(Relu(6, 6), x, lab, 3, 2)
    assert off.class_bins is None
    without, with_ = _summary(off, x, 2), _summary(on, x, 2)
    assert all("auroc" not in f for c in without for f in c["features"])
    assert without == [c | {"features": [{k: v for k, v in f.items() if not k.startswith("auroc")}
                                         for f in c["features"]]} for c in with_]


def test_the_auroc_is_shown_beside_d_with_its_bound_where_that_reaches_the_second_decimal():
    """actdict feature (a feature's classes, --class LABEL's column) and report.html's class table show
    AUROC to 2 decimals, '± bound' where the bound is 0.005 or more, nothing for an older file's
    [label, d]."""
    from actdict.analyze import report_sections, show

    def feat(i, classes):
        return {"i": i, "fires": 10, "density": 0.5, "max": 2.0, "min": 0.5, "hist": {"pos": [], "neg": []},
                "top": [], "bottom": [], "quantiles": [], "classes": classes}

    data = {"version": 1, "name": "v", "k": 3, "n_rows": 20, "window": 1, "tokens": {},
            "features": [feat(0, [["a", 1.5, 0.9123, 0.0004], ["b", None, 1.0, 0.0]]),
                         feat(1, [["a", 0.25, 0.6389, 0.0213]]), feat(2, [["a", 0.125]])]}
    said = "\n".join(show.feature_lines(data, {}, 0, 1))
    assert "\n  sets apart the rows of class a (d 1.5, AUROC 0.91), b (d inf, AUROC 1.00)" in said
    assert "class a (d 0.25, AUROC 0.64 ± 0.02)" in "\n".join(show.feature_lines(data, {}, 1, 1))
    assert "class a (d 0.125)" in "\n".join(show.feature_lines(data, {}, 2, 1))  # an older features file
    lines = show.class_lines(data, {}, "a", 5)
    assert "AUROC" in lines[0].split("top")[0]
    assert [r.split()[:5] for r in lines[1:]] == [["#0", "1.5", "0.91", "10"],
                                                  ["#1", "0.25", "0.64", "±", "0.02"], ["#2", "0.125", "10"]]
    edge = lines[0].index("AUROC") + len("AUROC")  # the column's right edge: '0.91' under '0.64 ± 0.02's end
    assert lines[1][:edge].endswith(" 0.91") and lines[2][:edge].endswith(" 0.64 ± 0.02")
    assert lines[1].index("10") == lines[3].index("10")
    f = {"feature": 3, "d": 1.5, "abs_in": 2.0, "abs_out": 0.1, "fire_in": 0.9, "fire_out": 0.05}
    model = {"variant": "sae_l1", "k": 8, "class_features": [{"label": "a", "n": 4, "features": [
        f, f | {"auroc": 0.9123, "auroc_err": 0.0004}, f | {"auroc": 0.6389, "auroc_err": 0.0213}]}]}
    page = "\n".join(report_sections.class_features({"sae": model}, {}))
    assert ('3: <span class="dim">d 1.5, active 90% / 5%</span><br>3: <span class="dim">d 1.5, AUROC 0.91, '
            'active 90% / 5%</span><br>3: <span class="dim">d 1.5, AUROC 0.64 &plusmn; 0.02, active 90% / 5%'
            '</span>') in page
    assert "Cohen's d and AUROC of |code|" in page and "AUROC: the chance that a row of the class" in page


def test_counts_past_an_int32_are_int64_and_give_the_right_auroc(capsys):
    """The bins' counts were int32 whatever the rows: a class with 2^31 rows in one bin of a feature wrapped
    to -2^31 and its AUROC came out wrong (its exact zeros read as 2^32). A class of more labelled rows than
    an int32 holds now gets int64 counts (and the memory budget counts 8 bytes a bin for them); the count
    here is set next to the limit directly, then one row more is counted."""
    from types import SimpleNamespace

    from actdict.analyze import budget

    assert A.count_dtype(2 ** 31 - 1) == torch.int32 and A.count_dtype(2 ** 31) == torch.int64
    bins = A.ClassBins(2, 1, torch.device("cpu"), most_rows=2 ** 31)
    one = A.bin_index(torch.tensor([1.0]))  # class 0: every row |z| 1; class 1: 10 rows |z| 2
    bins.counts.view(2, A.STORED, 1)[0, one, 0] = 2 ** 31 - 1
    bins.add_entries(torch.tensor([0]), torch.tensor([0]), torch.tensor([1.0]))  # its 2^31st row
    bins.add_rows(torch.full((10, 1), 2.0), torch.ones(10, dtype=torch.long))
    assert int(bins.counts.view(2, A.STORED, 1)[0, one, 0]) == 2 ** 31
    n = torch.tensor([2 ** 31, 10])
    assert bins.auroc(0, [0], n) == ([0.0], [0.0])  # every row of class 0 below every other row
    assert bins.auroc(1, [0], n) == ([1.0], [0.0])
    assert A.ClassBins(2, 1, torch.device("cpu")).counts.dtype == torch.int32  # fewer rows: as before
    ev = ModelEval(Relu(6, 6), AnalyzeConfig(class_features=3), seed=0, device=torch.device("cpu"),
                   n_classes=2, class_features=True, class_auroc=True, most_rows=2 ** 31)
    assert ev.class_bins.counts.dtype == torch.int64
    assert budget.largest_class(np.array([0, 1, 1, -1, 1])) == 3 and budget.largest_class(None) == 0
    models = {"sae": SimpleNamespace(k=2 ** 20)}  # 2 classes x 2^20 x 162 x 4 bytes: 1,296 MiB, over 512
    assert budget.class_auroc_within(models, 2) == set()
    assert "(2 classes x k x 648 bytes each)" in capsys.readouterr().out
    budget.class_auroc_within(models, 2, most_rows=2 ** 31)
    assert "(2 classes x k x 1296 bytes each)" in capsys.readouterr().out
