"""How a training stops on SIGTERM (a scheduler's time limit, ``kill``) and Ctrl-C: during its steps and final
saves only a flag is set (``sigterm_flag``: the loop saves its resume state at the end of the step and
stops; a first Ctrl-C too), and around the whole of ``actdict.train.run.main`` SIGTERM ends it in one line
(``sigterm_ends``: Interrupted, exit status 2), before the first step or after the saves. The command's own
SIGTERM and the rule for torchrun's ranks: ``actdict.signals``.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from actdict.signals import rank, replaceable, sigterm_raises
from actdict.train.loop import Interrupted


class StopFlag:
    """Called: whether SIGTERM or a first Ctrl-C asked the training to stop (``sigterm_flag``). ``saving``:
    the steps are over and the final checkpoints are being written, which finish first."""

    def __init__(self) -> None:
        self.flag, self.saving = threading.Event(), False

    def __call__(self) -> bool:
        return self.flag.is_set()


@contextmanager
def sigterm_flag(sigint: bool = False) -> Iterator[StopFlag]:
    """While inside: SIGTERM only sets a flag (the loop saves its resume state and stops at the end of the
    step). ``sigint``: so does a first Ctrl-C (a second interrupts at once); a SIGINT the process was
    started ignoring (``nohup``, a background job) stays ignored, and a SIGTERM handler actdict did not
    set (SIG_IGN, a host program's own: ``actdict.signals.replaceable``) is kept, as before the steps."""
    stop = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def on_int(*_) -> None:
        if stop.flag.is_set():
            raise KeyboardInterrupt
        stop.flag.set()
        said = (b"the final checkpoints are being saved: they finish first" if stop.saving else
                b"saving a resume state at the end of this step")
        if rank() == 0:  # one line under torchrun (a stray RANK alone is no rank); os.write: no IO reentry
            try:
                os.write(2, b"\nCtrl-C: " + said + b" (Ctrl-C again to stop at once)\n")
            except OSError:
                pass

    old = {}
    if replaceable(signal.getsignal(signal.SIGTERM)):
        old[signal.SIGTERM] = signal.signal(signal.SIGTERM, lambda *_: stop.flag.set())
    if sigint and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        old[signal.SIGINT] = signal.signal(signal.SIGINT, on_int)
    try:
        yield stop
    finally:
        for sig, handler in old.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: not set from Python


class Terminated(BaseException):
    """SIGTERM outside the steps and final saves (``sigterm_ends``): raised where the process is, as Ctrl-C
    raises KeyboardInterrupt, so that no ``except Exception`` takes it for a failure; not the command's
    ``actdict.signals.Terminated`` (a KeyboardInterrupt, said as 'terminated', 143): said as Interrupted."""


STARTING = ("stopped (SIGTERM) before the first step: nothing was trained; rerun the same command to start "
            "(or continue) the training")


ENDED = "stopped (SIGTERM) after the final checkpoints were saved: the training is complete"


@contextmanager
def sigterm_ends() -> Iterator[threading.Event]:
    """While inside (the whole of ``main``), SIGTERM ends the training as it does during its steps
    (``sigterm_flag``, which holds it from the first step through the final saves): Interrupted, one line,
    exit status 2, rather than Python's death by signal (-15). Here nothing waits to be saved, and the
    start may be waiting for a lock: Terminated is raised at once (``actdict.signals.sigterm_raises``, under
    torchrun too: see its rule), and said as Interrupted (what a started training writes is atomic, as a
    SIGKILL needs; the folders its lock made go). Yields ``begun``, set at the first step: a SIGTERM after
    the steps and saves (releasing the locks) says the training is done."""
    begun = threading.Event()
    try:
        with sigterm_raises(Terminated, torchrun=True):
            yield begun
    except Terminated:
        raise Interrupted(ENDED if begun.is_set() else STARTING) from None
