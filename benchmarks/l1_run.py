"""A whole L1 SAE training run on real activations: actdict with its sparse step, actdict with it off, and
SAELens training the same loss from the same weights on the same batches, side by side.

    .venv/bin/actdict harvest configs/demo.yaml     # the demo store: MiniLM block 3, d = 384, 200k rows
    .venv/bin/python benchmarks/l1_run.py runs/demo/store --variant sae_l1_decnorm --lam1 5 --steps 600
    .venv/bin/python benchmarks/l1_run.py runs/demo/store --lam1 3 --no-saelens      # sae_l1: ours only

``benchmarks/train.py`` times single steps from two fixed states (fresh: about half the codes on; and one with
64 codes per row on). This times whole runs, in which an L1 dictionary goes from the first state to the
second within ~100 steps. The rows are the store's, normalised as the train stage does (mean removed, one
scalar scale: E||x||^2 = d, the April-2024 update's input scaling); the batches are ``--steps`` seeded
draws of ``--batch`` rows, the same for every run. Every run takes the same optimizer steps: Adam
(0.9, 0.999) at a constant ``--lr``, the gradient clipped to global norm ``--clip`` (1: SAELens's trainer
always clips at 1). Ours runs actdict's own step (``actdict.train.step.step``), once as shipped (the sparse
step once at most 5% of a batch's codes are nonzero) and once with the sparse step off.

SAELens (``--saelens-venv``; or, where no venv can be made, this interpreter with SAELens's packages first
on the child's path: ``--saelens-path``; as in ``benchmarks/train.py``; ``--no-saelens`` skips it) trains its
"standard" SAE, which is ``sae_l1_decnorm``'s loss (batch mean of the squared error summed over d, plus
l1_coefficient times sum_i f_i ||W_dec,i||), with ``apply_b_dec_to_input`` off as ours and our initial
weights, through ``SAETrainer.step``. For ``--variant sae_l1`` (paper L1, unit-norm decoder rows, lam2 0)
the SAELens run is the nearest SAELens config, not the same loss: its row is printed but is not a
like-for-like pair.

Prints the wall time of the training steps of each run (evaluation excluded), how many of our steps were
sparse, and every ``--every`` steps the mean L0 (on the batch's first 1,024 rows, after the step) and loss
of each run: ours with and without the sparse step agree to float rounding, and SAELens's follows the same
path when it trains the same loss.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))  # saelens_side beside this file (PYTHONSAFEPATH too)
from saelens_side import add_arguments, child_python  # noqa: E402

from actdict.harvest.store import open_store  # noqa: E402
from actdict.train.data import norm_stats  # noqa: E402
from actdict.train.export import TENSORS, saelens_view  # noqa: E402
from actdict.train.member import Member  # noqa: E402
from actdict.train.protocol import make  # noqa: E402
from actdict.train.step import step  # noqa: E402
from actdict.train.variants._sparse import Pattern  # noqa: E402

SAELENS_RUN = r'''
import json, sys, time, numpy as np, torch
from safetensors.torch import load_file
from sae_lens import SAETrainer, StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.config import SAETrainerConfig
a = json.loads(sys.argv[1])
x, idx = torch.from_numpy(np.load(a["x"])), torch.from_numpy(np.load(a["idx"]))  # [n, d], [steps, B]
sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=x.shape[1], d_sae=a["k"], l1_coefficient=a["lam"],
                                                    apply_b_dec_to_input=False))
with torch.no_grad():  # our initial weights in SAELens's names and layouts (the export's saelens_view)
    for param, w in load_file(a["init"]).items():
        getattr(sae, param).copy_(w)
tr = SAETrainer(SAETrainerConfig(total_training_samples=idx.numel(), train_batch_size_samples=idx.shape[1],
                                 lr=a["lr"], lr_end=a["lr"], device="cpu"), sae, iter(()))
seconds, trace = 0.0, []
for s in range(len(idx)):
    xb = x[idx[s]]
    t = time.perf_counter()
    out = tr.step(xb)
    tr.n_training_steps += 1
    loss = float(out.loss)
    seconds += time.perf_counter() - t
    if s % a["every"] == 0 or s == len(idx) - 1:
        with torch.no_grad():
            trace.append((s, float((sae.encode(xb[:1024]) != 0).sum(-1).float().mean()), loss))
print(json.dumps({"seconds": seconds, "trace": trace}), flush=True)
'''


def load_rows(path: str) -> torch.Tensor:
    """Every row of the store, normalised as the train stage does: [n, d] float32."""
    store = open_store(path)
    chunks = range(store.num_chunks)
    mean, scale = norm_stats(store, chunks, store.num_chunks, seed=0)
    x = np.concatenate([store.read_chunk(i).acts for i in chunks]).astype(np.float32)  # [n, d]
    return torch.from_numpy((x - mean) / scale)


def fresh(args, d: int):
    """The run's starting model (the same weights for every run)."""
    params = {"lam1": args.lam1, "lam2": 0.0} if args.variant == "sae_l1" else {"lam": args.lam1}
    return make(args.variant, d, args.k, seed=args.seed, **params)


def ours(x: torch.Tensor, idx: torch.Tensor, args, sparse: bool) -> dict:
    """One run of actdict's training step over the batches x[idx[s]]; returns the wall seconds of the steps,
    the number of sparse steps and the trajectory."""
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
        m = Member(args.variant, fresh(args, x.shape[1]), args.lr)
        m.setup(torch.device("cpu"))
        seconds, trace = 0.0, []
        for s in range(len(idx)):
            xb = x[idx[s]]  # [B, d]
            t = time.perf_counter()
            loss = float(step(m, xb, args.lr, contextlib.nullcontext(), None, args.clip)["loss"])
            seconds += time.perf_counter() - t
            if s % args.every == 0 or s == len(idx) - 1:
                with torch.no_grad():
                    l0 = float((m.model(xb[:1024], sample=False).codes != 0).sum(-1).float().mean())
                trace.append((s, l0, loss))
    finally:
        Pattern.if_sparse = classmethod(real)
        cls.sparse_below = shipped
    return {"seconds": seconds, "sparse_steps": sum(taken), "trace": trace}


def saelens(x: torch.Tensor, idx: torch.Tensor, args) -> dict | None:
    """The same run in SAELens (a child process: in its own venv, or with ``--saelens-path``); None if it
    cannot run."""
    py, env = child_python(args)
    if not args.saelens_path and not py.exists():
        print(f"SAELens run skipped: no {py} (create it: python3 -m venv {args.saelens_venv} && "
              f"{args.saelens_venv}/bin/pip install sae-lens torch=={torch.__version__.split('+')[0]})")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        spec = {"x": f"{tmp}/x.npy", "idx": f"{tmp}/idx.npy", "init": f"{tmp}/init.safetensors", "k": args.k,
                "lam": args.lam1, "lr": args.lr, "every": args.every}
        np.save(spec["x"], x.numpy())
        np.save(spec["idx"], idx.numpy())
        view = saelens_view(fresh(args, x.shape[1]))
        save_file({n: t.contiguous() for n, t in view.items() if n in TENSORS}, spec["init"])
        proc = subprocess.run([str(py), "-c", SAELENS_RUN, json.dumps(spec)], capture_output=True, text=True,
                              env=env)
    if proc.returncode:
        print(f"SAELens run failed:\n{proc.stderr[-2000:]}")
        return None
    return json.loads(proc.stdout.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--variant", default="sae_l1_decnorm", choices=["sae_l1", "sae_l1_decnorm"])
    ap.add_argument("--lam1", type=float, default=5.0, help="sae_l1_decnorm's lam (sae_l1's lam1)")
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--clip", type=float, default=1.0, help="global gradient-norm clip of our runs")
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    add_arguments(ap)  # --saelens-venv, --saelens-path, --no-saelens
    args = ap.parse_args()
    x = load_rows(args.store)
    idx = torch.randint(len(x), (args.steps, args.batch), generator=torch.Generator().manual_seed(args.seed))
    print(f"{args.variant} k={args.k} lam={args.lam1} on {len(x):,} rows (d={x.shape[1]}), batch "
          f"{args.batch}, {args.steps} steps, lr {args.lr}, clip {args.clip}, "
          f"{torch.get_num_threads()} threads", flush=True)
    runs = {"ours": ours(x, idx, args, True), "ours, dense only": ours(x, idx, args, False)}
    if not args.no_saelens and (theirs := saelens(x, idx, args)) is not None:
        same = args.variant == "sae_l1_decnorm"
        runs["SAELens" if same else "SAELens (standard: not the same loss)"] = theirs
    print(f"{'step':>6}" + "".join(f"{'L0 ' + n:>24}{'loss':>10}" for n in runs))
    for rows in zip(*(r["trace"] for r in runs.values()), strict=True):
        print(f"{rows[0][0]:>6}" + "".join(f"{l0:>24.1f}{loss:>10.3f}" for _, l0, loss in rows))
    base = runs["ours"]["seconds"]
    for name, r in runs.items():
        extra = f" ({r['sparse_steps']} of {args.steps} steps sparse)" if "sparse_steps" in r else ""
        print(f"{name}: {r['seconds']:.1f} s, {args.steps * args.batch / r['seconds']:,.0f} samples/s"
              f"{extra}; ours is {r['seconds'] / base:.2f}x faster", flush=True)


if __name__ == "__main__":
    main()
