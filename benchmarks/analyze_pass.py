"""What each part of the analysis pass costs per batch, beside the batch's forward.

For each k: one batch of B rows at d through a dictionary (``--variant``: a TopK SAE of ``--ad`` active
latents per row, as a trained SAE; or any registered variant), then ``ModelEval.update`` on it (its own
forward, then the accumulators behind summary.json and the feature pages: sums, the Otsu mask, the
FeatureTracker's top / bottom / quantile samples / histograms; so the accumulators cost a cell less 1x) with
the options an analysis turns on one by one: labels of
``--classes`` classes (per-class AD), their class features (``analyze.class_features``: per-class sums of
|z|, its square and fires, counts of |z| in bins for their AUROC, and at the end the features' d, AUROC and
classes), and co-activation counts
(``analyze.cofire``). Prints seconds per batch and each as a multiple of the forward's, measured side by side
in one run (median of ``--repeats``, after one untimed batch: the first batch also computes the paper's
stochastic RE and masked curve). ``summary`` is the end of the pass (``ModelEval.summary``: the summary dict
and class_separation; ``ModelEval.class_profile``), once per analysis, not per batch.

    python benchmarks/analyze_pass.py                     # k 4096, 16384 at d 512, AD 32, B 4096, 17 classes
    python benchmarks/analyze_pass.py --ks 16384 --threads 2 --variant sae_l1
    python benchmarks/analyze_pass.py --device cuda        # on a GPU (each timed call synchronised)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # cofire beside this file (PYTHONSAFEPATH too)
from cofire import median_seconds  # noqa: E402  (benchmarks/cofire.py)

from actdict.analyze.config import AnalyzeConfig  # noqa: E402
from actdict.analyze.evaluate import ModelEval  # noqa: E402
from actdict.analyze.heap import reuse_freed_memory  # noqa: E402
from actdict.train.protocol import make  # noqa: E402

STEPS = ("forward", "update", "+ labels", "+ class features", "+ cofire")
OPTIONS = ((False, False, False), (True, False, False), (True, True, False), (True, True, True))
"""(labels, class features, cofire) of each update column."""


def _evaluator(model, classes: int, class_features: bool, cofire: bool, device: torch.device) -> ModelEval:
    cfg = AnalyzeConfig(class_features=5 if class_features else 0, cofire=8 if cofire else 0)
    return ModelEval(model, cfg, seed=0, device=device, n_classes=classes,
                     cofire=cofire, class_features=class_features, class_auroc=class_features)


def _synced(fn, device: torch.device):
    """``fn`` followed by a wait for the device's queued work (CUDA runs asynchronously: without it a call
    would be timed as the launch of its kernels)."""
    if device.type != "cuda":
        return fn
    return lambda: (fn(), torch.cuda.synchronize(device))


@torch.no_grad()
def measure(model, x: torch.Tensor, classes: int, repeats: int) -> tuple[list[float], float]:
    """([forward, then update with each option added] seconds per batch, the end of the pass's seconds:
    ``summary`` and ``class_profile`` of the last evaluator, every option on) of batch x [B, d], on x's
    device (the model's too)."""
    dev = x.device
    rows = torch.arange(len(x), device=dev)  # [B]
    cls = rows % classes  # [B] every class on every batch
    times = [median_seconds(_synced(lambda: model(x, sample=False), dev), repeats)]
    for labels, cf, co in OPTIONS:
        ev = _evaluator(model, classes if labels else 0, cf, co, dev)
        lab = cls if labels else None
        with reuse_freed_memory():  # as run.one_pass: each batch's temporaries in the last's memory
            ev.update(x, rows, lab)  # the first batch: the paper's one-sample RE and masked curve besides
            step = _synced(lambda ev=ev, lab=lab: ev.update(x, rows, lab), dev)
            times.append(median_seconds(step, repeats))
    n = len(x) * (repeats + 1)
    end = _synced(lambda: (ev.summary(n, x.sum(0), (x * x).sum(0), classes=list(range(classes))),
                           ev.class_profile()), dev)  # run.py's end of the pass: both, once
    return times, median_seconds(end, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ks", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--variant", default="sae_topk", help="a registered variant (default: TopK SAE)")
    ap.add_argument("--ad", type=int, default=32, help="sae_topk's topk: active features per row")
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--classes", type=int, default=17, help="label classes (the Pile's subsets: 17)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    a = ap.parse_args()
    if a.classes < 2 or a.rows < 2:  # one class has no other rows to be told from
        ap.error("--classes and --rows must be >= 2")
    device = torch.device(a.device)
    if device.type not in ("cpu", "cuda") or (device.type == "cuda" and not torch.cuda.is_available()):
        ap.error(f"--device {a.device}: " + ("this torch sees no CUDA device" if device.type == "cuda"
                                             else "cpu or cuda[:N]"))
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x = torch.randn(a.rows, a.d).to(device)  # [B, d] (the same values on any device)
    where = f"{a.threads} thread(s)" if device.type == "cpu" else str(device)
    print(f"{a.variant}, B {a.rows}, d {a.d}, {a.classes} classes, {where}, torch "
          f"{torch.__version__}; seconds per batch (x the forward)")
    print(f"{'k':>6} " + " ".join(f"{s:>17}" for s in STEPS) + f" {'summary (once)':>15}")
    for k in a.ks:
        params = {"topk": a.ad} if a.variant == "sae_topk" else {}
        model = make(a.variant, a.d, k, seed=0, **params).to(device).eval()
        times, end = measure(model, x, a.classes, a.repeats)
        cells = [f"{times[0]:17.3f}"] + [f"{t:8.3f} ({t / times[0]:5.2f}x)" for t in times[1:]]
        print(f"{k:>6} " + " ".join(cells) + f" {end:15.3f}")


if __name__ == "__main__":
    main()
