"""A released sample as a DICOM file: a Secondary Capture object marked synthetic, with reproducible bytes.

Hospitals and imaging-AI teams test their pipelines on DICOM. Each sample becomes one Secondary Capture
Image Storage object, MONOCHROME2, 8 bits, whose every value comes from the sample itself:

* UIDs (study, series, SOP instance) are derived from ``sample_id`` under a configurable root with
  :func:`pydicom.uid.generate_uid` and fixed entropy sources, so the same sample always gets the same UIDs
  and a rerun writes the same bytes; no date or time is written.
* Patient name and ID are synthetic and say so (``SYNTHETIC^<sample_id>``, ``SYN-<sample_id>``); nothing
  of the source collection enters. ImageType is ``DERIVED\\SECONDARY``, ConversionType ``SYN`` (the
  standard's code for a synthetic image) and the series description starts with ``SYNTHETIC``.
* Labels travel in a JSON sidecar beside each file (``<sample_id>.json``), not in private tags.

``finalize_archive`` writes them per release shard (:class:`DicomShardWriter`, ``dicom/shard-NNNNN/``) when
``archive.formats`` holds ``dicom``; ``verify`` checks them (:func:`check_dicom_shard`).
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from .layout import dicom_sidecar

#: pydicom's registered root for UIDs it generates; set archive.dicom_uid_root to your organisation's
DEFAULT_UID_ROOT = "1.2.826.0.1.3680043.8.498."
SERIES_DESCRIPTION = "SYNTHETIC chest X-ray (synthcxr)"
MANUFACTURER = "synthcxr"


def sample_uid(root: str, sample_id: str, kind: str) -> str:
    """A UID under ``root`` determined by ``sample_id`` and ``kind`` (study, series or instance)."""
    if not root.endswith(".") or len(root) > 32:
        raise ValueError(f"archive.dicom_uid_root: {root!r} must end with '.' and be at most 32 characters")
    return generate_uid(prefix=root, entropy_srcs=["synthcxr", kind, str(sample_id)])


def sample_dataset(image: np.ndarray, sample_id: str, archive_name: str, uid_root: str = DEFAULT_UID_ROOT) -> FileDataset:
    """The DICOM data set of one released image (``uint8 [R, R]``)."""
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 2:
        raise ValueError(f"sample {sample_id}: expected a uint8 [R, R] image, got {img.dtype} {img.shape}")
    sop = sample_uid(uid_root, sample_id, "instance")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = uid_root + "1"
    meta.ImplementationVersionName = "SYNTHCXR"
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop
    # patient: synthetic and saying so
    ds.PatientName = f"SYNTHETIC^{sample_id}"
    ds.PatientID = f"SYN-{sample_id}"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "SYNTHETIC: generated image, no patient"
    # study and series: one of each per sample, no dates (the bytes must not depend on when they were written)
    ds.StudyInstanceUID = sample_uid(uid_root, sample_id, "study")
    ds.SeriesInstanceUID = sample_uid(uid_root, sample_id, "series")
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "SYN"
    ds.AccessionNumber = ""
    ds.StudyDescription = f"SYNTHETIC archive {archive_name}"
    ds.Modality = "OT"
    ds.SeriesNumber = 1
    ds.SeriesDescription = SERIES_DESCRIPTION
    ds.BodyPartExamined = "CHEST"
    ds.Manufacturer = MANUFACTURER
    ds.ConversionType = "SYN"  # Secondary Capture Equipment: synthetic image
    # image
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(img.shape[0]), int(img.shape[1])
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(img).tobytes()
    return ds


def dicom_bytes(image: np.ndarray, sample_id: str, archive_name: str, uid_root: str = DEFAULT_UID_ROOT) -> bytes:
    """The file bytes of :func:`sample_dataset` (DICOM Part 10, explicit VR little endian)."""
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, sample_dataset(image, sample_id, archive_name, uid_root), enforce_file_format=True)
    return buf.getvalue()


def sidecar(sample_id: str, labels: Mapping[str, Any]) -> bytes:
    """The JSON sidecar of one sample: its id and every label (0/1), sorted keys, one line."""
    return (json.dumps({"sample_id": str(sample_id), "synthetic": True, "labels": {k: int(v) for k, v in labels.items()}},
                       sort_keys=True) + "\n").encode()


def read_dicom_sample(source: str | os.PathLike | Any, where: str | None = None) -> tuple[str, np.ndarray]:
    """``(sample_id, uint8 pixels)`` of an exported file (a path or an open binary file), checked to be one of
    ours: a synthetic Secondary Capture whose patient ID names its sample."""
    where = where or os.fspath(source)
    ds = pydicom.dcmread(source)
    pid = str(getattr(ds, "PatientID", ""))
    if getattr(ds, "ConversionType", "") != "SYN" or ds.SOPClassUID != SecondaryCaptureImageStorage or not pid.startswith("SYN-"):
        raise ValueError(f"{where}: not a synthcxr export (ConversionType {getattr(ds, 'ConversionType', None)!r}, "
                         f"PatientID {pid!r}); re-export it from the release")
    return pid[len("SYN-"):], np.asarray(ds.pixel_array, dtype=np.uint8)


def read_dicom_image(path: str | os.PathLike) -> np.ndarray:
    """The uint8 pixels of an exported file, checked to be one of ours."""
    return read_dicom_sample(path)[1]


class DicomShardWriter:
    """One release shard's DICOM files and sidecars, written into a temporary folder that is renamed to
    ``folder`` only when every sample is in (so a failed job leaves no partial shard)."""

    def __init__(self, folder: str | os.PathLike, label_names: Sequence[str], archive_name: str, uid_root: str):
        self.folder = Path(folder)
        self.tmp = self.folder.parent / f".tmp-{self.folder.name}"
        self.names, self.archive, self.root = list(label_names), archive_name, uid_root

    def __enter__(self) -> "DicomShardWriter":
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        return self

    def write(self, images: Sequence[np.ndarray], labels: np.ndarray, ids: Sequence[str]) -> None:
        for img, lab, sid in zip(images, labels, ids):
            (self.tmp / f"{sid}.dcm").write_bytes(dicom_bytes(img, sid, self.archive, self.root))
            (self.tmp / f"{sid}.json").write_bytes(sidecar(sid, dict(zip(self.names, lab))))

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        shutil.rmtree(self.folder, ignore_errors=True)
        os.replace(self.tmp, self.folder)


def check_dicom_shard(root: Path, rows: Any, label_names: Sequence[str], resolution: int) -> list[str]:
    """Problems of one release shard's DICOM files against its manifest ``rows``: each file is ours, names its
    sample, has the manifest's pixels (SHA-256) and its sidecar the manifest's labels."""
    from ..utils.hashing import pixel_sha256

    problems: list[str] = []
    for sid, rel, digest, lab in zip(rows["sample_id"].astype(str), rows["dicom_path"], rows["pixel_sha256"],
                                     rows[list(label_names)].to_numpy(np.int64)):
        p = root / str(rel)
        if not p.is_file():
            problems.append(f"{rel}: missing")
            continue
        try:
            got_id, img = read_dicom_sample(p, where=str(rel))
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if got_id != sid:
            problems.append(f"{rel}: the export of sample {got_id!r}, not of {sid!r}")
        if img.shape != (resolution, resolution) or pixel_sha256(img) != digest:
            problems.append(f"{rel}: pixels differ from the manifest's pixel_sha256 of sample {sid}")
        side = dicom_sidecar(str(rel))
        got = json.loads((root / side).read_text()).get("labels", {}) if (root / side).is_file() else None
        if got is None or [got.get(n) for n in label_names] != lab.tolist():
            problems.append(f"{side}: labels differ from the manifest of sample {sid}")
        if len(problems) > 5:
            break
    return problems
