"""Data-parallel training under ``torchrun``: each rank takes a contiguous slice of every global batch,
gradients are averaged across ranks (weighted by rows: the gradient of the global-batch mean), rank 0 writes.
Every rank reads the same chunks (a global batch mixes rows of every chunk in the buffer).

Variants whose step depends on batch-level statistics reduce them here, so that every rank holds what one
process would on the whole batch: dead-latent counts (``DeadTracker``: fired = OR over ranks, rows summed)
and BatchTopK's selection (the top k*B of the global batch, ``global_kth_largest``) and threshold. Random
noise (the VAEs' reparameterisation) is drawn for the whole global batch from a stream every rank seeds alike,
and each rank keeps its rows (``noise_like``): the ranks together draw exactly what one process draws.
Penalties of batch means (sae_kl, lse's batch variance and correlation, TopK+AuxK's spread) use the global
batch's (``batch_mean``, ``global_mean``).

Gradients are all-reduced by hand, one flat buffer per dictionary per step, instead of wrapping the models in
DistributedDataParallel: the loop calls ``model.loss_terms`` outside ``forward`` and a variant may leave some
parameter without a gradient on a step, both of which DDP's hooks handle badly. A parameter keeps
``grad=None`` only if it has no gradient on every rank.

The process group waits up to ``WAIT`` (1 hour; torch's default is 10 minutes for NCCL, 30 for gloo) in a
collective: at a save point the other ranks wait at a barrier while rank 0 writes the resume state, and at
the end every dictionary's checkpoint and kept state, gigabytes for a wide sweep, slow on a network file
system.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from actdict.signals import checked_rank, world_size

WAIT = timedelta(hours=1)  # the longest a rank waits in a collective (module doc)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def on(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def from_env() -> Dist:
    """The rank / world size torchrun sets (WORLD_SIZE, RANK, LOCAL_RANK); a single process otherwise (a
    WORLD_SIZE unset, 1, blank or not a number: ``signals.world_size``). A RANK / LOCAL_RANK that is no rank
    number: a ConfigError (``signals.checked_rank``)."""
    world = world_size()
    if world <= 1:
        return Dist()
    return Dist(checked_rank("RANK"), world, checked_rank("LOCAL_RANK"))


def init(d: Dist, device: torch.device) -> None:
    """The training's process group, its keys in torchrun's store under a prefix of their own: after a
    harvest's group in the same process (``actdict run``), torch names the new default group as it named the
    old one, so its rendezvous read the old keys, another rank's address of then, and the first barrier hung
    (one run in three on 2 CPU ranks)."""
    if d.on and not tdist.is_initialized():
        store, _, _ = next(tdist.rendezvous("env://", d.rank, d.world, timeout=WAIT))
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=WAIT, rank=d.rank,
                                 world_size=d.world, store=tdist.PrefixStore("actdict-train", store))


def average_grads(model: nn.Module, weight: float) -> None:
    """grad <- sum over ranks of weight_r * grad_r (weight = rows of this rank / rows of the global batch)."""
    params = list(model.parameters())
    ref = params[0]
    flat = [(p.grad * weight).reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=ref.device,
                                                                                  dtype=p.dtype)
            for p in params]
    has = torch.tensor([p.grad is not None for p in params], dtype=flat[0].dtype, device=ref.device)
    buf = torch.cat([*flat, has])  # [n_params + len(params)]
    tdist.all_reduce(buf)
    at = 0
    for p, h in zip(params, buf[-len(params):].tolist(), strict=True):
        g = buf[at:at + p.numel()].view_as(p)
        at += p.numel()
        p.grad = like_param(p, g) if h > 0 else None


def like_param(p: Tensor, v: Tensor) -> Tensor:
    """A copy of v (p's shape, v's dtype) in p's memory layout. Any gradient or optimizer state given to a
    parameter must have it: fused Adam reads grad, state and parameter memory in the same order, and
    sae_topk's decoder weight is a transposed view (a contiguous grad or moment would be read scrambled)."""
    return torch.empty_like(p, dtype=v.dtype).copy_(v)


_ROWS: tuple[int, int] | None = None  # (this rank's first row, rows of the global batch) during a step


@contextmanager
def batch_rows(first: int, total: int) -> Iterator[None]:
    """Inside: this rank's rows of the global batch start at ``first`` of ``total`` (for ``noise_like`` and
    ``batch_mean``)."""
    global _ROWS
    _ROWS = (first, total)
    try:
        yield
    finally:
        _ROWS = None


def noise_like(t: Tensor) -> Tensor:  # t: [b, ...] this rank's rows -> N(0, 1) noise of t's shape
    """``torch.randn_like(t)``; under torchrun inside ``batch_rows``: the global batch's noise [total, ...]
    drawn whole (every rank's generator is seeded alike) and this rank's rows of it, so the result does not
    depend on the number of ranks (at the price of drawing world times as many numbers)."""
    if _ROWS is None or group_size() == 1:
        return torch.randn_like(t)
    first, total = _ROWS
    return torch.randn((total, *t.shape[1:]), dtype=t.dtype, device=t.device)[first:first + len(t)]


def batch_mean(t: Tensor) -> Tensor:  # t: [b, ...] this rank's rows -> [...]
    """The mean over the rows of the global batch, for penalties that are functions of batch means (sae_kl's
    rho_hat). ``t.mean(0)`` in one process; see ``global_mean``."""
    return global_mean(t.mean(0), len(t))


def global_mean(local: Tensor, rows: int) -> Tensor:  # local: [...] a mean over this rank's ``rows`` rows
    """The same mean over the global batch (one all-reduce; ``local`` itself in one process). Its value is the
    global mean; its gradient reaches this rank's rows as that of ``local``, which the loop's row-weighted
    gradient average turns into the global mean's. Exact for a loss that is a function of such means when
    each mean's row terms do not depend on another global statistic with a gradient (detach those)."""
    if _ROWS is None or group_size() == 1:
        return local
    if not rows:  # this rank's part of a short last batch is empty: its mean is 0/0, it adds nothing
        return reduce_(torch.zeros_like(local.detach())) / _ROWS[1]  # (and it has no rows to send grads to)
    total = reduce_(local.detach() * rows) / _ROWS[1]
    return local + (total - local.detach())


def global_rows(rows: int) -> int:
    """Rows of the global batch (this rank's ``rows`` in one process)."""
    return rows if _ROWS is None or group_size() == 1 else _ROWS[1]


def group_size() -> int:
    """Ranks in the running process group (1 when there is none: one process, analysis, tests)."""
    return tdist.get_world_size() if tdist.is_available() and tdist.is_initialized() else 1


def reduce_(x: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """x reduced in place over the process group's ranks (``sum`` | ``min``); x itself when there is none."""
    if group_size() > 1:
        tdist.all_reduce(x, op={"sum": tdist.ReduceOp.SUM, "min": tdist.ReduceOp.MIN}[op])
    return x


def global_kth_largest(values: torch.Tensor, n: int) -> torch.Tensor:
    """The n-th largest of the values of every rank (``values``: this rank's, any shape). Each rank sends
    its own n largest (an upper bound on its share), padded with -inf; -inf when there are fewer than n."""
    flat = values.reshape(-1)
    top = flat.topk(min(n, flat.numel())).values  # [<= n]
    top = torch.cat([top, top.new_full((n - len(top),), float("-inf"))])  # [n]
    if group_size() > 1:
        parts = [torch.empty_like(top) for _ in range(group_size())]
        tdist.all_gather(parts, top)
        top = torch.cat(parts).topk(n).values  # [n]
    return top[-1]


def batch_statistics(model: nn.Module) -> bool:
    """Whether a training forward normalises with its batch's statistics (BatchNorm: ``encoder:
    resmlp_bn``). Such a model trains in one process only: each rank would normalise its own slice of the
    batch, and torch's SyncBatchNorm runs on GPUs only and expects DDP-wrapped models, which the loop does not
    use (module doc)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def any_rank(flag: bool, d: Dist, device: torch.device) -> bool:
    """Whether ``flag`` holds on any rank: one all-reduce (a tensor on ``device``, as NCCL needs), so every
    rank takes the same decision from what each saw before it (``flag`` itself in one process). The
    training's stop after its final saves: a SIGTERM that reached some ranks only stops them all."""
    if not d.on:
        return flag
    return float(reduce_(torch.tensor([float(flag)], device=device)).item()) > 0


def barrier(d: Dist) -> None:
    if d.on:
        tdist.barrier()


def close(d: Dist) -> None:
    if d.on and tdist.is_initialized():
        tdist.destroy_process_group()
