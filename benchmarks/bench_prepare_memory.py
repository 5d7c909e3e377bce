"""Peak memory of the prepare stage: the pixel path, the metadata pass at MIMIC scale, one decoder.

    python benchmarks/bench_prepare_memory.py                     # 20,000 phantom images at 256 px
    python benchmarks/bench_prepare_memory.py --n 2000 --workers 2
    python benchmarks/bench_prepare_memory.py --source nih        # 20,000 NIH-layout PNGs (fast to decode)
    python benchmarks/bench_prepare_memory.py --source mimic-tables   # metadata pass, 377,110 MIMIC rows
    python benchmarks/bench_prepare_memory.py --source dicom-decoder  # one 4096x3328 windowed DICOM

``--source mimic-tables`` writes the three MIMIC-CXR-JPG 2.0.0 tables (gzipped, real column sets) for
``--n`` images (default 377,110, MIMIC's size; 1.66 images per study, 3.5 studies per subject) and runs
the metadata pass in fresh processes, interleaved, ``--repeats`` times each: ``synthcxr`` (the prepare
stage's :func:`~synthcxr.data.prepare.scan_metadata` and label table) against ``v1``, a minimal
re-implementation of the previous design kept here as the reference (whole tables read as strings, a
dict of every study's label row, a Python list of records). It prints peak RSS (VmHWM) above the
post-import baseline (min/median) and the v1/synthcxr ratio. ``--source dicom-decoder`` measures the peak RSS of a
fresh process decoding one 4096x3328 12-bit DICOM with a VOI window into a 1024 px pyramid: the basis
of ``dataset.decode_mem_mb``.

The phantom renders each image from scratch (~0.25 s of CPU at 256 px); ``--source nih`` first writes
an NIH ChestX-ray14 layout of 320x288 PNGs (cropped and resized to ``--res``), so the full 20,000-image
run finishes in minutes on a laptop while exercising the same streaming path.

Prints the peak resident set size of the main process and of the largest worker
(``resource.getrusage``), the images/s, and the size of images.h5. Memory must not grow with ``--n``:
pixels stream image by image into pre-sized HDF5 datasets with a bounded number of chunks in flight.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path


def write_nih_layout(root: Path, n: int, seed: int = 0) -> None:
    """n PNGs (320x288, smooth random content) in images_001/images/ plus Data_Entry_2017.csv."""
    import numpy as np
    from PIL import Image

    from synthcxr.utils.runtime import progress

    rng = np.random.default_rng(seed)
    folder = root / "images_001" / "images"
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[0:288, 0:320].astype(np.float32)
    lines = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
             "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"]
    findings = ["Atelectasis", "Cardiomegaly", "Effusion", "Nodule", "Mass", "Pneumothorax", "Consolidation"]
    for i in progress(range(n), desc="write NIH fixture", unit="img"):
        a, b, c = rng.uniform(0.01, 0.1, 3)
        img = 128 + 60 * np.sin(a * yy + c) * np.cos(b * xx) + rng.normal(0, 8, (288, 320)).astype(np.float32)
        name = f"{i // 2 + 1:08d}_{i % 2:03d}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / name, compress_level=1)
        found = [f for f in findings if rng.random() < 0.08]
        lines.append(f"{name},{'|'.join(found) or 'No Finding'},{i % 2},{i // 2 + 1},{30 + i % 50},"
                     f"{'MF'[i % 2]},PA,320,288,0.143,0.143,")
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")


MIMIC_OBS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
             "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
             "Pneumothorax", "Support Devices"]
MIMIC_LABELS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Pneumothorax", "No_Finding"]


def write_mimic_tables(root: Path, n: int, seed: int = 0) -> None:
    """The three MIMIC-CXR-JPG 2.0.0 tables for ``n`` images (no image files: the scan opens none)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    study_of = np.sort(rng.integers(0, max(1, int(n / 1.66)), n))
    studies = np.unique(study_of)
    subject_of_study = np.sort(rng.integers(0, max(1, int(len(studies) / 3.5)), len(studies)))
    subj = dict(zip(studies, 10000000 + subject_of_study * 137))
    subject = np.array([subj[s] for s in study_of]).astype(str)
    study = (50000000 + study_of * 11).astype(str)
    hexes = rng.integers(0, 16**8, (n, 5))
    dicom = ["-".join(f"{v:08x}" for v in row) for row in hexes]
    meta = pd.DataFrame({
        "dicom_id": dicom, "subject_id": subject, "study_id": study,
        "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
        "ViewPosition": rng.choice(["PA", "AP", "LATERAL", "LL", ""], n, p=[0.38, 0.34, 0.22, 0.05, 0.01]),
        "Rows": 3056, "Columns": 2544, "StudyDate": 21800506, "StudyTime": 213014.531,
        "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
        "ViewCodeSequence_CodeMeaning": "postero-anterior", "PatientOrientationCodeSequence_CodeMeaning": "Erect",
    })
    meta.to_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    first = ~pd.Series(study).duplicated().to_numpy()
    cells = rng.choice(["1.0", "0.0", "-1.0", ""], (int(first.sum()), len(MIMIC_OBS)), p=[0.12, 0.08, 0.05, 0.75])
    chex = pd.DataFrame(cells, columns=MIMIC_OBS)
    chex.insert(0, "study_id", study[first])
    chex.insert(0, "subject_id", subject[first])
    chex.to_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", index=False)
    split = rng.choice(["train", "validate", "test"], n, p=[0.978, 0.008, 0.014])
    pd.DataFrame({"dicom_id": dicom, "study_id": study, "subject_id": subject, "split": split}).to_csv(
        root / "mimic-cxr-2.0.0-split.csv.gz", index=False)


def _mimic_cfg(root: Path) -> dict:
    return {"name": "bench", "format": "mimic_jpg", "root": str(root), "max_res": 64, "workers": 0,
            "patient_salt": "benchmark-salt", "split": {"train": 0.7, "val": 0.15, "test": 0.15, "seed": 0}}


def _v1_scan(root: Path, labels: list[str]) -> list:
    """The previous design, for reference: whole tables as strings, a dict of label rows, a list of records."""
    import pandas as pd

    from synthcxr.data.adapters.base import Record, apply_uncertain, parse_label_value
    from synthcxr.data.dicom import normalise_view

    src = {n: ("Pleural Effusion" if n == "Effusion" else "No Finding" if n == "No_Finding" else n) for n in labels}
    meta = pd.read_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", dtype=str, keep_default_na=False)
    lab = pd.read_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", dtype=str, keep_default_na=False)
    rows = {(s, t): dict(zip(lab.columns, v)) for s, t, v in zip(lab["subject_id"], lab["study_id"], lab.itertuples(index=False))}
    sp = pd.read_csv(root / "mimic-cxr-2.0.0-split.csv.gz", dtype=str, keep_default_na=False)
    split_of = dict(zip(sp["dicom_id"], sp["split"]))
    out = []
    for v in meta.itertuples(index=False):
        row = dict(zip(meta.columns, v))
        view = normalise_view(row["ViewPosition"])
        if view not in ("PA", "AP") or (row["subject_id"], row["study_id"]) not in rows:
            continue
        r = rows[(row["subject_id"], row["study_id"])]
        labs = {n: apply_uncertain(parse_label_value(r[s], s), "ones", 0.0) for n, s in src.items()}
        path = root / "files" / f"p{row['subject_id'][:2]}" / f"p{row['subject_id']}" / f"s{row['study_id']}" / f"{row['dicom_id']}.jpg"
        out.append(Record(str(path.relative_to(root)), row["dicom_id"], row["subject_id"], view, None, float("nan"),
                          labs, split_of.get(row["dicom_id"]), str(path)))
    return out


def _child(variant: str, root: Path) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    import json

    from synthcxr.data.adapters import make_adapter
    from synthcxr.data.prepare import PrepareConfig, _label_table, scan_metadata
    from synthcxr.data.quarantine import Quarantine

    def status_mib(field: str) -> float:
        with open("/proc/self/status") as fh:
            return next(int(x.split()[1]) for x in fh if x.startswith(field)) / 1024

    base = status_mib("VmRSS")
    t0 = time.perf_counter()
    if variant == "synthcxr":
        pcfg = PrepareConfig.from_section(_mimic_cfg(root))
        records, kept = scan_metadata(make_adapter(pcfg, MIMIC_LABELS), MIMIC_LABELS, Quarantine())
        n = len(_label_table(records, kept, MIMIC_LABELS, pcfg))
    else:
        n = len(_v1_scan(root, MIMIC_LABELS))
    dt = time.perf_counter() - t0
    # VmHWM, not ru_maxrss: Linux carries the forking parent's peak into ru_maxrss across exec
    peak = status_mib("VmHWM")
    print(json.dumps({"variant": variant, "n": n, "peak_above_base_mib": peak - base, "base_mib": base, "s": dt}))


def bench_metadata(args) -> int:
    import json
    import statistics
    import subprocess

    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        write_mimic_tables(root, args.n)
        print(f"wrote MIMIC tables for {args.n} images in {time.perf_counter() - t0:.1f} s")
        got: dict[str, list[dict]] = {"synthcxr": [], "v1": []}
        for _ in range(args.repeats):
            for variant in ("synthcxr", "v1"):  # interleaved, each in a fresh process
                out = subprocess.run([sys.executable, __file__, "--child", variant, "--root", str(root)],
                                     check=True, capture_output=True, text=True, timeout=3600).stdout
                got[variant].append(json.loads(out.strip().splitlines()[-1]))
    for variant, runs in got.items():
        peaks = [r["peak_above_base_mib"] for r in runs]
        print(f"{variant:9s} rows kept {runs[0]['n']}: peak RSS above imports min {min(peaks):.0f} MiB, "
              f"median {statistics.median(peaks):.0f} MiB ({1024 * 1024 * min(peaks) / runs[0]['n']:.0f} B/image); "
              f"{statistics.median(r['s'] for r in runs):.1f} s")
    a = statistics.median(r["peak_above_base_mib"] for r in got["synthcxr"])
    b = statistics.median(r["peak_above_base_mib"] for r in got["v1"])
    print(f"v1 / synthcxr peak memory (median): {b / a:.1f}x")
    return 0


def bench_decoder(args) -> int:
    """Peak RSS of one fresh process decoding a 4096x3328 windowed 12-bit DICOM into a 1024 px pyramid."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        path = Path(tmp) / "big.dcm"
        rng = np.random.default_rng(0)
        arr = rng.integers(0, 4096, (4096, 3328), dtype=np.uint16)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.PatientID, ds.ViewPosition = "bench", "PA"
        ds.set_pixel_data(arr, photometric_interpretation="MONOCHROME1", bits_stored=12)
        ds.RescaleSlope, ds.RescaleIntercept, ds.WindowCenter, ds.WindowWidth = 1.0, -1024.0, 1000.0, 3000.0
        ds.save_as(path, enforce_file_format=True)
        del arr, ds
        code = (
            "import sys\n"
            "from synthcxr.data.prepare import PrepareConfig, decode_one\n"
            "def status(field):\n"
            "    return next(int(x.split()[1]) for x in open('/proc/self/status') if x.startswith(field)) / 1024\n"
            "base = status('VmRSS')\n"
            "cfg = PrepareConfig.from_section({'name': 'b', 'format': 'dicom', 'root': sys.argv[1], 'max_res': 1024})\n"
            "from synthcxr.data.adapters.dicom import DicomAdapter\n"
            "ad = DicomAdapter(cfg, ['No_Finding'])\n"
            "pyr, short = decode_one(ad, sys.argv[2], 'big.dcm', 1024)\n"
            "peak = status('VmHWM')\n"
            "print(f'{base:.0f} {peak:.0f} {short}')\n"
        )
        import subprocess

        out = subprocess.run([sys.executable, "-c", code, tmp, str(path)], check=True, capture_output=True,
                             text=True, timeout=600).stdout.split()
    base, peak, short = float(out[0]), float(out[1]), int(out[2])
    print(f"decoder process: RSS after imports {base:.0f} MiB, peak {peak:.0f} MiB "
          f"({peak - base:.0f} MiB for one 4096x3328 windowed DICOM, short side {short}, into a 1024 px pyramid)")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=None,
                    help="images (default 20,000 for phantom/nih, 377,110 for mimic-tables)")
    ap.add_argument("--res", type=int, default=256, help="max_res of the pyramid")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--source", choices=["phantom", "nih", "mimic-tables", "dicom-decoder"], default="phantom")
    ap.add_argument("--repeats", type=int, default=2, help="mimic-tables: fresh-process runs per variant")
    ap.add_argument("--out", default=None, help="output folder (default: a temporary folder, removed)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--root", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child, Path(args.root))
        return 0
    if args.source == "mimic-tables":
        args.n = args.n or 377110
        return bench_metadata(args)
    if args.source == "dicom-decoder":
        return bench_decoder(args)
    args.n = args.n or 20000

    from synthcxr.data.prepare import prepare
    from synthcxr.data.settings import PrepareConfig
    from synthcxr.labels import PHANTOM_LABELS

    cfg = {
        "name": "bench",
        "format": "phantom",
        "max_res": args.res,
        "views": ["PA", "AP"],
        "split": {"train": 0.7, "val": 0.15, "test": 0.15, "seed": 0},
        "patient_salt": "benchmark-salt",
        "workers": args.workers,
        "phantom": {"n_patients": args.n, "max_studies": 1, "seed": 1},
    }
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        if args.source == "nih":
            write_nih_layout(Path(tmp) / "nih", args.n)
            cfg.update(format="nih", root=str(Path(tmp) / "nih"))
        out = Path(tmp) / "prepared"
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        summary = prepare(PrepareConfig.from_section(cfg), list(PHANTOM_LABELS), out)
        dt = time.perf_counter() - t0
        self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        child_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        h5 = (out / "images.h5").stat().st_size
    n = summary["counts"]["kept"]
    print(f"source: {args.source}; images: {n} at {args.res} px, workers {args.workers}, {dt:.1f} s ({n / dt:.1f} img/s)")
    print(f"images.h5: {h5 / 2**20:.1f} MiB")
    print(f"peak RSS main process: {self_kib / 1024:.1f} MiB (at start {rss0 / 1024:.1f} MiB)")
    print(f"peak RSS largest worker: {child_kib / 1024:.1f} MiB")
    ok = max(self_kib, child_kib) < 1024 * 1024
    print(f"target < 1 GiB per process: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
