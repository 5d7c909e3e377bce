"""Rule finalize_archive: manifest.parquet, archive.json and SHA256SUMS."""

from pathlib import Path

from synthcxr.archive.finalize import finalize_archive
from synthcxr.archive.sample import ArchiveConfig
from synthcxr.utils.runtime import setup_logging

setup_logging(snakemake.log[0])
finalize_archive(
    Path(snakemake.output.manifest).parent,
    ArchiveConfig.from_section(snakemake.params.cfg),
    list(snakemake.input.latents),
    snakemake.input.generator,
    classifier_path=snakemake.input.classifier,
    memorization_path=snakemake.input.memorization[0] if snakemake.input.memorization else None,
    full_config=snakemake.config,
    shard_size=snakemake.params.shard_size,
)
