"""The ``analyze`` stage: evaluate trained dictionaries on the test chunks, write summary + report.

One pass over the test chunks (``<run_dir>/split.json``) feeds every dictionary, so the store is
read once; every per-feature statistic is streamed in the same pass (``toptokens``). Outputs
``<run_dir>/summary.json``, ``<run_dir>/features/<name>.json`` (every feature's contexts, schema in
``actdict.analyze.features``), ``<run_dir>/report.html`` and ``<run_dir>/report/<name>.html``, each carrying
the analysis's ``run_id``; summary.json is written last.

summary.json (version 2 = version 1 plus keys; floats rounded to 6 significant digits, non-finite -> null)::

    {"version": 2, "run_dir": str, "store": str, "hook": str | null, "d": int,
     "run_id": str,        # this analysis (time + random): every other output carries it (v2)
     "test_chunks": [int], "n_test_rows": int,          # rows evaluated (after max_test_rows)
     "ce": null | {"ce_clean": float, "ce_zero": float, "n_tokens": int, "windows": int, "ctx": int},
     "labels": null | str,                              # the labels file of the per-class AD
     "labels_field": null | str,                        # or the source's field that labels the rows
     "models": {"<name>": {
        "variant": str, "k": int, "active_side": "low" | "high",
        "re_sample": float,   # paper RE: one stochastic forward (seed = common.seed), first test batch
        "re_det": float,      # RE of the deterministic path (sample=False) over all evaluated rows
        "ad": float, "ad_std": float,  # active dims per row (Otsu split of Forward.activity): mean, std
        "l0": float,          # mean number of non-zero codes per row
        "ev": float | null, "fvu": float | null,  # explained variance = 1 - fvu (deterministic path)
        "cos": float,         # mean per-row cosine similarity of x and x_hat (v2)
        "dead": int, "dead_frac": float,  # latents never active (per the Otsu active mask) on the rows
        "dense": int, "dense_threshold": float,  # latents active on > dense_threshold of the rows (v2)
        "ad_hist": {"values": [int], "counts": [int]},
        "density_hist": {"edges": [float], "counts": [int], "dead": int},  # log10 fraction active
        "masked_curve": {"kept": [int], "re": [float], "rows": int, "sample": bool},  # paper Fig. 4 (v2)
        "ad_class": [{"label", "n", "ad", "ad_of_mean"}],  # only with analyze.labels (v2)
        "ad_class_unlabelled": int,  # with ad_class: evaluated rows without a label (NaN, ""), left out
        "class_features": [{"label", "n", "features": [{"feature": int, "d": float | null, "abs_in": float,
                            "abs_out": float, "fire_in": float, "fire_out": float, "auroc": float,
                            "auroc_err": float, "tokens": [str]}]}],
                              # with analyze.labels and class_features: per class, the features whose
                              # |code| most separates its rows from the other labelled rows (Cohen's d;
                              # null: infinite, the code constant in the class and in the others, listed
                              # first); auroc: of |code|, class vs the rest, ties one half, within
                              # auroc_err of the rows' own (binned: analyze.auroc; absent past
                              # CLASS_AUROC_MAX_MIB); tokens: its top 3 (an embeddings store: its top
                              # texts' first words)
        "ce": float, "kl": float, "ce_recovered": float,   # only with analyze.ce_loss (v2)
        "training_warning": str | null,  # the warning its training saved (diverged, learned almost nothing)
        "training_log": null | {"step": [int], "epoch": [int], "lr": [float], "<term>": [float | null]},
                              # its loss terms over training (logs/<name>.jsonl, <= 1000 points: train.log)
                              # and eval_ad, eval_l0, eval_ev, eval_live of each interval's last batch
        "features_file": str,  # features/<name>.json, relative to run_dir (v2)
        "config_hash": str | null,  # its checkpoint's cfg.json config_hash: which training was analysed
        "wordpiece": bool,     # WordPiece token strings ("##" continuations): how contexts are joined (v2)
        "null_decoder": int | null,  # latents whose decoder column is <= 1e-6 x the largest (analyze.compare;
                              # null: a dictionary without Dictionary.decode)
        "similar": {"<other>": {"mmcs": float | null, "matched": float | null, "live": int}},
                              # decoder directions shared with each other dictionary (analyze.compare)
        "formation": null | {"step": [int], "mmcs": [float | null], "matched": [float | null]},
                              # its live features found among each snapshot's directions
                              # (train.snapshot_every; analyze.formation)
        "features": [{"index": int, "fires": int, "density": float,  # the n_features most active
                      "nearest": {"<other>": {"feature": int, "cos": float}},  # its closest there
                      "logits": {"up": [[str, float]], "down": [[str, float]]},  # analyze.logit_effects:
                              # the tokens whose logits its direction raises / lowers most, and by how much
                      "top": [{"act": float, "row": int, "doc": int, "pos": int, "token_id": int,
                               "token": str, "before": [str], "after": [str],
                               "text": str}]}]}}}  # text: embeddings stores, or with analyze.texts

"Active" (for AD, dead/dense latents, density, the sampled contexts) is the per-row Otsu active mask of
``Forward.activity`` on the model's ``active_side``; for an SAE this is ``codes != 0`` on every row with at
least one exact zero (a row whose k codes are all nonzero is split among them: ``analyze.metrics``).
The masked-dimensions curve (paper Fig. 4, official code's protocol) takes the first ``mask_curve_rows``
test rows, one forward (stochastic when ``mask_curve_sample``: VAE models decode a sample), keeps per row
the m most active latents (by activity: smallest log variance / largest |z|) of the decoder input
(``Forward.extras["dec_in"]``, else ``Forward.codes``), zeroes the rest, decodes (``Dictionary.decode``)
and reports the RE for each m of a grid over 0..k.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from actdict.analyze.budget import class_auroc_within, class_features_within, cofire_within, largest_class
from actdict.analyze.compare import directions, live, null_columns, similarity
from actdict.analyze.config import AnalyzeConfig
from actdict.analyze.evaluate import ModelEval
from actdict.analyze.features import add_classes, build_features, hit_keys, summary_hits
from actdict.analyze.formation import feature_cosines, formation
from actdict.analyze.heap import reuse_freed_memory
from actdict.analyze.inputs import (
    AnalyzeError,
    chunks_read,
    dict_folders,
    evaluated_rows,
    found_dicts,
    held_out_batches,
    held_out_chunks,
    load_models,
    open_trained_store,
    other_model,
    other_split,
    other_store,
    read_labels,
    readable_variant,
    retraining,
    skipped_notes,
    source_labels,
    trained_hook,
    trained_records,
)
from actdict.analyze.lens import labels_of
from actdict.analyze.lm import add_logit_effects, causal_lm, named, splice_models, splice_setup
from actdict.analyze.outputs import clean_json, new_run_id, previous_models, remove_output_temps
from actdict.analyze.report import write_report
from actdict.analyze.tables import summary_lines
from actdict.analyze.textfile import check_texts, read_texts
from actdict.analyze.texts import row_texts
from actdict.analyze.toptokens import resolve_decoder
from actdict.bars import bar_disabled, bar_timing
from actdict.config import Common, check_device, device_said
from actdict.dryrun import StagePlan
from actdict.errors import ActdictError, one_line
from actdict.files import check_not_linked, write_atomic
from actdict.lock import check_writable, write_problem
from actdict.rng import kept_rng
from actdict.signals import rank
from actdict.train.identity import describe_store
from actdict.train.log import trained_curve
from actdict.train.loop import resolve_device
from actdict.train.resume import listed

SUMMARY_VERSION = 2
KEEP_NEAREST = 8
"""A feature's ``nearest`` names its nearest feature in at most this many other dictionaries, those of highest
cosine: in every other one, a run's features files held n(n - 1) k of them (a sweep of 20 at k = 384: 0.4 MB
of each 1.9 MB file, as much again in the report's parts; of 48 at k = 4,096, ~1 GB)."""


def check(common: Common, cfg: AnalyzeConfig) -> None:
    """What can be checked before any stage runs: the labels and texts files exist (the texts' format too),
    the device is there."""
    check_device(cfg.device, "analyze.device", float64=True)
    if cfg.labels and not Path(cfg.labels).expanduser().is_file():
        raise AnalyzeError(f"analyze.labels: {cfg.labels} not found (a .npy file with one label per store "
                           "row)")
    if cfg.texts:  # its count against the store's rows once the store is there (``check_texts``)
        check_texts(cfg.texts, None, cfg.texts_column)


def plan(common: Common, cfg: AnalyzeConfig, coming: list[str] | tuple = ()) -> StagePlan:
    """``actdict analyze CONFIG --dry-run``: which dictionaries the analysis would score (``analyze.dicts``,
    else every one in ``<run_dir>/dicts`` and ``coming``, those the run's training writes) and where."""
    run_dir = Path(common.run_dir)
    names = list(cfg.dicts) or list(dict.fromkeys([*dict_folders(run_dir / "dicts")[0], *coming]))
    rows = ("every held-out row" if cfg.max_test_rows is None else
            f"at most {cfg.max_test_rows:,} held-out rows")
    if not names:  # none there, none coming: the analysis stops on it
        try:
            found_dicts(run_dir, [])
        except AnalyzeError as e:
            return StagePlan([f"analyze: would stop: {e}"], stops=True)
    if not coming:  # the dictionaries as they are now: the analysis refuses a store they did not learn, and
        try:  # stops where analyze.dicts names one that is not there (finished)
            learned_store(common, cfg, run_dir, trained_records(run_dir, cfg.dicts))
            found_dicts(run_dir, list(cfg.dicts))
        except ActdictError as e:
            return StagePlan([f"analyze: would stop: {e}"], stops=True)
    if why := unbuilt(run_dir, [n for n in names if n not in coming], names if not cfg.dicts else []):
        return StagePlan([f"analyze: would stop: {why}"], stops=True)  # (those the training leaves as is)
    if why := write_problem(written_folders(run_dir, names), WRITES):
        return StagePlan([f"analyze: would stop: {why}"], stops=True)
    return StagePlan([f"analyze: {listed(names)} on {rows} -> {run_dir / 'summary.json'}, "
                      f"{run_dir / 'report.html'}, {run_dir / 'report'}/, {run_dir / 'features'}/"])


WRITES = "the summary, feature files and report"  # what an analysis writes in its run folder


def written_folders(run_dir: Path, names: list[str]) -> list[Path]:
    """The run folder and those of its folders an analysis of ``names`` writes in that exist now (its
    report's parts folders: a new analysis removes their .js files)."""
    parts = [run_dir / "report" / f"{n}.parts" for n in names]
    return [run_dir, *(p for p in (run_dir / "features", run_dir / "report", *parts) if p.is_dir())]


def unbuilt(run_dir: Path, names: list[str], every: list[str] = ()) -> str | None:
    """Why ``checkpoint.load`` would refuse one of the dictionaries ``names`` of the run folder (its variant's
    plugin is not installed here), as ``inputs.load_models`` says it: when the analysis reads ``every``
    dictionary (no analyze.dicts), a plugin's adds how to read the others. None when every variant is
    registered (or none is read)."""
    from actdict.train.checkpoint import unknown_variant

    try:
        records = trained_records(run_dir, names) if names else {}
    except ActdictError:  # a damaged cfg.json: the analysis says so where it reads it
        return None
    why = {n: unknown_variant(r) for n, r in records.items() if isinstance(r, dict) and "variant" in r}
    name = next((n for n, w in sorted(why.items()) if w), None)
    if name is None:
        return None
    others = [n for n in every if n != name and (n not in names or readable_variant(run_dir / "dicts" / n))]
    hint = f"; or read the others without it: analyze.dicts=[{', '.join(others)}]" * bool(
        others and records[name].get("plugin"))
    return f"{run_dir / 'dicts' / name}: {why[name]}{hint}"


@kept_rng()
def main(common: Common, cfg: AnalyzeConfig) -> None:
    """Analyse the run's dictionaries, holding the run folder's analysis lock (two analyses of one folder
    would write the same report files; a training may run beside it). Under torchrun only rank 0 analyses
    (the others return at once: the analysis is one process's work)."""
    from actdict.harvest.store import read_lock
    from actdict.lock import ANALYZE_LOCK, folder_lock

    if rank() > 0:  # under torchrun (`actdict run` after a DDP training): one writer
        return
    with folder_lock(common.run_dir, f"run folder {common.run_dir} (analysis)", name=ANALYZE_LOCK), \
            read_lock(common.store_path):  # a harvest or import that changes the store waits, and vice versa
        _main(common, cfg)


def learned_store(common: Common, cfg: AnalyzeConfig, run_dir: Path, records: dict[str, dict]):
    """The store the dictionaries (``records``: their cfg.json) learned, opened; AnalyzeError when
    ``common.store_path`` is another (rewritten, grown, or another harvest)."""
    store = open_trained_store(common.store_path, trained_hook(records), run_dir, cfg.dicts, records)
    if changed := other_store(records, describe_store(store, common.store_path)):
        raise AnalyzeError(f"the store {store.path} is not the one {sorted(changed)} learned ("
                           + "; ".join(f"{n}: {', '.join(c[:4])}" for n, c in sorted(changed.items()))
                           + "): its held-out chunks are not theirs, and analysis could score them on rows "
                           "they learned; point `store` at the store they learned, or retrain them on this "
                           "one (actdict train: it notices the change)")
    return store


def checked_inputs(common: Common, cfg: AnalyzeConfig, run_dir: Path) -> tuple[dict, object, list[int], dict]:
    """What the analysis reads, checked before its pass: (each dictionary's cfg.json record, the store they
    learned, its held-out chunks, the loaded dictionaries). Refused: a store other than the one they learned,
    another split than the run folder's, output folders that are links or not writable; noted: folders of
    the run that are no dictionaries, retrained or removed dictionaries, another model's store."""
    for note in skipped_notes(run_dir, cfg.dicts):
        print(one_line(f"analyze: note: {note}"))  # folder names of a shared run folder
    records = trained_records(run_dir, cfg.dicts)  # each dictionary's cfg.json
    if note := retraining(run_dir, records):
        print(one_line(f"analyze: note: {note}"))
    store = learned_store(common, cfg, run_dir, records)
    for note in other_model(records, store.manifest.get("model")):
        print(one_line(f"analyze: note: {note}"))
    test_chunks = held_out_chunks(run_dir, store.num_chunks, records, common.seed)
    if bad := other_split(records, test_chunks):
        raise AnalyzeError(f"{bad} were trained with another split than {run_dir / 'split.json'} (other "
                           "held-out chunks): analysis would score them on rows they learned; retrain them "
                           "with this run's settings, or leave them out (analyze.dicts)")
    models = load_models(run_dir, cfg.dicts, store.d, records)
    parts = [run_dir / "report" / f"{n}.parts" for n in models]  # whose .js files a new analysis removes
    check_not_linked([run_dir / "features", run_dir / "report", *parts], "the feature files and report pages")
    check_writable(written_folders(run_dir, list(models)), WRITES, owner="analyze")  # before the pass
    dropped = sorted(set(previous_models(run_dir)) - set(models))
    if gone := [n for n in dropped if not (run_dir / "dicts" / n).is_dir()]:  # removed since: not left out
        print(one_line(f"analyze: note: {listed(gone)}, in the previous analysis, have no folder in "
                       f"{run_dir / 'dicts'} any more: their features/<name>.json and report/<name>.html "
                       "are left from it (remove them, or put the dictionaries back)"))
    if dropped := [n for n in dropped if n not in gone]:
        print(f"analyze: note: summary.json and the report will hold {listed(sorted(models))} only, not "
              f"{listed(dropped)} "
              "(analyze.dicts); run without analyze.dicts to report every dictionary")
    return records, store, test_chunks, models


def one_pass(store, test_chunks: list[int], cfg: AnalyzeConfig, labels, evals: dict,
             device: torch.device) -> tuple[int, Tensor, Tensor]:
    """The one pass over the held-out rows (at most ``analyze.max_test_rows``): every dictionary's
    ``ModelEval`` updated batch by batch (with the rows' class labels, if any) -> (rows, the inputs' sum
    [d] and sum of squares [d] about the first row, in float64: EV's variance)."""
    d = store.d
    sum_x = torch.zeros(d, dtype=torch.float64, device=device)  # [d]
    sum_x2 = torch.zeros(d, dtype=torch.float64, device=device)  # [d]
    n, shift = 0, None
    with reuse_freed_memory():  # each batch's large temporaries in the last's memory: no page faults
        for acts, rows_np in held_out_batches(store, test_chunks, cfg.batch_size, cfg.max_test_rows):
            x = torch.as_tensor(acts).to(device, torch.float32)  # [B, d]
            shift = x[0].to(torch.float64) if shift is None else shift  # [d] the first row: moments about it
            x64 = x.to(torch.float64) - shift  # (identical rows sum to 0 exactly, not to a rounding residue)
            sum_x += x64.sum(0)
            sum_x2 += (x64 * x64).sum(0)
            rows = torch.as_tensor(rows_np, device=device)  # [B] global rows
            cls = None if labels is None else torch.as_tensor(labels[n:n + len(x)], device=device)
            for ev in evals.values():
                ev.update(x, rows, cls)
            n += len(x)
    if n == 0:
        raise AnalyzeError(f"no test rows to evaluate (test chunks {test_chunks})")
    return n, sum_x, sum_x2


def shared(datas: dict, evals: dict, d: int, device: torch.device, on: bool) -> tuple[dict, dict]:
    """The decoder directions each dictionary has (unit [k, d], norms [k]; none without
    ``Dictionary.decode``) and, when ``on`` (``analyze.shared_directions``), the share of each one's live
    features another has within cosine 0.9 (MMCS, by name and other name); each feature's nearest live
    feature in the others goes into its ``datas`` record (``nearest``: a sweep's closest ``KEEP_NEAREST``)."""
    dirs = {name: dn for name, ev in evals.items()  # [k, d], [k]
            if (dn := directions(ev.model, ev.model.k, d, device)) is not None}
    alive = {name: live(evals[name].fire, norm) for name, (_, norm) in dirs.items()}
    units = {name: u for name, (u, _) in dirs.items()}
    similar, pairs = similarity(units, alive, progress=True) if on else ({}, {})
    for (a, b), (best, arg) in pairs.items():  # each feature's nearest live feature in every other one
        for f, j, c in zip(range(len(arg)), arg.tolist(), best.tolist(), strict=True):
            if j >= 0:
                datas[a]["features"][f].setdefault("nearest", {})[b] = {"feature": j, "cos": c}
    for rec in (rec for data in datas.values() for rec in data["features"]):  # a sweep's: the closest only
        if len(near := rec.get("nearest", {})) > KEEP_NEAREST:
            rec["nearest"] = dict(sorted(near.items(), key=lambda bn: -bn[1]["cos"])[:KEEP_NEAREST])
    return dirs, similar


def start_line(names: list[str], run_dir: Path, rows: int, hook: str | None, chunks: int, device,
               cfg: AnalyzeConfig, held: int | None = None) -> str:
    """What the analysis says before its pass (a log then tells what it scores, on what, where): the
    dictionaries (a sweep's by number, first and last), the rows and ``chunks`` it reads, of the ``held``
    held-out chunks when ``analyze.max_test_rows`` leaves some unread, the device, the model passes."""
    listed_names = listed(names)
    passes = [what for what, on in (("CE/KL", cfg.ce_loss), ("logit effects", cfg.logit_effects)) if on]
    of = (f"{chunks} of {held} chunks: analyze.max_test_rows" if held is not None and held > chunks else
          f"{chunks} chunk{'s' if chunks != 1 else ''}")
    return (f"analyze: {listed_names} of {run_dir} on {rows:,} held-out rows of {hook} ({of}) on "
            f"{device_said(device)}" + (f"; through the model: {', '.join(passes)}" if passes else ""))


def _main(common: Common, cfg: AnalyzeConfig) -> None:
    run_id = new_run_id()  # at the start: its time is when this analysis began
    run_dir = Path(common.run_dir)
    device = resolve_device(cfg.device)
    records, store, test_chunks, models = checked_inputs(common, cfg, run_dir)
    evaluated = evaluated_rows(store, test_chunks, cfg.max_test_rows)  # [n] global rows, in the pass's order
    read = chunks_read(store, test_chunks, cfg.max_test_rows)  # fewer under max_test_rows
    print(one_line(start_line(list(models), run_dir, len(evaluated), store.manifest.get("hook"), len(read),
                              device, cfg, held=len(test_chunks))))
    known = {}  # an embeddings store's texts, read with the labels from its source (row_texts: not again)
    labels, classes = (source_labels(store, evaluated, cfg.labels_field, None if cfg.texts else known)
                       if cfg.labels_field else read_labels(cfg.labels, len(store), evaluated))
    text_files = check_texts(cfg.texts, len(store), cfg.texts_column) if cfg.texts else None  # before it
    lm = causal_lm(store, device, cfg) if cfg.ce_loss or cfg.logit_effects else None  # before the pass
    splicing = splice_setup(lm, cfg, store, test_chunks) if cfg.ce_loss else None
    counted = cofire_within(models, cfg, len(evaluated))
    by_class = class_features_within(models, len(classes), cfg)
    most = largest_class(labels)  # the most labelled rows of one class: the AUROC counts' dtype
    binned = class_auroc_within({n: models[n] for n in by_class}, len(classes), most)
    evals = {name: ModelEval(m, cfg, common.seed, device, len(classes), name in counted, name in by_class,
                             name in binned, most) for name, m in models.items()}

    d = store.d
    n, sum_x, sum_x2 = one_pass(store, test_chunks, cfg, labels, evals, device)

    ce = splice_models(*splicing, store.manifest["hook"], cfg, models) if splicing else None
    decode = resolve_decoder(store.manifest)
    summary = {"version": SUMMARY_VERSION, "run_dir": str(run_dir), "store": common.store_path,
               "hook": store.manifest.get("hook"), "d": d, "run_id": run_id, "test_chunks": test_chunks,
               "n_test_rows": n,
               "labels": cfg.labels or None, "labels_field": cfg.labels_field or None,
               "ce": None if ce is None else {k: v for k, v in ce.items() if k != "models"}, "models": {}}
    (run_dir / "features").mkdir(exist_ok=True)
    remove_output_temps(run_dir)
    datas = {}
    for name, ev in tqdm(evals.items(), desc="features", unit="dict", disable=bar_disabled(),
                         **bar_timing()):
        data, _, _ = build_features(ev.tracker, ev.fire.cpu().numpy(), n, store, cfg.context, decode,
                                    cfg.quantiles, cfg.cofire)
        data["name"] = name
        data["config_hash"] = records.get(name, {}).get("config_hash")  # which training of `name` it is
        data["run_id"] = run_id  # which analysis wrote it
        datas[name] = data
    dirs, similar = shared(datas, evals, d, device, cfg.shared_directions)
    if lm is not None and cfg.logit_effects:
        add_logit_effects(datas, dirs, lm, cfg.logit_effects, decode, store.manifest.get("hook"))
    keys = {name: hit_keys(data) for name, data in datas.items()}  # (row, doc, pos) of the rows shown
    # an embeddings store keeps no tokens: the texts of the rows shown, from analyze.texts or else read again
    # from the harvest's source (one pass)
    rows_shown = set().union(*keys.values())  # (row, doc, pos) of every dictionary's hits
    texts = (read_texts(text_files, {r for r, _, _ in rows_shown}, cfg.texts_column) if text_files
             else row_texts(store.manifest, rows_shown, known=known))
    for name, ev in evals.items():
        data = datas[name]
        if texts:
            data["texts"] = {str(r): texts[r] for r, _, _ in sorted(keys[name]) if r in texts}
        m = ev.summary(n, sum_x, sum_x2, classes)
        add_classes(data["features"], m.get("class_features", []), ev.class_profile(), classes or [],
                    ev.class_n.tolist())  # its page's classes: those it sets apart, those it fires on
        m["training_warning"] = records.get(name, {}).get("warning")  # diverged / learned almost nothing
        m["training_log"] = trained_curve(run_dir, name, records.get(name, {}).get("config_hash"))
        m["config_hash"] = records.get(name, {}).get("config_hash")  # which training of `name` it is
        if ce is not None:
            m |= ce["models"][name]
        formed = None if name not in dirs or not cfg.shared_directions else formation(
            run_dir, name, m["config_hash"], dirs[name][0], live(ev.fire, dirs[name][1]), device)
        m["formation"] = formed[0] if formed else None
        if formed:  # each feature's best cosine in each snapshot, for its page
            data["formation_steps"] = formed[0]["step"]
            for rec, cos in zip(data["features"], feature_cosines(formed[1]), strict=True):
                rec["formed"] = cos
        fires = ev.fire.cpu().numpy()
        rel = f"features/{name}.json"
        write_atomic(run_dir / rel, json.dumps(clean_json(data), separators=(",", ":"), allow_nan=False))
        order = sorted(range(len(fires)), key=lambda i: (-int(fires[i]), i))
        top_features = [i for i in order[: cfg.n_features] if fires[i] > 0]  # the features summary.json lists
        m["features_file"] = rel
        m["wordpiece"] = data["wordpiece"]  # how the report joins the context tokens
        m["features"] = [{"index": f, "fires": int(fires[f]), "density": float(fires[f] / n),
                          "nearest": data["features"][f].get("nearest", {}), "top": summary_hits(data, f)}
                         | ({"logits": named(lg, data["tokens"])} if (lg := data["features"][f].get("logits"))
                            else {})
                         | ({"fires_with": w} if (w := data["features"][f].get("fires_with")) else {})
                         for f in top_features]
        if m.get("class_features"):  # each class feature's top tokens (or texts' first words), for the report
            top = labels_of(data, 3, run_dir / rel)
            for c in m["class_features"]:
                for f in c["features"]:
                    f["tokens"] = top.get(f["feature"], ([], []))[0]
        m["similar"] = similar.get(name, {})
        m["null_decoder"] = int(null_columns(dirs[name][1]).sum()) if name in dirs else None
        summary["models"][name] = m
    summary = clean_json(summary)
    if left := next(iter(summary["models"].values())).get("ad_class_unlabelled"):
        print(one_line(f"analyze: note: {left:,} of the {n:,} evaluated rows have no label (NaN or empty) in "
                       f"{cfg.labels or 'the source field ' + repr(cfg.labels_field)}: they are left out of "
                       "the per-class AD (ad_class_unlabelled in summary.json)"))
    write_report(summary, run_dir)  # the pages carry run_id and check it: a kill part way is seen there
    write_atomic(run_dir / "summary.json", json.dumps(summary, indent=1, allow_nan=False) + "\n")  # last
    print("\n".join(summary_lines(summary)))
    print(one_line(f"analyze: wrote {run_dir / 'summary.json'}, {run_dir / 'report.html'} and "
                   f"{run_dir / 'report'}/"))
