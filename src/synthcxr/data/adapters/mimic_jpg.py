"""MIMIC-CXR-JPG 2.0.0: metadata, chexpert and split tables joined on subject/study/dicom ids.

Images live at ``files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg``. Labels come from
``mimic-cxr-2.0.0-chexpert.csv`` (per study; same observations and conventions as CheXpert, see
:mod:`.chexpert_vocab`); a study without a label row is quarantined. The official split
(``train``/``validate``/``test``; validate -> val) is honoured when the split table is present.
MIMIC-CXR-JPG carries no sex or age (those live in MIMIC-IV), so both are unknown.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...config import ConfigError
from ..decode import load_square
from ..dicom import normalise_view
from ..quarantine import Quarantine, QuarantineError
from .base import Adapter, Record
from .chexpert_vocab import BLANK_NOTE, VOCAB, map_observations, uncertain_note

PREFIX = "mimic-cxr-2.0.0-"
_SPLITS = {"train": "train", "validate": "val", "val": "val", "test": "test"}


def _table(root: Path, kind: str) -> list[Path]:
    return [root / f"{PREFIX}{kind}.csv", root / f"{PREFIX}{kind}.csv.gz"]


def image_path(root: Path, subject_id: str, study_id: str, dicom_id: str) -> Path:
    """Official MIMIC-CXR-JPG location of one image."""
    return root / "files" / f"p{subject_id[:2]}" / f"p{subject_id}" / f"s{study_id}" / f"{dicom_id}.jpg"


def _ids(df: pd.DataFrame, cols: tuple[str, ...], csv: Path) -> pd.DataFrame:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ConfigError(f"'dataset.root': {csv} lacks column(s) {missing}")
    for c in cols:
        df[c] = df[c].astype(str).str.strip()
    return df


class MimicJpgAdapter(Adapter):
    format = "mimic_jpg"

    def check(self) -> None:
        root = self.require_root()
        self.meta_csv = self.require_file(_table(root, "metadata"), f"{PREFIX}metadata.csv")
        self.label_csv = self.require_file(_table(root, "chexpert"), f"{PREFIX}chexpert.csv")
        split = [p for p in _table(root, "split") if p.is_file()]
        self.split_csv = split[0] if split else None

    def scan(self, quarantine: Quarantine) -> Iterator[Record]:
        self.vocabulary_labels(VOCAB)
        self.notes.append(BLANK_NOTE)
        self.notes.append(uncertain_note(self.cfg.chexpert_uncertain))
        self.notes.append("MIMIC-CXR-JPG has no sex/age: both columns are unknown")
        meta = _ids(pd.read_csv(self.meta_csv, dtype=str, keep_default_na=False), ("dicom_id", "subject_id", "study_id"), self.meta_csv)
        labels = _ids(pd.read_csv(self.label_csv, dtype=str, keep_default_na=False), ("subject_id", "study_id"), self.label_csv)
        label_rows = {
            (s, t): dict(zip(labels.columns, vals))
            for s, t, vals in zip(labels["subject_id"], labels["study_id"], labels.itertuples(index=False))
        }
        split_of: dict[str, str] = {}
        if self.split_csv is not None:
            sp = _ids(pd.read_csv(self.split_csv, dtype=str, keep_default_na=False), ("dicom_id", "split"), self.split_csv)
            split_of = dict(zip(sp["dicom_id"], sp["split"].str.lower()))
            self.notes.append("official split honoured (validate -> val)")
        else:
            self.warnings.append(f"no {PREFIX}split.csv: patients split by dataset.split fractions")
        for values in meta.itertuples(index=False):
            row = dict(zip(meta.columns, values))
            self.seen += 1
            did, sid, tid = row["dicom_id"], row["subject_id"], row["study_id"]
            path = image_path(self.root, sid, tid, did)
            rel = str(path.relative_to(self.root))
            view = normalise_view(row.get("ViewPosition", ""))
            if not self.accept_view(view):
                continue
            try:
                lab = label_rows.get((sid, tid))
                if lab is None:
                    raise QuarantineError("no_label_row", f"study s{tid} has no row in {self.label_csv.name}")
                mapped = map_observations(lab, self.labels, self.cfg.chexpert_uncertain)
                official = None
                if did in split_of:
                    official = _SPLITS.get(split_of[did])
                    if official is None:
                        raise QuarantineError("missing_metadata", f"unknown split value {split_of[did]!r}")
                if not path.exists():
                    raise QuarantineError("missing_file", f"{rel} does not exist")
            except QuarantineError as err:
                quarantine.add_error(rel, err)
                continue
            yield Record(
                source=rel,
                image_id=did,
                patient_id=sid,
                view=view,
                sex=None,
                age=float("nan"),
                labels=mapped,
                official=official,
                ref=str(path),
            )

    def load(self, ref: Any, res: int, source: str) -> np.ndarray:
        return load_square(ref, res)
