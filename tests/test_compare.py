"""Shared decoder directions between dictionaries (``actdict.analyze.compare``): directions are decoder
columns (exact for linear decoders, tiny columns included), nearest live matches, MMCS per ordered pair, and
the analysis puts them in summary.json and the report."""

import json

import numpy as np
import pytest
import torch

from actdict.analyze import inputs, run
from actdict.analyze.compare import directions, live, nearest, similarity
from actdict.analyze.config import AnalyzeConfig
from actdict.config import Common
from actdict.harvest.store import StoreWriter
from actdict.train.checkpoint import Normalized, save
from actdict.train.protocol import make

CPU = torch.device("cpu")


@pytest.mark.parametrize("variant", ["sae_l1", "sae_topk", "vaease", "lse"])
def test_directions_are_the_unit_decoder_columns(variant):
    model = make(variant, 6, 10, seed=1, **({"topk": 3} if variant == "sae_topk" else {})).eval()
    w = model.linear.weight.T if variant == "lse" else model.decoder.weight  # [d, k]
    with torch.no_grad():
        w[:, 3] = 1e-12 * w[:, 3]  # as a decoder penalty leaves it: decode(e_3) - decode(0) loses it
        w[:, 7] = 0.0
    w = w.detach()
    unit, norm = directions(model, 10, 6, CPU)
    want = w.T / w.T.norm(dim=1, keepdim=True)  # [k, d]
    keep = torch.arange(10) != 7
    torch.testing.assert_close(unit[keep], want[keep], rtol=1e-5, atol=1e-6)
    assert unit[7].isnan().all() and norm[7] == 0 and norm[3] == pytest.approx(float(w[:, 3].norm()))
    scaled = Normalized(model, torch.randn(6), torch.tensor(3.0))  # raw space: the same directions, x 3
    unit2, norm2 = directions(scaled, 10, 6, CPU)
    torch.testing.assert_close(unit2[keep], unit[keep])
    torch.testing.assert_close(norm2, 3 * norm)


def test_an_mlp_decoders_direction_is_its_derivative_at_the_zero_code():
    model = make("vaease", 5, 4, seed=0, encoder="resmlp_bn", decoder="mlp", decoder_hidden=7, head="clip")
    model.eval()
    unit, _ = directions(model, 4, 5, CPU)
    with torch.no_grad():
        eps = 1e-3 * torch.eye(4, dtype=torch.float64)
        dec = model.double().decode
        fd = (dec(eps) - dec(-eps)) / 2e-3  # [k, d] central differences
    torch.testing.assert_close(unit.double(), fd / fd.norm(dim=1, keepdim=True), rtol=1e-4, atol=1e-5)


def test_nearest_matches_only_live_features_and_skips_rows_without_a_direction():
    g = torch.Generator().manual_seed(0)
    b = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1)  # [kb, d]
    perm = torch.tensor([4, 0, 5, 1, 3])
    a = torch.nn.functional.normalize(b[perm] + 0.01 * torch.randn(5, 8, generator=g), dim=1)
    a[2] = torch.nan
    ok = torch.ones(6, dtype=torch.bool)
    best, arg = nearest(a, b, ok, chunk=2)  # chunks of 2 rows of a
    assert arg.tolist() == [4, 0, -1, 1, 3] and best[2] == float("-inf") and (best[[0, 1, 3, 4]] > 0.99).all()
    ok[4] = False  # a's row 0 now goes to its next best
    _, arg2 = nearest(a, b, ok)
    assert arg2[0] != 4 and arg2[0] == (a[0] @ b[ok].T).argmax().item() + (arg2[0] > 4)
    assert nearest(a, b, torch.zeros(6, dtype=torch.bool))[1].tolist() == [-1] * 5


def test_similarity_of_ordered_pairs():
    g = torch.Generator().manual_seed(1)
    u = torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=1)
    fires, norm = torch.tensor([3, 0, 2, 1, 1]), torch.tensor([1.0, 1.0, 1e-9, 2.0, 1.0])
    alive = live(fires, norm)
    assert alive.tolist() == [True, False, False, True, True]  # never active; a null column
    other = torch.nn.functional.normalize(torch.randn(3, 4, generator=g), dim=1)
    every = {n: torch.ones(k, dtype=torch.bool) for n, k in (("copy", 5), ("o", 3), ("wide", 2))}
    sim, pairs = similarity({"a": u, "copy": u.clone(), "o": other, "wide": torch.randn(2, 9)},
                            {"a": alive, **every})
    assert sim["a"]["copy"] == {"mmcs": pytest.approx(1.0), "matched": 1.0, "live": 3}
    best = (u[alive] @ other.T).max(1).values
    assert sim["a"]["o"]["mmcs"] == pytest.approx(float(best.mean())) and sim["a"]["o"]["live"] == 3
    assert sim["a"]["o"]["matched"] == pytest.approx(float((best >= 0.9).float().mean()))
    assert sim["copy"]["a"]["live"] == 5 and "wide" not in sim["a"] and "wide" not in sim  # another d
    assert pairs["copy", "a"][1][1].item() in (0, 3, 4)  # the dead feature 1 of a is nobody's match


def test_similarity_of_a_sweep_shows_its_progress_and_cost(capsys, monkeypatch):
    """Comparing a sweep's n(n - 1) pairs ran silent after the features bar: 5.7 s a pair of k = 16,384 at
    d = 512 on one core of these machines, so a sweep of 16 such dictionaries (240 pairs) printed nothing for
    ~20 minutes. With ``progress`` it now names the pairs and their multiply-adds when they are over
    ``NOTE_MACS``, with the switch that skips them, and draws a bar over the pairs (not for 2 pairs)."""
    from actdict.analyze import compare

    dirs = {f"l1_seed-{i}": torch.nn.functional.normalize(torch.randn(6, 4), dim=1) for i in range(4)}
    alive = {a: torch.ones(6, dtype=torch.bool) for a in dirs}
    sim, _ = similarity(dirs, alive, progress=True)
    out = capsys.readouterr()
    assert len(sim) == 4 and out.out == "" and "shared directions: 100%" in out.err and "12/12" in out.err
    monkeypatch.setattr(compare, "NOTE_MACS", 12 * 6 * 6 * 4 - 1)  # 12 pairs of 6 x 6 x 4
    similarity(dirs, alive, progress=True)
    assert capsys.readouterr().out == ("analyze: shared directions: 12 pairs of dictionaries, 1.7e+03 "
                                       "multiply-adds (analyze.shared_directions=false skips them)\n")
    similarity(dict(list(dirs.items())[:2]), alive, progress=True)
    assert capsys.readouterr().err == ""  # 2 pairs: no bar


def _run_folder(tmp_path) -> int:
    """A run folder with a store of 96 random rows (d = 5, six chunks of 16) and a split holding out chunks
    4 and 5; returns d."""
    g = np.random.default_rng(0)
    n, d = 96, 5
    with StoreWriter(str(tmp_path / "store"), {"hook": "h"}, d, "float32", 32, 16) as w:
        rows = np.arange(n)
        w.append(g.standard_normal((n, d)).astype(np.float32), rows, rows // 8, rows % 8)
    (tmp_path / "split.json").write_text(json.dumps({"train_chunks": [0, 1, 2, 3], "test_chunks": [4, 5]}))
    return d


def test_analysis_reports_shared_directions(tmp_path, monkeypatch):
    d = _run_folder(tmp_path)
    sae = make("sae_l1", d, 8, seed=0)
    with torch.no_grad():
        sae.decoder.weight[:, 2] = 0.0  # a null decoder column
    save(tmp_path / "dicts" / "sae", sae, {})
    save(tmp_path / "dicts" / "same", sae, {})  # the same directions: MMCS 1
    monkeypatch.setattr(run, "resolve_decoder", lambda m: lambda ids: [f"t{i}" for i in ids])
    run.main(Common(run_dir=str(tmp_path)), AnalyzeConfig(device="cpu", n_features=3, top_k=2, context=1))
    s = json.loads((tmp_path / "summary.json").read_text())["models"]
    assert s["sae"]["null_decoder"] == 1 and s["same"]["similar"]["sae"]["mmcs"] == pytest.approx(1.0)
    assert s["sae"]["similar"]["same"]["matched"] == 1.0 and s["sae"]["similar"]["same"]["live"] <= 7
    for f in s["sae"]["features"]:  # itself in the copy; the null column (feature 2) has no direction
        itself = {"same": {"feature": f["index"], "cos": pytest.approx(1.0)}}
        assert f["nearest"] == ({} if f["index"] == 2 else itself)
    html = (tmp_path / "report.html").read_text()
    assert "<h3>Shared directions</h3>" in html and "nearest in same: feature" in html
    assert html.count(" (100%)</td>") == 2  # sae in same, same in sae: MMCS 1, every live feature matched
    run.main(Common(run_dir=str(tmp_path)), AnalyzeConfig(device="cpu", n_features=3, top_k=2, context=1,
                                                           shared_directions=False))
    s = json.loads((tmp_path / "summary.json").read_text())["models"]
    assert s["sae"]["similar"] == {} and all(f["nearest"] == {} for f in s["sae"]["features"])
    assert s["sae"]["null_decoder"] == 1 and "Shared directions" not in (tmp_path / "report.html").read_text()


def test_a_sweeps_features_keep_their_nearest_in_the_eight_closest_dictionaries(tmp_path, monkeypatch):
    """Each feature's ``nearest`` named its nearest feature in every other dictionary: n(n - 1) k entries in a
    run's features files (and the report's parts), 0.4 MB of each 1.9 MB file for a sweep of 20 at k = 384.
    Beyond 8 others it now keeps the 8 of highest cosine; the pairs' MMCS still cover every other one."""
    d = _run_folder(tmp_path)
    for i in range(10):
        save(tmp_path / "dicts" / f"l1_seed-{i}", make("sae_l1", d, 8, seed=i), {})
    monkeypatch.setattr(run, "resolve_decoder", lambda m: lambda ids: [f"t{i}" for i in ids])
    run.main(Common(run_dir=str(tmp_path)), AnalyzeConfig(device="cpu", n_features=3, top_k=2, context=1))
    s = json.loads((tmp_path / "summary.json").read_text())["models"]
    assert all(len(m["similar"]) == 9 for m in s.values())
    feats = {a: json.loads((tmp_path / "features" / f"{a}.json").read_text())["features"] for a in s}
    units = {a: directions(make("sae_l1", d, 8, seed=int(a[-1])), 8, d, CPU)[0] for a in s}
    _, pairs = similarity(units, {a: torch.tensor([f["fires"] > 0 for f in fs]) for a, fs in feats.items()})
    for f, rec in enumerate(feats["l1_seed-0"]):  # the 8 of highest cosine among the 9, by cosine
        every = sorted(((float(pairs["l1_seed-0", b][0][f]), b) for b in s if b != "l1_seed-0"), reverse=True)
        assert list(rec["nearest"]) == [b for _, b in every[:8]]
        cos = [v["cos"] for v in rec["nearest"].values()]
        assert cos == pytest.approx([c for c, _ in every[:8]], abs=1e-5)


def test_a_sweeps_dictionaries_are_analysed_in_the_order_of_their_values(tmp_path):
    """Analysis listed a run's dictionaries as sorted strings, so a sweep's came out of the order of what
    they vary: l1big_k-1536 before l1big_k-768, lam1-10 before lam1-2.0, lr-0.001 before lr-1e-05, in the
    printed table, summary.json and the report. Numbers in the names now sort by value."""
    sae = make("sae_l1", 4, 6, seed=0)
    names = ["l1_lam1-2.0", "l1_lam1-10", "l1big_k-768", "l1big_k-1536", "lr-1e-05", "lr-0.001", "vaease"]
    for name in reversed(names):
        save(tmp_path / "dicts" / name, sae, {})
    assert list(inputs.load_models(tmp_path, [], 4)) == names
    assert inputs.dict_folders(tmp_path / "dicts")[0] == names


def test_a_dictionary_without_decode_has_no_directions():
    from actdict.train.protocol import Dictionary

    class NoDecode(Dictionary):
        variant = "test_no_decode"

    assert directions(NoDecode(4, 3), 3, 4, CPU) is None
