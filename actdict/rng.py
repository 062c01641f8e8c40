"""The caller's random generators, kept across a stage.

A stage seeds the process-wide generators it draws from (torch's default generator, Python's ``random`` and
numpy's legacy global one: the harvest's model and corpus, the training's per-step noise, the analysis' one
stochastic sample), so that its numbers depend on the experiment's seed alone. Called from a notebook or a
script, it must not leave those generators seeded behind it: the caller's next ``torch.rand`` would repeat
from the experiment's seed. ``kept_rng`` restores them when the stage returns or raises; the stage's own
draws, and so its numbers, are those it always made (a local ``torch.Generator`` would not do: the
variants' ``randn_like`` and a model's dropout draw from the default generator)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np


@contextmanager
def kept_rng() -> Iterator[None]:
    """While inside, the stage seeds and draws as it likes; on the way out (a return or an exception) torch's
    CPU generator, the CUDA generators (where CUDA was in use on the way in), the MPS one (a torch built
    with MPS, as macOS' are: ``torch.manual_seed`` seeds it there whatever the stage's device),
    ``random``'s and numpy's global state are as they were on the way in. A CUDA first used inside keeps
    the stage's seeding (there was no caller's state to keep)."""
    import torch

    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    py, nps = random.getstate(), np.random.get_state()
    cpu = torch.get_rng_state()
    gpus = torch.cuda.get_rng_state_all() if cuda else None
    mps = torch.mps.get_rng_state() if torch.backends.mps.is_built() else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if gpus is not None:
            torch.cuda.set_rng_state_all(gpus)
        if mps is not None:
            torch.mps.set_rng_state(mps)
        np.random.set_state(nps)
        random.setstate(py)
