"""Metrics: Otsu split / active dimensions against hand-worked cases and a brute-force reference."""

import math

import numpy as np
import pytest
import torch

from actdict.analyze import metrics as M


def brute_low_count(v):
    """Reference: loop over splits of the sorted values, population variance, first minimum."""
    s = np.sort(np.asarray(v, dtype=np.float64))
    n = len(s)
    costs = [i * s[:i].var() + (n - i) * s[i:].var() for i in range(1, n)]
    i = int(np.argmin(costs)) + 1
    return int((s <= s[i - 1]).sum())


@pytest.mark.parametrize(
    "values, low",
    [
        # sorted [0,0,0,10,10]: i=3 gives 3*0 + 2*0 = 0, every other split costs > 0 -> 3 low
        ([10, 0, 10, 0, 0], 3),
        # [0,5,10]: i=1 -> 0 + 2*var(5,10)=2*6.25=12.5; i=2 -> 2*var(0,5)=12.5 + 0: a tie, first wins -> 1
        ([0, 5, 10], 1),
        # [0,1,2,3]: i=1 -> 0+3*(2/3)=2; i=2 -> 2*.25+2*.25=1; i=3 -> 2 -> 2 low
        ([3, 1, 0, 2], 2),
        # [0,1,1,1,6]: i=1 -> 0 + 4*var(1,1,1,6)=4*4.6875=18.75; i=2 -> 2*.25+3*var(1,1,6)=.5+16.67;
        #   i=3 -> 3*var(0,1,1)=2/3 + 2*var(1,6)=12.5 -> 13.17; i=4 -> 4*.1875=.75 + 0 -> 4 low
        ([0, 1, 1, 1, 6], 4),
        # [-1,0,1,-1,0,1] sorted [-1,-1,0,0,1,1]: i=2 -> 0+4*.25=1; i=4 -> 1+0=1; i=3 -> 2/3+2/3: tie of
        #   i=2 and i=4 -> first minimum: 2 low
        ([-1, 0, 1, -1, 0, 1], 2),
    ],
)
def test_otsu_hand_cases(values, low):
    assert M.otsu_split(values) == low
    assert brute_low_count(values) == low


def test_otsu_degenerate_rows():
    assert M.otsu_split([2.5, 2.5, 2.5]) == 3  # all equal: everything in the low group
    assert M.otsu_split([7.0]) == 1
    assert M.active_dims(torch.full((2, 4), 1.0), "low").tolist() == [4, 4]
    assert M.active_dims(torch.full((2, 4), 1.0), "high").tolist() == [4, 4]  # equal nonzero codes: all
    one = torch.tensor([[-1.2], [-torch.inf]])  # log|z| of a k = 1 SAE: z = 0.3 and z = 0
    assert M.active_dims(one, "high").tolist() == [1, 0]  # k = 1: a nonzero code is active, a zero is not
    assert M.active_dims(one, "low").tolist() == [1, 1]
    assert M.active_dims(torch.full((2, 4), -torch.inf), "high").tolist() == [0, 0]  # all-zero codes


def test_batched_equals_1d_and_brute_force():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 13, generator=g)
    x[:50] = x[:50].round()  # rows with ties
    x[50:100, :5] += 6.0  # clearly bimodal rows
    batched = M.otsu_split_batched(x)
    assert batched.shape == (200,)
    assert batched.tolist() == [M.otsu_split(r) for r in x]
    assert batched.tolist() == [brute_low_count(r.numpy()) for r in x]
    assert M.otsu_split_batched(x.numpy()).tolist() == batched.tolist()  # numpy input too


@pytest.mark.parametrize("n", [3, 5, 7, 9])
def test_otsu_exact_ties_of_equally_spaced_values_take_the_first_split(n):
    """n equally spaced values (n odd): the splits (n - 1) / 2 and (n + 1) / 2 cost the same by symmetry, so
    the first minimum leaves (n - 1) / 2 values low, whatever rounding makes of the two costs (the near-tie
    tolerance; a plain argmin of the float costs picks the second on some of these rows)."""
    for a in (0.0, -3.7, 1e3):
        for h in (0.1, 0.3, 1.7, 1e-3):
            assert M.otsu_split([a + j * h for j in range(n)]) == (n - 1) // 2, (a, h)


def test_otsu_split_is_shift_invariant():
    """A split depends on the values' spread, not their offset: rows moved by 1e4 split as the brute force
    splits them (the cumulative sums of squares about a far-away origin would cancel catastrophically)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 13, generator=g, dtype=torch.float64)
    x[50:, :5] += 6.0  # clearly bimodal rows
    shifted = x + 1e4
    assert M.otsu_split_batched(shifted).tolist() == [brute_low_count(r.numpy()) for r in shifted]
    assert M.otsu_split_batched(shifted).tolist() == M.otsu_split_batched(x).tolist()


def test_neg_inf_gives_exactly_l0():
    codes = torch.tensor(
        [
            [0.0, 3.0, 0.0, 0.5, 100.0, 0.0],  # L0 3, though 0.5 would be "low" among the finite ones
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # L0 0
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],  # no zeros: plain Otsu on log|z|
            [0.0, 1e-30, 1.0, 1.0, 1.0, 1.0],  # L0 5: the tiny value is still active
        ]
    )
    act = codes.abs().log()
    ad = M.active_dims(act, "high")
    assert ad[[0, 1, 3]].tolist() == [3, 0, 5]
    assert ad[2].item() == 6 - brute_low_count(act[2].numpy())
    assert 0 < ad[2].item() < 6  # no exact zero: AD below the row's L0 (AD == L0 needs a zero in the row)
    assert not torch.isnan(M.otsu_thresholds(act)).any()
    assert M.active_dims(act, "low")[[0, 1, 3]].tolist() == [3, 6, 1]


def test_vae_side_uses_low_group():
    # log-variances: 2 latents near log(1e-4) (active), 4 near 0 (prior-like, inactive)
    logvar = torch.tensor([[-9.2, -0.1, -9.0, 0.0, -0.05, 0.02]])
    assert M.active_dims(logvar, "low").tolist() == [2]
    assert M.active_dims(logvar, "high").tolist() == [4]
    assert M.active_mask(logvar, "low")[0].tolist() == [True, False, True, False, False, False]


def test_rows_that_all_have_an_exact_zero_take_the_fast_path_to_the_same_mask():
    """Every row with a -inf (an SAE's zeros): active_mask skips the split (its threshold is -inf) and gives
    what the split gives, rows of -inf alone included (AD 0), on either side; NaN and +inf are still refused
    there; one row without a -inf sends the whole batch through the split (equal codes: all active)."""
    g = torch.Generator().manual_seed(5)
    codes = torch.relu(torch.randn(64, 40, generator=g)) * (torch.rand(64, 40, generator=g) < 0.3)
    codes[:, 0] = 0.0  # a zero on every row
    codes[7] = 0.0  # a row of zeros
    act = codes.abs().log()
    via_split = act <= M.otsu_thresholds(act)[:, None]  # [n, k] the low group by the split itself
    from actdict.train import active

    with pytest.MonkeyPatch.context() as mp:  # the fast path: no split computed at all
        mp.setattr(active, "otsu_thresholds", lambda v: pytest.fail("the split was computed"))
        assert torch.equal(M.active_mask(act, "low"), via_split)
        assert torch.equal(M.active_mask(act, "high"), ~via_split)
    ad = M.active_dims(act, "high")
    assert ad[7] == 0 and torch.equal(ad, (codes != 0).sum(1))
    for bad in (math.nan, math.inf):
        worse = act.clone()
        worse[3, 5] = bad
        with pytest.raises(ValueError, match=r"NaN or \+inf"):
            M.active_mask(worse, "high")
    mixed = torch.cat([act, torch.full((1, 40), 0.5)])  # a row of equal nonzero codes: all 40 active
    assert M.active_dims(mixed, "high").tolist() == [*(codes != 0).sum(1).tolist(), 40]


def test_the_fast_path_gives_the_same_mask_by_numpy_and_by_torch():
    """On a CPU active_mask's fast path compares float32 / float64 activity by numpy, other dtypes (and a
    GPU's tensors) by torch: the same masks of values exact in bfloat16, either side; NaN refused."""
    g = torch.Generator().manual_seed(6)
    act = torch.randint(-3, 4, (30, 12), generator=g).float()  # small integers: exact in bfloat16
    act[torch.rand(30, 12, generator=g) < 0.6] = -math.inf
    act[:, 1] = -math.inf  # a -inf on every row: the fast path
    act[4] = -math.inf
    for side in ("low", "high"):
        by_numpy = M.active_mask(act, side)
        assert torch.equal(by_numpy, M.active_mask(act.double(), side))
        assert torch.equal(by_numpy, M.active_mask(act.to(torch.bfloat16), side))
        assert torch.equal(by_numpy, act.isneginf() if side == "low" else ~act.isneginf())
        for dtype in (torch.float32, torch.bfloat16):
            worse = act.to(dtype, copy=True)
            worse[2, 3] = math.nan
            with pytest.raises(ValueError, match=r"NaN or \+inf"):
                M.active_mask(worse, side)


def test_bad_inputs():
    with pytest.raises(ValueError, match="NaN"):
        M.active_dims(torch.tensor([[0.0, math.nan]]), "low")
    with pytest.raises(ValueError, match="side"):
        M.active_dims(torch.zeros(1, 3), "middle")
    with pytest.raises(ValueError, match="1-D"):
        M.otsu_split(torch.zeros(2, 3))


def test_ad_per_group():
    # group "a": mean logvar [-9, 0, 0, 0] -> 1 active; group "b": mean [-9, -9, -9, 0] -> 3 active
    act = torch.tensor([[-10.0, 0, 0, 0], [-8.0, 0, 0, 0], [-9.0, -9, -9, 0], [-9.0, -9, -9, 0]])
    assert M.ad_per_group(act, "low", ["a", "a", "b", "b"]) == {"a": 1, "b": 3}
    assert M.ad_per_group(act, "low", np.array([1, 1, 2, 2])) == {1: 1, 2: 3}
    # the group's mean row, not a per-latent median: rows [-9, -9, 0, 0] and [-9, -9, -9, -9] average to
    # [-9, -9, -4.5, -4.5] (2 active); their lower median [-9, -9, -9, -9] would be one level (all 4 "active")
    two = torch.tensor([[-9.0, -9, 0, 0], [-9.0, -9, -9, -9]])
    assert M.ad_per_group(two, "low", ["g", "g"]) == {"g": 2}


def test_re_l0_ev_hand_computed():
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    x_hat = np.array([[1.0, 1.0], [1.0, 4.0]])
    # per-sample sq err: [0 + 1, 4 + 0] = [1, 4] -> RE = 2.5
    assert M.reconstruction_error(x, x_hat) == pytest.approx(2.5)
    # per-dim means [2, 3]; total sum of squares about the mean: 1+1+1+1 = 4; sse 5 -> FVU 1.25, EV -0.25
    assert M.fvu(x, x_hat) == pytest.approx(1.25)
    assert M.explained_variance(x, x_hat) == pytest.approx(-0.25)
    assert M.explained_variance(x, x) == pytest.approx(1.0)
    assert M.fvu_from_moments(5.0, x.sum(0), (x**2).sum(0), 2) == pytest.approx(1.25)
    same = np.tile(np.float32([1000.3, 3.3, -0.7]), (112, 1))  # no variance, not a rounding residue's
    assert np.isnan(M.fvu(same, same + 1))
    assert M.l0(torch.tensor([[0.0, 1.0, -2.0], [0.0, 0.0, 0.0]])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape"):
        M.reconstruction_error(x, x_hat[:, :1])


def test_dead_density_histograms():
    fire = torch.tensor([0, 10, 100, 0, 1])
    assert M.dead_latents(fire) == 2
    assert M.feature_density(fire, 100).tolist() == [0.0, 0.1, 1.0, 0.0, 0.01]
    h = M.log_density_histogram(M.feature_density(fire, 100), bins=2)
    assert h["dead"] == 2 and h["counts"] == [1, 2] and h["edges"] == pytest.approx([-2, -1, 0])
    assert M.bincount_histogram(torch.tensor([0, 1, 0, 3])) == {"values": [1, 3], "counts": [1, 3]}


def test_cosine_dense():
    x = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [2.0, 0.0]])
    x_hat = np.array([[2.0, 0.0], [1.0, -1.0], [1.0, 0.0], [-1.0, 0.0]])
    assert M.cosine_similarity(x, x_hat).tolist() == pytest.approx([1.0, 0.0, 0.0, -1.0])  # zero row -> 0
    assert M.dense_latents(torch.tensor([0.05, 0.1, 0.11, 0.9]), 0.1) == 2


def test_kept_grid_and_ranks():
    assert M.kept_grid(5, 40) == [0, 1, 2, 3, 4, 5]
    g = M.kept_grid(384, 40)
    assert g[:8] == [0, 1, 2, 3, 4, 5, 6, 7] and g[-1] == 384 and g == sorted(set(g)) and len(g) <= 41
    act = torch.tensor([[0.5, -1.0, 3.0, 0.5]])
    assert M.activity_rank(act, "high").tolist() == [[1, 3, 0, 2]]  # ties: lower index first
    assert M.activity_rank(act, "low").tolist() == [[1, 0, 3, 2]]
    tb = torch.tensor([[1.0, 0.0, 0.0, -2.0]])  # equal activity: the larger |tiebreak| first
    assert M.activity_rank(act, "high", tiebreak=tb).tolist() == [[2, 3, 0, 1]]
    assert M.activity_rank(act, "low", tiebreak=tb).tolist() == [[2, 0, 3, 1]]
    clamped = torch.full((1, 4), -16.1)  # every variance at its floor: the codes decide, then the index
    assert M.activity_rank(clamped, "low", tiebreak=torch.tensor([[0.1, -3.0, 0.1, 2.0]])).tolist() == [
        [2, 0, 3, 1]]


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("side", ["high", "low"])
def test_masked_re_curve_brute_force(side, ties):
    g = torch.Generator().manual_seed(0)
    n, k, d = 9, 6, 4
    codes, act = torch.randn(n, k, generator=g), torch.randn(n, k, generator=g)
    if ties:  # three activity levels: most latents tie with others of their row
        act = act.round().clamp(-1, 1)
    W, b = torch.randn(k, d, generator=g), torch.randn(d, generator=g)
    x = torch.randn(n, d, generator=g)

    def decode(c):
        return c @ W + b

    kept = [0, 1, 3, 6]
    got = M.masked_re_curve(x, codes, act, side, decode, kept)
    for m, re in zip(kept, got, strict=True):
        ref = []
        for i in range(n):  # keep the m most active latents of row i, zero the others
            order = sorted(range(k), key=lambda j: (-act[i, j] if side == "high" else act[i, j],
                                                    -abs(codes[i, j]), j))
            c = torch.zeros(k)
            c[order[:m]] = codes[i, order[:m]]
            ref.append(float(((x[i] - decode(c)) ** 2).sum()))
        assert re == pytest.approx(np.mean(ref), rel=1e-5)
    assert got[-1] == pytest.approx(M.reconstruction_error(x, decode(codes)), rel=1e-6)  # all kept


def test_masked_re_curve_of_rows_beyond_float32_squares():
    """Rows of norm ~1e20 (finite in float32 and bfloat16, their squares are not): the curve is summed in
    float64 and equals the RE computed in float64, as re_det is, instead of inf (null in summary.json)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, generator=g) * 1e20  # [n, d] float32
    W = torch.randn(2, 3, generator=g) * 1e20

    def decode(c):
        return c @ W

    codes = torch.tensor([[1.0, 0.0]] * 5)  # [n, k]
    act = codes.abs().log()  # an SAE's activity: log|z|, -inf for the zero code
    got = M.masked_re_curve(x, codes, act, "high", decode, [0, 1, 2])
    assert all(np.isfinite(got))
    assert got[0] == pytest.approx(M.reconstruction_error(x, torch.zeros_like(x)), rel=1e-6)
    assert got[-1] == pytest.approx(M.reconstruction_error(x, decode(codes)), rel=1e-6)


def test_rows_of_no_values_have_no_split_and_no_active_latent():
    """k = 0 (no path reaches it today): otsu_thresholds raised (arange(1, 0)) and active_mask's high side
    read a[:, 0]; each row's threshold is -inf, its low group empty, its mask [n, 0] and its AD 0."""
    empty = torch.zeros(3, 0)
    thr = M.otsu_thresholds(empty)
    assert thr.dtype == torch.float64 and thr.tolist() == [-math.inf] * 3
    assert M.otsu_split_batched(empty).tolist() == [0, 0, 0]
    for side in ("low", "high"):
        assert M.active_mask(empty, side).shape == (3, 0)
        assert M.active_dims(empty, side).tolist() == [0, 0, 0]
    assert M.active_mask(torch.zeros(0, 0), "high").shape == (0, 0)
    assert M.otsu_split([]) == 0


def test_active_split_says_whether_the_mask_is_the_entries_off_minus_inf():
    """active_split: active_mask and True when every row has a -inf (the mask is then exactly the entries
    above -inf, "high", or at it, "low": no row split), False when a row without one was split."""
    g = torch.Generator().manual_seed(6)
    codes = torch.relu(torch.randn(30, 20, generator=g))
    codes[:, 0] = 0.0  # a zero on every row
    act = codes.abs().log()
    for side in ("high", "low"):
        mask, exact = M.active_split(act, side)
        assert exact and torch.equal(mask, M.active_mask(act, side))
        assert torch.equal(mask, act > -math.inf if side == "high" else act == -math.inf)
    mixed = torch.cat([act, torch.linspace(-3.0, 1.0, 20)[None]])  # a row of no zero: split by Otsu
    mask, exact = M.active_split(mixed, "high")
    assert not exact and torch.equal(mask, M.active_mask(mixed, "high"))
    assert 0 < int(mask[-1].sum()) < 20
