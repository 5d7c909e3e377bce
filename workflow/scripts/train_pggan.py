"""Snakemake script for rule train_pggan: prepared dataset -> generator.pt (resumes from checkpoint.pt).

A job that stops early (time budget or SIGTERM/SIGUSR1) has written its checkpoint and exits with
PREEMPTED_EXIT; the rule's retries (pggan.allocations) run it again and it continues.
"""

import sys
from pathlib import Path

from synthcxr.pggan.config import PGGANConfig
from synthcxr.pggan.launch import train_maybe_distributed
from synthcxr.pggan.preempt import PREEMPTED_EXIT, Preempted

sm = snakemake  # noqa: F821 (injected by Snakemake)
try:
    train_maybe_distributed(
        PGGANConfig.from_section(sm.params.cfg),
        data_folder=Path(sm.input.images).parent,
        out_dir=Path(sm.output.generator).parent,
        log_file=sm.log[0],
        threads=sm.threads,
    )
except Preempted as exc:
    print(f"train_pggan: {exc}", file=sys.stderr)
    sys.exit(PREEMPTED_EXIT)
