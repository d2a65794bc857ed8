"""torchrun integration: process group set-up from the environment torchrun exports, and small collectives."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ProcessInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_process(device_kind: str) -> ProcessInfo:
    """Join the process group when started by torchrun (WORLD_SIZE > 1): NCCL on GPU, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size > 1 and not dist.is_initialized():
        if device_kind == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return ProcessInfo(rank, world_size, local_rank)


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def mean_across_ranks(values: dict[str, list[float]], device: torch.device) -> dict[str, float]:
    """Mean of each key's values over all ranks, ignoring NaN (a statistic a micro-batch had no data for);
    NaN when no rank had any. Every rank passes the same keys."""
    keys = sorted(values)
    sums = torch.tensor([sum(v for v in values[k] if v == v) for k in keys], dtype=torch.float64, device=device)
    counts = torch.tensor([sum(1 for v in values[k] if v == v) for k in keys], dtype=torch.float64, device=device)
    if distributed():
        dist.all_reduce(sums)
        dist.all_reduce(counts)
    return dict(zip(keys, (sums / counts).tolist()))


def gather_objects(value) -> list:
    if not distributed():
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def barrier() -> None:
    if distributed():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
