"""Phantom cohort: patients, follow-up studies and their labels, drawn from a small prevalence model.

The cohort is what makes the phantom useful for testing real-world pitfalls: several studies per patient
(so a split that ignores patients leaks), rare labels (Pneumothorax ~1.5 %, Mass ~2-3 %), chronic
findings that persist across follow-ups, and co-occurring findings (Effusion with Cardiomegaly,
Atelectasis with Effusion). Pixels are not made here; :mod:`.render` turns a row into an image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ...labels import NO_FINDING, PHANTOM_LABELS

#: Findings the renderer draws (every phantom label except No_Finding), in PHANTOM_LABELS order.
FINDINGS: tuple[str, ...] = tuple(n for n in PHANTOM_LABELS if n != NO_FINDING)
#: Findings fixed per patient: once present they stay in every later follow-up at the same place.
CHRONIC: tuple[str, ...] = ("Cardiomegaly", "Nodule", "Mass")


@dataclass
class PhantomConfig:
    """Size and seed of a phantom cohort (config section ``dataset.phantom``)."""

    n_patients: int = 700
    max_studies: int = 4
    seed: int = 11

    def __post_init__(self) -> None:
        for key in ("n_patients", "max_studies"):
            v = getattr(self, key)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"dataset.phantom.{key}: must be a positive integer, got {v!r}")
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"dataset.phantom.seed: must be a non-negative integer, got {self.seed!r}")

    @classmethod
    def from_dict(cls, d: dict | None) -> "PhantomConfig":
        """Build from a config mapping, naming any unknown key."""
        d = dict(d or {})
        unknown = sorted(set(d) - {"n_patients", "max_studies", "seed"})
        if unknown:
            raise ValueError(f"dataset.phantom: unknown key(s) {unknown}; allowed: n_patients, max_studies, seed")
        return cls(**d)


def seed_of(*parts: int) -> int:
    """A 31-bit seed derived from integer parts; stable across platforms and numpy versions."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint32)[0]
    return int(state) & 0x7FFFFFFF


def _p_cardiomegaly(age: float) -> float:
    # Rises with age: ~4 % in young adults, ~17 % at 85.
    return 0.04 + 0.13 * float(np.clip((age - 30.0) / 55.0, 0.0, 1.0))


def _chronic_onset(rng: np.random.Generator, p: float, n_studies: int) -> int | None:
    """Study index from which a chronic finding is present (None: never). Mostly present from the start."""
    if rng.random() >= p:
        return None
    if n_studies > 1 and rng.random() < 0.25:
        return int(rng.integers(1, n_studies))
    return 0


def sample_cohort(cfg: PhantomConfig) -> pd.DataFrame:
    """One row per study: ids, demographics, seeds and one 0/1 column per PHANTOM_LABELS entry.

    Columns: image_id ("ph00012_003"), patient_id ("ph00012"), study (0-based follow-up #, as NIH),
    view (PA/AP), sex (M/F), age, patient_seed (anatomy and chronic findings), render_seed (pose,
    exposure, acute findings, noise), then the labels. Deterministic in ``cfg``.
    """
    if not isinstance(cfg, PhantomConfig):
        raise TypeError(f"sample_cohort expects a PhantomConfig, got {type(cfg).__name__}")
    n_w = np.array([0.6**k for k in range(cfg.max_studies)])
    n_w /= n_w.sum()
    rows: list[dict] = []
    for p in range(cfg.n_patients):
        rng = np.random.default_rng([cfg.seed, p, 0])
        patient_seed = seed_of(cfg.seed, p, 1)
        n_studies = int(rng.choice(cfg.max_studies, p=n_w)) + 1
        sex = "M" if rng.random() < 0.5 else "F"
        age0 = int(np.clip(round(rng.normal(55.0, 17.0)), 18, 90))
        onset = {
            "Cardiomegaly": _chronic_onset(rng, _p_cardiomegaly(age0), n_studies),
            "Nodule": _chronic_onset(rng, 0.05, n_studies),
            "Mass": _chronic_onset(rng, 0.022, n_studies),
        }
        age = float(age0)
        for s in range(n_studies):
            if s:
                age += float(rng.uniform(0.05, 2.0))
            lab = {n: 0 for n in FINDINGS}
            for name, first in onset.items():
                lab[name] = int(first is not None and s >= first)
            lab["Effusion"] = int(rng.random() < (0.35 if lab["Cardiomegaly"] else 0.07))
            lab["Atelectasis"] = int(rng.random() < (0.30 if lab["Effusion"] else 0.055))
            lab["Consolidation"] = int(rng.random() < (0.10 if lab["Atelectasis"] else 0.045))
            lab["Pneumothorax"] = int(rng.random() < 0.015)
            sick = lab["Effusion"] or lab["Pneumothorax"] or lab["Consolidation"]
            view = "AP" if rng.random() < (0.55 if sick else 0.2) else "PA"
            row = {
                "image_id": f"ph{p:05d}_{s:03d}",
                "patient_id": f"ph{p:05d}",
                "study": s,
                "view": view,
                "sex": sex,
                "age": int(min(age, 95)),
                "patient_seed": patient_seed,
                "render_seed": seed_of(cfg.seed, p, 2, s),
            }
            for name in PHANTOM_LABELS:
                row[name] = lab[name] if name != NO_FINDING else int(not any(lab.values()))
            rows.append(row)
    df = pd.DataFrame(rows)
    int_cols = ["study", "age", "patient_seed", "render_seed", *PHANTOM_LABELS]
    return df.astype({c: "int64" for c in int_cols}).reset_index(drop=True)
