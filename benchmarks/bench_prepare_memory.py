"""Peak memory of the prepare stage on a large phantom dataset (target: well under 1 GiB).

    python benchmarks/bench_prepare_memory.py                     # 20,000 images at 256 px
    python benchmarks/bench_prepare_memory.py --n 2000 --workers 2

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="number of phantom images (one study per patient)")
    ap.add_argument("--res", type=int, default=256, help="max_res of the pyramid")
    ap.add_argument("--workers", type=int, default=2)
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
        out = Path(tmp) / "prepared"
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        summary = prepare(cfg, list(PHANTOM_LABELS), out)
        dt = time.perf_counter() - t0
        self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        child_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        h5 = (out / "images.h5").stat().st_size
    n = summary["counts"]["kept"]
    print(f"images: {n} at {args.res} px, workers {args.workers}, {dt:.1f} s ({n / dt:.1f} img/s)")
    print(f"images.h5: {h5 / 2**20:.1f} MiB")
    print(f"peak RSS main process: {self_kib / 1024:.1f} MiB (at start {rss0 / 1024:.1f} MiB)")
    print(f"peak RSS largest worker: {child_kib / 1024:.1f} MiB")
    ok = max(self_kib, child_kib) < 1024 * 1024
    print(f"target < 1 GiB per process: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
