"""The config of the validation rules that the workflow reads while it builds the DAG (which keys are a
rule's params), importable without torch; each stage module re-exports its own."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import ConfigError, build, filled


#: how FID's features are batched: not a config key
FID_TUNING = {"batch_size": 64}


@dataclass
class FidConfig:
    """The ``validate`` section keys this stage uses."""

    features: str
    inception_weights: str | None
    max_real: int
    kid_subsets: int
    kid_subset_size: int
    pr_k: int
    resize: str
    feature_res: int
    fid_n_points: int
    metrics: list[str]
    seed: int
    device: str
    batch_size: int

    @classmethod
    def from_section(cls, sec: Mapping[str, Any], **tuning: Any) -> "FidConfig":
        """From the ``validate`` section (or part of it); ``tuning`` overrides :data:`FID_TUNING`."""
        from ..metrics.registry import get_metric  # the registry loads torch: only when a stage builds its config

        cfg = build(cls, "validate", sec, **{**FID_TUNING, **tuning})
        for name in cfg.metrics:
            try:
                get_metric(name)
            except KeyError as exc:
                raise ConfigError(f"'validate.metrics': {exc.args[0]}") from None
        return cfg


#: how the audit batches and searches: not config keys
MEMORIZATION_TUNING = {"batch_size": 128, "chunk": 2048, "max_heldout": 1000}


@dataclass
class MemorizationConfig:
    """``validate.memorization`` plus the knobs the audit needs from ``validate``."""

    pixel_res: int
    threshold: float
    gate: bool
    gallery: int
    features: str
    inception_weights: str | None
    resize: str
    feature_res: int
    device: str
    seed: int
    batch_size: int
    chunk: int
    max_heldout: int

    #: the ``validate`` keys it reads beside its own section
    FROM_VALIDATE = ("features", "inception_weights", "resize", "feature_res", "device", "seed")

    @classmethod
    def from_section(cls, sec: Mapping[str, Any], **tuning: Any) -> "MemorizationConfig":
        """From the ``validate`` config section (as given by ``stage('validate')``, or part of it);
        ``tuning`` overrides :data:`MEMORIZATION_TUNING`."""
        v = filled("validate", sec)
        return build(cls, "validate.memorization", v["memorization"],
                     **{k: v[k] for k in cls.FROM_VALIDATE}, **{**MEMORIZATION_TUNING, **tuning})
