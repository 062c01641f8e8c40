"""The training log (``actdict.train.log``): interval means of every loss term, written as the run goes,
cut back to the resumed step, tied to the training that wrote it, and drawn in the report."""

import json

import numpy as np
import pytest
from plotly.colors import qualitative

from actdict.analyze.report import render
from actdict.analyze.report_figures import training_figures
from actdict.config import Common
from actdict.harvest.store import write_vectors
from actdict.train import run as train_run
from actdict.train.config import DictConfig, TrainConfig
from actdict.train.log import append_record, curve, log_path, read_log, start_log, trained_curve
from actdict.train.run import main
from actdict.train.schedule import lr_at

TRAINING = '<h2 id="training">Training</h2>'  # report.html's section heading

DICTS = [DictConfig(name="vaease", variant="vaease", k=8, lr=0.01),
         DictConfig(name="l1", variant="sae_l1", k=8, lr=0.01)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    x = np.random.default_rng(3).standard_normal((700, 5)).astype(np.float32)
    return write_vectors(str(tmp_path_factory.mktemp("s") / "store"), x, shard_rows=200, chunk_rows=50)


def _train(store, folder, **kw) -> Common:
    common = Common(run_dir=str(folder), seed=2, store=store.path)
    main(common, TrainConfig(**{"dicts": DICTS, "epochs": 3, "batch_size": 40, "device": "cpu",
                                "log_every": 7, "checkpoint_every": 0} | kw))
    return common


def test_records_are_the_interval_means_of_the_epoch_history(store, tmp_path):
    _train(store, tmp_path)
    for dc in DICTS:
        cfg = json.loads((tmp_path / "dicts" / dc.name / "cfg.json").read_text())
        head, records = read_log(log_path(tmp_path, dc.name))
        assert head == {"config_hash": cfg["config_hash"], "dict": dc.name, "variant": dc.variant}
        total, per = cfg["steps"], cfg["steps"] // 3
        assert [r["step"] for r in records] == sorted({*range(7, total + 1, 7), per, 2 * per, total})
        assert sum(r["steps"] for r in records) == total  # every step in exactly one interval
        assert [r["epoch"] for r in records] == [(r["step"] - 1) // per for r in records]
        t = TrainConfig()
        for r in records:  # the learning rate of the interval's last step (cosine restarts)
            want = lr_at(r["step"] - 1, dc.lr, t.schedule, total, t.warmup_steps, t.eta_min, t.t0)
            assert r["lr"] == pytest.approx(want)
        for e, epoch in enumerate(cfg["history"]):  # weighted by their steps, an epoch's records: its means
            rs = [r for r in records if r["epoch"] == e]
            for term, mean in epoch.items():
                if term != "epoch":
                    got = sum(r[term] * r["steps"] for r in rs) / sum(r["steps"] for r in rs)
                    assert got == pytest.approx(mean, rel=1e-9, abs=1e-12), (dc.name, e, term)
        assert records[0]["sse"] > records[-1]["sse"]  # it learned


def test_start_log_keeps_the_records_of_the_resumed_training_up_to_its_step(tmp_path):
    path = tmp_path / "logs" / "a.jsonl"
    start_log(path, {"config_hash": "h1", "dict": "a", "variant": "sae_l1"})
    for step in (5, 10, 15):
        append_record(path, {"step": step, "epoch": 0, "steps": 5, "lr": 0.1, "loss": step / 10})
    with open(path, "a") as f:
        f.write('{"step": 20, "epo')  # a kill in the middle of a record
    head, records = read_log(path)
    assert head["config_hash"] == "h1" and [r["step"] for r in records] == [5, 10, 15]
    start_log(path, {"config_hash": "h1", "dict": "a", "variant": "sae_l1"}, 10, "h1")  # resumed at step 10
    assert [r["step"] for r in read_log(path)[1]] == [5, 10]
    append_record(path, {"step": 15, "epoch": 0, "steps": 5, "lr": 0.1, "loss": float("nan")})
    assert read_log(path)[1][-1]["loss"] is None  # JSON has no NaN
    start_log(path, {"config_hash": "h2", "dict": "a", "variant": "sae_l1"}, 15, "h1")  # extends h1's run
    head, records = read_log(path)
    assert head["config_hash"] == "h2" and [r["step"] for r in records] == [5, 10, 15]
    start_log(path, {"config_hash": "h3", "dict": "a", "variant": "sae_l1"}, 15, "h9")  # another's state
    assert read_log(path) == ({"config_hash": "h3", "dict": "a", "variant": "sae_l1"}, [])
    start_log(path, {"config_hash": "h3", "dict": "a", "variant": "sae_l1"})  # from the start
    assert read_log(path)[1] == []
    path.write_text("not json\n")
    assert read_log(path) == (None, []) and read_log(tmp_path / "none.jsonl") == (None, [])


def windows_text_files(monkeypatch) -> None:
    """open() as on Windows: a file opened to write in text mode (newline unset) ends each line with
    '\\r\\n'."""
    import builtins

    real = builtins.open

    def windows_open(file, mode="r", *args, **kwargs):
        if "b" not in mode and set(mode) & set("wax+") and kwargs.get("newline") is None and len(args) < 3:
            kwargs["newline"] = "\r\n"
        return real(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", windows_open)


def _logged(path) -> bytes:
    start_log(path, {"config_hash": "h1", "dict": "a", "variant": "sae_l1"})
    for step in (5, 10, 15):
        append_record(path, {"step": step, "epoch": 0, "steps": 5, "lr": 0.1, "loss": step / 10})
    start_log(path, {"config_hash": "h1", "dict": "a", "variant": "sae_l1"}, 10, "h1")  # resumed at step 10
    append_record(path, {"step": 15, "epoch": 0, "steps": 5, "lr": 0.1, "loss": 1.5})
    return path.read_bytes()


def test_a_log_written_on_windows_is_the_bytes_linux_writes(tmp_path, monkeypatch):
    """The records appended through text mode ended with '\\r\\n' on Windows and the header and the lines
    a resume kept (written as bytes) with '\\n': one file of both endings, unlike Linux's. Every line now
    ends with '\\n' there too, and the log reads back the same."""
    linux = _logged(tmp_path / "linux" / "a.jsonl")
    windows_text_files(monkeypatch)
    assert _logged(tmp_path / "windows" / "a.jsonl") == linux
    assert linux.count(b"\n") == 4 and b"\r" not in linux
    assert [r["step"] for r in read_log(tmp_path / "windows" / "a.jsonl")[1]] == [5, 10, 15]


def test_curve_merges_records_into_step_weighted_groups():
    records = [{"step": 3 * i + 3, "epoch": i // 2, "steps": 3 if i else 1, "lr": 1 / (i + 1),
                "sse": float(i), "time": 0.0} for i in range(5)]
    records[3]["aux"] = 1.0
    c = curve(records, points=2)  # groups of 3: records 0-2, 3-4
    assert c["step"] == [9, 15] and c["epoch"] == [1, 2] and c["lr"] == [1 / 3, 1 / 5]
    assert c["sse"] == [pytest.approx((0 * 1 + 1 * 3 + 2 * 3) / 7), pytest.approx((3 * 3 + 4 * 3) / 6)]
    assert c["aux"] == [None, None] and "time" not in c and "steps" not in c
    assert curve(records, points=1000)["sse"] == [0.0, 1.0, 2.0, 3.0, 4.0] and curve([]) == {}


def test_analysis_draws_the_log_of_the_checkpoints_training_only(store, tmp_path):
    _train(store, tmp_path, epochs=1, log_every=2)
    cfg = json.loads((tmp_path / "dicts" / "l1" / "cfg.json").read_text())
    c = trained_curve(tmp_path, "l1", cfg["config_hash"])
    assert c["step"] == list(range(2, cfg["steps"] + 1, 2)) + ([cfg["steps"]] if cfg["steps"] % 2 else [])
    assert set(c) == {"step", "epoch", "lr", "loss", "sse", "penalty", "decoder_sq_norm",  # the terms,
                      "grad_norm",  # the gradient's norm, and what each last batch measured:
                      "eval_ad", "eval_l0", "eval_ev", "eval_live"}
    assert trained_curve(tmp_path, "l1", "another hash") is None  # a training started since: not this one
    # a retraining with another config starts its log over, and is interrupted: the checkpoint in dicts/l1
    # is still the first training's, and so are the curves analysis draws for it
    header = {"dict": "l1", "variant": "sae_l1"}
    start_log(log_path(tmp_path, "l1"), header | {"config_hash": "another hash"}, keep=cfg["config_hash"])
    assert read_log(log_path(tmp_path, "l1"))[0]["config_hash"] == "another hash"
    assert trained_curve(tmp_path, "l1", cfg["config_hash"]) == c
    # and a third config, started after that one was interrupted too: the checkpoint is still the first's
    start_log(log_path(tmp_path, "l1"), header | {"config_hash": "a third"}, keep=cfg["config_hash"])
    assert trained_curve(tmp_path, "l1", cfg["config_hash"]) == c
    models = {"l1": {"k": 8, "training_log": c},
              "vaease": {"k": 8, "training_log": {"step": [1, 2], "loss": [-3.0, -4.0], "sse": [0.0, 2.0]}}}
    html = render({"models": models})
    training = html.split(TRAINING)[1]  # after the distributions (and plotly.js, in the first)
    assert training.count("Plotly.newPlot") == 6  # sse, loss, grad_norm, eval_ad, eval_ev, eval_live
    assert training.count('"name":"l1"') == 6 and training.count('"name":"vaease"') == 2  # vaease: sse, loss
    assert "Training: the gradient's L2 norm (before train.grad_clip)" in training
    assert '"type":"log"' in training and '"type":"linear"' in training  # a negative -ELBO: loss linear
    assert TRAINING not in render({"models": {"l1": {"k": 8, "training_log": None}}})


def test_a_log_that_cannot_be_written_is_said_once_and_training_goes_on(store, tmp_path, monkeypatch,
                                                                       capsys):
    def full_disk(path, record):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train_run, "append_record", full_disk)
    _train(store, tmp_path, epochs=1)
    out = capsys.readouterr().out
    assert out.count("could not append to") == 1 and "No space left on device" in out
    assert (tmp_path / "dicts" / "l1" / "model.safetensors").is_file()
    assert read_log(log_path(tmp_path, "l1"))[1] == []  # the header only


@pytest.mark.parametrize("stop_at, kw", [(6, {"max_steps": 6}), (7, {"epochs": 2}), (14, {"epochs": 2})])
def test_a_run_stopped_at_its_epochs_or_its_own_last_step_resumes_to_the_same_history_and_log(
        store, tmp_path, stop_training, stop_at, kw):
    """Stopped (SIGTERM) at the last step of an epoch (7 of 7), of the run (14) or at max_steps (6, in epoch),
    the resumed run ends the epoch as the uninterrupted one did: the same history entry (a run resumed at
    max_steps skipped it, and its last log record) and the same last record, eval_* included (measured on
    that epoch's last batch, read again: the resumed run never saw it)."""
    cfg = TrainConfig(dicts=DICTS, batch_size=80, test_fraction=0.2, device="cpu", log_every=4,
                      **({"epochs": 3} | kw))
    main(Common(run_dir=str(tmp_path / "ref"), seed=1, store=store.path), cfg)
    common = Common(run_dir=str(tmp_path / "run"), seed=1, store=store.path)
    stop_training(common, cfg, stop_at)
    main(common, cfg)
    for dc in DICTS:
        ref, got = (json.loads((tmp_path / r / "dicts" / dc.name / "cfg.json").read_text())
                    for r in ("ref", "run"))
        assert got["steps"] == ref["steps"] and got["history"] == ref["history"] and ref["history"]
        want, have = (read_log(log_path(tmp_path / r, dc.name))[1] for r in ("ref", "run"))
        assert [{k: v for k, v in r.items() if k != "time"} for r in have] == [
            {k: v for k, v in r.items() if k != "time"} for r in want]
        assert "eval_ad" in have[-1] and have[-1]["step"] == ref["steps"]


def test_held_out_rows_measured_at_the_end_are_what_analysis_reports_of_them(store, tmp_path, capsys):
    """train.probe_rows: the last record's held_* are the analysis' EV, AD, L0 and live share of the same
    first held-out rows (analyze.max_test_rows); changing probe_rows retrains nothing; with no held-out
    rows it is refused before anything runs."""
    from actdict.analyze import run as analyze_run
    from actdict.analyze.config import AnalyzeConfig
    from actdict.config import ConfigError

    common = _train(store, tmp_path, probe_rows=30)  # of the 50 held out (one chunk)
    analyze_run.main(common, AnalyzeConfig(device="cpu", max_test_rows=30, n_features=1, top_k=1, context=0))
    summary = json.loads((tmp_path / "summary.json").read_text())
    for dc in DICTS:
        _, records = read_log(log_path(tmp_path, dc.name))
        assert all({"held_ad", "held_l0", "held_ev", "held_live"} <= set(r) for r in records)  # every one,
        assert any("eval_ev" in r for r in records)  # beside the last batches' (not an epoch's short one)
        last, m = records[-1], summary["models"][dc.name]
        assert last["held_ev"] == pytest.approx(m["ev"], abs=1e-5), dc.name
        assert last["held_ad"] == pytest.approx(m["ad"], abs=1e-6)
        assert last["held_l0"] == pytest.approx(m["l0"])
        assert last["held_live"] == pytest.approx(1 - m["dead"] / m["k"])
    assert len({r["held_ev"] for r in records}) > 1  # a curve, not one value
    training = render(summary).split(TRAINING)[1]  # each measure: its held-out curve dashed
    assert training.count('"dash":"dash"') == 3 * len(DICTS) and "dashed: held-out rows" in training
    for i, name in enumerate(summary["models"]):  # in its dictionary's colour, one legend entry for both
        assert training.count(f'"legendgroup":"{name}","line":{{"color":"{qualitative.Plotly[i]}"') == 6
    capsys.readouterr()
    _train(store, tmp_path, probe_rows=60)
    assert "finished checkpoint with the same config exists, skipped" in capsys.readouterr().out
    _train(store, tmp_path / "more", probe_rows=60, epochs=1)  # more than are held out: all, and a note
    assert "train.probe_rows=60: the held-out chunks it reads (up to 16) hold 50 rows, all measured" in \
        capsys.readouterr().out
    with pytest.raises(ConfigError, match="probe_rows=60 measures held-out rows, and train.test_fraction is"):
        TrainConfig(probe_rows=60, test_fraction=0.0)


def test_a_log_of_held_out_measures_only_draws_its_dashed_curves():
    """Every batch shorter than half of train.batch_size (900 imported vectors, batch_size 2,048) logs no
    eval_*, but with train.probe_rows it logs held_*: the report draws them, dashed, instead of stopping with
    KeyError 'eval_ad'."""
    log = {"step": [1, 2], "loss": [3.0, 2.0], "sse": [3.0, 2.0], "held_ad": [5.0, 4.0],
           "held_ev": [0.1, 0.3], "held_live": [1.0, 0.9]}
    training = render({"models": {"l1": {"k": 8, "training_log": log}}}).split(TRAINING)[1]
    assert training.count("Plotly.newPlot") == 5  # sse, loss, and the three held-out measures
    assert training.count('"name":"l1 (held-out)"') == 3 and training.count('"dash":"dash"') == 3
    assert '"showlegend":false' not in training  # the only curve of its figure: named in the legend


def test_a_log_of_one_record_is_drawn_as_points():
    """A run shorter than train.log_every logs one record (at its last step): a one-point line draws
    nothing, so every training figure was an empty frame; one record is drawn as markers."""
    one = {"step": [88], "loss": [185.8], "sse": [157.6], "eval_ad": [99.0], "eval_ev": [0.75],
           "eval_live": [0.8], "held_ev": [0.74]}
    two = {"step": [50, 88], "loss": [300.0, 185.8], "sse": [250.0, 157.6]}
    training = render({"models": {"one": {"k": 8, "training_log": one}, "two": {"k": 8, "training_log": two}}}
                      ).split(TRAINING)[1]
    assert training.count('"mode":"markers"') == 6 and training.count('"mode":"lines"') == 2  # held_ev too


def test_each_dictionary_keeps_its_colour_and_name_in_every_training_figure():
    """A dictionary whose log lacks a term (a plugin's loss_terms without sse) left the other one alone in
    that figure, drawn in the first dictionary's colour and without a legend (plotly shows none for one
    curve), so it read as the first one's curve. Each keeps its colour (the distributions' order) and the
    legend is shown."""
    a = {"step": [1, 2], "loss": [3.0, 2.0]}
    b = {"step": [1, 2], "loss": [5.0, 4.0], "sse": [4.0, 3.0]}
    models = {"a": {"training_log": a}, "b": {"training_log": b}}
    figs = {f.layout.title.text: f for f in training_figures(models)}
    sse, loss = figs["Training: reconstruction error (sse per row)"], figs["Training: the objective (loss)"]
    assert [t.name for t in sse.data] == ["b"] and sse.layout.showlegend is True
    assert sse.data[0].line.color == loss.data[1].line.color == qualitative.Plotly[1]
    assert loss.data[0].line.color == qualitative.Plotly[0]


def test_the_training_figures_axes_say_what_they_measure_not_the_log_column():
    """The training figures' y axes were titled with the log's column names ('eval_ev', 'eval_live',
    'grad_norm'): they say what each measures now, with (log scale) where it is one."""
    log = {"step": [1, 2], "sse": [3.0, 2.0], "loss": [3.0, 2.0], "grad_norm": [1.0, 0.5],
           "eval_ad": [5.0, 4.0], "eval_ev": [0.1, 0.3], "eval_live": [1.0, 0.9]}
    figs = training_figures({"l1": {"k": 8, "training_log": log}})
    assert [f.layout.yaxis.title.text for f in figs] == [
        "sse per row (log scale)", "loss (log scale)", "gradient L2 norm (log scale)", "AD per row",
        "explained variance", "share of latents active"]
