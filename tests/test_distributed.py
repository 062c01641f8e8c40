"""Scale-out: ``torchrun --nproc-per-node 2 -m actdict.cli harvest CONFIG`` (2 CPU ranks, gloo) writes the
same store, byte for byte, as one process; each shard is written by exactly one rank, and each document is
tokenized by exactly one rank."""

import json
import os
import subprocess
import sys

import torch.multiprocessing as mp
from test_resume import HOOKS, tree, write_config, write_corpus

from actdict.config import common_of, load_experiment, section
from actdict.harvest.config import HarvestConfig
from actdict.harvest.dist import Ranks
from actdict.harvest.run import main
from actdict.harvest.store import open_store
from actdict.harvest.windows import tokenized


def test_two_ranks_write_the_same_store_as_one_process(tmp_path):
    corpus = write_corpus(tmp_path / "docs.jsonl", n_docs=60)
    cfg = write_config(tmp_path, str(tmp_path / "dist"), corpus, max_tokens=700)
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           "2", "-m", "actdict.cli", "harvest", str(cfg)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 ranks" in proc.stdout and proc.stdout.count("wrote 700 rows per hook") == 1  # rank 0 speaks

    data = load_experiment(cfg, [f"store={tmp_path / 'one'}"])
    main(common_of(data), section(data, "harvest", HarvestConfig))  # the same config, one process

    one, dist = tree(tmp_path / "one"), tree(tmp_path / "dist")
    assert sorted(one) == sorted(dist)
    assert [k for k in one if one[k] != dist[k]] == []
    for h in HOOKS:
        s = open_store(str(tmp_path / "dist"), h)
        s.verify()
        assert len(s) == 700 and s.num_shards == 11  # 10 shards of 64 rows + 60
        starts = [json.loads((tmp_path / "dist" / h / "shards" / f"{i:05d}" / "zarr.json").read_text())
                  ["attributes"]["actdict_done"]["start"]["row"] for i in range(s.num_shards)]
        assert all(r <= 64 * i < r + 16 for i, r in enumerate(starts))  # a shard starts in its first window



TEXTS = [f"doc {i} " * (i % 5) for i in range(19)]  # lengths vary; 4 are empty


class _RecordingTokenizer:
    """A slow tokenizer's interface (no Rust backend): ids = character codes; remembers what it saw."""

    def __init__(self):
        self.seen = []

    def __call__(self, batch, add_special_tokens, verbose):
        self.seen += batch
        return {"input_ids": [[ord(c) for c in t] for t in batch]}


def _tokenize_as_rank(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    ranks = Ranks(rank=rank, world=2, tokens_group=dist.new_group(backend="gloo"))
    tok = _RecordingTokenizer()
    ids = [[int(i) for i in x] for x in tokenized(tok, TEXTS, group=3, ranks=ranks)]
    with open(f"{out}/{rank}.json", "w") as f:
        json.dump({"ids": ids, "seen": tok.seen}, f)
    dist.destroy_process_group()


def test_ranks_tokenize_disjoint_shares_and_all_see_every_document(tmp_path):
    mp.spawn(_tokenize_as_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    got = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    want = [[ord(c) for c in t] for t in TEXTS]
    assert got[0]["ids"] == want and got[1]["ids"] == want  # in order, on every rank
    # rounds of 6 texts, 3 per rank; the last round has one text: rank 0 tokenizes it, rank 1 nothing
    assert len(got[0]["seen"]) == 10 and len(got[1]["seen"]) == 9
    assert sorted(got[0]["seen"] + got[1]["seen"]) == sorted(TEXTS)
    assert got[0]["seen"][:3] == TEXTS[:3] and got[1]["seen"][:3] == TEXTS[3:6]
