"""The first and last lines of a stage command's log file: what ran, where and when, and how it ended.

A researcher runs ``actdict harvest|train|analyze|run`` for hours under ``nohup``, ``sbatch --output`` or
``> run.log 2>&1``, and reads the log alone, later. The command line is in the job script, not the log; the
progress bars say elapsed time, not the clock; and a log that just stops may be a kill or a run that ended.
So when stdout is not a terminal, ``actdict.cli.entry`` prints ``header`` before a stage command and
``footer`` after it (a log without a footer was killed: SIGKILL, the OOM killer, a time limit). A terminal
gets neither (the person watching knows), nor does ``--dry-run``, ``--help``, a tool, or a torchrun rank but
the first.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
import time
from importlib import metadata

from actdict.errors import one_line

STAGE_COMMANDS = ("harvest", "train", "analyze", "run")


def _runs_nothing(arg: str) -> bool:
    """Whether ``arg`` is ``-h`` or ``--dry-run`` / ``--help`` as argparse reads it: also shortened to a
    prefix of its own ('--dry', '--he'), which it takes as the whole."""
    return arg == "-h" or (len(arg) > 2 and any(flag.startswith(arg) for flag in ("--dry-run", "--help")))


def logged(argv: list[str]) -> bool:
    """Whether ``actdict ARGV`` gets a header and a footer: a stage command that runs (not ``--dry-run`` or
    ``--help``, nor their prefixes), with stdout a file or a pipe."""
    if not argv or argv[0] not in STAGE_COMMANDS or any(map(_runs_nothing, argv[1:])):
        return False
    try:
        return not sys.stdout.isatty()
    except (AttributeError, ValueError):  # None (started with stdout closed) or closed: nothing to write to
        return False


def _clock(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def _directory() -> str:
    """The working directory, or what stands for one removed under the process (a job's scratch folder
    cleaned): os.getcwd's FileNotFoundError there stopped the command before it ran, with a traceback."""
    try:
        return os.getcwd()
    except OSError:
        return "a directory since removed"


def header(argv: list[str], at: float) -> str:
    """'actdict: started actdict train c.yaml train.epochs=2 at 2026-12-07 06:47:00 UTC on HOST (pid N;
    actdict V, torch V, Python V; in DIR)': the command as a shell would rerun it, and where it ran."""
    command = shlex.join(["actdict", *argv])
    python = ".".join(map(str, sys.version_info[:3]))
    versions = f"actdict {_version('actdict')}, torch {_version('torch')}, Python {python}"
    where = f"on {socket.gethostname()} (pid {os.getpid()}; {versions}; in {_directory()})"
    return one_line(f"actdict: started {command} at {_clock(at)} {where}")


def elapsed(seconds: float) -> str:
    """'2h03m04s', '3m04s', '4.2s'."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def footer(argv: list[str], status: int, started: float, at: float) -> str:
    """'actdict: train ended with exit status 0 after 1h02m03s at 2026-12-07 07:49:03 UTC'."""
    return one_line(f"actdict: {argv[0]} ended with exit status {status} after {elapsed(at - started)} at "
                    f"{_clock(at)}")
