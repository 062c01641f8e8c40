"""SIGTERM (a batch scheduler's time limit, ``kill``) as an exception: the one mechanism every command uses
where the process had Python's default (death by signal, -15: no word, the work cut wherever it was).

``cli.main`` raises ``Terminated`` (a KeyboardInterrupt: every stage and tool stops as on Ctrl-C, a harvest
after the shard being written, exit status 143); the training raises its own around its whole ``main``
(``actdict.train.run``: said as Interrupted, exit status 2), and holds SIGTERM as a flag during its steps
and final saves (``train.stopping.sigterm_flag``).

Under torchrun (WORLD_SIZE > 1) each caller says whether to install it (``torchrun``), by this rule.
torchrun sends SIGTERM to the other ranks when one fails (then SIGKILL after its grace period, 30 s): they
must end, not wait on a collective. A Python handler runs only once the main thread is back from C, so a
rank waiting in a collective runs none until the wait ends (at once on gloo when the peer's connection
closes; on NCCL perhaps not before torchrun's SIGKILL). So a rank installs it only where what the handler
starts waits on no sibling:

- a harvest rank does not: on the exception a rank finishes its shard being written, in its own time,
  while its siblings wait for it in their barriers (up to 12 hours, ``harvest.dist``) and token exchanges,
  and a rank waiting there when a sibling failed runs no handler until that wait fails. Python's default
  ends it at once, losing its shard being written, which the rerun writes again (a harvest resumes from
  whole shards).
- the training does: before its first step the exception leaves at once, entering no collective; during
  the steps the flag is read into the step's all-reduce, so a SIGTERM that reaches every rank (a
  scheduler's) stops them all at the same step with the resume state saved, and one whose sibling died
  ends in that collective's error; after the final saves the ranks decide together
  (``train.dist.any_rank``). None of it waits on a save of its own (tests/test_train_sigterm_ddp.py: a rank
  that fails while its sibling holds SIGTERM ends the whole torchrun, the failing rank's error said).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, as Ctrl-C raises KeyboardInterrupt: every stage and tool stops
    as it does on Ctrl-C (a harvest after the shard being written, whole shards kept), said as terminated,
    exit status 143 (128 + 15, as a shell reports it) (``cli.interrupted``)."""


@dataclass(frozen=True)
class _Raise:
    """The handler ``sigterm_raises`` installs: raises ``exc``. A class of its own, so that an inner use
    (the training's inside the command's) knows the handler it replaces as one of these."""

    exc: type[BaseException]

    def __call__(self, *_) -> None:
        raise self.exc


def replaceable(held) -> bool:
    """Whether SIGTERM's handler ``held`` is one actdict may replace: Python's default or one of its own
    (``sigterm_raises``'s, the training's inside the command's). A handler anyone else set (a program that
    calls ``cli.main``, SIG_IGN a launcher left) is kept, here and by the training's steps' flag
    (``train.stopping.sigterm_flag``)."""
    return held is signal.SIG_DFL or isinstance(held, _Raise)


def world_size() -> int:
    """The processes of this run, as torchrun's WORLD_SIZE says: 1 where it is unset, blank (a script's
    ``export WORLD_SIZE=$N`` of an unset N) or not a whole number, which torchrun never sets: such a value is
    another program's leftover, not a torchrun of several ranks. ``int()`` of it was a ValueError traceback
    from every command (``sigterm_raises`` asks at its start), and from the error line meant to say why."""
    said = os.environ.get("WORLD_SIZE", "").strip()
    return int(said) if said.isdecimal() else 1


def rank() -> int:
    """This process' rank among torchrun's (RANK), 0 outside torchrun (``under_torchrun``): a RANK left in
    the environment of one process (a launcher's, a script's export) made ``actdict analyze`` return at once,
    its work undone and exit status 0, the harvest write without its store lock and a dry run say nothing."""
    said = os.environ.get("RANK", "").strip()
    return int(said) if under_torchrun() and said.isdecimal() else 0


def local_rank() -> int:
    """This process' rank on its node (LOCAL_RANK, or ``rank`` where it is unset), read as ``rank`` reads
    RANK: 0 outside torchrun, or where it is blank or not a whole number."""
    said = os.environ.get("LOCAL_RANK")
    if said is None:
        return rank()
    return int(said.strip()) if under_torchrun() and said.strip().isdecimal() else 0


def checked_rank(name: str) -> int:
    """The environment's ``name`` (RANK, LOCAL_RANK) under torchrun, for the ranks' process groups, which
    cannot take a guess (two processes taken for rank 0 would both write): 0 where unset; a blank or
    non-numeric one, which torchrun never sets (a WORLD_SIZE > 1 set by hand), was int()'s ValueError
    traceback, and is now a ConfigError that names it and what to do."""
    from actdict.config import ConfigError

    said = os.environ.get(name, "0")
    if not said.strip().isdecimal():
        raise ConfigError(f"{name}={said!r} is not a rank number, with WORLD_SIZE={world_size()}: launch the "
                          f"command with torchrun, which sets RANK, LOCAL_RANK and WORLD_SIZE, or unset "
                          f"WORLD_SIZE to run it in one process")
    return int(said.strip())


def under_torchrun() -> bool:
    """Whether this process is one rank of several (``world_size() > 1``): the one test of it, for the
    error lines (``errors.print_error``, ``failures.peer_error``) and the harvest (one process per mode, the
    store lock's wait) as for the handler here."""
    return world_size() > 1


@contextmanager
def sigterm_raises(exc: type[BaseException], *, torchrun: bool) -> Iterator[None]:
    """While inside, SIGTERM raises ``exc`` in the main thread; the handler before it is restored after.
    Installed over Python's default or another use of this function (the training's inside the command's);
    a handler set by anyone else (a program that calls ``cli.main``, SIG_IGN a launcher left) is kept, and
    nothing is installed outside the main thread (signals reach that one only). ``torchrun``: installed
    under torchrun too (the module doc's rule: only where what the exception starts waits on no rank)."""
    held = signal.getsignal(signal.SIGTERM)
    if (threading.current_thread() is not threading.main_thread() or (under_torchrun() and not torchrun)
            or not replaceable(held)):
        yield
        return
    signal.signal(signal.SIGTERM, _Raise(exc))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, held)
