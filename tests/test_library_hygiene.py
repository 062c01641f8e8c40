"""The stages called from Python (a notebook, a script: pytest's process is such a host) leave the process as
they found it: its random generators, and, through ``actdict.cli.main``, its warning format, stdout and
torch's thread count, whether the call returns or raises."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from actdict.analyze.config import AnalyzeConfig
from actdict.config import Common, build
from actdict.harvest.config import HarvestConfig
from actdict.train.config import DictConfig, TrainConfig
from tests import train_store

store = train_store.store  # a fixture: the tests below take it as an argument
TEXTS = Path(__file__).parent / "data" / "texts"


def seeded_state() -> tuple:
    """Seed the caller's generators with its own seed; their states then (torch's, random's, numpy's)."""
    torch.manual_seed(1234)
    random.seed(1234)
    np.random.seed(1234)
    return torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()


def assert_state(before: tuple) -> None:
    assert torch.equal(torch.get_rng_state(), before[0]), "torch's default generator was reseeded"
    assert random.getstate() == before[1], "random's global generator was reseeded"
    assert np.array_equal(np.random.get_state()[1], before[2]), "numpy's global generator was reseeded"


def _train(store, run_dir: Path, epochs: int = 1) -> tuple[Common, TrainConfig]:
    from actdict.train.run import main

    common = Common(run_dir=str(run_dir), seed=3, store=store.path)
    cfg = TrainConfig(dicts=[DictConfig("v", "vaease", k=4, lr=0.01, params={"loggamma_init": 0.0})],
                      epochs=epochs, batch_size=100, test_fraction=0.2, device="cpu")
    main(common, cfg)
    return common, cfg


def first_cuda_seed(monkeypatch) -> int:
    """The seed CUDA's generator would have at its first use: torch.cuda._lazy_init runs the calls torch
    queued for it (torch.manual_seed before CUDA is used), here on a stand-in generator."""
    gpu = torch.Generator()
    monkeypatch.setattr(torch.cuda.random, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "default_generators", (gpu,))
    for call in torch.cuda._lazy_seed_tracker.get_calls():
        if call:
            call[0]()
    return gpu.initial_seed()


def test_training_and_analysis_leave_the_callers_generators_as_they_were(store, tmp_path):
    """The training seeds torch's generator at every step and the analysis for its one stochastic sample; the
    caller's next draw is the one it would have made without them, and a second call gives the same
    numbers as the first (the stage's own seeding is unchanged)."""
    from actdict.analyze.run import main as analyze

    before = seeded_state()
    common, _ = _train(store, tmp_path / "a")
    assert_state(before)
    analyze(common, AnalyzeConfig(device="cpu", n_features=2, top_k=2, context=1))
    assert_state(before)
    _train(store, tmp_path / "b")  # in the same process, after the caller's draws
    torch.rand(5)
    analyze(Common(run_dir=str(tmp_path / "b"), seed=3, store=store.path),
            AnalyzeConfig(device="cpu", n_features=2, top_k=2, context=1))
    a, b = (json.loads((tmp_path / r / "summary.json").read_text())["models"]["v"] for r in "ab")
    assert a["re_sample"] == b["re_sample"] and a["re_det"] == b["re_det"] and a["ad"] == b["ad"]


def test_a_stage_that_raises_leaves_the_callers_generators_as_they_were(store, tmp_path, monkeypatch):
    """A training stopped by an error after it seeded (here: in its first save) restores them too."""
    from actdict.train import run

    def fail(*a, **k):
        raise OSError("disk gone")

    monkeypatch.setattr(run, "save_all", fail)
    before = seeded_state()
    with pytest.raises(OSError, match="disk gone"):
        _train(store, tmp_path / "run")
    assert_state(before)


def test_a_harvest_leaves_the_callers_generators_as_they_were(tmp_path):
    """The token harvest seeds torch, random and numpy (its model and corpus); not the caller's, after."""
    from actdict.harvest.run import main

    cfg = build(HarvestConfig, {"source": {"kind": "files", "path": str(TEXTS)}, "chunk_rows": 32,
                                "shard_rows": 64, "max_tokens": 64, "device": "cpu", "ctx": 16,
                                "batch_size": 3})
    before = seeded_state()
    main(Common(run_dir=str(tmp_path / "run")), cfg)
    assert (tmp_path / "run" / "store").is_dir()
    assert_state(before)


def test_a_harvest_gives_back_the_mps_generator_where_torch_has_mps(tmp_path, monkeypatch):
    """A torch built with MPS (macOS') seeds the MPS generator in every ``torch.manual_seed``, the harvest's
    included, whatever its device: simulated here by a stand-in generator, the caller's state comes back."""
    from actdict.harvest.run import main

    mps = {"state": torch.tensor([7, 7, 7], dtype=torch.uint8)}  # the caller's MPS generator
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: True)
    monkeypatch.setattr(torch.mps, "manual_seed", lambda s: mps.update(state=torch.tensor([int(s)] * 3)))
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda device="mps": mps["state"].clone())
    monkeypatch.setattr(torch.mps, "set_rng_state", lambda st, device="mps": mps.update(state=st.clone()))
    cfg = build(HarvestConfig, {"source": {"kind": "files", "path": str(TEXTS)}, "chunk_rows": 32,
                                "shard_rows": 64, "max_tokens": 64, "device": "cpu", "ctx": 16,
                                "batch_size": 3})
    main(Common(run_dir=str(tmp_path / "run"), seed=5), cfg)
    assert (tmp_path / "run" / "store").is_dir()
    assert mps["state"].tolist() == [7, 7, 7]


def test_a_stage_on_the_cpu_gives_back_the_seed_queued_for_cuda(tmp_path, monkeypatch):
    """On a machine with a GPU that no one has used yet, torch.manual_seed queues CUDA's seeding for its
    first use; a harvest on the CPU (seed 5) replaced the caller's queued seed (1234), so the caller's first
    CUDA draw came from the experiment's seed. Simulated: a CUDA said available, never initialised, and
    what its initialisation would run (the queued calls) run on a stand-in generator."""
    from actdict.harvest.run import main

    monkeypatch.setattr(torch.cuda, "_lazy_seed_tracker", type(torch.cuda._lazy_seed_tracker)())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    torch.manual_seed(1234)  # the caller's, queued for CUDA
    cfg = build(HarvestConfig, {"source": {"kind": "files", "path": str(TEXTS)}, "chunk_rows": 32,
                                "shard_rows": 64, "max_tokens": 64, "device": "cpu", "ctx": 16,
                                "batch_size": 3})
    main(Common(run_dir=str(tmp_path / "run"), seed=5), cfg)
    assert not torch.cuda.is_initialized()
    assert first_cuda_seed(monkeypatch) == 1234


def test_building_a_dictionary_gives_back_the_mps_and_queued_cuda_seeding(monkeypatch):
    """``protocol.make`` (``checkpoint.load``'s build, and the training's) seeds with torch.manual_seed, which
    also seeds the MPS generator (a torch built with MPS) and queues CUDA's seeding (a GPU not yet used);
    torch.random.fork_rng(devices=[]) gave back the CPU's only. Simulated as in the tests above: both are
    the caller's after the build, and the build's weights are those of the seed."""
    from actdict.train.protocol import make

    mps = {"state": torch.tensor([7, 7, 7], dtype=torch.uint8)}
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: True)
    monkeypatch.setattr(torch.mps, "manual_seed", lambda s: mps.update(state=torch.tensor([int(s)] * 3)))
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda device="mps": mps["state"].clone())
    monkeypatch.setattr(torch.mps, "set_rng_state", lambda st, device="mps": mps.update(state=st.clone()))
    monkeypatch.setattr(torch.cuda, "_lazy_seed_tracker", type(torch.cuda._lazy_seed_tracker)())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    before = seeded_state()  # torch.manual_seed(1234): the MPS stand-in's state [1234] * 3, CUDA's queued
    a, b = make("sae_l1", 7, 4, seed=3), make("sae_l1", 7, 4, seed=3)
    assert all(torch.equal(v, b.state_dict()[n]) for n, v in a.state_dict().items())
    assert_state(before)
    assert mps["state"].tolist() == [1234] * 3
    assert first_cuda_seed(monkeypatch) == 1234


def test_the_variants_contract_check_leaves_the_callers_generators_as_they_were(capsys):
    """``actdict variants --check`` seeds torch's generator for its training check (torch.manual_seed(0))
    and draws from it in a sampled forward; called from Python, the caller's next draw is its own."""
    from actdict.cli import main

    before = seeded_state()
    assert main(["variants", "--check", "vaease"]) == 0
    lines = capsys.readouterr().out.splitlines()
    checks = ["shapes", "loss", "gradients", "round_trip", "training"]
    assert [line.split()[0] for line in lines[1:]] == checks
    assert all(line.split()[1] == "ok" for line in lines[1:])
    assert_state(before)


def test_the_command_called_from_python_gives_back_threads_warning_format_and_stdout(store, tmp_path,
                                                                                     monkeypatch):
    """``actdict.cli.main`` sets torch's threads (``threads``), the one-line warning format and a stdout that
    escapes what its encoding lacks for the command; after it, returning 0 or 2, the caller has its own."""
    import io
    import sys
    import warnings

    from actdict.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\nstore: {store.path}\nthreads: 2\nseed: 3\ntrain:\n"
                   "  epochs: 1\n  batch_size: 100\n  device: cpu\n"
                   "  dicts: [{name: s, variant: sae_l1, k: 4}]\n")
    out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")  # Windows' cp1252 stdout, as a pipe
    monkeypatch.setattr(sys, "stdout", out)
    shown, threads = warnings.formatwarning, torch.get_num_threads()
    assert threads != 2
    assert main(["train", str(cfg)]) == 0
    assert (tmp_path / "run" / "dicts" / "s" / "cfg.json").is_file()
    assert (torch.get_num_threads(), warnings.formatwarning, out.errors) == (threads, shown, "strict")
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert (torch.get_num_threads(), warnings.formatwarning, out.errors) == (threads, shown, "strict")


def test_the_command_called_with_stderr_none_runs_to_its_end_and_gives_none_back(store, tmp_path,
                                                                                 monkeypatch):
    """Called from pythonw (sys.stderr None), ``actdict.cli.main`` stopped at the progress bar's first look
    at stderr (``bar_timing``'s isatty): an AttributeError out of the call, nothing trained. Its stderr is
    /dev/null meanwhile, as the command's is when started with stderr closed: the dictionary trains, the
    stage's lines are stdout's, a config error's line goes nowhere (status 2, not on stdout); the caller's
    stderr is None again after."""
    import io
    import sys

    from actdict.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\nstore: {store.path}\nseed: 3\ntrain:\n"
                   "  epochs: 1\n  batch_size: 100\n  device: cpu\n"
                   "  dicts: [{name: s, variant: sae_l1, k: 4}]\n")
    monkeypatch.setattr(sys, "stdout", out := io.StringIO())
    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # the bar drawn: its stderr looked at
    monkeypatch.setattr(sys, "stderr", None)
    assert main(["train", str(cfg)]) == 0
    assert sys.stderr is None
    assert json.loads((tmp_path / "run" / "dicts" / "s" / "cfg.json").read_text())["steps"] == 9
    said = out.getvalue().splitlines()
    saved = [line for line in said if line.startswith("train: saved ")]
    dict_dir = tmp_path / "run" / "dicts" / "s"
    assert len(saved) == 1 and saved[0].startswith(f"train: saved {dict_dir} (epoch 1, the last: ")
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert sys.stderr is None and out.getvalue().splitlines() == said


def test_tqdm_disable_set_after_tqdm_was_imported_turns_every_stages_bar_off(store, tmp_path, capsys,
                                                                            monkeypatch):
    """A notebook sets ``os.environ["TQDM_DISABLE"] = "1"`` long after tqdm was imported (tqdm reads it
    once, at its import, and never for a bar given ``disable``: the harvest's and the training's): no
    stage then draws a bar; the stages' own lines are printed as before. '0' leaves the bars on."""
    import tqdm  # noqa: F401  (imported before the variable is set, as in a notebook)

    from actdict.analyze.run import main as analyze
    from actdict.harvest.run import main as harvest

    hcfg = build(HarvestConfig, {"source": {"kind": "files", "path": str(TEXTS)}, "chunk_rows": 32,
                                 "shard_rows": 64, "max_tokens": 64, "device": "cpu", "ctx": 16,
                                 "batch_size": 3})
    monkeypatch.setenv("TQDM_DISABLE", "0")
    _train(store, tmp_path / "on")
    assert "step/s" in capsys.readouterr().err
    monkeypatch.setenv("TQDM_DISABLE", "1")
    harvest(Common(run_dir=str(tmp_path / "h")), hcfg)
    common, _ = _train(store, tmp_path / "run")
    analyze(common, AnalyzeConfig(device="cpu", n_features=2, top_k=2, context=1))
    out, err = capsys.readouterr()
    assert "harvest: wrote 64 rows" in out and "train: saved" in out and "analyze: wrote" in out
    assert not [line for line in err.splitlines() if "%|" in line], err


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="the umask is read from /proc (Linux)")
def test_a_checkpoint_follows_the_umask_the_caller_set_after_the_import(tmp_path):
    """A notebook that imported actdict, then set ``os.umask(0o077)`` (private files), gets checkpoint
    weights of mode 600, not those of the umask at import."""
    import os

    from actdict.train.checkpoint import WEIGHTS, save
    from actdict.train.protocol import make

    old = os.umask(0o077)
    try:
        save(tmp_path / "d", make("sae_l1", 3, 4, seed=0), {})
    finally:
        os.umask(old)
    assert (tmp_path / "d" / WEIGHTS).stat().st_mode & 0o777 == 0o600


def process_state() -> tuple:
    """What a stage must give back: the signal handlers, open files, actdict's threads (zarr's loop and
    tqdm's monitor live for the process, by their design), grad mode, default dtype, working directory."""
    import os
    import signal
    import threading

    ours = sorted(t.name for t in threading.enumerate()
                  if not t.name.startswith(("zarr", "asyncio", "tqdm_monitor")))
    return (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT),
            sorted(os.listdir("/proc/self/fd")), ours, torch.is_grad_enabled(), torch.get_default_dtype(),
            os.getcwd())


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="open files are counted in /proc (Linux)")
def test_a_stage_stopped_part_way_gives_back_handlers_files_threads_and_locks(store, tmp_path, monkeypatch):
    """Ctrl-C in the fifth step of a training (its SIGINT handler set, its reader threads and locks held),
    and an analysis whose report cannot be written: each leaves the process as it found it, and the next
    call in the same process takes the locks and finishes."""
    from actdict.analyze import run as analyze
    from actdict.train import loop

    common, _ = _train(store, tmp_path / "warm")  # imports done, zarr's loop started
    before, real, steps = process_state(), loop.seed_step, []

    def interrupt(s, device):
        steps.append(s)
        if len(steps) == 5:
            raise KeyboardInterrupt
        real(s, device)

    monkeypatch.setattr(loop, "seed_step", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _train(store, tmp_path / "run", epochs=3)
    assert process_state() == before
    monkeypatch.setattr(loop, "seed_step", real)
    common, _ = _train(store, tmp_path / "run", epochs=3)  # the run folder's lock was released
    monkeypatch.setattr(analyze, "write_report", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        analyze.main(common, AnalyzeConfig(device="cpu", n_features=2, top_k=2, context=1))
    assert process_state() == before
    monkeypatch.undo()
    analyze.main(common, AnalyzeConfig(device="cpu", n_features=2, top_k=2, context=1))
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["models"]["v"]["k"] == 4
    assert process_state() == before
