"""Rule validate_tstr: real / synthetic / real+synthetic arms x seeds, scored on the real test split -> tstr.json, bars."""

from pathlib import Path

from synthcxr.validate.tstr import run_tstr

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_tstr(
    dict(sm.params.cfg),
    archive_dir=Path(sm.input.manifest).parent,
    prepared_dir=Path(sm.input.images).parent,
    out_dir=sm.output.runs,
    out_json=sm.output.tstr,
    out_png=sm.output.bars,
    seeds=int(sm.params.seeds),
    epochs=sm.params.epochs,
    log_file=sm.log[0],
)
