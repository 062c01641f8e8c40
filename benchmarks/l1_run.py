"""A whole L1 SAE training run on real activations, with the sparse step and with it off, side by side.

    .venv/bin/actdict harvest configs/demo.yaml     # the demo store: MiniLM block 3, d = 384, 200k rows
    .venv/bin/python benchmarks/l1_run.py runs/demo/store --lam1 3 --steps 600 --k 4096

``benchmarks/train.py`` times single steps from two fixed states (fresh: about half the codes on; and one with
64 codes per row on). This runs the same training twice on the store's rows (normalised as the train stage
does: mean removed, one scalar scale; seeded batches of ``--batch`` rows; Adam), once as shipped (the sparse
step once at most 5% of a batch's codes are nonzero) and once with the sparse step off, and prints the wall
time of each, how many steps took the sparse step, and the mean L0 and loss every ``--every`` steps of both
runs (the two trajectories agree to float rounding: the steps compute the same loss and gradients).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from actdict.harvest.store import open_store
from actdict.train.data import norm_stats
from actdict.train.protocol import make
from actdict.train.variants._sparse import Pattern


def load_rows(path: str) -> torch.Tensor:
    """Every row of the store, normalised as the train stage does: [n, d] float32."""
    store = open_store(path)
    chunks = range(store.num_chunks)
    mean, scale = norm_stats(store, chunks, store.num_chunks, seed=0)
    x = np.concatenate([store.read_chunk(i).acts for i in chunks]).astype(np.float32)  # [n, d]
    return torch.from_numpy((x - mean) / scale)


def run(x: torch.Tensor, args, sparse: bool) -> dict:
    """One training run; returns wall seconds of the steps, the number of sparse steps, and the trajectory."""
    cls = type(make(args.variant, 4, 4))
    shipped = cls.sparse_below
    cls.sparse_below = shipped if sparse else {}  # {}: the sparse step on no device
    taken: list[bool] = []
    real = Pattern.if_sparse.__func__

    def spy(pcls, z, below):  # records which step each forward took
        pat = real(pcls, z, below)
        taken.append(pat is not None)
        return pat

    Pattern.if_sparse = classmethod(spy)
    try:
        params = {"lam1": args.lam1, "lam2": 0.0} if args.variant == "sae_l1" else {"lam": args.lam1}
        m = make(args.variant, x.shape[1], args.k, seed=args.seed, **params)
        opt = torch.optim.Adam(m.parameters(), lr=args.lr, fused=True)
        g = torch.Generator().manual_seed(args.seed)
        seconds, trace = 0.0, []
        for s in range(args.steps):
            xb = x[torch.randint(len(x), (args.batch,), generator=g)]  # [B, d]
            t = time.perf_counter()
            loss = m.loss_terms(xb, m(xb))["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            m.after_step()
            seconds += time.perf_counter() - t
            if s % args.every == 0 or s == args.steps - 1:
                with torch.no_grad():
                    l0 = float((m(xb[:1024], sample=False).codes != 0).sum(-1).float().mean())
                trace.append((s, l0, float(loss.detach())))
    finally:
        Pattern.if_sparse = classmethod(real)
        cls.sparse_below = shipped
    return {"seconds": seconds, "sparse_steps": sum(taken), "trace": trace}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--variant", default="sae_l1", choices=["sae_l1", "sae_l1_decnorm"])
    ap.add_argument("--lam1", type=float, default=3.0, help="sae_l1's lam1 (sae_l1_decnorm's lam)")
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    x = load_rows(args.store)
    print(f"{args.variant} k={args.k} lam={args.lam1} on {len(x):,} rows (d={x.shape[1]}), "
          f"batch {args.batch}, {args.steps} steps, {torch.get_num_threads()} threads", flush=True)
    on, off = run(x, args, True), run(x, args, False)
    print(f"{'step':>6}{'L0 (sparse on)':>16}{'loss':>12}{'L0 (off)':>12}{'loss':>12}")
    for (s, l0a, la), (_, l0b, lb) in zip(on["trace"], off["trace"], strict=True):
        print(f"{s:>6}{l0a:>16.1f}{la:>12.3f}{l0b:>12.1f}{lb:>12.3f}")
    print(f"sparse step on: {on['seconds']:.1f} s ({on['sparse_steps']} of {args.steps} steps sparse); "
          f"off: {off['seconds']:.1f} s; ratio {off['seconds'] / on['seconds']:.2f}x")


if __name__ == "__main__":
    main()
