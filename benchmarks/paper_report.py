"""The tables of ``benchmarks/paper_tables.py``: our rows beside the paper's numbers, and the merging of runs
made apart (``--merge``: one model per core) or restarted (``--restarts``: the lowest held-out loss wins).

Pure functions of the runs' ``--json`` results ({set: result}); nothing here trains or reads data.
"""

from __future__ import annotations

import copy

LABEL = {"sae_l1": "SAE-l1", "sae_log": "SAE-log", "sae_topk": "SAE-Tk", "vae": "VAE", "vaease": "VAEase"}
# Paper Table 2 (AD per manifold) and Table 3 (RE, AD) columns LLM-Act and Text-Emb.
PAPER_T2 = {
    "linear": {"GT": [4, 4, 4], "sae_l1": [10, 11, 8], "sae_log": [8, 8, 8], "sae_topk": [10, 10, 7],
               "vae": [13, 13, 13], "vaease": [5, 4, 4]},
    "mlp": {"GT": [5, 5, 10, 10], "sae_l1": [20, 26, 39, 29], "sae_log": [15, 28, 39, 31],
            "sae_topk": [10, 12, 18, 19], "vae": [17, 21, 20, 19], "vaease": [5, 5, 11, 11]},
}
PAPER_T3 = {
    "llm": {"sae_l1": (46.2, 38.2), "sae_log": (45.1, 58.2), "sae_topk": (45.1, 30.0), "vae": (48.0, 87.9),
            "vaease": (39.5, 22.5)},
    "emb": {"sae_l1": (0.224, 61.9), "sae_log": (0.230, 56.0), "sae_topk": (0.217, 30.0),
            "vae": (0.277, 90.0), "vaease": (0.187, 16.7)},
}


def table_synthetic(name: str, res: dict, spec) -> str:
    """Table 2 for one synthetic set (``spec``: its ``paper_tables.SetSpec``): AD per manifold, ours and the
    paper's, RE; then RE det per manifold with all latents / the ground-truth count / the AD count kept."""
    gt, pgt = list(spec.data["dims"]), PAPER_T2[name]["GT"]
    ours = " | ".join(f"ours AD{i + 1}" for i in range(len(gt)))
    paper = " | ".join(f"paper AD{i + 1}" for i in range(len(pgt)))
    lines = [f"| model | {ours} | {paper} | RE | RE det | AD/sample | AD by mean sigma |",
             "|---" * (len(gt) + len(pgt) + 5) + "|",
             f"| GT | {' | '.join(map(str, gt))} | {' | '.join(map(str, pgt))} | | | | |"]
    for m in spec.models:
        r, v = res["rows"][m], spec.models[m][0]
        mark = (" (=GT)" if r["ad"] == gt else "") + (f" (seed {r['seed']})" if "seed" in r else "")
        lines.append(f"| {LABEL[v]}{mark} | {' | '.join(map(str, r['ad']))} | "
                     f"{' | '.join(map(str, PAPER_T2[name][v]))} | {r['re']:.3g} | {r['re_det']:.3g} | "
                     f"{r['ad_mean_sample']:.2f} | {','.join(map(str, r['ad_sigma']))} |")
    heads = " | ".join(f"manifold {i + 1} (dim {r})" for i, r in enumerate(gt))
    lines += ["", "RE det per manifold with every latent / keeping each sample's ground-truth count of most "
              "active latents / keeping the manifold's AD count:", "", f"| model | {heads} |",
              "|---" * (len(gt) + 1) + "|"]
    for m in spec.models:
        b = res["rows"][m]["by_manifold"]
        cells = [f"{a:.3g} / {k:.3g} / {c:.3g}"
                 for a, k, c in zip(b["re_all"], b["re_keep_gt"], b["re_keep_ad"], strict=True)]
        lines.append(f"| {LABEL[spec.models[m][0]]} | {' | '.join(cells)} |")
    return "\n".join(lines)


def table_store(name: str, res: dict, spec) -> str:
    """The Table-3-style rows of a store set (``llm`` or ``emb``): RE and AD, ours beside the paper's."""
    col = "LLM-Act" if name == "llm" else "Text-Emb"
    lines = [f"| model | ours RE | ours RE det | ours AD | paper {col} RE | paper {col} AD |",
             "|---|---|---|---|---|---|"]
    for m in spec.models:
        r, v = res["rows"][m], spec.models[m][0]
        p = PAPER_T3[name][v]
        label = LABEL[v] + (m[len(v):] if m != v else "")
        lines.append(f"| {label} | {r['re']:.4g} | {r['re_det']:.4g} | {r['ad']:.1f} | {p[0]} | {p[1]} |")
    return "\n".join(lines)


_NOT_COMPARED = ("models", "budget_min", "threads", "device")  # settings runs of one table may differ in


def _differences(r: dict, m: dict, ignore: tuple[str, ...] = _NOT_COMPARED) -> list[str]:
    """The settings (but ``ignore``), steps and sizes in which two runs' results of one set differ."""
    key = {k: v for k, v in r["settings"].items() if k not in ignore}
    mkey = {k: v for k, v in m["settings"].items() if k not in ignore}
    differ = sorted(k for k in key.keys() | mkey.keys() if key.get(k) != mkey.get(k))
    return differ + [k for k in ("steps", "n_train", "n_test") if r[k] != m[k]]


def merge(results: list[dict]) -> dict:
    """Several runs' ``--json`` outputs ({set: result}) -> one {set: result} holding every row: for the
    models of one table trained apart (one per core; each model's initialisation and batches depend on the
    seed only, so a row is the same alone or beside the others). The runs of a set must agree on the
    data, the schedule, the seed and the steps done, and no row may come twice; ``wall_s`` becomes the sum."""
    out: dict = {}
    for res in results:
        for name, r in res.items():
            if name not in out:
                out[name] = copy.deepcopy(r)
                continue
            m = out[name]
            if differ := _differences(r, m):
                raise SystemExit(f"--merge: the {name} runs differ in {', '.join(differ)}")
            if twice := sorted(m["rows"].keys() & r["rows"].keys()):
                raise SystemExit(f"--merge: {name} rows {', '.join(twice)} come from more than one run")
            m["rows"] |= r["rows"]
            m["settings"]["models"] |= r["settings"]["models"]
            m["wall_s"] += r["wall_s"]
    return out


def best_restarts(results: list[dict]) -> tuple[dict, list[tuple]]:
    """Restarts of a synthetic set's models (runs whose ``--json`` outputs differ only in ``--seed``, on one
    ``--data-seed``) -> ({set: result holding, per model, the restart with the lowest held-out loss},
    [(set, model, seed, test loss, AD, RE det), ...]). The choice reads only the test points' loss, never the
    ground truth: for VAE / VAEase that is -2 ELBO, the objective every restart minimised."""
    best: dict = {}
    lines = []
    for res in results:
        for name, r in res.items():
            seed = r["settings"]["seed"]
            if "seed" not in r["settings"]["data"]:
                raise SystemExit(f"--restarts: the {name} run of seed {seed} has no --data-seed: its data "
                                 "differ from the other seeds'")
            r = copy.deepcopy(r)
            for m, row in r["rows"].items():
                row["seed"] = seed  # which restart a chosen row is
                lines.append((name, m, seed, row["test_terms"]["loss"], row["ad"], row["re_det"]))
            if name not in best:
                best[name] = r
                continue
            b = best[name]
            if differ := _differences(r, b, (*_NOT_COMPARED, "seed")):
                raise SystemExit(f"--restarts: the {name} runs differ in {', '.join(differ)}")
            for m, row in r["rows"].items():
                if m not in b["rows"] or row["test_terms"]["loss"] < b["rows"][m]["test_terms"]["loss"]:
                    b["rows"][m] = row
            b["settings"]["models"] |= r["settings"]["models"]
            b["wall_s"] += r["wall_s"]
    return best, sorted(lines, key=lambda t: (t[0], t[1], t[3]))


def restarts_table(lines: list[tuple]) -> str:
    """``best_restarts``' listing as a markdown table, lowest held-out loss first per set and model."""
    out = ["", "| set | model | seed | held-out loss | AD | RE det |", "|---|---|---|---|---|---|"]
    out += [f"| {name} | {m} | {seed} | {loss:.6g} | {', '.join(map(str, ad))} | {re_det:.3g} |"
            for name, m, seed, loss, ad, re_det in lines]
    return "\n".join(out)


def print_table(name: str, res: dict, spec) -> None:
    table = (table_synthetic if spec.kind == "synthetic" else table_store)(name, res, spec)
    print(f"\n## {name}: {res['n_train']} train / {res['n_test']} test rows, {res['steps']} steps, "
          f"{res['wall_s']:.0f} s\n\n{table}", flush=True)
