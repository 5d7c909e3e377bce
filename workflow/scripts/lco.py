"""Rule lco: optimise the latents of one shard of the plan."""

from synthcxr.lco.run import run_shard

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_shard(
    sm.input.plan,
    int(sm.wildcards.shard),
    sm.input.generator,
    sm.input.classifier,
    sm.input.thresholds,
    sm.params.cfg,
    sm.output.latents,
    log_file=sm.log[0],
    margins_path=sm.input.margins,
)
