"""Rule validate_lco: latents + generator + checker classifier -> lco_agreement.json."""

from synthcxr.lco.cost import measure_ratio
from synthcxr.lco.evaluate import agreement
from synthcxr.utils.atomic import write_json
from synthcxr.utils.runtime import setup_logging

sm = snakemake  # noqa: F821 (injected by Snakemake)
log = setup_logging(sm.log[0])
timing = measure_ratio(sm.input.generator, sm.input.classifier, sm.params.batch_size, sm.params.device)
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
    backward_ratio=timing["ratio"],
)
result["backward_timing"] = timing
log.info(
    "checker agreement: %.3f over %d samples; %s over the %d LCO-successful ones; "
    "the checker's exact match on %s real test scans: %s",
    result["overall"], result["n"], result.get("overall_successful"), result.get("n_successful", 0),
    result["real_test_n"], result["real_test_exact_match"],
)
log.info("an LCO update costs %.2f forwards; %s forward-equivalents per LCO-successful sample", timing["ratio"], result["cost"]["fe_per_success"])
for name, row in result["per_label"].items():
    log.info(
        "%s: %d targets, checker agrees on %s of the successful; plan share %.4f, random latents %s; %s FE per success",
        name, row["n_target"], row["agreement_successful"], row["plan_rate"], row.get("prior_rate"), row.get("fe_per_success"),
    )
write_json(sm.output.agreement, result)
