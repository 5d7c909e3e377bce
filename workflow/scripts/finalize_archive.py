"""Rule finalize_archive: the release's shards, manifest.parquet, latents.parquet and archive.json."""

from pathlib import Path

from synthcxr.archive.finalize import finalize_archive
from synthcxr.archive.sample import ArchiveConfig
from synthcxr.utils.runtime import setup_logging
from synthcxr.validate.figures import delivery_bars

sm = snakemake  # noqa: F821 (injected by Snakemake)
setup_logging(sm.log[0])
info = finalize_archive(
    Path(sm.input.latents[0]).parent.parent,
    Path(sm.output.manifest).parent,
    ArchiveConfig.from_section({**sm.params.cfg, "workers": sm.threads}),
    list(sm.input.latents),
    sm.input.generator,
    classifier_path=sm.input.classifier,
    memorization_path=sm.input.memorization[0] if sm.input.memorization else None,
    reid_path=sm.input.reid[0] if sm.input.reid else None,
    full_config=sm.config,
    shard_size=sm.params.shard_size,
)
delivery_bars(info["delivery"], sm.output.delivery)
