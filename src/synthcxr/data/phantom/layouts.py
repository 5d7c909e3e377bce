"""Write a phantom cohort to disk in the layouts of real public datasets.

The point is to exercise the real dataset adapters end to end without shipping real scans: file names,
folder structure, CSV column names and value conventions (NIH ``|``-joined findings, CheXpert
1/0/-1/blank, MIMIC id schemes and split file, DICOM MONOCHROME1/rescale/windowing) follow the public
releases. Images are written one file at a time through :func:`synthcxr.utils.atomic.atomic_path`; the
tables last, so an interrupted run never looks like a complete dataset.
"""

from __future__ import annotations

import io
import logging
import multiprocessing as mp
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from ...labels import PHANTOM_LABELS
from ...utils.atomic import atomic_path, write_bytes, write_text
from ...utils.runtime import progress
from .cohort import FINDINGS, PhantomConfig, sample_cohort
from .render import _check_res, render

log = logging.getLogger("synthcxr")

LAYOUTS: tuple[str, ...] = ("nih", "chexpert", "mimic_jpg", "dicom")

NIH_COLUMNS: tuple[str, ...] = (
    "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
    "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]",
)
#: The 14 CheXpert observations in the order of CheXpert's train.csv.
CHEXPERT_OBSERVATIONS: tuple[str, ...] = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)
CHEXPERT_COLUMNS: tuple[str, ...] = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_OBSERVATIONS)
CHEXPERT_DIR = "CheXpert-v1.0-small"
MIMIC_METADATA_COLUMNS: tuple[str, ...] = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
    "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
#: MIMIC-CXR-JPG's chexpert table sorts the observations alphabetically.
MIMIC_CHEXPERT_COLUMNS: tuple[str, ...] = ("subject_id", "study_id", *sorted(CHEXPERT_OBSERVATIONS))
MIMIC_SPLIT_COLUMNS: tuple[str, ...] = ("dicom_id", "study_id", "subject_id", "split")

#: Which phantom findings make each CheXpert observation true (CheXpert has no Nodule/Mass: Lung Lesion).
CHEXPERT_FROM_PHANTOM: dict[str, tuple[str, ...]] = {
    "Enlarged Cardiomediastinum": ("Cardiomegaly",),
    "Cardiomegaly": ("Cardiomegaly",),
    "Lung Opacity": ("Consolidation", "Atelectasis"),
    "Lung Lesion": ("Nodule", "Mass"),
    "Consolidation": ("Consolidation",),
    "Atelectasis": ("Atelectasis",),
    "Pneumothorax": ("Pneumothorax",),
    "Pleural Effusion": ("Effusion",),
}
_UID_SOP = {"CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1"}
_FIELD_OF_VIEW_MM = 360.0  # the phantom image spans about 36 cm of chest


@dataclass(frozen=True)
class _Job:
    row: dict
    res: int
    path: Path
    kind: str  # png | jpg | dcm
    dicom: dict | None = None


def _encode_png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _encode_jpg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _write_dicom(path: Path, img: np.ndarray, h: dict) -> None:
    """12-bit DICOM (uint16, BitsStored 12) with rescale and a VOI window that maps back to ``img``."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    v12 = np.rint(img.astype(np.float64) * (4095.0 / 255.0)).astype(np.uint16)
    stored = (4095 - v12) if h["photometric"] == "MONOCHROME1" else v12
    slope, intercept = h["slope"], h["intercept"]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _UID_SOP[h["modality"]]
    meta.MediaStorageSOPInstanceUID = h["sop_uid"]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = h["sop_uid"]
    ds.StudyInstanceUID = h["study_uid"]
    ds.SeriesInstanceUID = h["series_uid"]
    ds.Modality = h["modality"]
    if h["modality"] == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PatientID = h["patient_id"]
    ds.PatientName = f"PHANTOM^{h['patient_id']}"
    ds.PatientSex = h["sex"]
    ds.PatientAge = f"{int(h['age']):03d}Y"
    ds.ViewPosition = h["view"]
    ds.BodyPartExamined = "CHEST"
    ds.StudyDate = h["study_date"]
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = h["photometric"]
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [h["spacing"], h["spacing"]]
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    ds.RescaleType = "US"
    ds.WindowCenter = f"{slope * 2047.5 + intercept:g}"
    ds.WindowWidth = f"{slope * 4096.0:g}"
    ds.PixelData = stored.astype("<u2").tobytes()
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


def _run_job(job: _Job) -> str:
    img = render(job.row, job.res)
    if job.kind == "png":
        write_bytes(job.path, _encode_png(img))
    elif job.kind == "jpg":
        write_bytes(job.path, _encode_jpg(img))
    elif job.kind == "dcm":
        _write_dicom(job.path, img, job.dicom or {})
    else:  # pragma: no cover - guarded by the writers below
        raise ValueError(job.kind)
    return str(job.row["image_id"])


def _run_jobs(jobs: list[_Job], workers: int, desc: str) -> None:
    bar = progress(total=len(jobs), desc=desc, unit="img")
    try:
        if workers <= 1 or len(jobs) < 2 * workers:
            for job in jobs:
                _run_job(job)
                bar.update(1)
        else:
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            with ctx.Pool(workers) as pool:
                for _ in pool.imap_unordered(_run_job, jobs, chunksize=32):
                    bar.update(1)
    finally:
        bar.close()


def _write_csv(path: Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def _patient_numbers(cohort: pd.DataFrame) -> pd.Series:
    """1-based patient number per row, in order of first appearance (dataset-style integer ids)."""
    codes, _ = pd.factorize(cohort["patient_id"])
    return pd.Series(codes + 1, index=cohort.index)


def _patient_split(numbers: pd.Series, seed: int, fractions: dict[str, float]) -> pd.Series:
    """Assign whole patients to splits (a patient's studies never straddle splits)."""
    uniq = np.unique(numbers.to_numpy())
    rng = np.random.default_rng([seed, 7000])
    order = rng.permutation(len(uniq))
    names, assign, start = list(fractions), {}, 0
    counts = [int(round(f * len(uniq))) for f in fractions.values()]
    for name, cnt in zip(names, counts):
        if cnt == 0 and len(uniq) >= 2 * len(names):
            cnt = 1
        for i in order[start : start + cnt]:
            assign[int(uniq[i])] = name
        start += cnt
    default = "train"
    return numbers.map(lambda n: assign.get(int(n), default))


def _chexpert_values(row: dict, rng: np.random.Generator, certain: bool) -> dict[str, float]:
    """CheXpert-style observation values: 1.0 / 0.0 / -1.0 uncertain / NaN (blank, not mentioned).

    ``certain`` (the valid set) gives only 0/1. In train, 7 % of positives are written uncertain (-1.0),
    so the U-Ones policy recovers the truth and U-Zeros loses those; negatives are blank unless the
    report "mentions" them (an explicit 0.0, 30 %). Observations the phantom never draws are blank/0.
    """
    out: dict[str, float] = {}
    any_finding = any(int(row[n]) for n in FINDINGS)
    for obs in CHEXPERT_OBSERVATIONS:
        if obs == "No Finding":
            truth = not any_finding
        else:
            truth = any(int(row[n]) for n in CHEXPERT_FROM_PHANTOM.get(obs, ()))
        if certain:
            out[obs] = 1.0 if truth else 0.0
        elif truth:
            out[obs] = -1.0 if (obs != "No Finding" and rng.random() < 0.07) else 1.0
        else:
            out[obs] = 0.0 if (obs != "No Finding" and rng.random() < 0.3) else np.nan
    return out


def _write_nih(out: Path, cohort: pd.DataFrame, cfg: PhantomConfig, res: int, workers: int) -> None:
    nums = _patient_numbers(cohort)
    names = [f"{n:08d}_{int(s):03d}.png" for n, s in zip(nums, cohort["study"])]
    jobs = [_Job(r, res, out / "images" / nm, "png") for r, nm in zip(cohort.to_dict("records"), names)]
    _run_jobs(jobs, workers, "phantom nih")
    spacing = round(_FIELD_OF_VIEW_MM / res, 4)
    findings = cohort[list(FINDINGS)].to_numpy()
    labels = [
        "|".join(sorted(n for n, v in zip(FINDINGS, fv) if v)) or "No Finding" for fv in findings
    ]
    table = pd.DataFrame({
        "Image Index": names,
        "Finding Labels": labels,
        "Follow-up #": cohort["study"].astype(int).to_numpy(),
        "Patient ID": nums.to_numpy(),
        "Patient Age": cohort["age"].astype(int).to_numpy(),
        "Patient Gender": cohort["sex"].to_numpy(),
        "View Position": cohort["view"].to_numpy(),
        "OriginalImage[Width": res,
        "Height]": res,
        "OriginalImagePixelSpacing[x": spacing,
        "y]": spacing,
    })
    split = _patient_split(nums, cfg.seed, {"test": 0.2})
    write_text(out / "test_list.txt", "".join(f"{n}\n" for n, s in zip(names, split) if s == "test"))
    write_text(out / "train_val_list.txt", "".join(f"{n}\n" for n, s in zip(names, split) if s != "test"))
    _write_csv(out / "Data_Entry_2017.csv", table[list(NIH_COLUMNS)])


def _write_chexpert(out: Path, cohort: pd.DataFrame, cfg: PhantomConfig, res: int, workers: int) -> None:
    nums = _patient_numbers(cohort)
    split = _patient_split(nums, cfg.seed, {"valid": 0.05})
    rows = cohort.to_dict("records")
    paths, jobs, tables = [], [], {"train": [], "valid": []}
    for i, (row, n, sp) in enumerate(zip(rows, nums, split)):
        rel = f"{CHEXPERT_DIR}/{sp}/patient{n:05d}/study{int(row['study']) + 1}/view1_frontal.jpg"
        paths.append(rel)
        jobs.append(_Job(row, res, out / rel, "jpg"))
        rng = np.random.default_rng([cfg.seed, 7002, i])
        rec = {
            "Path": rel, "Sex": "Male" if row["sex"] == "M" else "Female", "Age": int(row["age"]),
            "Frontal/Lateral": "Frontal", "AP/PA": row["view"],
        }
        rec.update(_chexpert_values(row, rng, certain=(sp == "valid")))
        tables[sp].append(rec)
    _run_jobs(jobs, workers, "phantom chexpert")
    for sp, recs in tables.items():
        _write_csv(out / CHEXPERT_DIR / f"{sp}.csv", pd.DataFrame(recs, columns=list(CHEXPERT_COLUMNS)))


def _dicom_uid(*parts: Any) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _write_mimic(out: Path, cohort: pd.DataFrame, cfg: PhantomConfig, res: int, workers: int) -> None:
    nums = _patient_numbers(cohort)
    rng = np.random.default_rng([cfg.seed, 7003])
    n_pat = int(nums.max()) if len(nums) else 0
    subject = 10000000 + np.arange(n_pat) * 1373 + rng.integers(0, 1373, size=n_pat)
    split = _patient_split(nums, cfg.seed, {"test": 0.1, "validate": 0.05})
    meta, labels, splits, jobs = [], [], [], []
    for i, (row, n, sp) in enumerate(zip(cohort.to_dict("records"), nums, split)):
        r = np.random.default_rng([cfg.seed, 7003, i])
        sid = int(subject[n - 1])
        study_id = 50000000 + i * 997 + int(r.integers(0, 997))
        dicom_id = "-".join(f"{int(x):08x}" for x in r.integers(0, 2**32, size=5, dtype=np.uint64))
        path = out / "files" / f"p{str(sid)[:2]}" / f"p{sid}" / f"s{study_id}" / f"{dicom_id}.jpg"
        jobs.append(_Job(row, res, path, "jpg"))
        ap = row["view"] == "AP"
        desc = "CHEST (PORTABLE AP)" if ap else "CHEST (PA AND LAT)"
        year = 2110 + int(n % 60) + int(row["study"]) // 3
        meta.append({
            "dicom_id": dicom_id, "subject_id": sid, "study_id": study_id,
            "PerformedProcedureStepDescription": desc, "ViewPosition": row["view"], "Rows": res, "Columns": res,
            "StudyDate": int(f"{year}{1 + int(row['study']) % 12:02d}{1 + i % 28:02d}"),
            "StudyTime": round(float(r.uniform(0, 235959)), 3), "ProcedureCodeSequence_CodeMeaning": desc,
            "ViewCodeSequence_CodeMeaning": "antero-posterior" if ap else "postero-anterior",
            "PatientOrientationCodeSequence_CodeMeaning": "Recumbent" if ap else "Erect",
        })
        lab = {"subject_id": sid, "study_id": study_id}
        lab.update(_chexpert_values(row, r, certain=False))
        labels.append(lab)
        splits.append({"dicom_id": dicom_id, "study_id": study_id, "subject_id": sid, "split": sp})
    _run_jobs(jobs, workers, "phantom mimic_jpg")
    _write_csv(out / "mimic-cxr-2.0.0-split.csv", pd.DataFrame(splits, columns=list(MIMIC_SPLIT_COLUMNS)))
    _write_csv(out / "mimic-cxr-2.0.0-chexpert.csv", pd.DataFrame(labels, columns=list(MIMIC_CHEXPERT_COLUMNS)))
    _write_csv(out / "mimic-cxr-2.0.0-metadata.csv", pd.DataFrame(meta, columns=list(MIMIC_METADATA_COLUMNS)))


def _write_dicom_folder(out: Path, cohort: pd.DataFrame, cfg: PhantomConfig, res: int, workers: int) -> None:
    spacing = f"{_FIELD_OF_VIEW_MM / res:.4f}"
    jobs, recs = [], []
    for i, row in enumerate(cohort.to_dict("records")):
        r = np.random.default_rng([cfg.seed, 7004, i])
        slope, intercept = [(1.0, 0.0), (1.0, -1024.0), (0.5, 0.0), (2.0, -4096.0)][int(r.integers(0, 4))]
        name = f"{row['image_id']}.dcm"
        head = {
            "photometric": "MONOCHROME1" if r.random() < 0.25 else "MONOCHROME2",
            "modality": "CR" if r.random() < 0.5 else "DX",
            "slope": slope, "intercept": intercept,
            "patient_id": str(row["patient_id"]).upper(), "sex": row["sex"], "age": int(row["age"]),
            "view": row["view"], "spacing": spacing,
            "study_date": f"{2015 + int(row['study']):04d}{1 + i % 12:02d}{1 + i % 28:02d}",
            "study_uid": _dicom_uid(cfg.seed, row["image_id"], "study"),
            "series_uid": _dicom_uid(cfg.seed, row["image_id"], "series"),
            "sop_uid": _dicom_uid(cfg.seed, row["image_id"], "sop"),
        }
        jobs.append(_Job(row, res, out / name, "dcm", head))
        recs.append({"file": name, **{n: int(row[n]) for n in PHANTOM_LABELS}})
    _run_jobs(jobs, workers, "phantom dicom")
    _write_csv(out / "labels.csv", pd.DataFrame(recs, columns=["file", *PHANTOM_LABELS]))


_WRITERS: dict[str, Callable[[Path, pd.DataFrame, PhantomConfig, int, int], None]] = {
    "nih": _write_nih,
    "chexpert": _write_chexpert,
    "mimic_jpg": _write_mimic,
    "dicom": _write_dicom_folder,
}


def write_layout(
    out_dir: str | os.PathLike,
    layout: str,
    cfg: PhantomConfig,
    res: int,
    workers: int = 1,
    cohort: pd.DataFrame | None = None,
) -> Path:
    """Write the cohort of ``cfg`` (or the given ``cohort`` rows) in a real dataset layout.

    Returns the folder to use as ``dataset.root`` for the matching format: ``out_dir`` itself (for
    chexpert it holds ``CheXpert-v1.0-small/``). Layouts: nih, chexpert, mimic_jpg, dicom.
    """
    if layout not in _WRITERS:
        raise ValueError(f"unknown phantom layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    res = _check_res(res)
    if cohort is None:
        cohort = sample_cohort(cfg)
    missing = [c for c in ("image_id", "patient_id", "study", "view", "sex", "age", *PHANTOM_LABELS)
               if c not in cohort.columns]
    if missing:
        raise KeyError(f"write_layout: cohort lacks column(s) {missing}; build it with sample_cohort")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cohort = cohort.reset_index(drop=True)
    log.info("phantom: writing %d studies of %d patients as %s at %d px to %s",
             len(cohort), cohort["patient_id"].nunique(), layout, res, out)
    _WRITERS[layout](out, cohort, cfg, res, max(1, int(workers)))
    return out


def cli(argv: list[str] | None = None) -> int:
    """``synthcxr phantom --layout nih --out DIR --res 64 --n-patients N --seed S [--workers W]``."""
    import argparse

    from ...utils.runtime import setup_logging

    ap = argparse.ArgumentParser(prog="synthcxr phantom", description="write a phantom dataset in a real on-disk layout")
    ap.add_argument("--layout", required=True, choices=LAYOUTS)
    ap.add_argument("--out", required=True, help="output folder (becomes dataset.root)")
    ap.add_argument("--res", type=int, default=64, help="image size, a power of two up to 1024")
    ap.add_argument("--n-patients", type=int, default=None, help="default: the schema's dataset.phantom.n_patients")
    ap.add_argument("--max-studies", type=int, default=None, help="default: the schema's dataset.phantom.max_studies")
    ap.add_argument("--seed", type=int, default=None, help="default: the schema's dataset.phantom.seed")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args(argv)
    setup_logging()
    try:
        given = {"n_patients": args.n_patients, "max_studies": args.max_studies, "seed": args.seed}
        cfg = PhantomConfig.from_section({k: v for k, v in given.items() if v is not None})
        root = write_layout(args.out, args.layout, cfg, _check_res(args.res), workers=args.workers)
    except (ValueError, TypeError) as exc:
        ap.error(str(exc).replace("dataset.phantom.", "--").replace("_", "-"))
    print(root)
    return 0
