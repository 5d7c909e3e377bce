"""Snakemake script for rule train_classifier: prepared dataset -> model.pt, metrics.json, thresholds.json, roc.png."""

from pathlib import Path

from synthcxr.classifier import ClassifierConfig, train_classifier

sm = snakemake  # noqa: F821 (injected by Snakemake)
data = Path(sm.input.images).parent
train_classifier(
    ClassifierConfig.from_section(sm.params.run),
    train_source=data,
    eval_source=data,
    out_dir=Path(sm.output.model).parent,
    log_file=sm.log[0],
    threads=sm.threads,
)
