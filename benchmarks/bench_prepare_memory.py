"""Peak memory of the prepare stage on a large phantom dataset (target: well under 1 GiB).

    python benchmarks/bench_prepare_memory.py                     # 20,000 phantom images at 256 px
    python benchmarks/bench_prepare_memory.py --n 2000 --workers 2
    python benchmarks/bench_prepare_memory.py --source nih        # 20,000 NIH-layout PNGs (fast to decode)

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="number of phantom images (one study per patient)")
    ap.add_argument("--res", type=int, default=256, help="max_res of the pyramid")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--source", choices=["phantom", "nih"], default="phantom")
    ap.add_argument("--out", default=None, help="output folder (default: a temporary folder, removed)")
    args = ap.parse_args(argv)

    from synthcxr.data.prepare import prepare
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
        summary = prepare(cfg, list(PHANTOM_LABELS), out)
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
