"""How a streamed release is split: work units (shard row ranges) dealt to ranks and DataLoader workers,
each to the least-loaded, and the per-rank quotas that give every rank the same number of samples."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Unit:
    """Rows ``[lo, hi)`` of release shard ``shard``; ``n`` of them pass the stream's label filter."""

    shard: int
    lo: int
    hi: int
    n: int


def _rank_world(rank: int | None, world: int | None) -> tuple[int, int]:
    """Explicit values, else torch.distributed's, else torchrun's RANK/WORLD_SIZE, else (0, 1)."""
    if rank is not None or world is not None:
        r, w = int(rank or 0), int(world or 1)
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        r, w = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        r, w = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not (w >= 1 and 0 <= r < w):
        raise ValueError(f"rank {r} is not in [0, world_size {w})")
    return r, w


def deal(units: Sequence[Unit], bins: int) -> list[list[int]]:
    """Indices of ``units`` dealt in order to ``bins`` bins, each to the least-loaded (lowest index on ties)."""
    out: list[list[int]] = [[] for _ in range(bins)]
    load = np.zeros(bins, dtype=np.int64)
    for i, u in enumerate(units):
        b = int(np.argmin(load))
        out[b].append(i)
        load[b] += u.n
    return out


def quotas(loads: Sequence[int], total: int) -> list[int]:
    """Split ``total`` (<= sum(loads)) over bins of ``loads``: each gets min(load, t), the rest one by one in bin order."""
    loads = [int(x) for x in loads]
    if total >= sum(loads):
        return loads
    lo, hi = 0, max(loads, default=0)
    while lo < hi:  # the largest t with sum(min(load, t)) <= total
        t = (lo + hi + 1) // 2
        if sum(min(x, t) for x in loads) <= total:
            lo = t
        else:
            hi = t - 1
    q = [min(x, lo) for x in loads]
    rest = total - sum(q)
    for i, x in enumerate(loads):
        if rest and x > q[i]:
            q[i] += 1
            rest -= 1
    return q
