"""Throughput of the phantom writers: 2,000 images at 64 px in each on-disk layout.

Prints images/s per layout and the total seconds; run with ``.venv/bin/python benchmarks/bench_phantom.py``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from synthcxr.data.phantom import LAYOUTS, PhantomConfig, render, sample_cohort, write_layout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n-images", type=int, default=2000)
    ap.add_argument("--res", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    cfg = PhantomConfig.from_section(dict(n_patients=args.n_images, max_studies=4, seed=11))
    cohort = sample_cohort(cfg).iloc[: args.n_images]
    t0 = time.perf_counter()
    for _, row in cohort.iloc[:200].iterrows():
        render(row, args.res)
    per = (time.perf_counter() - t0) / min(200, len(cohort))
    print(f"render {args.res} px: {per * 1000:.2f} ms/image (single process)")
    total = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for layout in LAYOUTS:
            t = time.perf_counter()
            write_layout(Path(tmp) / layout, layout, cfg, args.res, workers=args.workers, cohort=cohort)
            dt = time.perf_counter() - t
            total += dt
            print(f"{layout:<10} {len(cohort)} images in {dt:6.1f} s = {len(cohort) / dt:7.1f} images/s")
    print(f"total {total:.1f} s for {len(LAYOUTS)} layouts ({args.workers} workers)")


if __name__ == "__main__":
    main()
