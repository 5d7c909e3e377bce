"""Rule validate_diversity: manifest + real labels -> prevalence/co-occurrence heatmaps, sample grids."""

from pathlib import Path

from synthcxr.validate.diversity import run_diversity

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_diversity(
    sm.params.cfg["labels"],
    archive_dir=Path(sm.input.manifest).parent,
    prepared_dir=Path(sm.input.images).parent,
    out_prevalence=sm.output.prevalence,
    out_cooccurrence=sm.output.cooccurrence,
    out_grids=sm.output.grids,
    out_json=sm.output.summary,
    seed=int(sm.params.cfg["seed"]),
    log_file=sm.log[0],
)
