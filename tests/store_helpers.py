"""The small store (45 rows, d = 3, three shards) that the test_store_* files write and read."""

import numpy as np

from actdict.harvest.store import StoreWriter

N, D, SHARD, CHUNK = 45, 3, 16, 4  # 3 shards of 16, 16, 13 rows; chunks of 4 rows (the last ones short)
MANIFEST = {"model": "toy", "revision": "r1", "numerics": "float32 forward", "tokenizer": "toy-tok",
            "corpus": {"fixture": 1}, "config_hash": "abc"}


def _data(n=N, d=D, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, d)) * 10).astype(np.float32)  # [n, d]
    tok = rng.integers(0, 50000, n).astype(np.int32)  # [n]
    doc = np.repeat(np.arange(n // 5 + 1), 5)[:n].astype(np.int64) + 10**10  # [n] beyond int32 on purpose
    pos = np.tile(np.arange(5), n // 5 + 1)[:n].astype(np.int32)  # [n]
    return x, tok, doc, pos


def _write(path, hook="blocks.0.hook_resid_post", dtype="float32", pieces=(7, 20, 18), **kw):
    x, tok, doc, pos = _data()
    with StoreWriter(str(path), MANIFEST | {"hook": hook}, d=D, dtype=dtype, shard_rows=SHARD,
                     chunk_rows=CHUNK, **kw) as w:
        a = 0
        for p in pieces:  # uneven appends that straddle shard boundaries
            w.append(x[a:a + p], tok[a:a + p], doc[a:a + p], pos[a:a + p])
            a += p
    return x, tok, doc, pos
