"""Rule export_critic: checkpoint.pt beside generator.pt -> critic.pt (the generator's own critic)."""

from pathlib import Path

from synthcxr.pggan.checkpoint import export_critic
from synthcxr.utils.runtime import setup_logging

sm = snakemake  # noqa: F821 (injected by Snakemake)
setup_logging(sm.log[0])
gen = Path(sm.input.generator)
export_critic(gen.with_name("checkpoint.pt"), gen, sm.output.critic)
