"""The processes of a training: one, or several under ``torchrun``.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) every process joins a process group
(NCCL on CUDA, gloo on CPU), the trained network is wrapped in DistributedDataParallel and the
training set is sharded by ``DistributedSampler`` (``adpf.train.make_loader``); ``batch_size``
stays the global batch (each of W processes takes batch_size / W). Every process evaluates
(same weights, same numbers); process 0 alone writes files. After every epoch the BatchNorm
statistics of process 0 are given to every process (`Process.share_buffers`), and a step whose
loss is not finite on one process stops them all (`Process.anywhere`). Resuming is exact only
for a single process (the other processes' random states are not stored). With several
machines the cache folder must be shared.

A single process is a `Process` with ``world_size`` 1: every helper here is then a no-op.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

if TYPE_CHECKING:
    from adpf.recipes import Recipe


@dataclass(frozen=True)
class Process:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel when there are several processes, else ``model``."""
        if not self.distributed:
            return model
        return DistributedDataParallel(model, device_ids=[self.device] if self.device.type == "cuda" else None)

    def anywhere(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any process (an all-reduce of the flags: every process gets the verdict)."""
        if not self.distributed:
            return flag
        shared = torch.tensor(float(flag), device=self.device)
        dist.all_reduce(shared, op=dist.ReduceOp.MAX)
        return bool(shared.item())

    def share_buffers(self, model: nn.Module) -> None:
        """Give every process process 0's buffers of ``model`` (its BatchNorm statistics)."""
        if self.distributed:
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)


def setup_process(recipe: Recipe) -> tuple[Process, bool]:
    """Read ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (set by torchrun) and join the process group.

    Returns the process and whether this call created the process group (NCCL on CUDA,
    gloo on CPU); `close_process` leaves it again.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = recipe.resolved_device()
    if world <= 1:
        return Process(device=device), False
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if recipe.batch_size % world:
        raise ValueError(f"batch_size={recipe.batch_size} must be divisible by WORLD_SIZE={world}")
    return Process(rank, world, device), created


def close_process(created: bool) -> None:
    """Leave the process group when `setup_process` created it (``created``)."""
    if created:
        dist.destroy_process_group()
