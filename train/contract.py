"""The protocol's contract, checkable on any registered variant (a plugin's included) without actdict's
source tree: ``actdict variants NAME --check``.

Each check builds the variant with k latents (16 unless given) and its defaults or the ``params`` given (a
param tied to k, such as a TopK's ``topk``, must fit: ``--set topk=4``), at d = 7 on seeded random rows,
on the CPU, and returns what it found wrong ([] when nothing):

* ``shapes``: forward gives a ``Forward`` of x_hat [B, d], codes and activity [B, k], activity without NaN or
  +inf; the deterministic path (``sample=False``, eval mode) is repeatable; ``decode(codes)`` is its x_hat;
* ``loss``: ``loss_terms`` has a scalar, finite ``"loss"`` and an ``"sse"`` equal to the batch mean of the
  rows' summed squared error (what the loop's warnings read); every term is finite;
* ``gradients``: the loss's gradient is finite and reaches every parameter;
* ``round_trip``: two builds with one seed are equal; a checkpoint saved after one optimizer step loads as
  the same class, params and tensors, and computes the same forward;
* ``training``: 150 Adam steps on three 3-dim subspaces of R^20 lower the loss by 5 % or more.

``tests/test_variant_contract.py`` runs the maintainers' fuller version (float64 gradcheck, bf16 autocast,
an accelerator) on every registered variant.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from actdict.rng import kept_rng
from actdict.train import checkpoint
from actdict.train.protocol import Dictionary, Forward, make

D, B = 7, 6


def _rows(seed: int, n: int = B, d: int = D) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * 2  # [n, d]


def shapes(build: Callable[..., Dictionary]) -> list[str]:
    m, x = build(), _rows(1)
    out = m(x)
    if not isinstance(out, Forward):
        return [f"forward returned a {type(out).__name__}, not a Forward"]
    want = {"x_hat": (B, D), "codes": (B, m.k), "activity": (B, m.k)}
    bad = [f"{f} has shape {tuple(getattr(out, f).shape)}, not {s}" for f, s in want.items()
           if tuple(getattr(out, f).shape) != s]
    if bad:
        return bad
    if torch.isnan(out.activity).any() or torch.isposinf(out.activity).any():
        bad.append("activity holds NaN or +inf (exact zeros may give -inf)")
    m.eval()
    with torch.no_grad():
        a, b = m(x, sample=False), m(x, sample=False)
        bad += [f"forward(x, sample=False) in eval mode gives another {f} the second time"
                for f in want if not torch.equal(getattr(a, f), getattr(b, f))]
        if not torch.allclose(m.decode(a.codes), a.x_hat, rtol=1e-5, atol=1e-5):
            bad.append("decode(codes) is not the deterministic x_hat (analysis decodes edited codes)")
    return bad


def loss(build: Callable[..., Dictionary]) -> list[str]:
    m, x = build(), _rows(2)
    out = m(x)
    terms = m.loss_terms(x, out)
    if "loss" not in terms:
        return [f"loss_terms has no 'loss' (it has {sorted(terms)})"]
    bad = [] if terms["loss"].ndim == 0 else [f"'loss' has shape {tuple(terms['loss'].shape)}, not a scalar"]
    bad += [f"term {n!r} is not finite" for n, v in terms.items() if not torch.isfinite(v).all()]
    want = float(((x - out.x_hat.detach()) ** 2).sum(1).mean())
    if "sse" not in terms:
        bad.append("loss_terms has no 'sse' (the batch mean of each row's summed squared error)")
    elif not np.isclose(float(terms["sse"].detach()), want, rtol=1e-5):
        bad.append(f"'sse' is {float(terms['sse'].detach()):.6g}, but the batch mean of each row's summed "
                   f"squared error is {want:.6g}")
    return bad


def gradients(build: Callable[..., Dictionary]) -> list[str]:
    m, x = build(), _rows(2)
    m.loss_terms(x, m(x))["loss"].backward()
    bad = []
    for name, p in m.named_parameters():
        if p.grad is None or not p.grad.abs().sum():
            bad.append(f"no gradient reaches {name}")
        elif not torch.isfinite(p.grad).all():
            bad.append(f"a non-finite gradient in {name}")
    return bad


def round_trip(build: Callable[..., Dictionary]) -> list[str]:
    a, b = build(), build()
    if list(a.state_dict()) != list(b.state_dict()) or not all(
            torch.equal(s, t) for s, t in zip(a.state_dict().values(), b.state_dict().values(), strict=True)):
        return ["two builds with one seed differ (the initialisation must use torch's seeded generator)"]
    x = _rows(3)
    opt = torch.optim.Adam(a.parameters(), lr=1e-2)
    a.loss_terms(x, a(x))["loss"].backward()
    opt.step()
    a.after_step()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint.save(tmp, a, {})
        back, _ = checkpoint.load(tmp)
    bad = [] if type(back) is type(a) and back.params == a.params else ["it loads as another class or params"]
    saved, loaded = a.state_dict(), back.state_dict()
    bad += [f"{n} differs after save and load" for n in saved if not torch.equal(saved[n], loaded[n])]
    a.eval()
    with torch.no_grad():
        one, two = a(x, sample=False), back(x, sample=False)
    return bad + [f"the loaded model's {f} differs" for f in ("x_hat", "codes", "activity")
                  if not torch.equal(getattr(one, f), getattr(two, f))]


def training(build: Callable[..., Dictionary]) -> list[str]:
    from actdict.harvest.synthetic import union_of_subspaces

    x, _ = union_of_subspaces(4096, d=20, dims=(3, 3, 3), seed=0)  # [n, 20]
    data = torch.from_numpy(x / x.std()).float()
    torch.manual_seed(0)
    m = build(d=20)
    m.train()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    gen, losses = torch.Generator().manual_seed(0), []
    for _ in range(150):
        batch = data[torch.randint(0, len(data), (128,), generator=gen)]  # [128, 20]
        value = m.loss_terms(batch, m(batch))["loss"]
        opt.zero_grad()
        value.backward()
        opt.step()
        m.after_step()
        losses.append(float(value.detach()))
    first, last = np.mean(losses[:15]), np.mean(losses[-15:])
    if not np.isfinite(losses).all():
        return ["the loss became NaN or infinite in 150 steps"]
    return [] if last < first - 0.05 * abs(first) else [f"150 steps moved the loss {first:.4g} -> {last:.4g}"]


CHECKS = {"shapes": shapes, "loss": loss, "gradients": gradients, "round_trip": round_trip,
          "training": training}


@kept_rng()
def check(variant: str, params: dict[str, Any] | None = None, k: int = 16) -> dict[str, list[str]]:
    """Every check of ``variant`` (built with ``params`` and ``k`` latents): name -> what is wrong ([] when
    nothing). A check that raises reports its exception, and the later ones still run. The checks seed
    torch's default generator (``training``) and draw from it (a VAE's sampled forward): the caller's is
    given back after (``actdict variants --check`` called from a notebook, a plugin's tests)."""
    def build(d: int = D) -> Dictionary:
        return make(variant, d, k, seed=3, **(params or {}))

    found = {}
    for name, run in CHECKS.items():
        try:
            found[name] = run(build)
        except Exception as e:  # noqa: BLE001 - a check that breaks is a finding of that check
            found[name] = [f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]]
    return found
