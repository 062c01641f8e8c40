"""SIGTERM and a real ``torchrun --nproc-per-node 2`` training (gloo, CPU ranks; actdict.signals' rule). The
ranks take one decision after the final saves (a SIGTERM that reached rank 0 only during them stopped rank 0
with status 2 and let rank 1 end with 0); and the training's SIGTERM handling, installed under torchrun,
never keeps a rank waiting when a sibling fails and torchrun sends the others SIGTERM: the whole run ends,
the failing rank's error said.

Each rank runs RANK_SCRIPT (``cli.main(["train", CONFIG])`` with a hook patched in), writes the status main
returned to ``rank<R>.exit`` (none: it died by a signal) and its pid to ``rank<R>.pid`` (torchrun starts its
ranks in sessions of their own: a hung run's ranks are killed by pid)."""

import os
import signal
import subprocess
from contextlib import suppress
from pathlib import Path

import pytest

from tests.test_ddp import TORCHRUN, needs_torchrun
from tests.test_train_sigterm import _config

RANK_SCRIPT = """import os, signal, sys, time
from contextlib import contextmanager
from actdict import cli
from actdict.errors import ActdictError
from actdict.train import checkpoint, loop, run
rank, out = int(os.environ["RANK"]), sys.argv[2]
open(os.path.join(out, f"rank{rank}.pid"), "w").write(str(os.getpid()))
flags, real_flag = [], run.sigterm_flag
@contextmanager
def sigterm_flag(**kw):  # the steps' flag, for a hook to wait on
    with real_flag(**kw) as stop:
        flags.append(stop)
        yield stop
run.sigterm_flag = sigterm_flag
def until_sigterm():  # (the flag's handler sets it; the step's would raise Terminated out of the sleep)
    while not (flags and flags[0]()):
        time.sleep(0.01)
HOOK
code = cli.main(["train", sys.argv[1]])
open(os.path.join(out, f"rank{rank}.exit"), "w").write(str(code))
sys.exit(code)
"""

# rank 0's first final checkpoint sends SIGTERM (TO), and is written once rank 0 has it; rank 1 waits at
# the barrier after the saves meanwhile
AT_FINAL_SAVE = """real, sent = checkpoint.save, []
def save(*a, **k):
    if not sent:
        sent.append(os.kill(TO, signal.SIGTERM))
        until_sigterm()
    return real(*a, **k)
checkpoint.save = save"""
TO = {"torchrun": "-os.getpgid(os.getppid())",  # torchrun's process group, as a scheduler's time limit
      "rank 0": "os.getpid()"}  # rank 0 alone (a kill of its pid; or a signal that reaches ranks unevenly)

# rank 1 fails: at its third step, rank 0 there until torchrun's SIGTERM (the steps' flag) reaches it; or
# before the first step (opening the store), rank 0 there until SIGTERM raises out of its sleep
FAILS = {"during the steps": """real, calls = loop.step, []
def step(*a, **k):
    calls.append(1)
    if len(calls) == 3 * 2:  # two dictionaries a step
        if rank == 1:
            raise ActdictError("rank 1 fails here on purpose")
        until_sigterm()
    return real(*a, **k)
loop.step = step""",
         "before the first step": """real = run.open_hook
def open_hook(*a, **k):
    if rank == 1:
        raise ActdictError("rank 1 fails here on purpose")
    time.sleep(600)
run.open_hook = open_hook"""}


def _torchrun(tmp_path: Path, hook: str) -> tuple[subprocess.CompletedProcess, dict[int, int | None]]:
    """``actdict train`` of test_train_sigterm's config on 2 ranks with ``hook``: torchrun's run (it must
    end within 120 s, its ranks' too) and each rank's status (None: killed by a signal)."""
    cfg = _config(tmp_path)
    (tmp_path / "rank.py").write_text(RANK_SCRIPT.replace("HOOK", hook))
    cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", str(tmp_path / "rank.py"), str(cfg),
           str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        for pid in [int(p.read_text()) for p in tmp_path.glob("rank*.pid")]:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the torchrun training did not end within 120 s")
    status = {r: int(f.read_text()) if (f := tmp_path / f"rank{r}.exit").exists() else None for r in (0, 1)}
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), status


@needs_torchrun
@pytest.mark.parametrize("to", list(TO))
def test_a_sigterm_during_the_final_saves_stops_every_rank(tmp_path, to):
    """To torchrun's process group (torchrun passes it on to every rank) or to rank 0 alone: every rank
    stops once the saves are written, with status 2 (rank 1, without a SIGTERM of its own, ended with 0)."""
    done, status = _torchrun(tmp_path, AT_FINAL_SAVE.replace("TO", TO[to]))
    assert status == {0: 2, 1: 2}, done.stderr[-3000:]
    assert done.returncode == 1  # torchrun's: a rank failed, or it was sent SIGTERM itself
    run = tmp_path / "run"
    said = [ln for ln in done.stderr.splitlines() if ": Interrupted: " in ln]
    assert sorted(said) == [
        f"actdict (rank {r} of 2): Interrupted: stopped at step 24, the training's last: its final "
        f"checkpoints were saved first ({run / 'dicts'}), so the training is complete" for r in (0, 1)]
    for name in ("a", "b"):
        assert sorted(os.listdir(run / "dicts" / name)) == ["cfg.json", "model.safetensors"]
    assert sorted(os.listdir(run)) == [".actdict-lock", "dicts", "logs", "split.json"]  # the state removed


@needs_torchrun
@pytest.mark.parametrize("when", list(FAILS))
def test_a_rank_that_fails_ends_the_run_while_the_other_holds_sigterm(tmp_path, when):
    """torchrun sends rank 0 SIGTERM once rank 1 failed: rank 0, holding it (as a flag in its steps, as an
    exception before them), ends, in the collective that rank 1 left or at once, within torchrun's wait."""
    done, status = _torchrun(tmp_path, FAILS[when])
    assert done.returncode == 1 and status == {0: 2, 1: 2}, done.stderr[-3000:]
    said = [ln for ln in done.stderr.splitlines() if ln.startswith("actdict (rank ")]
    assert "actdict (rank 1 of 2): ActdictError: rank 1 fails here on purpose" in said
    (rank_0,) = [ln for ln in said if ln.startswith("actdict (rank 0 of 2): ")]
    if when == "during the steps":  # its step's all-reduce: rank 1 is gone
        assert rank_0.startswith("actdict (rank 0 of 2): ActdictError: another rank of this torchrun run "
                                 "failed (")
    else:
        assert rank_0 == ("actdict (rank 0 of 2): Interrupted: stopped (SIGTERM) before the first step: "
                          "nothing was trained; rerun the same command to start (or continue) the training")
    assert "ChildFailedError" in done.stderr and "rank      : 1 (local_rank: 1)" in done.stderr
