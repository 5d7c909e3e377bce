"""Rule validate_lco: latents + generator + checker classifier -> lco_agreement.json (priced with the steering classifier)."""

from synthcxr.lco.evaluate import run_agreement

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_agreement(
    list(sm.input.latents),
    sm.input.generator,
    sm.input.classifier,
    sm.input.checker,
    sm.input.thresholds,
    sm.input.checker_metrics,
    sm.output.agreement,
    batch_size=sm.params.batch_size,
    device=sm.params.device,
    prior_samples=sm.params.prior_samples,
    seed=sm.params.seed,
    log_file=sm.log[0],
)
