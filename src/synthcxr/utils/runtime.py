"""Seeding, device choice and per-rule logging, so every stage starts the same way."""

from __future__ import annotations

import logging
import os
import random
import sys
from pathlib import Path

import numpy as np


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def fixed_threads(n: int) -> int:
    """Use exactly ``n`` intra-op CPU threads, whatever the scheduler granted.

    CPU reductions are split across threads, so results can differ in the last bit between thread
    counts: a job whose bytes must not depend on ``--cores`` (LCO, rendering) fixes its count from config.
    """
    import torch

    n = max(1, int(n))
    torch.set_num_threads(n)
    return n


def resolve_device(name: str = "auto"):
    """``auto`` -> cuda when available else cpu; anything else is passed to ``torch.device``."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; set device: auto or cpu")
    return dev


def synchronize(device) -> None:
    """Wait for ``device``'s queued kernels (CUDA); a no-op on the CPU. Timings of GPU work call it on both sides."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def setup_logging(log_file: str | os.PathLike | None = None, level: int = logging.INFO) -> logging.Logger:
    """Log to stderr and, when given, to ``log_file`` (the rule's ``log:``). Returns the package logger."""
    logger = logging.getLogger("synthcxr")
    logger.setLevel(level)
    for h in list(logger.handlers):
        logger.removeHandler(h)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    sh = logging.StreamHandler(sys.stderr)
    sh.setFormatter(fmt)
    logger.addHandler(sh)
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file, mode="a")
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    logger.propagate = False
    if log_file is not None:
        _log_uncaught(logger)
    return logger


def _log_uncaught(logger: logging.Logger) -> None:
    """Send an uncaught exception's traceback to the rule's log file too, not only to stderr."""
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        if not issubclass(exc_type, KeyboardInterrupt):
            logger.critical("failed: %s", exc, exc_info=(exc_type, exc, tb))
        previous(exc_type, exc, tb)

    sys.excepthook = hook


def prepend_pythonpath(folder: str) -> None:
    """Put ``folder`` first on PYTHONPATH for every child process (Snakemake script jobs)."""
    parts = [folder] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != folder]
    os.environ["PYTHONPATH"] = os.pathsep.join(parts)


def progress(iterable=None, **kwargs):
    """tqdm progress bar on stderr; quiet when SYNTHCXR_NO_PROGRESS=1 (tests)."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", os.environ.get("SYNTHCXR_NO_PROGRESS") == "1")
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("file", sys.stderr)
    return tqdm(iterable, **kwargs)


def job_memory_mb(environ: dict[str, str] | None = None, cgroup: str = "/sys/fs/cgroup/memory.max") -> int | None:
    """The memory this job may use, in MB: SLURM's allocation, else a cgroup v2 limit, else None (no limit known).

    Reads ``SLURM_MEM_PER_NODE``, or ``SLURM_MEM_PER_CPU`` times ``SLURM_CPUS_ON_NODE`` (both in MB, as
    SLURM exports them), then ``memory.max`` of the process's cgroup ("max" means unlimited).
    """
    env = os.environ if environ is None else environ
    try:
        if env.get("SLURM_MEM_PER_NODE"):
            return int(env["SLURM_MEM_PER_NODE"])
        if env.get("SLURM_MEM_PER_CPU"):
            return int(env["SLURM_MEM_PER_CPU"]) * int(env.get("SLURM_CPUS_ON_NODE", "1") or 1)
    except ValueError:
        pass
    try:
        with open(cgroup) as fh:
            text = fh.read().strip()
    except OSError:
        return None
    return int(text) // (1 << 20) if text.isdigit() else None
