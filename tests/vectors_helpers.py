"""The vectors, store check and vectors config that the test_vectors_* files share."""

from pathlib import Path

import numpy as np

N, D = 45, 6
SMALL = {"shard_rows": 16, "chunk_rows": 8}  # several shards, a short last shard


def _x(seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal((N, D)).astype(dtype)  # [N, D]


def _check_store(s, x):
    rows = s.read_rows(0, len(s))
    assert len(s) == len(x) and s.d == x.shape[1] and s.num_shards == 3
    np.testing.assert_array_equal(rows.acts, x.astype(np.float32))  # exact: stored float32
    np.testing.assert_array_equal(rows.doc, np.arange(len(x)))
    assert (rows.token_ids == -1).all() and (rows.pos == 0).all()
    s.verify()


def _vectors_config(tmp_path: Path) -> Path:
    """A config importing ``tmp_path/v.npy`` (written: ``_x(1)``) as ``harvest.mode: vectors`` into
    ``tmp_path/run/store`` (float32, shards of 16 rows, chunks of 8)."""
    np.save(tmp_path / "v.npy", _x(1))
    cfg = tmp_path / "v.yaml"
    cfg.write_text(f"""
run_dir: {tmp_path / 'run'}
harvest: {{mode: vectors, vectors: {{path: {tmp_path / 'v.npy'}}}, store_dtype: float32, shard_rows: 16,
          chunk_rows: 8}}
""")
    return cfg
