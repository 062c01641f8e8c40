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
    ``random``'s and numpy's global state are as they were on the way in. A CUDA not yet in use on the way
    in and still not on the way out gets back the seeding torch queued for its first use (``_queued_seeds``:
    the caller's ``torch.manual_seed``, or none); one first used inside keeps the stage's seeding."""
    import torch

    gpu = torch.cuda.is_available()
    cuda = gpu and torch.cuda.is_initialized()
    queued = _queued_seeds(torch) if gpu and not cuda else None
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
        if queued is not None and not torch.cuda.is_initialized():
            tracker = torch.cuda._lazy_seed_tracker
            tracker.manual_seed_all_cb, tracker.manual_seed_cb, tracker.call_order = queued
        if mps is not None:
            torch.mps.set_rng_state(mps)
        np.random.set_state(nps)
        random.setstate(py)


def _queued_seeds(torch) -> tuple | None:
    """The seeding torch holds for a CUDA not yet initialised (``torch.manual_seed`` there queues a
    ``manual_seed_all`` for CUDA's first use; only the latest is kept): a stage on the CPU of a machine
    with a GPU replaced the caller's with its own, which the caller's first CUDA draw would then use. A
    private part of torch (``torch.cuda._lazy_seed_tracker``): None where it is not as read here."""
    tracker = getattr(torch.cuda, "_lazy_seed_tracker", None)
    fields = ("manual_seed_all_cb", "manual_seed_cb", "call_order")
    if tracker is None or not all(hasattr(tracker, f) for f in fields):
        return None
    return tracker.manual_seed_all_cb, tracker.manual_seed_cb, list(tracker.call_order)
