"""The hypothesis settings and the store data that the test_properties_* files share.

Small example counts (``FEW``/``SOME``) keep each file's run short on one core. The examples are the
same on every run (``derandomize``: CI passes or fails on the code, not on the draw); to explore further,
``ACTDICT_EXPLORE=N`` draws N fresh random examples per test."""

import os

import numpy as np
from hypothesis import HealthCheck, settings

from actdict.harvest.store import StoreWriter, open_store

EXPLORE = int(os.environ.get("ACTDICT_EXPLORE", 0))  # > 0: that many random examples per test
_ALL = {"deadline": None, "database": None, "suppress_health_check": [HealthCheck.too_slow],
        "derandomize": not EXPLORE}
FEW = settings(max_examples=EXPLORE or 30, **_ALL)
SOME = settings(max_examples=EXPLORE or 60, **_ALL)
MANIFEST = {"model": "toy", "hook": "h", "config_hash": "x"}
SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # tmpfs: a shard's fsync costs nothing


def _store_data(n, d, seed, doc_runs=None):
    """Acts [n, d] (some all-zero rows, else |x| >= 0.05: within float16's normal range), token ids unique
    per row, doc/pos as documents of random lengths (or ``doc_runs``)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) * 10.0 ** rng.integers(-1, 3)
    x += np.where(x < 0, -0.05, 0.05)
    x[rng.random(n) < 0.1] = 0.0
    tok = (np.arange(n) * 7 + 1000).astype(np.int32)
    lens = doc_runs if doc_runs is not None else rng.integers(1, 8, n)
    doc = np.repeat(np.arange(len(lens)), lens)[:n].astype(np.int64)
    pos = np.concatenate([np.arange(m) for m in lens])[:n].astype(np.int32)
    return x, tok, doc, pos


def _write_store(path, x, tok, doc, pos, dtype, chunk, shard, pieces):
    with StoreWriter(path, MANIFEST, d=x.shape[1], dtype=dtype, shard_rows=shard, chunk_rows=chunk) as w:
        a = 0
        for p in pieces:
            w.append(x[a:a + p], tok[a:a + p], doc[a:a + p], pos[a:a + p])
            a += p
    return open_store(path, "h")
