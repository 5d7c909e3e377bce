"""Knobs of a phantom cohort (config section ``dataset.phantom``), validated with the offending key named.

Every knob's default reproduces the built-in phantom exactly (same labels, same pixels); the realistic
preset (``config/demo-realistic.yaml``) turns them up so that classifiers meet the difficulties of real
collections: subtle findings, varied anatomy and exposure, report-style label noise, support devices that
correlate with findings, and ChestX-ray14's prevalence. docs/datasets.md describes each knob.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from ...config import build
from ...labels import NO_FINDING, PHANTOM_LABELS

#: Findings the renderer draws (every phantom label except No_Finding), in PHANTOM_LABELS order.
FINDINGS: tuple[str, ...] = tuple(n for n in PHANTOM_LABELS if n != NO_FINDING)

#: ChestX-ray14's share of images with each finding (Wang et al., CVPR 2017: label counts over its
#: 112,120 images): Atelectasis 11,559, Cardiomegaly 2,776, Effusion 13,317, Mass 5,782, Nodule 6,331,
#: Pneumothorax 5,302, Consolidation 4,667.
CHESTXRAY14_PREVALENCE: dict[str, float] = {
    "Atelectasis": 11559 / 112120,
    "Cardiomegaly": 2776 / 112120,
    "Effusion": 13317 / 112120,
    "Nodule": 6331 / 112120,
    "Mass": 5782 / 112120,
    "Pneumothorax": 5302 / 112120,
    "Consolidation": 4667 / 112120,
}

#: CheXNet's per-pathology test AUROC on ChestX-ray14 (Rajpurkar et al. 2017, arXiv 1711.05225, Table 1):
#: the realistic preset's calibration target for the steering classifier.
CHEXNET_AUROC: dict[str, float] = {
    "Atelectasis": 0.8094,
    "Cardiomegaly": 0.9248,
    "Effusion": 0.8638,
    "Nodule": 0.7802,
    "Mass": 0.8676,
    "Pneumothorax": 0.8887,
    "Consolidation": 0.7901,
}

_SUBTLETY_KEYS = ("contrast", "size", "position_spread")
_VARIATION_KEYS = ("anatomy", "pose", "exposure")
_NOISE_KEYS = ("missed", "false_positive")
_DEVICE_KEYS = ("rate", "given")


def _number(v: Any, key: str, lo: float, hi: float, lo_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v):
        raise ValueError(f"dataset.phantom.{key}: must be a number, got {v!r}")
    v = float(v)
    if v < lo or v > hi or (lo_open and v == lo):
        left = "(" if lo_open else "["
        raise ValueError(f"dataset.phantom.{key}: must lie in {left}{lo}, {hi}], got {v!r}")
    return v


def _mapping(v: Any, key: str, allowed: tuple[str, ...]) -> dict:
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise ValueError(f"dataset.phantom.{key}: must be a mapping, got {type(v).__name__}")
    unknown = sorted(set(v) - set(allowed))
    if unknown:
        raise ValueError(f"dataset.phantom.{key}: unknown key(s) {unknown}; allowed: {', '.join(allowed)}")
    return dict(v)


def _per_finding(v: Any, key: str, lo: float, hi: float, lo_open: bool = False) -> dict[str, float]:
    return {n: _number(x, f"{key}.{n}", lo, hi, lo_open) for n, x in _mapping(v, key, FINDINGS).items()}


@dataclass
class PhantomConfig:
    """Size, seed and difficulty knobs of a phantom cohort (config section ``dataset.phantom``)."""

    n_patients: int
    max_studies: int
    seed: int
    #: null: the phantom's own model; "chestxray14" or {finding: share}: per-image prevalence targets
    prevalence: str | dict[str, float] | None
    #: draw every finding independently at its prevalence (no co-occurrence; oracle cohorts)
    independent_findings: bool
    #: {contrast: {finding: x}, size: {finding: x}, position_spread: x}; 1 = the built-in look
    subtlety: dict[str, Any]
    #: {anatomy: x, pose: x, exposure: x}: widths of the random ranges, 1 = the built-in spread
    variation: dict[str, float]
    #: {finding: {missed: p, false_positive: p}}: reported labels differ from the drawn findings
    label_noise: dict[str, dict[str, float]]
    #: {rate: p, given: {finding: p}}: chance of a drawn chest drain/line, higher with the given findings
    support_devices: dict[str, Any]

    def __post_init__(self) -> None:
        for key in ("n_patients", "max_studies"):
            v = getattr(self, key)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"dataset.phantom.{key}: must be a positive integer, got {v!r}")
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"dataset.phantom.seed: must be a non-negative integer, got {self.seed!r}")
        p = self.prevalence
        if isinstance(p, str):
            if p != "chestxray14":
                raise ValueError(f"dataset.phantom.prevalence: unknown preset {p!r}; use chestxray14 or a mapping")
        elif p is not None:
            self.prevalence = _per_finding(p, "prevalence", 0.0, 0.5)
        if not isinstance(self.independent_findings, bool):
            raise ValueError(f"dataset.phantom.independent_findings: must be true or false, got {self.independent_findings!r}")
        if self.independent_findings and self.prevalence is None:
            raise ValueError("dataset.phantom.independent_findings: needs dataset.phantom.prevalence (the rate of each finding)")
        sub = _mapping(self.subtlety, "subtlety", _SUBTLETY_KEYS)
        self.subtlety = {
            **{k: _per_finding(sub[k], f"subtlety.{k}", 0.0, 4.0, lo_open=True) for k in ("contrast", "size") if k in sub},
            **({"position_spread": _number(sub["position_spread"], "subtlety.position_spread", 0.5, 2.0)}
               if "position_spread" in sub else {}),
        }
        var = _mapping(self.variation, "variation", _VARIATION_KEYS)
        self.variation = {k: _number(x, f"variation.{k}", 0.0, 3.0) for k, x in var.items()}
        noise = _mapping(self.label_noise, "label_noise", FINDINGS)
        self.label_noise = {
            n: {k: _number(x, f"label_noise.{n}.{k}", 0.0, 0.5) for k, x in _mapping(d, f"label_noise.{n}", _NOISE_KEYS).items()}
            for n, d in noise.items()
        }
        dev = _mapping(self.support_devices, "support_devices", _DEVICE_KEYS)
        self.support_devices = {
            **({"rate": _number(dev["rate"], "support_devices.rate", 0.0, 1.0)} if "rate" in dev else {}),
            **({"given": _per_finding(dev["given"], "support_devices.given", 0.0, 1.0)} if "given" in dev else {}),
        }

    @classmethod
    def from_section(cls, d: Mapping | None) -> "PhantomConfig":
        """From the ``dataset.phantom`` section (or part of it; the schema fills the rest); a
        ConfigError names a bad key."""
        return build(cls, "dataset.phantom", dict(d or {}))

    # --- derived views the cohort and renderer use -------------------------------------------------
    def targets(self) -> dict[str, float] | None:
        """Per-image prevalence target of each finding, or None for the built-in model."""
        if self.prevalence is None:
            return None
        base = dict(CHESTXRAY14_PREVALENCE) if self.prevalence == "chestxray14" else {}
        if isinstance(self.prevalence, dict):
            missing = [n for n in FINDINGS if n not in self.prevalence]
            if missing:
                base.update({n: CHESTXRAY14_PREVALENCE[n] for n in missing})
            base.update(self.prevalence)
        # The targets are shares of *reported* labels (what a collection publishes): with label noise the
        # drawn share is (t - fp) / (1 - missed - fp), so that misses and false reports add back up to t.
        for n, d in self.label_noise.items():
            m, f = d.get("missed", 0.0), d.get("false_positive", 0.0)
            base[n] = float(np.clip((base[n] - f) / max(1.0 - m - f, 1e-6), 0.001, 0.5))
        return base

    def contrast(self, name: str) -> float:
        return float(self.subtlety.get("contrast", {}).get(name, 1.0))

    def size(self, name: str) -> float:
        return float(self.subtlety.get("size", {}).get(name, 1.0))

    @property
    def position_spread(self) -> float:
        return float(self.subtlety.get("position_spread", 1.0))

    def spread(self, kind: str) -> float:
        return float(self.variation.get(kind, 1.0))

    @property
    def noisy(self) -> bool:
        """Whether any reported label can differ from the drawn finding."""
        return any(v > 0 for d in self.label_noise.values() for v in d.values())

    @property
    def devices(self) -> bool:
        """Whether support devices can be drawn at all."""
        return self.support_devices.get("rate", 0.0) > 0 or any(v > 0 for v in self.support_devices.get("given", {}).values())

    def render_knobs(self) -> dict[str, Any]:
        """The knobs that change pixels (not labels), as stored in each cohort row's ``knobs`` entry."""
        return {"subtlety": self.subtlety, "variation": self.variation} if (self.subtlety or self.variation) else {}

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def oracle(self, n_patients: int, prevalence: float, device_rate: float, seed_offset: int = 1000) -> "PhantomConfig":
        """The cohort an oracle trains on: same look, clean labels, independent findings and devices."""
        return replace(
            self,
            n_patients=n_patients,
            seed=self.seed + seed_offset,
            prevalence={n: prevalence for n in FINDINGS},
            independent_findings=True,
            label_noise={},
            support_devices={"rate": device_rate} if device_rate > 0 else {},
        )
