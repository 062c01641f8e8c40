"""``actdict summary RUN_DIR...`` (analyze/runs.py): several analysed run folders' numbers in one table."""

import json
import os
import shutil
from pathlib import Path

import pytest

from actdict.analyze import run
from actdict.analyze.config import AnalyzeConfig
from actdict.analyze.tables import column_note
from actdict.cli import main as cli
from actdict.config import Common
from actdict.train.checkpoint import save
from actdict.train.protocol import make
from tests.test_analyze_outputs import _run_dir


def test_the_table_holds_every_dictionary_of_every_run_as_its_summary_has_it(tmp_path, monkeypatch, capsys):
    one = _run_dir(tmp_path / "one", monkeypatch)
    save(one / "dicts" / "topk", make("sae_topk", 5, 6, seed=1, topk=2), {})
    run.main(Common(run_dir=str(one)), AnalyzeConfig(device="cpu", top_k=2, context=1))
    two = tmp_path / "a_longer_run_name"
    shutil.copytree(one, two)
    (two / "dicts" / "sae").rename(two / "dicts" / "renamed")
    run.main(Common(run_dir=str(two)), AnalyzeConfig(device="cpu", top_k=2, context=1))
    capsys.readouterr()  # the analyses' own output
    assert cli(["summary", str(one), str(two), "--json", str(tmp_path / "t.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    saved = json.loads((tmp_path / "t.json").read_text())
    assert [(r["run"], r["dict"]) for r in saved] == [(str(one), "sae"), (str(one), "topk"),
                                                     (str(two), "renamed"), (str(two), "topk")]
    for r, line in zip(saved, lines[1:], strict=True):
        m = json.loads((tmp_path / r["run"] / "summary.json").read_text())["models"][r["dict"]]
        assert r["ad"] == m["ad"] and r["re_det"] == m["re_det"] and r["dead"] == m["dead"]
        cells = line.split()
        assert cells[:4] == [r["run"], "h", r["dict"], m["variant"]] and cells[6] == f"{m['ad']:.2f}"
        assert cells[-1] == f"{m['dead']}/{m['k']}"
    assert 0 < saved[1]["ad"] <= 2  # topk 2: at most two active per row
    assert cli(["summary", str(one), str(tmp_path / "none")]) == 2
    assert "none/summary.json not found: run actdict analyze on" in capsys.readouterr().err


def test_a_summary_of_other_records_is_named_not_a_traceback(tmp_path, capsys):
    """Valid JSON that is not analyze's summary (an edit, an older file): an AttributeError traceback."""
    for i, body in enumerate(({"models": 5}, {"hook": "h", "models": {"x": 5}}, {"hook": "h"},
                              {"models": {"x": {"ad": "1.5"}}})):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "summary.json").write_text(json.dumps(body))
        assert cli(["summary", str(tmp_path / str(i))]) == 2
        err = capsys.readouterr().err
        path = tmp_path / str(i) / "summary.json"
        assert err == (f"actdict: OutputError: {path} is corrupt (its models are not analyze's records): "
                       "rerun `actdict analyze` to rewrite it\n")


def test_runs_that_measured_ce_show_its_columns(tmp_path, capsys):
    """analyze.ce_loss: analyze's table has CE rec. and KL, and summary dropped them (a layer's headline)."""
    m = {"re_det": 30.05, "re_sample": 31.5, "ad": 32.0, "l0": 32.0, "ev": 0.773, "dead": 3, "k": 64}
    for name, ce in (("a", {"ce_recovered": 0.912, "kl": 0.0431}), ("b", {})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({"hook": "h", "models": {"x": m | ce}}))
    assert cli(["summary", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    head, a, b = capsys.readouterr().out.splitlines()
    assert head.split()[-3:] == ["CE", "rec.", "KL"]
    assert a.split()[-3:] == ["3/64", "0.912", "0.0431"] and b.split()[-3:] == ["3/64", "n/a", "n/a"]


def test_a_run_whose_ce_recovered_divides_by_about_nothing_is_noted(tmp_path, capsys):
    """A random-init model's zero ablation costs ~nothing (clean 10.9712, zero 10.9347 for the Pythia config
    on a random-init Pythia-70m): analyze notes that CE recovered says little there, and summary, which
    printed the ratios (1.152) with no word, now repeats the note for that run alone."""
    m = {"re_det": 30.05, "re_sample": 31.5, "ad": 32.0, "l0": 32.0, "ev": 0.773, "dead": 3, "k": 64,
         "ce_recovered": 1.152, "kl": 0.0212}
    for name, zero in (("random", 10.9347), ("trained", 9.1)):
        (tmp_path / name).mkdir()
        ce = {"ce_clean": 10.9712 if name == "random" else 3.3, "ce_zero": zero}
        (tmp_path / name / "summary.json").write_text(json.dumps({"hook": "blocks.2.hook_resid_post",
                                                                   "ce": ce, "models": {"x": m}}))
    assert cli(["summary", str(tmp_path / "random"), str(tmp_path / "trained")]) == 0
    legend, *err = capsys.readouterr().err.splitlines()
    assert legend == column_note(ce=True) and "; CE rec.: (CE_zero - CE_spliced) / (CE_zero - CE_clean)" in (
        legend)
    assert err == [f"actdict summary: note: {tmp_path / 'random'}: zero-ablating blocks.2.hook_resid_post "
                   "changes the CE by -0.0365 nats (clean 10.971, zero ablation 10.935), under 1% of the "
                   "clean CE: CE recovered divides by that difference, so it can pass 1 or fall below 0 "
                   "whatever the reconstruction (an untrained model?); compare the dictionaries' CE and KL "
                   "instead"]


def test_a_summary_json_given_for_its_folder_is_read(tmp_path, capsys):
    """actdict summary runs/*/summary.json said 'runs/a/summary.json/summary.json not found: run actdict
    analyze on runs/a/summary.json first', of an analysed folder."""
    m = {"re_det": 30.05, "re_sample": 31.5, "ad": 32.0, "l0": 32.0, "ev": 0.773, "dead": 3, "k": 64}
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "summary.json").write_text(json.dumps({"hook": "h", "models": {"x": m}}))
    assert cli(["summary", str(tmp_path / "a" / "summary.json"), "--json", str(tmp_path / "t.json")]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:3] == [str(tmp_path / "a"), "h", "x"]
    assert json.loads((tmp_path / "t.json").read_text())[0]["run"] == str(tmp_path / "a")


def test_a_folder_given_twice_however_spelled_is_one_set_of_rows(tmp_path, capsys):
    """runs/a runs/a/ runs/a/summary.json printed runs/a's rows three times."""
    m = {"re_det": 30.05, "re_sample": 31.5, "ad": 32.0, "l0": 32.0, "ev": 0.773, "dead": 3, "k": 64}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({"hook": "h", "models": {"x": m}}))
    a = tmp_path / "a"
    assert cli(["summary", str(a), f"{a}/", str(a / "summary.json"), str(tmp_path / "b"), str(a)]) == 0
    runs = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert runs == [str(a), str(tmp_path / "b")]


def test_a_folder_given_in_another_case_on_a_case_insensitive_disk_is_one_set_of_rows(tmp_path, monkeypatch,
                                                                                     capsys):
    """On macOS' default disk runs/a and runs/A are one folder, and os.path.realpath keeps the case given:
    actdict summary runs/a runs/A printed a's rows twice."""
    m = {"re_det": 30.05, "re_sample": 31.5, "ad": 32.0, "l0": 32.0, "ev": 0.773, "dead": 3, "k": 64}
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "summary.json").write_text(json.dumps({"hook": "h", "models": {"x": m}}))
    (tmp_path / "A").symlink_to("a")  # one folder, opened by either name, as there
    real, big = os.path.realpath, str(tmp_path / "A")

    def kept_case(path, *args, **kwargs):  # no link there: A is resolved as it is spelled
        out = real(path, *args, **kwargs)
        return out.replace(str(tmp_path / "a"), big, 1) if str(path).startswith(big) else out

    monkeypatch.setattr(os.path, "realpath", kept_case)
    assert cli(["summary", str(tmp_path / "a"), str(tmp_path / "A")]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == [str(tmp_path / "a")]


def test_dictionary_folders_as_compare_takes_them_give_their_lines(tmp_path, capsys):
    """actdict summary runs/a/dicts/vaease runs/a/dicts/sae_topk (the arguments of actdict compare) said
    'runs/a/dicts/vaease/summary.json not found: run actdict analyze on runs/a/dicts/vaease first', of an
    analysed run's dictionaries."""
    m = {"re_det": 30.05, "re_sample": 31.5, "ad": 32.0, "l0": 32.0, "ev": 0.773, "dead": 3, "k": 64}
    for name in ("x", "y", "z"):
        (tmp_path / "a" / "dicts" / name).mkdir(parents=True)
        (tmp_path / "a" / "dicts" / name / "cfg.json").write_text("{}")
    models = {"x": m, "y": m | {"ad": 7.5}}
    (tmp_path / "a" / "summary.json").write_text(json.dumps({"hook": "h", "models": models}))
    dicts = tmp_path / "a" / "dicts"
    assert cli(["summary", str(dicts / "y"), str(dicts / "x")]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [r[:3] + [r[5]] for r in rows] == [[str(tmp_path / "a"), "h", "y", "7.50"],
                                              [str(tmp_path / "a"), "h", "x", "32.00"]]
    assert cli(["summary", str(dicts / "z")]) == 2  # trained, not analysed
    assert capsys.readouterr().err == (f"actdict: OutputError: {tmp_path / 'a' / 'summary.json'} holds no "
                                       f"'z' (['x', 'y']): run actdict analyze on {tmp_path / 'a'}\n")
    assert cli(["summary", str(dicts / "w")]) == 2  # misspelt: was 'dicts/w/summary.json not found'
    assert capsys.readouterr().err == (f"actdict: OutputError: {dicts / 'w'}: no trained dictionary there "
                                       "(RUN_DIR/dicts/NAME, with its cfg.json)\n")


def test_help_says_what_the_command_does_in_a_whole_sentence(capsys):
    with pytest.raises(SystemExit):
        cli(["summary", "--help"])
    said = " ".join(capsys.readouterr().out.split())
    assert "several analysed run folders in one table" in said


def test_sort_lists_the_rows_of_all_runs_by_one_column(tmp_path, capsys):
    """Which dictionary has the best EV near L0 32, over two sweeps' run folders: the rows came run by run,
    in each summary's order, with no way to read them along the sparsity axis."""
    recs = {"a": {"x": (64.0, 0.75), "y": (16.0, 0.63), "z": (None, None)}, "b": {"x": (32.0, 0.70)}}
    for folder, models in recs.items():
        (tmp_path / folder).mkdir()
        body = {n: {"re_det": 40.0, "re_sample": 41.0, "ad": l0, "l0": l0, "ev": ev, "dead": 3, "k": 64}
                for n, (l0, ev) in models.items()}
        (tmp_path / folder / "summary.json").write_text(json.dumps({"hook": "h", "models": body}))
    runs = [str(tmp_path / "a"), str(tmp_path / "b")]
    assert cli(["summary", *runs, "--sort", "l0", "--json", str(tmp_path / "t.json")]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert [(c[0][-1], c[2], c[6], c[7]) for c in map(str.split, lines)] == [
        ("a", "y", "16.00", "0.630"), ("b", "x", "32.00", "0.700"), ("a", "x", "64.00", "0.750"),
        ("a", "z", "n/a", "n/a")]
    assert [r["l0"] for r in json.loads((tmp_path / "t.json").read_text())] == [16.0, 32.0, 64.0, None]
    assert cli(["summary", *runs, "--sort", "ev"]) == 0
    assert [line.split()[7] for line in capsys.readouterr().out.splitlines()[1:]] == [
        "0.630", "0.700", "0.750", "n/a"]


def test_rows_of_a_dictionary_trained_again_since_the_analysis_are_named(tmp_path, monkeypatch, capsys):
    """Training a sweep longer after analysing it (train.keep_state, more epochs) replaced its checkpoints,
    and summary went on printing the analysed training's numbers, with nothing saying that compare, export
    and lens now read other weights."""
    one = _run_dir(tmp_path / "one", monkeypatch)
    for name, seed in (("sae", 0), ("topk", 1)):
        save(one / "dicts" / name, make("sae_topk", 5, 6, seed=seed, topk=2), {"config_hash": f"{name}-1"})
    run.main(Common(run_dir=str(one)), AnalyzeConfig(device="cpu", top_k=2, context=1))
    capsys.readouterr()
    assert cli(["summary", str(one)]) == 0 and capsys.readouterr().err == column_note(ce=False) + "\n"
    save(one / "dicts" / "topk", make("sae_topk", 5, 6, seed=2, topk=2), {"config_hash": "topk-2"})
    assert cli(["summary", str(one), "--json", str(tmp_path / "t.json")]) == 0
    out = capsys.readouterr()
    assert [line.split()[2] for line in out.out.splitlines()[1:]] == ["sae", "topk"]  # the rows as before
    said = (f"actdict summary: note: {one}: topk trained again since its analysis (a checkpoint of another "
            "config_hash than the analysed one): their rows are the earlier training's; rerun actdict "
            f"analyze on {one}\n")
    assert out.err == column_note(ce=False) + "\n" + said
    assert [r["retrained"] for r in json.loads((tmp_path / "t.json").read_text())] == [False, True]


def test_json_is_written_before_the_table_a_closed_pipe_stops(tmp_path, monkeypatch):
    """actdict summary ... --json F | head -1: the table's print met a closed pipe (BrokenPipeError, exit
    141 from the shell) before F was written, so F was lost; compare and lens wrote theirs last too."""
    import builtins

    m = {"re_det": 30.05, "re_sample": 31.5, "ad": 32.0, "l0": 32.0, "ev": 0.773, "dead": 3, "k": 64}
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "summary.json").write_text(json.dumps({"hook": "h", "models": {"x": m}}))

    def closed(*a, **k):
        raise BrokenPipeError

    from actdict.analyze.runs import main as summary  # the command line turns the error into status 141

    monkeypatch.setattr(builtins, "print", closed)
    with pytest.raises(BrokenPipeError):
        summary([str(tmp_path / "a"), "--json", str(tmp_path / "t.json")])
    assert json.loads((tmp_path / "t.json").read_text())[0]["ad"] == 32.0


def test_a_dictionary_given_with_its_run_folder_is_one_line(tmp_path, capsys):
    """actdict summary runs/a runs/a/dicts/x printed x's line twice (with --sort, one under the other)."""
    m = {"re_det": 30.05, "re_sample": 31.5, "ad": 32.0, "l0": 32.0, "ev": 0.773, "dead": 3, "k": 64}
    for name in ("x", "y"):
        (tmp_path / "a" / "dicts" / name).mkdir(parents=True)
        (tmp_path / "a" / "dicts" / name / "cfg.json").write_text("{}")
    (tmp_path / "a" / "summary.json").write_text(json.dumps({"hook": "h", "models": {"x": m, "y": m}}))
    a = tmp_path / "a"
    for args in ([a, a / "dicts" / "x"], [a / "dicts" / "x", f"{a}/", a / "dicts" / "y"]):
        assert cli(["summary", *map(str, args), "--sort", "ev"]) == 0
        assert [line.split()[2] for line in capsys.readouterr().out.splitlines()[1:]] == ["x", "y"]


def test_the_variant_is_a_column_where_a_dictionary_is_not_named_after_it(tmp_path, capsys):
    """A sweep's sae_l1_lam1-0.1 or a dictionary named 'wide' left the reader to guess its variant; a run
    whose dictionaries are all named after their variants has no such column."""
    m = {"re_det": 30.05, "re_sample": 31.5, "ad": 32.0, "l0": 32.0, "ev": 0.773, "dead": 3, "k": 64}
    for folder, models in (("a", {"vaease": m | {"variant": "vaease"}}),
                           ("b", {"wide": m | {"variant": "sae_topk"}, "sae_l1": m | {"variant": "sae_l1"}})):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "summary.json").write_text(json.dumps({"hook": "h", "models": models}))
    assert cli(["summary", str(tmp_path / "a")]) == 0
    head, line = capsys.readouterr().out.splitlines()
    assert head.split()[:4] == ["run", "hook", "dict", "RE"] and line.split()[2:4] == ["vaease", "30.05"]
    assert cli(["summary", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    head, *lines = capsys.readouterr().out.splitlines()
    assert head.split()[:5] == ["run", "hook", "dict", "variant", "RE"]
    assert [x.split()[2:5] for x in lines] == [["vaease", "vaease", "30.05"], ["wide", "sae_topk", "30.05"],
                                               ["sae_l1", "sae_l1", "30.05"]]
    assert {x.index("30.05") + 5 for x in lines} == {head.index("RE det") + 6}  # right-aligned under it


def test_a_json_that_cannot_be_written_is_one_line_and_leaves_no_empty_file(tmp_path, full_disk, capsys):
    """actdict summary --json F on a full disk (or in a read-only folder) ended in an OSError traceback and
    left F empty; lens --json alike (test_lens). A WriteError names F, exit 2, and F is not made."""
    m = {"re_det": 30.05, "re_sample": 31.5, "ad": 32.0, "l0": 32.0, "ev": 0.773, "dead": 3, "k": 64}
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "summary.json").write_text(json.dumps({"hook": "h", "models": {"x": m}}))
    full_disk()
    out = tmp_path / "t.json"
    assert cli(["summary", str(tmp_path / "a"), "--json", str(out)]) == 2
    assert capsys.readouterr().err == (f"actdict: WriteError: could not write {out}: No space left on device "
                                       f"({out} is as it was)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_each_summary_is_read_once_and_json_holds_the_same_records(tmp_path, monkeypatch, capsys):
    """summary.json was read twice per run: for its rows, then again for its CE note. Read once, the
    --json file is byte for byte what it was, and the note still follows the --sort order of the runs."""
    from actdict.analyze import runs

    m = {"re_det": 30.05, "re_sample": 31.5, "ad": 32.0, "l0": 32.0, "ev": 0.773, "dead": 3, "k": 64,
         "ce_recovered": 1.152, "kl": 0.0212}
    for name, zero, ad in (("random", 10.9347, 32.0), ("trained", 9.1, 4.5)):
        (tmp_path / name).mkdir()
        ce = {"ce_clean": 10.9712 if name == "random" else 3.3, "ce_zero": zero}
        (tmp_path / name / "summary.json").write_text(json.dumps({"hook": "h", "ce": ce, "models": {
            "x": m | {"ad": ad}, "y": m | {"ad": ad + 1, "variant": "sae"}}}))
    read = []
    monkeypatch.setattr(runs, "read_output", lambda p: read.append(str(p)) or json.loads(p.read_text()))
    monkeypatch.chdir(tmp_path)
    assert cli(["summary", "random", "trained/summary.json", "--sort", "ad", "--json", "t.json"]) == 0
    assert sorted(read) == ["random/summary.json", "trained/summary.json"]
    cols = ('"re_det": 30.05,\n  "re_sample": 31.5,\n  "ad": {},\n  "l0": 32.0,\n  "ev": 0.773,\n'
            '  "dead": 3,\n')
    rec = ('{{\n  "run": "{}",\n  "hook": "h",\n  "dict": "{}",\n  "variant": {},\n  ' + cols +
           '  "k": 64,\n  "ce_recovered": 1.152,\n  "kl": 0.0212,\n  "retrained": false\n }}')
    want = [("trained", "x", "null", "4.5"), ("trained", "y", '"sae"', "5.5"),
            ("random", "x", "null", "32.0"), ("random", "y", '"sae"', "33.0")]
    assert (tmp_path / "t.json").read_text() == "[\n " + ",\n ".join(
        rec.format(r, d, v, ad) for r, d, v, ad in want) + "\n]\n"
    said = capsys.readouterr().err.splitlines()
    assert said[1].startswith("actdict summary: note: random: zero-ablating h changes")


def test_a_run_whose_zero_ablation_has_no_finite_ce_is_noted(tmp_path, capsys):
    """At a norm's hook_scale zero ablation divides by 0: summary.json's ce_zero is null and CE recovered
    n/a; analyze and the report say why (splice.ce_caveat), but summary, which took only a number for
    ce_zero, said nothing. A run without a CE evaluation (no ce_zero) still has no note."""
    m = {"re_det": 30.05, "re_sample": 31.5, "ad": 32.0, "l0": 32.0, "ev": 0.773, "dead": 3, "k": 64,
         "ce_recovered": None, "kl": 0.0212}
    for name, ce in (("scale", {"ce_clean": 3.3, "ce_zero": None}), ("none", {"ce_clean": 3.3})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({"hook": "blocks.1.ln2.hook_scale",
                                                                   "ce": ce, "models": {"x": m}}))
    assert cli(["summary", str(tmp_path / "scale"), str(tmp_path / "none")]) == 0
    assert capsys.readouterr().err.splitlines()[1:] == [
        f"actdict summary: note: {tmp_path / 'scale'}: zero-ablating blocks.1.ln2.hook_scale gives no finite "
        "CE (a norm's hook_scale is divided by: 0 is no value it can take), so CE recovered is n/a; compare "
        "the dictionaries' CE and KL"]


def test_the_printing_tools_piped_into_a_reader_that_leaves_early_end_quietly(tmp_path, monkeypatch):
    """`actdict summary RUN | head -1` and `actdict feature DICT I | head -1`: the reader leaves after one
    line (`actdict store` and dry runs: tests/test_vectors_write.py, test_dry_run.py). Each ends as a Unix
    tool does, with no BrokenPipeError traceback nor 'Exception ignored' at exit: status 141 (as a shell
    reports a process killed by SIGPIPE) when a line found the pipe closed, 0 when everything was written
    before; head shows the first line of the output. A guard: it passes before and after."""
    import subprocess
    import sys

    from tests.pipes import into_head

    one = _run_dir(tmp_path / "one", monkeypatch)
    run.main(Common(run_dir=str(one)), AnalyzeConfig(device="cpu", top_k=2, context=1))
    sae = str(one / "dicts" / "sae")
    actdict = str(Path(sys.executable).parent / "actdict")
    for args in (["summary", str(one)], ["feature", sae, "1"]):
        whole = subprocess.run([actdict, *args], capture_output=True, text=True, timeout=120)
        assert whole.returncode == 0 and whole.stdout.count("\n") > 1, (args, whole.stderr)
        r = into_head(*args)
        said, rc = r.stderr.rsplit("rc ", 1)
        assert int(rc) in (0, 141) and r.stdout == whole.stdout.split("\n")[0] + "\n", (args, r)
        assert said == whole.stderr[:len(said)] and "Traceback" not in said and "Exception" not in said, args
