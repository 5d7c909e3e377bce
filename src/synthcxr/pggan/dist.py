"""Process-group setup for multi-GPU training launched by ``torchrun``.

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


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    """Rank 0's decision, shared so every rank takes the same branch."""
    if not info.distributed:
        return flag
    t = torch.tensor([1 if flag else 0], device=info.device if info.device.type == "cuda" else "cpu")
    tdist.broadcast(t, src=0)
    return bool(t.item())


def launch_torchrun(cfg: dict, data_folder: str | os.PathLike, out_dir: str | os.PathLike,
                    log_file: str | os.PathLike | None, nproc: int) -> None:
    """Run ``train_pggan`` in ``nproc`` processes via ``torch.distributed.run`` (single node).

    The config travels as a JSON file in the run folder, so every rank trains the same thing. A SIGTERM
    or SIGUSR1 to this process is passed to torchrun as SIGTERM, which torchrun hands on to every rank
    (each in a session of its own); the ranks checkpoint and stop together, and this raises
    :class:`~.preempt.Preempted`. torchrun itself ignores SIGUSR1, which would kill it.
    """
    import json
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from ..utils.atomic import write_json
    from .preempt import MARKER, Preempted

    out = Path(out_dir)
    cfg_path = out / "launch-config.json"
    write_json(cfg_path, cfg)
    (out / MARKER).unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "synthcxr.pggan.train", "--config-json", str(cfg_path), "--data", str(data_folder), "--out", str(out)]
    if log_file is not None:
        cmd += ["--log", str(log_file)]
    old_usr1 = signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # inherited by torchrun; the ranks install their own
    try:
        proc = subprocess.Popen(cmd)
    finally:
        signal.signal(signal.SIGUSR1, old_usr1)

    def forward(signum, frame):  # noqa: ARG001 - signal handler signature
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass

    handlers = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        rc = proc.wait()
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    marker = out / MARKER
    if marker.exists():
        info = json.loads(marker.read_text())
        raise Preempted(int(round(float(info["kimg"]) * 1000)), str(info["reason"]))
    if rc != 0:
        raise RuntimeError(f"torchrun with {nproc} processes failed (exit {rc}); see {log_file or 'stderr'}")


def train_maybe_distributed(cfg: dict, data_folder: str | os.PathLike, out_dir: str | os.PathLike,
                            log_file: str | os.PathLike | None = None, threads: int | None = None):
    """Rule entry: ``pggan.gpus > 1`` launches torchrun (one process per GPU), else trains in-process."""
    from pathlib import Path

    from .train import train_pggan

    if threads:
        torch.set_num_threads(max(1, int(threads)))
    gpus = int(cfg.get("gpus", 1))
    if gpus > 1 and "WORLD_SIZE" not in os.environ:
        if torch.cuda.is_available() and torch.cuda.device_count() < gpus:
            raise RuntimeError(f"pggan.gpus is {gpus} but only {torch.cuda.device_count()} GPU(s) are visible")
        launch_torchrun(cfg, data_folder, out_dir, log_file, gpus)
        return Path(out_dir) / "generator.pt"
    return train_pggan(cfg, data_folder, out_dir, log_file=log_file)
