"""Rule train_reid_verifier: prepared real scans -> verifier.pt and verifier.json (held-out AUC, audit threshold)."""

from pathlib import Path

from synthcxr.validate.reid import ReidConfig, run_train_verifier

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_train_verifier(
    ReidConfig.from_section(sm.params.cfg),
    prepared_dir=Path(sm.input.images).parent,
    out_model=sm.output.model,
    out_metrics=sm.output.metrics,
    log_file=sm.log[0],
)
