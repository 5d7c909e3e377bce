"""Rule validate_fid: finalised archive + real images -> fid.json, fid_curve.json, metrics.jsonl, fid_curve.png."""

from pathlib import Path

from synthcxr.validate.fid_run import FidConfig, run_fid

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_fid(
    FidConfig.from_section(sm.params.cfg),
    prepared_dir=Path(sm.input.images).parent,
    archive_dir=Path(sm.input.manifest).parent,
    out_json=sm.output.fid,
    out_png=sm.output.png,
    generator_path=sm.input.generator,
    checker_path=str(sm.input.checker) if sm.input.checker else None,
    out_curve_json=sm.output.curve,
    out_jsonl=sm.output.jsonl,
    cache_dir=sm.params.cache,
    log_file=sm.log[0],
)
