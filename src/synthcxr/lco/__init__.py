"""Latent class optimisation: the label plan, per-shard latent optimisation, and its baselines.

``plan`` decides what to make, ``optimize`` finds latents the classifier agrees with (through
``accept``, ``starts``, ``pool`` and ``stream``, configured by ``config``), ``rejection`` is
the brute-force baseline, ``run`` is the per-shard workflow job, ``latents`` the format of the shards it
writes (one writer, one checked reader) and ``evaluate`` checks the result with an independent classifier.
"""

from .accept import LabelSpace, resolve_label_space, success_rule
from .config import LCOConfig
from .latents import ShardLatents, read_latents, write_latents
from .optimize import optimise_latents
from .plan import PlanConfig, make_plan, write_plan
from .rejection import RejectionResult, rejection_sample
from .run import run_shard
from .seeds import attempt_seed, derive_seed

__all__ = [
    "LCOConfig",
    "LabelSpace",
    "PlanConfig",
    "RejectionResult",
    "ShardLatents",
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
