"""``train.snapshot_every``: every dictionary's weights kept every N steps as a dictionary's folder of its
own (``dicts/<name>/snapshots/step-NNNNNNN``), equal to a run stopped there, and read by actdict compare."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from actdict.analyze import pair
from actdict.cli import main as cli
from actdict.harvest.store import write_vectors


def _config(tmp_path: Path, run: str, extra: str = "", lr: float = 0.01) -> str:
    cfg = tmp_path / f"{run}.yaml"
    cfg.write_text(f"""
run_dir: {tmp_path / run}
store: {tmp_path / 'store'}
seed: 5
train:
  epochs: 2
  batch_size: 32
  test_fraction: 0.25
{extra}  dicts:
    - {{name: vaease, variant: vaease, k: 8, lr: {lr}, params: {{loggamma_init: -1}}}}
    - {{name: topk, variant: sae_topk, k: 8, lr: 0.01, params: {{topk: 2}}}}
""")
    return str(cfg)


def _weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def test_snapshots_are_the_weights_of_a_run_stopped_there_and_compare_reads_them(tmp_path, capsys):
    x = np.random.default_rng(0).standard_normal((512, 6)).astype(np.float32) @ np.diag([3, 2, 1, 1, .5, .1])
    write_vectors(str(tmp_path / "store"), x.astype(np.float32), shard_rows=128, chunk_rows=64)
    assert cli(["train", _config(tmp_path, "run", "  snapshot_every: 10\n")]) == 0  # 12 steps an epoch
    assert cli(["train", _config(tmp_path, "at20", "  max_steps: 20\n")]) == 0
    capsys.readouterr()
    for name in ("vaease", "topk"):
        snaps = tmp_path / "run" / "dicts" / name / "snapshots"
        assert sorted(p.name for p in snaps.iterdir()) == ["step-0000010", "step-0000020"]
        rec = json.loads((snaps / "step-0000020" / "cfg.json").read_text())
        final = json.loads((tmp_path / "run" / "dicts" / name / "cfg.json").read_text())
        assert (rec["step"], rec["epoch"], rec["snapshot_of"]) == (20, 1, name) and "finished" not in rec
        assert rec["config_hash"] == final["config_hash"] and rec["test_chunks"] == final["test_chunks"]
        at20, snap = _weights(tmp_path / "at20" / "dicts" / name), _weights(snaps / "step-0000020")
        assert sorted(at20) == sorted(snap) and all(np.array_equal(at20[k], snap[k]) for k in at20)
        assert not all(np.array_equal(snap[k], v) for k, v in _weights(snaps.parent).items())  # 4 steps on
    final = tmp_path / "run" / "dicts" / "topk"
    snap = final / "snapshots" / "step-0000010"
    out = pair.compare(str(snap), str(final))
    assert out["cofire"]["rows"] == 128 and out["cofire"]["chunks"] == json.loads(
        (final / "cfg.json").read_text())["test_chunks"]
    assert cli(["feature", str(snap)]) == 2  # it has no features file: said, not 'run actdict analyze'
    assert capsys.readouterr().err == (f"actdict: OutputError: {snap} is a snapshot of topk at step 10, "
                                       "which analysis does not read: actdict compare it with the "
                                       f"dictionary ({final}), or actdict feature that one\n")
    assert cli(["summary", str(snap)]) == 2  # said alike, not 'run actdict analyze on it'
    assert capsys.readouterr().err.endswith(f"dictionary ({final}), or actdict summary that one\n")


def test_a_retrained_dictionary_keeps_only_its_own_snapshots_and_the_hash_ignores_them(tmp_path, capsys):
    x = np.random.default_rng(1).standard_normal((512, 6)).astype(np.float32)
    write_vectors(str(tmp_path / "store"), x, shard_rows=128, chunk_rows=64)
    assert cli(["train", _config(tmp_path, "run", "  snapshot_every: 5\n")]) == 0
    snaps = tmp_path / "run" / "dicts" / "vaease" / "snapshots"
    first = sorted(p.name for p in snaps.iterdir())
    assert first == ["step-0000005", "step-0000010", "step-0000015", "step-0000020"]  # of 24 steps
    capsys.readouterr()
    assert cli(["train", _config(tmp_path, "run", "  snapshot_every: 6\n")]) == 0  # not hashed: skipped
    out = capsys.readouterr().out
    assert "train: vaease: finished checkpoint with the same config exists, skipped" in out
    assert sorted(p.name for p in snaps.iterdir()) == first  # kept as they were
    assert cli(["train", _config(tmp_path, "run", "  snapshot_every: 12\n", lr=0.02)]) == 0  # vaease again
    assert sorted(p.name for p in snaps.iterdir()) == ["step-0000012", "step-0000024"]  # the older ones gone
    assert len(list((tmp_path / "run" / "dicts" / "topk" / "snapshots").iterdir())) == 4  # topk untouched


def test_a_refused_resume_leaves_the_stopped_runs_snapshots(tmp_path, capsys, monkeypatch):
    """A run stopped part way (its resume state and snapshots kept), then the command with another lr: the
    training refuses to resume another run's state, and must not have removed that run's snapshots, which
    its own command then continues."""
    from actdict.train import run as train_run

    x = np.random.default_rng(2).standard_normal((512, 6)).astype(np.float32)
    write_vectors(str(tmp_path / "store"), x, shard_rows=128, chunk_rows=64)
    every = "  snapshot_every: 5\n  checkpoint_every: 10\n"

    def killed(*_a, **_k):
        raise KeyboardInterrupt  # after the last step, before the checkpoints: the step-20 state stays

    monkeypatch.setattr(train_run, "save_finished", killed)
    assert cli(["train", _config(tmp_path, "run", every)]) == 130
    monkeypatch.undo()
    snaps = tmp_path / "run" / "dicts" / "vaease" / "snapshots"
    made = sorted(p.name for p in snaps.iterdir())
    assert made == ["step-0000005", "step-0000010", "step-0000015", "step-0000020"]
    other = tmp_path / "other.yaml"
    other.write_text(Path(_config(tmp_path, "run", every, lr=0.02)).read_text())
    assert cli(["train", str(other)]) == 2  # ResumeConflict
    assert "ResumeConflict" in capsys.readouterr().err
    assert sorted(p.name for p in snaps.iterdir()) == made
    assert cli(["train", _config(tmp_path, "run", every)]) == 0  # its own command finishes it
    assert sorted(p.name for p in snaps.iterdir()) == made


def test_a_keep_state_extension_keeps_the_snapshots_of_the_run_it_continues(tmp_path, capsys):
    """2 epochs kept (train.keep_state), then 3: the snapshots of steps 10 and 20 are the longer run's first
    ones, as an uninterrupted 3-epoch run's (the extension used to remove them as another training's)."""
    x = np.random.default_rng(0).standard_normal((512, 6)).astype(np.float32)
    write_vectors(str(tmp_path / "store"), x, shard_rows=128, chunk_rows=64)
    extra = "  snapshot_every: 10\n  keep_state: true\n  schedule: constant\n"
    assert cli(["train", _config(tmp_path, "run", extra)]) == 0
    assert cli(["train", _config(tmp_path, "run", extra), "train.epochs=3"]) == 0
    assert cli(["train", _config(tmp_path, "whole", extra), "train.epochs=3"]) == 0
    assert "continues the finished run kept at epoch 2" in capsys.readouterr().out
    for name in ("vaease", "topk"):
        snaps, whole = (tmp_path / run / "dicts" / name / "snapshots" for run in ("run", "whole"))
        steps = ["step-0000010", "step-0000020", "step-0000030"]
        assert sorted(p.name for p in snaps.iterdir()) == sorted(p.name for p in whole.iterdir()) == steps
        final = json.loads((snaps.parent / "cfg.json").read_text())["config_hash"]
        for step in steps:
            assert json.loads((snaps / step / "cfg.json").read_text())["config_hash"] == final
            a, b = _weights(snaps / step), _weights(whole / step)
            assert all(np.array_equal(a[k], b[k]) for k in a)


def test_analysis_finds_the_final_features_in_each_snapshot(tmp_path, capsys, monkeypatch):
    """analyze reads the training's snapshots (summary.json formation, a report figure): at each snapshot's
    step, the final dictionary's live features' mean best cosine among the snapshot's decoder columns and
    the share within 0.9; the snapshot at the last step is the dictionary itself (1 and 1)."""
    x = np.random.default_rng(0).standard_normal((512, 6)).astype(np.float32) @ np.diag([3, 2, 1, 1, .5, .1])
    write_vectors(str(tmp_path / "store"), x.astype(np.float32), shard_rows=128, chunk_rows=64)
    cfg = _config(tmp_path, "run", "  snapshot_every: 12\n")  # 12 steps an epoch: steps 12 and 24 (the end)
    wide = ("train.dicts=[{name: vaease, variant: vaease, k: 8}, "
            "{name: topk, variant: sae_topk, k: 512, params: {topk: 1}}]")
    assert cli(["train", cfg, wide]) == 0
    monkeypatch.setattr("actdict.analyze.formation.NOTE_MACS", 2 * 512 ** 2 * 6 - 1)  # topk's is above it
    capsys.readouterr()
    assert cli(["analyze", cfg, wide, "analyze.top_k=1"]) == 0
    noted = [line for line in capsys.readouterr().out.splitlines() if "formation:" in line]
    assert noted == ["analyze: topk's formation: 2 snapshots, 3.1e+06 multiply-adds "
                     "(analyze.shared_directions=false skips them)"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    run = tmp_path / "run"
    for name in ("vaease", "topk"):
        f = summary["models"][name]["formation"]
        assert f["step"] == [12, 24] and f["mmcs"][1] == pytest.approx(1.0) and f["matched"][1] == 1.0
    file = json.loads((run / "features" / "topk.json").read_text())
    feats = file["features"]
    fires = np.array([r["fires"] for r in feats])  # [k] on the held-out rows
    unit = [w / np.linalg.norm(w, axis=0) for w in (_weights(p)["decoder.weight"] for p in (  # [d, k] columns
        run / "dicts" / "topk", run / "dicts" / "topk" / "snapshots" / "step-0000012"))]
    assert 0 < (fires > 0).sum() < 128  # one feature per held-out row: the dead ones are not looked for
    best = (unit[0].T @ unit[1]).max(1)[fires > 0]  # each live final feature's best cosine in the snapshot
    f = summary["models"]["topk"]["formation"]
    assert f["mmcs"][0] == pytest.approx(best.mean(), abs=1e-5) and f["mmcs"][0] < 0.999
    assert f["matched"][0] == pytest.approx((best >= 0.9).mean())
    every = (unit[0].T @ unit[1]).max(1)  # [k] every final feature's, for its page
    assert file["formation_steps"] == [12, 24]
    assert [r["formed"][0] for r in feats] == pytest.approx(every, abs=1e-4)
    assert all(r["formed"][1] == pytest.approx(1.0) for r in feats)
    assert "Feature formation: the final features found in each snapshot" in (run / "report.html").read_text()
    assert cli(["analyze", cfg, wide, "analyze.top_k=1", "analyze.shared_directions=false"]) == 0  # skips it
    assert json.loads((run / "summary.json").read_text())["models"]["topk"]["formation"] is None


def test_a_damaged_snapshot_is_left_out_of_the_formation_with_a_warning(tmp_path, capsys):
    """A snapshot whose weights are cut short (a broken copy) used to stop the analysis after its whole
    pass, telling the user to rerun actdict train, which skips the finished dictionary and leaves it so."""
    from actdict.errors import ActdictWarning

    x = np.random.default_rng(0).standard_normal((512, 6)).astype(np.float32)
    write_vectors(str(tmp_path / "store"), x, shard_rows=128, chunk_rows=64)
    cfg = _config(tmp_path, "run", "  snapshot_every: 10\n")
    assert cli(["train", cfg]) == 0
    bad = tmp_path / "run" / "dicts" / "topk" / "snapshots" / "step-0000010"
    (bad / "model.safetensors").write_bytes((bad / "model.safetensors").read_bytes()[:100])
    with pytest.warns(ActdictWarning, match=r"topk's formation leaves out its snapshot at step 10: .*"
                                            r"step-0000010 holds a damaged snapshot: delete it, no training"):
        assert cli(["analyze", cfg]) == 0
    models = json.loads((tmp_path / "run" / "summary.json").read_text())["models"]
    assert models["topk"]["formation"]["step"] == [20] and models["vaease"]["formation"]["step"] == [10, 20]
    assert json.loads((tmp_path / "run" / "features" / "topk.json").read_text())["formation_steps"] == [20]


def test_the_formation_bar_redraws_at_the_stages_pace(tmp_path, capsys, monkeypatch):
    """The analysis' bars redraw at bar_timing's pace (in a log file: every 30 s); the formation bar, over
    the snapshots, drew at tqdm's 0.1 s whatever the log: here a snapshot takes 0.2 s to read."""
    from actdict.analyze import formation

    x = np.random.default_rng(0).standard_normal((512, 6)).astype(np.float32)
    write_vectors(str(tmp_path / "store"), x, shard_rows=128, chunk_rows=64)
    cfg = _config(tmp_path, "run", "  snapshot_every: 6\n")
    assert cli(["train", cfg]) == 0
    load = formation.checkpoint.load
    monkeypatch.setattr(formation.checkpoint, "load", lambda *a: (time.sleep(0.2), load(*a))[1])
    monkeypatch.setenv("TQDM_MININTERVAL", "1000")
    capsys.readouterr()
    assert cli(["analyze", cfg]) == 0
    err = capsys.readouterr().err.replace("\r", "\n")  # a log's lines (LogLines), a terminal's redraws
    draws = [f.split("|")[0] for f in err.split("\n") if f.startswith("formation")]
    assert draws == ["formation topk:   0%", "formation vaease:   0%"]  # then cleared (leave=False)


def test_the_finished_run_a_keep_state_extension_continues_keeps_its_snapshots_in_the_analysis(
        tmp_path, capsys, monkeypatch):
    """2 epochs kept (train.keep_state), then an extension to 3 stopped before its end: the analysis reads
    the 2-epoch dictionaries, and found none of their snapshots, which the extension had given its own
    config hash."""
    from actdict.train import run as train_run

    x = np.random.default_rng(0).standard_normal((512, 6)).astype(np.float32)
    write_vectors(str(tmp_path / "store"), x, shard_rows=128, chunk_rows=64)
    cfg = _config(tmp_path, "run", "  snapshot_every: 10\n  keep_state: true\n  schedule: constant\n")
    assert cli(["train", cfg]) == 0
    monkeypatch.setattr(train_run, "save_finished", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert cli(["train", cfg, "train.epochs=3"]) == 130  # stopped after step 36, its resume state kept
    monkeypatch.undo()
    assert cli(["analyze", cfg]) == 0
    models = json.loads((tmp_path / "run" / "summary.json").read_text())["models"]
    assert [models[n]["formation"]["step"] for n in ("topk", "vaease")] == [[10, 20], [10, 20]]
    assert cli(["train", cfg, "train.epochs=3"]) == 0 and cli(["analyze", cfg, "train.epochs=3"]) == 0
    models = json.loads((tmp_path / "run" / "summary.json").read_text())["models"]
    assert [models[n]["formation"]["step"] for n in ("topk", "vaease")] == [[10, 20, 30]] * 2


def test_the_formation_figure_keeps_each_dictionarys_colour_and_name():
    """The formation figure coloured its dictionaries by their place among those with snapshots, so where
    the first dictionary has none the second took the first one's colour of every other figure, and one
    dictionary's lines showed no legend: each now keeps the report's colour (the training figures' rule) and
    the legend is shown."""
    from plotly.colors import qualitative

    from actdict.analyze.report_figures import _formation_figure

    f = {"step": [10, 20], "mmcs": [0.5, 1.0], "matched": [0.1, 1.0]}
    (fig,) = _formation_figure({"a": {"formation": None}, "b": {"formation": f}})
    assert [t.name for t in fig.data] == ["b", "b (share within cos 0.9)"] and fig.layout.showlegend is True
    assert fig.data[0].line.color == fig.data[1].line.color == qualitative.Plotly[1]
