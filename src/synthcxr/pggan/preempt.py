"""Decide when a training job must stop early, so it can checkpoint and be resubmitted to resume.

A cluster job ends at its wall-time limit, long before a 1024 px schedule does. Training stops at the
next step boundary, writes a checkpoint that restores every counter, and exits with
:data:`PREEMPTED_EXIT` when

* its time budget runs out: ``pggan.job_minutes`` of training in this process, and, inside a SLURM job,
  the allocation's remaining time (read once from ``squeue``) less ``pggan.stop_margin_minutes``; or
* it receives SIGTERM or SIGUSR1 (a scheduler's warning, ``kill``, ``scancel --signal``).

The budget does not depend on a signal reaching the process: under Snakemake's SLURM executor a signal
sent to the job step also reaches the Snakemake process that runs the rule, which dies of it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

#: Exit status of a training job that stopped early with a checkpoint (EX_TEMPFAIL): rerun it to resume.
PREEMPTED_EXIT = 75
#: Written by rank 0 beside the checkpoint when training stopped early; removed when training continues.
MARKER = "preempted.json"

_SLURM_TIME = re.compile(r"^(?:(?P<d>\d+)-)?(?:(?P<h>\d+):)?(?P<m>\d+):(?P<s>\d+)$")


class Preempted(Exception):
    """Training stopped early at a step boundary after writing its checkpoint."""

    def __init__(self, nimg: int, reason: str):
        super().__init__(f"stopped early at {nimg / 1000:.3f} kimg ({reason}); checkpoint written, rerun to resume")
        self.nimg, self.reason = nimg, reason


def parse_slurm_time(text: str) -> float | None:
    """Seconds in a SLURM duration (``D-HH:MM:SS``, ``HH:MM:SS``, ``MM:SS``); None for UNLIMITED or junk."""
    m = _SLURM_TIME.match(text.strip())
    if not m:
        return None
    d, h = int(m.group("d") or 0), int(m.group("h") or 0)
    return float(((d * 24 + h) * 60 + int(m.group("m"))) * 60 + int(m.group("s")))


def slurm_time_left_s(env: dict | None = None, run: Callable = subprocess.run) -> float | None:
    """Seconds left in the current SLURM allocation (``squeue -o %L``), or None outside SLURM / if unknown."""
    env = os.environ if env is None else env
    job = env.get("SLURM_JOB_ID")
    if not job:
        return None
    try:
        out = run(["squeue", "-h", "-j", str(job), "-o", "%L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_slurm_time(out.stdout.splitlines()[0]) if out.returncode == 0 and out.stdout.strip() else None


def time_budget_s(job_minutes: float | None, stop_margin_minutes: float, time_left_s: float | None) -> float | None:
    """Seconds this process may train: the smaller of the configured budget and the allocation less the margin."""
    budgets = []
    if job_minutes is not None:
        budgets.append(60.0 * float(job_minutes))
    if time_left_s is not None:
        budgets.append(max(0.0, time_left_s - 60.0 * float(stop_margin_minutes)))
    return min(budgets) if budgets else None


class StopRequest:
    """``with StopRequest(budget_s) as stop:`` ... ``stop.reason()`` is None until training should stop.

    Signal handlers are installed only on the main thread and restored on exit; a second signal does
    not kill the process either, the stop is already requested.
    """

    def __init__(self, budget_s: float | None, signals: Sequence[int] = (signal.SIGTERM, signal.SIGUSR1),
                 clock: Callable[[], float] = time.monotonic):
        self.budget_s, self.signals, self.clock = budget_s, tuple(signals), clock
        self.signal_name: str | None = None
        self._old: dict[int, object] = {}
        self._t0 = clock()

    def _handler(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> "StopRequest":
        self._t0 = self.clock()
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}

    def reason(self) -> str | None:
        if self.signal_name is not None:
            return f"received {self.signal_name}"
        if self.budget_s is not None and self.clock() - self._t0 >= self.budget_s:
            return f"time budget of {self.budget_s:.0f} s used"
        return None
