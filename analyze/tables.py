"""The headline numbers of summary.json as text: the table and notes ``actdict analyze`` prints at its end
(``summary_lines``) and the columns of ``actdict summary``'s table of runs (``number_table``,
``actdict.analyze.runs``). Pure functions of summary.json's data: nothing here reads a file.
"""

from __future__ import annotations

from pathlib import Path

from actdict.analyze.splice import ce_caveat
from actdict.errors import one_line

MAX_PAIRS = 6
"""The printed MMCS line lists every ordered pair of up to 3 dictionaries; beyond, the 3 highest."""


NUMBERS = (("RE det", "re_det", 9, ".4g"), ("RE 1-sample", "re_sample", 11, ".4g"), ("AD", "ad", 7, ".2f"),
           ("L0", "l0", 7, ".2f"), ("EV", "ev", 6, ".3f"), ("dead", "dead", 11, ""),
           ("CE rec.", "ce_recovered", 7, ".3f"), ("KL", "kl", 7, ".4f"))
"""The headline columns of the text tables (``summary_lines``, ``actdict summary``): header, summary.json
key, least width, format; CE rec. and KL only when measured."""


def number_table(names: list[tuple[str, int]], rows: list[tuple[list[str], dict]], ce: bool) -> list[str]:
    """The header and one line per (name cells, summary.json record) of ``rows``: the name columns
    (``names``: header, least width) left-aligned, then the headline numbers right-aligned, each column as
    wide as its least width or its widest cell (an EV of -123456.789 pushed the rest of its row right)."""
    cols = NUMBERS if ce else NUMBERS[:6]
    head = [h for h, _ in names] + [h for h, *_ in cols]
    cells = [[*named, *(f"{m['dead']}/{m['k']}" if key == "dead" else _cell(m.get(key), spec)
                        for _, key, _, spec in cols)] for named, m in rows]
    least = [w for _, w in names] + [w for _, _, w, _ in cols]
    w = [max(least[i], *(len(c[i]) for c in [head, *cells])) for i in range(len(head))]
    return [" ".join(f"{c:<{w[i]}}" if i < len(names) else f"{c:>{w[i]}}" for i, c in enumerate(line))
            for line in [head, *cells]]


def column_note(ce: bool) -> str:
    """What each column of a table of ``number_table`` means, the line under analyze's table and under
    ``actdict summary``'s; CE rec. and KL when the table has them (``ce``)."""
    measured = ("; CE rec.: (CE_zero - CE_spliced) / (CE_zero - CE_clean), 1 the model's own CE, 0 zero "
                "ablation's; KL: mean KL(p_clean || p_spliced)") if ce else ""
    return ("(RE det: summed squared error per row, deterministic forward; RE 1-sample: of one sampled "
            "forward of the first test batch, the paper's; AD: active dimensions per row, the paper's Otsu "
            "split; L0: exact nonzeros, not a VAE's sparsity measure; EV: explained variance; dead: latents "
            f"active on no test row{measured}; docs/analyze.md)")  # RE det, EV, dead: said nowhere before


def summary_lines(summary: dict) -> list[str]:
    """The headline numbers of ``summary.json`` as a text table, one line per dictionary."""
    ce = summary["ce"] is not None
    lines = [f"analyze: {summary['n_test_rows']:,} held-out rows of {summary['hook']} (d {summary['d']})",
             *number_table([("model", 16)], [([name], m) for name, m in summary["models"].items()], ce)]
    warned = [f"analyze: warning: {name} was saved with a training warning: {m['training_warning']}"
              for name, m in summary["models"].items() if m.get("training_warning")]
    why = [f"(EV n/a: the {summary['n_test_rows']:,} held-out row(s) do not vary, so there is no variance "
           "to explain; more test rows: analyze.max_test_rows, train.test_fraction)"]
    why = why if any(m["ev"] is None and m["re_det"] is not None for m in summary["models"].values()) else []
    caveat = [f"analyze: note: {c}"] if ce and (c := ce_caveat(summary["ce"], summary.get("hook"))) else []
    note = column_note(ce)
    pairs = [(p["mmcs"], f"{a} in {b} {_cell(p['mmcs'], '.3f')} ({p['matched']:.0%})")
             for a, m in summary["models"].items() for b, p in (m.get("similar") or {}).items()
             if p.get("matched") is not None]
    head = "analyze: shared decoder directions (MMCS; share of live features within cosine 0.9)"
    if len(pairs) > MAX_PAIRS:  # a sweep of 20 dictionaries: 380 pairs, a line of 16,000 characters
        head += f" of {len(pairs)} pairs, all in report.html and summary.json (similar); the highest"
        pairs = sorted(pairs, key=lambda p: -p[0])[:3]
    shared = [f"{head}: " + "; ".join(text for _, text in pairs)] if pairs else []
    where = Path(summary.get("run_dir", ".")) / "dicts"
    by_class = [f"analyze: each of the {len(m['class_features']):,} classes' features ({_separation(m)}): "
                f"report.html, or actdict feature {where / name} --class LABEL"
                for name, m in summary["models"].items() if m.get("class_features")][:1]
    out = [*lines, note, *shared, *by_class, *why, *caveat, *warned]
    return [one_line(s) for s in out]  # no terminal control codes, one line each


def _separation(m: dict) -> str:
    """What ranks a dictionary's class features and what is shown beside it: Cohen's d of |code|, and its
    AUROC where the pass counted the bins (``analyze/auroc.py``; a dictionary over the cap has d alone)."""
    auroc = any("auroc" in f for c in m["class_features"] for f in c["features"])
    return "Cohen's d of |code|, and AUROC" if auroc else "Cohen's d of |code|"


def _cell(v: float | None, spec: str) -> str:
    """``v`` formatted with ``spec``; "n/a" (same width) for a number summary.json holds as null (non-finite:
    e.g. EV of a single row, whose variance is 0)."""
    return format(v, spec) if v is not None else format("n/a", spec.rstrip("efg").split(".")[0])
