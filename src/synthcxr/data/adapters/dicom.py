"""A folder of DICOM files plus a label CSV (``dataset.label_csv``, default ``<root>/labels.csv``).

The CSV needs a ``file`` column (path relative to ``dataset.root``) and one column per canonical
label (``1``/``0``; ``-1`` follows ``dataset.chexpert_uncertain``; blank = unknown -> NaN, since a
generic table has no "not mentioned" convention). No_Finding is 0 when any finding column is 1; canonical
columns that are not configured feed ``other_finding``. Optional ``patient_id``, ``view``, ``sex``, ``age``
columns override the DICOM header (PatientID, ViewPosition, PatientSex, PatientAge). Other columns are
ignored with a warning. Pixels follow :mod:`synthcxr.data.dicom`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from ...config import ConfigError
from ...labels import CANONICAL_LABELS, NO_FINDING
from ..decode import SourceImage
from ..dicom import header_meta, normalise_sex, normalise_view, parse_age, read_dicom_gray, read_header
from ..quarantine import Quarantine, QuarantineError
from .base import NAN, Adapter, LabelVocabulary, Record, apply_uncertain, iter_rows, parse_label_value

META_COLUMNS = ("file", "patient_id", "view", "sex", "age")


class DicomAdapter(Adapter):
    format = "dicom"

    def check(self) -> None:
        root = self.require_root()
        if self.cfg.label_csv:
            p = Path(self.cfg.label_csv)
            cands = [p] if p.is_absolute() else [p, root / p]
            self.csv_path = self.require_file(cands, "label CSV", key="dataset.label_csv")
        else:
            self.csv_path = self.require_file([root / "labels.csv"], "label CSV labels.csv (or set dataset.label_csv)")
        cols = list(pd.read_csv(self.csv_path, nrows=0).columns)
        if "file" not in cols:
            raise ConfigError(f"'dataset.label_csv': {self.csv_path} has no 'file' column (columns: {cols})")
        self.label_columns = [c for c in cols if c in CANONICAL_LABELS]
        self.ignored_columns = [c for c in cols if c not in CANONICAL_LABELS and c not in META_COLUMNS]

    def scan(self, quarantine: Quarantine) -> Iterator[Record]:
        self.vocabulary_labels(LabelVocabulary({c: c for c in self.label_columns}))
        if self.ignored_columns:
            self.warnings.append(f"{self.csv_path.name}: non-canonical column(s) ignored: {self.ignored_columns}")
        self.notes.append("blank label cells are unknown (NaN)")
        for row in iter_rows(self.csv_path):
            self.seen += 1
            rel = row["file"].strip()
            try:
                if not rel:
                    raise QuarantineError("missing_metadata", "empty 'file' cell")
                values = {
                    n: apply_uncertain(parse_label_value(row[n], n), self.uncertain[n], blank=NAN)
                    for n in self.label_columns
                }
                labels = {n: values.get(n, NAN) for n in self.labels}
                if NO_FINDING in labels and any(v == 1.0 for n, v in values.items() if n != NO_FINDING):
                    labels[NO_FINDING] = 0.0
                others = [v for n, v in values.items() if n not in self.labels and n != NO_FINDING]
                other = 1.0 if any(v == 1.0 for v in others) else (NAN if any(v != v for v in others) else 0.0)
                path = self.root / rel
                meta = header_meta(read_header(path))
            except QuarantineError as err:
                quarantine.add_error(rel, err)
                continue
            view = normalise_view(row["view"]) if row.get("view", "").strip() else meta["view"]
            if not self.accept_view(view):
                continue
            pid = row.get("patient_id", "").strip() or meta["patient_id"]
            if not pid:
                quarantine.add(rel, "missing_metadata", "no PatientID in the header and no patient_id column value")
                continue
            sex = normalise_sex(row["sex"]) if row.get("sex", "").strip() else meta["sex"]
            age = parse_age(row["age"]) if row.get("age", "").strip() else meta["age"]
            yield Record(
                source=rel,
                image_id=rel,
                patient_id=pid,
                view=view,
                sex=sex,
                age=float(age) if age is not None and not (isinstance(age, float) and math.isnan(age)) else NAN,
                labels=labels,
                official=None,
                ref=str(path),
                other_finding=other,
            )

    def load(self, ref: Any, res: int, source: str) -> SourceImage:
        return SourceImage.of(read_dicom_gray(ref, self.cfg.intensity_percentiles))
