"""Data-parallel helpers: join a torchrun / `accelerate launch` group, shard, reduce running sums once.

Nothing here runs unless WORLD_SIZE > 1 (or a process group already exists): a plain
`tunetrace audit` is a single process with no distributed machinery at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_from_env(device: str = "cpu") -> World:
    """Join the process group described by the launcher's env vars (gloo on CPU, nccl on CUDA)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    if dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return World(0, 1, 0)


def all_reduce_state(state: Mapping[str, torch.Tensor], max_keys: set[str]) -> None:
    """Sum (or max, for `max_keys`) every tensor across ranks, in place; one collective per tensor."""
    for key, tensor in state.items():
        op = dist.ReduceOp.MAX if key in max_keys else dist.ReduceOp.SUM
        # gloo reduces CPU tensors; nccl needs them on the rank's GPU (the state lives there already)
        dist.all_reduce(tensor, op=op)


def all_agree(flag: bool) -> bool:
    """True only if `flag` is true on every rank (so every rank takes the same branch before a collective)."""
    if not dist.is_initialized():
        return flag
    device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def resolve_device(device: str, local_rank: int = 0) -> str:
    """'auto' -> cuda (this rank's GPU) when available, else cpu; anything else as given."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = f"cuda:{local_rank}"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"`device` {device!r} asked for, but torch sees no CUDA device: use --device cpu.")
    return device
