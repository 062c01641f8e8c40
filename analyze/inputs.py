"""What the ``analyze`` stage (``analyze.run``) reads and checks before and during its pass: the held-out
chunks (``<run_dir>/split.json``), the dictionary folders of ``<run_dir>/dicts`` and their cfg.json records
(the hook, store and split each was trained on, checked against the store analysed), the dictionaries
themselves, the held-out rows in batches, and the labels of the per-class AD (``analyze.labels``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from actdict.bars import bar_disabled, bar_timing
from actdict.config_data import config_changes
from actdict.errors import ActdictError, one_line
from actdict.train import checkpoint
from actdict.train.identity import store_key
from actdict.train.resume import STATE, listed, read_meta


class AnalyzeError(ActdictError, ValueError):
    """Nothing (or something inconsistent) to analyze; the message says which stage to run."""


MAX_CLASSES = 10_000
"""The most distinct labels ``analyze.labels`` may hold (each dictionary keeps a sum per class and latent)."""


def evaluated_rows(store, test_chunks: list[int], limit: int | None = None) -> np.ndarray:
    """[n] the global rows ``held_out_batches`` yields, in its order."""
    rows = np.concatenate([np.arange(*store.chunk_bounds(c)) for c in test_chunks] or [np.empty(0, np.int64)])
    return rows[:limit]


def read_labels(path: str, n_rows: int, rows: np.ndarray) -> tuple[np.ndarray | None, list]:
    """(class index of each of the evaluated store rows ``rows`` [n] or None, class labels) from a .npy
    file of one label per store row [n_rows]; only those rows' labels are read (the file is mapped)."""
    if not path:
        return None, []
    p = Path(path).expanduser()  # '~/labels.npy', as the harvest's source and vectors paths
    if not p.is_file():
        raise AnalyzeError(f"analyze.labels: {p} not found (a .npy file with one label per store row)")
    try:  # never pickle: numbers or fixed-width strings only; mapped: the header's shape is checked first
        lab = np.load(p, mmap_mode="r", allow_pickle=False)  # (a damaged one may claim 10**11 rows)
    except (ValueError, OSError) as e:
        raise AnalyzeError(f"analyze.labels: {p} is not a .npy array of numbers or strings ({e}); save one "
                           "with np.save(path, labels) where labels is a 1-D int or str array") from e
    if not isinstance(lab, np.ndarray):  # an .npz archive
        raise AnalyzeError(f"analyze.labels: {p} is an .npz archive; save the labels alone with np.save")
    if lab.shape != (n_rows,):
        raise AnalyzeError(f"analyze.labels: {p} has shape {lab.shape}, the store has {n_rows} rows")
    return label_classes(np.asarray(lab[rows]), rows, "analyze.labels", str(p))  # the evaluated rows' only


def label_classes(lab: np.ndarray, rows: np.ndarray, key: str, what: str) -> tuple[np.ndarray, list]:
    """(class index of each label of ``lab`` [n] (the labels of the store rows ``rows``), -1 where missing;
    the classes) after the checks every source of labels gets; messages name the config ``key`` and
    ``what`` holds the labels."""
    if lab.dtype.kind == "S":  # bytes: the labels as text (summary.json holds them)
        lab = np.char.decode(lab, "utf-8", errors="replace")
    if lab.dtype.kind not in "biufU":
        raise AnalyzeError(f"{key}: {what} holds {lab.dtype} values; labels are integers, floats, booleans "
                           "or strings")
    if lab.dtype.kind == "f" and np.isinf(lab).any():  # summary.json (strict JSON) would write the class null
        at = int(rows[np.argmax(np.isinf(lab))])
        raise AnalyzeError(f"{key}: {what} holds inf at row {at:,}: a label names a class (an integer, a "
                           "string, a finite number; NaN for none)")
    missing = missing_labels(lab)  # [n]
    if missing.all():
        raise AnalyzeError(f"{key}: every label in {what} is missing (NaN or empty) on the {len(lab):,} "
                           "held-out rows analyze evaluates: there is no class to report AD of")
    classes, idx = np.unique(lab[~missing], return_inverse=True)
    if len(classes) > MAX_CLASSES:  # a per-row value (an id, a regression target): [classes, k] per model
        raise AnalyzeError(f"{key}: {what} holds {len(classes):,} distinct labels, more than "
                           f"{MAX_CLASSES:,}: a label names a class of rows (a manifold, a category), and AD "
                           "is reported per class (each class's sums kept for every latent, a bar each in "
                           "the report); bin a per-row value into classes first")
    out = np.full(len(lab), -1, np.int64)  # [n] -1: no label, left out of the per-class AD
    out[~missing] = idx
    return out, [c.item() for c in classes]


def source_labels(store, rows: np.ndarray, field: str, texts: dict | None = None) -> tuple[np.ndarray, list]:
    """``label_classes`` of the evaluated store ``rows`` [n] labelled by their documents' ``field`` in the
    harvest's source (``analyze.labels_field``): each row's ``doc`` is its document's index in
    ``harvest.sources.iter_records``' order, read up to the last document a row needs. A row of no
    document (doc < 0) or whose value is None is unlabelled. ``texts`` (a dict), for an embeddings store:
    filled with (doc, pos) -> clipped text of every row of ``rows``, read in the same pass, for
    ``texts.row_texts`` (which then reads the source no more), unless they pass ``texts.KEPT_MAX_CHARS``
    (their entries counted: ``KEPT_ENTRY_CHARS``; then left empty: the texts are read again)."""
    from actdict.analyze.texts import KEPT_ENTRY_CHARS, KEPT_MAX_CHARS, clip, harvest_config, has_text_rows
    from actdict.harvest.sources import iter_records

    where = f"analyze.labels_field: {field!r}"
    manifest = store.manifest
    harvest = manifest.get("harvest")
    mode = harvest.get("mode", "tokens") if isinstance(harvest, dict) else None
    if mode not in ("tokens", "embeddings") or manifest.get("kind") == "vectors":  # a token store's kind is
        # its model's (causal, encoder), not "tokens"
        raise AnalyzeError(f"{where} labels rows by their documents in the harvest's source, and this store "
                           f"({manifest.get('kind')}) was harvested from none: give analyze.labels a .npy "
                           "file of one label per store row")
    try:  # the harvest's source, read again (and the texts of an embeddings store's rows with it)
        cfg = harvest_config(manifest)
    except ValueError as e:  # other documents at the same index: not theirs
        raise AnalyzeError(f"{where}: {e}, so a row's doc may name another document") from e
    metas = [store.read_meta(int(a), int(b)) for a, b in _runs(rows)]
    docs = np.concatenate([m[1] for m in metas] or [np.empty(0, np.int64)])  # [n] each row's document
    need, values = set(docs[docs >= 0].tolist()), {}
    last = max(need, default=-1)
    wanted: dict[int, set[int]] | None = None  # doc -> pos of the rows whose texts are kept
    if texts is not None and has_text_rows(manifest):
        from actdict.harvest.embed import text_units

        wanted = {}
        for d, p in zip(docs.tolist(), np.concatenate([m[2] for m in metas] or [[]]).tolist(), strict=True):
            wanted.setdefault(d, set()).add(int(p))
    kept = 0  # characters
    try:
        for i, (text, value) in enumerate(iter_records(cfg.source, field)):
            if i > last:
                break
            if i in need:
                values[i] = value
            if wanted is not None and i in wanted:  # its rows' texts, as row_texts reads them
                for _, p, unit in text_units([text], cfg.embed.unit):
                    if p in wanted[i]:
                        texts[(i, p)] = clip(unit)
                        kept += len(texts[(i, p)]) + KEPT_ENTRY_CHARS  # its entry too
                if kept > KEPT_MAX_CHARS:  # too many to hold: row_texts reads them again
                    texts.clear()
                    wanted = None
    except ActdictError as e:
        raise AnalyzeError(f"{where}: {e} (analyze.labels_field= analyzes without labels)") from e
    if missing := need - set(values):
        raise AnalyzeError(f"{where}: the source holds fewer documents than the store names (doc "
                           f"{min(missing):,} of {len(values):,} read): it is not the harvest's")
    lab = _as_array([values.get(d) for d in docs.tolist()])
    return label_classes(lab, rows, "analyze.labels_field", f"the source's field {field!r}")


def _runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) runs of consecutive values in ``rows`` (the evaluated rows: whole test chunks)."""
    if not len(rows):
        return []
    cut = np.flatnonzero(np.diff(rows) != 1) + 1
    return [(int(r[0]), int(r[-1]) + 1) for r in np.split(rows, cut)]


def _as_array(values: list) -> np.ndarray:
    """Labels as a numpy array: strings (None -> "", missing), else numbers (None -> NaN, missing)."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, str) for v in present):
        return np.array(["" if v is None else v for v in values], dtype=str)
    bools_with_null = None in values and any(isinstance(v, bool) for v in present)  # as floats: 0.0 / 1.0
    if any(isinstance(v, str) for v in present) or bools_with_null:  # every label as text
        return np.array(["" if v is None else str(v) for v in values], dtype=str)
    if None in values or any(isinstance(v, float) for v in present):
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return np.array(values)


def missing_labels(lab: np.ndarray) -> np.ndarray:
    """[n] bool: the labels that are missing, NaN (a float array) or an empty or blank string; numbers and
    other strings are classes (a .npy of labels holds no None: object arrays are refused)."""
    if lab.dtype.kind == "f":
        return np.isnan(lab)
    if lab.dtype.kind in "US":
        return np.char.strip(lab) == lab.dtype.type()
    return np.zeros(lab.shape, bool)


def held_out_chunks(run_dir: Path, n_chunks: int, records: dict[str, dict], seed: int) -> list[int]:
    """The chunks analysis evaluates: ``read_test_chunks``; for a run folder without a split.json whose
    dictionaries are all imported (``actdict import``: none learned any of these rows), the split the train
    stage would make (``train.data.make_split`` at train.test_fraction's default and the experiment seed),
    computed, not written: a training in the folder writes its own, which analysis then reads."""
    imported = records and all("imported" in r for r in records.values())
    if (run_dir / "split.json").is_file() or not imported:
        return read_test_chunks(run_dir, n_chunks)
    from actdict.train.config import TrainConfig
    from actdict.train.data import make_split

    fraction = TrainConfig.__dataclass_fields__["test_fraction"].default
    chunks = make_split(n_chunks, fraction, seed)["test_chunks"]
    print(one_line(f"analyze: note: no split.json in {run_dir} and only imported dictionaries: evaluating "
                   f"the {len(chunks)} of {n_chunks} chunks that training would hold out (test_fraction "
                   f"{fraction}, seed {seed})"))
    return chunks


def read_test_chunks(run_dir: Path, n_chunks: int | None = None) -> list[int]:
    """``test_chunks`` of ``<run_dir>/split.json`` (written by the train stage): chunk numbers, below
    ``n_chunks`` (the store's) when given."""
    path = run_dir / "split.json"
    if not path.is_file():
        raise AnalyzeError(f"{path} not found: run the train stage first")
    try:
        chunks = json.loads(path.read_text()).get("test_chunks")
    except (ValueError, AttributeError) as e:
        raise AnalyzeError(f"{path} is damaged ({e}): rerun the train stage, which writes it again") from e
    if not chunks:
        raise AnalyzeError(f"{path} has no test_chunks (trained with train.test_fraction=0): analyze "
                           "evaluates held-out rows only; retrain with test_fraction > 0")
    top = n_chunks or math.inf
    if not (isinstance(chunks, list) and all(type(c) is int and 0 <= c < top for c in chunks)):
        within = f" of the store's {n_chunks}" if n_chunks else ""
        raise AnalyzeError(f"{path} is damaged (test_chunks {str(chunks)[:80]} are not chunk numbers"
                           f"{within}): rerun the train stage, which writes it again")
    return chunks


def not_a_dictionary(folder: Path) -> str | None:
    """Why the folder ``folder`` of ``<run_dir>/dicts`` holds no dictionary to load, in words; None when it
    holds a finished checkpoint (training writes the weights, then cfg.json)."""
    from actdict.train import export

    if (folder / checkpoint.CFG).is_file() and (folder / checkpoint.WEIGHTS).is_file():
        return None
    if (folder / export.WEIGHTS).is_file():
        return (f"holds a SAELens export ({export.WEIGHTS} + {export.CFG}, made by actdict export), not a "
                "checkpoint of this run: it does not belong in dicts/; export into a folder outside it")
    if not (folder / checkpoint.CFG).is_file():
        return (f"has no finished checkpoint (no {checkpoint.CFG}: its training stopped before its first "
                "save); rerun actdict train to finish it, or remove the folder")
    return f"has a {checkpoint.CFG} but no {checkpoint.WEIGHTS}: not a finished checkpoint"


def dict_folders(root: Path) -> tuple[list[str], dict[str, str]]:
    """(the names of the dictionaries in ``root``, ``<run_dir>/dicts``: its folders holding a finished
    checkpoint, in ``name_order``; every other folder's name -> why it is not one, ``not_a_dictionary``).
    Hidden folders are nobody's dictionary and left out of both."""
    if not root.is_dir():
        return [], {}
    names = sorted((p.name for p in root.iterdir() if p.is_dir() and p.name[0] != "."), key=name_order)
    why = {n: not_a_dictionary(root / n) for n in names}
    return [n for n, w in why.items() if w is None], {n: w for n, w in why.items() if w is not None}


def name_order(name: str) -> tuple:
    """The sort key of a dictionary's name: its numbers by value, the rest as text, so that a sweep's names
    come in the order of what they vary (l1big_k-768 before l1big_k-1536, lr-1e-05 before lr-0.001, lam1-2
    before lam1-10), not as strings."""
    parts = re.split(r"(\d+(?:\.\d+)?(?:e[-+]?\d+)?)", name)  # text, number, text, ...
    key = tuple((1, p, 0.0) if i % 2 == 0 else (1, "", float(p)) for i, p in enumerate(parts))
    return (*key, (0, name, 0.0))  # a name before its longer ones (a, a1); a01 and a1 as strings


def skipped_notes(run_dir: Path, names: list[str]) -> list[str]:
    """One line per folder of ``<run_dir>/dicts`` that is not a dictionary, naming it and saying why, when
    every dictionary is read (``names`` empty): said, not skipped in silence."""
    root = run_dir / "dicts"
    return [] if names else [f"skipped {root / n}: it {why}" for n, why in dict_folders(root)[1].items()]


def trained_records(run_dir: Path, names: list[str]) -> dict[str, dict]:
    """name -> cfg.json of the dictionaries ``names`` (all in ``<run_dir>/dicts`` when empty) found there."""
    root = run_dir / "dicts"
    paths = [root / n / "cfg.json" for n in names or dict_folders(root)[0]]
    out = {}
    for p in paths:
        try:
            out[p.parent.name] = json.loads(p.read_text())
        except FileNotFoundError:  # gone: a training saving it now (load_models says so)
            pass
        except ValueError as e:  # a cut copy, an edit: as checkpoint.load says it
            raise AnalyzeError(checkpoint.damaged(p.parent, f"{p.name}: {e}")) from e
    return out


def trained_hook(records: dict[str, dict]) -> str | None:
    """The store hook the dictionaries of ``records`` (``trained_records``) were trained on, as their cfg.json
    records it (None: none recorded); raises when they were trained on different hooks."""
    hooks = {n: (r.get("store") or {}).get("hook") for n, r in records.items()}
    if len(set(hooks.values()) - {None}) > 1:
        raise AnalyzeError(f"the dictionaries were trained on different hooks ({hooks}); analyze one hook's "
                           "at a time (analyze.dicts), or train each hook in its own run_dir (comparing "
                           "layers: actdict compare RUN_A/dicts/NAME RUN_B/dicts/NAME)")
    return next((h for h in hooks.values() if h is not None), None)


def retraining(run_dir: Path, records: dict[str, dict]) -> str | None:
    """A line naming the dictionaries of ``records`` that the run folder's resume state is training again with
    another config (a retraining interrupted: Ctrl-C, SIGTERM): their checkpoints are the earlier config's,
    which analysis reads. None when there are none."""
    meta = read_meta(run_dir / STATE)
    older = sorted(n for n, m in (meta or {}).get("members", {}).items()
                   if n in records and records[n].get("config_hash") != m["config_hash"])
    if not older:
        return None
    return (f"{run_dir / STATE} holds an unfinished training of {listed(older)} with another config (step "
            f"{meta['position']['step']}); this analysis reads their earlier, finished checkpoints: rerun "
            "actdict train to finish it, then analyze")


def other_split(records: dict[str, dict], test_chunks: list[int]) -> list[str]:
    """The dictionaries whose cfg.json records held-out chunks other than ``test_chunks`` (trained with
    another split: analysis would score them on rows they learned). Checkpoints that record none pass."""
    return sorted(n for n, r in records.items()
                  if r.get("test_chunks") is not None and sorted(r["test_chunks"]) != sorted(test_chunks))


def chunks_read(store, test_chunks: list[int], limit: int | None = None) -> list[int]:
    """The first of ``test_chunks`` that hold the first ``limit`` rows (all where ``limit`` is None, or more
    than they hold): those ``held_out_batches`` reads, and the start line counts."""
    if limit is None:
        return list(test_chunks)
    held = np.cumsum([stop - start for start, stop in map(store.chunk_bounds, test_chunks)])  # [chunks]
    return list(test_chunks[:int(np.searchsorted(held, limit)) + 1])


def held_out_batches(store, test_chunks: list[int], batch_size: int, limit: int | None = None
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The test rows in chunk order, in batches of ``batch_size`` that run across chunks (only the last is
    short), at most ``limit`` rows: (acts [B, d] float32, their global store rows [B] int64). The first batch
    is the paper's "first test batch" (RE of one sample, the masked-dimensions curve)."""
    acts, rows, seen = np.empty((0, store.d), np.float32), np.empty(0, np.int64), 0  # rows not yet yielded
    test_chunks = chunks_read(store, test_chunks, limit)  # the bar's total, and the loop's end
    for i, c in enumerate(tqdm(test_chunks, desc="analyze", unit="chunk", disable=bar_disabled(),
                                    **bar_timing())):
        start, stop = store.chunk_bounds(c)
        take = stop - start if limit is None else min(stop - start, limit - seen)
        acts = np.concatenate([acts, store.read_chunk(c).acts[:take]])  # [held, d]
        rows = np.concatenate([rows, np.arange(start, start + take)])  # [held]
        seen += take
        last = i == len(test_chunks) - 1
        full = len(rows) if last else len(rows) // batch_size * batch_size  # rows to yield now
        for a in range(0, full, batch_size):
            yield acts[a:a + batch_size], rows[a:a + batch_size]
        acts, rows = acts[full:], rows[full:]


def other_store(records: dict[str, dict], store_id: dict) -> dict[str, list[str]]:
    """The dictionaries whose cfg.json records another store than ``store_id`` (``describe_store`` of the
    store analysed), compared as training compares them (``store_key``) -> {name: what differs}. What a
    record leaves unset (older checkpoints: no ``content``) is not compared, nor the path: the rows'
    identity (``config_hash`` or ``content``, rows, d) says whether they are the same wherever they lie."""
    now, out = store_key(store_id), {}
    for name, r in records.items():
        was = {k: v for k, v in store_key(r.get("store") or {}).items() if v is not None and k != "path"}
        if changes := config_changes(was, {k: now.get(k) for k in was}, "store."):
            out[name] = changes
    return out


def other_model(records: dict[str, dict], model: str | None) -> list[str]:
    """One note per imported dictionary whose SAE names another model than ``model`` (the store's), by the
    name after any ``org/`` prefix, case aside (SAELens says ``pythia-70m-deduped`` where a store records
    ``EleutherAI/pythia-70m-deduped``). A note, not a refusal: the name is the SAE author's spelling (a hook
    name alone matches across models, and so may the width)."""
    def short(name: str) -> str:
        return str(name).rsplit("/", 1)[-1].lower()

    out = []
    for name, r in records.items():
        was = (r.get("imported") or {}).get("model_name")
        if was and model and short(was) != short(model):
            out.append(f"{name} was imported from an SAE of {was!r} (its cfg.json), but the store holds "
                       f"activations of {model!r}: its numbers mean something only if they are one model")
    return out


def found_dicts(run_dir: Path, names: list[str]) -> list[str]:
    """The finished dictionaries of ``<run_dir>/dicts`` (``dict_folders``); raises when one of ``names`` is
    not one of them, or when there is none. Checked before the store is opened: a store of several hooks
    would otherwise ask which hook to read, where the run folder has nothing to analyse."""
    root = run_dir / "dicts"
    found, skipped = dict_folders(root)
    if named := [n for n in names if n in skipped]:
        raise AnalyzeError("; ".join(f"dictionary folder {root / n} {skipped[n]}" for n in named))
    if not found:
        raise AnalyzeError(f"no trained dictionaries in {root}: run actdict train first, or set run_dir to "
                           "the run folder that holds them")
    if missing := [n for n in names if n not in found]:
        raise AnalyzeError(f"dictionaries {missing} not found in {root}; available: {found}")
    return found


def open_trained_store(path: str, hook: str | None, run_dir: Path, names: list[str], records: dict):
    """``open_store(path, hook)`` for the dictionaries of ``records``; when it fails and the run folder holds
    none, ``found_dicts``' error says that (a store of several hooks asks which to read: the dictionaries
    choose it, and there are none)."""
    from actdict.harvest.store import StoreError, open_store

    try:
        return open_store(path, hook)
    except StoreError:
        if not records:
            found_dicts(run_dir, names)
        raise


def readable_variant(folder: Path) -> bool:
    """The checkpoint in ``folder`` names a variant an installed package provides (a plugin's may not)."""
    record = checkpoint.finished_record(folder)
    return bool(record) and "variant" in record and checkpoint.unknown_variant(record) is None


def load_models(run_dir: Path, names: list[str], d: int, records: dict[str, dict] | None = None,
                select: Callable[[list[str]], str] = lambda ns: f"analyze.dicts=[{', '.join(ns)}]") -> dict:
    """Load ``<run_dir>/dicts/<name>`` for each name (all found there when ``names`` is empty); with
    ``records`` (``trained_records``, read earlier), one whose cfg.json a training replaced since is refused:
    the checks made on its record would not be its own. A plugin's dictionary that cannot be read here
    (its package missing or changed) names, after why, how to read the others (``select``)."""
    root = run_dir / "dicts"
    found = found_dicts(run_dir, names)
    models = {}
    for name in names or [n for n in found if records is None or n in records]:  # a newcomer: next time
        try:
            model, record = checkpoint.load(root / name)
        except checkpoint.CheckpointError as e:
            if names or not (checkpoint.finished_record(root / name) or {}).get("plugin"):
                raise
            if not (others := [n for n in found if n != name and readable_variant(root / n)]):
                raise
            raise checkpoint.CheckpointError(f"{e}; or read the others without it: {select(others)}") from e
        if records is not None and record != records.get(name):
            raise AnalyzeError(f"dictionary {name} ({root / name}) was saved again by a training while this "
                               "analysis started: rerun actdict analyze (when that training is done)")
        if model.d != d:
            raise AnalyzeError(f"dictionary {name} has d={model.d} but the store has d={d}")
        models[name] = model
    return models
