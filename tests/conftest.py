"""Test-wide settings: never touch the network (the hub is unreachable here anyway), and one intra-op thread.

One thread (here and in every subprocess a test starts, which inherits the environment) makes float results
independent of the machine's core count: byte-identity tests compare runs that must reduce in the same order,
and tiny tensors run faster without thread hand-offs."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402  (after the environment above: torch reads it when it loads)
import torch  # noqa: E402

# shared test helpers with asserts of their own: rewritten, so that a failing one shows its values as a
# test file's assert does (pytest rewrites only test_*.py and conftest.py by itself)
pytest.register_assert_rewrite("tests.vectors_helpers")


@pytest.fixture(scope="session")
def device() -> str:
    """The accelerator the device tests check against the CPU: ``ACTDICT_TEST_DEVICE`` if set, else
    ``cuda`` where there is one, else ``cpu``. On a CPU-only machine (CI) those tests then compare the CPU
    with itself: they still run end to end, so they work when a session has a GPU
    (``benchmarks/gpu_session.sh`` runs them there)."""
    return os.environ.get("ACTDICT_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk(under="")``: from now on a file opened for writing under ``under`` (anywhere when empty)
    is made, then refused with ENOSPC, as on a disk that filled; through builtins.open, io.open
    (Path.write_text's) and actdict.files."""
    import builtins
    import errno
    import os

    from actdict import files

    real_open = builtins.open

    def cover(under: str = "") -> None:
        def full(path, mode="r", *a, **k):
            if str(path).startswith(under) and ("w" in mode or "x" in mode):
                real_open(path, mode, *a, **k).close()  # made, then the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_open(path, mode, *a, **k)

        monkeypatch.setattr("builtins.open", full)
        monkeypatch.setattr("io.open", full)
        monkeypatch.setattr(files, "open", full, raising=False)

    return cover


@pytest.fixture
def read_only(monkeypatch):
    """``read_only(suffix)``: folders whose path ends with ``suffix`` refuse new files to
    ``actdict.lock.check_writable`` and are not writable to ``os.access`` (the dry runs'
    ``lock.write_problem``), as a folder chmod'ed a-w does for a user without root's override (these tests
    run as root too)."""
    import errno
    import os

    from actdict import lock

    real, real_access = lock.tempfile.mkstemp, os.access

    def refuse(suffix: str) -> None:
        def mkstemp(dir, prefix):
            if str(dir).endswith(suffix):
                raise PermissionError(errno.EACCES, "Permission denied")
            return real(dir=dir, prefix=prefix)

        def access(path, mode, **kw):
            return not (str(path).endswith(suffix) and mode & os.W_OK) and real_access(path, mode, **kw)

        monkeypatch.setattr(lock.tempfile, "mkstemp", mkstemp)
        monkeypatch.setattr(os, "access", access)

    return refuse


@pytest.fixture
def stop_training(monkeypatch):
    """``stop_training(common, cfg, step)``: the train stage run as a SIGTERM during step ``step`` stops it:
    it finishes that step, saves its resume state and raises "stopped at step {step}" (checked here)."""
    import itertools
    from contextlib import contextmanager

    from actdict.errors import ActdictError
    from actdict.train import run

    def stopped(common, cfg, step: int) -> None:
        asked = itertools.count()  # the flag is asked once per step

        @contextmanager
        def sigterm_flag(sigint=False):
            yield lambda: next(asked) >= step - 1

        with monkeypatch.context() as m:
            m.setattr(run, "sigterm_flag", sigterm_flag)
            with pytest.raises(ActdictError, match=f"stopped at step {step}"):
                run.main(common, cfg)

    return stopped


@pytest.fixture(scope="session")
def lm(tmp_path_factory):
    """A random-init Pythia-70m-shaped causal LM, written to disk and loaded offline (``.path``: its folder);
    read, never changed, by the tests of the stages that load the store's model (splice, logit effects)."""
    from actdict.harvest.models import load_model
    from actdict.harvest.random_init import make_random_pythia

    path = make_random_pythia(tmp_path_factory.mktemp("pythia") / "rand", seed=0)
    model = load_model(str(path))
    model.path = path
    return model


@pytest.fixture
def lm_run(tmp_path):
    """``make(model, hook, d) -> tmp_path``: a run folder holding a 256-row store of ``model`` at ``hook``
    (random rows of width d, token ids, one document) and a split.json that holds out chunks 2 and 3."""
    import json

    import numpy as np

    from actdict.harvest.store import StoreWriter

    def make(model: str, hook: str, d: int):
        g = np.random.default_rng(1)
        n = 256
        with StoreWriter(str(tmp_path / "store"), {"hook": hook, "model": model}, d, "float32", 64, 64) as w:
            w.append(g.standard_normal((n, d)).astype(np.float32), g.integers(0, 50000, n), np.zeros(n),
                     np.arange(n))
        (tmp_path / "split.json").write_text(json.dumps({"train_chunks": [0, 1], "test_chunks": [2, 3]}))
        return tmp_path

    return make
