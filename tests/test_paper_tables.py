"""benchmarks/paper_tables.py on a tiny linear set: the table's structure and VAEase's ground-truth AD.

The tiny setting is the one tuned in tests/test_synthetic_ad.py (3 two-dimensional subspaces of R^12,
3000 points, k = 10, 300 epochs of batch 256, loggamma_init -2), here run through the benchmark's own
path (in-memory batches -> actdict.train.loop.train -> per-manifold Otsu split) beside the SAE-Tk
baseline, whose per-manifold AD uses the paper's average |z|.
"""

import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from actdict.analyze import metrics as M
from actdict.train.resume import read_meta

_spec = importlib.util.spec_from_file_location(
    "paper_tables", Path(__file__).resolve().parents[1] / "benchmarks" / "paper_tables.py")
P = importlib.util.module_from_spec(_spec)
sys.modules["paper_tables"] = P  # dataclasses look their module up there
_spec.loader.exec_module(P)
R = sys.modules["paper_report"]  # its tables, imported by paper_tables from beside it
S = sys.modules["paper_sets"]  # its sets, imported by paper_tables from beside it


def test_memory_batches_cover_every_row_once_per_epoch():
    x = torch.arange(10.0)[:, None]  # [10, 1]
    ep = P.memory_batches(x, 4, seed=3)
    rows = torch.cat(ep(0))[:, 0]
    assert [len(b) for b in ep(0)] == [4, 4, 2] and sorted(rows.tolist()) == list(range(10))
    assert torch.equal(torch.cat(ep(0)), torch.cat(ep(0))) and not torch.equal(rows, torch.cat(ep(1))[:, 0])
    assert torch.equal(torch.cat(ep(0, 1)), torch.cat(ep(0))[4:])  # resumed mid-epoch


def test_group_ad_uses_mean_abs_code_for_saes():
    sae = P.make("sae_topk", 6, 4, topk=2)
    codes = torch.tensor([[1.0, 1.0, 0, 0], [1.0, 0, 1.0, 0], [0.01, 0.01, 3, 3], [0.01, 0.01, 3, 3]])
    ev = {"abs_codes": codes, "activity": codes.log()}
    # manifold 0: mean |z| = (1, .5, .5, 0): 3 active (log 0 = -inf is the low group); manifold 1: 2 large
    # (the mean of log|z| would be -inf for latents 1-3 of manifold 0: AD 1 there)
    assert P.group_ad(sae, ev, np.array([0, 0, 1, 1])) == [3, 2]


def test_tiny_linear_table_vaease_recovers_ground_truth():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    spec = replace(P.SETS["linear"], k=10, epochs=300, batch=256, max_steps=0,
                   data={"n_train": 3000, "n_test": 2000, "d": 12, "dims": (2, 2, 2)},
                   models={m: P.SETS["linear"].models[m] for m in ("sae_topk", "vaease")})
    spec = replace(spec, models=spec.models | {"sae_topk": ("sae_topk", 0.002,
                                                            {"encoder": "mlp", "topk": 2, "lam2": 1e-4})})
    try:
        res = P.run_synthetic("linear", spec, seed=0)
    finally:
        torch.set_num_threads(threads)
    assert res["steps"] == 300 * 12 and (res["n_train"], res["n_test"]) == (3000, 2000)
    vae = res["rows"]["vaease"]
    assert vae["ad"] == [2, 2, 2]
    assert vae["re_det"] < 0.05 * res["x_sq"]
    tk = res["rows"]["sae_topk"]
    assert len(tk["ad"]) == 3 and all(1 <= a <= 10 for a in tk["ad"]) and tk["ad_mean_sample"] <= 2.0
    table = R.table_synthetic("linear", res, spec).splitlines()
    assert table[2] == "| GT | 2 | 2 | 2 | 4 | 4 | 4 | | | | |"
    assert table[4].startswith("| VAEase (=GT) | 2 | 2 | 2 | 5 | 4 | 4 |")
    assert table[3].startswith("| SAE-Tk") and len(table) == 12 and table[-1].startswith("| VAEase | ")
    # keeping each sample's 2 most active latents: SAE-Tk (k = 2) changes nothing, VAEase (AD 2) < 5%
    tb, vb = tk["by_manifold"], vae["by_manifold"]
    assert tb["re_keep_gt"] == pytest.approx(tb["re_all"], rel=1e-9)
    assert all(abs(k - a) < 0.05 * a for a, k in zip(vb["re_all"], vb["re_keep_gt"], strict=True))
    assert vb["re_keep_ad"] == vb["re_keep_gt"]  # AD = GT: the same masks
    assert all(c >= a for a, c in zip(tb["re_all"], tb["re_keep_ad"], strict=True))  # masking never helps
    assert any("/ keeping the manifold's AD count" in line for line in table)
    assert all(len(p) == 10 and p == sorted(p) for p in vb["profile"])  # mean log var, most active first
    assert [M.otsu_split(torch.tensor(p)) for p in vb["profile"]] == [2, 2, 2]


def test_override_sets_size_width_and_lr_of_every_model():
    spec = P.SETS["mlp"]
    new = S.override(spec, n_train=800_000, hidden=480, lr=0.002)
    assert new.data["n_train"] == 800_000 and new.data["dims"] == spec.data["dims"]
    assert set(new.models) == set(spec.models)
    for name, (variant, lr, params) in new.models.items():
        old_variant, _, old_params = spec.models[name]
        assert (variant, lr, params["hidden"]) == (old_variant, 0.002, 480)
        assert {k: v for k, v in params.items() if k != "hidden"} == {
            k: v for k, v in old_params.items() if k != "hidden"}
    assert S.override(spec) == spec  # zeros change nothing
    vae = S.override(spec, extra={"head": "logvar", "logvar_min": -12})
    assert vae.models["vaease"][2] == spec.models["vaease"][2] | {"head": "logvar", "logvar_min": -12}
    assert P._key_value("logvar_min=-12") == ("logvar_min", -12)
    assert P._key_value("head=logvar") == ("head", "logvar")
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        P._key_value("head")


def test_official_puts_the_authors_bodies_in_every_model_of_a_synthetic_set():
    mlp = S.official(P.SETS["mlp"], "mlp")
    assert set(mlp.models) == set(P.SETS["mlp"].models) and mlp.data == P.SETS["mlp"].data
    for name, (variant, lr, params) in mlp.models.items():
        old_variant, old_lr, old = P.SETS["mlp"].models[name]
        rest = {k: v for k, v in old.items() if k not in ("encoder", "decoder", "hidden", "decoder_hidden")}
        arch = {"encoder": "resmlp_bn", "decoder": "mlp", "decoder_hidden": 200}  # FCNDecoder: 2d, d = 100
        assert (variant, lr) == (old_variant, old_lr)
        assert params == rest | arch | ({"head": "clip"} if variant.startswith("vae") else {})
        model = P.make(variant, 100, mlp.k, **params)  # the stream is 2k wide by default
        assert model.encoder[0].out_features == 2 * mlp.k
    lin = S.official(P.SETS["linear"], "linear")
    assert lin.models["vae"][2] == P.SETS["linear"].models["vae"][2] | {"head": "clip"}
    assert lin.models["sae_l1"] == P.SETS["linear"].models["sae_l1"]  # Sparse_Encoder's body (+ our ReLU)
    with pytest.raises(SystemExit, match="synthetic sets"):
        S.official(P.SETS["llm"], "llm")


def _tiny(max_steps: int, **kw) -> P.SetSpec:
    spec = replace(P.SETS["linear"], k=6, epochs=10**6, batch=64, max_steps=max_steps,
                   data={"n_train": 300, "n_test": 100, "d": 8, "dims": (2, 2)},
                   models={"vaease": P.SETS["linear"].models["vaease"]})
    return replace(spec, **kw)


def test_state_resumes_a_longer_run_exactly_where_an_uninterrupted_one_goes(tmp_path, capsys):
    x = torch.from_numpy(P.union_of_subspaces(300, d=8, dims=(2, 2), seed=0)[0])  # [300, 8]
    batches = P.memory_batches(x, 64, seed=0)
    whole, done = P.fit(_tiny(30), 8, batches, 5, seed=0)
    assert done == 30
    state = tmp_path / "linear.safetensors"
    every4 = P.RunOpts(state=state, every=4)
    _, first = P.fit(_tiny(17), 8, batches, 5, seed=0, opts=every4)  # ends mid-epoch (17 = 3*5+2)
    assert first == 17 and read_meta(state)["position"] == {"epoch": 3, "batch": 2, "step": 17}
    capsys.readouterr()
    resumed, done = P.fit(_tiny(30), 8, batches, 5, seed=0, opts=every4)
    assert done == 30 and "at step 17" in capsys.readouterr().out
    for k, v in whole["vaease"].state_dict().items():
        assert torch.equal(v, resumed["vaease"].state_dict()[k]), k
    # other settings (here the learning rate) are another run: the state is not used
    other = _tiny(30, models={"vaease": ("vaease", 0.002, P.SETS["linear"].models["vaease"][2])})
    assert P.state_hashes(other, 8, 0) != P.state_hashes(_tiny(30), 8, 0)
    assert P.state_hashes(_tiny(99), 8, 0) == P.state_hashes(_tiny(30), 8, 0)  # only the length differs
    assert P.state_hashes(_tiny(99, schedule="warmup_cosine"), 8, 0) != P.state_hashes(
        _tiny(30, schedule="warmup_cosine"), 8, 0)  # there the length sets every step's lr
    _, done = P.fit(other, 8, batches, 5, seed=0, opts=P.RunOpts(state=state))
    assert done == 30 and "resumed" not in capsys.readouterr().out


def test_merge_of_models_run_apart_equals_one_run_of_them_together(tmp_path, monkeypatch, capsys):
    spec = _tiny(30)
    monkeypatch.setitem(P.SETS, "linear", replace(spec, models=spec.models | {
        "sae_topk": ("sae_topk", 0.002, {"encoder": "mlp", "topk": 2, "lam2": 1e-4})}))
    monkeypatch.setattr(P.torch, "set_num_threads", lambda n: None)  # main's --threads: keep the suite's
    run = ["--sets", "linear"]
    together = P.main(run)["linear"]
    for m in ("vaease", "sae_topk"):
        P.main([*run, "--models", m, "--json", str(tmp_path / f"{m}.json")])
    capsys.readouterr()
    files = [str(tmp_path / "sae_topk.json"), str(tmp_path / "vaease.json")]
    merged = P.main(["--merge", *files, "--json", str(tmp_path / "both.json")])["linear"]
    assert merged["rows"] == together["rows"] and merged["steps"] == together["steps"] == 30
    table = capsys.readouterr().out.splitlines()  # rows in the set's order (vaease first), not the files'
    assert [line.split(" |")[0].split(" (")[0] for line in table[:8] if line[:5] in ("| SAE", "| VAE")
            ] == ["| VAEase", "| SAE-Tk"]
    assert json.loads((tmp_path / "both.json").read_text())["linear"]["rows"] == merged["rows"]
    with pytest.raises(SystemExit, match="rows sae_topk come from more than one run"):
        P.main(["--merge", files[0], files[0]])
    P.main([*run, "--models", "vaease", "--seed", "1", "--json", str(tmp_path / "seed1.json")])
    with pytest.raises(SystemExit, match="differ in seed"):
        P.main(["--merge", files[0], str(tmp_path / "seed1.json")])


def test_restarts_share_the_data_and_the_lowest_heldout_loss_is_chosen(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(P.SETS, "linear", _tiny(30))
    monkeypatch.setattr(P.torch, "set_num_threads", lambda n: None)
    runs = {}
    for seed in (0, 1, 2):
        path = tmp_path / f"s{seed}.json"
        runs[seed] = P.main(["--sets", "linear", "--data-seed", "5", "--seed", str(seed), "--json", str(path)]
                            )["linear"]
    assert len({r["x_sq"] for r in runs.values()}) == 1  # the same data
    losses = {s: r["rows"]["vaease"]["test_terms"]["loss"] for s, r in runs.items()}
    assert len(set(losses.values())) == 3  # three initialisations / batch orders
    for r in runs.values():  # the held-out loss is the VAE objective: -2 ELBO per point (+ d log 2 pi)
        t, d = r["rows"]["vaease"]["test_terms"], 8
        rec = t["sse"] / np.exp(t["loggamma"]) + d * (t["loggamma"] + np.log(2 * np.pi))
        assert t["loss"] == pytest.approx(rec + 2 * t["kl"], rel=1e-4)
    capsys.readouterr()
    best = P.main(["--restarts", *(str(tmp_path / f"s{s}.json") for s in (2, 0, 1))])["linear"]
    chosen = min(losses, key=losses.get)
    assert best["rows"]["vaease"]["seed"] == chosen
    assert best["rows"]["vaease"]["ad"] == runs[chosen]["rows"]["vaease"]["ad"]
    out = capsys.readouterr().out
    listed = [int(line.split(" | ")[2]) for line in out.splitlines() if line.startswith("| linear | vaease")]
    assert listed == sorted(losses, key=losses.get)  # every restart, lowest loss first
    assert f"(seed {chosen})" in out
    P.main(["--sets", "linear", "--seed", "3", "--json", str(tmp_path / "own_data.json")])
    with pytest.raises(SystemExit, match="no --data-seed"):
        P.main(["--restarts", str(tmp_path / "s0.json"), str(tmp_path / "own_data.json")])
    P.main(["--sets", "linear", "--data-seed", "6", "--seed", "3", "--json", str(tmp_path / "other.json")])
    with pytest.raises(SystemExit, match="differ in data"):
        P.main(["--restarts", str(tmp_path / "s0.json"), str(tmp_path / "other.json")])


def test_help_describes_the_script_in_a_whole_sentence(capsys):
    with pytest.raises(SystemExit):
        P.main(["--help"])
    said = " ".join(capsys.readouterr().out.split())
    assert "comparison on offline real activations, our numbers beside the paper's" in said
