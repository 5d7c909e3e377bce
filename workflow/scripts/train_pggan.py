"""Snakemake script for rule train_pggan: prepared dataset -> generator.pt (resumes from checkpoint.pt)."""

from pathlib import Path

from synthcxr.pggan.dist import train_maybe_distributed

sm = snakemake  # noqa: F821 (injected by Snakemake)
train_maybe_distributed(
    dict(sm.params.cfg),
    data_folder=Path(sm.input.images).parent,
    out_dir=Path(sm.output.generator).parent,
    log_file=sm.log[0],
    threads=sm.threads,
)
