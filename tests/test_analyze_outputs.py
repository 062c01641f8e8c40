"""The analysis outputs on disk: each is written whole or not at all (a temporary file, then a rename), so a
kill leaves no truncated file; the ones the lens reads back give one clear error when damaged."""

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from actdict.analyze import inputs, run
from actdict.analyze.config import AnalyzeConfig
from actdict.config import Common
from actdict.files import write_atomic
from actdict.harvest.store import StoreWriter
from actdict.train.checkpoint import save
from actdict.train.protocol import make


def _run_dir(tmp_path: Path, monkeypatch) -> Path:
    """A tiny trained run: a 96-row store of 6 chunks, split.json, one dictionary ``sae`` (sae_l1, k = 8)
    saved as training saves it."""
    g = np.random.default_rng(0)
    n, d = 96, 5
    acts = g.standard_normal((n, d)).astype(np.float32)
    with StoreWriter(str(tmp_path / "store"), {"hook": "h"}, d, "float32", 32, 16) as w:
        w.append(acts, np.arange(n), np.arange(n) // 8, np.arange(n) % 8)
    (tmp_path / "split.json").write_text(json.dumps({"train_chunks": [0, 1, 2, 3], "test_chunks": [4, 5]}))
    save(tmp_path / "dicts" / "sae", make("sae_l1", d, 8, seed=0), {})
    monkeypatch.setattr(run, "resolve_decoder", lambda m: lambda ids: [f"t{i}" for i in ids])
    return tmp_path


def test_every_output_is_written_through_a_temporary_file(tmp_path, monkeypatch):
    """summary.json, features/<name>.json, report.html and the feature page (with its parts and plotly.js)
    are each renamed into place from a hidden temporary file of the same folder; the temporary files a
    killed analysis left are removed, other hidden files are not."""
    run_dir = _run_dir(tmp_path, monkeypatch)
    (run_dir / "features").mkdir()
    (run_dir / "features" / ".sae.json.tmp-0badf00d").write_text('{"trunc')  # a killed analysis's
    (run_dir / "features" / ".keep").write_text("")
    moves, real = [], os.replace

    def replace(src, dst):
        moves.append((Path(src), Path(dst)))
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(device="cpu", n_features=2, top_k=2, context=1))
    done = {dst.relative_to(run_dir).as_posix() for _, dst in moves if run_dir in dst.parents}
    assert {"summary.json", "features/sae.json", "report.html", "report/sae.html", "report/plotly.min.js",
            "report/sae.parts/00000.js"} <= done
    assert all(src.parent == dst.parent and src.name.startswith(f".{dst.name}.tmp-") for src, dst in moves
               if run_dir in dst.parents)
    assert not list(run_dir.rglob(".*.tmp-*")) and (run_dir / "features" / ".keep").is_file()
    assert json.loads((run_dir / "summary.json").read_text())["models"]["sae"]["k"] == 8


def _run_ids(run_dir: Path) -> dict:
    """The analysis run id each output of dictionary ``sae`` carries (the parts: the set of theirs)."""
    page = (run_dir / "report" / "sae.html").read_text()
    meta = page.split('id="page-meta">', 1)[1].split("</script>", 1)[0]
    parts = sorted((run_dir / "report" / "sae.parts").glob("*.js"))
    overview = (run_dir / "report.html").read_text()
    return {"summary": json.loads((run_dir / "summary.json").read_text())["run_id"],
            "features": json.loads((run_dir / "features" / "sae.json").read_text())["run_id"],
            "overview": set(re.findall(r'href="report/sae\.html\?run=([\w-]+)', overview)),
            "page": json.loads(meta)["run"],
            "parts": {json.loads(p.read_text().rsplit(",", 1)[1].removesuffix(");\n")) for p in parts}}


def test_every_output_carries_the_run_id_and_a_stopped_analysis_shows_in_its_pages(tmp_path, monkeypatch):
    """summary.json's run_id is in the features file, the overview's links to the feature page, the page and
    each of its parts, and summary.json is written last: an analysis stopped while writing the overview
    leaves the previous summary.json and overview, whose links name a run the new feature page is not of
    (the page says so: test_report_browser)."""
    from actdict.analyze import report

    run_dir = _run_dir(tmp_path, monkeypatch)
    cfg = AnalyzeConfig(device="cpu", n_features=2, top_k=2, context=1)
    run.main(Common(run_dir=str(run_dir)), cfg)
    first = _run_ids(run_dir)
    old = first["summary"]
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", old)
    assert first == {"summary": old, "features": old, "overview": {old}, "page": old, "parts": {old}}
    real = report.write_atomic

    def stopped(path, data, *a, **kw):
        if Path(path).name == "report.html":
            raise KeyboardInterrupt  # a kill (Ctrl-C) as the overview is written
        return real(path, data, *a, **kw)

    monkeypatch.setattr(report, "write_atomic", stopped)
    with pytest.raises(KeyboardInterrupt):
        run.main(Common(run_dir=str(run_dir)), cfg)
    then = _run_ids(run_dir)
    new = then["page"]
    assert new != old and then == {"summary": old, "features": new, "overview": {old}, "page": new,
                                   "parts": {new}}


def test_a_write_killed_before_its_rename_leaves_the_previous_file(tmp_path, monkeypatch):
    p = write_atomic(tmp_path / "summary.json", '{"old": 1}\n')
    assert p.read_text() == '{"old": 1}\n'

    def killed(src, dst):  # the process dies after writing the temporary file, before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(p, '{"new": 2}\n' * 1000)
    assert p.read_text() == '{"old": 1}\n' and os.listdir(tmp_path) == ["summary.json"]
    monkeypatch.undo()
    assert write_atomic(p, b"\xe2\x80\xa6").read_text(encoding="utf-8") == "\u2026"  # bytes as they are


@pytest.mark.parametrize("damage", ["truncated", "empty", "not utf-8", "a list"])
def test_a_damaged_features_file_is_one_clear_error(tmp_path, monkeypatch, damage):
    """The lens's readers of features/<name>.json and the report's give an ActdictError (the command line's
    one line) naming the file and saying to rerun analyze, not a JSONDecodeError."""
    from actdict.analyze.lens import dict_labels, feature_labels
    from actdict.analyze.outputs import OutputError
    from actdict.analyze.report import write_report
    from actdict.errors import ActdictError

    run_dir = _run_dir(tmp_path, monkeypatch)
    run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(device="cpu", n_features=2, top_k=2, context=1))
    summary = json.loads((run_dir / "summary.json").read_text())
    path = run_dir / "features" / "sae.json"
    assert set(feature_labels(path)) == set(range(8))  # intact: every feature labelled
    blob = path.read_bytes()
    path.write_bytes({"truncated": blob[: len(blob) // 2], "empty": b"", "not utf-8": b'{"k": "\xff"}',
                      "a list": b"[8]"}[damage])
    for read in (lambda: feature_labels(path), lambda: dict_labels(run_dir, "sae", 8),
                 lambda: write_report(summary, run_dir)):
        with pytest.raises(OutputError) as e:
            read()
        assert isinstance(e.value, ActdictError)
        said = str(e.value)
        assert said.startswith(f"{path} is ") and said.endswith("rerun `actdict analyze` to rewrite it")
        assert ("truncated or corrupt (not valid JSON: " in said) == (damage != "a list")


def test_folders_in_dicts_that_hold_no_dictionary_are_named_and_skipped(tmp_path, monkeypatch, capsys):
    """A folder of dicts/ whose training was killed before its first save (weights, no cfg.json) and a
    SAELens export put there (cfg.json + sae_weights.safetensors) are each named in one note and skipped,
    the dictionaries beside them analysed; named in analyze.dicts, they are refused, saying what they are."""
    from actdict.train.export import export_saelens

    run_dir = _run_dir(tmp_path, monkeypatch)
    dicts = run_dir / "dicts"
    (dicts / "half").mkdir()
    shutil.copy(dicts / "sae" / "model.safetensors", dicts / "half")
    export_saelens(dicts / "sae", tmp_path / "export")  # refused inside dicts/; a user may move it there
    (tmp_path / "export").rename(dicts / "sae_saelens")
    (dicts / ".trash").mkdir()  # hidden: nobody's dictionary, not worth a note
    run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(device="cpu", n_features=2, top_k=2, context=1))
    notes = [line for line in capsys.readouterr().out.splitlines() if "note:" in line]
    assert notes == [
        f"analyze: note: skipped {dicts / 'half'}: it has no finished checkpoint (no cfg.json: its training "
        "stopped before its first save); rerun actdict train to finish it, or remove the folder",
        f"analyze: note: skipped {dicts / 'sae_saelens'}: it holds a SAELens export (sae_weights.safetensors "
        "+ cfg.json, made by actdict export), not a checkpoint of this run: it does not belong in dicts/; "
        "export into a folder outside it"]
    assert list(json.loads((run_dir / "summary.json").read_text())["models"]) == ["sae"]
    with pytest.raises(run.AnalyzeError, match=r"dicts/sae_saelens holds a SAELens export \(sae_weights"):
        run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(device="cpu", dicts=["sae", "sae_saelens"]))
    with pytest.raises(run.AnalyzeError, match=r"dicts/half has no finished checkpoint"):
        run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(device="cpu", dicts=["half"]))
    run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(device="cpu", dicts=["sae"]))  # named: no notes
    assert "note:" not in capsys.readouterr().out


def test_a_narrowed_or_unwritable_analysis_says_so_before_its_pass(tmp_path, monkeypatch, capsys, read_only):
    """analyze.dicts drops the other dictionaries from summary.json: a note names them. A run folder that
    cannot be written is refused before the pass over the store, with nothing written."""
    from actdict import lock

    run_dir = _run_dir(tmp_path, monkeypatch)
    save(run_dir / "dicts" / "other", make("sae_topk", 5, 8, seed=1, topk=2), {})
    cfg = {"device": "cpu", "n_features": 2, "top_k": 2, "context": 1}
    run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(**cfg))
    capsys.readouterr()
    run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(**cfg, dicts=["sae"]))
    assert ("analyze: note: summary.json and the report will hold sae only, not other (analyze.dicts)"
            in capsys.readouterr().out)
    run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(**cfg))  # both again, then 'other' is removed:
    shutil.rmtree(run_dir / "dicts" / "other")  # its files are left, said so (not '(analyze.dicts)')
    capsys.readouterr()
    run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(**cfg))
    out = capsys.readouterr().out
    assert f"note: other, in the previous analysis, have no folder in {run_dir / 'dicts'} any more" in out
    assert "(analyze.dicts)" not in out and (run_dir / "features" / "other.json").is_file()
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    read_only("features")
    monkeypatch.setattr(run, "ModelEval", None)  # the pass would fail at its first use: it is never reached
    with pytest.raises(lock.FolderNotWritable, match=r"cannot write in .*features \(Permission denied\)"):
        run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(**cfg))
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    read_only("report/sae.parts")  # its part files are removed and written again: a PermissionError there
    with pytest.raises(lock.FolderNotWritable, match=r"cannot write in .*report/sae\.parts \(Permission de"):
        run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(**cfg))
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_a_write_check_cut_short_by_a_kill_is_removed_by_the_rerun(tmp_path, monkeypatch):
    """SIGKILL between the test file of ``check_writable`` and its removal leaves it in the folder: the next
    analysis removes its own kind (and only that: a training may be checking the same folder beside it)."""
    run_dir = _run_dir(tmp_path, monkeypatch)
    cfg = AnalyzeConfig(device="cpu", n_features=2, top_k=2, context=1)
    run.main(Common(run_dir=str(run_dir)), cfg)
    files = sorted(p for p in run_dir.rglob("*") if p.is_file())
    for folder in (run_dir, run_dir / "features", run_dir / "report"):  # what a kill there leaves
        (folder / ".actdict-write-check-analyze-k1ll3d").write_bytes(b"")
    (run_dir / ".actdict-write-check-train-b3s1de").write_bytes(b"")  # a training's, checking meanwhile
    run.main(Common(run_dir=str(run_dir)), cfg)
    assert sorted(p for p in run_dir.rglob("*") if p.is_file()) == sorted(
        [*files, run_dir / ".actdict-write-check-train-b3s1de"])


def test_a_training_warning_reaches_the_summary_the_table_and_the_report(tmp_path, monkeypatch, capsys):
    run_dir = _run_dir(tmp_path, monkeypatch)
    warning = "sae: its reconstruction error over its last steps 9 is 1.2x ... <b>learned</b> almost nothing"
    save(run_dir / "dicts" / "sae", make("sae_l1", 5, 8, seed=0), {"warning": warning})
    run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(device="cpu", n_features=2, top_k=2, context=1))
    assert json.loads((run_dir / "summary.json").read_text())["models"]["sae"]["training_warning"] == warning
    assert f"analyze: warning: sae was saved with a training warning: {warning}" in capsys.readouterr().out
    html = (run_dir / "report.html").read_text()
    assert "training warned: sae: its reconstruction error" in html and "&lt;b&gt;learned&lt;/b&gt;" in html


@pytest.mark.parametrize("kind", ["float", "str", "bytes"])
def test_rows_without_a_label_are_left_out_of_the_per_class_ad(tmp_path, monkeypatch, capsys, kind):
    """NaN (a float array) or an empty / blank string is no class: those rows are in no ad_class entry, their
    count is ad_class_unlabelled and one note; the other classes' numbers are those of a file where the same
    rows carry a class of their own."""
    run_dir = _run_dir(tmp_path, monkeypatch)
    rows = np.arange(96)
    if kind == "float":
        gone = rows % 3 == 0  # [96] the rows without a label
        missing = np.where(gone, np.nan, (rows % 3).astype(float))
        own, expect = np.where(gone, 9.0, missing), [1.0, 2.0]
    else:  # bytes labels are read as UTF-8 text
        gone = np.isin(rows % 4, [0, 3])
        missing = np.array(["", "one", "t\u00e9", " "])[rows % 4]  # "" and " ": no label
        own, expect = np.where(gone, "zz", missing), ["one", "t\u00e9"]
        if kind == "bytes":
            missing = np.char.encode(missing, "utf-8")
    cfg = {"device": "cpu", "n_features": 2, "top_k": 2, "context": 1}
    np.save(run_dir / "own.npy", own)
    run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(**cfg, labels=str(run_dir / "own.npy")))
    summary = json.loads((run_dir / "summary.json").read_text())
    ref = {c["label"]: c for c in summary["models"]["sae"]["ad_class"]}
    capsys.readouterr()
    np.save(run_dir / "labels.npy", missing)
    run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(**cfg, labels=str(run_dir / "labels.npy")))
    m = json.loads((run_dir / "summary.json").read_text())["models"]["sae"]
    left = int(gone[64:].sum())  # the test rows: chunks 4 and 5
    assert [c["label"] for c in m["ad_class"]] == expect and m["ad_class_unlabelled"] == left > 0
    assert sum(c["n"] for c in m["ad_class"]) + left == 32
    assert m["ad_class"] == [ref[label] for label in expect]
    notes = [line for line in capsys.readouterr().out.splitlines() if "no label" in line]
    assert notes == [f"analyze: note: {left} of the 32 evaluated rows have no label (NaN or empty) in "
                     f"{run_dir / 'labels.npy'}: they are left out of the per-class AD "
                     "(ad_class_unlabelled in summary.json)"]
    assert f"{left} rows without a label left out" in (run_dir / "report.html").read_text()
    if kind == "float":  # inf: a class summary.json would write as null (+inf and -inf: two nulls)
        np.save(run_dir / "inf.npy", np.where(rows == 70, np.inf, own))
        with pytest.raises(run.AnalyzeError, match=r"inf.npy holds inf at row 70: a label names a class"):
            run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(**cfg, labels=str(run_dir / "inf.npy")))
    else:  # the string "inf" is a class like any other
        np.save(run_dir / "inf.npy", np.where(rows == 70, "inf", own))
        run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(**cfg, labels=str(run_dir / "inf.npy")))
    np.save(run_dir / "none.npy", np.full(96, np.nan))
    with pytest.raises(run.AnalyzeError, match=r"every label in .*none.npy is missing \(NaN or empty\)"):
        run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(**cfg, labels=str(run_dir / "none.npy")))


def test_labels_are_read_for_the_evaluated_rows_only(tmp_path):
    """analyze.labels held every store row's label (and np.unique over them): 750 MiB for 2M string labels
    against 310 MiB without, though only the held-out rows are evaluated. Only theirs are read now."""
    import tracemalloc

    lab = np.array([f"class-{i % 7:04d}-of-the-store" for i in range(20_000)])  # [20,000] <U21: 1.7 MB
    np.save(tmp_path / "labels.npy", lab)
    rows = np.arange(18_000, 18_200)  # the evaluated rows: every class among them
    run.read_labels(str(tmp_path / "labels.npy"), 20_000, rows[:1])  # its first call imports what it uses
    tracemalloc.start()
    try:
        idx, classes = run.read_labels(str(tmp_path / "labels.npy"), 20_000, rows)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert idx.shape == (200,) and [classes[i] for i in idx] == lab[rows].tolist()
    assert peak < lab.nbytes / 8  # the whole file was loaded before, and np.unique ran over it
    with pytest.raises(run.AnalyzeError, match="has shape \\(20000,\\), the store has 30000 rows"):
        run.read_labels(str(tmp_path / "labels.npy"), 30_000, rows)


@pytest.mark.parametrize("kind", ["object", "npz", "text", "complex"])
def test_labels_that_are_no_plain_array_are_one_line(tmp_path, monkeypatch, kind):
    run_dir = _run_dir(tmp_path, monkeypatch)
    path = run_dir / ("labels.npz" if kind == "npz" else "labels.npy")
    if kind == "complex":  # before the pass, not when summary.json is written
        np.save(path, np.arange(96) * 1j)
        with pytest.raises(run.AnalyzeError, match="holds complex128 values; labels are integers"):
            run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(device="cpu", labels=str(path)))
        assert not (run_dir / "summary.json").exists()
        return
    if kind == "object":
        np.save(path, np.array([{"a": 1}] * 96, dtype=object), allow_pickle=True)
    elif kind == "npz":
        np.savez(path, labels=np.arange(96))
    else:
        path.write_text("a\nb\n")
    with pytest.raises(run.AnalyzeError, match="analyze.labels: .* (is not a .npy array|is an .npz archive)"):
        run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(device="cpu", labels=str(path)))


def test_held_out_batches_run_across_chunks(tmp_path):
    """Batches of the test rows fill across chunks (16 rows each here), so the first batch, the paper's
    "first test batch" of RE 1-sample and the masked curve, has analyze.batch_size rows, not one chunk's."""
    from actdict.harvest.store import open_store

    acts = np.random.default_rng(0).standard_normal((96, 5)).astype(np.float32)
    with StoreWriter(str(tmp_path / "store"), {"hook": "h"}, 5, "float32", 32, 16) as w:
        w.append(acts, np.arange(96), np.zeros(96), np.arange(96))
    store = open_store(str(tmp_path / "store"))
    want = np.r_[0:16, 32:64, 80:96]  # chunks 0, 2, 3, 5
    for batch, limit, sizes in ((20, None, [20, 20, 20, 4]), (64, None, [64]), (20, 45, [20, 20, 5]),
                                (100, None, [64]), (16, 16, [16])):
        got = list(run.held_out_batches(store, [0, 2, 3, 5], batch, limit))
        assert [len(r) for _, r in got] == sizes
        rows = np.concatenate([r for _, r in got])
        assert rows.tolist() == want[:sum(sizes)].tolist()
        np.testing.assert_array_equal(np.concatenate([a for a, _ in got]), acts[rows])


def test_a_warning_of_the_analysis_is_one_line_on_the_command_line(tmp_path):
    """A store whose tokenizer is gone: `actdict analyze` printed '/path/to/analyze/run.py:269: UserWarning:
    no token decoder ...' and then that line of our source ('  decode = resolve_decoder(store.manifest)');
    now one line of ours."""
    import subprocess
    import sys

    g = np.random.default_rng(0)
    gone = tmp_path / "gone"  # the model folder the store was harvested from
    with StoreWriter(str(tmp_path / "store"), {"hook": "h", "model": str(gone)}, 5, "float32", 32, 16) as w:
        w.append(g.standard_normal((64, 5)).astype(np.float32), np.arange(64), np.zeros(64), np.arange(64))
    (tmp_path / "split.json").write_text(json.dumps({"train_chunks": [0, 1], "test_chunks": [2, 3]}))
    save(tmp_path / "dicts" / "sae", make("sae_l1", 5, 8, seed=0), {})
    (tmp_path / "cfg.yaml").write_text(json.dumps({"run_dir": str(tmp_path), "analyze": {"n_features": 2}}))
    r = subprocess.run([sys.executable, "-m", "actdict.cli", "analyze", str(tmp_path / "cfg.yaml")],
                       capture_output=True, text=True, timeout=300, env=os.environ | {"TQDM_DISABLE": "1"})
    assert r.returncode == 0 and r.stderr == (f"actdict: warning: no token decoder for this store (model "
                                              f"folder '{gone}' does not exist); showing token ids\n")


def test_the_analysis_bars_end_full_and_redraw_at_the_stages_pace(tmp_path, monkeypatch, capsys):
    """The held-out pass's bar stopped one chunk short ('analyze: 50%| 1/2' at the end of every analysis,
    the demo's '80% 4/5'), and with max_test_rows counted chunks it never reads; both bars redraw at
    bar_timing's pace (in a log: every 30 s), here only when they start and end."""
    run_dir = _run_dir(tmp_path, monkeypatch)
    monkeypatch.setenv("TQDM_MININTERVAL", "1000")
    for limit, chunks in ((None, "2/2"), (20, "2/2"), (16, "1/1")):
        cfg = AnalyzeConfig(device="cpu", n_features=2, top_k=2, context=1, batch_size=8, max_test_rows=limit)
        run.main(Common(run_dir=str(run_dir)), cfg)
        err = capsys.readouterr().err  # a log's lines (LogLines), a terminal's redraws
        draws = [f for f in err.replace("\r", "\n").split("\n") if f.startswith(("analyze:", "features:"))]
        assert [f.split(":")[0] for f in draws] == ["analyze", "analyze", "features", "features"]
        assert f"100%|██████████| {chunks} " in draws[1] and "| 1/1 " in draws[3]


def test_analyze_batch_size_changes_only_the_first_batch_numbers(tmp_path, monkeypatch):
    """docs/analyze.md, "Reproducibility": every number but the first batch's (re_sample, the masked curve)
    and every feature's hits are the same for any batch_size."""
    run_dir = _run_dir(tmp_path, monkeypatch)
    outs = []
    for batch in (5, 16, 32):
        run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(device="cpu", top_k=4, batch_size=batch))
        summary = json.loads((run_dir / "summary.json").read_text())
        m = {k: v for k, v in summary["models"]["sae"].items() if k not in ("re_sample", "masked_curve")}
        outs.append((m, json.loads((run_dir / "features" / "sae.json").read_text())["features"]))
    assert outs[0] == outs[1] == outs[2]
    assert summary["models"]["sae"]["masked_curve"]["rows"] == 32


def test_under_torchrun_only_rank_0_analyses(tmp_path, monkeypatch):
    """`torchrun ... actdict run`: the analysis after the DDP training is rank 0's alone."""
    run_dir = _run_dir(tmp_path, monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(device="cpu", n_features=2))
    assert not (run_dir / "summary.json").exists() and not (run_dir / "report.html").exists()
    monkeypatch.setenv("RANK", "0")
    run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(device="cpu", n_features=2))
    assert (run_dir / "summary.json").is_file()


def test_a_rank_left_in_one_process_environment_analyses(tmp_path, monkeypatch):
    """RANK=1 without torchrun (no WORLD_SIZE; a launcher's or a script's export left it): the analysis
    returned at once, nothing written and the command's status 0; RANK is torchrun's only under it."""
    run_dir = _run_dir(tmp_path, monkeypatch)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("RANK", "1")
    run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(device="cpu", n_features=2))
    assert (run_dir / "summary.json").is_file() and (run_dir / "report.html").is_file()


def test_max_test_rows_limits_the_rows_analysed(tmp_path, monkeypatch, capsys):
    """analyze.max_test_rows: the first rows of the test chunks only (20 of 32 here, in batches of 8)."""
    run_dir = _run_dir(tmp_path, monkeypatch)
    run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(device="cpu", n_features=2, max_test_rows=20,
                                                         batch_size=8))
    assert json.loads((run_dir / "summary.json").read_text())["n_test_rows"] == 20
    assert "analyze: 20 held-out rows of h" in capsys.readouterr().out


def test_the_start_line_counts_the_chunks_max_test_rows_reads(tmp_path, monkeypatch, capsys):
    """analyze.max_test_rows=16 reads the first of the 2 held-out chunks of 16 rows: the start line said
    '(2 chunks)', every held-out chunk, beside the 16 rows read; it now says the chunks read, of how many."""
    from actdict.harvest.store import open_store

    run_dir = _run_dir(tmp_path, monkeypatch)
    for rows, said in ((16, "16 held-out rows of h (1 of 2 chunks: analyze.max_test_rows) on cpu"),
                       (None, "32 held-out rows of h (2 chunks) on cpu")):
        run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(device="cpu", n_features=2, max_test_rows=rows))
        start = capsys.readouterr().out.splitlines()[0]
        assert f" on {said}" in start, start
    from actdict.analyze.inputs import chunks_read  # the chunks held_out_batches reads

    store = open_store(str(run_dir / "store"))
    read = [chunks_read(store, [4, 5], n) for n in (1, 16, 17, 999, None)]
    assert read == [[4], [4], [4, 5], [4, 5], [4, 5]]


def test_summary_holds_the_live_features_by_density_and_rounded_numbers(tmp_path, monkeypatch):
    """summary.json: the n_features most active latents with fires > 0 only (a dead latent is not among
    them), each density = fires / n_test_rows; floats at 6 significant digits; labels null without
    analyze.labels."""
    import torch

    run_dir = _run_dir(tmp_path, monkeypatch)
    model = make("sae_l1", 5, 8, seed=0)
    with torch.no_grad():  # latent 3: a zero encoder row and a negative bias, so its ReLU code is always 0
        model.encoder.weight[3] = 0.0
        model.encoder.bias[3] = -1.0
    save(run_dir / "dicts" / "sae", model, {})
    run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(device="cpu", n_features=8, top_k=2, context=1))
    s = json.loads((run_dir / "summary.json").read_text())
    m = s["models"]["sae"]
    fires = [f["fires"] for f in json.loads((run_dir / "features" / "sae.json").read_text())["features"]]
    assert fires[3] == 0 and m["dead"] >= 1
    live = sorted((i for i in range(8) if fires[i] > 0), key=lambda i: (-fires[i], i))
    assert [f["index"] for f in m["features"]] == live and 3 not in live
    assert s["n_test_rows"] == 32 and s["labels"] is None
    for f in m["features"]:
        assert f["fires"] == fires[f["index"]] and f["density"] == pytest.approx(f["fires"] / 32, rel=1e-5)

    def floats(x):
        if isinstance(x, dict):
            return [v for y in x.values() for v in floats(y)]
        if isinstance(x, list):
            return [v for y in x for v in floats(y)]
        return [x] if isinstance(x, float) else []

    assert floats(s) and all(float(f"{v:.6g}") == v for v in floats(s))


def test_a_dictionary_of_another_width_than_the_store_is_refused(tmp_path, monkeypatch):
    """A checkpoint of d = 4 beside a store of d = 5: one AnalyzeError naming both widths."""
    run_dir = _run_dir(tmp_path, monkeypatch)
    save(run_dir / "dicts" / "sae", make("sae_l1", 4, 8, seed=0), {})
    with pytest.raises(run.AnalyzeError, match="dictionary sae has d=4 but the store has d=5"):
        run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(device="cpu"))


def test_what_a_record_leaves_unset_is_not_compared():
    """other_store compares only what a dictionary's cfg.json records (None or absent: unset, an older
    checkpoint), and never the path; trained_hook ignores records of no hook."""
    now = {"path": "/else/store", "hook": "h", "rows": 96, "d": 5, "revision": "abc", "content": "c1"}
    old = {"path": "/old/store", "hook": "h", "rows": 96, "d": 5, "revision": None}
    assert run.other_store({"a": {"store": old}, "b": {}}, now) == {}
    assert list(run.other_store({"a": {"store": old | {"rows": 95}}}, now)) == ["a"]
    assert run.trained_hook({"a": {"store": {"hook": "h"}}, "b": {"store": {}}, "c": {}}) == "h"
    records = {"a": {"test_chunks": [4, 5]}, "b": {"test_chunks": [3, 5]}, "c": {}}
    assert run.other_split(records, [5, 4]) == ["b"]  # every record checked, in any chunk order


def test_labels_in_the_home_folder_are_read(tmp_path, monkeypatch):
    """analyze.labels: ~/labels.npy is the home folder's file, as the harvest's source and vectors paths are
    (it was 'not found': '~' was taken for a folder of the current one)."""
    run_dir = _run_dir(tmp_path, monkeypatch)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    np.save(tmp_path / "home" / "labels.npy", np.arange(96) % 2)
    cfg = AnalyzeConfig(device="cpu", n_features=2, top_k=2, context=1, labels="~/labels.npy")
    run.check(Common(run_dir=str(run_dir)), cfg)
    run.main(Common(run_dir=str(run_dir)), cfg)
    ad = json.loads((run_dir / "summary.json").read_text())["models"]["sae"]["ad_class"]
    assert [c["label"] for c in ad] == [0, 1]


def test_a_dictionary_saved_again_while_the_analysis_starts_is_refused(tmp_path, monkeypatch):
    """A training beside the analysis saves ``sae`` again after the analysis read its record (and checked
    its store and split against it) but before it loaded the weights: refused, since the summary would give
    the old record's config_hash to the new weights."""
    run_dir, real = _run_dir(tmp_path, monkeypatch), inputs.read_test_chunks

    def saved_meanwhile(*a):
        save(run_dir / "dicts" / "sae", make("sae_l1", 5, 8, seed=1), {"config_hash": "new"})
        return real(*a)

    monkeypatch.setattr(inputs, "read_test_chunks", saved_meanwhile)
    with pytest.raises(run.AnalyzeError, match=r"dictionary sae \(.*\) was saved again by a training while "
                       "this analysis started: rerun actdict analyze"):
        run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(device="cpu", n_features=2, top_k=2, context=1))
    assert not (run_dir / "summary.json").exists()


def test_a_dictionary_finished_while_the_analysis_starts_waits_for_the_next_one(tmp_path, monkeypatch):
    """A training beside the analysis finishes a new dictionary after the analysis read the records of
    those in the run folder: the analysis goes on with the ones it checked (the newcomer was refused as
    'saved again')."""
    run_dir, real = _run_dir(tmp_path, monkeypatch), inputs.read_test_chunks
    record = json.loads((run_dir / "dicts" / "sae" / "cfg.json").read_text())

    def finished_meanwhile(*a):
        save(run_dir / "dicts" / "new", make("sae_l1", 5, 8, seed=1), record)
        return real(*a)

    monkeypatch.setattr(inputs, "read_test_chunks", finished_meanwhile)
    run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(device="cpu", n_features=2, top_k=2, context=1))
    assert list(json.loads((run_dir / "summary.json").read_text())["models"]) == ["sae"]


def test_a_damaged_record_is_one_line(tmp_path, monkeypatch):
    run_dir = _run_dir(tmp_path, monkeypatch)
    (run_dir / "dicts" / "sae" / "cfg.json").write_text('{"variant": ')  # a copy cut short
    with pytest.raises(run.AnalyzeError, match=r"dicts/sae holds a damaged checkpoint: rerun actdict train, "
                       r"which trains it again \(cfg.json: Expecting value"):
        run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(device="cpu", n_features=2, top_k=2, context=1))


def test_labels_whose_header_claims_more_rows_than_the_file_holds_are_one_line(tmp_path):
    """A damaged .npy header claiming 10**11 rows was read as it says: a 745 GiB allocation (a MemoryError
    traceback, or the machine's memory); the header's shape is now checked against the file first."""
    from numpy.lib import format as npy

    with open(tmp_path / "labels.npy", "wb") as f:
        npy.write_array_header_1_0(f, {"descr": "<i8", "fortran_order": False, "shape": (10**11,)})
        f.write(bytes(800))  # 100 labels
    with pytest.raises(run.AnalyzeError, match=r"labels.npy is not a .npy array of numbers or strings"):
        run.read_labels(str(tmp_path / "labels.npy"), 100, np.arange(100))
    np.save(tmp_path / "labels.npy", np.arange(100) % 3)
    rows, classes = run.read_labels(str(tmp_path / "labels.npy"), 100, np.arange(100))
    assert classes == [0, 1, 2] and type(rows) is np.ndarray and rows[:4].tolist() == [0, 1, 2, 0]


@pytest.mark.parametrize("chunks", [["x"], 4, [6], [-1], [4.5]])
def test_a_split_whose_test_chunks_are_no_chunks_of_the_store_is_one_line(tmp_path, monkeypatch, chunks):
    """A split.json edited or from another run folder ("x", a number, chunks the 6-chunk store lacks) was a
    ValueError, TypeError or IndexError traceback, or 4.5 read as chunk 4; now it is named as damaged."""
    run_dir = _run_dir(tmp_path, monkeypatch)
    (run_dir / "split.json").write_text(json.dumps({"train_chunks": [0], "test_chunks": chunks}))
    said = f"split.json is damaged (test_chunks {chunks} are not chunk numbers of the store's 6)"
    with pytest.raises(run.AnalyzeError, match=re.escape(said)):
        run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(device="cpu", n_features=2, top_k=2, context=1))


def test_links_in_a_shared_run_folder_lead_no_write_or_removal_outside_it(tmp_path, monkeypatch):
    """A run folder from someone else may hold links: report/<name>.parts to a folder of the reader's made
    analyze remove every .js file there, dicts/<name> made train replace a cfg.json there. Both refuse now,
    naming the link, and leave the folder pointed at as it was."""
    from actdict.files import WriteError
    from actdict.train.config import DictConfig, TrainConfig
    from actdict.train.run import main as train

    run_dir = _run_dir(tmp_path / "run", monkeypatch)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "app.js").write_text("precious")
    (mine / "cfg.json").write_text('{"mine": 1}')
    (run_dir / "report").mkdir()
    (run_dir / "report" / "sae.parts").symlink_to(mine)
    with pytest.raises(WriteError, match=r"report/sae.parts is a symbolic link \(to .*mine\), where the "
                                         r"feature files and report pages would be written and older files"):
        run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(device="cpu", n_features=2, top_k=2, context=1))
    (run_dir / "dicts" / "b").symlink_to(mine)
    cfg = TrainConfig(dicts=[DictConfig("b", "sae_l1", k=4)], epochs=1, batch_size=16, test_fraction=0.3,
                      device="cpu")
    with pytest.raises(WriteError, match=r"dicts/b is a symbolic link \(to .*mine\), where the checkpoints"):
        train(Common(run_dir=str(run_dir), store=str(run_dir / "store")), cfg)
    (run_dir / "dicts" / "b").unlink()
    (run_dir / "logs").symlink_to(mine)  # the training logs (logs/<name>.jsonl) likewise
    (mine / "b.jsonl").write_text("my notes\n")
    said = r"logs is a symbolic link \(to .*mine\), where the checkpoints, kept states and training logs"
    with pytest.raises(WriteError, match=said):
        train(Common(run_dir=str(run_dir), store=str(run_dir / "store")), cfg)
    assert sorted(p.name for p in mine.iterdir()) == ["app.js", "b.jsonl", "cfg.json"]
    assert (mine / "cfg.json").read_text() == '{"mine": 1}' and (mine / "app.js").read_text() == "precious"
    assert (mine / "b.jsonl").read_text() == "my notes\n"


def test_a_folder_name_with_control_codes_is_noted_without_them(tmp_path, monkeypatch, capsys):
    """A shared run folder's dicts/ may hold a folder named with ESC sequences: analyze's note that skips it
    printed the name as it is (ESC ] 0 retitles the terminal); it prints the escapes now."""
    run_dir = _run_dir(tmp_path, monkeypatch)
    (run_dir / "dicts" / "x\x1b]0;pwned\x07").mkdir()
    run.main(Common(run_dir=str(run_dir)), AnalyzeConfig(device="cpu", n_features=2, top_k=2, context=1))
    out = capsys.readouterr().out
    assert "x\\x1b]0;pwned\\x07: it has no finished checkpoint" in out and "\x1b" not in out


def test_labels_with_a_value_per_row_are_refused_before_per_class_sums(tmp_path, monkeypatch):
    """Labels that are a per-row value (ids, a continuous target: 2M distinct floats) made one class per
    row: [classes, k] float64 sums per dictionary (65 GB for 2M rows and k = 4,096) and a bar each in the
    report. More than MAX_CLASSES distinct labels are one line instead."""
    monkeypatch.setattr(inputs, "MAX_CLASSES", 50)
    np.save(tmp_path / "target.npy", np.random.default_rng(0).standard_normal(96))  # [96] distinct floats
    with pytest.raises(run.AnalyzeError, match=r"holds 96 distinct labels, more than 50: a label names a"):
        inputs.read_labels(str(tmp_path / "target.npy"), 96, np.arange(96))
    np.save(tmp_path / "classes.npy", np.arange(96) % 50)
    assert len(inputs.read_labels(str(tmp_path / "classes.npy"), 96, np.arange(96))[1]) == 50


def test_held_out_rows_that_do_not_vary_have_no_ev_whatever_their_value(tmp_path, monkeypatch, capsys):
    """112 identical held-out rows: their variance is 0, so EV is n/a (null), not 1 - SSE over the rounding
    residue of sum(x^2) - sum(x)^2 / n (EV was -7e15 here)."""
    d, n = 3, 224
    acts = np.tile(np.float32([1000.3, 3.3, -0.7]), (n, 1))  # [n, d]
    with StoreWriter(str(tmp_path / "store"), {"hook": "h"}, d, "float32", 112, 16) as w:
        w.append(acts, np.arange(n), np.arange(n) // 8, np.arange(n) % 8)
    (tmp_path / "split.json").write_text(json.dumps({"train_chunks": list(range(7)),
                                                     "test_chunks": list(range(7, 14))}))
    save(tmp_path / "dicts" / "sae", make("sae_l1", d, 8, seed=0), {})
    monkeypatch.setattr(run, "resolve_decoder", lambda m: lambda ids: [f"t{i}" for i in ids])
    run.main(Common(run_dir=str(tmp_path)), AnalyzeConfig(device="cpu", n_features=2, top_k=2))
    m = json.loads((tmp_path / "summary.json").read_text())["models"]["sae"]
    assert m["ev"] is None and m["fvu"] is None and m["re_det"] > 0
    assert "(EV n/a: the 112 held-out row(s) do not vary" in capsys.readouterr().out
