"""SIGTERM to a real ``actdict train`` outside its steps ends it as one during them does (test_resume_train):
one line, exit status 2, nothing half-written. Before the first step (here while it waits for its run
folder's lock) it stops at once; during the final saves, the saves go on to their end first."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from actdict.harvest.store import write_vectors
from actdict.lock import folder_lock
from actdict.train.resume import STATE

# `actdict train CONFIG` whose first final checkpoint sends the process a SIGTERM as it begins: a real
# signal, at a point the test knows
AT_FINAL_SAVE = """import os, signal, sys
from actdict import cli
from actdict.train import checkpoint
real = checkpoint.save
def save(*a, **k):
    os.kill(os.getpid(), signal.SIGTERM)
    return real(*a, **k)
checkpoint.save = save
sys.exit(cli.main(["train", sys.argv[1]]))
"""

# the same with one Ctrl-C (SIGINT), at the first final checkpoint only (a second would stop it at once)
CTRL_C_AT_FINAL_SAVE = AT_FINAL_SAVE.replace("""def save(*a, **k):
    os.kill(os.getpid(), signal.SIGTERM)
""", """sent = []
def save(*a, **k):
    if not sent:
        sent.append(os.kill(os.getpid(), signal.SIGINT))
""")


def _config(tmp_path: Path) -> Path:
    x = np.random.default_rng(0).standard_normal((400, 6)).astype(np.float32)
    store = write_vectors(str(tmp_path / "store"), x, shard_rows=128, chunk_rows=32).path
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\nstore: {store}\n"
                   "train: {epochs: 2, batch_size: 32, test_fraction: 0.1, device: cpu, dicts: [{name: a, "
                   "variant: sae_l1, k: 8}, {name: b, variant: sae_topk, k: 8, params: {topk: 2}}]}\n")
    return cfg


def _run(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=os.environ | {"OMP_NUM_THREADS": "1"}, **kw)


def test_sigterm_while_the_training_waits_for_its_lock_stops_it_in_one_line(tmp_path):
    """It died by the signal (-15, Python's default) until its steps began."""
    cfg = _config(tmp_path)
    with folder_lock(str(tmp_path / "run"), "run folder"):  # another training's, as far as it can tell
        proc = _run(["-m", "actdict.cli", "train", str(cfg)])
        for line in proc.stdout:
            if "waiting for it to finish" in line:
                break
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert err.strip() == ("actdict: Interrupted: stopped (SIGTERM) before the first step: nothing was "
                           "trained; rerun the same command to start (or continue) the training")
    assert os.listdir(tmp_path / "run") == [".actdict-lock"]  # the folder as it was: the holder's lock


def test_sigterm_during_the_final_saves_lets_them_finish(tmp_path):
    """It died by the signal (-15) between two dictionaries' checkpoints, the second unwritten and the resume
    state left; now both are written, the state removed, and it says so."""
    cfg = _config(tmp_path)
    proc = _run(["-c", AT_FINAL_SAVE, str(cfg)])
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    run = tmp_path / "run"
    assert err.strip().splitlines()[-1] == (
        f"actdict: Interrupted: stopped at step 24, the training's last: its final checkpoints were saved "
        f"first ({run / 'dicts'}), so the training is complete")
    for name in ("a", "b"):
        assert sorted(os.listdir(run / "dicts" / name)) == ["cfg.json", "model.safetensors"]
    assert not (run / STATE).exists()
    again = subprocess.run([sys.executable, "-m", "actdict.cli", "train", str(cfg)], capture_output=True,
                           text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert again.returncode == 0 and again.stdout.splitlines()[1:-1] == [  # within actdict.runlog's lines
        f"train: {n}: finished checkpoint with the same config exists, skipped" for n in "ab"], again.stderr


def test_a_ctrl_c_during_the_final_saves_says_they_finish_first(tmp_path):
    """A first Ctrl-C there also lets the saves finish (and stops the run after them), but said 'saving a
    resume state at the end of this step', of a step long gone; it now says what it waits for."""
    cfg = _config(tmp_path)
    proc = _run(["-c", CTRL_C_AT_FINAL_SAVE, str(cfg)],
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a terminal
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    said = [ln for ln in err.splitlines() if ln.startswith("Ctrl-C")]
    assert said == ["Ctrl-C: the final checkpoints are being saved: they finish first (Ctrl-C again to stop "
                    "at once)"]
    for name in ("a", "b"):
        assert sorted(os.listdir(tmp_path / "run" / "dicts" / name)) == ["cfg.json", "model.safetensors"]


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler for the test: a shell's background job (``pytest ... &``) starts with
    SIGINT ignored, which sigterm_flag rightly keeps, so a raised SIGINT would reach nothing."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def test_a_first_ctrl_c_is_said_by_one_process_with_a_stray_rank(monkeypatch, capfd, python_sigint):
    """A first Ctrl-C says what the training does next on rank 0 only; the rank was read from RANK itself, so
    one process with a RANK left in its environment (no torchrun: no WORLD_SIZE) said nothing. It is
    signals.rank, 0 outside torchrun; under torchrun rank 1 still says nothing."""
    from actdict.train.stopping import sigterm_flag

    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with sigterm_flag(sigint=True) as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop()
    said = "\nCtrl-C: saving a resume state at the end of this step (Ctrl-C again to stop at once)\n"
    assert capfd.readouterr().err == said
    monkeypatch.setenv("WORLD_SIZE", "2")
    with sigterm_flag(sigint=True) as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop()
    assert capfd.readouterr().err == ""
