"""Where a training step's time goes, operator by operator (``torch.profiler``), for the variants that fall
short of the matmul roofline on a device (issue #4; ``benchmarks/train.py`` gives the rates).

For each variant: the training loop (``actdict.train.loop.train``, one dictionary, in-RAM batches) runs a
warm-up, then ``--steps`` steps under the profiler; prints the wall time per step and the operators by
self time on the device (CUDA) or on the CPU.

    python benchmarks/train_profile.py --device cuda --variants sae_topk --k 4096
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from actdict.precision import emulated_note
from actdict.train.config import TrainConfig
from actdict.train.loop import train
from actdict.train.member import Member
from actdict.train.protocol import make


def run_steps(m: Member, batches: list[torch.Tensor], n: int, device: torch.device,
              autocast: bool = False) -> float:
    """Wall seconds of ``n`` training steps of ``m`` on ``batches`` (cycled), the device's work included."""
    it = (batches[i % len(batches)] for i in range(n))
    cfg = TrainConfig(dicts=[], epochs=1, max_steps=n, checkpoint_every=0, autocast=autocast)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    train([m], lambda e, s=0: it, cfg, device, progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variants", nargs="+", default=["sae_topk", "sae_l1"])
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--topk", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rows", type=int, default=18, help="operators shown per variant")
    ap.add_argument("--autocast", action="store_true", help="bf16 autocast (train.autocast)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    batches = [torch.randn(args.batch, args.d) for _ in range(4)]  # [B, d] each, on the CPU as a store's
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    for v in args.variants:
        params = {"topk": args.topk} if "topk" in v else {}
        m = Member(v, make(v, args.d, args.k, **params), 1e-4)
        run_steps(m, batches, 3, dev, args.autocast)  # warm-up: allocator, kernels, optimizer state
        wall = run_steps(m, batches, args.steps, dev, args.autocast)
        with profile(activities=acts, record_shapes=True) as prof:
            run_steps(m, batches, args.steps, dev, args.autocast)
        prec, dt = ("bf16 autocast", "bfloat16") if args.autocast else ("float32", "float32")
        print(f"\n{v} d={args.d} k={args.k} B={args.batch} {prec} on {dev}{emulated_note(str(dev), dt)}: "
              f"{wall / args.steps * 1e3:.2f} ms/step, "
              f"{args.steps * args.batch / wall:,.0f} samples/s (without the profiler)")
        print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=48))


if __name__ == "__main__":
    main()
