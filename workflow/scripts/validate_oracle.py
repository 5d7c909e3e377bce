"""Rule validate_oracle: release + real test scans + oracle/checker/steering classifiers -> oracle.json, oracle.png."""

from pathlib import Path

from synthcxr.utils.atomic import write_json
from synthcxr.utils.runtime import setup_logging
from synthcxr.validate.figures import oracle_bars
from synthcxr.validate.oracle import oracle_report, summary_lines

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup_logging(sm.log[0])
result = oracle_report(
    Path(sm.input.manifest).parent,
    Path(sm.input.images).parent,
    sm.params.phantom,
    sm.input.oracle,
    sm.input.checker,
    sm.input.checker_thresholds,
    sm.input.steering,
    sm.params.labels,
    sm.params.salt,
    device=sm.params.device,
    oracle_metrics=sm.input.oracle_metrics,
)
for line in summary_lines(result):
    log.info(line)
write_json(sm.output.oracle, result)
oracle_bars(result, sm.output.png)
