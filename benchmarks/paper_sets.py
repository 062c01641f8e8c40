"""The sets of ``benchmarks/paper_tables.py`` (paper App. D.2 / D.3, scaled down: docs/results.md): each
``SetSpec`` (data, shared training settings, per-model variant, lr and params), ``--quick``'s smaller ones,
``--official``'s authors' bodies, and the spec a command line (``set_spec``) or a merged result
(``merged_spec``) asks for."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class SetSpec:
    """One experiment: data, shared training settings, and per-model (lr, params)."""

    kind: str  # "synthetic" or "store"
    k: int
    epochs: int
    batch: int
    t0: int
    models: dict[str, tuple[str, float, dict]]  # row name -> (variant, lr, params)
    data: dict = field(default_factory=dict)  # synthetic: n_train, n_test; store: path, test_fraction
    max_steps: int = 0  # 0 = all epochs; else stop there (a warm-restart boundary: 10 * (2^n - 1) for T0 10)
    schedule: str = "cosine_restarts"  # the paper's; or any other ``train.schedule``
    grad_clip: float = 0.0  # ``train.grad_clip``: 0 = off (the paper)


def _synthetic(arch: dict, lr_vae: float, lr_sae: float, l1: tuple, log: tuple, topk: int, lg: float) -> dict:
    return {"sae_l1": ("sae_l1", lr_sae, arch | {"lam1": l1[0], "lam2": l1[1]}),
            "sae_log": ("sae_log", lr_sae, arch | {"lam1": log[0], "lam2": log[1]}),
            "sae_topk": ("sae_topk", lr_sae, arch | {"topk": topk, "lam2": l1[1]}),
            "vae": ("vae", lr_vae, arch | {"loggamma_init": lg}),
            "vaease": ("vaease", lr_vae, arch | {"loggamma_init": lg})}


def _store(lr: float, l1: list, log: list, topk: list, lg: float) -> dict:
    """A sweep: every SAE penalty / k of the lists (for an RE matched to VAEase's), VAE, VAEase."""
    out = {f"sae_l1 lam1={a:g},lam2={b:g}": ("sae_l1", lr, {"lam1": a, "lam2": b}) for a, b in l1}
    out |= {f"sae_log lam1={a:g},lam2={b:g}": ("sae_log", lr, {"lam1": a, "lam2": b}) for a, b in log}
    out |= {f"sae_topk k={t}": ("sae_topk", lr, {"topk": t}) for t in topk}
    return out | {"vae": ("vae", lr, {"loggamma_init": lg}), "vaease": ("vaease", lr, {"loggamma_init": lg})}


SETS = {
    "linear": SetSpec("synthetic", k=20, epochs=150, batch=256, t0=10, max_steps=20_470,
                      data={"n_train": 50_000, "n_test": 6000, "d": 40, "dims": (4, 4, 4)},
                      # loggamma_init -1: gamma starts at ~1/10 of the data's per-dimension variance (3.75);
                      # -2 left extra latents on 7 of 8 seeds, >= 0.5 collapses (docs/results.md)
                      models=_synthetic({"encoder": "mlp"}, 0.01, 0.002, (1e-3, 1e-4), (1e-3, 1e-4), 4,
                                        -1.0)),
    "mlp": SetSpec("synthetic", k=60, epochs=300, batch=1024, t0=10, max_steps=10_230,
                   data={"n_train": 40_000, "n_test": 8000, "d": 100, "dims": (5, 5, 10, 10)},
                   models=_synthetic({"encoder": "resmlp", "decoder": "mlp", "hidden": 120}, 0.005, 0.005,
                                     (5e-4, 1e-5), (5e-6, 1e-5), 10, -2.0)),
    "llm": SetSpec("store", k=384, epochs=8, batch=2048, t0=5, max_steps=635,  # 5 (2^7 - 1): a cycle's end
                   data={"path": "runs/demo/store", "test_fraction": 0.1},
                   models=_store(0.005, [(0.32, 0.2), (0.12, 0.2)], [(0.01, 0.2), (0.003, 0.2)], [30, 20],
                                 -3.0)),
    "emb": SetSpec("store", k=384, epochs=92, batch=256, t0=10, max_steps=5_110,  # 10 (2^9 - 1): cycle end
                   data={"path": "runs/demo_embeddings/store", "test_fraction": 0.125, "normalize": True},
                   models=_store(0.003, [(0.32, 0.2), (1.0, 0.2), (1.2, 0.2), (1.5, 0.2), (3.0, 0.2)],
                                 [(0.01, 0.2), (0.1, 0.2), (0.12, 0.2), (0.15, 0.2), (0.3, 0.2)], [30, 20],
                                 -1.5)),
}
QUICK = {"linear": {"epochs": 40, "data": {"n_train": 20_000, "n_test": 3000}},
         "mlp": {"epochs": 40, "data": {"n_train": 8000, "n_test": 2000}},
         "llm": {"epochs": 2}, "emb": {"epochs": 3}}


def quick(spec: SetSpec, name: str) -> SetSpec:
    q = QUICK[name]
    return replace(spec, epochs=q["epochs"], max_steps=0, data=spec.data | q.get("data", {}))


def override(spec: SetSpec, n_train: int = 0, hidden: int = 0, lr: float = 0, extra: dict | None = None
             ) -> SetSpec:
    """``spec`` with the given (non-zero) training-set size, hidden width of every model, learning rate, and
    the variant parameters ``extra`` for every model."""
    models = {name: (v, lr or old_lr, params | ({"hidden": hidden} if hidden else {}) | (extra or {}))
              for name, (v, old_lr, params) in spec.models.items()}
    data = spec.data | ({"n_train": n_train} if n_train else {})
    return replace(spec, models=models, data=data)


# --official: the authors' bodies (models.py) for the synthetic sets: Linear_Encoder / MLP_Encoder with the
# clipped log variance for the VAEs, MLP_Encoder_SAE, FCNDecoder (width 2d); the widths are their defaults
OFFICIAL = {"linear": {"encoder": "mlp"}, "mlp": {"encoder": "resmlp_bn", "decoder": "mlp"}}


def official(spec: SetSpec, name: str) -> SetSpec:
    """``spec`` (a synthetic set) with the authors' bodies in every model (``OFFICIAL``)."""
    if name not in OFFICIAL:
        raise SystemExit(f"--official applies to the synthetic sets {sorted(OFFICIAL)}, not {name!r}")
    arch = OFFICIAL[name] | ({"decoder_hidden": 2 * spec.data["d"]} if "decoder" in OFFICIAL[name] else {})
    models = {row: (v, lr, {key: p for key, p in params.items() if key not in ("hidden", "decoder_hidden")}
                    | arch | ({"head": "clip"} if v in ("vae", "vaease") else {}))
              for row, (v, lr, params) in spec.models.items()}
    return replace(spec, models=models)


def merged_spec(name: str, res: dict) -> SetSpec:
    """The spec a merged result's table is printed with: its data and rows, in the set's row order."""
    order = list(SETS[name].models)
    rows = sorted(res["settings"]["models"], key=lambda m: order.index(m) if m in order else len(order))
    return replace(SETS[name], data=res["settings"]["data"],
                   models={m: tuple(res["settings"]["models"][m]) for m in rows})


def set_spec(name: str, a: argparse.Namespace, params: dict) -> SetSpec:
    """``SETS[name]`` with the command line's changes (rows, length, sizes, schedule, clipping, data)."""
    spec = quick(SETS[name], name) if a.quick else SETS[name]
    if a.models:
        spec = replace(spec, models={k: v for k, v in spec.models.items() if k in a.models})
    if a.max_steps:
        spec = replace(spec, epochs=10**6, max_steps=a.max_steps)
    if a.official:
        spec = official(spec, name)
    spec = override(spec, a.n_train, a.hidden, a.lr, params)
    if a.schedule:
        spec = replace(spec, schedule=a.schedule)
    spec = replace(spec, grad_clip=a.grad_clip)
    if a.data_init and name == "mlp":
        spec = replace(spec, data=spec.data | {"init": a.data_init})
    if a.data_seed is not None and spec.kind == "synthetic":
        spec = replace(spec, data=spec.data | {"seed": a.data_seed})
    return spec
