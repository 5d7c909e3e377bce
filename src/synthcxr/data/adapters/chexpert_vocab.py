"""The 14 CheXpert observations (shared by CheXpert and MIMIC-CXR's chexpert labels) -> canonical names.

Choices, recorded in prepare.json:

* Every observation has a canonical name: ``Pleural Effusion`` -> ``Effusion``, ``No Finding`` ->
  ``No_Finding``, the others with underscores for spaces (``Lung Opacity`` -> ``Lung_Opacity``, ...).
  ``Lung Lesion`` stays its own label: it covers both nodules and masses, so configured ``Nodule``/``Mass``
  columns are NaN (unknown) for these sources.
* Blank cells follow the CheXpert convention "not mentioned in the report" and become 0; ``-1``
  (uncertain) follows ``dataset.chexpert_uncertain``, globally or per label (ones -> 1, zeros -> 0,
  ignore -> NaN).
* ``No_Finding`` is 0 whenever any other observation resolves to 1 (Support Devices included, so a
  No_Finding sample carries no device either), whether or not that observation is configured; otherwise it
  is the source's own ``No Finding`` cell.
* ``other_finding`` is 1 when an observation that is *not* configured resolves to 1, so such an image is
  never counted as No_Finding by the label plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ...labels import NO_FINDING
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
        src: {"No Finding": NO_FINDING, "Pleural Effusion": "Effusion"}.get(src, src.replace(" ", "_"))
        for src in OBSERVATIONS
    }
)

#: Observations that are findings (everything but No Finding), source spelling.
FINDING_OBSERVATIONS: tuple[str, ...] = tuple(o for o in OBSERVATIONS if o != "No Finding")

BLANK_NOTE = "blank observation cells mean 'not mentioned' and are treated as 0 (CheXpert convention)"
NO_FINDING_NOTE = (
    "No_Finding is 0 whenever any observation (configured or not, Support Devices included) resolves to 1; "
    "other_finding marks images positive only for unconfigured observations"
)


def check_observation_columns(columns: Sequence[str], labels: Sequence[str], table: object) -> list[str]:
    """ConfigError when a configured label's observation column is missing; warnings for other missing ones."""
    from ...config import ConfigError

    missing = [o for o in OBSERVATIONS if o not in columns]
    needed = [o for o in missing if VOCAB.mapping[o] in labels]
    if needed:
        raise ConfigError(
            f"'dataset.root': {table} lacks the observation column(s) {needed} that configured labels "
            f"{[VOCAB.mapping[o] for o in needed]} need; is it a CheXpert-style label table?"
        )
    return [f"{table}: no column(s) {missing}: treated as blank (not mentioned)"] if missing else []


def map_observations(
    row: Mapping[str, object], labels: Sequence[str], policy: Mapping[str, str]
) -> tuple[dict[str, float], float]:
    """A CheXpert-style row -> ({canonical label: 1/0/NaN} over ``labels``, other_finding).

    ``policy`` maps every canonical label to ones/zeros/ignore (see
    :func:`~synthcxr.data.adapters.base.uncertain_policy`). A missing observation column counts as
    blank. Raises QuarantineError for values other than 1, 0, -1 or blank.
    """
    configured = set(labels)
    resolved: dict[str, float] = {}
    for src in FINDING_OBSERVATIONS:
        canon = VOCAB.mapping[src]
        resolved[canon] = apply_uncertain(parse_label_value(row.get(src), src), policy[canon], blank=0.0)
    any_positive = any(v == 1.0 for v in resolved.values())
    no_finding = apply_uncertain(parse_label_value(row.get("No Finding"), "No Finding"), policy[NO_FINDING], blank=0.0)
    resolved[NO_FINDING] = 0.0 if any_positive else no_finding
    others = [v for c, v in resolved.items() if c not in configured and c != NO_FINDING]
    if any(v == 1.0 for v in others):
        other = 1.0
    elif any(v != v for v in others):  # NaN: an unconfigured observation left unknown
        other = NAN
    else:
        other = 0.0
    return {n: resolved.get(n, NAN) for n in labels}, other


def uncertain_note(policy: Mapping[str, str], labels: Sequence[str]) -> str:
    """prepare.json note listing the uncertainty policy of each configured label."""
    groups: dict[str, list[str]] = {}
    for n in labels:
        if n != NO_FINDING:
            groups.setdefault(policy[n], []).append(n)
    word = {"ones": "1 (U-Ones)", "zeros": "0 (U-Zeros)", "ignore": "NaN (U-Ignore)"}
    parts = [f"{', '.join(names)} -> {word[p]}" for p, names in sorted(groups.items())]
    return "uncertain (-1) observations (dataset.chexpert_uncertain): " + "; ".join(parts)
