"""A long run as a researcher reads it: ``actdict`` with stdout and stderr in a log file (``nohup``,
``sbatch --output``, ``> run.log 2>&1``), not a terminal. What it printed is in the file, in order, also
after a SIGKILL (the OOM killer, a scheduler's time limit), and a progress bar writes whole lines there."""

import fcntl
import os
import pty
import re
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pytest

from actdict.harvest.store import write_vectors

# Python's own buffering, as a researcher's shell has it (a test environment may set PYTHONUNBUFFERED)
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONUNBUFFERED", "TQDM_DISABLE",
                                                         "TQDM_MININTERVAL")} | {"OMP_NUM_THREADS": "1"}


def long_training(tmp_path: Path, epochs: int = 3000) -> Path:
    """A config whose training runs for minutes (400 rows of d = 6, 12 steps an epoch)."""
    x = np.random.default_rng(0).standard_normal((400, 6)).astype(np.float32)
    store = write_vectors(str(tmp_path / "store"), x, shard_rows=128, chunk_rows=32).path
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\nstore: {store}\n"
                   f"train: {{epochs: {epochs}, batch_size: 32, test_fraction: 0.1, device: cpu, "
                   "dicts: [{name: a, variant: sae_l1, k: 8}]}\n")
    return cfg


def into_log(args: list[str], log: Path) -> subprocess.Popen:
    """``actdict ARGS > LOG 2>&1``."""
    actdict = Path(sys.executable).parent / "actdict"
    with open(log, "w") as f:
        return subprocess.Popen([str(actdict), *args], stdout=f, stderr=subprocess.STDOUT, env=ENV)


def kill_when(proc: subprocess.Popen, log: Path, text: str, timeout: float = 120) -> None:
    """SIGKILL ``proc`` once ``log`` holds ``text``."""
    end = time.monotonic() + timeout
    while text not in log.read_text() and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.05)
    assert proc.poll() is None, f"it ended before printing {text!r}: {log.read_text()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_a_killed_training_leaves_its_start_line_in_the_log_before_the_bar(tmp_path):
    """Killed once its bar began, the log held the bar's first line only: the start line (what it trains,
    on what, where) was in stdout's 8 KiB buffer, lost with the process; with no kill it came after every
    bar line. Now it is the log's first line, the bar's after it."""
    cfg, log = long_training(tmp_path), tmp_path / "run.log"
    proc = into_log(["train", str(cfg)], log)
    kill_when(proc, log, "train:   0%")
    assert proc.returncode == -signal.SIGKILL
    lines = log.read_text().splitlines()[1:]  # after runlog's header
    assert lines[0] == "train: a on 368 rows (12 chunks, d 6) for 3000 epoch(s) on cpu, 1 thread", lines
    assert lines[1].startswith("train:   0%|") and lines[1].endswith("| 0/36000 [00:00<?, ?step/s]"), lines


def test_a_resumed_training_says_where_in_the_run_it_continues(tmp_path):
    """A rerun after a SIGTERM said 'resumed at step N' only: not of how many, nor the epoch; and the start
    line said 'on cpu', not with how many threads (torch takes every core of a node by default, whatever a
    scheduler gave the job). It now says both."""
    cfg = long_training(tmp_path)
    first, again = tmp_path / "first.log", tmp_path / "again.log"
    proc = into_log(["train", str(cfg)], first)
    while "/36000 [" not in first.read_text() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 2, first.read_text()
    said = first.read_text().splitlines()[-2]  # before runlog's footer
    step, epoch, batch = map(int, re.fullmatch(r"actdict: Interrupted: stopped at step (\d+) \(epoch (\d+), "
                                               r"batch (\d+)\); resume state saved: .*", said).groups())
    assert step == 12 * epoch + batch
    proc = into_log(["train", str(cfg)], again)
    kill_when(proc, again, "/36000 [")
    assert again.read_text().splitlines()[1] == (
        f"train: a on 368 rows (12 chunks, d 6) for 3000 epoch(s) on cpu, 1 thread; resumed at step "
        f"{step} of 36000 ({100 * step // 36000}% done before), epoch {epoch} batch {batch}")


def test_a_resumed_run_near_its_end_is_not_said_all_done():
    """The share done before a resume is floored: 35,990 of 36,000 steps was said '100% done before'."""
    from actdict.train.member import Position
    from actdict.train.run import resumed_said

    near_end = Position(epoch=2999, batch=2, step=35990)
    said = "resumed at step 35990 of 36000 (99% done before), epoch 2999 batch 2"
    assert resumed_said(near_end, 36000) == said
    assert resumed_said(Position(epoch=0, batch=5, step=5), 0) == "resumed at step 5, epoch 0 batch 5"


# `actdict train CONFIG` whose training warns once, at its third step, as a library's warning in a long run
# would: while the progress bar is drawn
WARNS_AT_STEP_3 = """import sys, warnings
from actdict import cli
from actdict.errors import ActdictWarning
from actdict.train import loop
real, calls = loop.postfix, []
def postfix(losses):
    calls.append(1)
    if len(calls) == 3:
        warnings.warn("a warning during the steps", ActdictWarning)
    return real(losses)
loop.postfix = postfix
sys.exit(cli.main(["train", sys.argv[1]]))
"""


def on_a_terminal(args: list[str]) -> tuple[int, str]:
    """``python ARGS`` with stdin, stdout and stderr a terminal of 100 columns (a pty): (status, all it
    wrote)."""
    main, side = pty.openpty()
    fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen([sys.executable, *args], stdin=side, stdout=side, stderr=side, env=ENV)
    os.close(side)
    out = b""
    while True:
        try:
            got = os.read(main, 65536)
        except OSError:  # the process closed its side: all read
            break
        if not got:
            break
        out += got
    os.close(main)
    return proc.wait(timeout=60), out.decode()


def test_a_warning_during_a_progress_bar_on_a_terminal_gets_its_own_line(tmp_path):
    """It was written after the bar's text, on the bar's line ('...| 2/36 [00:00<00:01, 9.86step/s]actdict:
    warning: ...'); the bar is now cleared first ('\\r' + blanks + '\\r') and drawn again after it."""
    status, out = on_a_terminal(["-c", WARNS_AT_STEP_3, str(long_training(tmp_path, epochs=3))])
    assert status == 0, out
    said = out.index("actdict: warning: a warning during the steps\r\n")
    assert out[:said].endswith(" " * 60 + "\r"), repr(out[said - 120:said])  # the bar's line, cleared
    assert re.match(r"\rtrain: +\d+%\|", out[said:].split("\r\n", 1)[1])  # the bar again, below it
    assert out.count("actdict: warning:") == 1


def test_the_analysis_says_what_it_scores_before_its_bar(tmp_path):
    """The analysis printed nothing before its bars: a log of a long one (a sweep's, CE through a model) told
    neither which dictionaries, nor how many rows, nor the device, until its summary at the end. Its first
    line now says them; its last where it wrote."""
    cfg, log = long_training(tmp_path, epochs=1), tmp_path / "run.log"
    cfg.write_text(cfg.read_text() + "analyze: {n_features: 2}\n")
    proc = into_log(["run", str(cfg)], log)
    assert proc.wait(timeout=120) == 0, log.read_text()
    lines = log.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("analyze: "))
    assert lines[at] == (f"analyze: a of {tmp_path / 'run'} on 32 held-out rows of vectors (1 chunk) on "
                         "cpu, 1 thread")
    assert lines[at + 1].startswith("analyze:   0%|"), lines
    run = tmp_path / "run"
    assert lines[-2] == f"analyze: wrote {run / 'summary.json'}, {run / 'report.html'} and {run / 'report'}/"


def test_a_harvest_killed_while_it_loads_the_model_says_so(tmp_path):
    """A harvest printed nothing before its model was loaded: a log of one killed there (out of memory on a
    large model, a download that hung) was empty. It now says what it loads first."""
    from tests.test_resume import write_config, write_corpus

    cfg = write_config(tmp_path, str(tmp_path / "store"), write_corpus(tmp_path / "c.jsonl"))
    log = tmp_path / "run.log"
    proc = into_log(["harvest", str(cfg)], log)
    kill_when(proc, log, "harvest: loading")
    said = log.read_text().splitlines()[1:]  # after runlog's header
    assert said == ["harvest: loading the model all-MiniLM-L6-v2 (device cpu, float32)"]


def test_a_stage_logged_to_a_file_says_what_ran_and_how_it_ended(tmp_path):
    """A log held the stage's own lines only: not the command (it is in the job script), nor the clock, the
    host, the versions, and a log that stopped could be a kill or the end. Its first line now says what ran,
    where and when; its last how it ended and after how long. Killed, it has no last line."""
    cfg, log = long_training(tmp_path, epochs=2), tmp_path / "run.log"
    proc = into_log(["train", str(cfg), "train.log_every=5"], log)
    assert proc.wait(timeout=120) == 0, log.read_text()
    lines = log.read_text().splitlines()
    started = re.fullmatch(rf"actdict: started actdict train {cfg} train.log_every=5 at (\S+ \S+) UTC on "
                           rf"{re.escape(socket.gethostname())} \(pid {proc.pid}; actdict 0.1.0, torch \S+, "
                           rf"Python 3\.\d+\.\d+; in {re.escape(os.getcwd())}\)", lines[0])
    assert started, lines[0]
    assert f"\ntrain: saved {tmp_path / 'run' / 'dicts' / 'a'} (epoch 2, the last: loss " in log.read_text()
    ended = re.fullmatch(r"actdict: train ended with exit status 0 after (\d+\.\ds|\d+m\d\ds) at "
                         r"(\S+ \S+) UTC", lines[-1])  # a minute or more on a loaded machine
    assert ended and ended[2] >= started[1], lines[-1]
    proc = into_log(["train", str(cfg), "train.epochs=3000"], log)
    kill_when(proc, log, "/36000 [")
    assert not log.read_text().splitlines()[-1].startswith("actdict: train ended"), log.read_text()


def test_a_terminal_gets_no_header_nor_footer(tmp_path):
    """On a terminal the person watching knows what they ran: stdout there is as it was (a guard: it passes
    before and after)."""
    actdict = str(Path(sys.executable).parent / "actdict")
    run = f"import sys; sys.argv[0] = {actdict!r}; from actdict.cli import entry; entry()"
    status, out = on_a_terminal(["-c", run, "train", str(long_training(tmp_path, epochs=1))])
    assert status == 0 and "actdict: started" not in out and "ended with exit status" not in out, out
    assert out.startswith("train: a on 368 rows (12 chunks, d 6) for 1 epoch(s) on cpu, 1 thread\r\n")


# `actdict train CONFIG` whose command meets a bug (an exception no handler expects) before any stage runs
A_BUG = """import sys
from actdict import cli
def load_experiment(*args):
    raise RuntimeError("a bug")
cli.load_experiment = load_experiment
sys.argv[0] = "actdict"
cli.entry()
"""


def test_a_stage_ended_by_a_bug_says_so_after_its_traceback(tmp_path):
    """A stage ended by an unexpected exception printed its traceback but no last line, so its log read as a
    killed run's. It now ends 'ended with exit status 1', the status the process exits with."""
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    with open(out, "w") as o, open(err, "w") as e:
        status = subprocess.run([sys.executable, "-c", A_BUG, "train", "c.yaml"], stdout=o, stderr=e,
                                env=ENV, timeout=120).returncode
    assert status == 1
    assert err.read_text().splitlines()[-1] == "RuntimeError: a bug"
    lines = out.read_text().splitlines()
    assert len(lines) == 2 and lines[0].startswith("actdict: started actdict train c.yaml at "), lines
    assert re.fullmatch(r"actdict: train ended with exit status 1 after \S+ at \S+ \S+ UTC", lines[1]), lines


def test_a_newline_in_an_argument_cannot_make_a_line_of_the_log():
    """shlex.join quotes a newline as it is: an override holding one split the first line in two, and its
    second part read as a line of its own ('actdict: train ended with exit status 0 ...'). It is now written
    '\\n', and an escape sequence '\\x1b', on the one line."""
    from actdict.runlog import header

    said = header(["train", "c.yaml", "x=1\nactdict: train ended with exit status 0", "y=\x1b[2J"], 0.0)
    assert said.splitlines() == [said]
    assert said.startswith("actdict: started actdict train c.yaml 'x=1\\nactdict: train ended with exit "
                           "status 0' 'y=\\x1b[2J' at 1970-01-01 00:00:00 UTC on "), said


def test_a_shortened_dry_run_or_help_gets_no_header_nor_footer(monkeypatch):
    """argparse takes '--dry' for --dry-run and '--he' for --help: such a plan (`actdict run c.yaml --dry >
    plan.txt`) got the first and last lines the flags' full names leave out. An override is still logged."""
    from actdict import runlog

    monkeypatch.setattr(sys, "stdout", open(os.devnull, "w"))  # a file: not a terminal
    try:
        said = {args: runlog.logged(["run", "c.yaml", *args]) for args in
                [(), ("--dry",), ("--dry-r",), ("--he",), ("-h",), ("--dry-run",), ("x=--dry",), ("--",)]}
    finally:
        sys.stdout.close()
    assert said == {(): True, ("--dry",): False, ("--dry-r",): False, ("--he",): False, ("-h",): False,
                    ("--dry-run",): False, ("x=--dry",): True, ("--",): True}


def test_the_first_line_writes_what_stdout_cannot_encode_as_escapes(tmp_path):
    """A stdout that cannot encode a character of the command line (Windows' cp1252 in a log, a path's 'Ω')
    lost the whole first line: the command's escapes are set up after it. The line now has '\\u03a9'."""
    log = tmp_path / "run.log"
    actdict, env = str(Path(sys.executable).parent / "actdict"), ENV | {"PYTHONIOENCODING": "cp1252"}
    with open(log, "w") as f:
        status = subprocess.run([actdict, "train", str(tmp_path / "Ω.yaml")], stdout=f, timeout=120,
                                stderr=subprocess.DEVNULL, env=env).returncode
    lines = log.read_text(encoding="cp1252").splitlines()
    assert status == 2 and len(lines) == 2, lines
    assert lines[0].startswith(f"actdict: started actdict train '{tmp_path}/\\u03a9.yaml' at "), lines
    assert lines[1].startswith("actdict: train ended with exit status 2 after "), lines


def test_the_first_line_in_a_removed_directory_says_so(monkeypatch):
    """Run from a directory since removed (a job's cleaned scratch folder), os.getcwd's FileNotFoundError
    raised out of the first line, before the command ran. The line now says the directory is gone."""
    from actdict import runlog

    def removed():
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(os, "getcwd", removed)
    said = runlog.header(["train", "/abs/c.yaml"], 0.0)
    assert said.startswith("actdict: started actdict train /abs/c.yaml at 1970-01-01 00:00:00 UTC on ")
    assert said.endswith("; in a directory since removed)"), said


@pytest.mark.parametrize("both", [False, True])  # stderr its own pipe, or the same (`2>&1 | tee`)
def test_a_training_whose_stdout_reader_left_trains_to_its_end_quietly(tmp_path, both):
    """``actdict train CONFIG | tee run.log`` with the tee killed, or ``| head -1``: since stdout is written
    a line at a time, the stage's next line (here the start line, before the first step) raised
    BrokenPipeError, and the training was lost (status 141, nothing trained); with ``2>&1``, the progress
    bar's next redraw did too (status 120). Its lines are now dropped and it trains on: both dictionaries'
    final checkpoints, no resume state left, no traceback, status 141."""
    import json

    cfg = long_training(tmp_path, epochs=5)
    cfg.write_text(cfg.read_text().replace("dicts: [{name: a, variant: sae_l1, k: 8}]",
                                           "dicts: [{name: a, variant: sae_l1, k: 8}, {name: b, variant: "
                                           "sae_l1, k: 4}]"))
    actdict = Path(sys.executable).parent / "actdict"
    proc = subprocess.Popen([str(actdict), "train", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT if both else subprocess.PIPE,
                            env=ENV | {"TQDM_MININTERVAL": "0"})  # a redraw at every step
    assert proc.stdout.readline().startswith(b"actdict: started actdict train ")  # runlog's header
    proc.stdout.close()  # the reader leaves
    err = "" if both else proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "dicts").iterdir()) == ["a", "b"]
    for name in ("a", "b"):
        assert json.loads((run / "dicts" / name / "cfg.json").read_text())["steps"] == 60
    assert not (run / "train_state.safetensors").exists()
    last = err.splitlines()[-1] if err else ""
    assert both or last.startswith("train: 100%|") and "| 60/60 [" in last, err


def test_a_training_started_with_stderr_closed_trains_to_its_end(tmp_path):
    """``actdict train CONFIG 2>&-``: Python started it with sys.stderr None, and the progress bar's first
    use of it raised AttributeError, its traceback written nowhere: status 1 and nothing trained, after
    stdout's start line. Its stderr is now /dev/null, its lines dropped there as a reader gone's are: the
    dictionary trained, stdout's lines as ever, status 0."""
    import json

    cfg = long_training(tmp_path, epochs=2)
    actdict = Path(sys.executable).parent / "actdict"
    r = subprocess.run([str(actdict), "train", str(cfg)], stdout=subprocess.PIPE, text=True, env=ENV,
                       preexec_fn=lambda: os.close(2), timeout=120)
    lines = r.stdout.splitlines()
    assert r.returncode == 0, r.stdout
    assert lines[0].startswith("actdict: started actdict train ") and lines[1].startswith("train: ")
    assert lines[-1].startswith("actdict: train ended with exit status 0 after ")
    assert json.loads((tmp_path / "run" / "dicts" / "a" / "cfg.json").read_text())["steps"] == 24


def test_a_command_started_with_stderr_closed_ends_with_its_own_status_and_opens_no_file_there(tmp_path):
    """With stderr closed, a config error's line (``print_error``'s write to None) was an AttributeError:
    status 1 for 2. And the closed descriptor was the next file's the process opened, where a write to
    stderr from C (torch's warnings) or from a child would land: /dev/null holds it now."""
    def closed(args: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], stdout=subprocess.PIPE, text=True, env=ENV,
                              preexec_fn=lambda: os.close(2), timeout=120)

    r = closed(["-m", "actdict.cli", "train", str(tmp_path / "missing.yaml")])
    header, footer = r.stdout.splitlines()  # runlog's lines only: the error's is stderr's
    assert r.returncode == 2 and footer.startswith("actdict: train ended with exit status 2 after "), r.stdout
    r = closed(["-c", "import os\nfrom actdict.errors import run_command\n"
                "run_command(lambda: print(os.open(os.devnull, os.O_RDONLY), os.path.samestat(os.fstat(2), "
                "os.stat(os.devnull))))"])
    fd, null = r.stdout.split()
    assert r.returncode == 0 and int(fd) > 2 and null == "True"
