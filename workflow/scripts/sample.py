"""Rule sample: render one latents shard into working shard files."""

from synthcxr.archive.sample import ArchiveConfig, sample_shard_files
from synthcxr.utils.runtime import setup_logging

sm = snakemake  # noqa: F821 (injected by Snakemake)
setup_logging(sm.log[0])
# the archive's name is not a rendering key (renaming an archive reruns no sampling), so it comes from the config
cfg = ArchiveConfig.from_section({**sm.params.cfg, "workers": sm.threads, "name": sm.config["archive"]["name"]})
sample_shard_files(sm.input.latents, sm.input.generator, {fmt: sm.output[fmt] for fmt in cfg.work_formats}, cfg)
