"""ModelEval (``analyze/evaluate.py``): the summary numbers of a VAE-like dictionary (active side "low",
signed codes that are never exactly zero) against hand arithmetic."""

import pytest
import torch

from actdict.analyze.config import AnalyzeConfig
from actdict.analyze.evaluate import ModelEval
from actdict.errors import ActdictWarning
from actdict.train.protocol import Dictionary, Forward


class LowSide(Dictionary):
    """The input row is the activity (log posterior variance), as a VAE's; codes = (1 + x) * [1, -1, 1, -1]:
    signed and nonzero wherever x != -1; x_hat = x / 2."""

    variant = "test_low_side"
    active_side = "low"

    def forward(self, x, sample=True):
        codes = (1 + x) * torch.tensor([1.0, -1.0, 1.0, -1.0])
        return Forward(x / 2, codes, x, {})


def _first_update(ev: ModelEval, x: torch.Tensor, classes: torch.Tensor) -> None:
    """``ev.update`` of the first batch, whose curve LowSide (no decode()) cannot have: said, expected."""
    with pytest.warns(ActdictWarning) as said:
        ev.update(x, torch.arange(4), classes)
    assert [str(w.message) for w in said] == [
        "test_low_side has no decode(): no masked-dimensions curve (summary.json masked_curve null)"]


def test_vae_summary_counts_nonzero_codes_and_fires_by_the_otsu_mask():
    """L0 counts every nonzero code, negative ones too; a latent fires (dead, density) where it is in the Otsu
    active group, not where its code is nonzero; a class's AD splits the mean log variance of its rows."""
    x = torch.tensor([[-9.0, -2, 0, 0], [-9.0, -2, 0, 0], [0.0, 0, -9, -9], [0.0, 0, -9, -9]])  # [n, k]
    # Otsu on [-9, -2, 0, 0]: split 1 costs 0 + SS(-2, 0, 0) = 8/3, split 2 costs SS(-9, -2) = 24.5, split 3
    #   SS(-9, -2, 0) > 24.5: 1 low (active) latent, latent 0. [0, 0, -9, -9]: split 2 costs 0: latents 2, 3.
    ev = ModelEval(LowSide(4, 4), AnalyzeConfig(top_k=2, quantiles=1, quantile_samples=1), seed=0,
                   device=torch.device("cpu"), n_classes=2)
    _first_update(ev, x, torch.tensor([0, 0, 1, 1]))
    s = ev.summary(4, x.sum(0), (x * x).sum(0), classes=["a", "b"])
    assert s["l0"] == 4.0  # codes (1 + x) * signs: -8, -1, 1, -1 and 1, -1, -8, 8: all nonzero, half negative
    assert s["ad"] == pytest.approx(1.5) and s["ad_std"] == pytest.approx(0.5)
    assert s["dead"] == 1 and s["dead_frac"] == pytest.approx(0.25)  # latent 1 is in no row's active group
    assert s["dense"] == 3  # latents 0, 2, 3 fire on half the rows, more than dense_threshold = 0.1
    assert s["density_hist"]["dead"] == 1
    assert s["re_det"] == pytest.approx(float((x / 2).pow(2).sum(1).mean()))
    # class "a": mean log var [-9, -2, 0, 0] -> 1 active. (The mean variance [1.2e-4, 0.135, 1, 1] would
    # split after 0.135: 2.)  Class "b": [0, 0, -9, -9] -> 2.
    assert [(c["label"], c["n"], c["ad"], c["ad_of_mean"]) for c in s["ad_class"]] == [
        ("a", 2, 1.0, 1), ("b", 2, 2.0, 2)]


def _held(ev) -> int:
    """Elements of the tensors ModelEval holds itself (its attributes, lists of tensors included)."""
    items = [v for a in vars(ev).values() for v in (a if isinstance(a, list) else [a])]
    return sum(v.numel() for v in items if isinstance(v, torch.Tensor))


def test_memory_does_not_grow_with_the_rows():
    """It kept every row's AD and class index (8 bytes each per dictionary, 16 with labels: 160 MB for 10M
    held-out rows): how many rows have each AD and each class's AD sum now give the same numbers."""
    x = torch.tensor([[-9.0, -2, 0, 0], [-9.0, -2, 0, 0], [0.0, 0, -9, -9], [0.0, 0, -9, -9]])  # [4, k]
    ev = ModelEval(LowSide(4, 4), AnalyzeConfig(top_k=2, quantiles=1, quantile_samples=1), seed=0,
                   device=torch.device("cpu"), n_classes=2)
    _first_update(ev, x, torch.tensor([0, 0, 1, -1]))
    held = _held(ev)
    for b in range(1, 50):
        ev.update(x, torch.arange(4) + 4 * b, torch.tensor([0, 0, 1, -1]))
    assert _held(ev) == held
    s = ev.summary(200, 50 * x.sum(0), 50 * (x * x).sum(0), classes=["a", "b"])
    assert s["ad"] == pytest.approx(1.5) and s["ad_std"] == pytest.approx(0.5)
    assert s["ad_hist"] == {"values": [1, 2], "counts": [100, 100]}
    assert [(c["label"], c["n"], c["ad"]) for c in s["ad_class"]] == [("a", 100, 1.0), ("b", 50, 2.0)]
    assert s["ad_class_unlabelled"] == 50


def test_mask_counts_are_the_rows_and_columns_sums():
    """evaluate.mask_counts (numpy's sums on a CPU) gives each row's and each column's set entries as torch's
    sums do, int64 and int32, for a mask, its transposed view and an empty one."""
    from actdict.analyze.evaluate import mask_counts

    m = torch.rand(37, 11, generator=torch.Generator().manual_seed(3)) < 0.3
    for mask in (m, m.T, m[:0]):
        ad, fire = mask_counts(mask)
        assert ad.dtype == torch.int64 and fire.dtype == torch.int32
        assert ad.tolist() == mask.sum(1).tolist() and fire.tolist() == mask.sum(0).tolist()
    assert mask_counts(m)[0].sum() == m.sum() > 0


def test_mask_counts_from_the_pairs_are_the_sums_too():
    """mask_counts (and streaming.row_counts, cofire's) handed the mask's pairs (where_true) counts a sparse
    mask (at most 1 in 16 set) by bincounts of them: the same int64 row and int32 column counts as the
    sums, for a mask, its transposed view, an empty one, one with no set entry and one too dense for the
    pairs (the sums)."""
    from actdict.analyze.evaluate import mask_counts
    from actdict.analyze.streaming import row_counts, where_true

    g = torch.Generator().manual_seed(4)
    sparse = torch.rand(64, 40, generator=g) < 0.04
    sparse[3] = False  # an empty row
    for mask in (sparse, sparse.T, sparse[:0], sparse[:, :0], torch.zeros(5, 7, dtype=torch.bool),
                 torch.rand(9, 6, generator=g) < 0.5):
        ad, fire = mask_counts(mask, where_true(mask))
        assert torch.equal(row_counts(mask, where_true(mask)), ad)  # cofire's row counts, from the pairs too
        assert ad.dtype == torch.int64 and fire.dtype == torch.int32
        assert ad.shape == (mask.shape[0],) and fire.shape == (mask.shape[1],)
        assert ad.tolist() == mask.sum(1).tolist() and fire.tolist() == mask.sum(0).tolist()
    assert int(sparse.sum()) * 16 <= sparse.numel() and int(sparse.sum()) > 20


def test_nonzero_count_is_torchs_count_nonzero_and_l0_counts_it():
    """streaming.nonzero_count (numpy's count on a CPU float tensor) is torch.count_nonzero's count: -0.0 is
    zero, NaN and inf are not, for float32 / float64 / float16, bfloat16 (torch's own), a transposed view, a
    strided slice, an empty tensor and one that requires grad; ModelEval's L0 sums it."""
    from actdict.analyze.streaming import nonzero_count

    g = torch.Generator().manual_seed(5)
    z = torch.relu(torch.randn(37, 11, generator=g))  # about half zero
    z[0, :3] = -0.0
    z[1, 0], z[1, 1], z[2, 2] = float("nan"), float("inf"), -float("inf")
    for t in (z, z.double(), z.half(), z.bfloat16(), z.T, z[::3, 1::2], z[:0],
              z.clone().requires_grad_(True)):
        assert nonzero_count(t) == int(torch.count_nonzero(t.detach()))
    assert nonzero_count(z) == int((z != 0).sum()) == int((z.abs() > 0).sum()) + 1  # NaN counted

    x = torch.rand(4, 4, generator=g) - 0.5
    x[0] = -1.0  # codes (1 + x) * signs: row 0 all zero, one of them -0.0
    ev = ModelEval(LowSide(4, 4), AnalyzeConfig(top_k=2, quantiles=1, quantile_samples=1), seed=0,
                   device=torch.device("cpu"))
    _first_update(ev, x, None)
    assert ev.l0_sum == 12 == int(torch.count_nonzero(LowSide(4, 4)(x).codes))
