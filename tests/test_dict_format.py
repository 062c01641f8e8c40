"""A dictionary's files as a format: ``plain_dict`` (safetensors and torch alone, written from
docs/architecture.md, "Using a dictionary without actdict") gives the codes that ``checkpoint.load`` and
``model(x, sample=False)`` give, for every built-in variant, normalised or not."""

import ast
import math
from pathlib import Path

import pytest
import torch

from actdict.train.checkpoint import Normalized, load, save
from actdict.train.protocol import make, registry
from tests import plain_dict

D, K = 8, 64
VARIANTS = ["lse", "sae_batchtopk", "sae_gated", "sae_jumprelu", "sae_kl", "sae_l1", "sae_l1_decnorm",
            "sae_log", "sae_topk", "sae_topk_auxk", "sosae", "vae", "vaease"]


def test_the_table_covers_every_built_in_variant():
    assert sorted(n for n, cls in registry().items() if cls.__module__.startswith("actdict.")) == VARIANTS


def test_the_plain_reader_imports_nothing_of_actdict():
    tree = ast.parse(Path(plain_dict.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported == {"json", "pathlib", "torch", "safetensors"}


def trained_like(variant: str, params: dict, seed: int):
    """A model of ``variant`` whose every weight is moved off its initialisation (zero biases, unit gains,
    a threshold of 0.001 would hide a wrong formula), and thresholds set where rows cross them."""
    torch.manual_seed(seed)
    model = make(variant, D, K, **params)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.3 * torch.randn_like(p))
            if name == "log_threshold":
                p.copy_(torch.empty_like(p).uniform_(math.log(0.05), math.log(1.0)))
        if variant == "sae_batchtopk":
            model.threshold.fill_(0.4)
    return model


CASES = [(v, {}) for v in VARIANTS] + [
    ("sae_topk", {"topk": 5}), ("sae_topk_auxk", {"topk": 5}), ("lse", {"activation": "softplus"}),
    ("vaease", {"head": "logvar", "logvar_min": -6.0}), ("vae", {"head": "logvar"})]


@pytest.mark.parametrize("normalized", [False, True])
@pytest.mark.parametrize("variant, params", CASES)
def test_codes_without_actdict_equal_actdict(tmp_path, variant, params, normalized):
    model = trained_like(variant, params, seed=len(CASES))
    if normalized:
        model = Normalized(model, torch.randn(D), 2.5)
    save(tmp_path, model, {"finished": True})
    x = 3 * torch.randn(32, D) + 1  # [32, D] raw rows
    ours, _ = load(tmp_path)
    with torch.no_grad():
        want = ours(x, sample=False).codes  # [32, K]
        got = plain_dict.codes(tmp_path, x)
    assert got.shape == want.shape == (32, K)
    assert 0 < int((want != 0).sum()) and (variant not in ("sae_topk", "sae_topk_auxk") or
                                          int((want != 0).sum(-1).max()) <= params.get("topk", 32))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
