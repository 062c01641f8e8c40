"""The one base class of every error actdict raises on purpose (bad input, missing data, offline hub).

The command line prints these as one clear line (exit status 2) instead of a traceback; anything else is a
bug and keeps its traceback.
"""


import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import NoReturn


class ActdictError(Exception):
    """An expected failure whose message says what went wrong and what to do."""


class ActdictWarning(UserWarning):
    """Something a stage goes on without (a store's tokenizer, an embedding store's texts); the command line
    shows it as one line (``one_line_warnings``)."""


def _one_line(message, category, filename, lineno, line=None, _python=warnings.formatwarning) -> str:
    if issubclass(category, ActdictWarning):
        return one_line(f"actdict: warning: {message}") + "\n"
    return _python(message, category, filename, lineno, line)


def one_line_warnings() -> None:
    """Show an ``ActdictWarning`` as 'actdict: warning: ...' from now on, one line (``one_line``: a name it
    holds, a dictionary's or a folder's, may hold a newline or an ESC), instead of Python's
    'FILE:LINE: UserWarning: ...' followed by the line of our source that called it; other warnings as
    Python shows them."""
    warnings.formatwarning = _one_line


def bar_aware(show: Callable[..., None]) -> Callable[..., None]:
    """``warnings.showwarning`` ``show`` with the progress bars on the terminal cleared before the warning and
    drawn again after it (tqdm's ``external_write_mode``): a warning during a stage's bar was written after
    the bar's text, on its line ('| 2/4 [00:01<00:01]actdict: warning: ...'). Bars on a log file
    (``LogLines``: whole lines, nothing to clear) are left as they are."""
    import sys

    def shown(message, category, filename, lineno, file=None, line=None) -> None:
        if (tqdm := sys.modules.get("tqdm")) is None:  # no bar can be drawn
            return show(message, category, filename, lineno, file, line)
        with tqdm.tqdm.external_write_mode(file=file or sys.stderr):
            show(message, category, filename, lineno, file, line)

    return shown


def tolerant_stdout() -> None:
    """Make a stdout that cannot encode every character write the others as escapes (``\\u03a9``), as
    stderr always does, instead of stopping the command with a UnicodeEncodeError: Windows' stdout is its
    code page (cp1252) when redirected to a file or a pipe, and corpus tokens, hook and dictionary names are
    any Unicode. A UTF stdout is left as it is."""
    import codecs
    import sys

    out = sys.stdout
    try:
        utf = codecs.lookup(out.encoding or "ascii").name.startswith("utf")
    except (AttributeError, LookupError):
        return
    if not utf and callable(getattr(out, "reconfigure", None)):
        out.reconfigure(errors="backslashreplace")


def set_up_printing() -> Callable[[], None]:
    """``one_line_warnings``, ``tolerant_stdout`` and warnings clear of the progress bars (``bar_aware``),
    the printing every command sets up; return the call that puts the warning format and writer and stdout's
    error handler back as they were (``command_printing``)."""
    import sys

    shown, show, out = warnings.formatwarning, warnings.showwarning, sys.stdout
    errors = getattr(out, "errors", None)
    one_line_warnings()
    tolerant_stdout()
    warnings.showwarning = bar_aware(show)

    def give_back() -> None:
        warnings.formatwarning, warnings.showwarning = shown, show
        if getattr(out, "errors", None) != errors:
            with suppress(ValueError, OSError):  # closed meanwhile: nothing to give back
                out.reconfigure(errors=errors)

    return give_back


@contextmanager
def command_printing() -> Iterator[None]:
    """``set_up_printing`` while inside, then the warning format and stdout's error handler as they were:
    ``actdict.cli.main`` called from a notebook or a script, which shows warnings and writes stdout its own
    way after the call."""
    give_back = set_up_printing()
    try:
        yield
    finally:
        give_back()


def quiet_stdout(stream=None) -> None:
    """Point stdout's file descriptor (``stream``'s: stderr's, ``Dropped``) at /dev/null: a reader that left
    (``actdict ... | head``) or a full disk takes nothing more, and Python's flush at exit of what stdout
    still holds would print 'Exception ignored ... BrokenPipeError'. ``stdout_given_back`` undoes it for a
    caller of ``actdict.cli.main``. A stdout of no descriptor (a host's tee-like writer over the closed pipe,
    a StringIO) is left as it is: asking it for one raised AttributeError or io.UnsupportedOperation out of
    the command, in place of its status 141."""
    import os
    import sys

    try:
        fd = (sys.stdout if stream is None else stream).fileno()
    except (AttributeError, OSError, ValueError):  # none to silence: the host's writer is the host's
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


@contextmanager
def stdout_given_back(name: str = "stdout") -> Iterator[None]:
    """Stdout's file descriptor (``sys.NAME``'s: stderr's, which ``Dropped`` silences) as it was on entering,
    given back on leaving where ``quiet_stdout`` pointed it at /dev/null meanwhile, what stdout held unwritten
    dropped there first: ``actdict.cli.main`` called from a notebook or a host script, whose own output after
    the call went to /dev/null for the rest of the process. A stdout of no descriptor (a StringIO, a
    notebook's stream) is left as it is."""
    import os
    import sys

    try:
        stream = getattr(sys, name)
        fd = stream.fileno()
        saved = os.dup(fd)
    except (AttributeError, OSError, ValueError):  # none, closed, or no descriptor left to hold it in
        yield
        return
    try:
        yield
    finally:
        try:
            try:
                silenced = not os.path.samestat(os.fstat(fd), os.fstat(saved))
            except OSError:  # closed meanwhile: given back too
                silenced = True
            if silenced:
                with suppress(OSError, ValueError):  # the text the closed pipe did not take: to /dev/null
                    stream.flush()
                os.dup2(saved, fd)
        finally:
            os.close(saved)


class Dropped:
    """The process' stdout (or stderr) during a stage, whose reader may leave before the stage ends (``| tee
    run.log`` killed, ``| head -1`` done): from the first write or flush the closed pipe refuses
    (BrokenPipeError) it drops what is printed (``quiet_stdout``: the descriptor on /dev/null, with what
    stdout held) and says so in ``dropped``, instead of raising. Line-buffered, the stage's next line raised
    it: a training lost its run back to its last resume state (before its first step: all of it; between a
    sweep's final checkpoints: the rest of them); on stderr (``2>&1 | tee``), its progress bar's next redraw
    did. The stage's work is its files. Anything else it does as ``stream`` does."""

    def __init__(self, stream) -> None:
        self.stream, self.dropped = stream, False

    def write(self, text: str) -> int:
        if not self.dropped:
            try:
                return self.stream.write(text)
            except BrokenPipeError:
                self._drop()
        return len(text)

    def flush(self) -> None:
        if not self.dropped:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._drop()

    def _drop(self) -> None:
        self.dropped = True
        quiet_stdout(self.stream)  # (a stream of no descriptor: its writes dropped here only)
        with suppress(OSError, ValueError):  # what the pipe did not take: to /dev/null, not to the exit
            self.stream.flush()

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


@contextmanager
def output_dropped_when_closed() -> Iterator[Callable[[], bool]]:
    """``sys.stdout`` and ``sys.stderr`` each a ``Dropped`` while inside (the stages, not the tools nor
    ``--dry-run``, which stop at a closed pipe: status 141); yields the call that says whether a reader of
    either left. One that is None (``actdict ... >&-``) is left as it is: print writes nothing there."""
    import sys

    held = {name: Dropped(s) for name in ("stdout", "stderr") if (s := getattr(sys, name)) is not None}
    for name, dropping in held.items():
        setattr(sys, name, dropping)
    try:
        yield lambda: any(d.dropped for d in held.values())
    finally:
        for name, dropping in held.items():
            if getattr(sys, name) is dropping:  # (one the stage set meanwhile is the stage's)
                setattr(sys, name, dropping.stream)


def closed_output_on_devnull() -> None:
    """A process started with stdout or stderr closed (``actdict train CONFIG 2>&-``, a launcher that closes
    them): that descriptor opened on /dev/null, and a stderr Python started as None a stream there, whose
    writes go nowhere, as a reader gone's do (``Dropped``): the stage runs to its end, its status its own.
    None, stderr's first use (the progress bar's isatty, ``print_error``'s write) was an AttributeError, its
    traceback written nowhere, status 1, and ``print(..., file=sys.stderr)`` wrote to stdout; and the closed
    descriptor was the next file's the process opened (a lock, a checkpoint), where a write to stderr from C
    (torch's warnings) or a child's would have landed. A stdout of None stays None: print writes nothing
    there. The process' own streams only: ``entry`` and ``run_command``, never ``cli.main``."""
    import os
    import sys

    for fd in (1, 2):
        try:
            os.fstat(fd)
        except OSError:  # closed: /dev/null takes its number (the lowest free)
            null = os.open(os.devnull, os.O_WRONLY)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # the process' stderr until its exit


@contextmanager
def stderr_while_none() -> Iterator[None]:
    """``sys.stderr`` a stream on /dev/null while inside where it is None (``actdict.cli.main`` called from
    pythonw, or from a host started without one), as ``closed_output_on_devnull`` makes it for the process:
    its writes go nowhere and the command runs to its end, its status its own. None, the progress bar's
    isatty (``bar_timing``) and ``print_error``'s write were an AttributeError out of the call, and
    ``print(..., file=sys.stderr)`` wrote to stdout. None again on leaving: the host's."""
    import os
    import sys

    if sys.stderr is not None:
        yield
        return
    with open(os.devnull, "w", encoding="utf-8") as null:
        sys.stderr = null
        try:
            yield
        finally:
            if sys.stderr is null:  # (one the command set meanwhile is the command's)
                sys.stderr = None


def line_buffered_stdout() -> None:
    """Write stdout a line at a time also when it is a file or a pipe (``nohup``, ``sbatch --output``,
    ``| tee run.log``), as it is on a terminal: Python holds up to 8 KiB of it there, so a process killed
    with SIGKILL (the OOM killer, a scheduler's time limit) lost the lines it had printed (the stage's
    start line, where it resumed), and in ``> log 2>&1`` they came after the progress bars printed
    since on stderr (line-buffered). The process' stdout only: ``entry`` and ``run_command``, never
    ``cli.main`` called from a notebook. A stdout of no ``reconfigure`` (None, a host's writer) is left."""
    import sys

    if callable(getattr(sys.stdout, "reconfigure", None)):
        with suppress(ValueError, OSError):  # closed, or a reader gone: nothing to write a line to
            sys.stdout.reconfigure(line_buffering=True)


def run_command(main: Callable[[], int | None]) -> NoReturn:
    """A module's ``python -m`` entry point (``python -m actdict.harvest.vectors``, ``...corpus``...): run
    ``main`` as the process, its return value the exit status, with the printing the ``actdict`` command
    sets up first (``set_up_printing``: a stdout that writes what its encoding lacks as escapes, as Windows'
    cp1252 stopped these commands on a non-ASCII path or token, and one-line actdict warnings). Kept, not
    given back: the process ends here, and its flush at exit writes what is left with it. Its stdout is
    written a line at a time (``line_buffered_stdout``); a closed stdout or stderr is /dev/null
    (``closed_output_on_devnull``)."""
    closed_output_on_devnull()
    set_up_printing()
    line_buffered_stdout()
    raise SystemExit(main())


_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)] if chr(c) not in "\n\t"}


def printable(text: object) -> str:
    """``text`` as it is safe to print on a terminal: its control characters but newline and tab (ESC, BEL,
    CR, C1 codes) written as escapes (``\\x1b``). A store's manifest, a checkpoint's record or a corpus token
    comes from someone else, and printed as it is, ESC ] 52 sets the terminal's clipboard, ESC ] 0 its
    title, ESC [ 2J clears the screen (and CR overwrites the line shown)."""
    return str(text).translate(_CONTROLS)


def one_line(text: str) -> str:
    """``text`` as one line safe on a terminal: ``printable``, and its newlines written ``\\n``: a line that
    names what a user typed (an override, a config path, a dictionary, hook or model name). A newline there
    split the line in two and could put a made-up line in the output or a log ('actdict: train ended with
    exit status 0 ...'); runlog's first line quotes the command with shlex.join, which keeps a newline."""
    return printable(text).replace("\n", "\\n")


def print_error(prog: str, e: ActdictError) -> int:
    """Print ``e`` as the command line's one line on stderr ("PROG: config error: ..." for a bad config,
    "PROG: ErrorClass: ..." otherwise) and return the exit status, 2. Under torchrun (WORLD_SIZE > 1) a
    config error, the same on every rank, is printed by the first rank of each node only (LOCAL_RANK 0:
    node-local paths may differ), and other errors name their rank."""
    import sys

    from actdict.signals import local_rank, rank, under_torchrun, world_size

    config, several = type(e).__name__ == "ConfigError", under_torchrun()
    kind = "config error" if config else type(e).__name__
    if several and config and local_rank():  # a blank RANK / LOCAL_RANK is 0 here: int() of it raised a
        return 2  # traceback that hid the error (from_env's ConfigError of it among them)
    where = f" (rank {rank()} of {world_size()})" if several and not config else ""
    line = printable(f"{prog}{where}: {kind}: {e}{open_files_hint(e)}") + "\n"
    sys.stderr.write(line)  # one write: torchrun's ranks run unbuffered (-u) into one stderr, where print's
    sys.stderr.flush()  # two (the text, then its newline) let two ranks' lines run into one
    return 2


def open_files_hint(e: BaseException) -> str:
    """What to do when ``e``, or what it was raised from, is 'Too many open files' (EMFILE: this process'
    limit, named; ENFILE: the system's), as '; ...' to add to its line; '' for anything else."""
    import errno
    import sys

    try:
        import resource
    except ImportError:  # Windows: no ulimit; its C runtime's limit is fixed for the process
        resource = None
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENFILE:
            return "; the system's table of open files is full: close other programs, or raise fs.file-max"
        if isinstance(seen, OSError) and seen.errno == errno.EMFILE and resource is None:
            return (f"; this process holds as many files open as one process may on this platform "
                    f"({sys.platform}), a limit no ulimit raises here: report it as an actdict bug")
        if isinstance(seen, OSError) and seen.errno == errno.EMFILE:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            if hard != resource.RLIM_INFINITY and hard <= soft:  # ulimit -n sets both: none left to raise
                return (f"; this process may hold {soft:,} files open at once, its hard limit too (ulimit "
                        "-Hn): run it from a shell with a higher limit (limits.conf, systemd's LimitNOFILE)")
            up = 4096 if hard == resource.RLIM_INFINITY else min(hard, max(4096, 4 * soft))
            return (f"; this process may hold {soft:,} files open at once (ulimit -n): raise the limit "
                    f"(ulimit -n {up}) and run the command again")
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    return ""
