"""How many latents one forward (or one LCO step) through generator + classifier fits in a memory budget.

At 1024 px one fp32 image through a PGGAN generator holds hundreds of MiB of activations, and an LCO step
(forward with the autograd graph kept, then backward) several times that, so a fixed chunk size that is
harmless at 64 px exhausts an 80 GB GPU. The chunk is therefore sized from measured bytes per latent:

* ``scoring`` (no autograd): twice the largest working set of any single op (its tensor inputs plus
  outputs), found by running the model once under a dispatch mode that sees every op; the factor 2
  covers what the dispatcher cannot see, such as the reordered copies oneDNN makes inside a CPU conv;
* ``step``: every tensor autograd saves for the backward pass (``saved_tensors_hooks``) plus twice the
  scoring working set for the backward's own temporaries.

Both are measured at batch 1 and batch 2, and the difference is the per-latent cost, so weights and
other fixed allocations cancel. The runs happen on PyTorch's ``meta`` device (shapes only, through
``torch.func.functional_call`` with meta copies of the weights), so sizing a 1024 px job allocates
nothing and takes about a second; it counts tensor storage, not allocator statistics, so the same code
sizes chunks on a CPU node and on a GPU. Views are counted as separate storages there, which errs on
the safe side, and autocast runs are sized at fp32 (also conservative). A CPU test at 1024 px checks
that the chunks keep the process's peak memory within the budget.

The budget is ``lco.memory_mb`` when set, else a share of what the device has free: CUDA's free memory,
or on CPU the smaller of the kernel's available memory and the job's allocation (SLURM/cgroup).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..utils.amp import autocast
from ..utils.runtime import job_memory_mb

log = logging.getLogger("synthcxr")

#: Share of the free memory an LCO job lets its activations use when lco.memory_mb is not set.
FREE_SHARE = 0.5
#: Headroom multiplied onto the measured bytes (allocator rounding, fragmentation, library workspaces).
SAFETY = 1.5

def _key(t: torch.Tensor) -> tuple[int, int]:
    st = t.untyped_storage()
    return (st._cdata, st.nbytes())


def _nbytes(tensors) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            try:
                k, n = _key(t)
            except (RuntimeError, NotImplementedError):
                continue
            seen[k] = n
    return sum(seen.values())


class _OpPeak(TorchDispatchMode):
    """Largest (inputs + outputs) storage of any single op run under this mode."""

    def __init__(self):
        super().__init__()
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat, _ = tree_flatten((args, kwargs, out))
        self.peak = max(self.peak, _nbytes(flat))
        return out


def _meta_state(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: torch.empty_like(v, device="meta") for k, v in [*m.named_parameters(), *m.named_buffers()]}


def _run(G: torch.nn.Module, C: torch.nn.Module, batch: int, grad: bool) -> tuple[int, int]:
    """(op peak, saved-for-backward bytes) of one forward of C(G(z)) at ``batch``, on the meta device."""
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor):
        try:
            k, n = _key(t)
            saved[k] = n
        except (RuntimeError, NotImplementedError):
            pass
        return t

    gs, cs = _meta_state(G), _meta_state(C)
    z = torch.zeros(batch, int(G.latent_dim), device="meta")
    mode = _OpPeak()
    if grad:
        z.requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), mode:
            functional_call(C, cs, (functional_call(G, gs, (z,)),))
    else:
        with torch.no_grad(), mode:
            functional_call(C, cs, (functional_call(G, gs, (z,)),))
    return mode.peak, sum(saved.values())


@dataclass(frozen=True)
class Footprint:
    """Measured bytes per latent and fixed bytes of one forward (scoring) and one LCO step."""

    score_per_latent: int
    step_per_latent: int
    score_fixed: int
    step_fixed: int

    def capacity(self, budget_bytes: int, step: bool) -> int:
        """Most latents a chunk may hold within ``budget_bytes`` (at least 1)."""
        per = (self.step_per_latent if step else self.score_per_latent) * SAFETY
        fixed = self.step_fixed if step else self.score_fixed
        return max(1, int((budget_bytes - fixed) // max(per, 1)))


def measure_footprint(G: torch.nn.Module, C: torch.nn.Module) -> Footprint:
    """Bytes per latent of scoring and of an LCO step through ``C(G(z))``, from meta runs at batch 1 and 2."""
    was = G.training, C.training
    G.eval()
    C.eval()
    try:
        res = {}
        for b in (1, 2):
            peak, _ = _run(G, C, b, grad=False)
            gpeak, saved = _run(G, C, b, grad=True)
            res[b] = (2 * peak, saved + 2 * gpeak)
    finally:
        G.train(was[0])
        C.train(was[1])
    score = max(1, res[2][0] - res[1][0])
    step = max(1, res[2][1] - res[1][1])
    return Footprint(score, step, max(0, res[1][0] - score), max(0, res[1][1] - step))


def _cpu_available_bytes() -> int | None:
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    job = job_memory_mb()
    if job is not None:
        rss = 0
        try:
            with open(f"/proc/{os.getpid()}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1]) * 1024
        except OSError:
            pass
        left = job * (1 << 20) - rss
        avail = left if avail is None else min(avail, left)
    return avail


def memory_budget(device: torch.device, memory_mb: float | None = None) -> int:
    """Bytes an LCO job's activations may use: ``memory_mb`` when given, else a share of free memory."""
    if memory_mb is not None:
        return int(float(memory_mb) * (1 << 20))
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * FREE_SHARE)
    avail = _cpu_available_bytes()
    if avail is None:
        return 4 << 30  # no way to know: assume a modest 4 GiB
    return int(max(avail, 0) * FREE_SHARE)


def _pow2_floor(n: int) -> int:
    return 1 << (max(1, int(n)).bit_length() - 1)


@dataclass(frozen=True)
class ChunkPlan:
    """Latents per scoring chunk and per LCO step batch, and what they were derived from."""

    score_chunk: int
    step_batch: int
    budget_mb: float
    score_mib_per_latent: float
    step_mib_per_latent: float


def plan_chunks(
    G: torch.nn.Module,
    C: torch.nn.Module,
    device: torch.device,
    batch_size: int,
    memory_mb: float | None = None,
    amp: str = "none",
    max_score_chunk: int = 256,
) -> ChunkPlan:
    """Scoring chunk and step batch (at most ``batch_size``) that fit the memory budget on ``device``.

    Both are rounded down to a power of two (and the scoring chunk capped at ``max_score_chunk``), so
    small changes in free memory do not change how latents are batched; where memory never binds (low
    resolution) the chunks are the fixed caps and a shard's bytes never depend on the machine.
    """
    autocast(device, amp)  # checks the mode against the device before anything runs
    fp = measure_footprint(G, C)
    budget = memory_budget(device, memory_mb)
    plan = ChunkPlan(
        score_chunk=min(max_score_chunk, _pow2_floor(fp.capacity(budget, step=False))),
        step_batch=min(int(batch_size), _pow2_floor(fp.capacity(budget, step=True))),
        budget_mb=budget / (1 << 20),
        score_mib_per_latent=fp.score_per_latent / (1 << 20),
        step_mib_per_latent=fp.step_per_latent / (1 << 20),
    )
    if plan.step_batch < batch_size:
        log.info("lco: step batch %d (lco.batch_size %d) to fit %.0f MiB at %.1f MiB per latent", plan.step_batch, batch_size, plan.budget_mb, plan.step_mib_per_latent)
    return plan
