"""The paper's synthetic data with known manifold structure (Sec. 5.1, App. D.2): pure seeded functions.

Both return ``(x [n, d] float32, label [n] int64)`` where ``label`` is the manifold of each row; the
ground-truth active dimension count of manifold i is ``dims[i]``. Feed them to the pipeline with
``actdict.harvest.store.write_vectors``, or write them as files for a config (``harvest.mode: vectors``,
``analyze.labels``; ``configs/table2_linear.yaml``)::

    python -m actdict.harvest.synthetic linear runs/table2_linear/data   # x.npy [n, d], labels.npy [n]

Choices the paper leaves open (ours): latent coordinates are standard normal; rows are assigned to manifolds
uniformly at random (union of subspaces) or in equal blocks (MLP manifolds, as the paper's "200k per
manifold"), then shuffled; the coordinate subspaces are disjoint when ``sum(dims) <= d`` (else drawn
independently, so they may overlap); every weight is standard normal (``randn``), biases too. The MLP
manifolds can instead draw their weights as ``torch.nn.Linear`` initialises them (``init="torch"``): the paper
says only "passing random noise through different MLP networks", which a randomly initialised
``nn.Sequential(Linear, LeakyReLU(0.2), Linear)`` would also be.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from actdict.errors import printable
from actdict.files import WriteError


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


SETS = {"linear": 56_000, "mlp": 48_000}  # default rows: paper_tables' train + test sizes of each set


def write_set(name: str, out: str | Path, n: int = 0, seed: int = 0, init: str = "randn"
              ) -> tuple[Path, Path]:
    """Write set ``name`` (the paper's dims and d; ``n`` rows, 0 = ``SETS[name]``; mlp: n // 4 per manifold)
    as ``out/x.npy`` [n, d] float32 and ``out/labels.npy`` [n] int64, each whole or not at all."""
    n = n or SETS[name]
    x, label = union_of_subspaces(n, seed=seed) if name == "linear" else mlp_manifolds(n // 4, seed=seed,
                                                                                        init=init)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a read-only folder
        raise WriteError(f"could not make {out}: {e.strerror or e}") from e
    paths = out / "x.npy", out / "labels.npy"
    for path, arr in zip(paths, (x, label), strict=True):
        tmp = path.with_name(f".tmp-{path.name}")
        try:
            with open(tmp, "wb") as f:
                np.save(_Pieces(f), arr)
            os.replace(tmp, path)
        except BaseException as e:  # a full disk, Ctrl-C: no half file left taking the space
            tmp.unlink(missing_ok=True)
            if isinstance(e, OSError):
                raise WriteError(f"could not write {path}: {e.strerror or e} ({path} is as it was)") from e
            raise
    return paths


class _Pieces:
    """A file that numpy writes to in 16 MB pieces (``f.write``): a full disk is then an OSError saying so,
    where numpy's ``tofile`` of a real file says only '2240000 requested and 786400 written'."""

    def __init__(self, f) -> None:
        self.write = f.write


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m actdict.harvest.synthetic", description=(
        "Write the paper's synthetic data (Table 2) as x.npy and labels.npy, for harvest.mode: vectors and "
        "analyze.labels"))
    ap.add_argument("set", choices=sorted(SETS), help="linear: 3 random 4-dim subspaces of R^40; mlp: MLP "
                    "manifolds of dims 5, 5, 10, 10 in R^100")
    ap.add_argument("out", help="folder to write x.npy and labels.npy to")
    ap.add_argument("--n", type=int, default=0, help="rows (default: linear 56,000, mlp 48,000)")
    ap.add_argument("--seed", type=int, default=0, help="draws the manifolds and the points")
    ap.add_argument("--init", choices=["randn", "torch"], default="randn", help="mlp: how the random MLPs' "
                    "weights are drawn")
    a = ap.parse_args(argv)
    if a.n < 0 or (a.set == "mlp" and 0 < a.n < 4):
        ap.error(f"--n must be a positive number of rows (mlp: at least 4), got {a.n}")
    try:
        x_path, label_path = write_set(a.set, a.out, a.n, a.seed, a.init)
    except WriteError as e:
        print(printable(f"synthetic: WriteError: {e}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("synthetic: interrupted (no half-written file is kept)", file=sys.stderr)
        return 130
    rows = len(np.load(label_path, mmap_mode="r"))
    print(printable(f"wrote {x_path} and {label_path} ({rows:,} rows of the {a.set} set, seed {a.seed})"))
    return 0


if __name__ == "__main__":
    from actdict.errors import run_command

    run_command(main)
