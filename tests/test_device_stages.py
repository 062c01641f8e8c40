"""The three stages on the accelerator of the ``device`` fixture (conftest.py) against the same stages on
the CPU.

* harvest (random-init Pythia-70m shape): the same rows, float32 activations equal to rounding; the bf16
  forward within bf16's precision;
* train: deterministic SAEs end on the CPU's weights; VAEase (its noise comes from the device's generator)
  on a close loss; bf16 autocast training ends finite and near float32's reconstruction;
* analyze: one run's summary on the device equals the CPU's, and a checkpoint trained on the device loads on
  the CPU.

On a CPU-only machine (CI) the device is the CPU and every comparison is exact up to rounding; where a GPU is,
these are the checks of its code paths (``benchmarks/gpu_session.sh``).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_harvest import harvest

from actdict.analyze.config import AnalyzeConfig
from actdict.analyze.run import main as analyze
from actdict.config import Common
from actdict.harvest.random_init import make_random_pythia
from actdict.harvest.store import open_store, write_vectors
from actdict.train.config import DictConfig, TrainConfig
from actdict.train.run import main as train

HOOK = "blocks.2.hook_resid_post"


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _harvest(run_dir: Path, model: Path, device: str, dtype: str):
    """test_harvest's small harvest of the fixture texts, on ``device`` with a ``dtype`` forward."""
    common, _ = harvest(run_dir, model=str(model), hooks=[HOOK], dtype=dtype, store_dtype="float32",
                        device=device)
    store = open_store(common.store_path, HOOK)
    return store, store.read_rows(0, len(store))


def test_device_harvest_matches_the_cpu(tmp_path, device):
    model = make_random_pythia(tmp_path / "pythia", seed=0)
    store, ref = _harvest(tmp_path / "cpu", model, "cpu", "float32")
    got_store, got = _harvest(tmp_path / "dev", model, device, "float32")
    assert len(store) == len(got_store) > 80 and got_store.d == 512
    assert f"on {torch.device(device).type}" in got_store.manifest["numerics"]
    for f in ("token_ids", "doc", "pos"):
        assert np.array_equal(getattr(got, f), getattr(ref, f)), f
    np.testing.assert_allclose(got.acts, ref.acts, rtol=1e-3, atol=1e-4)
    _, bf16 = _harvest(tmp_path / "bf16", model, device, "bfloat16")
    assert np.array_equal(bf16.token_ids, ref.token_ids)
    assert 1e-4 < _rel(bf16.acts, ref.acts) < 0.05  # really bf16 (8-bit mantissa), and still the same rows


def _train(tmp_path: Path, name: str, store: str, device: str, autocast: bool = False) -> Common:
    common = Common(run_dir=str(tmp_path / name), seed=2, store=store)
    dicts = [DictConfig("l1", "sae_l1", k=24, lr=3e-3),
             DictConfig("topk", "sae_topk_auxk", k=24, lr=3e-3, params={"topk": 3, "k_aux": 4}),
             DictConfig("vaease", "vaease", k=24, lr=3e-3, params={"loggamma_init": -1.0})]
    cfg = TrainConfig(dicts=dicts, epochs=3, batch_size=128, test_fraction=0.25, device=device,
                      autocast=autocast, normalize="mean_scale")
    train(common, cfg)
    return common


def _summary(common: Common, device: str) -> dict:
    analyze(common, AnalyzeConfig(device=device, mask_curve_points=8, mask_curve_rows=256))
    return json.loads((Path(common.run_dir) / "summary.json").read_text())["models"]


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    g = np.random.default_rng(0)
    x = g.standard_normal((4096, 6)) @ g.standard_normal((6, 16)) + 0.05 * g.standard_normal((4096, 16))
    return write_vectors(str(tmp_path_factory.mktemp("vec") / "store"), x.astype(np.float32), shard_rows=1024,
                         chunk_rows=256).path


def test_device_training_and_analysis_match_the_cpu(tmp_path, vectors, device):
    cpu = _train(tmp_path, "cpu", vectors, "cpu")
    dev = _train(tmp_path, "dev", vectors, device)
    for name in ("l1", "topk"):  # no sampling: the same batches give the same weights up to rounding
        a = load_file(Path(cpu.run_dir) / "dicts" / name / "model.safetensors")
        b = load_file(Path(dev.run_dir) / "dicts" / name / "model.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            # 1e-2: room for a near-tie of the top-k flipping (a lost gradient projection or a wrong
            # kernel moves these weights far more)
            assert _rel(b[k].numpy(), a[k].numpy()) < 1e-2 or torch.equal(a[k], b[k]), (name, k)
    s_cpu = _summary(cpu, "cpu")  # the CPU-trained run analysed on the CPU
    s_dev = _summary(dev, "cpu")  # the device-trained checkpoints load and evaluate on the CPU
    for name in ("l1", "topk"):
        assert s_dev[name]["re_det"] == pytest.approx(s_cpu[name]["re_det"], rel=1e-2)
        assert s_dev[name]["l0"] == pytest.approx(s_cpu[name]["l0"], rel=1e-2, abs=1e-2)
    assert s_dev["vaease"]["re_det"] == pytest.approx(s_cpu["vaease"]["re_det"], rel=0.25)
    on_dev = _summary(dev, device)  # the same run analysed on the device
    for name, m in on_dev.items():
        for key in ("re_det", "ev", "l0", "ad", "cos"):  # abs 1e-2: a few of 1,024 rows' Otsu splits may flip
            assert m[key] == pytest.approx(s_dev[name][key], rel=1e-3, abs=1e-2), (name, key)
        assert m["dead"] == s_dev[name]["dead"], name


def test_device_bf16_autocast_training(tmp_path, vectors, device):
    f32 = _summary(_train(tmp_path, "f32", vectors, device), device)
    bf16 = _summary(_train(tmp_path, "bf16", vectors, device, autocast=True), device)
    for name, m in bf16.items():
        assert np.isfinite([m["re_det"], m["ev"], m["ad"]]).all(), name
        assert m["re_det"] == pytest.approx(f32[name]["re_det"], rel=0.2), name
        assert m["ev"] == pytest.approx(f32[name]["ev"], abs=0.05) and m["ev"] > 0.2, name
