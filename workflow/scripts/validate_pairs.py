"""Rule validate_pairs: a release's paired counterfactuals -> pairs.json and the gallery."""

from pathlib import Path

from synthcxr.validate.pairs import run_pairs

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_pairs(
    archive_dir=Path(sm.input.manifest).parent,
    prepared_dir=Path(sm.input.images).parent,
    checker_path=sm.input.checker,
    checker_thresholds=sm.input.thresholds,
    verifier_path=sm.input.verifier[0] if sm.input.verifier else None,
    out_json=sm.output.pairs,
    out_gallery=sm.output.gallery,
    device=sm.params.device,
    align=int(sm.params.align),
    phantom=sm.params.phantom,
    log_file=sm.log[0],
)
