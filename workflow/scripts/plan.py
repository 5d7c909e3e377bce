"""Rule plan: the label plan (targets, shards, seeds) from the prepared dataset's labels."""

from synthcxr.lco.pair_plan import PairsConfig
from synthcxr.lco.plan import build_plan
from synthcxr.utils.runtime import setup_logging

sm = snakemake  # noqa: F821 (injected by Snakemake)
setup_logging(sm.log[0])
cfg = dict(sm.params.cfg)
pairs = PairsConfig.from_section(cfg.pop("archive_pairs", None))
build_plan(sm.input.labels, cfg, cfg["labels"], int(cfg["seed"]), sm.output.plan,
           checker_metrics=sm.input.checker[0] if sm.input.checker else None, pairs=pairs)
