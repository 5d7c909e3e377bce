"""DICOM display pipeline and the dicom folder adapter (PHI never leaves the source)."""

from __future__ import annotations

import math

import numpy as np
import pydicom
import pytest

from fixtures_real import PHI, check_common, dataset_config, make_dicom, read_outputs, write_dicom_folder
from synthcxr.data.dicom import parse_age, read_dicom_gray, window_linear
from synthcxr.data.prepare import prepare
from synthcxr.data.splits import patient_key

LABELS = ["Atelectasis", "Cardiomegaly", "Effusion", "Nodule"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("dcm")
    return root, write_dicom_folder(root)


def test_display_pipeline_against_hand_computation(folder):
    root, info = folder
    checked = 0
    for rel, f in info["files"].items():
        if f["expected"] is None:
            continue
        d = np.abs(np.rint(read_dicom_gray(root / rel)) - f["expected"].astype(float))
        # equal up to float32 rounding of values that land on .5 (inverted images round the other way)
        assert d.max() <= 1 and (d > 0).mean() < 0.02, (rel, d.max(), (d > 0).mean())
        checked += 1
    assert checked == 9  # the preamble-less file among them
    # lossy JPEG baseline: decoded through pylibjpeg, close to the source
    ds = pydicom.dcmread(root / "compressed/jpeg.dcm")
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    src = info["files"]["native/mono2.dcm"]["expected"].astype(float)
    jpeg = read_dicom_gray(root / "compressed/jpeg.dcm")
    assert np.abs(jpeg - src).mean() < 3.0


def test_compressed_syntaxes_really_compressed(folder):
    root, _ = folder
    for rel, uid in (("compressed/rle.dcm", pydicom.uid.RLELossless), ("compressed/j2k.dcm", pydicom.uid.JPEG2000Lossless)):
        assert pydicom.dcmread(root / rel).file_meta.TransferSyntaxUID == uid


def test_window_functions_hand_values():
    x = np.array([0.0, 99.5, 100.0, 149.5, 200.0, 1000.0])
    # LINEAR c=100 w=101: c-0.5=99.5, w-1=100 -> y = ((x-99.5)/100 + 0.5) * 255 clipped
    np.testing.assert_allclose(window_linear(x, 100, 101), [0, 127.5, 128.775, 255, 255, 255], atol=1e-4)
    np.testing.assert_allclose(window_linear(np.array([50.0, 100.0, 150.0]), 100, 100, "LINEAR_EXACT"), [0, 127.5, 255])
    np.testing.assert_allclose(window_linear(np.array([100.0]), 100, 50, "SIGMOID"), [127.5])


def test_view_names():
    from synthcxr.data.dicom import normalise_view

    assert [normalise_view(v) for v in ("pa", " AP ", "LL", "RL", "LATERAL", "", "AP  AXIAL", "PA LLD")] == [
        "PA", "AP", "LL", "LATERAL", "LATERAL", "UNKNOWN", "AP AXIAL", "PA LLD"]


def test_age_strings():
    assert parse_age("061Y") == 61 and parse_age("006M") == 0.5 and math.isnan(parse_age("")) and math.isnan(parse_age("150Y"))


def test_folder_adapter_labels_quarantine_and_views(folder, tmp_path):
    root, info = folder
    s = prepare(dataset_config("dicom", root, chexpert_uncertain="ignore"), LABELS, tmp_path)
    res = read_outputs(tmp_path)
    check_common(res, LABELS)
    t = res["labels"]
    kept = [r for r, f in info["files"].items() if f["kind"] in ("ok", "lossy")]
    assert len(t) == len(kept)
    assert dict(zip(res["quarantine"]["source"], res["quarantine"]["reason"])) == info["bad"]
    assert s["counts"]["filtered_by_view"] == {"LL": 1}
    by_kind = s["counts"]["quarantined_by_reason"]
    assert by_kind == {k: list(info["bad"].values()).count(k) for k in sorted(set(info["bad"].values()))}
    rows = dict(zip(kept, range(len(kept))))
    r = t.iloc[rows["native/window.dcm"]]  # labels "1,," : Effusion 1, Cardiomegaly blank, Nodule blank
    assert r["Effusion"] == 1 and math.isnan(r["Cardiomegaly"]) and math.isnan(r["Nodule"])
    assert math.isnan(t.iloc[rows["compressed/rle.dcm"]]["Nodule"])  # -1 with policy ignore
    assert t["Atelectasis"].isna().all()
    assert any("Atelectasis" in w for w in s["warnings"]) and any("Hernia_Grade" in w for w in s["warnings"])
    first = t.iloc[rows["native/mono2.dcm"]]
    assert first["patient_key"] == patient_key(PHI["PatientID"], "unit-test-salt")
    assert first["sex"] == "F" and first["age"] == 61 and first["view"] == "PA"
    assert t.iloc[rows["other_patient/b.dcm"]]["patient_key"] == patient_key("csv-patient-7", "unit-test-salt")
    # the stored 32 px image of the MONOCHROME1 file is the inverse of the MONOCHROME2 one (same pixels)
    a, b = res["images"][32][rows["native/mono2.dcm"]].astype(int), res["images"][32][rows["native/mono1.dcm"]].astype(int)
    assert np.abs(a + b - 255).max() <= 1


def test_no_phi_in_any_output(folder, tmp_path):
    root, _ = folder
    log = tmp_path / "prepare.log"
    prepare(dataset_config("dicom", root), LABELS, tmp_path / "out", log=log)
    blobs = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    blobs["log"] = log.read_bytes()
    assert set(blobs) == {"images.h5", "labels.parquet", "quarantine.csv", "prepare.json", "log"}
    needles = [*PHI.values(), "Doe", "MRN-000111", "csv-patient-7", "19620314"]
    for name, data in blobs.items():
        for needle in needles:
            assert needle.encode() not in data, (needle, name)


def test_header_only_object_without_pixels(tmp_path):
    from synthcxr.data.quarantine import QuarantineError

    ds = make_dicom(np.zeros((8, 8), np.uint8), with_pixels=False)
    ds.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    with pytest.raises(QuarantineError) as err:
        read_dicom_gray(tmp_path / "x.dcm")
    assert err.value.kind == "no_pixel_data"


def test_voi_lut_sequence_and_rgb(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    rng = np.random.default_rng(9)
    x = rng.integers(10, 240, (24, 24), dtype=np.uint8)
    ds = make_dicom(x)
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.add_new(0x00283006, "US", list(range(255, -1, -1)))  # LUTData reversing: output = 255 - input
    ds.VOILUTSequence = Sequence([item])
    ds.save_as(tmp_path / "lut.dcm", enforce_file_format=True)
    inv = 255.0 - x
    want = (inv - inv.min()) * 255.0 / (inv.max() - inv.min())
    assert np.abs(read_dicom_gray(tmp_path / "lut.dcm") - want).max() < 1e-3

    rgb = np.stack([x, x // 2, 255 - x], -1).astype(np.uint8)
    ds = make_dicom(x)
    ds.set_pixel_data(rgb, photometric_interpretation="RGB", bits_stored=8)
    ds.save_as(tmp_path / "rgb.dcm", enforce_file_format=True)
    want = rgb.astype(float) @ np.array([0.299, 0.587, 0.114])  # display values: luma, no window
    assert np.abs(read_dicom_gray(tmp_path / "rgb.dcm") - want).max() < 1e-3
