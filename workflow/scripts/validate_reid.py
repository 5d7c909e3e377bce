"""Rule validate_reid: rendered shards + latents + verifier -> reid.parquet, reid.json, reid_gallery.png."""

from pathlib import Path

from synthcxr.validate.reid import ReidConfig, run_reid

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_reid(
    ReidConfig.from_section(sm.params.cfg),
    shard_files=list(sm.input.shards),
    latent_files=list(sm.input.latents),
    prepared_dir=Path(sm.input.images).parent,
    verifier_path=sm.input.verifier,
    verifier_metrics=sm.input.verifier_metrics,
    out_parquet=sm.output.table,
    out_summary=sm.output.summary,
    out_gallery=sm.output.gallery,
    log_file=sm.log[0],
)
