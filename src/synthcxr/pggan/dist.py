"""Data-parallel training inside one process: joining the process group ``torchrun`` describes (see
:mod:`.launch` for starting it) and the collectives the trainer needs.

``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK; without them training runs as a single process.
CUDA ranks use NCCL and one GPU each; CPU ranks use Gloo (what the tests exercise).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from ..utils.runtime import resolve_device


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group described by the environment (if any) and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = resolve_device(device)
    if world <= 1:
        return DistInfo(0, 1, 0, dev)
    if dev.type == "cuda":
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if torch.cuda.device_count() < per_node:
            raise RuntimeError(f"{per_node} training processes on this node but {torch.cuda.device_count()} GPU(s) "
                               "visible: pggan.gpus must not exceed the GPUs per node (SYNTHCXR_SLURM_GPUS)")
        if dev.index is None:
            dev = torch.device("cuda", local % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(dev)
    created = False
    if not tdist.is_initialized():
        for key in ("MASTER_ADDR", "MASTER_PORT"):
            if key not in os.environ:
                raise RuntimeError(f"WORLD_SIZE={world} but {key} is not set; launch with torchrun")
        tdist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
        created = True
    return DistInfo(rank, world, local, dev, created)


def shutdown(info: DistInfo) -> None:
    if info.initialised_here and tdist.is_initialized():
        tdist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        tdist.barrier()


def mean_across_ranks(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Average a small stats tensor over ranks (logging only)."""
    if not info.distributed:
        return values
    v = values.clone()
    tdist.all_reduce(v, op=tdist.ReduceOp.SUM)
    return v / info.world_size


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when ``flag`` is true on at least one (e.g. one rank was asked to stop)."""
    if not info.distributed:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=info.device if info.device.type == "cuda" else "cpu")
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item() > 0)


def ranks_per_host(info: DistInfo) -> dict[str, int]:
    """How many ranks run on each node (the SLURM node name, else the host name), gathered on every rank."""
    import socket
    from collections import Counter

    me = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    if not info.distributed:
        return {me: 1}
    names: list[str | None] = [None] * info.world_size
    tdist.all_gather_object(names, me)
    return dict(sorted(Counter(names).items()))


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    """Rank 0's decision, shared so every rank takes the same branch."""
    if not info.distributed:
        return flag
    t = torch.tensor([1 if flag else 0], device=info.device if info.device.type == "cuda" else "cpu")
    tdist.broadcast(t, src=0)
    return bool(t.item())
