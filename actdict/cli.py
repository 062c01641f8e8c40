"""Command line: ``actdict {harvest,train,analyze,run} CONFIG [key.sub=value ...]``.

``actdict export RUN_DIR/dicts/NAME OUT`` writes a trained SAE as SAELens files (``actdict.train.export``);
``actdict import SAELENS_DIR RUN_DIR/dicts/NAME`` reads one into a run folder
(``actdict.train.saelens_import``);
``actdict store PATH [--verify | --repair]`` describes a store, checks its shards, drops damaged ones
(``actdict.harvest.inspect``);
``actdict lens CONFIG TEXT`` lists the features each token of a text fires (``actdict.analyze.lens``);
``actdict compare DICT_A DICT_B`` matches two dictionaries' features across run folders (layers, seeds,
sizes: ``actdict.analyze.pair``); ``actdict summary RUN_DIR...`` puts analysed run folders' numbers in one
table (``actdict.analyze.runs``); ``actdict variants [NAME ...] [--check]`` lists the dictionary variants
and their params, or checks their contract (``actdict.train.listing``).

Each stage reads its own section of the experiment YAML; ``run`` runs the three in order; ``--dry-run``
says what each would do (the store, every dictionary of a sweep, the resume state) and does nothing.
Stages are imported lazily so that ``actdict harvest`` never imports the training code.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from actdict import runlog
from actdict.config import ConfigError, check_threads, common_of, load_experiment, section
from actdict.errors import (
    ActdictError,
    closed_output_on_devnull,
    command_printing,
    line_buffered_stdout,
    output_dropped_when_closed,
    print_error,
    quiet_stdout,
    stderr_while_none,
    stdout_given_back,
)
from actdict.failures import exhausted_error, peer_error, remote_error
from actdict.signals import Terminated, rank, sigterm_raises

# stage -> (module with main(common, cfg), config module, config class)
_STAGES = {
    "harvest": ("actdict.harvest.run", "actdict.harvest.config", "HarvestConfig"),
    "train": ("actdict.train.run", "actdict.train.config", "TrainConfig"),
    "analyze": ("actdict.analyze.run", "actdict.analyze.config", "AnalyzeConfig"),
}

_TOOLS = {"export": "actdict.train.export", "import": "actdict.train.saelens_import",
          "store": "actdict.harvest.inspect", "lens": "actdict.analyze.lens",
          "compare": "actdict.analyze.pair", "summary": "actdict.analyze.runs",
          "feature": "actdict.analyze.show", "variants": "actdict.train.listing"}
_EPILOG = ("also: actdict export RUN_DIR/dicts/NAME OUT (an SAE in SAELens' format); actdict import "
           "SAELENS_DIR RUN_DIR/dicts/NAME (an SAELens SAE as a dictionary of a run); actdict store PATH "
           "[--verify | --repair] (what a store holds; checks every shard; drops damaged ones); actdict "
           "lens CONFIG TEXT (the features each token of a text fires); actdict compare DICT_A DICT_B (which "
           "features of two dictionaries, e.g. two layers', are the same); actdict summary RUN_DIR... "
           "(several analysed run folders in one table); actdict feature RUN_DIR/dicts/NAME [I ...] (a "
           "dictionary's features, contexts and partners in the terminal); actdict variants [NAME ...] "
           "[--check] (the dictionary variants, plugins' included, and their params; --check: their "
           "contract). Each takes --help.")


def prepare(stage: str, data: dict) -> tuple[Any, Callable[[], None]]:
    """Build and check one stage's config (its module's ``check(common, cfg)``, where it has one); return
    it and the call that runs the stage. ``run`` prepares all three before running any, so that a typo in
    the train or analyze section stops it before the harvest, not after."""
    run_mod, cfg_mod, cfg_cls = _STAGES[stage]
    cls = getattr(importlib.import_module(cfg_mod), cfg_cls)
    common = common_of(data)
    cfg = section(data, stage, cls)
    module = importlib.import_module(run_mod)
    if hasattr(module, "check"):
        module.check(common, cfg)

    def go(**kw: Any) -> None:
        import torch

        before = torch.get_num_threads()
        set_threads(common.threads)
        try:
            module.main(common, cfg, **kw)
        finally:  # the caller's (a notebook's) own count after the stage
            torch.set_num_threads(before)

    return cfg, go


_PLANS = {"harvest": "actdict.harvest.reuse", "train": "actdict.train.plan", "analyze": "actdict.analyze.run"}


def dry_run(data: dict, cfgs: dict[str, Any]) -> tuple[list[str], bool]:
    """``--dry-run``: (what each stage of ``cfgs`` would do, in order (each module's ``plan``), with nothing
    run; whether a stage would stop); under ``run``, the analysis counts the dictionaries the training
    writes."""
    common, lines, writes, stops = common_of(data), [], False, None
    for stage, cfg in cfgs.items():
        if stops:  # ``run`` goes no further than a stage that stops
            lines.append(f"{stage}: not run: the {stops} above stops")
            continue
        train = cfgs.get("train") if stage == "analyze" else None
        kw = {"coming": [dc.name for dc in train.dicts]} if train is not None else (
            {"after_harvest": True} if stage == "train" and writes else {})
        said = importlib.import_module(_PLANS[stage]).plan(common, cfg, **kw)
        writes, stops = writes or said.writes, stage if said.stops else None
        lines += said.lines
    return lines, stops is not None


def check_labels_field(harvest: Any, field: str) -> None:
    """Before a run's harvest: ``analyze.labels_field`` names a field the harvest's documents have (else the
    analysis stopped on it after the harvest and the training); a vectors harvest has no documents. A files
    source with no files at its path is the harvest's own error, not the field's (whose remedy, to empty the
    field, only led to that error)."""
    from actdict.harvest.sources import SourceError, check_field, require_readable

    if harvest.mode == "vectors":
        raise ConfigError(f"analyze.labels_field={field!r} labels rows by their documents' field, and a "
                          "vectors harvest has no documents: give analyze.labels a .npy file of one label "
                          "per row, or set analyze.labels_field=")
    if harvest.source.kind == "files":
        require_readable(harvest.source)
    try:
        check_field(harvest.source, field)
    except SourceError as e:
        raise ConfigError(f"analyze.labels_field: {e} (set analyze.labels_field= to analyze without labels, "
                          "or name one of them)") from e


def check_run(data: dict, cfgs: dict[str, Any]) -> None:
    """What only ``run`` can check before it starts: train holds chunks out when analyze scores them; a
    vectors file to import, or a token harvest's max_tokens, has more than one chunk of rows when train holds
    chunks out (``check_chunks``); ``train.hook`` picks one hook of a harvest of several (or names the one
    of a vectors or embeddings harvest); every dictionary ``analyze.dicts`` names is trained by this run or
    already in ``<run_dir>/dicts``; ``run_dir`` is no file (train and analyze write there: after the
    harvest, they found it one)."""
    harvest, train = cfgs.get("harvest"), cfgs.get("train")
    if (run_dir := Path(common_of(data).run_dir)).is_file():
        raise ConfigError(f"run_dir {run_dir} is a file, not a folder: set run_dir to a folder for the run's "
                          "checkpoints, logs and report")
    if train is not None and "analyze" in cfgs and train.test_fraction == 0:
        raise ConfigError("train.test_fraction=0 holds no chunks out, and the analysis scores the held-out "
                          "ones: set train.test_fraction > 0 (e.g. 0.1), or run the stages without analyze "
                          "(actdict harvest, actdict train)")
    if harvest is not None and train is not None:  # the hook each mode writes
        writes = {"tokens": list(harvest.hooks), "vectors": [harvest.vectors.hook],
                  "embeddings": [harvest.embed.hook]}
        check_train_hook(writes[harvest.mode], train.hook)
    if harvest is not None and (field := getattr(cfgs.get("analyze"), "labels_field", "")):
        check_labels_field(harvest, field)
    if harvest is not None and harvest.mode != "tokens" and (analyze := cfgs.get("analyze")) is not None:
        asks = [f"analyze.{k}" for k in ("ce_loss", "logit_effects") if getattr(analyze, k)]
        rows = "pooled sentence embeddings" if harvest.mode == "embeddings" else "vectors of no model"
        if asks:  # else found by the analysis, after the harvest and the training
            raise ConfigError(f"{' and '.join(asks)} needs a language model's activations at a hook; a "
                              f"harvest of mode {harvest.mode} stores {rows}: set analyze.ce_loss=false and "
                              "analyze.logit_effects=0")
    if "analyze" in cfgs and train is not None:
        made = {dc.name for dc in train.dicts}
        root = Path(common_of(data).run_dir) / "dicts"
        if missing := [n for n in cfgs["analyze"].dicts if n not in made and not (root / n).is_dir()]:
            raise ConfigError(f"analyze.dicts names {missing}, which train.dicts does not make "
                              f"({sorted(made)}) and {root} does not hold")
    if harvest is not None and train is not None and train.test_fraction > 0:
        check_chunks(harvest, train, "analyze" in cfgs)


def check_chunks(harvest, train, analyzing: bool) -> None:
    """The rows a vectors file or a token harvest's max_tokens gives fit in more than one chunk: train holds
    whole chunks out for testing, and the split of a one-chunk store fails after the whole harvest."""
    from actdict.harvest.vector_read import vector_rows
    from actdict.harvest.writer import chunk_rows_for

    n, what = None, ""  # embeddings: one row per document, counted as the documents are read
    if harvest.mode == "vectors":
        n = vector_rows(harvest.vectors.path, harvest.vectors.key)
        what = f"{harvest.vectors.path} holds {n} vectors"
    elif harvest.mode == "tokens":
        n, what = harvest.max_tokens, f"harvest.max_tokens={harvest.max_tokens} rows"
    if n is not None and n <= harvest.chunk_rows:
        c = chunk_rows_for(n, harvest.shard_rows)  # one row is one chunk whatever chunk_rows says
        fixes = [f"set harvest.chunk_rows={c} ({-(-n // c)} chunks)"] if n > 1 else []
        fixes += (["raise harvest.max_tokens"] if harvest.mode == "tokens" else
                  [] if n > 1 else ["import more than one vector"])
        raise ConfigError(
            f"{what}: one chunk of harvest.chunk_rows={harvest.chunk_rows}, and train holds whole chunks out "
            f"for testing (train.test_fraction={train.test_fraction}); "
            + ", or ".join(fixes + ([] if analyzing else ["train.test_fraction=0"])))


def check_train_hook(hooks: list[str], hook: str) -> None:
    """``train.hook`` picks one of the hooks the harvest writes (``harvest.hooks``): a name listed, or one
    that a pattern matches (``all``: ``blocks.N.hook_resid_post``; the model decides which N exist), and not
    one that holds no vector per token by its name (``models.named_row_problem``: the harvest leaves it out
    of a pattern). ``run`` checks it again with the hooks as the model expands them, before the harvest's
    first forward."""
    from actdict.harvest.config import hook_pattern
    from actdict.harvest.models import ROWS, named_row_problem

    if hook and (why := named_row_problem(hook)):  # a pattern's match the harvest leaves out: known by name
        raise ConfigError(f"train.hook={hook!r} is no hook the harvest writes ({why}; it is not one vector "
                          f"per token): {ROWS}; name such a hook")
    patterns = [p for h in hooks if (p := hook_pattern(h))]
    if not hook and (len(hooks) > 1 or patterns):
        raise ConfigError(f"harvest.hooks {hooks} writes several hooks; name the one the dictionaries learn: "
                          "train.hook=HOOK")
    if hook and not any(fnmatch.fnmatchcase(hook, hook_pattern(h) or h) for h in hooks):
        raise ConfigError(f"train.hook={hook!r} is not among the hooks the harvest writes ({hooks})")


def set_threads(n: int) -> None:
    """torch's intra-op threads (``threads`` in the config; 0 keeps torch's default)."""
    check_threads(n)
    if n:
        import torch

        torch.set_num_threads(n)


TERMINATED = 143  # 128 + 15, as a shell reports a process that SIGTERM ended


def interrupted(e: KeyboardInterrupt, kept: str = "") -> int:
    """Say that Ctrl-C (130) or SIGTERM (``Terminated``, 143) stopped the command; its exit status."""
    how, status = ("terminated (SIGTERM)", TERMINATED) if isinstance(e, Terminated) else ("interrupted", 130)
    print(f"actdict: {how}{f' ({kept})' if kept else ''}", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    """``actdict ARGV`` as a call (a notebook's, a host script's): its exit status, with the printing it set
    up and a stdout it silenced (a reader gone: ``| head``; a full disk) given back on return. A stderr of
    None (pythonw) is /dev/null meanwhile (``stderr_while_none``), as the command's is when started closed."""
    with stderr_while_none(), stdout_given_back(), stdout_given_back("stderr"):
        return _printing(argv)


def _printing(argv: list[str] | None) -> int:
    """``actdict ARGV`` with the command's printing; a stdout it silenced stays silenced: ``entry``, the
    process, whose flush at exit would write to the closed pipe."""
    with command_printing():
        return _command(argv)


def _command(argv: list[str] | None) -> int:
    try:
        with sigterm_raises(Terminated, torchrun=False):  # a harvest rank keeps the default: actdict.signals
            return _main(argv)
    except BrokenPipeError:  # `actdict store PATH | head`, `actdict run CONFIG --dry-run | head`: the reader
        quiet_stdout()  # left; no traceback, a silent flush (``main`` gives it back to a caller)
        return 141  # as a shell reports a process killed by SIGPIPE
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM in a tool (store --verify, lens's model load,
        return interrupted(e)  # compare's pass); the stages say what they keep (_main)
    except Exception as e:
        if isinstance(e, ActdictError):  # a tool's own one-line error that it let through (compare's --json)
            return print_error("actdict", e)
        if (one_line := remote_error(e) or peer_error(e) or exhausted_error(e)) is None:
            raise
        status = print_error("actdict", one_line)
        try:
            sys.stdout.flush()
        except OSError:  # stdout itself is on the full disk: nothing more is written there, no exit traceback
            quiet_stdout()
        return status


_STAGE_HELP = {
    "harvest": "run the model over the corpus and store its activations at the hooks (the config's harvest "
               "section), or import vectors or sentence embeddings as a store",
    "train": "train the dictionaries of the config's train section on the store's activations",
    "analyze": "score the trained dictionaries on the held-out chunks and write summary.json, the features "
               "and the HTML report (the config's analyze section)",
    "run": "harvest, train and analyze in order, each config section checked before any stage runs",
}


def _run_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments every stage takes (``config``, ``overrides``, ``--dry-run``), added to ``parser``."""
    parser.add_argument("config", help="experiment YAML, e.g. configs/demo.yaml")
    parser.add_argument("overrides", nargs="*", default=[], help="dotted overrides, e.g. train.epochs=2")
    parser.add_argument("--dry-run", action="store_true", help="check the config and say what each stage "
                        "would do (the store: new, complete, grown or continued; every dictionary, a sweep's "
                        "expanded: skipped, replaced and why, or new; the resume state), doing none of it")
    return parser


def general_parser() -> argparse.ArgumentParser:
    """``actdict``'s own parser: the stage as its first argument; its help lists the stages and, in the
    epilog, the tools."""
    parser = argparse.ArgumentParser(prog="actdict", description=(__doc__ or "").split("\n")[0],  # -OO: None
                                     epilog=_EPILOG)
    parser.add_argument("stage", choices=[*_STAGES, "run"], help="stage to run; 'run' = all three "
                        "(actdict STAGE --help: its own usage)")
    return _run_arguments(parser)


def stage_parser(stage: str) -> argparse.ArgumentParser:
    """The parser of ``actdict STAGE`` (its arguments after the stage), so that ``actdict harvest --help``
    says what that stage does, not the general help."""
    return _run_arguments(argparse.ArgumentParser(prog=f"actdict {stage}", description=_STAGE_HELP[stage]))


def _main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in _TOOLS:  # tools with their own arguments (see the module doc)
        return importlib.import_module(_TOOLS[argv[0]]).main(argv[1:])  # a closed pipe: main's 141
    if argv and argv[0] in _STAGE_HELP:  # `actdict harvest --help`: that stage's own usage
        args = stage_parser(argv[0]).parse_intermixed_args(argv[1:])
        args.stage = argv[0]
    else:  # `actdict --help`, `actdict --dry-run run CONFIG`, a misspelt stage
        args = general_parser().parse_intermixed_args(argv)
    try:
        data = load_experiment(args.config, args.overrides)
        stages = list(_STAGES) if args.stage == "run" else [args.stage]
        if args.stage == "run" and "harvest" not in data:
            stages.remove("harvest")  # bring-your-own-vectors experiments have no harvest section
        elif args.stage == "harvest" and "harvest" not in data:
            raise ConfigError(f"{args.config} has no harvest section: nothing to harvest (its store is "
                              "used as it is by train and analyze)")
        prepared = {stage: prepare(stage, data) for stage in stages}
        extra: dict[str, dict] = {}
        if args.stage == "run":
            check_run(data, {stage: cfg for stage, (cfg, _) in prepared.items()})
        if args.dry_run:
            said, stops = dry_run(data, {stage: cfg for stage, (cfg, _) in prepared.items()})
            if rank() == 0:  # under torchrun: once, as the stages say what they do
                print("\n".join(said))
            return 2 if stops else 0  # as the command would end: `--dry-run && actdict run` goes no further
        if args.stage == "run":
            if "harvest" in prepared and (hook := prepared["train"][0].hook):  # once the model named them
                extra["harvest"] = {"on_hooks": lambda hooks: check_train_hook(hooks, hook)}
        with output_dropped_when_closed() as dropped:  # a reader gone (`| tee log` killed) costs no run
            for stage, (_, go) in prepared.items():
                go(**extra.get(stage, {}))
    except ActdictError as e:  # ConfigError included
        return print_error("actdict", e)
    except KeyboardInterrupt as e:
        return interrupted(e, "completed shards and checkpoints are kept")
    return 141 if dropped() else 0  # done, its lines not all read: as `| head` says


def _log_line(text: str) -> None:
    """One line of ``actdict.runlog`` (safe on a terminal as runlog makes it: ``runlog.one_line``) on stdout,
    what its encoding lacks (a path's 'Ω' on Windows' cp1252) written as escapes ('\\u03a9'), as the
    command's own lines are (``tolerant_stdout``, which is not set up yet for the first line nor still for
    the last); none where stdout cannot take it (a reader gone, a full disk): the run's own lines matter
    more."""
    try:
        encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
        print(text.encode(encoding, "backslashreplace").decode(encoding))
    except (OSError, ValueError, UnicodeError, LookupError):
        pass


def entry() -> None:
    """The ``actdict`` command (and ``python -m actdict.cli``): ``main`` as the process, its status the exit
    status, a stdout silenced for a reader gone kept silenced (its flush at exit quiet). Once main has
    returned (or argparse ended it: --help, a usage error), its work is done and said: what is left is the
    interpreter's shutdown (threads joined, atexit handlers), where Ctrl-C printed Python's 'Exception ignored
    ... KeyboardInterrupt' and the shutdown went on. Ctrl-C there now ends the process at once, quietly, with
    that status (stdout and stderr flushed first). A SIGINT the process was started ignoring (``nohup``, a
    background job) stays ignored. Its stdout is written a line at a time (``line_buffered_stdout``): a log
    file keeps every line printed before a SIGKILL, in order with the progress bars' lines on stderr. A stage
    command whose stdout is a file or a pipe (a log) prints a first and a last line: what ran, where and
    when, and how it ended (``actdict.runlog``), also after an unexpected error's traceback (status 1). A
    stdout or stderr it was started without (``2>&-``) is /dev/null (``closed_output_on_devnull``)."""
    closed_output_on_devnull()  # `2>&-`: the stage runs to its end, its lines on stderr dropped
    line_buffered_stdout()
    argv, started = sys.argv[1:], time.time()
    logs = runlog.logged(argv) and rank() == 0
    if logs:
        _log_line(runlog.header(argv, started))
    try:
        status = _printing(None)  # not main: a stdout silenced for a reader gone stays so until the exit
    except SystemExit as e:
        status = e.code
    except Exception:  # a bug's traceback: a log's last line is still how it ended (1, as Python exits)
        if not logs:
            raise
        sys.excepthook(*sys.exc_info())
        status = 1
    code = status if isinstance(status, int) else int(status is not None)  # sys.exit('text'): 1
    if logs:
        _log_line(runlog.footer(argv, code, started, time.time()))
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # closed, a reader gone, or None (started closed:
            pass  # `actdict ... >&-`, whose flush was an AttributeError traceback and status 1)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, lambda *_: os._exit(code))
    sys.exit(status)


if __name__ == "__main__":
    entry()
