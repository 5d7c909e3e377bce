"""Snakemake script for rules prepare and prepare_oracle: dataset section -> images.h5, labels.parquet,
quarantine.csv, prepare.json (prepare_oracle: the phantom oracle's own cohort, built from the section here)."""

import dataclasses
from pathlib import Path

from synthcxr.data.prepare import prepare
from synthcxr.data.settings import PrepareConfig
from synthcxr.utils.runtime import job_memory_mb
from synthcxr.validate.oracle import oracle_dataset_section

sm = snakemake  # noqa: F821 (injected by Snakemake)
cfg = dict(sm.params.cfg)
if getattr(sm.params, "oracle", None) is not None:
    cfg = oracle_dataset_section(cfg, sm.params.oracle, sm.params.res)
pcfg = PrepareConfig.from_section(cfg)
pcfg = dataclasses.replace(pcfg, workers=min(pcfg.workers, int(sm.threads)))
prepare(pcfg, cfg["labels"], Path(sm.output.images).parent, log=sm.log[0], mem_mb=job_memory_mb())
