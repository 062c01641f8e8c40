"""The paper's Table 2 (synthetic manifolds) and a Table-3-style comparison on offline real activations,
our numbers beside the paper's (Lu et al., "Sparse Autoencoders, Again?", ICML 2025).

    .venv/bin/python benchmarks/paper_tables.py --quick            # minutes: small data, few epochs
    .venv/bin/python benchmarks/paper_tables.py                    # the scaled runs of docs/results.md
    .venv/bin/python benchmarks/paper_tables.py --sets linear --json out.json

Sets: ``linear`` (3 random 4-dim subspaces of R^40), ``mlp`` (MLP manifolds {5,5,10,10} in R^100),
``llm`` (all-MiniLM-L6-v2 ``blocks.3.hook_resid_post`` over the Debian demo corpus: ``runs/demo/store``, made
by ``actdict harvest configs/demo.yaml``), ``emb`` (MiniLM sentence embeddings of the demo corpus'
paragraphs: ``runs/demo_embeddings/store``, made by ``actdict harvest configs/demo_embeddings.yaml``).
Every model of a set trains on the same batches through ``actdict.train.loop.train`` (Adam,
CosineAnnealingWarmRestarts per step); the settings of each set are the ``SETS`` entries of
``benchmarks/paper_sets.py`` (paper App. D.2 / D.3, scaled down: see docs/results.md for every deviation).
Seeds are fixed.

Metrics (``actdict.analyze.metrics``): synthetic AD = per manifold, the mean activity over its fresh test
points, then the Otsu split (``ad_per_group``); real-data AD = the per-sample Otsu split averaged over the
test rows. RE = batch mean of the per-sample sum of squared error: ``RE`` is the paper's protocol (one
stochastic sample, the first test batch), ``RE det`` the posterior mean on the whole test set. Each row
also holds the training objective's terms on the test set (``test_terms``; for VAE / VAEase ``loss`` is -2
ELBO per point): restarts of one set on the same data (``--data-seed D --seed S`` for several S) are
compared, and each model's best chosen without the ground truth, by ``--restarts S0.json S1.json ...``
(the best by the model's own objective: on two of the five MLP data sets tried, a restart with more
latents than the ground truth had the lower loss; docs/results.md, E25).
The tables, ``--merge`` and ``--restarts`` live in ``benchmarks/paper_report.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from actdict.analyze import metrics as M
from actdict.config import safe_yaml
from actdict.harvest.store import open_store
from actdict.harvest.synthetic import mlp_manifolds, union_of_subspaces
from actdict.train.config import TrainConfig
from actdict.train.data import iter_batches, last_batches, make_split, norm_stats
from actdict.train.loop import Interrupted, train
from actdict.train.member import Member, Position
from actdict.train.protocol import make
from actdict.train.resume import load_state, save_state
from actdict.train.stopping import sigterm_flag

sys.path.insert(0, str(Path(__file__).resolve().parent))  # paper_report, paper_sets (PYTHONSAFEPATH too)
from paper_report import best_restarts, merge, print_table, restarts_table  # noqa: E402
from paper_sets import OFFICIAL, SETS, SetSpec, merged_spec, set_spec  # noqa: E402


def _key_value(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise SystemExit(f"--param wants KEY=VALUE, got {text!r}")
    return key, safe_yaml(value)


def memory_batches(x: torch.Tensor, batch: int, seed: int):
    """epoch -> the rows of x [n, d] in a seeded permutation, cut into batches [<= batch, d]."""
    def epoch(e: int, start: int = 0):
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed * 100_003 + e))
        return x[perm].split(batch)[:last_batches(len(x), batch)][start:]  # no lone last row, as the store
    return epoch


def state_hashes(spec: SetSpec, d: int, seed: int) -> dict[str, str]:
    """Per model, a hash of everything that fixes its training run but how long it runs (with the paper's
    warm restarts the learning rate of a step does not depend on the run's length): a longer run resumes
    from a shorter one's saved state and goes on exactly as one uninterrupted run."""
    common = {"d": d, "k": spec.k, "batch": spec.batch, "t0": spec.t0, "schedule": spec.schedule,
              "grad_clip": spec.grad_clip, "data": spec.data, "seed": seed}
    if spec.schedule != "cosine_restarts":
        common |= {"epochs": spec.epochs, "max_steps": spec.max_steps}
    return {name: hashlib.sha256(json.dumps(common | {"model": [v, lr, params]}, sort_keys=True,
                                            default=str).encode()).hexdigest()[:16]
            for name, (v, lr, params) in spec.models.items()}


@dataclass(frozen=True)
class RunOpts:
    """How a set is run (not what it computes): ``budget_s`` > 0 stops training (keeping the weights) once
    that many seconds have passed; ``state``: a resume-state file (``actdict.train.resume``), written every
    ``every`` steps, on SIGTERM, at the budget and at the end, and resumed from when it holds the same run
    (``state_hashes``); ``device``: where the models train (they are evaluated on the CPU)."""

    budget_s: float = 0
    state: Path | None = None
    every: int = 10_000
    device: str = "cpu"


def fit(spec: SetSpec, d: int, epoch_batches, steps: int, seed: int, opts: RunOpts = RunOpts()
        ) -> tuple[dict, int]:
    """Train every model of ``spec`` on the same batches -> ({name: model on the CPU}, steps taken)."""
    dev, state, budget_s = torch.device(opts.device), opts.state, opts.budget_s
    members = [Member(name, make(variant, d, spec.k, seed=seed, **params), lr)
               for name, (variant, lr, params) in spec.models.items()]
    cfg = TrainConfig(dicts=[], epochs=spec.epochs, batch_size=spec.batch, t0=spec.t0,
                      checkpoint_every=opts.every if state else 0, max_steps=spec.max_steps,
                      schedule=spec.schedule, grad_clip=spec.grad_clip)
    hashes, start, save = state_hashes(spec, d, seed), None, None
    if state is not None:
        for m in members:
            m.model.to(dev).train()
            m.setup(dev)
        start = load_state(state, members, hashes)
        print(f"resumed from {state} at step {start.step}" if start else f"resume state: {state}", flush=True)

        def save(pos: Position) -> None:
            save_state(state, members, hashes, pos)
    deadline = time.monotonic() + budget_s if budget_s else float("inf")
    step0 = start.step if start else 0
    calls = [step0]  # stop() is called once per step
    with sigterm_flag() as term:
        def stop() -> bool:
            calls[0] += 1
            return time.monotonic() > deadline or term()

        try:
            done = train(members, epoch_batches, cfg, dev, steps_per_epoch=steps, seed=seed, start=start,
                         save=save, stop=stop)
        except Interrupted:  # the wall-clock budget ran out (or SIGTERM; the loop saved the state there)
            done = calls[0]
            print(f"stopped at step {done} (budget of {budget_s:.0f} s or SIGTERM)", flush=True)
        else:
            if save is not None and done > step0:  # finished: the state a longer run continues from
                save(Position(epoch=done // steps, batch=done % steps, step=done))
    return {m.name: m.model.cpu().eval() for m in members}, done


@torch.no_grad()
def evaluate(model, x: torch.Tensor, batch: int, seed: int) -> dict:
    """RE (one stochastic sample of the first batch), RE det (full set), activity and codes [n, k] (the
    deterministic decoder input), per-sample AD."""
    torch.manual_seed(seed)
    re = M.reconstruction_error(x[:batch], model(x[:batch], sample=True).x_hat)
    sse, acts, codes = 0.0, [], []
    for xb in x.split(4096):
        out = model(xb, sample=False)
        sse += float(M.sq_err(xb, out.x_hat).sum())
        acts.append(out.activity.float())
        codes.append(out.codes)
    act, code = torch.cat(acts), torch.cat(codes)  # [n, k] each
    return {"re": re, "re_det": sse / len(x), "activity": act, "codes": code, "abs_codes": code.abs(),
            "ad": float(M.active_dims(act, model.active_side).double().mean())}


@torch.no_grad()
def test_terms(model, x: torch.Tensor, seed: int) -> dict[str, float]:
    """The training objective's terms on the test set [n, d], one posterior sample per point (seeded):
    each term's mean over the points. For VAE / VAEase ``loss`` is -2 ELBO per point (+ d log 2 pi), the
    figure a restart can be chosen by without the ground truth."""
    torch.manual_seed(seed)
    sums: dict[str, float] = {}
    for xb in x.split(4096):
        for key, v in model.loss_terms(xb, model(xb, sample=True)).items():
            sums[key] = sums.get(key, 0.0) + float(v) * len(xb)
    return {key: v / len(x) for key, v in sums.items()}


def group_means(v: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
    """[n, k] -> [G, k] float64: the mean row of each label, in sorted label order."""
    return torch.stack([v[torch.from_numpy(labels == g)].double().mean(0) for g in np.unique(labels)])


def group_ad(model, ev: dict, labels: np.ndarray, protocol: str = "code") -> list[int]:
    """Paper Table 2: per manifold, the Otsu split of one averaged activity vector [k].

    VAEs, ``protocol="code"``: the mean log var (``ad_per_group``, the official code's statistic);
    ``protocol="text"``: the mean sigma, split on its linear scale (Sec. 5.1: "the average sigma_z").
    SAEs (both): log of the mean |z| (Sec. 5.1 "average absolute mu_z", split on the log scale as App. D.3
    advises; the mean of log|z| is -inf for every latent that is exactly 0 on any one point).
    """
    if model.active_side == "high":
        return M.active_dims(group_means(ev["abs_codes"], labels).log(), "high").tolist()
    if protocol == "text":
        return M.active_dims(group_means((0.5 * ev["activity"]).exp(), labels), "low").tolist()
    ad = M.ad_per_group(ev["activity"], "low", labels)
    return [ad[g] for g in sorted(ad)]


@torch.no_grad()
def manifold_fit(model, ev: dict, x: torch.Tensor, labels: np.ndarray, dims: list[int], ad: list[int]
                 ) -> dict:
    """Per manifold g: RE det with every latent, with each sample keeping only its ``dims[g]`` most active
    latents (the rest of the decoder input zeroed, ``masked_re_curve`` at the ground-truth count), and
    keeping its ``ad[g]`` most active (the count the split found): how much of the fit the dimensions
    beyond the ground truth carry, and whether latents the split calls inactive carry some (docs/results.md,
    E17); and the group's mean activity of each latent, sorted (the values the Otsu split of ``group_ad``
    sees; SAEs: log of the mean |z|)."""
    high = model.active_side == "high"
    profile = group_means(ev["abs_codes"], labels).log() if high else group_means(ev["activity"], labels)
    out: dict[str, list] = {"re_all": [], "re_keep_gt": [], "re_keep_ad": [], "profile": []}
    for g, r in enumerate(dims):
        idx = torch.from_numpy(labels == g)
        full, keep, keep_ad = M.masked_re_curve(x[idx], ev["codes"][idx], ev["activity"][idx],
                                                model.active_side, model.decode, [model.k, r, ad[g]])
        out["re_all"].append(full)
        out["re_keep_gt"].append(keep)
        out["re_keep_ad"].append(keep_ad)
        out["profile"].append([round(float(v), 2) for v in profile[g].sort(descending=high).values])
    return out


def run_synthetic(name: str, spec: SetSpec, seed: int, opts: RunOpts = RunOpts()) -> dict:
    n, n_test, d, dims = (spec.data[key] for key in ("n_train", "n_test", "d", "dims"))
    data_seed = spec.data.get("seed", seed)  # --data-seed: restarts (seed) on the same data
    if name == "linear":
        x, lab = union_of_subspaces(n + n_test, d=d, dims=dims, seed=data_seed)
    else:
        x, lab = mlp_manifolds((n + n_test) // len(dims), d=d, dims=dims, seed=data_seed,
                               init=spec.data.get("init", "randn"))
        n = len(x) - n_test
    x_train, x_test, lab_test = torch.from_numpy(x[:n]), torch.from_numpy(x[n:]), lab[n:]
    steps = last_batches(n, spec.batch)
    batches = memory_batches(x_train.to(opts.device), spec.batch, seed)
    models, done = fit(spec, x.shape[1], batches, steps, seed, opts)
    rows = {}
    for mname, model in models.items():
        ev = evaluate(model, x_test, spec.batch, seed)
        ad = group_ad(model, ev, lab_test)
        rows[mname] = {"ad": ad, "ad_sigma": group_ad(model, ev, lab_test, "text"),
                       "re": ev["re"], "re_det": ev["re_det"], "ad_mean_sample": ev["ad"],
                       "test_terms": test_terms(model, x_test, seed),
                       "by_manifold": manifold_fit(model, ev, x_test, lab_test, list(dims), ad)}
    return {"rows": rows, "n_train": n, "n_test": n_test, "steps": done,
            "x_sq": float(x_test.pow(2).sum(1).mean())}


def run_store(spec: SetSpec, seed: int, root: Path, opts: RunOpts = RunOpts()) -> dict:
    store = open_store(str(root / spec.data["path"]))
    split = make_split(store.num_chunks, spec.data["test_fraction"], seed)
    x_test = torch.from_numpy(np.concatenate([np.asarray(store.read_chunk(c).acts, np.float32)
                                              for c in split["test_chunks"]]))  # [n_test, d]
    n_train = len(store) - len(x_test)
    steps = last_batches(n_train, spec.batch)
    x_sq = float(x_test.pow(2).sum(1).mean())
    mean, scale = torch.zeros(store.d), 1.0
    if spec.data.get("normalize"):  # TrainConfig.normalize="mean_scale": (x - mean) / scale, one scalar scale
        m, scale = norm_stats(store, split["train_chunks"], 8, seed)
        mean = torch.from_numpy(m)
        x_test = (x_test - mean) / scale

    def epoch_batches(e: int, start: int = 0):
        return ((x - mean) / scale
                for x in iter_batches(store, split["train_chunks"], spec.batch, 4, seed, e, start))

    models, done = fit(spec, store.d, epoch_batches, steps, seed, opts)
    rows = {}
    for mname, model in models.items():
        ev = evaluate(model, x_test, spec.batch, seed)  # RE back in raw units: * scale^2
        rows[mname] = {"re": ev["re"] * scale**2, "re_det": ev["re_det"] * scale**2, "ad": ev["ad"]}
    return {"rows": rows, "n_train": n_train, "n_test": len(x_test), "steps": done, "x_sq": x_sq,
            "scale": scale}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small data, few epochs (minutes)")
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", type=Path, default=Path("."), help="where runs/demo*/store are looked up")
    ap.add_argument("--json", type=Path, help="also write every number here")
    ap.add_argument("--budget-min", type=float, default=0,
                    help="wall-clock limit of each set's training in minutes (0 = none); the steps done are "
                         "printed")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest for these small nets)")
    ap.add_argument("--models", nargs="+", help="only these rows of each set (e.g. vaease)")
    ap.add_argument("--max-steps", type=int, default=0,
                    help="train exactly this many steps (epochs unbounded); 0 = the set's own setting")
    ap.add_argument("--n-train", type=int, default=0, help="synthetic sets: this many training points")
    ap.add_argument("--hidden", type=int, default=0, help="hidden width of every model's MLP encoder/decoder")
    ap.add_argument("--official", action="store_true", help="synthetic sets: the authors' encoder and "
                    "decoder bodies and clipped log-variance head (models.py; BatchNorm in the MLP set)")
    ap.add_argument("--lr", type=float, default=0, help="one learning rate for every model")
    ap.add_argument("--schedule", default="", help="learning-rate schedule (default: the paper's cosine "
                    "warm restarts), e.g. warmup_cosine: one decay over the run")
    ap.add_argument("--grad-clip", type=float, default=0, help="clip each model's gradient to this L2 norm")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="set a variant parameter of every model run (with --models), e.g. head=logvar "
                         "(the value is read as YAML)")
    ap.add_argument("--state", type=Path, help="keep each set's resume state in DIR/<set>.safetensors: a "
                    "killed or SIGTERMed run, or a longer one (--max-steps) of the same settings, rerun with "
                    "the same flags continues where it stopped")
    ap.add_argument("--checkpoint-every", type=int, default=10_000, help="steps between saves of --state")
    ap.add_argument("--data-init", choices=["randn", "torch"], help="MLP manifolds: how the random MLPs' "
                    "weights are drawn (harvest.synthetic.mlp_manifolds; default randn)")
    ap.add_argument("--data-seed", type=int, help="synthetic sets: draw the data with this seed (default: "
                    "--seed), so that --seed alone varies the initialisation and the batch order (restarts)")
    ap.add_argument("--device", default="cpu", help="where the models train: cpu or cuda[:N] (evaluated on "
                    "the CPU)")
    ap.add_argument("--merge", nargs="+", type=Path, metavar="JSON", help="train nothing: print the tables "
                    "of these --json outputs of one set's models run apart, as one (and write --json)")
    ap.add_argument("--restarts", nargs="+", type=Path, metavar="JSON", help="train nothing: these --json "
                    "outputs are restarts (--seed) on one --data-seed; list them by held-out loss and print "
                    "the table of each model's lowest-loss restart (the ground truth plays no part in it)")
    a = ap.parse_args(argv)
    if a.official and (bad := sorted(set(a.sets) - set(OFFICIAL))):  # before any set trains
        ap.error(f"--official applies to the synthetic sets {sorted(OFFICIAL)} only, not {bad}: add --sets "
                 + " ".join(OFFICIAL))
    if a.json:  # made now: a run of an hour must not lose its result to a missing folder at the end
        a.json.parent.mkdir(parents=True, exist_ok=True)
    if a.restarts:
        out, lines = best_restarts([json.loads(p.read_text()) for p in a.restarts])
        print(restarts_table(lines))
        for name, res in out.items():
            print_table(name, res, merged_spec(name, res))
        if a.json:
            a.json.write_text(json.dumps(out, indent=1))
        return out
    if a.merge:
        out = merge([json.loads(p.read_text()) for p in a.merge])
        for name, res in out.items():
            print_table(name, res, merged_spec(name, res))
        if a.json:
            a.json.write_text(json.dumps(out, indent=1))
        return out
    params = dict(_key_value(p) for p in a.param)
    torch.set_num_threads(a.threads)
    out = {}
    for name in a.sets:
        spec = set_spec(name, a, params)
        if spec.kind == "store" and not (a.root / spec.data["path"]).exists():
            cfg = "configs/demo.yaml" if name == "llm" else "configs/demo_embeddings.yaml"
            print(f"\n## {name}: skipped, no store at {spec.data['path']} (run `actdict harvest {cfg}`)")
            continue
        t = time.perf_counter()
        torch.manual_seed(a.seed)
        state = a.state / f"{name}.safetensors" if a.state else None
        if state:
            a.state.mkdir(parents=True, exist_ok=True)
        opts = RunOpts(a.budget_min * 60, state, a.checkpoint_every, a.device)
        res = (run_synthetic(name, spec, a.seed, opts) if spec.kind == "synthetic"
               else run_store(spec, a.seed, a.root, opts))
        res["wall_s"] = time.perf_counter() - t
        res["settings"] = {"k": spec.k, "epochs": spec.epochs, "batch": spec.batch, "t0": spec.t0,
                           "max_steps": spec.max_steps, "schedule": spec.schedule,
                           "grad_clip": spec.grad_clip, "data": spec.data,
                           "models": spec.models,
                           "quick": a.quick, "seed": a.seed, "budget_min": a.budget_min, "threads": a.threads,
                           "device": a.device}
        out[name] = res
        print_table(name, res, spec)
        if a.json:
            a.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
