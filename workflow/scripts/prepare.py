"""Snakemake script for rule prepare: dataset section -> images.h5, labels.parquet, quarantine.csv, prepare.json."""

from pathlib import Path

from synthcxr.data.prepare import prepare
from synthcxr.utils.runtime import job_memory_mb

sm = snakemake  # noqa: F821 (injected by Snakemake)
cfg = dict(sm.params.cfg)
cfg["workers"] = min(int(cfg.get("workers", 0)), int(sm.threads)) if cfg.get("workers") else 0
prepare(cfg, cfg["labels"], Path(sm.output.images).parent, log=sm.log[0], mem_mb=job_memory_mb())
