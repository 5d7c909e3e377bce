"""Rule validate_memorization: rendered shards + latents -> memorization.parquet, summary, gallery."""

from pathlib import Path

from synthcxr.validate.memorization import MemorizationConfig, run_memorization

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_memorization(
    MemorizationConfig.from_section(sm.params.cfg),
    shard_files=list(sm.input.shards),
    latent_files=list(sm.input.latents),
    prepared_dir=Path(sm.input.images).parent,
    checker_path=str(sm.input.checker) if sm.input.checker else None,
    out_parquet=sm.output.table,
    out_gallery=sm.output.gallery,
    out_summary=sm.output.summary,
    log_file=sm.log[0],
)
