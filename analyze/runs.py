"""``actdict summary RUN_DIR...``: the headline numbers of several analysed run folders in one table.

The layers of configs/layers.yaml, a sweep over run folders: one line per dictionary, read from each folder's
``summary.json``: run, hook, dictionary (and its variant where a name is not its variant's), RE det, RE
1-sample, AD, L0, EV, dead (and CE recovered, KL when measured); ``--json`` writes the same rows, ``--sort
COLUMN`` lists them all by one column. A folder
that has not been analysed is named, not skipped silently, and so are dictionaries trained again since their
folder's analysis (``retrained`` in ``--json``), whose rows are the earlier training's. A dictionary's folder
(``RUN_DIR/dicts/NAME``, as ``actdict compare`` takes them) stands for its line of its run folder's table."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from actdict.analyze.outputs import OutputError, not_a_snapshot, read_output
from actdict.analyze.tables import column_note, number_table
from actdict.errors import ActdictError, one_line, printable
from actdict.files import disk_path, write_atomic
from actdict.train.resume import listed

KEYS = ("re_det", "re_sample", "ad", "l0", "ev", "dead", "k", "ce_recovered", "kl")
SORTS = ("re_det", "re_sample", "ad", "l0", "ev", "dead", "ce_recovered", "kl")


@dataclass(frozen=True)
class Summary:
    """One argument of the command: the run folder it names, the dictionary it stands for (None: all of the
    folder's) and the folder's summary.json, read once for the rows and the CE note (``ce_caveats``)."""

    run: str
    only: str | None
    summary: dict


def read_summaries(run_dirs: list[str]) -> list[Summary]:
    """Each argument's run folder and summary.json, checked to be analyze's records (a summary.json given in
    place of its folder: that folder; a dictionary's folder RUN_DIR/dicts/NAME, as actdict compare takes
    them: that dictionary of its run folder)."""
    out = []
    for run in run_dirs:
        only = None
        if Path(run).name == "summary.json" and Path(run).is_file():  # runs/*/summary.json: its folder
            run = str(Path(run).parent)
        elif Path(run).parent.name == "dicts" and (Path(run) / "cfg.json").is_file():  # a dictionary's
            run, only = str(Path(run).parent.parent), Path(run).name
        path = Path(run) / "summary.json"
        not_a_snapshot(Path(run), "actdict summary")  # train.snapshot_every's folder: never analysed
        if not path.is_file() and Path(run).parent.name == "dicts":  # RUN_DIR/dicts/NAME, no dictionary there
            raise OutputError(f"{run}: no trained dictionary there (RUN_DIR/dicts/NAME, with its cfg.json)")
        if not path.is_file():
            raise OutputError(f"{path} not found: run actdict analyze on {run} first")
        summary = read_output(path)
        models = summary.get("models")
        if not (isinstance(models, dict) and all(isinstance(m, dict) and all(
                isinstance(m.get(k), int | float | None) for k in KEYS) for m in models.values())):
            raise OutputError(f"{path} is corrupt (its models are not analyze's records): rerun `actdict "
                              "analyze` to rewrite it")
        if only is not None and only not in models:
            raise OutputError(f"{path} holds no {only!r} ({sorted(models)}): run actdict analyze on {run}")
        out.append(Summary(run, only, summary))
    return out


def records(summaries: list[Summary]) -> list[dict]:
    """One record per dictionary of each summary, in the order given; a dictionary given twice, however
    spelled (``Run`` and ``run`` on a case-insensitive disk too: ``files.disk_path``), by its folder or its
    run's: once."""
    out, seen = [], set()
    for s in summaries:
        run, only, summary = s.run, s.only, s.summary
        models = summary["models"]
        again, folder = retrained(run, models), disk_path(run)  # one probe of the folder per run
        for name, m in models.items():
            if (only is not None and name != only) or (key := (folder, name)) in seen:
                continue
            seen.add(key)  # its folder and the dictionary's both given: its line once
            out.append({"run": run, "hook": summary.get("hook"), "dict": name, "variant": m.get("variant")}
                       | {k: m.get(k) for k in KEYS} | {"retrained": name in again})
    return out


def retrained(run: str, models: dict) -> list[str]:
    """The dictionaries of ``run``'s summary whose checkpoint is another training than the one analysed: its
    cfg.json's config_hash is not the one the analysis recorded (trained again since, to more epochs or with
    another config). Those with either hash unreadable or missing (an analysis before summary.json recorded
    it, an import) are left out."""
    out = []
    for name, m in models.items():
        try:
            now = json.loads((Path(run) / "dicts" / name / "cfg.json").read_text()).get("config_hash")
        except (OSError, ValueError, AttributeError):
            continue
        if m.get("config_hash") and now and m["config_hash"] != now:
            out.append(name)
    return out


def by(records: list[dict], key: str) -> list[dict]:
    """The records of every run in ascending order of ``key`` (those without it last), ties as given."""
    return sorted(records, key=lambda r: (r[key] is None, r[key] or 0))


def table(records: list[dict]) -> list[str]:
    """The records as text, columns wide enough for their run, hook and dictionary names; the variant when
    some dictionary's name is not its variant's (a sweep's, a renamed one); CE recovered and KL (as
    analyze's table) when some run measured them (analyze.ce_loss)."""
    named = [c for c in ("run", "hook", "dict", "variant") if c != "variant" or any(
        r.get("variant") not in (None, r["dict"]) for r in records)]  # a sweep's sae_l1_lam1-0.1 & co
    ce = any(r["ce_recovered"] is not None for r in records)
    lines = number_table([(c, 0) for c in named], [([str(r.get(c)) for c in named], r) for r in records], ce)
    return [printable(s) for s in lines]


def main(argv: list[str] | None = None) -> int:
    """``actdict summary RUN_DIR [RUN_DIR ...]`` (``python -m actdict.analyze.runs``)."""
    p = argparse.ArgumentParser(prog="actdict summary", description="the headline numbers of several "
                                "analysed run folders in one table, one line per dictionary")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="analysed run folders (each has summary.json), "
                   "or dictionaries RUN_DIR/dicts/NAME (that dictionary's line only)")
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--sort", choices=SORTS, help="list the rows of all runs in ascending order of this "
                   "column (l0 or ad: along the sparsity axis, to read the EV at a given sparsity); default: "
                   "each run's in turn")
    a = p.parse_args(argv)
    if a.json and not (Path(a.json).parent.is_dir() and not Path(a.json).is_dir()):
        p.error(f"--json {a.json}: not a file in an existing folder")
    try:
        summaries = read_summaries(a.runs)
        found = records(summaries)
        found = by(found, a.sort) if a.sort else found
        if a.json:  # before the table: a reader closing stdout early (| head) must not lose it
            write_atomic(a.json, json.dumps(found, indent=1) + "\n")  # a full disk: WriteError, one line
    except ActdictError as e:
        print(printable(f"actdict: {type(e).__name__}: {e}"), file=sys.stderr)
        return 2
    print("\n".join(table(found)))
    ce = any(r["ce_recovered"] is not None for r in found)  # on stderr, as the notes: stdout is the table
    print(column_note(ce), file=sys.stderr)
    for run in dict.fromkeys(r["run"] for r in found):
        if names := [r["dict"] for r in found if r["run"] == run and r["retrained"]]:
            print(one_line(f"actdict summary: note: {run}: {listed(names)} trained again since its analysis "
                           "(a checkpoint of another config_hash than the analysed one): their rows are the "
                           f"earlier training's; rerun actdict analyze on {run}"), file=sys.stderr)
    read = {s.run: s.summary for s in summaries}
    for run, why in ce_caveats([(run, read[run]) for run in dict.fromkeys(r["run"] for r in found)]):
        print(one_line(f"actdict summary: note: {run}: {why}"), file=sys.stderr)
    return 0


def ce_caveats(summaries: list[tuple[str, dict]]) -> list[tuple[str, str]]:
    """(run, why its CE recovered says little) for each (run folder, its summary.json) whose CE evaluation
    has ``analyze.splice.ce_caveat``'s note (zero ablation about free: an untrained model; no finite CE
    under it, summary.json's null: a norm's hook_scale), as analyze printed it; runs without a CE evaluation
    have none."""
    from actdict.analyze.splice import ce_caveat

    out = []
    for run, summary in summaries:
        if isinstance(ce := summary.get("ce"), dict) and isinstance(ce.get("ce_clean"), int | float) and (
                "ce_zero" in ce and (ce["ce_zero"] is None or isinstance(ce["ce_zero"], int | float))):
            if why := ce_caveat(ce, summary.get("hook")):
                out.append((run, why))
    return out


if __name__ == "__main__":
    from actdict.errors import run_command

    run_command(main)
