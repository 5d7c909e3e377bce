"""Synthetic DICOM export: valid Secondary Capture objects (dciodvfy, dcmdump), reproducible bytes, UIDs
from the sample id, synthetic identity only, pixels read back exactly."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import UID

from synthcxr.archive.dicom_export import dicom_bytes, read_dicom_image, sample_uid, sidecar


def _tools() -> None:
    """dcmtk's dcmdump and dicom3tools' dciodvfy, installed as root from Debian when missing."""
    if shutil.which("dciodvfy") and shutil.which("dcmdump"):
        return
    cmd = "apt-get install -y -q dcmtk dicom3tools || (apt-get update -q && apt-get install -y -q dcmtk dicom3tools)"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=900)
    if not (shutil.which("dciodvfy") and shutil.which("dcmdump")):
        pytest.skip(f"dcmtk / dicom3tools not installable here (apt-get exit {proc.returncode}): {proc.stderr[-300:]}")


def _image(seed: int = 0, res: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (res, res), dtype=np.uint8)


def test_export_is_a_valid_secondary_capture(tmp_path):
    _tools()
    path = tmp_path / "s0000001.dcm"
    path.write_bytes(dicom_bytes(_image(), "s0000001", "demo"))
    ver = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    out = ver.stdout + ver.stderr
    assert "SCImage" in out and "Error" not in out, out
    dump = subprocess.run(["dcmdump", str(path)], capture_output=True, text=True, timeout=120)
    assert dump.returncode == 0 and "E:" not in dump.stderr and "W:" not in dump.stderr, dump.stderr
    assert "MONOCHROME2" in dump.stdout and "[SYN]" in dump.stdout and "DERIVED\\SECONDARY" in dump.stdout


def test_bytes_uids_identity_and_pixels(tmp_path):
    img = _image(3, 32)
    a, b = dicom_bytes(img, "s0000007", "demo"), dicom_bytes(img, "s0000007", "demo")
    assert a == b  # a rerun writes the same bytes
    (tmp_path / "a.dcm").write_bytes(a)
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    np.testing.assert_array_equal(read_dicom_image(tmp_path / "a.dcm"), img)
    uids = [ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID]
    assert len(set(uids)) == 3 and all(UID(u).is_valid for u in uids) and ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.SOPInstanceUID == sample_uid("1.2.826.0.1.3680043.8.498.", "s0000007", "instance")
    other = pydicom.dcmread(pydicom.filebase.DicomBytesIO(dicom_bytes(img, "s0000008", "demo")))
    assert not {other.StudyInstanceUID, other.SeriesInstanceUID, other.SOPInstanceUID} & set(uids)
    mine = pydicom.dcmread(pydicom.filebase.DicomBytesIO(dicom_bytes(img, "s0000007", "demo", uid_root="1.2.3.")))
    assert mine.SOPInstanceUID.startswith("1.2.3.") and mine.SOPInstanceUID != ds.SOPInstanceUID
    # identity: synthetic and saying so; ImageType and ConversionType mark the image synthetic
    assert str(ds.PatientName) == "SYNTHETIC^s0000007" and ds.PatientID == "SYN-s0000007" and ds.PatientIdentityRemoved == "YES"
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"] and ds.ConversionType == "SYN"
    assert ds.SeriesDescription.startswith("SYNTHETIC") and "StudyDate" in ds and ds.StudyDate == ""
    with pytest.raises(ValueError, match="must end with"):
        sample_uid("1.2.3", "s1", "study")
    with pytest.raises(ValueError, match="uint8"):
        dicom_bytes(img.astype(np.float32), "s1", "demo")


def test_sidecar_and_foreign_files(tmp_path):
    assert json.loads(sidecar("s1", {"Effusion": 1.0, "Mass": 0})) == {"labels": {"Effusion": 1, "Mass": 0}, "sample_id": "s1", "synthetic": True}
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(dicom_bytes(_image(1, 16), "s1", "demo")))
    del ds.ConversionType
    ds.save_as(tmp_path / "foreign.dcm", enforce_file_format=True)
    with pytest.raises(ValueError, match="foreign.dcm: not a synthcxr export"):
        read_dicom_image(tmp_path / "foreign.dcm")


def test_release_with_dicom_is_verified_read_and_streamed(tmp_path):
    """archive.formats [h5, dicom]: one file and sidecar per released sample, covered by verify and the seal,
    read by open() and stream(), identical bytes on a rerun; a changed pixel fails verify naming the file."""
    from archive_fixtures import build_archive

    import synthcxr.archive as sa
    from synthcxr.archive.verify import verify_release

    arch = build_archive(tmp_path / "a", formats=("h5", "dicom"))
    rel = arch["release"]
    man = pd.read_parquet(rel / "manifest.parquet")
    assert man["dicom_path"].tolist() == [f"dicom/shard-{s:05d}/{i}.dcm" for s, i in zip(man["shard"], man["sample_id"])]
    assert sorted(p.relative_to(rel).as_posix() for p in (rel / "dicom").rglob("*.dcm")) == sorted(man["dicom_path"])
    sums = (rel / "SHA256SUMS").read_text()
    assert all(p in sums and p[:-4] + ".json" in sums for p in man["dicom_path"])
    assert all(c.ok for c in verify_release(rel)), [c.line() for c in verify_release(rel) if not c.ok]
    arc = sa.open(rel)
    for sid in man["sample_id"]:
        np.testing.assert_array_equal(arc.read_dicom(sid), arc.read(sid))
    side = json.loads((rel / man["dicom_path"].iloc[0]).with_suffix(".json").read_text())
    assert side["labels"] == {n: int(man[n].iloc[0]) for n in arc.label_names} and side["synthetic"] is True
    via_dcm = {it["sample_id"]: it["image"] for it in sa.stream(rel, format="dicom", decode="uint8")}
    via_h5 = {it["sample_id"]: it["image"] for it in sa.stream(rel, format="h5", decode="uint8")}
    assert via_dcm.keys() == via_h5.keys() and all(np.array_equal(via_dcm[k], via_h5[k]) for k in via_h5)
    again = build_archive(tmp_path / "b", formats=("h5", "dicom"), name="a")
    first = rel / man["dicom_path"].iloc[3]
    assert first.read_bytes() == (again["release"] / man["dicom_path"].iloc[3]).read_bytes()
    # a changed pixel: verify names the file (and the seal's checksum)
    ds = pydicom.dcmread(first)
    px = ds.pixel_array.copy()
    px[0, 0] ^= 1
    ds.PixelData = px.tobytes()
    ds.save_as(first, enforce_file_format=True)
    bad = [c for c in verify_release(rel) if not c.ok]
    assert any("pixels differ from the manifest" in c.line() for c in bad) and any("checksum mismatch" in c.line() for c in bad)
