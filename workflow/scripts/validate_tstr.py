"""Rule validate_tstr: classifier trained on the archive, scored on the real test split -> tstr.json, bars."""

from pathlib import Path

from synthcxr.validate.tstr import run_tstr

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_tstr(
    dict(sm.params.cfg),
    archive_dir=Path(sm.input.manifest).parent,
    prepared_dir=Path(sm.input.images).parent,
    real_model=sm.input.real_model,
    real_metrics=sm.input.real_metrics,
    out_dir=Path(sm.output.model).parent,
    out_json=sm.output.tstr,
    out_png=sm.output.bars,
    log_file=sm.log[0],
)
