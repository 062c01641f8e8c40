"""The sparse TopK path's operators (``train/variants/_sparse.py``) beside the alternatives they replaced,
one call each, on one device: which way to compute each piece is a per-device question.

    python benchmarks/sparse_ops.py --device cuda
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from actdict.train.variants._sparse import Pattern


def ms_per_call(fn: Callable[[], object], device: torch.device, n: int = 20) -> float:
    """Mean milliseconds of ``fn()`` over ``n`` calls after one warm-up, its device work included."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return (time.perf_counter() - t) / n * 1e3


def ops(B: int, d: int, k: int, topk: int, dev: torch.device) -> dict[str, Callable[[], object]]:
    """name -> the call, on random data of these shapes."""
    x, g = torch.randn(B, d, device=dev), torch.randn(B, d, device=dev)  # [B, d] input, gradient of x_hat
    W = torch.randn(k, d, device=dev) / 20  # [k, d]
    pre = x @ W.T  # [B, k]
    idx = pre.topk(topk, dim=1).indices  # [B, topk]
    pat = Pattern.from_topk(idx, k)
    vals = torch.randn(len(pat.cols), device=dev)  # [N]
    per_row = lambda t: t.view(B, topk, -1)  # noqa: E731  [N, w] -> [B, topk, w]
    return {
        "matmul x @ W.T (encoder forward)": lambda: x @ W.T,
        "topk": lambda: pre.topk(topk, dim=1),
        "Pattern.from_topk": lambda: Pattern.from_topk(idx, k),
        "decode: embedding_bag (used)": lambda: pat.by_row(W, vals),
        "decode: gathered W + bmm": lambda: torch.bmm(vals.view(B, 1, topk), per_row(W[pat.cols])),
        "grad vals: sampled_addmm (used)": lambda: pat.sampled_dot(g, W),
        "grad vals: gathered rows, mul, sum": lambda: (g[pat.rows] * W[pat.cols]).sum(-1),
        "grad vals: gathered W + bmm": lambda: torch.bmm(per_row(W[pat.cols]), g.view(B, d, 1)),
        "grad W: column embedding_bag (used)": lambda: pat.by_column(g, vals),
        "grad W: index_add_": lambda: torch.zeros(k, d, device=dev).index_add_(
            0, pat.cols, g[pat.rows] * vals[:, None]),
        "grad W: dense z^T g": lambda: pat.dense(vals).T @ g,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--B", type=int, default=4096)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--k", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--topk", type=int, default=32)
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    for k in args.k:
        print(f"\nk={k} B={args.B} d={args.d} topk={args.topk} on {dev} (ms per call)")
        for name, fn in ops(args.B, args.d, k, args.topk, dev).items():
            print(f"  {name:38} {ms_per_call(fn, dev):8.3f}")


if __name__ == "__main__":
    main()
