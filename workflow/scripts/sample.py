"""Rule sample: render one latents shard into archive shard files."""

from synthcxr.archive.sample import ArchiveConfig, sample_shard_files
from synthcxr.utils.runtime import setup_logging

setup_logging(snakemake.log[0])
sample_shard_files(
    snakemake.input.latents,
    snakemake.input.generator,
    {fmt: snakemake.output[fmt] for fmt in snakemake.params.cfg["formats"]},
    ArchiveConfig.from_section(snakemake.params.cfg),
)
