"""Harvest throughput against the bare forward pass it is built on, side by side in one run.

For each model, on the same windows of the offline demo corpus (the same batch size, ``stop_at_layer`` at
the hook), it times:
* ``tokenise``: documents -> token windows (``actdict.harvest.windows.model_windows``), alone;
* ``bare forward``: the wrapped Hugging Face model on pre-made token batches, stopped right after block L
  (a forward hook raises): the least compute any harvest of that hook needs. (``bridge(tokens,
  stop_at_layer=L+1)`` is no baseline: TransformerBridge 4.3 still returns vocabulary logits there);
* ``forward+cache``: the harvest's own ``forward`` (hooked ``run_with_cache``; activations left on the
  device, as the harvest calls it);
* ``store write``: one shard of the same width written as the harvest's writer writes it
  (``layout.write_shard``, flushed to the disk), alone, scaled to the same rows: the disk's ceiling;
* ``harvest``: ``actdict harvest`` end to end (``actdict.harvest.run.main``: tokenise, forward, cast,
  shard writes, manifests) with the model already loaded (loading is not part of the throughput);
and prints tokens/s (stored rows per second; every timing covers the same rows) and the ratio
harvest / bare forward (target >= 0.9), by wall clock and by CPU time of the process (on a machine shared
with other jobs the CPU-time figures are the steadier ones). Each timing is the best of ``--repeats``
alternated runs; the two forwards are interleaved batch by batch. ``harvest (attributed)`` = the cached
forward + the time the harvest spends outside its forward calls (measured inside the same harvest run):
the overhead of the harvest loop itself, insensitive to the load drifting between timings.

    python benchmarks/harvest.py                      # MiniLM (real weights) and random-init Pythia-70m shape
    python benchmarks/harvest.py --models minilm --tokens 65536 --dtype float32 --repeats 1
    python benchmarks/harvest.py --device cuda            # the forward on the GPU (both sides)
    python benchmarks/harvest.py --device cuda --tmp /dev/shm   # stores in RAM: the disk taken out
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from itertools import islice
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # what `import actdict` sets, before torch loads

import fsspec  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from actdict.config import Common, build  # noqa: E402
from actdict.harvest import rows as harvest_rows  # noqa: E402
from actdict.harvest import run as harvest_run  # noqa: E402
from actdict.harvest import windows as harvest_windows  # noqa: E402
from actdict.harvest.config import HarvestConfig  # noqa: E402
from actdict.harvest.layout import write_shard  # noqa: E402
from actdict.harvest.models import load_model  # noqa: E402
from actdict.harvest.random_init import make_random_pythia  # noqa: E402
from actdict.precision import dtype_said, emulated_note, forward_dtype  # noqa: E402

MODELS = {  # name -> (hook, ctx)
    "minilm": ("blocks.3.hook_resid_post", 128),
    "pythia": ("blocks.2.hook_resid_post", 256),
}


def _windows(lm, cfg, n_rows: int) -> list:
    """The windows the harvest reads for its first ``n_rows`` stored rows."""
    out, rows = [], 0
    for w in harvest_windows.model_windows(lm, cfg):
        out.append(w)
        rows += int(w.keep.sum())
        if rows >= n_rows:
            break
    return out


class _Stop(Exception):
    pass


def _raise(module, inputs, output):
    raise _Stop


def bare_forward(lm, tokens: list, layer: int) -> None:
    """The HF model the bridge wraps, on each [B, ctx] batch, stopped after block ``layer``."""
    hf = lm.bridge.original_model
    blocks = next(m for m in hf.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == lm.n_layers)
    handle = blocks[layer].register_forward_hook(_raise)
    try:
        with torch.inference_mode():
            for t in tokens:
                try:
                    hf(input_ids=t)
                except _Stop:
                    continue
                raise RuntimeError(f"block {layer} of {type(hf).__name__} never ran: not a bare forward")
    finally:
        handle.remove()


def _sync() -> None:
    """Wait for queued GPU work, so that a timing covers it (a no-op without CUDA)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn, *args) -> np.ndarray:
    """(wall seconds, CPU seconds of this process) of one call, its GPU work included."""
    _sync()
    w, c = time.perf_counter(), time.process_time()
    fn(*args)
    _sync()
    return np.array([time.perf_counter() - w, time.process_time() - c])


def bench(name: str, model_path: str, args, tmp: Path) -> dict:
    hook, ctx = MODELS[name]
    cfg = build(HarvestConfig, {
        "model": model_path, "hooks": [hook], "source": {"kind": "debian", "shuffle_buffer": 4096},
        "ctx": ctx, "batch_size": args.batch_size, "max_tokens": args.tokens, "dtype": args.dtype,
        "store_dtype": "float16", "shard_rows": args.shard_rows, "chunk_rows": min(4096, args.shard_rows),
        "device": args.device})
    lm = load_model(model_path, device=args.device, dtype=args.dtype)
    stop = lm.stop_at_layer([hook])
    windows = _windows(lm, cfg, args.tokens)
    if (held := sum(int(w.keep.sum()) for w in windows)) < args.tokens:
        raise SystemExit(f"the demo corpus holds {held:,} rows for {name}: --tokens {held:,} at most")
    batches = [windows[a:a + args.batch_size] for a in range(0, len(windows), args.batch_size)]
    tokens = [torch.from_numpy(np.stack([w.tokens for w in b])).to(args.device)
              for b in batches]  # [B, ctx] each, on the device

    def forwards() -> tuple[np.ndarray, np.ndarray]:
        """Bare and cached forward of every batch, interleaved batch by batch (a busy machine hurts both)."""
        bare, cached = np.zeros(2), np.zeros(2)
        for b, t in zip(batches, tokens, strict=True):
            bare += _timed(bare_forward, lm, [t], stop - 1)
            cached += _timed(harvest_rows.forward, lm, b, [hook], stop, True)  # on_device, as the harvest
        return bare, cached

    def tokenise():
        list(islice(harvest_windows.model_windows(lm, cfg), len(windows)))

    inside = np.zeros(2)  # time the harvest spends inside its forward calls (wall, cpu)
    real_forward = harvest_rows.forward

    def timed_forward(*a, **k):
        nonlocal inside
        w, c = time.perf_counter(), time.process_time()
        try:
            return real_forward(*a, **k)
        finally:
            inside += np.array([time.perf_counter() - w, time.process_time() - c])

    def harvest():
        shutil.rmtree(tmp / "run", ignore_errors=True)
        harvest_run.main(Common(run_dir=str(tmp / "run")), cfg)

    real_load = harvest_run.load_model
    harvest_run.load_model = lambda *a, **k: lm  # the harvest reuses the loaded model
    harvest_rows.forward = timed_forward

    def store_write():  # one shard of this width and dtype, as the harvest's writer writes it
        write_shard(fsspec.filesystem("file"), str(tmp / "disk"), 0, shard, cfg.chunk_rows)
        shutil.rmtree(tmp / "disk")

    n = min(args.shard_rows, args.tokens)
    shard = {"acts": np.zeros((n, lm.d_model), np.float16)} | {k: np.zeros(n, np.int64)
                                                              for k in ("token_ids", "doc", "pos")}
    kinds = ("tokenise", "bare forward", "forward+cache", "harvest", "outside forward", "store write")
    runs: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
    try:
        bare_forward(lm, tokens[:1], stop - 1)  # warm-up (allocator, kernels)
        for _ in range(args.repeats):  # alternated
            runs["tokenise"].append(_timed(tokenise))
            bare, cached = forwards()
            runs["bare forward"].append(bare)
            runs["forward+cache"].append(cached)
            inside[:] = 0
            total = _timed(harvest)
            runs["harvest"].append(total)
            runs["outside forward"].append(total - inside)
            runs["store write"].append(_timed(store_write) * (args.tokens / n))  # scaled to the same rows
    finally:
        harvest_run.load_model, harvest_rows.forward = real_load, real_forward
    best = {k: np.min(np.stack(v), axis=0) for k, v in runs.items()}  # [2]: wall, cpu
    # Attributed: the forward the harvest needs (the interleaved cached one) plus what the harvest spends
    # outside its forward calls, measured in the same run: steady when the machine's load drifts.
    best["harvest (attributed)"] = best["forward+cache"] + best.pop("outside forward")
    return {"model": name, "d": lm.d_model, "ctx": ctx, "windows": len(windows), "rows": args.tokens,
            "times": best}


def _table(results: list[dict], col: int, title: str) -> None:
    print(f"\n{title}")
    kinds = list(results[0]["times"])
    head = " ".join(f"{k[:14]:>14}" for k in kinds)
    ratios = f"{'harvest/bare':>13} {'attrib./bare':>13} {'write/bare':>11}"
    print(f"{'model':8} {'d':>4} {'ctx':>4} {head} {ratios}")
    for r in results:
        tps = {k: r["rows"] / v[col] for k, v in r["times"].items()}
        print(f"{r['model']:8} {r['d']:>4} {r['ctx']:>4} " + " ".join(f"{v:>14,.0f}" for v in tps.values())
              + f" {tps['harvest'] / tps['bare forward']:>13.3f}"
              + f" {tps['harvest (attributed)'] / tps['bare forward']:>13.3f}"
              + f" {tps['store write'] / tps['bare forward']:>11.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["minilm", "pythia"], choices=sorted(MODELS))
    ap.add_argument("--tokens", type=int, default=262144, help="stored rows per harvest (4 shards)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="the forward's dtype (auto: bfloat16 where the device has it natively, else "
                         "float32)")
    ap.add_argument("--shard-rows", type=int, default=65536,
                    help="rows per shard: a multiple of the chunk's 4,096 rows, or fewer (one chunk)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]: the forward's device (both sides)")
    ap.add_argument("--tmp", default=None, metavar="DIR",
                    help="where the stores are written (default: the system's temporary folder); a RAM "
                         "folder such as /dev/shm takes the disk out and leaves the harvest loop's own ratio")
    args = ap.parse_args()
    if args.tmp is not None and not Path(args.tmp).is_dir():
        ap.error(f"--tmp {args.tmp}: no such folder")
    torch.manual_seed(0)
    asked, args.dtype = args.dtype, forward_dtype(args.dtype, args.device)
    print(f"torch threads {torch.get_num_threads()}, {args.device}, dtype "
          f"{dtype_said(asked, args.dtype, args.device)}{emulated_note(args.device, args.dtype)}, "
          f"batch {args.batch_size}, "
          f"{args.tokens:,} rows per timing, best of {args.repeats}; "
          f"stores under {args.tmp or tempfile.gettempdir()}")
    with tempfile.TemporaryDirectory(dir=args.tmp) as d:
        tmp = Path(d)
        paths = {"minilm": "all-MiniLM-L6-v2"}
        if "pythia" in args.models:
            paths["pythia"] = str(make_random_pythia(tmp / "pythia"))
        results = [bench(m, paths[m], args, tmp) for m in args.models]
    _table(results, 0, "tokens/s, wall clock (best of the repeats)")
    _table(results, 1, "tokens per CPU-second of this process (steadier on a shared machine)")
    print("\ntarget: harvest/bare >= 0.9 (the harvest costs at most 10% over the forward it needs); "
          "write/bare: the disk's\nrate of writing shards (flushed, alone) over the bare forward, the most "
          "a harvest that stores every row can reach")


if __name__ == "__main__":
    main()
