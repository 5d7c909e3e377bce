"""The 14 CheXpert observations (shared by CheXpert and MIMIC-CXR's chexpert labels) -> canonical names.

Choices, recorded in prepare.json:

* ``Pleural Effusion`` -> ``Effusion``; ``No Finding`` -> ``No_Finding``; Atelectasis, Cardiomegaly,
  Consolidation, Edema, Pneumonia, Pneumothorax keep their names.
* ``Lung Lesion`` is **not mapped**: it covers both nodules and masses, so neither canonical label can
  be derived from it; configured ``Nodule``/``Mass`` columns are NaN for these sources.
* ``Enlarged Cardiomediastinum``, ``Lung Opacity``, ``Pleural Other``, ``Fracture`` and
  ``Support Devices`` have no canonical counterpart and are dropped.
* Blank cells follow the CheXpert convention "not mentioned in the report" and become 0; ``-1``
  (uncertain) follows ``dataset.chexpert_uncertain`` (ones -> 1, zeros -> 0, ignore -> NaN).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..quarantine import QuarantineError
from .base import NAN, LabelVocabulary, apply_uncertain, parse_label_value

OBSERVATIONS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

VOCAB = LabelVocabulary(
    mapping={
        "No Finding": "No_Finding",
        "Cardiomegaly": "Cardiomegaly",
        "Edema": "Edema",
        "Consolidation": "Consolidation",
        "Pneumonia": "Pneumonia",
        "Atelectasis": "Atelectasis",
        "Pneumothorax": "Pneumothorax",
        "Pleural Effusion": "Effusion",
    },
    unmapped_notes={
        "Lung Lesion": "covers both Nodule and Mass, so neither can be derived (those columns are NaN)",
        "Enlarged Cardiomediastinum": "no canonical counterpart (dropped)",
        "Lung Opacity": "no canonical counterpart (dropped)",
        "Pleural Other": "no canonical counterpart (dropped)",
        "Fracture": "no canonical counterpart (dropped)",
        "Support Devices": "no canonical counterpart (dropped)",
    },
)

BLANK_NOTE = "blank observation cells mean 'not mentioned' and are treated as 0 (CheXpert convention)"


def map_observations(row: Mapping[str, object], labels: Sequence[str], policy: str) -> dict[str, float]:
    """A CheXpert-style row -> {canonical label: 1/0/NaN} over ``labels``.

    Raises QuarantineError for values other than 1, 0, -1 or blank in any mapped observation.
    """
    values: dict[str, float] = {}
    for src, canon in VOCAB.mapping.items():
        if canon not in labels:
            continue
        if src not in row:
            raise QuarantineError("missing_metadata", f"no {src!r} column")
        values[canon] = apply_uncertain(parse_label_value(row[src], src), policy, blank=0.0)
    return {n: values.get(n, NAN) for n in labels}


def uncertain_note(policy: str) -> str:
    return {
        "ones": "uncertain (-1) observations mapped to 1 (dataset.chexpert_uncertain: ones)",
        "zeros": "uncertain (-1) observations mapped to 0 (dataset.chexpert_uncertain: zeros)",
        "ignore": "uncertain (-1) observations mapped to NaN (dataset.chexpert_uncertain: ignore)",
    }[policy]
