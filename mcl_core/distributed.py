"""Multi-process training helpers: torchrun set-up and global-batch gathers.

Every rank augments its own shard of the global batch and computes
projections for it; :func:`gather_with_grad` concatenates the shards so the
contrastive losses see the global batch (2N, D) exactly as one process
would, rank r's entries after those of ranks < r (the view layout of SPEC
section 0 is kept, since every shard holds whole entries).

Gradient convention: every rank evaluates the same global loss L on the
gathered batch, and the backward of the gather returns to each rank the
gradient of L with respect to its own rows only (no communication). DDP then
averages parameter gradients over ranks, i.e. divides the sum by the world
size W, so the training step multiplies a gathered loss by W before
``backward`` (see ``train.compute_loss``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

log = logging.getLogger(__name__)


@dataclass
class DistInfo:
    """Rank of this process and the number of processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on the process that writes files (rank 0)."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1


def current() -> DistInfo:
    """Rank and world size of an initialised process group, else 1 process."""
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return DistInfo(dist.get_rank(), dist.get_world_size(), local)
    return DistInfo()


def setup(device_type: str) -> tuple[DistInfo, bool]:
    """Join the torchrun process group when WORLD_SIZE > 1.

    Returns the rank info and whether this call created the group (the
    caller then destroys it with :func:`cleanup`).
    """
    if dist.is_available() and dist.is_initialized():
        return current(), False
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo(), False
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    info = current()
    log.info(
        f"process group: rank {info.rank}/{info.world_size}, {backend}"
    )
    return info, True


def cleanup(created: bool) -> None:
    """Destroy the process group if :func:`setup` created it."""
    if created and dist.is_initialized():
        dist.destroy_process_group()


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0; backward keeps this rank's rows of the grad."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        world = dist.get_world_size()
        sizes = [torch.zeros(1, dtype=torch.long, device=x.device)
                 for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([len(x)], device=x.device))
        sizes = [int(s) for s in sizes]
        if len(set(sizes)) != 1:
            raise ValueError(
                f"every rank must hold the same number of rows, got {sizes}"
            )
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = dist.get_rank(), len(x)
        return torch.cat(parts)                                 # (W n, ...)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        start = ctx.rank * ctx.rows
        return grad[start:start + ctx.rows]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate x (n, ...) of all ranks in rank order, keeping gradients.

    The gradient that reaches x is the gradient of the loss with respect to
    this rank's rows of the result (see the module docstring for scaling).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return x
    if dist.get_world_size() == 1:
        return x
    return _GatherRows.apply(x)


def gather(x: Tensor) -> Tensor:
    """Concatenate x (n, ...) of all ranks in rank order, no gradient."""
    if not (dist.is_available() and dist.is_initialized()):
        return x
    if dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def shard(n: int, info: DistInfo) -> slice:
    """This rank's contiguous share of n items (n divisible by world size)."""
    if n % info.world_size:
        raise ValueError(
            f"images per batch ({n}) must be divisible by the number of "
            f"processes ({info.world_size})"
        )
    size = n // info.world_size
    return slice(info.rank * size, (info.rank + 1) * size)
