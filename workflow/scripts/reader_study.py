"""Snakemake script for rule reader_study: build the blinded kit and its separate answer key."""

from pathlib import Path

from synthcxr.reader_study.kit import ReaderStudyConfig, build_study
from synthcxr.reader_study.sources import archive_source
from synthcxr.utils.runtime import setup_logging

sm = snakemake  # noqa: F821 (injected by Snakemake)
setup_logging(sm.log[0])
build_study(
    prepared=Path(sm.input.labels).parent,
    generated=archive_source(Path(sm.input.manifest).parent),
    kit_dir=sm.output.kit,
    key_path=sm.output.key,
    cfg=ReaderStudyConfig.from_section(sm.params.cfg),
)
