"""``actdict variants NAME --check --ddp``: does a variant train under torchrun as it trains in one process?

Under torchrun each rank computes the loss on its share of every global batch and the loop averages the
gradients, weighted by rows (``train.dist``): one process's step exactly when the loss is a mean over rows,
its batch statistics come from ``dist.batch_mean`` / ``global_mean`` and its noise from
``dist.noise_like``. A variant that takes a batch mean with ``.mean(0)`` or draws ``torch.randn_like`` trains
something else on 2 ranks, with no error. This check trains it both ways, with actdict's own loop, and
compares what comes out:

* a store of 1,200 seeded random rows (d = 8) in a temporary folder, split 80/20 by seed;
* ``actdict train`` in one process, then under ``python -m torch.distributed.run --standalone
  --nproc-per-node 2`` (gloo, CPU), each a subprocess of this interpreter with one thread, batches of 33 rows
  (the ranks take 16 and 17) for 2 epochs at lr 0.01, seed 1;
* every tensor of the two final checkpoints equal within rtol 1e-4, atol 1e-5, and the last logged loss
  within 1e-4: the float32 difference of summing the ranks' gradients in another order, which
  ``tests/test_ddp.py`` allows actdict's own variants.

A variant's plugin must be installed where the subprocesses import it (an entry point, as for torchrun). It
takes about 20 s: the ranks start, import torch and meet; the training itself is short.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

RTOL, ATOL = 1e-4, 1e-5
TIMEOUT = 600  # seconds for each training (it takes about 10)
GRACE = 60  # for torchrun to stop its ranks once told to: it waits 30 s for them before their SIGKILL
HINT = ("a loss of statistics across the batch takes them from actdict.train.dist.batch_mean / global_mean, "
        "random noise from dist.noise_like (docs/variants.md, 'Your own variant')")


def config(root: Path, run: str, store: str, variant: str, params: dict[str, Any], k: int) -> Path:
    """The YAML of one of the two trainings (``run``: its run folder's name)."""
    entry = {"name": variant, "variant": variant, "k": k, "lr": 0.01, "params": params}
    cfg = {"run_dir": str(root / run), "seed": 1, "store": store, "threads": 1,
           "train": {"epochs": 2, "batch_size": 33, "test_fraction": 0.2, "device": "cpu", "dicts": [entry]}}
    path = root / f"{run}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def train(cfg: Path, ranks: int) -> str | None:
    """``actdict train cfg`` on ``ranks`` processes; None, or why it failed (``failure``). A training that
    outlives ``TIMEOUT`` (a rank waiting on a collective another skips) is stopped as torchrun stops its
    ranks, SIGTERM to it (it passes it on, then kills the ranks after its grace period), then SIGKILL: no
    rank is left running once the check has returned. Its output goes to files beside the config, which a
    rank still alive holds open without keeping the check waiting, as a pipe would."""
    launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"] if ranks > 1 else []
    cmd = [sys.executable, *launch, "-m", "actdict.cli", "train", str(cfg)]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    log = cfg.with_suffix(".err")
    with open(os.devnull, "w") as out, open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        try:
            proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return (f"it did not end within {TIMEOUT} s, and its processes were stopped: a rank that waits "
                    "on a collective (all_reduce, barrier) that another rank skips waits for ever")
    return None if proc.returncode == 0 else f"exit {proc.returncode}: {failure(log.read_text())}"


def failure(stderr: str) -> str:
    """The line of a failed training's stderr that says why: actdict's own line (``actdict: ...``, under
    torchrun ``actdict (rank R of N): ...``) but for a rank's note that another rank failed, else the
    exception a rank's traceback ends with (``[rank1]: RuntimeError: ...``), else the last line. torchrun's
    summary, which ends its stderr, names no cause ('====...', 'traceback : To enable traceback see')."""
    said = [ln.strip() for ln in stderr.splitlines() if ln.strip() and "%|" not in ln]  # progress bars aside
    said = [re.sub(r"^\[rank(\d+)\]: ", r"rank \1: ", ln) for ln in said]
    ours = [ln for ln in said if re.match(r"(rank \d+: )?actdict( \(rank \d+ of \d+\))?: ", ln)]
    raised = [ln for ln in said if re.match(r"rank \d+: [A-Za-z_][\w.]*(Error|Exception|Interrupt)\b", ln)]
    own = [ln for ln in ours if "another rank of this torchrun run failed" not in ln]
    line = next(iter(own + raised + ours), said[-1] if said else "no message")
    return line[:300]


def differences(one: dict[str, torch.Tensor], two: dict[str, torch.Tensor]) -> list[str]:
    """Each tensor of the 2-rank checkpoint ``two`` that is not the one-process ``one``'s within the
    tolerance, with its largest difference."""
    bad = []
    for name, a in one.items():
        b = two.get(name)
        if b is None or b.shape != a.shape:
            bad.append(f"{name} is missing or of another shape")
        elif not torch.allclose(b.double(), a.double(), rtol=RTOL, atol=ATOL):
            gap = float((b.double() - a.double()).abs().max())
            bad.append(f"{name} differs by up to {gap:.3g} (largest |value| {float(a.abs().max()):.3g})")
    return bad


def no_torchrun() -> str | None:
    """Why this torch cannot run the 2-rank training (a build without torch.distributed, or without its
    gloo backend, which CPU ranks use), found before anything is trained; None when it can."""
    import torch.distributed as dist

    if not dist.is_available():
        return (f"this torch ({torch.__version__}) was built without torch.distributed, so torchrun "
                "cannot run: run the check where it has it (Linux and Windows wheels do; its plain --check "
                "needs none)")
    if not dist.is_gloo_available():
        return (f"this torch ({torch.__version__}) has no gloo backend, which the check's CPU ranks use: run "
                "it where torch has it (the wheels of pytorch.org do)")
    return None


def check(variant: str, params: dict[str, Any] | None = None, k: int = 16) -> list[str]:
    """What differs between ``variant`` trained in one process and on 2 ranks ([] when nothing)."""
    from actdict.harvest.store import write_vectors
    from actdict.train import checkpoint

    if why := no_torchrun():
        return [why]
    x = np.random.default_rng(3).standard_normal((1200, 8)).astype(np.float32)  # [1200, 8]
    with tempfile.TemporaryDirectory(prefix="actdict-ddp-check-") as tmp:
        root = Path(tmp)
        store = write_vectors(str(root / "store"), x, shard_rows=512, chunk_rows=64).path
        for run, ranks in (("one", 1), ("two", 2)):
            if why := train(config(root, run, store, variant, params or {}, k), ranks):
                if f"unknown dictionary variant {variant!r}" in why:  # registered here, not there
                    return [f"the trainings (python -m actdict.cli train, subprocesses) do not find "
                            f"{variant!r}: install its package in this environment (pip install -e PATH), "
                            "with its entry point, as torchrun's ranks need it (docs/variants.md)"]
                where = "in one process" if ranks == 1 else "on 2 ranks"
                return [f"the training {where} failed ({why})"]
        (a, ma), (b, mb) = (checkpoint.load(root / run / "dicts" / variant) for run in ("one", "two"))
        bad = differences(a.state_dict(), b.state_dict())
        la, lb = ma["history"][-1]["loss"], mb["history"][-1]["loss"]
        if not np.isclose(lb, la, rtol=RTOL, atol=0):
            bad.append(f"the last loss is {lb:.6g} on 2 ranks, {la:.6g} in one process")
    return bad + [HINT] if bad else []
