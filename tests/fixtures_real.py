"""Writers for small datasets in the real on-disk layouts of NIH ChestX-ray14, CheXpert, MIMIC-CXR-JPG
and DICOM collections, including every kind of bad input the prepare stage must quarantine.

Each writer returns a dict describing what it wrote (raw patient ids, labels, expected quarantine
reasons) so tests can check the prepared outputs against ground truth that does not come from the
code under test.
"""

from __future__ import annotations

import copy
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

NIH_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
NIH_FINDINGS = [
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
]
CHEXPERT_OBS = [
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
]


def synth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A non-constant uint8 image: smooth gradient plus blobs and noise."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = 60 + 120 * (yy / max(h - 1, 1)) * (0.5 + 0.5 * xx / max(w - 1, 1))
    for _ in range(3):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, max(h, w) / 3)
        base += rng.uniform(-60, 60) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    base += rng.normal(0, 6, (h, w))
    return np.clip(np.rint(base), 0, 255).astype(np.uint8)


def percentile_window(a: np.ndarray, pct: tuple[float, float] = (0.5, 99.5), valid: np.ndarray | None = None) -> np.ndarray:
    """Reference display window (numpy percentiles of the valid pixels -> 0..255, rounded); invalid -> 0."""
    a = a.astype(np.float64)
    lo, hi = np.percentile(a if valid is None else a[valid], pct)
    out = np.clip(np.rint(np.clip((a - lo) * 255.0 / (hi - lo), 0, 255)), 0, 255).astype(np.uint8)
    if valid is not None:
        out[~valid] = 0
    return out


def write_png(path: Path, arr: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path, format="PNG")


def write_jpg(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="JPEG", quality=95)


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: max(16, int(len(data) * keep))])


# ----------------------------------------------------------------------------------------------- NIH
def write_nih(root: str | os.PathLike, n_patients: int = 10, seed: int = 0, bad: bool = True,
              official: bool = True, size: tuple[int, int] = (48, 40)) -> dict:
    """NIH layout: Data_Entry_2017.csv, images_001/images + images_002/images, official lists.

    Returns ``{"patients": {image: raw id}, "labels": {image: set of findings}, "bad": {image: kind},
    "images": {image: uint8 array}, "test": set, "train_val": set}``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    lines = [NIH_HEADER]
    info: dict = {"patients": {}, "labels": {}, "bad": {}, "images": {}, "test": set(), "train_val": set()}
    k = 0
    for p in range(1, n_patients + 1):
        n_follow = 1 + p % 3
        pid = 1000 + p
        in_test = p % 4 == 0
        for f in range(n_follow):
            name = f"{pid:08d}_{f:03d}.png"
            sub = "images_001" if k % 2 == 0 else "images_002"
            h, w = size if k % 3 else (size[0] + 8, size[1])
            img = synth_image(rng, h, w)
            write_png(root / sub / "images" / name, img)
            findings = sorted(set(rng.choice(NIH_FINDINGS, size=int(rng.integers(0, 3)), replace=False)))
            label = "|".join(findings) if findings else "No Finding"
            view = "PA" if k % 4 else "AP"
            lines.append(f"{name},{label},{f},{pid},{30 + p},{'M' if p % 2 else 'F'},{view},{w},{h},0.143,0.143,")
            info["patients"][name] = str(pid)
            info["labels"][name] = set(findings)
            info["images"][name] = img
            (info["test"] if in_test else info["train_val"]).add(name)
            k += 1
    if bad:
        pid = 9999
        bads = {
            f"{pid:08d}_000.png": "corrupt_image",
            f"{pid:08d}_001.png": "not_an_image",
            f"{pid:08d}_002.png": "missing_file",
            f"{pid:08d}_003.png": "unknown_label",
            f"{pid:08d}_004.png": "unreadable",
            f"{pid:08d}_005.png": "bad_image",
        }
        for name, kind in bads.items():
            path = root / "images_001" / "images" / name
            label = "Effusion"
            if kind == "corrupt_image":
                write_png(path, synth_image(rng, 48, 48))
                truncate(path, 0.4)
            elif kind == "not_an_image":
                path.write_text("this is not a PNG file\n")
            elif kind == "unknown_label":
                write_png(path, synth_image(rng, 48, 48))
                label = "Effusion|Dragon_Scales"
            elif kind == "unreadable":
                path.mkdir(parents=True)  # a directory where the file should be: open() fails
            elif kind == "bad_image":
                write_png(path, np.full((48, 48), 7, np.uint8))  # constant frame: nothing to learn
            lines.append(f"{name},{label},0,{pid},50,M,PA,48,48,0.143,0.143,")
            info["bad"][name] = kind
            info["train_val"].add(name)
    (root).mkdir(parents=True, exist_ok=True)
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    if official:
        (root / "train_val_list.txt").write_text("\n".join(sorted(info["train_val"])) + "\n")
        (root / "test_list.txt").write_text("\n".join(sorted(info["test"])) + "\n")
    return info


# ------------------------------------------------------------------------------------------ CheXpert
def write_chexpert(root: str | os.PathLike, n_patients: int = 8, n_valid: int = 3, seed: int = 1,
                   bad: bool = True) -> dict:
    """CheXpert-v1.0-small layout under ``root``: train.csv, valid.csv, patientNNNNN/studyN/viewN_*.jpg.

    Returns ``{"rows": {Path: dict of raw cells}, "patients": {Path: patient}, "bad": {Path: kind},
    "lateral": set of Paths, "valid": set of Paths}``.
    """
    root = Path(root)
    ds = root / "CheXpert-v1.0-small"
    rng = np.random.default_rng(seed)
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_OBS]
    info: dict = {"rows": {}, "patients": {}, "bad": {}, "lateral": set(), "valid": set()}
    cells = ["1.0", "0.0", "-1.0", ""]

    def row_for(split: str, p: int, study: int, view: int, lateral: bool) -> list[str]:
        rel = f"CheXpert-v1.0-small/{split}/patient{p:05d}/study{study}/view{view}_{'lateral' if lateral else 'frontal'}.jpg"
        write_jpg(root / rel, synth_image(rng, 40, 36))
        obs = [cells[int(rng.integers(0, 4))] for _ in CHEXPERT_OBS]
        if split == "valid":
            obs = [c if c != "-1.0" else "1.0" for c in obs]  # valid.csv has no uncertain labels
            obs = [c if c else "0.0" for c in obs]
        row = [rel, "Male" if p % 2 else "Female", str(20 + p % 60), "Lateral" if lateral else "Frontal",
               "" if lateral else ("AP" if (p + study) % 2 else "PA"), *obs]
        info["rows"][rel] = dict(zip(header, row))
        info["patients"][rel] = f"patient{p:05d}"
        if lateral:
            info["lateral"].add(rel)
        if split == "valid":
            info["valid"].add(rel)
        return row

    train_rows, valid_rows = [], []
    for p in range(1, n_patients + 1):
        for study in range(1, 1 + 1 + p % 2):
            train_rows.append(row_for("train", p, study, 1, False))
            if study == 1 and p % 3 == 0:
                train_rows.append(row_for("train", p, study, 2, True))
    for p in range(64541, 64541 + n_valid):
        valid_rows.append(row_for("valid", p, 1, 1, False))
    if bad:
        p = 99
        base = ["Male", "50", "Frontal", "PA"]
        obs = ["0.0"] * len(CHEXPERT_OBS)
        cases = {
            "missing_file": f"CheXpert-v1.0-small/train/patient{p:05d}/study1/view1_frontal.jpg",
            "corrupt_image": f"CheXpert-v1.0-small/train/patient{p:05d}/study2/view1_frontal.jpg",
            "bad_label_value": f"CheXpert-v1.0-small/train/patient{p:05d}/study3/view1_frontal.jpg",
            "not_an_image": f"CheXpert-v1.0-small/train/patient{p:05d}/study4/view1_frontal.jpg",
        }
        for kind, rel in cases.items():
            o = list(obs)
            if kind == "corrupt_image":
                write_jpg(root / rel, synth_image(rng, 40, 36))
                truncate(root / rel, 0.3)
            elif kind == "bad_label_value":
                write_jpg(root / rel, synth_image(rng, 40, 36))
                o[CHEXPERT_OBS.index("Pleural Effusion")] = "maybe"
            elif kind == "not_an_image":
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(b"\x00\x01garbage" * 10)
            train_rows.append([rel, *base, *o])
            info["bad"][rel] = kind
    ds.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.csv", train_rows), ("valid.csv", valid_rows)):
        (ds / name).write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    return info


# ------------------------------------------------------------------------------------- MIMIC-CXR-JPG
def write_mimic(root: str | os.PathLike, n_subjects: int = 6, seed: int = 2, bad: bool = True) -> dict:
    """MIMIC-CXR-JPG layout: the three 2.0.0 CSVs and files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg.

    Returns ``{"images": {dicom_id: dict(subject, study, view, split, labels)}, "bad": {dicom_id: kind}}``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    meta = ["dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,"
            "StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
            "PatientOrientationCodeSequence_CodeMeaning"]
    chex = ["subject_id,study_id," + ",".join(CHEXPERT_OBS)]
    split = ["dicom_id,study_id,subject_id,split"]
    info: dict = {"images": {}, "bad": {}}
    splits = ["train", "train", "validate", "test"]
    cells = ["1.0", "0.0", "-1.0", ""]
    for i in range(n_subjects):
        subject = str(10000032 + i * 1111)
        sp = splits[i % 4]
        for s in range(1 + i % 2):
            study = str(50414267 + i * 10 + s)
            obs = [cells[int(rng.integers(0, 4))] for _ in CHEXPERT_OBS]
            chex.append(f"{subject},{study}," + ",".join(obs))
            for v, view in enumerate(["PA", "LATERAL"] if s == 0 else ["AP"]):
                did = f"{int(rng.integers(0, 2**62)):016x}-{i:02d}{s}{v}"
                path = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{did}.jpg"
                write_jpg(path, synth_image(rng, 44, 40))
                meta.append(f"{did},{subject},{study},CHEST (PA AND LAT),{view},44,40,21800506,213014.531,"
                            f"CHEST (PA AND LAT),postero-anterior,Erect")
                split.append(f"{did},{study},{subject},{sp}")
                info["images"][did] = {"subject": subject, "study": study, "view": view, "split": sp,
                                       "labels": dict(zip(CHEXPERT_OBS, obs))}
    if bad:
        # an image whose study has no chexpert row, and a labelled study whose file is missing
        for did, kind, subject, study in (("nolabel-0001", "no_label_row", "19999999", "59999999"),
                                          ("missing-0001", "missing_file", "19999997", "59999997")):
            path = root / "files" / "p19" / f"p{subject}" / f"s{study}" / f"{did}.jpg"
            if kind == "no_label_row":
                write_jpg(path, synth_image(rng, 44, 40))
            else:
                chex.append(f"{subject},{study}," + ",".join(["0.0"] * len(CHEXPERT_OBS)))
            meta.append(f"{did},{subject},{study},CHEST,PA,44,40,21800506,213014.531,CHEST,postero-anterior,Erect")
            split.append(f"{did},{study},{subject},train")
            info["bad"][did] = kind
        chex_subject, chex_study = "19999998", "59999998"
        did = "corrupt-0001"
        path = root / "files" / "p19" / f"p{chex_subject}" / f"s{chex_study}" / f"{did}.jpg"
        write_jpg(path, synth_image(rng, 44, 40))
        truncate(path, 0.3)
        chex.append(f"{chex_subject},{chex_study}," + ",".join(["0.0"] * len(CHEXPERT_OBS)))
        meta.append(f"{did},{chex_subject},{chex_study},CHEST,PA,44,40,21800506,213014.531,CHEST,postero-anterior,Erect")
        split.append(f"{did},{chex_study},{chex_subject},train")
        info["bad"][did] = "corrupt_image"
    root.mkdir(parents=True, exist_ok=True)
    (root / "mimic-cxr-2.0.0-metadata.csv").write_text("\n".join(meta) + "\n")
    (root / "mimic-cxr-2.0.0-chexpert.csv").write_text("\n".join(chex) + "\n")
    (root / "mimic-cxr-2.0.0-split.csv").write_text("\n".join(split) + "\n")
    return info


# --------------------------------------------------------------------------------------------- DICOM
PHI = {"PatientName": "Doe^Jane^Q", "PatientID": "MRN-778899", "PatientBirthDate": "19620314",
       "InstitutionName": "St Elsewhere General", "AccessionNumber": "ACC-55501"}


def make_dicom(pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
               slope: float | None = None, intercept: float | None = None,
               window: tuple[float, float] | None = None, syntax: str = "native",
               patient_id: str = PHI["PatientID"], view: str = "PA", sex: str = "F", age: str = "061Y",
               with_pixels: bool = True):
    """A DICOM CR/DX dataset with PHI-like tags. ``syntax``: native | rle | j2k | jpeg (baseline 8-bit)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, RLELossless, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientName = PHI["PatientName"]
    ds.PatientID = patient_id
    ds.PatientBirthDate = PHI["PatientBirthDate"]
    ds.InstitutionName = PHI["InstitutionName"]
    ds.AccessionNumber = PHI["AccessionNumber"]
    ds.PatientSex = sex
    ds.PatientAge = age
    ds.ViewPosition = view
    if not with_pixels:
        ds.Rows, ds.Columns = pixels.shape
        return ds
    arr = np.ascontiguousarray(pixels)
    if syntax == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(arr.astype(np.uint8)).save(buf, format="JPEG", quality=98)
        ds.Rows, ds.Columns = arr.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    else:
        bits = bits_stored or arr.dtype.itemsize * 8
        ds.set_pixel_data(arr, photometric_interpretation=photometric, bits_stored=bits)
        if syntax == "rle":
            ds.compress(RLELossless)
        elif syntax == "j2k":
            ds.compress(JPEG2000Lossless)
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept or 0.0
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    return ds


def save_dicom(ds, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def save_bare_dicom(ds, path: Path, implicit: bool = True, drop_groups: tuple[int, ...] = (0x0008,)) -> None:
    """Write ``ds`` as some exports do: no 128-byte preamble, no DICM marker, no file meta group, and
    (by default) no group 0x0008, so the data set starts at the patient module (group 0x0010)."""
    import pydicom

    ds = copy.deepcopy(ds)
    del ds.file_meta
    ds.preamble = None
    for tag in [e.tag for e in ds if e.tag.group in drop_groups]:
        del ds[tag]
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, implicit_vr=implicit, little_endian=True)


def write_dicom_folder(root: str | os.PathLike, seed: int = 3, bad: bool = True) -> dict:
    """A folder of DICOM files covering the display-pipeline cases, plus labels.csv.

    Returns ``{"files": {rel: dict(kind=..., expected=uint8 display image or None)}, "bad": {rel: kind}}``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    files: dict[str, dict] = {}
    rows = ["file,patient_id,Effusion,Cardiomegaly,Nodule,Hernia_Grade"]

    def add(rel, ds, expected, labels="1,0,", patient="", kind="ok"):
        save_dicom(ds, root / rel)
        files[rel] = {"kind": kind, "expected": expected}
        rows.append(f"{rel},{patient},{labels},x")

    base8 = synth_image(rng, 40, 40)

    def stretched(a):  # without a VOI window: the 0.5th..99.5th percentiles of the image map to 0..255
        return percentile_window(a)

    s8 = stretched(base8)
    add("native/mono2.dcm", make_dicom(base8), s8, patient="")
    add("native/mono1.dcm", make_dicom(base8, photometric="MONOCHROME1"), 255 - s8, labels="0,1,1")
    # 12-bit data in 16-bit words with junk in the top 4 bits (an embedded overlay plane)
    v12 = (base8.astype(np.uint16) * 16 + rng.integers(0, 16, base8.shape)).astype(np.uint16)
    junk = (v12 | (np.uint16(0xA) << 12)).astype(np.uint16)
    exp12 = stretched(v12)
    ds12 = make_dicom(v12, bits_stored=12)
    ds12.PixelData = junk.tobytes()
    add("native/bits12.dcm", ds12, exp12, labels="0,0,0")
    # rescale + window: stored 0..4095, HU-like rescale, window 100 +/- 200 (LINEAR)
    stored = v12
    slope, intercept, (wc, ww) = 0.5, -1024.0, (-300.0, 800.0)
    hu = stored.astype(np.float64) * slope + intercept
    c, w = wc - 0.5, ww - 1
    expw = np.clip(np.rint(np.clip((hu - c) / w + 0.5, 0, 1) * 255.0), 0, 255).astype(np.uint8)
    add("native/window.dcm", make_dicom(stored, bits_stored=12, slope=slope, intercept=intercept, window=(wc, ww)),
        expw, labels="1,,")
    add("compressed/rle.dcm", make_dicom(base8, syntax="rle"), s8, labels="0,0,-1")
    add("compressed/j2k.dcm", make_dicom(v12, bits_stored=12, syntax="j2k"), exp12, labels="1,1,0")
    add("compressed/jpeg.dcm", make_dicom(base8, syntax="jpeg"), None, labels="0,1,0", kind="lossy")
    add("views/lateral.dcm", make_dicom(base8, view="LL"), None, labels="0,0,0", kind="lateral")
    add("other_patient/a.dcm", make_dicom(base8, patient_id="MRN-000111", sex="M", age="045Y"), s8,
        labels="0,0,0", patient="")
    add("other_patient/b.dcm", make_dicom(base8, patient_id=""), s8, labels="0,0,0", patient="csv-patient-7")
    save_bare_dicom(make_dicom(base8, bits_stored=8), root / "bare/no_preamble.dcm")  # read with force=True
    files["bare/no_preamble.dcm"] = {"kind": "ok", "expected": s8}
    rows.append("bare/no_preamble.dcm,,0,1,0,x")
    bads: dict[str, str] = {}
    if bad:
        add("bad/nopixels.dcm", make_dicom(base8, with_pixels=False), None, kind="no_pixel_data")
        bads["bad/nopixels.dcm"] = "no_pixel_data"
        (root / "bad").mkdir(parents=True, exist_ok=True)
        (root / "bad/notdicom.dcm").write_bytes(b"plain text, not DICOM" * 20)
        rows.append("bad/notdicom.dcm,,0,0,0,x")
        bads["bad/notdicom.dcm"] = "not_an_image"
        save_bare_dicom(make_dicom(base8, with_pixels=False), root / "bad/bare_nopixels.dcm")  # parses, no image
        rows.append("bad/bare_nopixels.dcm,,0,0,0,x")
        bads["bad/bare_nopixels.dcm"] = "not_an_image"
        save_dicom(make_dicom(base8), root / "bad/truncated.dcm")
        truncate(root / "bad/truncated.dcm", 0.7)
        rows.append("bad/truncated.dcm,,0,0,0,x")
        bads["bad/truncated.dcm"] = "corrupt_image"
        rows.append("bad/missing.dcm,,0,0,0,x")
        bads["bad/missing.dcm"] = "missing_file"
        save_dicom(make_dicom(base8), root / "bad/badlabel.dcm")
        rows.append("bad/badlabel.dcm,,yes,0,0,x")
        bads["bad/badlabel.dcm"] = "bad_label_value"
        save_dicom(make_dicom(base8, patient_id=""), root / "bad/nopatient.dcm")
        rows.append("bad/nopatient.dcm,,0,0,0,x")
        bads["bad/nopatient.dcm"] = "missing_metadata"
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return {"files": files, "bad": bads}


def dataset_cfg(fmt: str, root: str | os.PathLike | None, **over) -> dict:
    """A ``dataset`` config section as the schema would fill it, for direct prepare() calls."""
    cfg = {
        "name": f"test-{fmt}",
        "format": fmt,
        "root": None if root is None else str(root),
        "max_res": 32,
        "views": ["PA", "AP"],
        "split": {"train": 0.6, "val": 0.2, "test": 0.2, "seed": 3},
        "patient_salt": "unit-test-salt",
        "workers": 0,
        "chexpert_uncertain": "ones",
        "label_csv": None,
        "phantom": {"n_patients": 12, "max_studies": 3, "seed": 5},
    }
    cfg.update(over)
    return cfg


def dataset_config(fmt: str, root: str | os.PathLike | None, **over):
    """:func:`dataset_cfg` as the PrepareConfig prepare() takes."""
    from synthcxr.data.settings import PrepareConfig

    return PrepareConfig.from_section(dataset_cfg(fmt, root, **over))


def read_outputs(out: str | os.PathLike) -> dict:
    """Load the four prepare outputs (images as a dict res -> array)."""
    import json

    import h5py
    import pandas as pd

    out = Path(out)
    with h5py.File(out / "images.h5", "r") as f:
        images = {int(k): f[f"images/{k}"][:] for k in f["images"]}
        attrs = {k: f.attrs[k] for k in f.attrs}
    return {
        "images": images,
        "attrs": attrs,
        "labels": pd.read_parquet(out / "labels.parquet"),
        "quarantine": pd.read_csv(out / "quarantine.csv", keep_default_na=False),
        "summary": json.loads((out / "prepare.json").read_text()),
    }


def check_common(res: dict, labels: list[str]) -> None:
    """Invariants every prepared dataset must satisfy."""
    t, s = res["labels"], res["summary"]
    n = len(t)
    assert list(t["row"]) == list(range(n))
    for r, arr in res["images"].items():
        assert arr.shape == (n, r, r) and arr.dtype == np.uint8
    assert [str(x) for x in res["attrs"]["label_names"]] == labels
    assert list(t.columns) == ["row", "image_id", "patient_key", "split", "view", "sex", "age", *labels, "other_finding"]
    assert set(np.unique(t["other_finding"].dropna())) <= {0.0, 1.0}
    findings = [n for n in labels if n != "No_Finding"]
    if "No_Finding" in labels:  # a normal image has no finding, configured or not
        normal = t["No_Finding"] == 1
        assert not (t.loc[normal, findings] == 1).any(axis=None) and not (t.loc[normal, "other_finding"] == 1).any()
    assert set(t["split"]) <= {"train", "val", "test"}
    assert (t.groupby("patient_key")["split"].nunique() <= 1).all(), "patient in two splits"
    assert t["image_id"].is_unique
    c = s["counts"]
    assert c["kept"] == n
    assert c["seen"] == c["kept"] + c["quarantined"] + sum(c["filtered_by_view"].values())
    assert c["quarantined"] == len(res["quarantine"]) == sum(c["quarantined_by_reason"].values())
    assert sum(s["splits"][k]["n_images"] for k in ("train", "val", "test")) == n
    for name in labels:
        assert set(np.unique(t[name].dropna())) <= {0.0, 1.0}
