"""Data parallelism over ``torch.distributed``: every rank trains the same SAE on its slice of each batch.

Why: the field's scale-out is ``torchrun`` + ``torch.distributed``. Each rank takes a contiguous
slice of the same global batch, gradients are averaged with one all-reduce, and dead-latent
statistics are merged, so N ranks compute exactly the step one process would on the global batch. Except where the
SAE allocates latents over the batch (the hybrid's default batch gate, BatchTopK): each rank allocates over its own
slice, as under DDP, so only per-token gates give exactly the one-process step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class DataParallel:
    """This process's place in the job (``rank 0 of 1`` when not distributed)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @classmethod
    def current(cls) -> DataParallel:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    def local_slice(self, global_batch: Tensor) -> Tensor:
        """This rank's contiguous rows of the global batch."""
        rows = global_batch.shape[0] // self.world_size
        return global_batch[self.rank * rows : (self.rank + 1) * rows]

    def average_gradients(self, module: nn.Module) -> None:
        if not self.active:
            return
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    def any_rank(self, mask: Tensor) -> Tensor:
        """Element-wise OR of a boolean mask over ranks (a latent fired if it fired anywhere)."""
        if not self.active:
            return mask
        as_int = mask.to(torch.int32)
        dist.all_reduce(as_int, op=dist.ReduceOp.MAX)
        return as_int.bool()

    def mean(self, value: Tensor) -> Tensor:
        if not self.active:
            return value
        value = value.clone()
        dist.all_reduce(value)
        return value / self.world_size

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def init_from_environment() -> DataParallel:
    """Join the process group that ``torchrun`` describes in the environment (no-op without it)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return DataParallel.current()
