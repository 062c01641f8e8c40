"""The class features' sums keep their digits whatever the first labelled rows (``ModelEval``'s per-class
shift, ``metrics.class_separation``'s per-class moments merged by Chan's formula)."""

import numpy as np
import pytest
import torch

from actdict.analyze import metrics as M
from actdict.analyze.config import AnalyzeConfig
from actdict.analyze.evaluate import ModelEval
from tests.test_class_features import Signed, _direct, _sums


def _features(z: torch.Tensor, lab: torch.Tensor, n_classes: int, batch: int = 8192) -> list[dict]:
    """summary's class_features of ModelEval fed z [n, k] (codes = z), labels lab [n], a batch at a time."""
    k = z.shape[1]
    ev = ModelEval(Signed(k, k), AnalyzeConfig(top_k=1, quantiles=1, quantile_samples=1, class_features=k),
                   seed=0, device=torch.device("cpu"), n_classes=n_classes, class_features=True)
    for b in range(0, len(z), batch):
        ev.update(z[b:b + batch], torch.arange(b, min(len(z), b + batch)), lab[b:b + batch])
    return ev.summary(len(z), z.sum(0), (z * z).sum(0), classes=list(range(n_classes)))["class_features"]


def test_a_first_slice_of_another_class_keeps_the_tight_classs_d():
    """A code silent (0) on class 0 and 3,000 +- 0.002 on class 1, the first batch all class 0: the one shift
    [k] of the first labelled slice was 0, and class 1's variance from sums of |z| ~ 3,000 (E[x^2] - E[x]^2,
    4e-6 out of 9e6) came out far off, its d (~2e6) with it. Each class's own shift (the mean of its first
    rows) gives the rows' d and means to 1e-6; a second code, 5 +- 1 on both, keeps its d ~0 too."""
    g = torch.Generator().manual_seed(8)
    n = 200_000
    lab = torch.cat([torch.zeros(8192, dtype=torch.long), torch.arange(n - 8192) % 2])  # [n]
    z = torch.stack([3000 + 2e-3 * torch.randn(n, generator=g, dtype=torch.float64),
                     5 + torch.randn(n, generator=g, dtype=torch.float64)], 1)  # [n, 2]
    z[lab == 0, 0] = 0.0
    z = z.float()
    got = _features(z, lab, 2)
    ref = _direct(z.double().numpy(), np.ones(z.shape), lab.numpy(), 1)
    assert ref[0]["d"] > 1e6
    assert [f["feature"] for f in got[1]["features"]] == [j for j in (0, 1) if ref[j]["d"] > 0]
    for f in got[1]["features"]:
        r = ref[f["feature"]]
        assert f["d"] == pytest.approx(r["d"], rel=1e-6)
        assert (f["abs_in"], f["abs_out"]) == pytest.approx((r["abs_in"], r["abs_out"]), rel=1e-12, abs=1e-12)


def test_per_class_shifts_give_the_rows_numbers_with_the_other_classes_merged():
    """class_separation with a shift of each class ([C, k], as ModelEval keeps) and five classes: every listed
    number equals the rows' own (the others' mean and variance from Chan's merge of their classes); the
    same lists as from unshifted sums."""
    rng = np.random.default_rng(9)
    lab = rng.integers(-1, 5, 600)
    z = np.abs(rng.standard_normal((600, 6))) * (rng.random((600, 6)) < 0.5) + 100.0 * (lab[:, None] % 2)
    fire = (z > 0).astype(float)
    shift = rng.random((5, 6)) * 10 + 100.0 * (np.arange(5)[:, None] % 2)
    s, q, f, cnt = _sums(z - shift[np.maximum(lab, 0)], fire, lab, 5)
    got = M.class_separation(s, q, f, cnt, top=6, shift=torch.tensor(shift))
    assert [[e["feature"] for e in c] for c in got] == [[e["feature"] for e in c] for c in
                                                         M.class_separation(*_sums(z, fire, lab, 5), top=6)]
    for c in range(5):
        ref = _direct(z, fire, lab, c)
        assert all(e == pytest.approx(ref[e["feature"]], rel=1e-9, abs=1e-12) for e in got[c])
    assert sum(map(len, got)) >= 12  # the odd classes (|z| ~100 more) list every feature
