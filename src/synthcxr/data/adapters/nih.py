"""NIH ChestX-ray14: ``Data_Entry_2017.csv`` + PNGs in ``images/`` or ``images_NNN/images/``.

Labels: ``Finding Labels`` is a ``|``-separated list in ChestX-ray14 spelling (``No Finding`` with a
space); a finding not listed is negative (the NIH labels are complete over their 14 findings).
A token outside the vocabulary quarantines the row. ``train_val_list.txt`` / ``test_list.txt`` are
honoured when present: the test list goes to test, val is carved from train_val by patient.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from ...config import ConfigError
from ...labels import NIH_LABELS, NO_FINDING
from ..decode import SourceImage, read_image_file
from ..dicom import normalise_sex, normalise_view, parse_age
from ..quarantine import Quarantine, QuarantineError
from .base import NAN, Adapter, LabelVocabulary, Record, index_files, iter_rows

CSV_NAMES = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")
REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")

VOCAB = LabelVocabulary({("No Finding" if n == NO_FINDING else n): n for n in NIH_LABELS})


def _read_list(path: Path) -> set[str]:
    with open(path) as fh:
        return {line.strip() for line in fh if line.strip()}


class NIHAdapter(Adapter):
    format = "nih"

    def check(self) -> None:
        root = self.require_root()
        self.csv_path = self.require_file([root / n for n in CSV_NAMES], "NIH label table Data_Entry_2017.csv")
        head = pd.read_csv(self.csv_path, nrows=0)
        missing = [c for c in REQUIRED_COLUMNS if c not in head.columns]
        if missing:
            raise ConfigError(f"'dataset.root': {self.csv_path} lacks column(s) {missing}; is it Data_Entry_2017.csv?")

    def _image_folders(self) -> list[Path]:
        root = self.root
        folders = [root / "images"]
        folders += sorted(p / "images" for p in root.glob("images_*") if p.is_dir())
        folders += sorted(p for p in root.glob("images_*") if p.is_dir())
        return folders

    def scan(self, quarantine: Quarantine) -> Iterator[Record]:
        self.vocabulary_labels(VOCAB)
        files = index_files(self._image_folders(), (".png", ".jpg", ".jpeg"))
        tv_path, test_path = self.root / "train_val_list.txt", self.root / "test_list.txt"
        train_val = _read_list(tv_path) if tv_path.is_file() else None
        test = _read_list(test_path) if test_path.is_file() else None
        if train_val is not None or test is not None:
            self.notes.append(
                "official split lists honoured: "
                + ", ".join(p.name for p, s in ((tv_path, train_val), (test_path, test)) if s is not None)
            )
        for row in iter_rows(self.csv_path):
            self.seen += 1
            name = row["Image Index"].strip()
            view = normalise_view(row.get("View Position", ""))
            if not self.accept_view(view):
                continue
            try:
                labels, other = self._labels(row["Finding Labels"])
                pid = row["Patient ID"].strip()
                if not pid:
                    raise QuarantineError("missing_metadata", "empty Patient ID")
                path = files.get(name)
                if path is None:
                    raise QuarantineError("missing_file", f"{name} not found under images/ or images_*/images/")
            except QuarantineError as err:
                quarantine.add_error(name, err)
                continue
            official = None
            if test is not None and name in test:
                official = "test"
            elif train_val is not None and name in train_val:
                official = "train_val"
            yield Record(
                source=name,
                image_id=name,
                patient_id=pid,
                view=view,
                sex=normalise_sex(row.get("Patient Gender", "")),
                age=parse_age(row.get("Patient Age", "")),
                labels=labels,
                official=official,
                ref=str(path),
                other_finding=other,
            )

    def _labels(self, findings: str) -> tuple[dict[str, float], float]:
        """``Finding Labels`` -> ({label: 1/0, NaN outside the NIH vocabulary}, other_finding)."""
        tokens = [t.strip() for t in str(findings).split("|") if t.strip()]
        if not tokens:
            raise QuarantineError("bad_label_value", "empty Finding Labels")
        unknown = [t for t in tokens if t not in VOCAB.mapping]
        if unknown:
            raise QuarantineError("unknown_label", f"Finding Labels {findings!r}: unknown {unknown}")
        present = {VOCAB.mapping[t] for t in tokens}
        if "No_Finding" in present and len(present) > 1:
            raise QuarantineError("bad_label_value", f"Finding Labels {findings!r}: 'No Finding' with findings")
        provided = VOCAB.provides()
        labels = {n: (1.0 if n in present else 0.0) if n in provided else NAN for n in self.labels}
        other = 1.0 if present - set(self.labels) - {NO_FINDING} else 0.0
        return labels, other

    def load(self, ref: Any, res: int, source: str) -> SourceImage:
        return read_image_file(ref, target=res, percentiles=self.cfg.intensity_percentiles)
