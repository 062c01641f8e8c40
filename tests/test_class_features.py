"""Class features (``analyze.class_features`` with ``analyze.labels``): the features whose code most separates
a class's rows from the other labelled rows, from per-class sums (``metrics.class_separation``), accumulated
batch by batch (``ModelEval``), in summary.json and report.html."""

import json
import re

import numpy as np
import pytest
import torch

from actdict.analyze import budget, features, lens, run, show
from actdict.analyze import metrics as M
from actdict.analyze.config import AnalyzeConfig
from actdict.analyze.evaluate import ModelEval
from actdict.config import Common, ConfigError
from actdict.train.protocol import Dictionary, Forward
from tests.test_analyze_outputs import _run_dir


def _direct(z: np.ndarray, fire: np.ndarray, lab: np.ndarray, c: int) -> dict[int, dict]:
    """Every feature's numbers for class c, from the rows themselves (numpy, population variances)."""
    inn, out = z[lab == c], z[(lab != c) & (lab >= 0)]
    fin, fout = fire[lab == c], fire[(lab != c) & (lab >= 0)]
    sd = np.sqrt((inn.var(0) + out.var(0)) / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = (inn.mean(0) - out.mean(0)) / sd
    return {j: {"feature": j, "d": d[j], "abs_in": inn.mean(0)[j], "abs_out": out.mean(0)[j],
                "fire_in": fin.mean(0)[j], "fire_out": fout.mean(0)[j]} for j in range(z.shape[1])}


def _sums(z, fire, lab, n_classes):
    has = lab >= 0
    s = np.zeros((n_classes, z.shape[1]))
    q, f = s.copy(), s.copy()
    np.add.at(s, lab[has], z[has])
    np.add.at(q, lab[has], z[has] ** 2)
    np.add.at(f, lab[has], fire[has])
    return s, q, f, np.bincount(lab[has], minlength=n_classes)


def test_class_separation_equals_cohens_d_computed_from_the_rows():
    """A feature planted in class 1 (feature 4: +3 on its rows) leads its list, as d says; every listed
    number equals the direct computation over the rows; lists are sorted by d, cut at ``top``, d > 0 only."""
    g = np.random.default_rng(0)
    z = np.maximum(g.standard_normal((300, 7)), 0)  # [n, k] ReLU-like codes, about half zero
    lab = g.integers(0, 3, 300)
    lab[::10] = -1  # unlabelled rows: in no class and not among the "others"
    z[lab == 1, 4] += 3.0
    fire = (z > 0).astype(float)
    out = M.class_separation(*_sums(z, fire, lab, 3), top=4)
    assert out[1][0]["feature"] == 4 and out[1][0]["d"] > 3
    for c in range(3):
        ref = _direct(z, fire, lab, c)
        want = sorted((j for j in ref if ref[j]["d"] > 0), key=lambda j: -ref[j]["d"])[:4]
        assert [f["feature"] for f in out[c]] == want
        for f in out[c]:
            assert f == pytest.approx(ref[f["feature"]], rel=1e-9, abs=1e-12)


def test_signed_codes_are_compared_by_their_magnitude():
    """A VAE's latent that one class uses in both directions (+-2 on its rows, ~0 elsewhere) has a signed
    mean of ~0 there: by |z| it leads that class's list (ModelEval sums |z|); the signed code's d would put
    a latent with a small shift of one sign first."""
    g = torch.Generator().manual_seed(2)
    lab = torch.arange(200) // 100  # [200] classes 0, 1
    z = 0.1 * torch.randn(200, 3, generator=g)
    z[100:, 0] += torch.where(torch.arange(100) % 2 == 1, 2.0, -2.0)  # both signs: signed mean ~0
    z[100:, 1] += 0.05  # a small shift of one sign
    ev = ModelEval(Signed(3, 3), AnalyzeConfig(top_k=2, quantiles=1, quantile_samples=1, class_features=2),
                   seed=0, device=torch.device("cpu"), n_classes=2, class_features=True)
    ev.update(z, torch.arange(200), lab)
    first = ev.summary(200, z.sum(0), (z * z).sum(0), classes=[0, 1])["class_features"][1]["features"][0]
    assert first["feature"] == 0 and first["d"] > 10 and first["abs_in"] == pytest.approx(2, abs=0.1)
    fire = np.ones((200, 3))
    signed = M.class_separation(*_sums(z.double().numpy(), fire, lab.numpy(), 2), top=2)
    assert signed[1][0]["feature"] == 1  # what the signed code's d says


def test_classes_too_small_and_constant_features_list_nothing():
    """A class of one row, and a class whose others are one row, list nothing (no variance to speak of); a
    feature constant within both groups (here always 0) has no d; equal d: the lower index first."""
    z = np.array([[1.0, 0, 2], [1.0, 0, 2], [3.0, 0, 4], [3.0, 0, 4], [5.0, 0, 6]])
    z[0, 0] += 0.5  # class 0's spread, so feature 0 and 2 get finite d
    z[0, 2] += 0.5
    lab = np.array([0, 0, 1, 1, 2])
    out = M.class_separation(*_sums(z, (z > 0).astype(float), lab, 3), top=3)
    assert out[2] == [] and [f["feature"] for f in out[0]] == [] and out[1] != []
    assert [f["feature"] for f in out[1]] == [0, 2]  # same d (the two columns differ by 1 in class 0 only)
    assert out[1][0]["d"] == pytest.approx(out[1][1]["d"])
    two = M.class_separation(*_sums(z[:3], (z[:3] > 0).astype(float), np.array([0, 0, 1]), 2), top=3)
    assert two == [[], []]  # class 1 has one row; class 0's others are that one row


class Relu(Dictionary):
    """codes = relu(x) (k = d), activity log|codes| on the high side, as an SAE's; x_hat = codes."""

    variant = "test_relu"
    active_side = "high"

    def forward(self, x, sample=True):
        z = torch.relu(x)
        return Forward(z, z, z.abs().log(), {})

    def decode(self, codes):
        return codes


class Signed(Dictionary):
    """codes = x: signed, as a VAE's posterior means; activity log|x| on the high side."""

    variant = "test_signed"
    active_side = "high"

    def forward(self, x, sample=True):
        return Forward(x, x, x.abs().log(), {})

    def decode(self, codes):
        return codes


@pytest.mark.parametrize("codes_per_slice", [1 << 22, 13])
def test_model_eval_accumulates_them_batch_by_batch(codes_per_slice, monkeypatch):
    """Three batches with unlabelled rows among them: summary's class_features equal class_separation of the
    rows' own codes and fires (the Otsu mask: codes != 0 on a row with a zero), and the ad_class classes;
    the same whether a batch is summed whole or in slices of 2 rows (some of them unlabelled)."""
    import actdict.analyze.evaluate as E

    monkeypatch.setattr(E, "CLASS_SLICE", codes_per_slice)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 40, 6, generator=g)  # [batches, B, k]
    x[:, :, 0] = -1.0  # a zero on every row: the mask is codes != 0
    lab = torch.randint(-1, 2, (3, 40), generator=g)
    lab[0, :2] = -1  # a first slice without a label
    x[..., 3] += 2.0 * (lab == 1)
    ev = ModelEval(Relu(6, 6), AnalyzeConfig(top_k=2, quantiles=1, quantile_samples=1, class_features=3),
                   seed=0, device=torch.device("cpu"), n_classes=2, class_features=True)
    for b in range(3):
        ev.update(x[b], torch.arange(40) + 40 * b, lab[b])
    z, flat = torch.relu(x).reshape(-1, 6).double().numpy(), lab.reshape(-1).numpy()
    s = ev.summary(120, x.reshape(-1, 6).sum(0), (x.reshape(-1, 6) ** 2).sum(0), classes=["no", "yes"])
    want = M.class_separation(*_sums(z, (z > 0).astype(float), flat, 2), top=3)
    got = s["class_features"]
    assert [(c["label"], c["n"]) for c in got] == [(c["label"], c["n"]) for c in s["ad_class"]]
    assert [[f["feature"] for f in c["features"]] for c in got] == [[f["feature"] for f in w] for w in want]
    assert [c["features"] for c in got] == [[pytest.approx(f, rel=1e-12) for f in w] for w in want]
    assert s["class_features"][1]["features"][0]["feature"] == 3
    off = ModelEval(Relu(6, 6), AnalyzeConfig(class_features=3), seed=0, device=torch.device("cpu"),
                    n_classes=2)  # not chosen (the run's memory budget): nothing held, nothing listed
    assert off.class_z.numel() == 0
    off.update(x[0], torch.arange(40), lab[0])
    assert "class_features" not in off.summary(40, x[0].sum(0), (x[0] ** 2).sum(0), classes=["no", "yes"])


def test_the_per_class_ad_statistic_is_summed_a_slice_of_rows_at_a_time_too(monkeypatch):
    """With labels, ModelEval's per-class AD statistic (|z| of an SAE, which ad_of_mean splits) made float64
    copies of the whole batch (its copy and exp, then the labelled rows': 16 bytes per code, 4 GiB at B 4,096,
    k 65,536) after the class features' sums had been cut to slices: it is taken a slice of rows at a time
    too (CLASS_SLICE codes: here 2 rows; before, each call had the whole batch of 40), its sums the same to
    the bit as the whole batch's and equal to the labelled rows' own |z| summed per class."""
    import actdict.analyze.evaluate as E

    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 40, 6, generator=g)  # [batches, B, k]
    x[:, :, 0] = -1.0
    lab = torch.randint(-1, 3, (2, 40), generator=g)
    lab[0, :4] = -1  # first slices without a label
    rows, real = [], ModelEval._class_stat

    def spy(self, act):  # the rows each call converts (the whole batch's Forward before)
        rows.append(len(act) if isinstance(act, torch.Tensor) else len(act.codes))
        return real(self, act)

    monkeypatch.setattr(ModelEval, "_class_stat", spy)
    sums = {}
    for per_slice in (1 << 22, 13):  # whole batches, 2 rows a slice (k = 6)
        monkeypatch.setattr(E, "CLASS_SLICE", per_slice)
        rows.clear()
        ev = ModelEval(Relu(6, 6), AnalyzeConfig(top_k=2, quantiles=1, quantile_samples=1, class_features=0),
                       seed=0, device=torch.device("cpu"), n_classes=3)
        for b in range(2):
            ev.update(x[b], torch.arange(40) + 40 * b, lab[b])
        sums[per_slice] = ev.class_act
        assert sum(rows) == int((lab >= 0).sum())
    assert max(rows) <= 2
    assert torch.equal(sums[13], sums[1 << 22])
    has = lab.reshape(-1) >= 0
    want = torch.zeros(3, 6, dtype=torch.float64).index_add_(
        0, lab.reshape(-1)[has], torch.relu(x).reshape(-1, 6).double()[has])
    torch.testing.assert_close(sums[13], want, rtol=1e-6, atol=0)


def test_analysis_writes_them_and_the_report_shows_them_escaped(tmp_path, monkeypatch, capsys):
    """summary.json holds a class_features entry per class (as ad_class's), the report a table per dictionary
    with the label escaped and each feature linked to its page; class_features 0, or one class, writes
    none; a budget too small for the sums leaves them out with a note."""
    run_dir = _run_dir(tmp_path, monkeypatch)
    lab = np.array(["<b>bold</b>", "plain"])[np.arange(96) % 2]
    np.save(run_dir / "labels.npy", lab)
    cfg = {"device": "cpu", "n_features": 2, "top_k": 2, "context": 1, "labels": str(run_dir / "labels.npy")}
    capsys.readouterr()
    run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(**cfg, class_features=2))
    said = capsys.readouterr().out  # where to read them
    assert (f"\nanalyze: each of the 2 classes' features (Cohen's d of |code|, and AUROC): report.html, or "
            f"actdict feature {run_dir / 'dicts' / 'sae'} --class LABEL\n") in said
    m = json.loads((run_dir / "summary.json").read_text())["models"]["sae"]
    assert [(c["label"], c["n"]) for c in m["class_features"]] == [("<b>bold</b>", 16), ("plain", 16)]
    assert all(len(c["features"]) <= 2 for c in m["class_features"])
    assert all(f["d"] > 0 for c in m["class_features"] for f in c["features"])
    listed = [f["feature"] for c in m["class_features"] for f in c["features"]]
    assert listed  # random rows of 5 dims into 8 latents: some feature leans to either class
    feats = json.loads((run_dir / "features" / "sae.json").read_text())["features"]
    assert all(0 <= f["auroc"] <= 1 and 0 <= f["auroc_err"] < 0.5 for c in m["class_features"]
               for f in c["features"])  # analyze.auroc: tests/test_class_auroc.py
    want = {}  # each listed feature's classes, d and AUROC, as the class lists say, largest d first
    for c in m["class_features"]:
        for f in c["features"]:
            want.setdefault(f["feature"], []).append([c["label"], f["d"], f["auroc"], f["auroc_err"]])
    assert {r["i"]: r["classes"] for r in feats if "classes" in r} == {
        j: sorted(v, key=lambda ld: -ld[1]) for j, v in want.items()}
    top = lens.labels_of(json.loads((run_dir / "features" / "sae.json").read_text()), 3, run_dir)
    assert all(f["tokens"] == top[f["feature"]][0] and f["tokens"] for c in m["class_features"]
               for f in c["features"])  # each one's top tokens, for the report's table
    j, (label, d, auc, err) = listed[0], want[listed[0]][0]
    said = show.feature_lines(*show.read_features(run_dir / "dicts" / "sae"), j, 1)
    bound = f" ± {err:.2f}" if err >= 0.005 else ""
    assert f"\n  sets apart the rows of class {label} (d {d:.3g}, AUROC {auc:.2f}{bound})" in "\n".join(said)
    profiled = [r for r in feats if "by_class" in r]  # the classes each live feature fires on most
    assert profiled and all(r["fires"] > 0 for r in profiled)
    for r in profiled:
        assert [b[0] for b in r["by_class"]] in (["<b>bold</b>", "plain"], ["plain", "<b>bold</b>"],
                                                 ["<b>bold</b>"], ["plain"])
        assert all(b[1] == 16 and 0 < b[2] <= 16 and b[3] > 0 for b in r["by_class"])
        assert [b[2] for b in r["by_class"]] == sorted((b[2] for b in r["by_class"]), reverse=True)
        assert sum(b[2] for b in r["by_class"]) <= r["fires"]
    r = profiled[0]
    said = "\n".join(show.feature_lines(*show.read_features(run_dir / "dicts" / "sae"), r["i"], 1))
    lab0, n0, a0, v0 = r["by_class"][0]
    assert ("\n  fires most on the rows of class (most active rows first: active of its rows, mean |code| on "
            "them all):\n"
            f"    {lab0:<30} {a0:>7,} of      16 ({a0 / 16:>4.0%})  {v0:.3g}") in said
    html = (run_dir / "report.html").read_text()
    assert '<h2 id="classes">Features of each class</h2>' in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    assert "<b>bold</b>" not in html
    link = rf'<a href="report/sae.html\?run=[-0-9a-f]+#f={listed[0]}">{listed[0]}</a> <span class="tok">'
    assert re.search(link, html)
    for extra, labels in (({"class_features": 0}, lab), ({}, np.full(96, "one"))):
        np.save(run_dir / "labels.npy", labels)
        run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(**cfg, **extra))
        assert "class_features" not in json.loads((run_dir / "summary.json").read_text())["models"]["sae"]
        assert "Features of each class" not in (run_dir / "report.html").read_text()
    np.save(run_dir / "labels.npy", lab)
    monkeypatch.setattr(budget, "CLASS_FEATURES_MAX_MIB", 0)
    capsys.readouterr()
    run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(**cfg))
    assert "class_features" not in json.loads((run_dir / "summary.json").read_text())["models"]["sae"]
    out = capsys.readouterr().out
    assert ("analyze: note: no class_features for sae: their per-class sums (2 classes x k x 32 bytes "
            "each) would pass 0 MiB") in out
    monkeypatch.setattr(budget, "CLASS_FEATURES_MAX_MIB", 2048)
    monkeypatch.setattr(budget, "CLASS_AUROC_MAX_MIB", 0)  # the AUROC's bins alone past their budget
    run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(**cfg))
    m = json.loads((run_dir / "summary.json").read_text())["models"]["sae"]
    assert m["class_features"] and all("auroc" not in f for c in m["class_features"] for f in c["features"])
    said = capsys.readouterr().out
    assert ("analyze: note: no class_features AUROC for sae: their bins of |z| (2 classes x k x 648 bytes "
            "each) would pass 0 MiB") in said
    assert "classes' features (Cohen's d of |code|): report.html" in said  # d alone, as the lists
    feats = json.loads((run_dir / "features" / "sae.json").read_text())["features"]
    assert all(c[2:] == [None, None] for r in feats for c in r.get("classes", []))


def test_a_negative_count_is_a_config_error():
    with pytest.raises(ConfigError, match="analyze.class_features must be >= 0, got -1"):
        AnalyzeConfig(class_features=-1)


def test_the_report_shows_the_most_populous_classes_in_the_labels_order(monkeypatch):
    """Past CLASS_ROWS classes, report.html shows the most populous ones, in the order of the labels (as
    ad_class: 1 to 5 stars read in order), and says how many are only in summary.json."""
    from actdict.analyze import report_sections

    feat = {"feature": 3, "d": 1.5, "abs_in": 2.0, "abs_out": 0.1, "fire_in": 0.9, "fire_out": 0.05,
            "tokens": ["<b>", " "]}
    sizes = [5, 9, 2, 7, 8]  # rows of 1..5 stars
    classes = [{"label": f"{s} stars", "n": n, "features": [feat]} for s, n in enumerate(sizes, 1)]
    model = {"variant": "sae_l1", "k": 8, "class_features": classes}
    monkeypatch.setattr(report_sections, "CLASS_ROWS", 3)
    page = "\n".join(report_sections.class_features({"sae": model}, {"sae": "report/sae.html"}))
    assert re.findall(r"<tr><td>(\d) stars</td><td>(\d)</td>", page) == [("2", "9"), ("4", "7"), ("5", "8")]
    assert "2 smaller classes are in summary.json." in page
    assert ('<a href="report/sae.html#f=3">3</a> <span class="tok">&lt;b&gt;</span>, <span class="tok">\u2423'
            '</span>: <span class="dim">d 1.5, active 90% / 5%</span>') in page  # its top tokens, escaped


def test_the_class_tables_note_says_their_order_what_the_shares_are_and_where_else_to_find_them():
    """Each class's features are listed largest d first and shown with two shares, of the class's rows and of
    the others' where each is active; the note defined d but said neither (nor that actdict feature --class
    prints one class's list), so the order and the 'active 72% / 41%' read as unexplained."""
    from actdict.analyze import report_sections

    feat = {"feature": 3, "d": 1.5, "abs_in": 2.0, "abs_out": 0.1, "fire_in": 0.9, "fire_out": 0.05}
    model = {"variant": "sae_l1", "k": 8, "class_features": [{"label": "a", "n": 4, "features": [feat]}]}
    note = report_sections.class_features({"sae": model}, {})[1]
    assert "most separates its rows from every other labelled row, largest d first (d = " in note
    assert ("the shares: of the class's rows and of all the other labelled rows where the feature is active; "
            "actdict feature RUN_DIR/dicts/NAME --class LABEL prints one class's;") in note



def test_the_class_tables_rows_are_written_as_analyze_prints_counts():
    """A class's rows read '7277' beside the overview's other counts and analyze's '20,480': '7,277' now."""
    from actdict.analyze import report_sections

    model = {"variant": "sae_l1", "k": 8, "class_features": [{"label": "a", "n": 7277, "features": []}]}
    assert "<tr><td>a</td><td>7,277</td>" in report_sections.class_features({"sae": model}, {})[2]

def test_a_perfect_separator_reads_as_an_infinite_d_everywhere(tmp_path):
    """d None (constant in the class and in the others): report.html and `actdict feature` say infinite, and
    the feature's classes put it first."""
    from actdict.analyze import report_sections

    feat = {"feature": 3, "d": None, "abs_in": 2.0, "abs_out": 0.0, "fire_in": 1.0, "fire_out": 0.0}
    model = {"variant": "sae_l1", "k": 8, "class_features": [{"label": "a", "n": 4, "features": [feat]}]}
    page = "\n".join(report_sections.class_features({"sae": model}, {"sae": "report/sae.html"}))
    assert '<a href="report/sae.html#f=3">3</a>: <span class="dim">d &infin;, active 100% / 0%</span>' in page
    assert ("d &infin;: a code constant on the class's rows and constant, lower, on the others', which "
            "separates them perfectly)") in page  # the note says what an infinite d is
    rec = {"i": 0, "fires": 4, "density": 0.5, "max": 2.0, "min": 2.0, "hist": {"pos": [], "neg": []},
           "top": [], "bottom": [], "quantiles": [], "classes": [["b", 2.5], ["a", None]]}
    features.add_classes([rec], [], [], [], [])
    assert rec["classes"] == [["a", None], ["b", 2.5]]
    assert sorted([0.5, None, 2.0, -1.0, None], key=features.d_order) == [None, None, 2.0, 0.5, -1.0]
    data = {"version": 1, "name": "sae", "k": 8, "n_rows": 8, "window": 1, "tokens": {}, "features": [rec]}
    said = "\n".join(show.feature_lines(data, {}, 0, 1))
    assert "\n  sets apart the rows of class a (d inf), b (d 2.5)" in said


def test_a_large_code_with_a_tiny_spread_keeps_its_d():
    """var = E[x^2] - E[x]^2 from float64 sums cancels the mean's square: a code of 3,000 +- 0.002 (one
    part in 1.5e6; class 1 shifted by 0.001) came out with d 1.27 where its rows give 0.48. ModelEval sums
    |z| less the first labelled rows' mean, so d and the means equal the rows' own to 1e-6."""
    g = torch.Generator().manual_seed(3)
    n = 200_000
    lab = torch.arange(n) % 2
    z = (3000 + 2e-3 * torch.randn(n, 1, generator=g) + 1e-3 * lab[:, None]).float()  # [n, 1]
    ev = ModelEval(Signed(1, 1), AnalyzeConfig(top_k=1, quantiles=1, quantile_samples=1, class_features=1),
                   seed=0, device=torch.device("cpu"), n_classes=2, class_features=True)
    for b in range(0, n, 8192):
        ev.update(z[b:b + 8192], torch.arange(b, min(n, b + 8192)), lab[b:b + 8192])
    got = ev.summary(n, z.sum(0), (z * z).sum(0), classes=[0, 1])["class_features"][1]["features"]
    ref = _direct(z.double().numpy(), np.ones((n, 1)), lab.numpy(), 1)[0]
    assert ref["d"] == pytest.approx(0.494, abs=1e-3)
    assert [f["feature"] for f in got] == [0]
    assert got[0]["d"] == pytest.approx(ref["d"], rel=1e-6)
    assert (got[0]["abs_in"], got[0]["abs_out"]) == pytest.approx((ref["abs_in"], ref["abs_out"]), rel=1e-12)


def test_a_code_constant_on_its_class_and_dead_elsewhere_separates_it_perfectly_whatever_its_rounding():
    """A code constant on a class's rows and 0 on the others has pooled variance 0: from float64 sums its
    variance came out 0 or ~1e-17 (rounding) at random, and 47 of these 200 were listed with d ~1e7, the
    others not at all (the best separator of all hidden). Each is now listed, first, with d None (infinite);
    the other class (constant 0 against the constant) lists nothing. A real spread of 1e-4 on a code of 1
    (d ~1.4e4) keeps the rows' d."""
    g = torch.Generator().manual_seed(0)
    listed, other = [], []
    for _ in range(200):
        n = int(torch.randint(50, 5000, (1,), generator=g))
        v = float(torch.rand(1, generator=g) * 10) + 1e-3
        z = torch.zeros(2 * n, 2, dtype=torch.float64)
        v = float(torch.tensor(v, dtype=torch.float32))
        z[n:, 0] = v  # class 1: the same float32 code on every row
        z[:, 1] = torch.rand(2 * n, generator=g, dtype=torch.float64) + 5 * (torch.arange(2 * n) >= n)
        lab = torch.arange(2 * n) // n
        s, q = torch.zeros(2, 2, dtype=torch.float64), torch.zeros(2, 2, dtype=torch.float64)
        for b in range(0, 2 * n, 256):  # batch by batch, as ModelEval
            s.index_add_(0, lab[b:b + 256], z[b:b + 256])
            q.index_add_(0, lab[b:b + 256], z[b:b + 256] ** 2)
        out = M.class_separation(s, q, torch.zeros(2, 2), torch.tensor([n, n]), top=2)
        listed.append([(f["feature"], f["d"]) for f in out[1]])
        assert (out[1][0]["abs_in"], out[1][0]["abs_out"]) == pytest.approx((v, 0.0), abs=1e-9)
        other += [f["feature"] for f in out[0]]
        assert listed[-1][1][1] > 10  # feature 1: uniform noise on [0, 1), class 1's shifted by 5: d ~17
    assert [x[0] for x in listed] == [(0, None)] * 200
    assert other == []
    z = np.zeros((2000, 1))
    z[1000:, 0] = (1 + 1e-4 * np.random.default_rng(1).standard_normal(1000)).astype(np.float32)
    lab = np.arange(2000) // 1000
    got = M.class_separation(*_sums(z, (z > 0).astype(float), lab, 2), top=1)[1]
    ref = _direct(z, (z > 0).astype(float), lab, 1)[0]
    assert ref["d"] > 1e4 and [f["feature"] for f in got] == [0]
    assert got[0]["d"] == pytest.approx(ref["d"], rel=1e-6)


@pytest.mark.parametrize("block", [1 << 22, 9])
def test_class_profile_lists_the_classes_with_most_active_rows_from_the_rows(block, monkeypatch):
    """metrics.class_profile from the per-class sums equals counting the rows: per feature, its top classes by
    rows active (ties: the lower class), with its mean |z| over each class's rows; classes where it is never
    active, and features never active, list nothing; the same sorted whole or 2 features at a time."""
    monkeypatch.setattr(M, "PROFILE_CODES", block)
    rng = np.random.default_rng(4)
    n, k, c = 300, 7, 4
    lab = rng.integers(-1, c, n)
    z = np.abs(rng.standard_normal((n, k))) * (rng.random((n, k)) < 0.3)  # sparse, >= 0
    z[:, 5] = 0.0  # never active
    z[:, 6] = np.where(lab == 2, 1.5, 0.0)  # active on class 2 only
    fire = (z > 0).astype(float)
    s, _, f, cnt = _sums(z, fire, lab, c)
    shift = rng.random(k)
    got = M.class_profile(torch.tensor(f), torch.tensor(s - cnt[:, None] * shift), torch.tensor(cnt), 3,
                          torch.tensor(shift))
    assert len(got) == k and got[5] == [] and got[6] == [(2, int((lab == 2).sum()), pytest.approx(1.5))]
    for j in range(5):
        counts = [int(((lab == g) & (z[:, j] > 0)).sum()) for g in range(c)]
        want = sorted(range(c), key=lambda g: (-counts[g], g))[:3]
        assert [g for g, _, _ in got[j]] == [g for g in want if counts[g]]
        assert [a for _, a, _ in got[j]] == [counts[g] for g in want if counts[g]]
        assert [v for _, _, v in got[j]] == [pytest.approx(z[lab == g, j].mean(), rel=1e-9)
                                             for g in want if counts[g]]
    tie = M.class_profile(torch.tensor([[2], [3], [3]]), torch.zeros(3, 1), torch.tensor([5, 5, 5]), 2)
    assert [g for g, _, _ in tie[0]] == [1, 2]


@pytest.mark.parametrize("density, codes_per_slice", [(0.0, 1 << 22), (0.0, 26), (1.0, 1 << 22)])
def test_class_act_is_the_same_sum_whether_sparse_or_dense(density, codes_per_slice, monkeypatch):
    """ModelEval's per-class sums of exp(activity) (ad_class's ad_of_mean) are the same bits by the dense
    path (a slice of rows at a time: SPARSE_DENSITY 0) and the sparse one (the finite entries alone: 1): the
    float64 exp of each row's log|z| added in row order, unlabelled rows (-1) in no class."""
    import actdict.analyze.evaluate as E

    monkeypatch.setattr(E, "SPARSE_DENSITY", density)
    monkeypatch.setattr(E, "CLASS_SLICE", codes_per_slice)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 30, 13, generator=g) * 3  # [batches, B, k]: about half the codes 0
    lab = torch.randint(-1, 3, (2, 30), generator=g)
    lab[1] = torch.arange(30) % 3  # the second batch all labelled
    ev = ModelEval(Relu(13, 13), AnalyzeConfig(top_k=2, quantiles=1, quantile_samples=1), seed=0,
                   device=torch.device("cpu"), n_classes=3)
    want = torch.zeros(3, 13, dtype=torch.float64)
    for b in range(2):
        ev.update(x[b], torch.arange(30) + 30 * b, lab[b])
        for r in range(30):  # row by row, as a dense index_add_ adds them
            if lab[b, r] >= 0:
                want[lab[b, r]] += torch.relu(x[b, r]).abs().log().to(torch.float64).exp()
    assert torch.equal(ev.class_act, want)
    assert ev.class_act.count_nonzero() > 20 and ev.class_n.tolist() == torch.bincount(
        lab[lab >= 0], minlength=3).tolist()


@pytest.mark.parametrize("as_type", [np.asarray, torch.tensor, list])
def test_class_means_come_back_the_same_from_shifted_sums(as_type):
    """class_separation and class_profile read sums of |z| - shift and add the shift back (``_shift``; None:
    0): sums shifted by any [k] values (numpy, torch or a list) give the raw sums' means, d and profile."""
    rng = np.random.default_rng(7)
    lab, z = rng.integers(-1, 3, 200), np.abs(rng.standard_normal((200, 5))) + 3.0
    s, q, f, cnt = _sums(z, (z > 3.5).astype(float), lab, 3)
    shift = rng.random(5) + 3.0
    shifted = _sums(z - shift, (z > 3.5).astype(float), lab, 3)
    raw = M.class_separation(s, q, f, cnt, top=5)
    moved = M.class_separation(*shifted, top=5, shift=as_type(shift))
    assert [[e["feature"] for e in c] for c in moved] == [[e["feature"] for e in c] for c in raw]
    for c_raw, c_moved in zip(raw, moved, strict=True):
        for a, b in zip(c_raw, c_moved, strict=True):
            assert b == pytest.approx(a, rel=1e-9)
    profile = M.class_profile(f, shifted[0], cnt, 3, shift=as_type(shift))
    want = M.class_profile(f, s, cnt, 3)
    assert profile == [[(c, a, pytest.approx(v, rel=1e-9)) for c, a, v in p] for p in want]


@pytest.mark.parametrize("shift", [2.0, 0.0])
def test_class_fires_count_the_same_from_the_set_entries_alone(shift, monkeypatch):
    """ModelEval's per-class fires, from the mask's set entries alone (sparse codes: relu(x - 2), about 2 in
    100 set) or from the whole mask (relu(x): half of it), with unlabelled rows, in slices of 5 rows: the
    count of each class's rows where each feature is active, and the |z| sums as from the rows themselves."""
    import actdict.analyze.evaluate as E

    monkeypatch.setattr(E, "CLASS_SLICE", 5 * 64)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 40, 64, generator=g) - shift  # [batches, B, k]
    x[:, :, 0] = -1.0  # a zero on every row: the mask is codes != 0
    lab = torch.randint(-1, 3, (2, 40), generator=g)
    lab[0, :5] = -1  # a first slice without a label
    ev = ModelEval(Relu(64, 64), AnalyzeConfig(top_k=2, quantiles=1, quantile_samples=1, class_features=3),
                   seed=0, device=torch.device("cpu"), n_classes=3, class_features=True)
    for b in range(2):
        ev.update(x[b], torch.arange(40) + 40 * b, lab[b])
    z, flat = torch.relu(x).reshape(-1, 64).double(), lab.reshape(-1)
    want = torch.zeros(3, 64, dtype=torch.long)
    want.index_add_(0, flat[flat >= 0], (z[flat >= 0] != 0).long())
    assert torch.equal(ev.class_fire, want) and int(want.sum()) > 20
    sparse = [int((torch.relu(x[b]) != 0).sum()) * 16 <= x[b].numel() for b in range(2)]
    assert sparse == [shift > 0] * 2  # each batch's path: the set entries alone, or the whole mask
    shift_z = torch.zeros(3, 64, dtype=torch.float64)  # each class's: its rows' mean |z| on its first slice
    for c in range(3):
        first = int(torch.nonzero(flat == c)[0]) // 5 * 5  # the slice of 5 rows with its first row
        shift_z[c] = z[first:first + 5][flat[first:first + 5] == c].mean(0)
    s = torch.zeros(3, 64, dtype=torch.float64).index_add_(0, flat[flat >= 0],
                                                           z[flat >= 0] - shift_z[flat[flat >= 0]])
    assert torch.allclose(ev.class_z, s, rtol=1e-12, atol=1e-12)


def test_class_act_of_rows_split_by_otsu_sums_every_finite_entry(monkeypatch):
    """A batch with a row of no zero (active_split not exact: that row split by Otsu, its mask short of its
    nonzero codes) sums exp(activity) of every finite entry by the sparse path, as the dense one does, while
    a batch whose rows all have a zero takes the mask's own pairs: both the row-by-row float64 sums."""
    import actdict.analyze.evaluate as E

    monkeypatch.setattr(E, "SPARSE_DENSITY", 1.0)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 20, 16, generator=g)  # [batches, B, k]
    x[:, :, 0] = -1.0  # a zero on every row
    x[1, 6] = torch.linspace(0.1, 3.0, 16)  # but this row of the second batch: 16 nonzero codes
    lab = torch.arange(20) % 3
    ev = ModelEval(Relu(16, 16), AnalyzeConfig(top_k=2, quantiles=1, quantile_samples=1), seed=0,
                   device=torch.device("cpu"), n_classes=3)
    want = torch.zeros(3, 16, dtype=torch.float64)
    for b in range(2):
        ev.update(x[b], torch.arange(20) + 20 * b, lab)
        for r in range(20):
            want[lab[r]] += torch.relu(x[b, r]).abs().log().to(torch.float64).exp()
    assert [M.active_split(torch.relu(x[b]).log(), "high")[1] for b in range(2)] == [True, False]
    assert torch.equal(ev.class_act, want)
    assert int(M.active_mask(torch.relu(x[1, 6:7]).log(), "high").sum()) < 16


@pytest.mark.parametrize("shift", [2.0, 0.0])
def test_class_feature_sums_are_each_class_rows_added_one_by_one_to_the_bit(shift, monkeypatch):
    """ModelEval's class-feature sums (class_z, class_z2, class_fire, class_shift), added a class at a time,
    are to the bit the float64 sums that take each labelled row's |z| - shift, and its square, one row after
    another in row order, each class's shift the mean |z| of its rows in the first slice that has them (what
    one index_add_ of every row into its class's row gave): sparse (relu(x - 2)) and dense codes, unlabelled
    rows, slices of 5 rows, three batches, float32 codes of all magnitudes."""
    import actdict.analyze.evaluate as E

    monkeypatch.setattr(E, "CLASS_SLICE", 5 * 48)
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(3, 40, 48, generator=g) - shift) * torch.logspace(-3, 4, 48)  # [batches, B, k]
    x[:, :, 0] = -1.0  # a zero on every row
    lab = torch.randint(-1, 4, (3, 40), generator=g)
    lab[0, :5] = -1  # a first slice without a label
    lab[1, 10:] = torch.where(lab[1, 10:] == 3, 2, lab[1, 10:])  # class 3 absent from some slices
    ev = ModelEval(Relu(48, 48), AnalyzeConfig(top_k=2, quantiles=1, quantile_samples=1, class_features=3),
                   seed=0, device=torch.device("cpu"), n_classes=4, class_features=True)
    for b in range(3):
        ev.update(x[b], torch.arange(40) + 40 * b, lab[b])
    s, q = torch.zeros(4, 48, dtype=torch.float64), torch.zeros(4, 48, dtype=torch.float64)
    fire, mean, seen = torch.zeros(4, 48, dtype=torch.long), torch.zeros(4, 48, dtype=torch.float64), set()
    for b in range(3):
        for a in range(0, 40, 5):  # slices of 5 rows
            z, cl = torch.relu(x[b, a:a + 5]).double().abs(), lab[b, a:a + 5]
            for c in set(cl.tolist()) - seen - {-1}:  # a class's first slice: its shift, summed row by row
                acc = torch.zeros(48, dtype=torch.float64)
                for r in torch.nonzero(cl == c)[:, 0].tolist():
                    acc = acc + z[r]
                mean[c], _ = acc / int((cl == c).sum()), seen.add(c)
            for r in range(len(cl)):
                c = int(cl[r])
                if c >= 0:
                    t = z[r] - mean[c]
                    s[c], q[c], fire[c] = s[c] + t, q[c] + t * t, fire[c] + (z[r] != 0).long()
    assert torch.equal(ev.class_shift, mean) and torch.equal(ev.class_z, s) and torch.equal(ev.class_z2, q)
    assert torch.equal(ev.class_fire, fire) and bool(ev.class_shifted.all())
