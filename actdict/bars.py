"""The stages' progress bars (tqdm): whether one is shown (``bar_disabled``: ``TQDM_DISABLE``, read at every
bar) and how often it redraws (``bar_timing``: a terminal's pace, or whole lines every ``LOG_BAR_INTERVAL``
seconds where stderr is a log file, ``LogLines``). Every stage passes both to each bar it opens.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def bar_disabled(disable: bool | None = False) -> bool | None:
    """A progress bar's ``disable``: True where ``TQDM_DISABLE`` is set (1, true, yes or on), else the bar's
    own (a rank's, a ``progress=False``; None: off when stderr is not a terminal). Read at every bar, so a
    notebook or a script turns the stages' bars off with ``os.environ["TQDM_DISABLE"] = "1"`` after tqdm
    was imported too; tqdm reads the variable once, at its import, and never for a bar given ``disable``."""
    if os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    return disable


LOG_BAR_INTERVAL = 30.0  # seconds between progress-bar redraws when stderr is a file, not a terminal


def bar_timing() -> dict[str, Any]:
    """tqdm's redraw intervals for the stages' progress bars: ``mininterval`` is ``TQDM_MININTERVAL`` when
    set, else 0.1 s on a terminal and ``LOG_BAR_INTERVAL`` when stderr goes to a file (ten redraws a second
    fill a long run's log with ~100 MB a day); ``maxinterval`` (tqdm's monitor thread forces a redraw after
    it, 10 s by default) is raised to match. A file also gets ``file``: stderr, each redraw a line of its own
    (``LogLines``), and ``miniters`` 1: the clock is read at every update, and the monitor thread, which
    forces redraws only of bars that skip updates unread (miniters > 1), leaves the bar alone. Its forced
    redraw of a stalled bar was followed by the next update's own, two lines a fraction of a second apart."""
    tty = sys.stderr.isatty()
    if env := os.environ.get("TQDM_MININTERVAL"):
        every = float(env)
    else:
        every = 0.1 if tty else LOG_BAR_INTERVAL
    timing = {"mininterval": every, "maxinterval": max(10.0, every)}
    return timing if tty else timing | {"file": LogLines(), "miniters": 1}


class LogLines:
    """stderr as a log file for a progress bar: tqdm's redraws ('\\r' + bar) become whole lines, and its
    clearing of the bar (blanks between '\\r's, the last '\\n') writes nothing: no '\\r' in the log."""

    def __init__(self) -> None:
        self.file = sys.stderr

    def write(self, s: str) -> int:
        if text := s.replace("\r", "").rstrip():
            self.file.write(text + "\n")
        return len(s)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding: the file's
        return getattr(self.file, name)
