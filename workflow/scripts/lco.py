"""Rule lco: optimise the latents of one shard of the plan."""

from synthcxr.lco.pair_plan import PairsConfig
from synthcxr.lco.run import run_shard

sm = snakemake  # noqa: F821 (injected by Snakemake)
cfg = dict(sm.params.cfg)
pairs = PairsConfig.from_section(cfg.pop("archive_pairs", None))
run_shard(
    sm.input.plan,
    int(sm.wildcards.shard),
    sm.input.generator,
    sm.input.classifier,
    sm.input.thresholds,
    cfg,
    sm.output.latents,
    log_file=sm.log[0],
    margins_path=sm.input.margins,
    pairs=pairs,
    verifier_path=sm.input.verifier[0] if sm.input.verifier else None,
    realism_path=sm.input.realism[0] if sm.input.realism else None,
)
