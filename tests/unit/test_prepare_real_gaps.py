"""What real exports carry that clean fixtures do not: 16-bit markers, padding, small sources,
preamble-less DICOM, the full CheXpert vocabulary with per-label uncertainty, and memory-sized decoders."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from fixtures_real import (
    CHEXPERT_OBS,
    check_common,
    dataset_cfg,
    dataset_config,
    make_dicom,
    percentile_window,
    read_outputs,
    synth_image,
    write_jpg,
    write_nih,
)
from synthcxr.config import ConfigError
from synthcxr.data.adapters.base import uncertain_policy
from synthcxr.data.decode import clip_to_bit_depth, intensity_window, read_image_file
from synthcxr.data.dicom import read_dicom_gray
from synthcxr.data.prepare import PrepareConfig, decode_workers, prepare
from synthcxr.lco.plan import PlanConfig, plan_counts
from synthcxr.utils.runtime import job_memory_mb


def _body12(seed: int = 0, shape=(96, 80)) -> np.ndarray:
    """A 12-bit 'body' (values ~600..3600) with smooth structure and noise."""
    rng = np.random.default_rng(seed)
    g = synth_image(rng, *shape).astype(np.float64)
    return np.clip(np.rint(600 + g * 12 + rng.normal(0, 8, shape)), 0, 4095).astype(np.uint16)


# ------------------------------------------------------------------------------------ 16-bit contrast
def test_burned_in_marker_no_longer_squeezes_a_12_bit_body(tmp_path):
    body = _body12()
    marked = body.copy()
    marked[2:6, 2:8] = 65535  # a burned-in marker at full 16-bit white (0.3% of the pixels)
    Image.fromarray(marked).save(tmp_path / "m.png")
    got = read_image_file(tmp_path / "m.png").pixels
    # reference: clip to 12 bits, then the 0.5/99.5 percentile window (numpy, independent of the code)
    ref = percentile_window(np.minimum(marked, 4095))
    assert np.abs(np.rint(got) - ref).max() <= 1
    # the body keeps its contrast: what a plain min..max stretch destroyed
    minmax = (marked.astype(float) - marked.min()) * 255 / (marked.max() - marked.min())
    assert minmax[8:, :].mean() < 16  # the failure the issue measured: body in grey levels 0..16
    assert got[8:, :].mean() > 90 and got[8:, :].std() > 40
    assert np.corrcoef(got[8:].ravel(), body[8:].ravel())[0, 1] > 0.99


def test_bit_depth_inference_and_percentile_window_against_numpy():
    x = np.arange(0, 1000, dtype=np.uint16).reshape(25, 40)
    assert clip_to_bit_depth(x).max() == 999  # fits 10 bits: nothing clipped
    y = x.copy()
    y[0, 0] = 60000
    y[1, :8] = 60000  # 0.9% of the pixels: still below the 1% the bit-depth estimate tolerates
    assert clip_to_bit_depth(y).max() == 1023  # outliers above the 10-bit range clipped to 1023
    y[2, :] = 60000  # 4.5%: a real 16-bit range, kept
    assert clip_to_bit_depth(y).max() == 60000
    w = intensity_window(x.astype(np.float32), (1.0, 99.0))
    lo, hi = np.percentile(x.astype(float), [1.0, 99.0])
    np.testing.assert_allclose(w, np.clip((x - lo) * 255 / (hi - lo), 0, 255), atol=1e-3)
    np.testing.assert_allclose(intensity_window(x.astype(np.float32), (0, 100)), x * 255.0 / 999, atol=1e-3)


def test_dicom_marker_and_pixel_padding(tmp_path):
    body = _body12(1)
    stored = body.copy()
    stored[:, :10] = 0  # collimator padding strip
    stored[40:44, 50:60] = 4095  # a marker inside 12 bits
    ds = make_dicom(stored, bits_stored=12)
    ds.PixelPaddingValue = 0
    ds.save_as(tmp_path / "pad.dcm", enforce_file_format=True)
    got = read_dicom_gray(tmp_path / "pad.dcm")
    valid = stored != 0
    ref = percentile_window(stored, valid=valid)
    assert np.abs(np.rint(got) - ref).max() <= 1
    assert (got[:, :10] == 0).all()
    # without the padding tag the black strip enters the statistics: the window differs
    ds2 = make_dicom(stored, bits_stored=12)
    ds2.save_as(tmp_path / "nopad.dcm", enforce_file_format=True)
    assert np.abs(read_dicom_gray(tmp_path / "nopad.dcm") - got)[:, 10:].max() > 5

    # a padding range (PixelPaddingRangeLimit) on MONOCHROME1: padding is black after the inversion too
    s1 = body.copy()
    s1[:8, :] = 4000 + (np.arange(80) % 50)  # values 4000..4049 are padding
    ds3 = make_dicom(s1, bits_stored=12, photometric="MONOCHROME1")
    ds3.PixelPaddingValue, ds3.PixelPaddingRangeLimit = 4049, 4000
    ds3.save_as(tmp_path / "range.dcm", enforce_file_format=True)
    got3 = read_dicom_gray(tmp_path / "range.dcm")
    valid3 = ~((s1 >= 4000) & (s1 <= 4049))
    ref3 = 255 - percentile_window(s1, valid=valid3).astype(int)
    ref3[~valid3] = 0
    assert np.abs(np.rint(got3) - ref3).max() <= 1 and (got3[:8] == 0).all()


def test_all_padding_is_quarantined(tmp_path):
    ds = make_dicom(np.zeros((16, 16), np.uint16), bits_stored=12)
    ds.PixelPaddingValue = 0
    ds.save_as(tmp_path / "p.dcm", enforce_file_format=True)
    from synthcxr.data.quarantine import QuarantineError

    with pytest.raises(QuarantineError, match="padding") as err:
        read_dicom_gray(tmp_path / "p.dcm")
    assert err.value.kind == "bad_image"


# --------------------------------------------------------------------------------- silent enlargement
def test_enlarged_sources_counted_warned_and_optionally_quarantined(tmp_path, caplog):
    root = tmp_path / "nih"
    write_nih(root, n_patients=8, bad=False, size=(48, 40))  # every third image is 56x40, the rest 48x40
    labels = ["Atelectasis", "Effusion", "No_Finding"]
    with caplog.at_level(logging.WARNING, logger="synthcxr"):
        s = prepare(dataset_config("nih", root, max_res=64), labels, tmp_path / "a")
    n = s["counts"]["kept"]
    assert s["counts"]["enlarged"] == n and s["source_size"]["enlarged_fraction"] == 1.0
    assert s["source_size"]["short_side_min"] == 40 and s["source_size"]["short_side_max"] == 40
    assert any("enlarged" in w and "max_res=64" in w for w in s["warnings"])
    assert any("enlarged" in r.getMessage() for r in caplog.records)
    s = prepare(dataset_config("nih", root, max_res=32), labels, tmp_path / "b")
    assert s["counts"]["enlarged"] == 0 and not any("enlarged" in w for w in s["warnings"])
    # a minimum source size quarantines: a different fixture with two sizes
    root2 = tmp_path / "nih2"
    write_nih(root2, n_patients=8, bad=False, size=(40, 48))  # short sides 40 and 48 (every third is 48x48)
    s = prepare(dataset_config("nih", root2, max_res=32, min_source_size=44), labels, tmp_path / "c")
    res = read_outputs(tmp_path / "c")
    check_common(res, labels)
    assert s["counts"]["quarantined_by_reason"] == {"too_small": s["counts"]["quarantined"]}
    assert s["counts"]["quarantined"] > 0 and s["counts"]["kept"] > 0
    assert s["source_size"]["short_side_min"] >= 44
    assert all("min_source_size=44" in d for d in res["quarantine"]["detail"])


def test_jpeg_draft_reports_the_files_own_size(tmp_path):
    rng = np.random.default_rng(0)
    write_jpg(tmp_path / "big.jpg", synth_image(rng, 400, 360))
    img = read_image_file(tmp_path / "big.jpg", target=32)
    assert (img.width, img.height) == (360, 400) and img.short_side == 360
    assert min(img.pixels.shape) < 360  # decoded at a reduced DCT scale
    assert min(img.pixels.shape) >= 64


# ------------------------------------------------------------------------------- preamble-less DICOM
@pytest.mark.parametrize("implicit", [True, False])
def test_dicom_without_preamble_or_file_meta(tmp_path, implicit):
    rng = np.random.default_rng(4)
    pix = (synth_image(rng, 32, 28).astype(np.uint16) * 8).astype(np.uint16)
    ds = make_dicom(pix, bits_stored=12)
    ds.save_as(tmp_path / "full.dcm", enforce_file_format=True)
    raw = make_dicom(pix, bits_stored=12)
    del raw.file_meta
    raw.preamble = None
    pydicom.dcmwrite(tmp_path / "bare.dcm", raw, implicit_vr=implicit, little_endian=True)
    data = (tmp_path / "bare.dcm").read_bytes()
    assert data[128:132] != b"DICM" and data[:2] == b"\x08\x00"  # no preamble, no meta group
    with pytest.raises(pydicom.errors.InvalidDicomError):
        pydicom.dcmread(tmp_path / "bare.dcm")
    np.testing.assert_array_equal(read_dicom_gray(tmp_path / "bare.dcm"), read_dicom_gray(tmp_path / "full.dcm"))
    # still: a text file that happens to start with 0x08 0x00 but has no image is not a DICOM image
    (tmp_path / "fake.dcm").write_bytes(b"\x08\x00" + b"not a dicom data set at all" * 4)
    from synthcxr.data.quarantine import QuarantineError

    with pytest.raises(QuarantineError) as err:
        read_dicom_gray(tmp_path / "fake.dcm")
    assert err.value.kind in ("not_an_image", "corrupt_image")


# --------------------------------------------------------------------- CheXpert vocabulary and policy
def _chexpert(root: Path, rows: list[dict[str, str]]) -> list[str]:
    """A CheXpert-v1.0-small folder with one frontal image per row (cells default to blank)."""
    ds = root / "CheXpert-v1.0-small"
    rng = np.random.default_rng(7)
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_OBS]
    lines, paths = [",".join(header)], []
    for i, cells in enumerate(rows):
        rel = f"CheXpert-v1.0-small/train/patient{i + 1:05d}/study1/view1_frontal.jpg"
        write_jpg(root / rel, synth_image(rng, 40, 36))
        lines.append(",".join([rel, "Male", "50", "Frontal", "PA", *[cells.get(o, "") for o in CHEXPERT_OBS]]))
        paths.append(rel)
    ds.mkdir(parents=True, exist_ok=True)
    (ds / "train.csv").write_text("\n".join(lines) + "\n")
    return paths


def test_an_image_positive_for_any_observation_is_never_no_finding(tmp_path):
    rows = [
        {"Lung Opacity": "1.0"},  # positive only for an observation outside the configured labels
        {"Support Devices": "1.0", "No Finding": "1.0"},  # CheXpert labels devices alongside No Finding
        {"No Finding": "1.0"},
        {"Pleural Effusion": "1.0", "Fracture": "-1.0"},
        {"Atelectasis": "1.0"},
    ] * 2
    _chexpert(tmp_path / "chx", rows)
    labels = ["Atelectasis", "Effusion", "No_Finding"]
    cfg = dataset_config("chexpert", tmp_path / "chx", split={"train": 1.0, "val": 0.0, "test": 0.0, "seed": 0})
    s = prepare(cfg, labels, tmp_path / "out")
    res = read_outputs(tmp_path / "out")
    check_common(res, labels)
    t = res["labels"].iloc[:5]
    assert t[labels].to_numpy().tolist() == [[0, 0, 0], [0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0]]
    assert t["other_finding"].tolist() == [1.0, 1.0, 0.0, 1.0, 0.0]  # Fracture -1 -> 1 under U-Ones
    assert s["counts"]["other_finding_only"] == 4
    # the label plan no longer counts the Lung Opacity / device images as No_Finding
    counts = plan_counts(PlanConfig.from_section({"plan": {"mode": "match_real", "n_samples": 60}, "shard_size": 60}), labels, res["labels"])
    assert counts == {"Atelectasis": 20, "Effusion": 20, "No_Finding": 20}
    # configured, the CheXpert-only observations are labels of their own
    wide = ["Atelectasis", "Lung_Opacity", "Support_Devices", "Fracture", "No_Finding"]
    prepare(cfg, wide, tmp_path / "wide")
    w = read_outputs(tmp_path / "wide")["labels"].iloc[:5]
    assert w[wide].to_numpy().tolist() == [[0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 1, 0],
                                            [1, 0, 0, 0, 0]]
    assert w["other_finding"].tolist() == [0.0, 0.0, 0.0, 1.0, 0.0]  # Effusion is not configured here


def test_per_label_uncertainty_policy(tmp_path):
    unc = {o: "-1.0" for o in ("Atelectasis", "Cardiomegaly", "Pleural Effusion", "Edema")}
    _chexpert(tmp_path / "chx", [unc, {"No Finding": "1.0"}])
    labels = ["Atelectasis", "Cardiomegaly", "Effusion", "Edema", "No_Finding"]
    # the CheXpert paper's choice: U-Ones for Atelectasis and Edema, U-Zeros elsewhere
    policy = {"default": "zeros", "Atelectasis": "ones", "Edema": "ones", "Cardiomegaly": "ignore"}
    s = prepare(dataset_config("chexpert", tmp_path / "chx", chexpert_uncertain=policy), labels, tmp_path / "o")
    row = read_outputs(tmp_path / "o")["labels"].iloc[0]
    assert row["Atelectasis"] == 1 and row["Edema"] == 1 and row["Effusion"] == 0 and math.isnan(row["Cardiomegaly"])
    assert row["No_Finding"] == 0
    note = next(n for n in s["label_notes"] if n.startswith("uncertain"))
    assert "Atelectasis, Edema -> 1 (U-Ones)" in note and "Effusion -> 0 (U-Zeros)" in note
    assert uncertain_policy("zeros")["Lung_Opacity"] == "zeros"
    with pytest.raises(ConfigError, match=r"dataset\.chexpert_uncertain\.Pleural Effusion"):
        PrepareConfig.from_section(dataset_cfg("chexpert", tmp_path, chexpert_uncertain={"Pleural Effusion": "ones"}))
    with pytest.raises(ConfigError, match=r"dataset\.chexpert_uncertain\.Edema.*maybe"):
        PrepareConfig.from_section(dataset_cfg("chexpert", tmp_path, chexpert_uncertain={"Edema": "maybe"}))


def test_missing_observation_column_for_a_configured_label_is_a_config_error(tmp_path):
    _chexpert(tmp_path / "chx", [{"No Finding": "1.0"}])
    csv = tmp_path / "chx" / "CheXpert-v1.0-small" / "train.csv"
    pd.read_csv(csv, dtype=str).drop(columns=["Edema"]).to_csv(csv, index=False)
    with pytest.raises(ConfigError, match="Edema"):
        prepare(dataset_config("chexpert", tmp_path / "chx"), ["Edema", "No_Finding"], tmp_path / "o")
    s = prepare(dataset_config("chexpert", tmp_path / "chx"), ["Atelectasis", "No_Finding"], tmp_path / "o2")
    assert any("Edema" in w and "blank" in w for w in s["warnings"])


# ------------------------------------------------------------------------------ memory-sized decoders
def test_decode_workers_fit_the_job_memory(caplog):
    cfg = PrepareConfig.from_section(dataset_cfg("phantom", None, workers=16))
    assert decode_workers(cfg, None) == 16  # no limit known
    assert decode_workers(cfg, 64000) == 16  # 0.75 * 64000 / 600 = 80
    with caplog.at_level(logging.WARNING, logger="synthcxr"):
        assert decode_workers(cfg, 8000) == 10  # the profile's prepare job: 6000 // 600
    assert "mem_mb=8000" in caplog.text and "using 10" in caplog.text
    assert decode_workers(cfg, 500) == 1
    big = PrepareConfig.from_section(dataset_cfg("phantom", None, workers=16, decode_mem_mb=1500))
    assert decode_workers(big, 8000) == 4


def test_job_memory_from_slurm_and_cgroup(tmp_path):
    assert job_memory_mb({"SLURM_MEM_PER_NODE": "8000"}, cgroup=str(tmp_path / "none")) == 8000
    assert job_memory_mb({"SLURM_MEM_PER_CPU": "1000", "SLURM_CPUS_ON_NODE": "8"}, cgroup=str(tmp_path / "none")) == 8000
    (tmp_path / "memory.max").write_text(f"{3 * 2**30}\n")
    assert job_memory_mb({}, cgroup=str(tmp_path / "memory.max")) == 3072
    (tmp_path / "memory.max").write_text("max\n")
    assert job_memory_mb({}, cgroup=str(tmp_path / "memory.max")) is None
    assert job_memory_mb({}, cgroup=str(tmp_path / "none")) is None


def test_intensity_percentiles_config_is_checked():
    with pytest.raises(ConfigError, match="intensity_percentiles"):
        PrepareConfig.from_section(dataset_cfg("phantom", None, intensity_percentiles=[99, 1]))
    assert PrepareConfig.from_section(dataset_cfg("phantom", None)).intensity_percentiles == (0.5, 99.5)


def test_mimic_label_codes_blank_bad_and_repeated_studies(tmp_path):
    from synthcxr.data.adapters.mimic_jpg import key_hash, label_codes

    csv = tmp_path / "mimic-cxr-2.0.0-chexpert.csv"
    csv.write_text("subject_id,study_id,Atelectasis,Edema\n"
                   "10000001,50000001,1.0,\n"
                   "10000001,50000002,-1.0,yes\n"
                   "10000001,50000001,0.0,0.0\n"  # the same study again: the first row wins
                   "10000002,50000003, 0 ,1\n")
    index, codes, bad = label_codes(csv, ["Atelectasis", "Edema"])
    assert len(index) == 3 and codes.shape == (3, 2)
    pos = index.get_indexer(key_hash(["10000001", "10000002"], ["50000001", "50000003"]))
    np.testing.assert_array_equal(codes[pos[0]], [1.0, np.nan])
    np.testing.assert_array_equal(codes[pos[1]], [0.0, 1.0])
    second = index.get_indexer(key_hash(["10000001"], ["50000002"]))[0]
    assert codes[second][0] == -1.0 and bad == {(second, 1): "yes"}
    assert index.get_indexer(key_hash(["10000009"], ["50000001"]))[0] == -1
