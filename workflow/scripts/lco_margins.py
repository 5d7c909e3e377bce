"""Rule lco_margins: LCO's acceptance margins per label and side (calibrated on real val scans when configured)."""

from synthcxr.lco.margins import run_margins

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_margins(sm.params.cfg, sm.input.classifier, sm.input.thresholds, sm.params.prepared, sm.output.margins, log_file=sm.log[0])
