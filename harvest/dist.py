"""The ranks of a harvest run under ``torchrun`` (torch.distributed, gloo): who am I, and barriers.

``torchrun --nproc-per-node N -m actdict.cli harvest CONFIG`` starts N copies; each reads RANK /
WORLD_SIZE / LOCAL_RANK from the environment torchrun sets. Without torchrun the harvest is rank 0 of 1
and nothing is initialised. The work split itself is a pure function (``actdict.harvest.plan.owner``);
what is exchanged (gloo, for CPU and GPU ranks alike) is barriers and the token ids of the documents
(each rank tokenises its part of every round of documents, :meth:`Ranks.share` gives every rank all of
them). The tokenising thread has a process group of its own: two threads never share a group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np

from actdict.signals import checked_rank, world_size

BARRIER_TIMEOUT = timedelta(hours=12)  # ranks finish their last shard at different times


@dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # we initialised the process group (and destroy it)
    tokens_group: Any = None  # the gloo group of the tokenising thread (``share``)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def share(self, mine: list[Sequence[int]]) -> list[np.ndarray]:
        """Every rank's token-id lists in rank order (a collective: every rank calls it, each with its own
        part; parts may differ in length and be empty). Only under torchrun (``windows.tokenized``)."""
        import torch
        import torch.distributed as dist

        lens = np.array([len(x) for x in mine], np.int64)  # [n]
        sizes = [torch.zeros(2, dtype=torch.int64) for _ in range(self.world)]  # (n lists, n ids) per rank
        dist.all_gather(sizes, torch.tensor([len(lens), lens.sum()]), group=self.tokens_group)
        n_max, t_max = (max(int(s[i]) for s in sizes) for i in (0, 1))
        flat = np.zeros(n_max + t_max, np.int64)  # [n_max + t_max] lengths, then the ids, zero-padded
        flat[:len(lens)] = lens
        if len(mine):
            flat[n_max:n_max + lens.sum()] = np.concatenate([np.asarray(x, np.int64) for x in mine])
        parts = [torch.zeros(n_max + t_max, dtype=torch.int64) for _ in range(self.world)]
        dist.all_gather(parts, torch.from_numpy(flat), group=self.tokens_group)
        out: list[np.ndarray] = []
        for (n, t), part in zip(sizes, parts, strict=True):
            p = part.numpy()
            out += np.split(p[n_max:n_max + int(t)], np.cumsum(p[:int(n)])[:-1]) if int(n) else []
        return out

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owns_group = False


def init_ranks() -> Ranks:
    """This process' rank (from torchrun's environment; 0 of 1 without it). A RANK / LOCAL_RANK that is no
    rank number: a ConfigError (``signals.checked_rank``) before torch's rendezvous reads it."""
    if world_size() <= 1:
        return Ranks()
    import torch.distributed as dist

    checked_rank("RANK")  # before torch's rendezvous reads it
    local_rank = checked_rank("LOCAL_RANK")
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    return Ranks(rank=dist.get_rank(), world=dist.get_world_size(),
                 local_rank=local_rank, owns_group=owns,
                 tokens_group=dist.new_group(backend="gloo", timeout=BARRIER_TIMEOUT))


def rank_device(device: str, ranks: Ranks) -> str:
    """``auto`` on a multi-GPU run: this rank's own GPU (cuda:LOCAL_RANK)."""
    if device == "auto" and ranks.world > 1:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{ranks.local_rank % torch.cuda.device_count()}"
    return device
