"""Data-parallel training with torch.distributed: one process per GPU (NCCL) or per CPU worker (gloo).

Launch ``torchrun --nproc_per_node=N -m wbclib.cli train ...``: the config's ``batch_size`` stays the *global*
batch, each process takes its share of every shuffled global batch, gradients are averaged by
DistributedDataParallel, logged losses are reduced across processes, and rank 0 alone writes the run directory.
Without torchrun (``WORLD_SIZE`` unset or 1) everything here is a no-op.

Two things differ from one process with the same global batch: BatchNorm normalises with each process's own
share, and the Generalized Dice Loss pools its sums over each process's masked samples only (it does not
decompose over a split batch). Reconstruction and cross-entropy gradients are the same averages.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from wbclib import WbcError


@dataclass
class Context:
    """This process's place in the job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over all processes."""
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        return t.cpu().tolist()

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


def setup(device: torch.device) -> tuple[Context, torch.device]:
    """Join the process group that torchrun describes in the environment; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(rank, world, local), device


def local_batch_size(batch_size: int, ctx: Context) -> int:
    if batch_size % ctx.world:
        raise WbcError(f"batch_size {batch_size} (the global batch) is not divisible by the {ctx.world} processes")
    return batch_size // ctx.world


class ShardedBatchSampler(Sampler[list[int]]):
    """Shuffled global batches of ``batch_size`` indices; process ``rank`` takes its contiguous share of each.

    With one process this is plain shuffled batching; with several, the union of the shares of one step is
    exactly the global batch a single process would have drawn from the same generator.
    """

    def __init__(self, n: int, batch_size: int, ctx: Context, generator: torch.Generator, shuffle: bool = True):
        self.n, self.batch_size, self.ctx, self.generator, self.shuffle = n, batch_size, ctx, generator, shuffle

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator).tolist() if self.shuffle else list(range(self.n))
        for i in range(0, self.n, self.batch_size):
            batch = order[i:i + self.batch_size]
            if len(batch) < self.ctx.world:
                break  # too few left to give every process a sample
            yield np.array_split(np.array(batch), self.ctx.world)[self.ctx.rank].tolist()

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest >= self.ctx.world else 0)


