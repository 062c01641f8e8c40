"""The command line around the configs: one-line failures, exit statuses, progress bars, -OO, THP."""

import pytest


def test_importing_actdict_puts_large_tensors_on_huge_pages():
    """``import actdict`` before torch turns on torch's THP allocations (page-aligned, madvise'd large
    tensors); the user's THP_MEM_ALLOC_ENABLE=0 wins. Checked in fresh interpreters, where the allocator has
    not yet read the variable."""
    import os
    import subprocess
    import sys

    code = ("import actdict, torch; xs = [torch.empty(8 << 20, dtype=torch.uint8) for _ in range(3)]; "
            "print(*[x.data_ptr() % 4096 for x in xs])")
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}

    def offsets(extra: dict) -> list[int]:
        out = subprocess.run([sys.executable, "-c", code], env=env | extra, capture_output=True, text=True,
                             check=True).stdout
        return [int(v) for v in out.split()]

    assert offsets({}) == [0, 0, 0]
    assert any(offsets({"THP_MEM_ALLOC_ENABLE": "0"}))  # torch's default 64-byte alignment


def test_progress_bars_redraw_rarely_into_a_log_file(monkeypatch):
    import io
    import sys

    from actdict.bars import LOG_BAR_INTERVAL, bar_timing

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file: every 30 s, not ten times a second
    timing = bar_timing()
    assert timing.pop("file").file is sys.stderr  # each redraw a line (LogLines)
    assert timing == {"mininterval": 30.0, "maxinterval": 30.0, "miniters": 1} and LOG_BAR_INTERVAL == 30.0
    monkeypatch.setattr(sys, "stderr", Tty())
    assert bar_timing() == {"mininterval": 0.1, "maxinterval": 10.0}  # tqdm's defaults
    monkeypatch.setenv("TQDM_MININTERVAL", "2")
    assert bar_timing() == {"mininterval": 2.0, "maxinterval": 10.0}


def test_a_progress_bar_into_a_log_file_writes_whole_lines(monkeypatch):
    """stderr a file (`2> log`), stdout anything: tqdm redrew its bar after a '\\r' and cleared it with blanks
    between '\\r's around a message (tqdm.write), so the log held one long line of '^M' fragments; each redraw
    is now a line of its own, the clearing writes nothing, and the message goes to stdout alone."""
    import io
    import sys

    from tqdm import tqdm

    from actdict.bars import bar_timing

    monkeypatch.setenv("TQDM_MININTERVAL", "0")  # every update redrawn
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    with tqdm(total=3, desc="harvest", unit="tok", **bar_timing()) as bar:
        bar.update(1)
        bar.write("harvest: first batch")
        bar.update(2)
    log = sys.stderr.getvalue()
    assert "\r" not in log and sys.stdout.getvalue() == "harvest: first batch\n"
    lines = log.splitlines()  # the last state twice: the update's redraw, then the close's
    assert list(dict.fromkeys(line.split("|")[0] for line in lines)) == [
        "harvest:   0%", "harvest:  33%", "harvest: 100%"] and "3/3" in lines[-1]


def test_a_progress_bar_in_a_log_file_writes_one_line_per_redraw_when_it_stalls(monkeypatch):
    """A bar that stalled past maxinterval wrote two lines a fraction of a second apart: tqdm's monitor
    thread forced a redraw (a bar whose dynamic miniters had grown), and the next update redrew it again,
    since a forced redraw leaves its last-print time as it was. A log file's bar now checks the clock at
    every update (miniters 1): the monitor leaves it alone, and the update's redraw is its one line. Here
    a fake clock, and one pass of tqdm's own monitor loop (TMonitor.run) instead of its thread."""
    import io
    import sys
    import types

    import tqdm.std
    from tqdm import TMonitor
    from tqdm import tqdm as bar_of

    from actdict.bars import bar_timing

    now = [0.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: now[0])
    monkeypatch.setattr(bar_of, "monitor_interval", 0)  # no thread of its own: its pass is run below
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file: a line every 30 s

    class OnePass:  # TMonitor's was_killed: it wakes once, then is told to stop
        waits = 0

        def wait(self, _):
            self.waits += 1

        def is_set(self):
            return self.waits > 1

    bar = bar_of(total=1000, desc="train", **bar_timing())
    for _ in range(310):  # ten updates a second: one line at 30 s
        now[0] += 0.1
        bar.update(1)
    lines = sys.stderr.getvalue().splitlines()
    now[0] += 31  # a stall: nothing for maxinterval (30 s)
    TMonitor.run(types.SimpleNamespace(was_killed=OnePass(), sleep_interval=1, _time=lambda: now[0],
                                       tqdm_cls=bar_of, get_instances=lambda: [bar]))
    now[0] += 0.1
    bar.update(1)
    new = sys.stderr.getvalue().splitlines()[len(lines):]
    assert [line.split("|")[0] for line in new] == ["train:  31%"] and "311/1000" in new[0]
    bar.close()


def test_an_object_store_failure_is_one_line(monkeypatch, capsys):
    """No credentials (a botocore error, here a stand-in from its module) deep in a stage's chain: one line
    naming what to check, exit status 2; any other exception keeps its traceback."""
    from actdict import cli

    creds = type("NoCredentialsError", (Exception,), {"__module__": "botocore.exceptions"})

    def fails(argv):
        try:
            raise creds("Unable to locate credentials")
        except Exception as e:
            raise OSError("listing s3://bucket/store failed") from e

    tool = type("tool", (), {"main": staticmethod(fails)})
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: tool)
    assert cli.main(["store", "s3://bucket/store"]) == 2
    err = capsys.readouterr().err
    assert "the object store failed: NoCredentialsError: Unable to locate credentials; check" in err
    assert "AWS_ENDPOINT_URL" in err
    monkeypatch.setattr(cli.importlib, "import_module",
                        lambda name: type("m", (), {"main": staticmethod(lambda a: 1 / 0)}))
    with pytest.raises(ZeroDivisionError):
        cli.main(["store", "x"])


def test_a_rank_that_lost_its_peer_says_so_in_one_line(monkeypatch, capsys):
    from actdict import cli

    def peer_died(argv):
        raise RuntimeError("[../gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:43671: Connection "
                           "reset by peer\nmore lines")

    monkeypatch.setattr(cli.importlib, "import_module", lambda name: type("t", (), {"main": peer_died}))
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(["store", "x"]) == 2
    assert "another rank of this torchrun run failed ([../gloo/" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: not a peer's death, the traceback stays
    with pytest.raises(RuntimeError):
        cli.main(["store", "x"])


def test_an_interrupted_stage_exits_130_and_keeps_its_work(tmp_path, monkeypatch, capsys):
    from actdict import cli

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "load_experiment", interrupted)
    assert cli.main(["train", str(tmp_path / "c.yaml")]) == 130
    assert capsys.readouterr().err == "actdict: interrupted (completed shards and checkpoints are kept)\n"
    monkeypatch.setattr("actdict.harvest.inspect.list_hooks", interrupted)  # Ctrl-C in a tool: store --verify
    try:
        status = cli.main(["store", str(tmp_path / "s"), "--verify"])
    except KeyboardInterrupt:  # not caught: a traceback (and it must not stop the test session)
        status = "traceback"
    assert status == 130
    assert capsys.readouterr().err == "actdict: interrupted\n"


def test_a_full_disk_anywhere_is_one_line(tmp_path, monkeypatch, capsys):
    """`actdict store S --json > F` with F on a full disk (the print's flush) ended in an OSError traceback;
    any ENOSPC or EDQUOT that reaches the command line is one line, exit 2, naming the file where known."""
    import errno
    import os

    from actdict import cli

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("actdict.harvest.inspect.list_hooks", full)
    assert cli.main(["store", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err == ("actdict: ActdictError: No space left on device: free some space and "
                                       "run the command again\n")

    def quota(*a, **k):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), str(tmp_path / "s" / "x"))

    monkeypatch.setattr("actdict.harvest.inspect.list_hooks", quota)
    assert cli.main(["store", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err == (f"actdict: ActdictError: Disk quota exceeded writing {tmp_path}/s/x: "
                                       "free some space and run the command again\n")


@pytest.mark.parametrize("argv", [["harvest", "missing.yaml"], ["store", "missing"],
                                  ["lens", "missing.yaml", "x"]])
def test_the_command_line_runs_under_python_oo(tmp_path, argv):
    """Under ``python -OO`` (PYTHONOPTIMIZE=2) docstrings are None: the parsers' descriptions, taken from the
    module docstrings, crashed every command with an AttributeError before it read its arguments."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-OO", "-m", "actdict.cli", *argv], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert (r.returncode, "Traceback" in r.stderr) == (2, False), r.stderr
    assert "missing" in r.stdout + r.stderr  # (actdict store says it on stdout)


@pytest.mark.parametrize("argv, required", [(["train"], "config"), ([], "stage, config"),
                                            (["feature"], "dict")])
def test_a_missing_argument_names_only_the_required_ones(capsys, argv, required):
    """The overrides (`actdict run CONFIG [key=value ...]`) and `actdict feature`'s indices may be left out;
    the usage error named them as required ('the following arguments are required: config, overrides')."""
    from actdict.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"error: the following arguments are required: "
                                                             f"{required}")


def _help(capsys, argv: list[str]) -> str:
    """What ``actdict ARGV`` prints (its --help), in one line; argparse ends it with status 0."""
    from actdict.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("stage, does", [("harvest", "store its activations at the hooks"),
                                         ("train", "train the dictionaries of the config's train section"),
                                         ("analyze", "score the trained dictionaries on the held-out chunks"),
                                         ("run", "harvest, train and analyze in order")])
def test_a_stage_s_help_is_its_own(capsys, stage, does):
    """``actdict harvest --help`` (train, analyze, run) printed the general help, the stage a choice among
    four and the tools' epilog: each stage now says its own usage and what it does."""
    said = _help(capsys, [stage, "--help"])
    assert said.startswith(f"usage: actdict {stage} [-h] [--dry-run] config [overrides ...] ")
    assert does in said
    assert "{harvest,train,analyze,run}" not in said and "actdict export" not in said


def test_a_tool_s_help_shows_its_flags_and_the_general_help_lists_every_command(capsys):
    """A tool's --help (``actdict store``) shows its own flags, not a stage's; ``actdict --help`` lists the
    stages and every tool."""
    store = _help(capsys, ["store", "--help"])
    assert store.startswith("usage: actdict store [-h] [--hook HOOK] [--verify] [--repair] [--json] path")
    assert "--dry-run" not in store and "overrides" not in store
    said = _help(capsys, ["--help"])
    assert "{harvest,train,analyze,run}" in said and "actdict STAGE --help: its own usage" in said
    from actdict.cli import _TOOLS

    assert [t for t in _TOOLS if f"actdict {t} " not in said] == []


def _print_emfile() -> int:
    """``print_error`` of a shard write refused for 'Too many open files' (EMFILE, its cause); its status."""
    import errno

    from actdict.errors import print_error
    from actdict.files import WriteError

    try:
        try:
            raise OSError(errno.EMFILE, "Too many open files")
        except OSError as e:
            raise WriteError("could not write shard s/h/shards/00001: Too many open files") from e
    except WriteError as e:
        return print_error("actdict", e)


def test_too_many_open_files_names_the_limit_and_how_to_raise_it(capsys, monkeypatch):
    """A write refused for 'Too many open files' (a harvest under ulimit -n 12: one WriteError line) said
    nothing of the limit: the line now names this process' limit and the command that raises it."""
    import resource

    from actdict.errors import print_error
    from actdict.files import WriteError

    monkeypatch.setattr(resource, "getrlimit", lambda what: (1024, 65536))  # a soft limit below the hard
    assert _print_emfile() == 2
    assert capsys.readouterr().err == (
        "actdict: WriteError: could not write shard s/h/shards/00001: Too many open files; this process may "
        "hold 1,024 files open at once (ulimit -n): raise the limit (ulimit -n 4096) and run the command "
        "again\n")
    assert print_error("actdict", WriteError("could not write x: No space left on device")) == 2
    assert capsys.readouterr().err == "actdict: WriteError: could not write x: No space left on device\n"


def test_too_many_open_files_where_there_is_no_ulimit_says_so_in_its_line(capsys, monkeypatch):
    """Windows has no resource module (no ulimit): the hint for 'Too many open files' was an ImportError
    raised while printing the error; it is now its line's end, naming the platform."""
    import sys

    monkeypatch.setitem(sys.modules, "resource", None)  # `import resource` raises ImportError, as on Windows
    monkeypatch.setattr(sys, "platform", "win32")
    assert _print_emfile() == 2
    assert capsys.readouterr().err == (
        "actdict: WriteError: could not write shard s/h/shards/00001: Too many open files; this process "
        "holds as many files open as one process may on this platform (win32), a limit no ulimit raises "
        "here: report it as an actdict bug\n")


def test_a_stdout_that_cannot_encode_a_name_escapes_it(tmp_path, monkeypatch):
    """Windows' stdout redirected to a file or pipe is its code page (cp1252): `actdict store` of a hook
    named 'Ωmega' (any Unicode) stopped with a UnicodeEncodeError traceback; the character is now written
    as an escape, as stderr writes it, and the command ends as usual."""
    import io
    import sys

    import numpy as np

    from actdict.cli import main
    from actdict.harvest.store import write_vectors

    write_vectors(str(tmp_path / "s"), np.zeros((8, 2), np.float32), hook="Ωmega", shard_rows=4, chunk_rows=2)
    out = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out, encoding="cp1252", write_through=True))
    assert main(["store", str(tmp_path / "s")]) == 0
    assert out.getvalue().decode("cp1252").startswith("\\u03a9mega: 8 rows")


ENTRY_MODULES = ["actdict.harvest.vectors", "actdict.harvest.corpus", "actdict.harvest.synthetic",
                 "actdict.train.saelens_import", "actdict.train.listing", "actdict.train.export",
                 "actdict.analyze.runs", "actdict.analyze.show", "actdict.analyze.pair"]


def cp1252_stdout(monkeypatch):
    """Windows' stdout redirected to a file or a pipe: its code page; the bytes written to it."""
    import io
    import sys

    out = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out, encoding="cp1252", write_through=True))
    return out


def run_as_main(module: str, argv: list[str], monkeypatch) -> object:
    """``python -m MODULE ARGV...`` in this process; its exit status."""
    import runpy
    import sys
    import warnings

    monkeypatch.setattr(sys, "argv", [module, *argv])
    with warnings.catch_warnings():  # 'found in sys.modules ... prior to execution': imported by the tests
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(SystemExit) as e:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    return e.value.code


def test_every_python_m_entry_point_ends_in_its_package():
    """ENTRY_MODULES is every module of actdict with a ``python -m`` entry point, so that the test below
    covers each."""
    import re
    from pathlib import Path

    root = Path(__file__).parents[1]
    main = re.compile(r"^if __name__ == .__main__.:", re.M)
    found = sorted(f"actdict.{d}.{p.stem}" for d in ("harvest", "train", "analyze")
                   for p in (root / d).glob("*.py") if main.search(p.read_text()))
    assert found == sorted(ENTRY_MODULES)


@pytest.mark.parametrize("module", ENTRY_MODULES)
def test_every_python_m_entry_point_escapes_what_a_cp1252_stdout_cannot_write(module, monkeypatch):
    """The ``python -m`` entry points (the import, the corpus build...) did not set up stdout as the
    ``actdict`` command does, so a cp1252 stdout stopped them on a non-ASCII path or token with a
    UnicodeEncodeError; each now writes such characters as escapes (its --help run here)."""
    import sys

    cp1252_stdout(monkeypatch)
    assert run_as_main(module, ["--help"], monkeypatch) == 0
    assert sys.stdout.errors == "backslashreplace"


def test_python_m_vectors_import_into_a_non_ascii_store_says_where_on_a_cp1252_stdout(tmp_path, monkeypatch):
    """``python -m actdict.harvest.vectors v.npy Ωstore`` imported the vectors, then stopped with a
    UnicodeEncodeError traceback printing where; it now says it with the name escaped, and ends with 0."""
    import numpy as np

    np.save(tmp_path / "v.npy", np.ones((16, 3), np.float32))
    out = cp1252_stdout(monkeypatch)
    assert run_as_main("actdict.harvest.vectors", [str(tmp_path / "v.npy"), str(tmp_path / "Ωstore")],
                       monkeypatch) == 0
    said = out.getvalue().decode("cp1252")
    assert said.startswith("imported 16 vectors (d 3) into ") and "\\u03a9store" in said
    assert (tmp_path / "Ωstore" / "vectors").is_dir()


# `actdict variants` whose interpreter shutdown is slow (an atexit handler, as a thread joined there), and
# says when it has begun: a Ctrl-C then comes after main has returned
SLOW_SHUTDOWN = """import atexit, runpy, sys, time
def slow():
    print("shutting down", flush=True)
    time.sleep(120)
atexit.register(slow)
sys.argv = ["actdict", "variants", "sae_l1"]
runpy.run_module("actdict.cli", run_name="__main__")  # python -m actdict.cli, as the actdict command
"""


def test_a_ctrl_c_as_the_command_shuts_down_ends_it_quietly_with_its_status():
    """Ctrl-C in the last moments of a command, once main has returned (the interpreter joining threads,
    running atexit handlers), printed Python's 'Exception ignored in atexit callback ... KeyboardInterrupt'
    and went on with the shutdown; the command's work is done and said, so it now ends at once, quietly,
    with main's status (here 0). A real subprocess and a real SIGINT."""
    import os
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", SLOW_SHUTDOWN], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # a terminal's
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line == "shutting down\n":
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and err == "" and out == ""
    assert lines[0].startswith("sae_l1") and lines[-1] == "shutting down\n"


def test_an_error_line_is_one_write(monkeypatch):
    """Under torchrun the ranks run unbuffered (python -u) into one stderr: print wrote the line, then its
    newline, so two ranks' lines ran into one ('...completeactdict (rank 1 of 2): ...\\n\\n', seen in a
    test_train_sigterm_ddp run). print_error writes each line whole, in one write."""
    import io
    import sys

    from actdict.errors import ActdictError, print_error

    class Unbuffered(io.StringIO):
        def __init__(self):
            super().__init__()
            self.writes = []

        def write(self, text):
            self.writes.append(text)
            return super().write(text)

    err = Unbuffered()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert print_error("actdict", ActdictError("stopped at step 24")) == 2
    assert err.writes == ["actdict (rank 1 of 2): ActdictError: stopped at step 24\n"]


def test_a_reader_gone_silences_stdout_for_the_call_only(tmp_path, monkeypatch):
    """After ``actdict ... | head`` met the closed pipe (BrokenPipeError, status 141), ``cli.main`` pointed
    stdout's descriptor at /dev/null for the rest of the process: a host script or notebook that called it
    lost all its later output. The call gives it back, dropping only what the closed pipe did not take: a
    reader that opens the same FIFO after the call reads exactly what is written after it."""
    import os
    import sys

    from actdict import cli

    fifo = tmp_path / "out"
    os.mkfifo(fifo)
    first = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    out = os.fdopen(os.open(fifo, os.O_WRONLY), "w")
    os.close(first)  # the reader leaves (head -1 has its line)

    def lists(argv):
        print("h00: 45 rows\n" * 10_000, flush=True)  # more than a pipe holds

    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: type("t", (), {"main": lists}))
    assert cli.main(["store", "x"]) == 141
    later = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the host's output goes on to a new reader
    try:
        print("after the call", file=out, flush=True)
        assert os.read(later, 1 << 16) == b"after the call\n"
    finally:
        os.close(later)
        out.close()


@pytest.mark.parametrize("kind", ["writer", "stringio"])
def test_a_reader_gone_behind_a_stdout_of_no_descriptor_is_status_141(monkeypatch, capsys, kind):
    """A host's stdout with no file descriptor of its own (a tee-like writer whose pipe's reader left, a
    StringIO subclass): the closed pipe's BrokenPipeError is the command's status 141 and nothing on stderr,
    as for a real pipe; silencing it asked stdout for its descriptor, and AttributeError (io's
    UnsupportedOperation for a StringIO) left cli.main with a traceback."""
    import io
    import sys

    from actdict import cli

    class Tee:  # a host's writer over a pipe whose reader left: no fileno
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            pass

    class Gone(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Tee() if kind == "writer" else Gone())
    assert cli.main(["variants"]) == 141
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("argv", "status"), [(["variants"], 0), (["store", "/nonexistent/store"], 2)])
def test_a_command_started_with_stdout_closed_ends_with_its_own_status(argv, status):
    """``actdict ... >&-`` (a service or script that closed stdout): Python starts it with sys.stdout None,
    which prints nothing, and the command's flush at exit met None: an AttributeError traceback, status 1
    whatever the command did. It ends with its status, its error line (if any) on stderr."""
    import os
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "actdict.cli", *argv],
                       stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.close(1), timeout=120)
    assert r.returncode == status
    assert r.stderr == ("" if status == 0 else "actdict store: no activation store at /nonexistent/store (no "
                        "<hook>/manifest.json found)\n")
