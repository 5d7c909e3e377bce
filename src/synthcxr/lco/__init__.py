"""Latent class optimisation: the label plan, per-shard latent optimisation, and its baselines.

``plan`` decides what to make, ``optimize`` finds latents the classifier agrees with, ``rejection`` is
the brute-force baseline, ``run`` is the per-shard workflow job and ``evaluate`` checks the result with
an independent classifier.
"""

from .optimize import LCOConfig, LabelSpace, optimise_latents, resolve_label_space, success_rule
from .plan import PlanConfig, attempt_seed, derive_seed, make_plan, write_plan
from .rejection import RejectionResult, rejection_sample
from .run import read_latents, run_shard, write_latents

__all__ = [
    "LCOConfig",
    "LabelSpace",
    "PlanConfig",
    "RejectionResult",
    "attempt_seed",
    "derive_seed",
    "make_plan",
    "optimise_latents",
    "read_latents",
    "rejection_sample",
    "resolve_label_space",
    "run_shard",
    "success_rule",
    "write_latents",
    "write_plan",
]
