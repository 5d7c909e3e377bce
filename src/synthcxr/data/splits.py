"""Patient pseudonyms and patient-level train/val/test splits.

Images of one patient are highly correlated; a patient in two splits leaks test information into
training and inflates every downstream metric (classifier AUROC, TSTR, memorisation audit). So the
unit of splitting is the patient, identified only by a salted SHA-256 pseudonym.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

SPLITS: tuple[str, ...] = ("train", "val", "test")

#: Official split tags an adapter may attach to a record -> the splits that record's patient may go to.
#: ``train_val``: an official train+val pool (e.g. NIH train_val_list.txt) from which val is carved.
#: ``train_test``: an official pool without its own test list (CheXpert train.csv beside valid.csv).
OFFICIAL_TAGS: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "val": ("val",),
    "test": ("test",),
    "train_val": ("train", "val"),
    "train_test": ("train", "test"),
}
# When one patient's images carry different tags, the most restrictive held-out tag wins.
_TAG_PRIORITY = ("test", "val", "train", "train_test", "train_val")


def patient_key(raw_id: object, salt: str) -> str:
    """Salted SHA-256 (hex) of a raw patient id.

    Salting stops anyone holding the public source id list from reversing the key by hashing every id;
    the salt is per release (``dataset.patient_salt``). Ids are normalised with ``str().strip()``.
    """
    if not salt:
        raise ValueError("dataset.patient_salt must be a non-empty string")
    raw = str(raw_id).strip()
    if not raw:
        raise ValueError("empty patient id")
    return hashlib.sha256(f"{salt}\x00{raw}".encode()).hexdigest()


def pseudonym(source_id: object, salt: str, prefix: str = "img-", length: int = 16) -> str:
    """Short salted hash of a source image id, used where source names embed patient numbers."""
    digest = hashlib.sha256(f"{salt}\x01{source_id}".encode()).hexdigest()
    return f"{prefix}{digest[:length]}"


def _counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Split ``n`` items into integer counts proportional to ``fractions`` (largest remainder)."""
    f = np.asarray(fractions, dtype=np.float64)
    if f.sum() <= 0:
        f = np.ones_like(f)
    f = f / f.sum()
    raw = f * n
    base = np.floor(raw).astype(int)
    rest = n - int(base.sum())
    order = np.argsort(-(raw - base), kind="stable")
    base[order[:rest]] += 1
    return base.tolist()


def patient_tags(keys: Sequence[str], tags: Sequence[str | None]) -> dict[str, str | None]:
    """One official tag per patient: the most restrictive tag among that patient's images."""
    out: dict[str, str | None] = {}
    for k, t in zip(keys, tags):
        if t is not None and t not in OFFICIAL_TAGS:
            raise ValueError(f"unknown official split tag {t!r}; expected one of {sorted(OFFICIAL_TAGS)}")
        cur = out.get(k)
        if k not in out or (t is not None and (cur is None or _TAG_PRIORITY.index(t) < _TAG_PRIORITY.index(cur))):
            out[k] = t
    return out


def assign_splits(
    keys: Sequence[str],
    fractions: Mapping[str, float],
    seed: int,
    official: Sequence[str | None] | None = None,
) -> np.ndarray:
    """Split label per image (``train``/``val``/``test``), decided per patient.

    Patients are grouped by their official tag (``None`` = free). Each group is sorted by key, permuted
    with ``numpy.random.default_rng([seed, group])`` and cut into exact counts proportional to the
    configured fractions restricted to the splits that group allows (largest-remainder rounding). The
    result therefore depends only on the set of patients, the tags, the fractions and the seed, never
    on image order or the number of workers.
    """
    keys = [str(k) for k in keys]
    tags = list(official) if official is not None else [None] * len(keys)
    if len(tags) != len(keys):
        raise ValueError("official tags and keys differ in length")
    per_patient = patient_tags(keys, tags)
    groups: dict[str | None, list[str]] = {}
    for k, t in per_patient.items():
        groups.setdefault(t, []).append(k)
    decided: dict[str, str] = {}
    for gi, tag in enumerate([None, *_TAG_PRIORITY]):
        members = sorted(groups.get(tag, []))
        if not members:
            continue
        allowed = SPLITS if tag is None else OFFICIAL_TAGS[tag]
        counts = _counts(len(members), [float(fractions[s]) for s in allowed])
        rng = np.random.default_rng([int(seed), gi])
        perm = [members[i] for i in rng.permutation(len(members))]
        start = 0
        for split, c in zip(allowed, counts):
            for k in perm[start : start + c]:
                decided[k] = split
            start += c
    return np.array([decided[k] for k in keys], dtype=object)


def split_summary(table: pd.DataFrame, labels: Sequence[str]) -> dict[str, dict]:
    """Per split: images, patients, and prevalence of each label among images where it is known."""
    out: dict[str, dict] = {}
    for split in SPLITS:
        sub = table[table["split"] == split]
        prev: dict[str, float | None] = {}
        unknown: dict[str, int] = {}
        for name in labels:
            col = sub[name].astype(float)
            known = col.notna().sum()
            prev[name] = float(col.sum() / known) if known else None
            unknown[name] = int(col.isna().sum())
        out[split] = {
            "n_images": int(len(sub)),
            "n_patients": int(sub["patient_key"].nunique()),
            "prevalence": prev,
            "n_unknown": unknown,
        }
    return out
