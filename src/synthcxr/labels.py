"""Canonical pathology vocabulary shared by every stage: ChestX-ray14's 14 findings, CheXpert's others, No_Finding.

Spelling follows ChestX-ray14 (underscores for spaces). The CheXpert/MIMIC-CXR observations without a
ChestX-ray14 counterpart are canonical too, so that a source's every positive finding can be kept (and an
image positive for any of them is never No_Finding); see docs/datasets.md for each format's mapping.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

CANONICAL_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
    "Enlarged_Cardiomediastinum",
    "Lung_Opacity",
    "Lung_Lesion",
    "Pleural_Other",
    "Fracture",
    "Support_Devices",
    "No_Finding",
)

#: The ChestX-ray14 vocabulary (its 14 findings and No_Finding), the NIH adapter's labels.
NIH_LABELS: tuple[str, ...] = CANONICAL_LABELS[:14] + ("No_Finding",)

#: The findings the built-in phantom renders with known ground truth.
PHANTOM_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Nodule",
    "Mass",
    "Pneumothorax",
    "Consolidation",
    "No_Finding",
)

NO_FINDING = "No_Finding"


def check_labels(names: Iterable[str], where: str = "labels") -> list[str]:
    """Return ``names`` as a list, raising ``ValueError`` naming ``where`` for any non-canonical name."""
    out = list(names)
    unknown = [n for n in out if n not in CANONICAL_LABELS]
    if unknown:
        raise ValueError(
            f"{where}: unknown label(s) {unknown}; use canonical names: {', '.join(CANONICAL_LABELS)}"
        )
    if len(set(out)) != len(out):
        raise ValueError(f"{where}: duplicate label names in {out}")
    return out


def findings_of(labels: Sequence[str]) -> list[str]:
    """The labels that are findings (everything but No_Finding), order kept."""
    return [n for n in labels if n != NO_FINDING]


def combo_key(vector: Sequence[float], labels: Sequence[str]) -> str:
    """Human-readable key of a multi-label vector, e.g. ``Cardiomegaly+Effusion`` or ``No_Finding``."""
    present = [n for n, v in zip(labels, vector) if v >= 0.5 and n != NO_FINDING]
    return "+".join(present) if present else NO_FINDING


def parse_combo(key: str, labels: Sequence[str]) -> list[int]:
    """Inverse of :func:`combo_key`: ``"Effusion+Cardiomegaly"`` -> 0/1 vector over ``labels``."""
    parts = [p.strip() for p in key.split("+") if p.strip()]
    unknown = [p for p in parts if p not in labels]
    if unknown:
        raise ValueError(f"combination {key!r}: label(s) {unknown} not among configured labels {list(labels)}")
    present = set(parts)
    if present == {NO_FINDING} or not present:
        return [1 if n == NO_FINDING else 0 for n in labels]
    if NO_FINDING in present:
        raise ValueError(f"combination {key!r}: No_Finding cannot be combined with findings")
    return [1 if n in present else 0 for n in labels]
