"""The paper's synthetic data with known manifold structure (Sec. 5.1, App. D.2): pure seeded functions.

Both return ``(x [n, d] float32, label [n] int64)`` where ``label`` is the manifold of each row; the
ground-truth active dimension count of manifold i is ``dims[i]``. Feed them to the pipeline with
``actdict.harvest.store.write_vectors``.

Choices the paper leaves open (ours): latent coordinates are standard normal; rows are assigned to manifolds
uniformly at random (union of subspaces) or in equal blocks (MLP manifolds, as the paper's "200k per
manifold"), then shuffled; the coordinate subspaces are disjoint when ``sum(dims) <= d`` (else drawn
independently, so they may overlap); every weight is standard normal (``randn``), biases too. The MLP
manifolds can instead draw their weights as ``torch.nn.Linear`` initialises them (``init="torch"``): the paper
says only "passing random noise through different MLP networks", which a randomly initialised
``nn.Sequential(Linear, LeakyReLU(0.2), Linear)`` would also be.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def union_of_subspaces(n: int, d: int = 40, dims: Sequence[int] = (4, 4, 4),
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Union of random coordinate subspaces of R^d mapped by one A = randn(d, d).

    Paper: dims (4, 4, 4), d = 40, 500k rows.

    Row of manifold i: z has N(0, 1) entries on manifold i's coordinate set S_i and zeros elsewhere; x = A z.
    """
    if any(r < 1 or r > d for r in dims):
        raise ValueError(f"every subspace dimension must be in 1..d={d}, got {list(dims)}")
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((d, d))  # [d, d]
    if sum(dims) <= d:
        perm = rng.permutation(d)
        edges = np.cumsum([0, *dims])
        coords = [perm[edges[i]:edges[i + 1]] for i in range(len(dims))]
    else:
        coords = [rng.choice(d, r, replace=False) for r in dims]
    label = rng.integers(0, len(dims), n)  # [n]
    z = np.zeros((n, d))  # [n, d]
    for i, c in enumerate(coords):
        rows = np.flatnonzero(label == i)
        z[np.ix_(rows, c)] = rng.standard_normal((len(rows), len(c)))
    return (z @ A.T).astype(np.float32), label.astype(np.int64)


def mlp_manifolds(n_per: int, d: int = 100, dims: Sequence[int] = (5, 5, 10, 10),
                  seed: int = 0, init: str = "randn") -> tuple[np.ndarray, np.ndarray]:
    """Nonlinear manifolds: per manifold i (dim r), x = leaky_relu(z A + a, 0.2) B + b with z ~ N(0, I_r),
    A [r, r], a [r], B [r, d], b [d] (paper: dims {5, 5, 10, 10} in R^100, 200k rows each). ``init``:
    "randn" (every entry standard normal) or "torch" (``nn.Linear``'s default: every weight and bias uniform
    in +-1/sqrt(fan_in), fan_in = r for both layers)."""
    if init not in ("randn", "torch"):
        raise ValueError(f"init must be 'randn' or 'torch', got {init!r}")
    rng = np.random.default_rng(seed)
    xs, labels = [], []
    for i, r in enumerate(dims):
        if init == "randn":
            A, a = rng.standard_normal((r, r)), rng.standard_normal(r)
            B, b = rng.standard_normal((r, d)), rng.standard_normal(d)
        else:
            A, a, B, b = (rng.uniform(-r ** -0.5, r ** -0.5, shape) for shape in ((r, r), r, (r, d), d))
        h = rng.standard_normal((n_per, r)) @ A + a  # [n_per, r]
        xs.append(np.where(h > 0, h, 0.2 * h) @ B + b)  # [n_per, d]
        labels.append(np.full(n_per, i, np.int64))
    perm = rng.permutation(n_per * len(dims))
    return np.concatenate(xs)[perm].astype(np.float32), np.concatenate(labels)[perm]
