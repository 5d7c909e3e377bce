"""Rule validate_tstr: TSTR arms x real fractions x seeds, scored on the real test split -> tstr.json, figures."""

from pathlib import Path

from synthcxr.classifier import ClassifierConfig
from synthcxr.validate.tstr import run_tstr

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_tstr(
    ClassifierConfig.from_section(sm.params.cfg),
    archive_dir=Path(sm.input.manifest).parent,
    prepared_dir=Path(sm.input.images).parent,
    out_dir=sm.output.runs,
    out_json=sm.output.tstr,
    out_png=sm.output.bars,
    seeds=int(sm.params.seeds),
    epochs=sm.params.epochs,
    log_file=sm.log[0],
    real_fractions=sm.params.fractions,
    arms=sm.params.arms,
    synthetic_share=sm.params.synthetic_share,
    out_fractions_png=sm.output.fractions,
)
