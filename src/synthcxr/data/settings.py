"""The ``dataset`` config section as the prepare stage and its adapters read it: the checked
:class:`PrepareConfig`, the patient split fractions and the CheXpert uncertainty policy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import GLOBAL_KEYS, ConfigError, build
from .pyramid import pyramid_levels

UNCERTAIN_POLICIES = ("ones", "zeros", "ignore")


def uncertain_policy(spec: str | Mapping[str, str], where: str = "dataset.chexpert_uncertain") -> dict[str, str]:
    """``dataset.chexpert_uncertain`` -> {canonical label: ones/zeros/ignore} for every canonical label.

    ``spec`` is one policy for all labels, or a mapping of canonical label names to policies with an
    optional ``default`` (``ones`` when absent), e.g. the CheXpert paper's
    ``{default: zeros, Atelectasis: ones, Edema: ones}``. Raises ``ValueError`` naming the bad key.
    """
    from ..labels import CANONICAL_LABELS

    if isinstance(spec, str):
        spec = {"default": spec}
    if not isinstance(spec, Mapping):
        raise ValueError(f"'{where}': expected ones/zeros/ignore or a mapping label -> policy, got {spec!r}")
    for key, value in spec.items():
        if key != "default" and key not in CANONICAL_LABELS:
            raise ValueError(f"'{where}.{key}': not a canonical label name (use e.g. Effusion, Lung_Opacity) or 'default'")
        if value not in UNCERTAIN_POLICIES:
            raise ValueError(f"'{where}.{key}': {value!r} is not one of {', '.join(UNCERTAIN_POLICIES)}")
    default = spec.get("default", "ones")
    return {n: str(spec.get(n, default)) for n in CANONICAL_LABELS}


@dataclass
class SplitConfig:
    """Patient-level split fractions (must sum to 1) and the seed of the patient permutation."""

    train: float
    val: float
    test: float
    seed: int

    def fractions(self) -> dict[str, float]:
        return {"train": self.train, "val": self.val, "test": self.test}


@dataclass
class PrepareConfig:
    """The ``dataset`` config section (see config/schemas/config.schema.yaml)."""

    name: str
    format: str
    root: str | None
    max_res: int
    views: tuple[str, ...]
    split: SplitConfig
    patient_salt: str
    workers: int
    chexpert_uncertain: str | dict[str, str]
    label_csv: str | None
    intensity_percentiles: tuple[float, float]
    min_source_size: int
    decode_mem_mb: int
    phantom: dict[str, Any]

    def __post_init__(self) -> None:
        if isinstance(self.split, Mapping):
            self.split = build(SplitConfig, "dataset.split", self.split)
        self.views = tuple(self.views)
        try:
            pyramid_levels(int(self.max_res))
        except ValueError as exc:
            raise ConfigError(f"'dataset.max_res': {exc}") from None
        fr = self.split.fractions()
        if any(v < 0 for v in fr.values()) or abs(sum(fr.values()) - 1.0) > 1e-6:
            raise ConfigError(f"'dataset.split': fractions must be >= 0 and sum to 1, got {fr}")
        try:
            uncertain_policy(self.chexpert_uncertain)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        pct = tuple(float(v) for v in self.intensity_percentiles)
        if len(pct) != 2 or not 0.0 <= pct[0] < pct[1] <= 100.0:
            raise ConfigError(
                f"'dataset.intensity_percentiles': need [low, high] with 0 <= low < high <= 100, got {list(pct)}"
            )
        self.intensity_percentiles = pct
        if int(self.min_source_size) < 0:
            raise ConfigError(f"'dataset.min_source_size': must be >= 0, got {self.min_source_size}")
        if int(self.decode_mem_mb) < 1:
            raise ConfigError(f"'dataset.decode_mem_mb': must be >= 1, got {self.decode_mem_mb}")
        if not self.patient_salt or len(self.patient_salt) < 8:
            raise ConfigError("'dataset.patient_salt': use a secret string of at least 8 characters")
        if int(self.workers) < 0:
            raise ConfigError(f"'dataset.workers': must be >= 0, got {self.workers}")

    @classmethod
    def from_section(cls, d: Mapping[str, Any]) -> "PrepareConfig":
        """From the ``dataset`` section (or part of it; the schema fills the rest). The global keys
        seed/device/labels are ignored; a ConfigError names an unknown or bad key."""
        d = {k: v for k, v in dict(d).items() if k not in GLOBAL_KEYS}
        if "chexpert_uncertain" in d:  # its own check names the bad label or policy, the schema's only the key
            try:
                uncertain_policy(d["chexpert_uncertain"])
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        return build(cls, "dataset", d)
