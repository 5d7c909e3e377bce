"""CheXpert (v1.0 or v1.0-small): ``train.csv`` (+ ``valid.csv``) with JPEGs under the dataset folder.

``Path`` cells look like ``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg`` and are
resolved against the folder above the dataset folder, the dataset folder itself, or the dataset folder
with the leading component dropped (people unpack it in different places). The patient id is the
``patientNNNNN`` path component. ``valid.csv`` rows are the official validation split; train.csv
patients are then divided between train and test. Labels: see :mod:`.chexpert_vocab`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from ...config import ConfigError
from ..decode import SourceImage, read_image_file
from ..dicom import normalise_sex, parse_age
from ..quarantine import Quarantine, QuarantineError
from .base import Adapter, Record, iter_rows
from .chexpert_vocab import BLANK_NOTE, NO_FINDING_NOTE, VOCAB, check_observation_columns, map_observations, uncertain_note

DATASET_DIRS = ("CheXpert-v1.0-small", "CheXpert-v1.0")
_PATIENT = re.compile(r"(patient\d+)")


def chexpert_view(frontal_lateral: object, ap_pa: object) -> str:
    """``Frontal/Lateral`` + ``AP/PA`` -> PA / AP / LL / LATERAL / UNKNOWN."""
    fl = str(frontal_lateral or "").strip().lower()
    ap = str(ap_pa or "").strip().upper()
    if fl == "lateral":
        return "LL" if ap == "LL" else "LATERAL"
    if fl == "frontal":
        return ap if ap in ("AP", "PA") else "UNKNOWN"
    return "UNKNOWN"


class CheXpertAdapter(Adapter):
    format = "chexpert"

    def check(self) -> None:
        root = self.require_root()
        cands = [root] + [root / d for d in DATASET_DIRS]
        self.train_csv = self.require_file([c / "train.csv" for c in cands], "CheXpert train.csv")
        self.ds_dir = self.train_csv.parent
        valid = self.ds_dir / "valid.csv"
        self.valid_csv = valid if valid.is_file() else None
        for csv in (self.train_csv, self.valid_csv):
            if csv is None:
                continue
            cols = pd.read_csv(csv, nrows=0).columns
            missing = [c for c in ("Path", "Frontal/Lateral") if c not in cols]
            if missing:
                raise ConfigError(f"'dataset.root': {csv} lacks column(s) {missing}; is it a CheXpert table?")
            self.warnings.extend(check_observation_columns(cols, self.labels, csv))

    def _resolve(self, rel: str) -> Path | None:
        p = PurePosixPath(rel.strip())
        cands = [self.ds_dir.parent / p, self.ds_dir / p]
        if len(p.parts) > 1:
            cands.append(self.ds_dir.joinpath(*p.parts[1:]))
        for c in cands:
            if c.exists():
                return c
        return None

    def scan(self, quarantine: Quarantine) -> Iterator[Record]:
        self.vocabulary_labels(VOCAB)
        self.notes.append(BLANK_NOTE)
        self.notes.append(NO_FINDING_NOTE)
        self.notes.append(uncertain_note(self.uncertain, self.labels))
        tables = [(self.train_csv, "train_test" if self.valid_csv else None)]
        if self.valid_csv:
            tables.append((self.valid_csv, "val"))
            self.notes.append("official split honoured: valid.csv -> val; train.csv patients split into train/test")
        for csv, official in tables:
            for row in iter_rows(csv):
                self.seen += 1
                rel = row["Path"].strip()
                view = chexpert_view(row.get("Frontal/Lateral"), row.get("AP/PA"))
                if not self.accept_view(view):
                    continue
                try:
                    m = _PATIENT.search(rel)
                    if not m:
                        raise QuarantineError("missing_metadata", f"no patientNNNNN component in Path {rel!r}")
                    labels, other = map_observations(row, self.labels, self.uncertain)
                    path = self._resolve(rel)
                    if path is None:
                        raise QuarantineError("missing_file", f"{rel} not found under {self.ds_dir}")
                except QuarantineError as err:
                    quarantine.add_error(rel, err)
                    continue
                yield Record(
                    source=rel,
                    image_id=rel,
                    patient_id=m.group(1),
                    view=view,
                    sex=normalise_sex(row.get("Sex")),
                    age=parse_age(row.get("Age")),
                    labels=labels,
                    official=official,
                    ref=str(path),
                    other_finding=other,
                )

    def load(self, ref: Any, res: int, source: str) -> SourceImage:
        return read_image_file(ref, target=res, percentiles=self.cfg.intensity_percentiles)
