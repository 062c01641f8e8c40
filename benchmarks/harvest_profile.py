"""Where a harvest's wall time goes, for a machine where it falls short of the bare forward (issue #3).

Prints: the disk's shard-write time (``layout.write_shard``, 65,536 rows, chunk files flushed 1 or 4 at a
time); per harvest, the wall time of the main thread's forward calls, its row copies (``store_rows``) and its
waits for the writer, and the writer thread's shard writes; the top functions of the main thread by own
time (cProfile); the bare forward at each batch size.

    python benchmarks/harvest_profile.py --device cuda
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402

import harvest as hb  # noqa: E402  (benchmarks/harvest.py)
from actdict.config import Common, build  # noqa: E402
from actdict.harvest import layout, pipeline  # noqa: E402
from actdict.harvest import rows as hrows  # noqa: E402
from actdict.harvest import run as hr  # noqa: E402
from actdict.harvest.config import HarvestConfig  # noqa: E402
from actdict.harvest.models import load_model  # noqa: E402
from actdict.harvest.random_init import make_random_pythia  # noqa: E402
from actdict.precision import dtype_said, emulated_note, forward_dtype  # noqa: E402

BUSY: dict[str, float] = {}  # what -> seconds
HOOK = "blocks.2.hook_resid_post"


def timed(name: str, fn):
    """fn, adding its wall time to BUSY[name]."""
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            BUSY[name] = BUSY.get(name, 0.0) + time.perf_counter() - t
    return wrapper


def disk(tmp: Path, rows: int = 65536, d: int = 512) -> None:
    """Seconds to write one shard (``layout.write_shard``), its chunk files flushed one at a time or four
    at a time (``layout.release_all``), alternated."""
    import fsspec
    fs = fsspec.filesystem("file")
    data = {"acts": np.random.default_rng(0).standard_normal((rows, d)).astype(np.float16),
            "token_ids": np.arange(rows), "doc": np.arange(rows), "pos": np.arange(rows)}
    real = layout.release_all
    try:
        for i in range(6):
            threads = 1 if i % 2 == 0 else 4
            layout.release_all = functools.partial(real, threads=threads)
            t = time.perf_counter()
            layout.write_shard(fs, str(tmp / "disk"), i, data, 4096)
            s = time.perf_counter() - t
            print(f"write_shard {rows:,} rows x {d} float16 ({rows * (2 * d + 16) / 1e6:.0f} MB), flushed "
                  f"{threads} at a time: {s:.3f} s, {rows / s:,.0f} rows/s")
    finally:
        layout.release_all = real
    shutil.rmtree(tmp / "disk")


def profile_harvest(lm, model: str, args, bs: int, tmp: Path) -> None:
    """Three harvests at batch ``bs`` (the last under cProfile), each thread's busy time, then the bare
    forward at the same batch."""
    cfg = build(HarvestConfig, {
        "model": model, "hooks": [HOOK], "source": {"kind": "debian", "shuffle_buffer": 4096}, "ctx": 256,
        "batch_size": bs, "max_tokens": args.tokens, "dtype": args.dtype, "store_dtype": "float16",
        "shard_rows": 65536, "chunk_rows": 4096, "device": args.device})
    prof = cProfile.Profile()
    for rep in range(3):
        shutil.rmtree(tmp / "run", ignore_errors=True)
        BUSY.clear()
        hb._sync()
        t = time.perf_counter()
        if rep == 2:
            prof.enable()
        hr.main(Common(run_dir=str(tmp / "run")), cfg)
        prof.disable()
        hb._sync()
        wall = time.perf_counter() - t
        print(f"\nbatch {bs}, run {rep} ({'cProfile on' if rep == 2 else 'no profiler'}): {wall:.3f} s, "
              f"{args.tokens / wall:,.0f} rows/s")
        for k, v in sorted(BUSY.items()):
            print(f"  {k:48} {v:7.3f} s")
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(25)
    print("\n".join(s.getvalue().splitlines()[:45]))
    tokens = [torch.randint(0, 50000, (bs, 256), device=args.device)
              for _ in range(max(1, args.tokens // (bs * 256)))]  # [bs, 256] each: --tokens or one batch
    n = len(tokens) * bs * 256  # the tokens the bare forward runs (not always --tokens)
    for _ in range(2):
        t = hb._timed(hb.bare_forward, lm, tokens, lm.stop_at_layer([HOOK]) - 1)
        print(f"bare forward, batch {bs}: {n:,} tokens, {n / t[0]:,.0f} tok/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokens", type=int, default=262144)
    ap.add_argument("--batch-size", type=int, nargs="+", default=[32])
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="the forward's dtype (auto: bfloat16 where the device has it natively, else "
                         "float32)")
    args = ap.parse_args()
    asked, args.dtype = args.dtype, forward_dtype(args.dtype, args.device)
    print(f"forward dtype {dtype_said(asked, args.dtype, args.device)}"
          f"{emulated_note(args.device, args.dtype)}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        disk(tmp)
        model = str(make_random_pythia(tmp / "pythia"))
        lm = load_model(model, device=args.device, dtype=args.dtype)
        hr.load_model = lambda *a, **k: lm  # the harvest reuses the loaded model
        hrows.forward = timed("main: forward", hrows.forward)
        hrows.store_rows = timed("main: store_rows", hrows.store_rows)
        hr._write = timed("writer: _write", hr._write)
        pipeline.Behind.submit = timed("main: submit (waits for the previous write)", pipeline.Behind.submit)
        for bs in args.batch_size:
            profile_harvest(lm, model, args, bs, tmp)


if __name__ == "__main__":
    main()
