"""The 1,000-row store that the test_train_* files share (row i has x[:, 0] == i)."""

import numpy as np
import pytest

from actdict.harvest.store import write_vectors


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """1000 rows, d = 3, chunks of 64 rows (the last one short): row i has x[:, 0] == i."""
    x = np.random.default_rng(0).standard_normal((1000, 3)).astype(np.float32)
    x[:, 0] = np.arange(1000)
    return write_vectors(str(tmp_path_factory.mktemp("s") / "store"), x, shard_rows=256, chunk_rows=64)
