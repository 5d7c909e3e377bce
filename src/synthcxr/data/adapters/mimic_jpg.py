"""MIMIC-CXR-JPG 2.0.0: metadata, chexpert and split tables joined on subject/study/dicom ids.

Images live at ``files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg``. Labels come from
``mimic-cxr-2.0.0-chexpert.csv`` (per study; same observations and conventions as CheXpert, see
:mod:`.chexpert_vocab`); a study without a label row is quarantined. The official split
(``train``/``validate``/``test``; validate -> val) is honoured when the split table is present.
MIMIC-CXR-JPG carries no sex or age (those live in MIMIC-IV), so both are unknown.

Memory stays small at MIMIC's 377,110 images: only the needed columns are read, in chunks; the label
table is held as one float32 code matrix and the split table as int8 codes, each indexed by a 64-bit hash
of its key ((subject, study) and dicom id; pandas' ``hash_array``, a collision among 10^6 keys has
probability ~3e-8), and the metadata table is streamed in chunks. File existence is left to the decoder (which
quarantines a missing file as ``missing_file``), so the scan does no per-image filesystem calls.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.util import hash_array

from ...config import ConfigError
from ..decode import SourceImage, read_image_file
from ..dicom import normalise_view
from ..quarantine import Quarantine, QuarantineError
from .base import CHUNK_ROWS, Adapter, Record
from .chexpert_vocab import (
    BLANK_NOTE,
    NO_FINDING_NOTE,
    OBSERVATIONS,
    VOCAB,
    check_observation_columns,
    map_observations,
    uncertain_note,
)

PREFIX = "mimic-cxr-2.0.0-"
_SPLITS = {"train": "train", "validate": "val", "val": "val", "test": "test"}
_SPLIT_CODES = ("train", "val", "test")
#: Code of a label cell that is not 1, 0, -1 or blank (its raw text is kept for the quarantine reason).
_BAD = np.float32(99.0)


def _table(root: Path, kind: str) -> list[Path]:
    return [root / f"{PREFIX}{kind}.csv", root / f"{PREFIX}{kind}.csv.gz"]


def image_path(root: Path, subject_id: str, study_id: str, dicom_id: str) -> Path:
    """Official MIMIC-CXR-JPG location of one image."""
    return root / "files" / f"p{subject_id[:2]}" / f"p{subject_id}" / f"s{study_id}" / f"{dicom_id}.jpg"


def _need(columns: list[str], cols: tuple[str, ...], csv: Path) -> None:
    missing = [c for c in cols if c not in columns]
    if missing:
        raise ConfigError(f"'dataset.root': {csv} lacks column(s) {missing}")


def _read(csv: Path, cols: list[str], chunksize: int | None = None):
    return pd.read_csv(csv, usecols=cols, dtype=str, keep_default_na=False, chunksize=chunksize)


def key_hash(*columns: Sequence[str]) -> np.ndarray:
    """uint64 hash of one or more string columns, row-wise (the lookup key of the MIMIC tables)."""
    h = hash_array(np.asarray(columns[0], dtype=object))
    for col in columns[1:]:
        h = hash_array(h * np.uint64(0x9E3779B97F4A7C15) ^ hash_array(np.asarray(col, dtype=object)))
    return h


def label_codes(csv: Path, observations: list[str]) -> tuple[pd.Index, np.ndarray, dict[tuple[int, int], str]]:
    """The chexpert table as ((subject, study) hash index, float32 codes [n, obs], raw text of bad cells).

    Codes: 1, 0, -1, NaN (blank), 99 (anything else). Later rows of a repeated study are dropped.
    """
    keys, mats, bad = [], [], {}
    offset = 0
    for chunk in _read(csv, ["subject_id", "study_id", *observations], chunksize=CHUNK_ROWS):
        keys.append(key_hash(chunk["subject_id"].str.strip(), chunk["study_id"].str.strip()))
        mat = np.empty((len(chunk), len(observations)), np.float32)
        for j, obs in enumerate(observations):
            text = chunk[obs].str.strip()
            num = pd.to_numeric(text, errors="coerce").to_numpy(np.float64)
            blank = (text == "").to_numpy() | (text.str.lower() == "nan").to_numpy()
            ok = np.isin(num, (1.0, 0.0, -1.0))
            col = np.where(ok, num, np.nan).astype(np.float32)
            for i in np.flatnonzero(~ok & ~blank):
                bad[(offset + int(i), j)] = str(text.iloc[i])
                col[i] = _BAD
            mat[:, j] = col
        mats.append(mat)
        offset += len(chunk)
    index = pd.Index(np.concatenate(keys) if keys else np.zeros(0, np.uint64))
    codes = np.concatenate(mats) if mats else np.zeros((0, len(observations)), np.float32)
    first = ~index.duplicated(keep="first")
    if not first.all():
        keep = np.flatnonzero(first)
        remap = {old: new for new, old in enumerate(keep)}
        bad = {(remap[r], j): v for (r, j), v in bad.items() if r in remap}
        index, codes = index[first], codes[first]
    return index, codes, bad


class MimicJpgAdapter(Adapter):
    format = "mimic_jpg"

    def check(self) -> None:
        root = self.require_root()
        self.meta_csv = self.require_file(_table(root, "metadata"), f"{PREFIX}metadata.csv")
        self.label_csv = self.require_file(_table(root, "chexpert"), f"{PREFIX}chexpert.csv")
        split = [p for p in _table(root, "split") if p.is_file()]
        self.split_csv = split[0] if split else None
        meta_header = list(pd.read_csv(self.meta_csv, nrows=0).columns)
        _need(meta_header, ("dicom_id", "subject_id", "study_id"), self.meta_csv)
        self.meta_cols = [c for c in ("dicom_id", "subject_id", "study_id", "ViewPosition") if c in meta_header]
        label_cols = list(pd.read_csv(self.label_csv, nrows=0).columns)
        _need(label_cols, ("subject_id", "study_id"), self.label_csv)
        self.warnings.extend(check_observation_columns(label_cols, self.labels, self.label_csv.name))
        self.observations = [o for o in OBSERVATIONS if o in label_cols]
        if self.split_csv is not None:
            _need(list(pd.read_csv(self.split_csv, nrows=0).columns), ("dicom_id", "split"), self.split_csv)

    def _split_index(self) -> tuple[pd.Index, np.ndarray] | None:
        if self.split_csv is None:
            self.warnings.append(f"no {PREFIX}split.csv: patients split by dataset.split fractions")
            return None
        hashes, codes, unknown = [], [], set()
        to_code = {k: _SPLIT_CODES.index(v) for k, v in _SPLITS.items()}
        for sp in _read(self.split_csv, ["dicom_id", "split"], chunksize=CHUNK_ROWS):
            names = sp["split"].str.strip().str.lower()
            unknown |= set(names) - set(_SPLITS)
            codes.append(names.map(to_code).fillna(-1).to_numpy(np.int8))
            hashes.append(key_hash(sp["dicom_id"].str.strip()))
        if unknown:
            self.warnings.append(
                f"{self.split_csv.name}: unknown split value(s) {sorted(unknown)}: those images are quarantined"
            )
        index = pd.Index(np.concatenate(hashes) if hashes else np.zeros(0, np.uint64))
        codes = np.concatenate(codes) if codes else np.zeros(0, np.int8)
        first = ~index.duplicated(keep="first")
        self.notes.append("official split honoured (validate -> val)")
        return index[first], codes[first]

    def scan(self, quarantine: Quarantine) -> Iterator[Record]:
        self.vocabulary_labels(VOCAB)
        self.notes.append(BLANK_NOTE)
        self.notes.append(NO_FINDING_NOTE)
        self.notes.append(uncertain_note(self.uncertain, self.labels))
        self.notes.append("MIMIC-CXR-JPG has no sex/age: both columns are unknown")
        label_index, codes, bad = label_codes(self.label_csv, self.observations)
        split = self._split_index()
        for chunk in _read(self.meta_csv, self.meta_cols, chunksize=CHUNK_ROWS):
            ids = {c: chunk[c].str.strip().tolist() for c in ("dicom_id", "subject_id", "study_id")}
            views = chunk["ViewPosition"].tolist() if "ViewPosition" in chunk else [""] * len(chunk)
            lab_pos = label_index.get_indexer(key_hash(ids["subject_id"], ids["study_id"]))
            sp_pos = split[0].get_indexer(key_hash(ids["dicom_id"])) if split is not None else None
            for i, (did, sid, tid) in enumerate(zip(ids["dicom_id"], ids["subject_id"], ids["study_id"])):
                self.seen += 1
                path = image_path(self.root, sid, tid, did)
                rel = str(path.relative_to(self.root))
                view = normalise_view(views[i])
                if not self.accept_view(view):
                    continue
                try:
                    r = int(lab_pos[i])
                    if r < 0:
                        raise QuarantineError("no_label_row", f"study s{tid} has no row in {self.label_csv.name}")
                    row = {o: (bad[(r, j)] if v == _BAD else float(v)) for j, (o, v) in enumerate(zip(self.observations, codes[r]))}
                    mapped, other = map_observations(row, self.labels, self.uncertain)
                    official = None
                    if sp_pos is not None and sp_pos[i] >= 0:
                        code = int(split[1][sp_pos[i]])
                        if code < 0:
                            raise QuarantineError("missing_metadata", f"dicom {did}: unknown split value in {self.split_csv.name}")
                        official = _SPLIT_CODES[code]
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
                    other_finding=other,
                )

    def load(self, ref: Any, res: int, source: str) -> SourceImage:
        return read_image_file(ref, target=res, percentiles=self.cfg.intensity_percentiles)
