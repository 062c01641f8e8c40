"""A real interruption: ``actdict train`` killed with SIGKILL after a checkpoint, rerun, stopped with
SIGTERM, rerun, stopped with Ctrl-C (SIGINT), rerun to the end, must end with exactly the weights of an
uninterrupted run (same batches, Adam state, noise), on the ``device`` fixture's device (conftest.py: the
CPU, or the GPU where there is one). A run of another config in that folder is refused, not resumed."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from actdict.config import common_of, load_experiment, section
from actdict.harvest.store import write_vectors
from actdict.train.config import TrainConfig
from actdict.train.log import log_path, read_log
from actdict.train.resume import STATE, ResumeConflict, read_meta
from actdict.train.run import main

DICTS = ("vaease", "topk", "official")  # official: the authors' BatchNorm body (running statistics)


def _config(tmp_path: Path, store: str, run: str, device: str) -> Path:
    cfg = tmp_path / f"{run}.yaml"
    cfg.write_text(f"""
run_dir: {tmp_path / run}
seed: 4
store: {store}
train:
  epochs: 8
  batch_size: 32
  buffer_chunks: 3
  test_fraction: 0.1
  device: {device}
  checkpoint_every: 20
  log_every: 7  # the training log's intervals cross the resume states' steps
  probe_rows: 40  # and measure held-out rows (held_*): equal too after a resume
  schedule: warmup_cosine
  warmup_steps: 30
  dicts:
    - {{name: vaease, variant: vaease, k: 12, lr: 0.01, params: {{loggamma_init: -1}}}}
    - {{name: topk, variant: sae_topk, k: 12, lr: 0.01, params: {{topk: 3}}}}
    - {{name: official, variant: vaease, k: 12, lr: 0.01, params: {{loggamma_init: -1, encoder: resmlp_bn,
        decoder: mlp, decoder_hidden: 12, head: clip}}}}
""")
    return cfg


def _launch(cfg: Path, log: Path) -> subprocess.Popen:
    """``actdict train cfg`` in a subprocess; stdout and stderr go to log.out / log.err."""
    exe = Path(sys.executable).with_name("actdict")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "actdict.cli"]
    with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
        return subprocess.Popen([*cmd, "train", str(cfg)], stdout=out, stderr=err,
                                env=os.environ | {"OMP_NUM_THREADS": "1"},  # SIGINT as in a terminal,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # even in CI


def _logs(log: Path) -> tuple[str, str]:
    return Path(f"{log}.out").read_text(), Path(f"{log}.err").read_text()


def _wait_for_checkpoint(proc: subprocess.Popen, state: Path, after: int) -> int:
    """Poll until the resume state records a step > after; returns that step."""
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            meta = read_meta(state) if state.exists() else None
        except RuntimeError:  # safetensors read the header of one file and mapped the next (os.replace
            meta = None  # in between: "size ... smaller than the required mapping size"); poll again
        if meta and meta["position"]["step"] > after:
            return meta["position"]["step"]
        assert proc.poll() is None, "train exited before the checkpoint"
        time.sleep(0.005)
    raise AssertionError("no checkpoint within 120 s")



def test_killed_and_terminated_run_resumes_bit_exactly(tmp_path, device):
    x = np.random.default_rng(0).standard_normal((3000, 6)).astype(np.float32) @ np.diag([3, 2, 1, 1, .5, .1])
    store = write_vectors(str(tmp_path / "store"), x.astype(np.float32), shard_rows=512, chunk_rows=64).path

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1)
    try:
        ref_cfg = load_experiment(_config(tmp_path, store, "ref", device))
        main(common_of(ref_cfg), section(ref_cfg, "train", TrainConfig))
    finally:
        torch.set_num_threads(threads)

    cfg = _config(tmp_path, store, "run", device)
    state = tmp_path / "run" / STATE
    log = tmp_path / "log"
    proc = _launch(cfg, log)
    killed_at = _wait_for_checkpoint(proc, state, 0)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (tmp_path / "run" / "dicts").exists()  # killed before the end

    proc = _launch(cfg, log)
    _wait_for_checkpoint(proc, state, killed_at)  # resumed and went on
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 2  # ActdictError: one line, exit status 2
    out, err = _logs(log)
    assert f"resumed at step {killed_at}" in out
    stopped = int(re.search(r"Interrupted: stopped at step (\d+)", err).group(1))
    assert read_meta(state)["position"]["step"] == stopped > killed_at
    other = load_experiment(cfg, ["train.epochs=9"])
    conflict = r"another run \(dictionaries \['official', 'topk', 'vaease'\] at step "
    with pytest.raises(ResumeConflict, match=conflict):
        main(common_of(other), section(other, "train", TrainConfig))  # not resumed, not dropped
    assert read_meta(state)["position"]["step"] == stopped

    proc = _launch(cfg, log)
    _wait_for_checkpoint(proc, state, stopped)
    proc.send_signal(signal.SIGINT)  # Ctrl-C: saves and stops like SIGTERM
    assert proc.wait(timeout=120) == 2
    out, err = _logs(log)
    assert f"resumed at step {stopped}" in out and "Ctrl-C: saving a resume state" in err
    interrupted = int(re.search(r"Interrupted: stopped at step (\d+)", err).group(1))
    assert read_meta(state)["position"]["step"] == interrupted > stopped

    proc = _launch(cfg, log)
    assert proc.wait(timeout=300) == 0, _logs(log)[1]
    out, err = _logs(log)
    assert f"resumed at step {interrupted}" in out and not state.exists()
    for name in DICTS:
        a = load_file(tmp_path / "ref" / "dicts" / name / "model.safetensors")
        b = load_file(tmp_path / "run" / "dicts" / name / "model.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k, (a[k] - b[k]).abs().max())
        # the per-epoch loss means too: the running sums of an epoch cut by a kill are resumed, not reset
        ref, run = (json.loads((tmp_path / r / "dicts" / name / "cfg.json").read_text())
                    for r in ("ref", "run"))
        assert len(ref["history"]) == 8 and run["history"] == ref["history"]
        # and the training log: the records a kill left past the resume state dropped, the open interval's
        # sums resumed, so that every record equals the uninterrupted run's but for its time
        (ref_head, ref_log), (head, got) = (read_log(log_path(tmp_path / r, name)) for r in ("ref", "run"))
        assert head == ref_head == {"config_hash": ref["config_hash"], "dict": name, "variant": "vaease"
                                    if name != "topk" else "sae_topk"}
        (per, left), n = divmod(ref["steps"], 8), ref["steps"] + 1
        assert not left and [r["step"] for r in ref_log] == sorted({*range(7, n, 7), *range(per, n, per)})
        assert all("held_ev" in r for r in got + ref_log)
        assert [{k: v for k, v in r.items() if k != "time"} for r in got] == [
            {k: v for k, v in r.items() if k != "time"} for r in ref_log]
    # the BatchNorm running statistics are weights too: moved once per training step, resumed with the rest
    official = load_file(tmp_path / "run" / "dicts" / "official" / "model.safetensors")
    steps = json.loads((tmp_path / "ref" / "dicts" / "official" / "cfg.json").read_text())["steps"]
    assert int(official["encoder.1.num_batches_tracked"]) == steps
    assert official["encoder.1.running_var"].ne(1).all()
