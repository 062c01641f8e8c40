"""Training throughput: every registered variant beside SAELens and beside this machine's matmul roofline.

    .venv/bin/python benchmarks/train.py                       # d=512, k in {4096, 16384}, batch 4096
    .venv/bin/python benchmarks/train.py --k 4096 --steps 5 --warmup 1 --variants sae_topk sae_l1
    .venv/bin/python benchmarks/train.py --autocast --variants sae_topk sae_l1   # bf16 autocast, both sides
    .venv/bin/python benchmarks/train.py --device cuda --no-saelens         # on the GPU (roofline too)

Prints, per (variant, k): samples/s (the fastest of ``--repeats`` blocks of ``--steps`` steps, on both sides)
of actdict's real training loop (``actdict.train.loop.train`` on in-RAM batches: Adam, schedule, NaN checks,
one sync per step), the FLOPs of one step (counted by ``torch.utils.flop_counter``), two roofline columns (the
peak = the best measured GFLOP/s of a float32 [B, d] x [d, k] matmul on this machine, timed before the first
variant and again after each one, since a shared host's speed drifts: a peak timed in a slow moment would
inflate the % columns), and for sae_topk / sae_l1 the samples/s of SAELens training the same config (TopK
without AuxK, L1) on the same batches, and the ratio. ``--autocast``: both train in bf16 autocast
(``train.autocast``; SAELens ``SAETrainerConfig.autocast``) and the roofline is a bf16 matmul (on CPUs with
AMX / AVX512-BF16 ~3x the float32 rate; on a CPU without them torch emulates bf16, several times slower than
float32, and the header line says so: ``actdict.precision``). SAELens runs in its own venv
(``--saelens-venv``, created with ``pip install sae-lens torch==2.13.0`` if missing; or, where no index is
reachable, this interpreter with SAELens's packages first on the child's path: ``--saelens-path``, as
``benchmarks/gpu_session.sh``'s ``saelens`` step does; ``--no-saelens`` skips that column).

* "% roofline": counted FLOPs per step x steps/s / peak: how busy the matmul units are with the work the
  step actually does. The TopK variants' sparse decode and sparse encoder gradient (``_sparse``) run no
  counted matmul, so only their encoder forward (2 B d k) counts: a faster step can show a lower %.
* "% roofline (dense-equivalent)": the time the dense algorithm's matmuls would take at the peak,
  10 B d k FLOPs / peak (encoder forward, decoder forward, grad W_dec, grad z, grad W_enc: 2 B d k each),
  over the measured step time. It compares step times across implementations on one yardstick and can
  pass 100% when the step skips dense work. It is the linear SAE's count; the tied variants' dense autograd
  also did grad x = grad_pre W_enc^T (for b_pre, 12 B d k in all), not included; for the VAEs and
  other-shaped variants it is only a scale.

Also: rows/s of the shuffled batch stream from a store on disk vs batches gathered from an in-RAM tensor.
Targets (issue #4): >= 1.5x SAELens; >= 50% of roofline for TopK.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # what `import actdict` sets, before torch loads

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # saelens_side beside this file (PYTHONSAFEPATH too)
from saelens_side import add_arguments, child_python  # noqa: E402

from actdict.harvest.store import write_vectors  # noqa: E402
from actdict.precision import emulated_note  # noqa: E402
from actdict.train.config import TrainConfig  # noqa: E402
from actdict.train.data import iter_batches  # noqa: E402
from actdict.train.export import TENSORS, saelens_view  # noqa: E402
from actdict.train.loop import train  # noqa: E402
from actdict.train.member import Member  # noqa: E402
from actdict.train.protocol import make, registry  # noqa: E402

CPU = torch.device("cpu")
L1_VARIANTS = ("sae_l1_decnorm", "sae_l1")  # the ones with a sparse step that SAELens is timed beside
SAELENS_CHILD = r'''
import json, sys, time, numpy as np, torch
from sae_lens import (SAETrainer, StandardTrainingSAE, StandardTrainingSAEConfig, TopKTrainingSAE,
                      TopKTrainingSAEConfig)
from sae_lens.config import SAETrainerConfig
a = json.loads(sys.argv[1])
x = torch.from_numpy(np.load(a["data"])).to(a["device"])  # [n_batches * B, d]
batches = x.split(a["batch"])
for k in a["ks"]:
    for name in a["variants"]:
        torch.manual_seed(0)
        if name == "sae_topk":
            sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=a["d"], d_sae=k, k=a["topk"],
                                                        aux_loss_coefficient=0.0))
        else:
            sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=a["d"], d_sae=k,
                                                                l1_coefficient=a["lam1"]))
        if a.get("init"):  # our starting weights in SAELens's names and layouts (saelens_view)
            from safetensors.torch import load_file
            with torch.no_grad():
                for param, w in load_file(a["init"]).items():
                    getattr(sae, param).copy_(w)
        n = a["warmup"] + a["steps"] * a["repeats"]
        tcfg = SAETrainerConfig(total_training_samples=n * a["batch"], train_batch_size_samples=a["batch"],
                                lr=a["lr"], lr_end=a["lr"], device=a["device"], autocast=a["autocast"])
        tr = SAETrainer(tcfg, sae, iter(()))
        best = float("inf")  # the fastest of the repeated blocks of timed steps, as on our side
        for i in range(n):
            if i >= a["warmup"] and (i - a["warmup"]) % a["steps"] == 0:
                t0 = time.perf_counter()
            out = tr.step(batches[i % len(batches)])
            tr.n_training_steps += 1
            float(out.loss)
            if i >= a["warmup"] and (i - a["warmup"]) % a["steps"] == a["steps"] - 1:
                best = min(best, time.perf_counter() - t0)
        print(json.dumps({"variant": name, "k": k, "samples_s": a["steps"] * a["batch"] / best}), flush=True)
'''


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so that wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def roofline_gflops(b: int, d: int, k: int, reps: int = 20, dtype=torch.float32,
                    device: torch.device = CPU) -> float:
    """Best GFLOP/s of a [b, d] x [d, k] matmul in ``dtype`` on ``device`` (2 b d k FLOPs)."""
    x, w = torch.randn(b, d, dtype=dtype, device=device), torch.randn(d, k, dtype=dtype, device=device)
    for _ in range(3):
        torch.mm(x, w)
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        torch.mm(x, w)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * b * d * k / best / 1e9


def sparse_l1_state(variant: str, d: int, k: int, l0: int, x: torch.Tensor,
                    params: dict) -> dict[str, torch.Tensor]:
    """A fresh L1 SAE's state with the encoder bias lowered so that ``l0`` of the k codes of an average row
    of x [B, d] are nonzero: the sparsity of a trained L1 dictionary (the weights stay random)."""
    if not 0 < l0 < k:
        raise SystemExit(f"--l1-l0 {l0}: give a count of nonzero codes per row below k = {k} (0: not timed)")
    model = build(variant, d, k, params).to(x.device)
    bias, enc = (model.b_enc, model.pre) if hasattr(model, "b_enc") else (model.encoder.bias, model.encoder)
    rows = x[:512]  # [n, d], n = min(512, B)
    with torch.no_grad():
        pre = enc(rows).flatten()  # [n k]
        bias -= pre.kthvalue(len(pre) - len(rows) * l0).values  # the (1 - l0 / k) quantile
    return model.state_dict()


def mean_l0(model, x: torch.Tensor) -> float:
    """Mean number of nonzero codes per row of x [B, d]."""
    with torch.no_grad():
        return float((model(x, sample=False).codes != 0).sum(-1).float().mean())


def build(variant: str, d: int, k: int, params: dict, init: dict | None = None):
    """A fresh model of ``variant``, or one holding the state dict ``init``."""
    model = make(variant, d, k, **params)
    if init is not None:
        model.load_state_dict(init)
    return model


def saelens_tensors(model) -> dict[str, torch.Tensor]:
    """The model's weights as SAELens holds them (the export's ``saelens_view``: W_enc [d, k], b_enc, W_dec
    [k, d], b_dec), for a SAELens SAE to start from."""
    return {n: t.contiguous() for n, t in saelens_view(model).items() if n in TENSORS}


def step_flops(variant: str, d: int, k: int, x: torch.Tensor, params: dict, init: dict | None = None) -> int:
    """FLOPs of one forward + backward (matmuls, as counted by torch's FlopCounterMode)."""
    model = build(variant, d, k, params, init).to(x.device)
    with FlopCounterMode(display=False) as fc:
        model.loss_terms(x, model(x, sample=True))["loss"].backward()
    return int(fc.get_total_flops())


def actdict_rate(variant: str, d: int, k: int, batches: list[torch.Tensor], warmup: int, steps: int,
                 params: dict, stream=None, autocast: bool = False, repeats: int = 1,
                 device: torch.device = CPU, init: dict | None = None, keep: list | None = None) -> float:
    """Samples/s of the training loop (after ``warmup`` steps) on the in-RAM batches (or on ``stream``):
    the fastest of ``repeats`` consecutive runs of ``steps`` steps (one model, training on). ``init``: a
    state dict to start from; ``keep``: a list the trained model is appended to."""
    m = Member(variant, build(variant, d, k, params, init).to(device), 1e-4)
    if keep is not None:
        keep.append(m.model)
    it = stream if stream is not None else (batches[i % len(batches)] for i in range(10**9))
    cycle = lambda e, s=0: it  # noqa: E731
    best = float("inf")
    for i, n in enumerate([warmup] + [steps] * repeats):
        if n == 0:  # max_steps 0 is no limit: an endless stream would never end
            continue
        sync(device)
        t = time.perf_counter()
        cfg = TrainConfig(dicts=[], epochs=1, max_steps=n, checkpoint_every=0, autocast=autocast)
        train([m], cycle, cfg, device, progress=False)  # one host sync per step (the loss check)
        sync(device)
        if i:
            best = min(best, time.perf_counter() - t)
    return steps * len(batches[0]) / best


def stream_rates(store, x: np.ndarray, batch: int) -> tuple[float, float]:
    """(rows/s of iter_batches from the store on disk, rows/s of shuffled batches of the in-RAM array x)."""
    t = time.perf_counter()
    n = sum(len(b) for b in iter_batches(store, range(store.num_chunks), batch, 4, seed=0, epoch=0))
    disk = n / (time.perf_counter() - t)
    t = time.perf_counter()
    perm = np.random.default_rng(1).permutation(len(x))
    n = sum(len(torch.from_numpy(x[perm[i:i + batch]])) for i in range(0, len(x), batch))
    return disk, n / (time.perf_counter() - t)


def store_batches(store, batch: int, pin: bool = False):
    """Endless shuffled batches of the store (epoch after epoch), as the train stage reads them (``pin``:
    in page-locked memory, as it does for a CUDA device)."""
    for epoch in range(10**9):
        yield from iter_batches(store, range(store.num_chunks), batch, 4, seed=0, epoch=epoch, pin=pin)


def saelens_rates(data: Path, args, variant: str, k: int,
                  init: dict | None = None) -> dict[tuple[str, int], float]:
    """Samples/s of SAELens's SAETrainer.step (TopK without AuxK, or standard L1) on the saved batches,
    starting from the weights ``init`` (SAELens tensors: ``saelens_tensors``) when given.

    With ``args.saelens_path``: this interpreter, with those directories first on the child's PYTHONPATH
    (SAELens and its transformer-lens 3 installed there by ``pip install --target``, as on a GPU machine
    with no package index), instead of the venv."""
    py, env = child_python(args)
    if not args.saelens_path and not py.exists():
        venv = args.saelens_venv
        print(f"creating {venv} (pip install sae-lens torch==2.13.0) ...", flush=True)
        made = subprocess.run([sys.executable, "-m", "venv", str(venv)]).returncode == 0 and subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", "sae-lens", "torch==2.13.0"]).returncode == 0
        if not made:
            print("SAELens column skipped: could not install sae-lens into the benchmark venv")
            return {}
    spec = {"data": str(data), "d": args.d, "ks": [k], "variants": [variant], "batch": args.batch,
            "steps": args.steps, "repeats": args.repeats, "warmup": args.warmup, "topk": args.topk,
            "lam1": args.lam1, "lr": 1e-4,
            "autocast": args.autocast, "device": args.device, "init": None}
    if init is not None:
        spec["init"] = str(data.with_name(f"init_{variant}_{k}.safetensors"))
        save_file(init, spec["init"])
    proc = subprocess.run([str(py), "-c", SAELENS_CHILD, json.dumps(spec)], capture_output=True, text=True,
                          env=env)
    if proc.returncode:
        print(f"SAELens column skipped: the SAELens run failed:\n{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {(r["variant"], r["k"]): r["samples_s"] for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--k", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=24, help="timed steps per (variant, k)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2,
                    help="timed blocks of --steps steps per (variant, k), both sides; the fastest counts")
    ap.add_argument("--variants", nargs="*", default=None, help="default: every registered variant")
    ap.add_argument("--topk", type=int, default=32)
    ap.add_argument("--lam1", type=float, default=1e-3)
    ap.add_argument("--l1-l0", type=int, default=64,
                    help="also time the L1 SAEs (both sides) from one state where this many of the k codes "
                         "of a row are nonzero, the sparsity of a trained L1 dictionary (0: not)")
    ap.add_argument("--sparse-cuda", type=float, default=0.0, metavar="F",
                    help="let the L1 SAEs take their sparse step on CUDA when at most this fraction of the "
                         "codes is nonzero (as shipped: never there; to measure the crossover)")
    add_arguments(ap)  # --saelens-venv, --saelens-path, --no-saelens
    ap.add_argument("--autocast", action="store_true", help="bf16 autocast (both sides) and a bf16 roofline")
    ap.add_argument("--stream-rows", type=int, default=262144)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (both sides, and the roofline)")
    args = ap.parse_args()
    if args.steps < 1 or args.repeats < 1 or args.warmup < 0:
        ap.error("--steps and --repeats take 1 or more, --warmup 0 or more")
    dev = torch.device(args.device)
    torch.manual_seed(0)
    if args.sparse_cuda:
        for v in L1_VARIANTS:
            cls = registry()[v]
            cls.sparse_below = cls.sparse_below | {"cuda": args.sparse_cuda}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; d={args.d} batch={args.batch} "
          f"steps={args.steps} x best of {args.repeats} (+{args.warmup} warmup), "
          f"{'bf16 autocast' if args.autocast else 'float32'} on {dev}"
          f"{emulated_note(str(dev), 'bfloat16' if args.autocast else 'float32')}",
          flush=True)

    mix = torch.randn(args.d, args.d) / args.d ** 0.5
    batches = [(torch.randn(args.batch, args.d) @ mix).to(dev) for _ in range(4)]  # [B, d] each
    with tempfile.TemporaryDirectory() as tmp:
        x = (torch.randn(args.stream_rows, args.d) @ mix).numpy()
        store = write_vectors(str(Path(tmp) / "s"), x, dtype="float16", shard_rows=65536, chunk_rows=4096)
        disk, ram = stream_rates(store, x, args.batch)
        print(f"batch stream alone: store on disk (float16) {disk:,.0f} rows/s, in-RAM array "
              f"{ram:,.0f} rows/s", flush=True)
        k0, p0 = args.k[0], {"topk": args.topk, "lam2": 0.0}
        from_store, in_ram = 0.0, 0.0
        for _ in range(2):  # alternated, best of two: the machine may be shared
            rate = lambda **kw: actdict_rate("sae_topk", args.d, k0, batches, args.warmup, args.steps, p0,  # noqa
                                             device=dev, **kw)
            from_store = max(from_store, rate(stream=store_batches(store, args.batch, dev.type == "cuda")))
            in_ram = max(in_ram, rate())
        print(f"training sae_topk k={k0}: fed by the store stream {from_store:,.0f} samples/s, by in-RAM "
              f"tensors {in_ram:,.0f} samples/s (ratio {from_store / in_ram:.2f})", flush=True)
    data = Path(tempfile.mkdtemp()) / "x.npy"
    np.save(data, torch.cat(batches).cpu().numpy())  # the same batches for SAELens
    params = {"sae_topk": {"topk": args.topk, "lam2": 0.0}, "sae_l1": {"lam1": args.lam1, "lam2": 0.0},
              "sae_l1_decnorm": {"lam": args.lam1, "dec_init_norm": 1.0}}  # beside SAELens (L1: standard)
    # dec_init_norm 1 (the top of the April-2024 update's range; default 0.1): pre-activations 10x larger, so
    # that the timed Adam steps (lr 1e-4) move the L0 of the sparse state (--l1-l0) as little as sae_l1's
    variants = args.variants or sorted(registry())
    print(f"{'variant':<22}{'k':>7}{'samples/s':>12}{'GFLOP/step':>12}{'% roofline':>12}"
          f"{'% roofline (dense-equivalent)':>31}{'SAELens s/s':>13}{'x SAELens':>11}", flush=True)
    for k in args.k:
        dt = torch.bfloat16 if args.autocast else torch.float32
        peak = roofline_gflops(args.batch, args.d, k, dtype=dt, device=dev)
        print(f"roofline: [{args.batch},{args.d}]x[{args.d},{k}] {dt} matmul {peak:.1f} GFLOP/s", flush=True)
        runs = [(v, v, params.get(v, {}), None) for v in variants]  # (label, variant, params, start state)
        for v in [v for v in L1_VARIANTS if v in variants and args.l1_l0]:
            init = sparse_l1_state(v, args.d, k, args.l1_l0, batches[0], params[v])
            at = [r[0] for r in runs].index(v) + 1
            runs.insert(at, (f"{v}@L0={args.l1_l0}", v, params[v], init))
        for label, v, p, init in runs:
            kept: list = []
            try:
                rate = actdict_rate(v, args.d, k, batches, args.warmup, args.steps, p, autocast=args.autocast,
                                    repeats=args.repeats, device=dev, init=init, keep=kept)
            except Exception as e:  # a variant that needs params: reported, not fatal
                print(f"{label:<22}{k:>7}  skipped: {type(e).__name__}: {e}", flush=True)
                continue
            # the machine's speed drifts (shared hosts): the peak is the best matmul seen so far, re-measured
            # right after each variant, so that a slow moment never inflates the % columns
            again = roofline_gflops(args.batch, args.d, k, dtype=dt, device=dev)
            if again > peak:
                peak = again
                print(f"roofline re-measured: {peak:.1f} GFLOP/s (used from here on)", flush=True)
            flops = step_flops(v, args.d, k, batches[0], p, init)
            pct = 100 * flops * rate / args.batch / (peak * 1e9)
            dense_s = 10 * args.batch * args.d * k / (peak * 1e9)  # the dense algorithm's matmuls at the peak
            pct_dense = 100 * dense_s / (args.batch / rate)  # ... over the measured step time
            ref = None
            if v in params and not args.no_saelens:  # measured right after ours: same machine load
                theirs = None if init is None else saelens_tensors(build(v, args.d, k, p, init))
                ref = saelens_rates(data, args, v, k, theirs).get((v, k))
            ref_s = f"{ref:>13,.0f}{rate / ref:>10.2f}x" if ref else f"{'-':>13}{'-':>11}"
            cols = f"{rate:>12,.0f}{flops / 1e9:>12.1f}{pct:>11.1f}%{pct_dense:>30.1f}%{ref_s}"
            print(f"{label:<22}{k:>7}{cols}", flush=True)
            if v in L1_VARIANTS:
                print(f"  {label}: mean L0 after the timed steps {mean_l0(kept[0], batches[0]):,.1f} of {k}",
                      flush=True)


if __name__ == "__main__":
    main()
