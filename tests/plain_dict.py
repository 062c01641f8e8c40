"""A trained dictionary's codes with safetensors and torch alone, as docs/architecture.md, "Using a dictionary
without actdict", describes them. Nothing of actdict is imported here (``test_dict_format`` checks that):
this is what a user without actdict writes, and where its codes differ from actdict's, the docs are wrong."""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor
from torch.nn.functional import silu, softplus


def read(folder: Path) -> tuple[dict, dict[str, Tensor]]:
    """(cfg.json, the tensors of model.safetensors)."""
    return json.loads((folder / "cfg.json").read_text()), load_file(folder / "model.safetensors")


def linear(x: Tensor, t: dict[str, Tensor], name: str) -> Tensor:
    """A torch.nn.Linear's output: weight [out, in]."""
    return x @ t[f"{name}.weight"].T + t[f"{name}.bias"]


def keep_top(pre: Tensor, n: int) -> Tensor:
    """Each row's n largest entries of pre, through relu; the rest 0."""
    top = pre.topk(n, dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))


def vae_codes(x: Tensor, t: dict[str, Tensor], p: dict, gated: bool) -> Tensor:
    mu, s = silu(linear(x, t, "encoder.0")).chunk(2, dim=-1)
    if p["head"] == "sigmoid":
        std = torch.sigmoid(linear(s, t, "var_head")).clamp(min=p["var_min"]).sqrt()
    else:
        logvar = (linear(s, t, "var_head").clamp(p["logvar_min"], 0.0) if p["head"] == "logvar"
                  else s.clamp(max=0.0))
        std = (0.5 * logvar).exp()
    return (1 - std) * mu if gated else mu


def codes(folder: Path, x: Tensor) -> Tensor:
    """The codes [B, k] of the dictionary in ``folder`` for raw rows x [B, d] (float32)."""
    cfg, t = read(folder)
    if cfg["normalized"]:
        x = (x - t["norm_mean"]) / t["norm_scale"]
        t = {name.removeprefix("inner."): v for name, v in t.items()}
    v, p = cfg["variant"], cfg["params"]
    if v in ("sae_l1", "sae_log"):
        return torch.relu(linear(x, t, "encoder"))
    if v == "sae_topk":
        return keep_top(linear(x, t, "encoder"), p["topk"])
    if v == "sae_kl":
        return torch.sigmoid(linear(x, t, "encoder"))
    if v == "lse":
        e = linear(x, t, "linear")
        return torch.relu(e) if p["activation"] == "relu" else softplus(e)
    if v in ("sae_l1_decnorm", "sosae"):
        return torch.relu(x @ t["W_enc"] + t["b_enc"])
    if v == "sae_topk_auxk":
        return keep_top((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"], p["topk"])
    if v == "sae_batchtopk":
        a = torch.relu((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"])
        return a * (a > t["threshold"])
    if v == "sae_jumprelu":
        a = torch.relu(x @ t["W_enc"] + t["b_enc"])
        return a * (a > t["log_threshold"].exp())
    if v == "sae_gated":
        g = (x - t["b_dec"]) @ t["W_enc"]
        return (g + t["b_enc"] > 0) * torch.relu(g * t["r_mag"].exp() + t["b_mag"])
    if v in ("vae", "vaease"):
        return vae_codes(x, t, p, gated=v == "vaease")
    raise ValueError(f"variant {v!r} is not in docs/architecture.md's table")
