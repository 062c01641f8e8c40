"""What counting co-activations (``analyze.cofire``) adds to an analysis batch, beside the batch's forward.

For each k: one batch of B rows through a TopK SAE of k latents at d (the analysis' deterministic forward,
its Otsu active split), then ``CoFire.update`` on that batch's active pattern by each path (the dense
A^T A matmul and the pairs path) and by the choice the analysis makes. Prints seconds per batch and each
path's time as a multiple of the forward's, measured side by side in one run (median of ``--repeats``).

    python benchmarks/cofire.py                  # k 384, 4096, 16384 at d 384, AD 32, B 4096, 1 thread
    python benchmarks/cofire.py --ks 16384 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from actdict.analyze import cofire
from actdict.analyze.metrics import active_mask
from actdict.train.protocol import make


def median_seconds(fn, repeats: int) -> float:
    """The median wall time of ``repeats`` calls of ``fn()`` (also ``analyze_pass.py``'s)."""
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def _update(k: int, active: torch.Tensor, ratio: float) -> None:
    saved, cofire.DENSE_RATIO = cofire.DENSE_RATIO, ratio
    try:
        cofire.CoFire(k).update(active)
    finally:
        cofire.DENSE_RATIO = saved


@torch.no_grad()
def _measure(k: int, x: torch.Tensor, ad: int, repeats: int) -> tuple[float, list[float]]:
    """(the forward + active split's seconds, [dense, pairs, chosen] update seconds) of one batch x [B, d]."""
    model = make("sae_topk", x.shape[1], k, seed=0, topk=ad).eval()

    def forward() -> torch.Tensor:
        return active_mask(model(x, sample=False).activity, model.active_side)  # [B, k]

    active = forward()
    return median_seconds(forward, repeats), [median_seconds(lambda r=r: _update(k, active, r), repeats)
                                              for r in (1e9, 0.0, cofire.DENSE_RATIO)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ks", type=int, nargs="+", default=[384, 4096, 16384])
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--ad", type=int, default=32, help="the TopK SAE's topk: active features per row")
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x = torch.randn(a.rows, a.d)  # [B, d]
    print(f"B {a.rows}, d {a.d}, AD {a.ad}, {a.threads} thread(s); seconds per batch (x the forward)")
    print(f"{'k':>6} {'forward':>9} {'dense':>16} {'pairs':>16} {'chosen':>16}")
    for k in a.ks:
        fwd, times = _measure(k, x, a.ad, a.repeats)
        cells = " ".join(f"{t:8.3f} ({t / fwd:5.2f}x)" for t in times)
        print(f"{k:>6} {fwd:9.3f} {cells}")

if __name__ == "__main__":
    main()
