"""Rule lco_margins: LCO's acceptance margins per label and side (calibrated on real val scans when configured),
and the realism gate when lco.realism_quantile is set."""

import os

from synthcxr.lco.margins import run_margins

sm = snakemake  # noqa: F821 (injected by Snakemake)
prepared = os.path.dirname(sm.input.images)  # the prepared dataset folder
run_margins(sm.params.cfg, sm.input.classifier, sm.input.thresholds, prepared, sm.output.margins, log_file=sm.log[0],
            realism_path=getattr(sm.output, "realism", None))
