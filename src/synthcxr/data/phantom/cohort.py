"""Phantom cohort: patients, follow-up studies and their labels, drawn from a small prevalence model.

The cohort is what makes the phantom useful for testing real-world pitfalls: several studies per patient
(so a split that ignores patients leaks), rare labels (Pneumothorax ~1.5 %, Mass ~2-3 %), chronic
findings that persist across follow-ups, and co-occurring findings (Effusion with Cardiomegaly,
Atelectasis with Effusion). The knobs of :class:`PhantomConfig` add report-style label noise (the drawn
finding is kept in ``true_<finding>`` columns, the reported one in the label column), support devices
that correlate with findings (``support_device``), and ChestX-ray14's prevalence. Pixels are not made
here; :mod:`.render` turns a row into an image.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ...labels import NO_FINDING, PHANTOM_LABELS
from .config import FINDINGS, PhantomConfig

#: Findings fixed per patient: once present they stay in every later follow-up at the same place.
CHRONIC: tuple[str, ...] = ("Cardiomegaly", "Nodule", "Mass")
#: Relative risks of the prevalence-target model: P(Effusion | Cardiomegaly) / P(Effusion | none), etc.
#: Chosen so that about 4 in 10 Cardiomegaly images show Effusion and 1 in 4 Effusion images Atelectasis.
RELATIVE_RISK = {"Effusion": ("Cardiomegaly", 3.5), "Atelectasis": ("Effusion", 3.0), "Consolidation": ("Atelectasis", 3.0)}
#: Per-study share of a chronic finding relative to its per-patient probability (some appear at a follow-up).
_ONSET_SHARE = 0.93
#: Mean of :func:`_p_cardiomegaly` over the cohort's age distribution (measured on 10^6 draws).
_P_CARDIOMEGALY_MEAN = 0.0998


def seed_of(*parts: int) -> int:
    """A 31-bit seed derived from integer parts; stable across platforms and numpy versions."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint32)[0]
    return int(state) & 0x7FFFFFFF


def _p_cardiomegaly(age: float) -> float:
    # Rises with age: ~4 % in young adults, ~17 % at 85 (mean 10 % over the cohort's ages).
    return 0.04 + 0.13 * float(np.clip((age - 30.0) / 55.0, 0.0, 1.0))


def _chronic_onset(rng: np.random.Generator, p: float, n_studies: int) -> int | None:
    """Study index from which a chronic finding is present (None: never). Mostly present from the start."""
    if rng.random() >= p:
        return None
    if n_studies > 1 and rng.random() < 0.25:
        return int(rng.integers(1, n_studies))
    return 0


class _Rates:
    """Finding probabilities of one study: the built-in model, or prevalence targets with RELATIVE_RISK."""

    def __init__(self, cfg: PhantomConfig):
        self.t = cfg.targets()
        self.independent = cfg.independent_findings
        self.base: dict[str, float] = {}
        if self.t is None or self.independent:
            return
        for name, (parent, rr) in RELATIVE_RISK.items():
            q = self.t[parent]
            self.base[name] = self.t[name] / (1.0 - q + rr * q)

    def chronic(self, name: str, age: float) -> float:
        if self.t is None:
            return {"Nodule": 0.05, "Mass": 0.022}.get(name) or _p_cardiomegaly(age)
        scale = self.t[name] / _ONSET_SHARE
        return min(0.95, scale * _p_cardiomegaly(age) / _P_CARDIOMEGALY_MEAN) if name == "Cardiomegaly" and not self.independent else min(0.95, scale)

    def acute(self, name: str, lab: dict[str, int]) -> float:
        if self.t is None:
            return {
                "Effusion": 0.35 if lab["Cardiomegaly"] else 0.07,
                "Atelectasis": 0.30 if lab["Effusion"] else 0.055,
                "Consolidation": 0.10 if lab["Atelectasis"] else 0.045,
                "Pneumothorax": 0.015,
            }[name]
        if self.independent or name not in self.base:
            return self.t[name]
        parent, rr = RELATIVE_RISK[name]
        return min(0.95, self.base[name] * (rr if lab[parent] else 1.0))


def _reported(cfg: PhantomConfig, lab: dict[str, int], p: int, s: int) -> dict[str, int]:
    """Report-style labels: each finding missed or falsely reported at its configured rate."""
    rng = np.random.default_rng([cfg.seed, p, 3, s])
    u = rng.random(len(FINDINGS))
    out = {}
    for k, name in enumerate(FINDINGS):
        noise = cfg.label_noise.get(name, {})
        if lab[name]:
            out[name] = int(u[k] >= noise.get("missed", 0.0))
        else:
            out[name] = int(u[k] < noise.get("false_positive", 0.0))
    return out


def _device(cfg: PhantomConfig, lab: dict[str, int], p: int, s: int) -> int:
    """Whether a support device (chest drain, line) is drawn: the highest rate among the present findings."""
    dev = cfg.support_devices
    rate = max([dev.get("rate", 0.0)] + [v for n, v in dev.get("given", {}).items() if lab[n]])
    return int(np.random.default_rng([cfg.seed, p, 4, s]).random() < rate)


def sample_cohort(cfg: PhantomConfig) -> pd.DataFrame:
    """One row per study: ids, demographics, seeds and one 0/1 column per PHANTOM_LABELS entry.

    Columns: image_id ("ph00012_003"), patient_id ("ph00012"), study (0-based follow-up #, as NIH),
    view (PA/AP), sex (M/F), age, patient_seed (anatomy and chronic findings), render_seed (pose,
    exposure, acute findings, noise), then the labels (as reported). With label noise configured,
    ``true_<finding>`` columns hold what was drawn (and rendered); with support devices,
    ``support_device``; with subtlety or variation knobs, ``knobs`` (their JSON, read by the renderer).
    Deterministic in ``cfg``; the default knobs reproduce the built-in cohort exactly.
    """
    if not isinstance(cfg, PhantomConfig):
        raise TypeError(f"sample_cohort expects a PhantomConfig, got {type(cfg).__name__}")
    n_w = np.array([0.6**k for k in range(cfg.max_studies)])
    n_w /= n_w.sum()
    rates = _Rates(cfg)
    knobs = cfg.render_knobs()
    knobs_json = json.dumps(knobs, sort_keys=True) if knobs else None
    rows: list[dict] = []
    for p in range(cfg.n_patients):
        rng = np.random.default_rng([cfg.seed, p, 0])
        patient_seed = seed_of(cfg.seed, p, 1)
        n_studies = int(rng.choice(cfg.max_studies, p=n_w)) + 1
        sex = "M" if rng.random() < 0.5 else "F"
        age0 = int(np.clip(round(rng.normal(55.0, 17.0)), 18, 90))
        onset = {name: _chronic_onset(rng, rates.chronic(name, age0), n_studies) for name in CHRONIC}
        age = float(age0)
        for s in range(n_studies):
            if s:
                age += float(rng.uniform(0.05, 2.0))
            lab = {n: 0 for n in FINDINGS}
            for name, first in onset.items():
                lab[name] = int(first is not None and s >= first)
            for name in ("Effusion", "Atelectasis", "Consolidation", "Pneumothorax"):
                lab[name] = int(rng.random() < rates.acute(name, lab))
            sick = lab["Effusion"] or lab["Pneumothorax"] or lab["Consolidation"]
            view = "AP" if rng.random() < (0.55 if sick else 0.2) else "PA"
            rep = _reported(cfg, lab, p, s) if cfg.noisy else lab
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
                row[name] = rep[name] if name != NO_FINDING else int(not any(rep.values()))
            if cfg.noisy:
                row.update({f"true_{n}": lab[n] for n in FINDINGS})
            if cfg.devices:
                row["support_device"] = _device(cfg, lab, p, s)
            if knobs_json:
                row["knobs"] = knobs_json
            rows.append(row)
    df = pd.DataFrame(rows)
    int_cols = ["study", "age", "patient_seed", "render_seed", *PHANTOM_LABELS]
    int_cols += [c for c in df.columns if c.startswith("true_") or c == "support_device"]
    return df.astype({c: "int64" for c in int_cols}).reset_index(drop=True)


def true_labels(cohort: pd.DataFrame) -> pd.DataFrame:
    """The drawn findings of each study (``true_<finding>`` where label noise made them differ), by image_id."""
    out = pd.DataFrame(index=cohort["image_id"].astype(str).values)
    for n in FINDINGS:
        col = f"true_{n}" if f"true_{n}" in cohort.columns else n
        out[n] = cohort[col].astype(int).values
    out[NO_FINDING] = (out[list(FINDINGS)].sum(axis=1) == 0).astype(int)
    return out
