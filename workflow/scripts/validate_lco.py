"""Rule validate_lco: latents + generator + checker classifier -> lco_agreement.json."""

from synthcxr.lco.evaluate import agreement
from synthcxr.utils.atomic import write_json
from synthcxr.utils.runtime import setup_logging

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup_logging(sm.log[0])
result = agreement(
    list(sm.input.latents),
    sm.input.generator,
    sm.input.checker,
    sm.input.thresholds,
    batch_size=sm.params.batch_size,
    device=sm.params.device,
    checker_metrics=sm.input.checker_metrics,
    prior_samples=sm.params.prior_samples,
    seed=sm.params.seed,
)
log.info(
    "checker agreement: %.3f over %d samples; %s over the %d LCO-successful ones; "
    "the checker's exact match on %s real test scans: %s",
    result["overall"], result["n"], result.get("overall_successful"), result.get("n_successful", 0),
    result["real_test_n"], result["real_test_exact_match"],
)
for name, row in result["per_label"].items():
    log.info(
        "%s: %d targets, checker agrees on %s of the successful; plan share %.4f, random latents %s",
        name, row["n_target"], row["agreement_successful"], row["plan_rate"], row.get("prior_rate"),
    )
write_json(sm.output.agreement, result)
