"""The ``lco`` section as the optimiser sees it: one checked dataclass of the section's keys.

Defaults live in the schema alone (config/schemas/config.schema.yaml); :func:`synthcxr.config.build`
fills them in, so a caller may pass part of the section. ``lco.plan`` is :class:`~.plan.PlanConfig`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import build
from ..labels import check_labels


@dataclass
class LCOConfig:
    """The ``lco`` config section's optimisation keys plus the global ``labels``, ``device`` and ``seed``."""

    labels: list[str]
    device: str
    seed: int
    shard_size: int
    steps: int
    lr: float
    prior_weight: float
    feature_res: int | None
    feature_weight: float
    feature_lr: float
    feature_radius: float | None
    realism_quantile: float | None
    realism_weight: float
    batch_size: int
    retries: int
    margin: float
    margin_quantile: float | None
    margin_real_pass: float | None
    init_candidates: int
    mode: str
    pool_factor: int
    pool_block: int
    memory_mb: float | None
    objective: str
    patience: int | None
    topup_rounds: int
    give_up_after: int | None
    amp: str
    threads: int

    #: keys of the section that belong to another class
    NESTED = ("plan",)

    @classmethod
    def from_section(cls, cfg: Mapping[str, Any]) -> "LCOConfig":
        """From the ``lco`` section as ``synthcxr.config.section(config, 'lco')`` gives it (or part of it)."""
        if "labels" not in cfg:
            raise ValueError("lco config: missing 'labels' (pass synthcxr.config.section(config, 'lco'))")
        out = build(cls, "lco", cfg)
        out.labels = check_labels(out.labels, where="labels")
        return out
