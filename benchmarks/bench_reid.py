"""Re-identification audit cost: samples x training images, and how it grows.

The audit does three things, each timed here through the functions ``validate_reid`` runs:

* embed the training gallery once (``embed_batches``: one forward per training image);
* embed every sample at each aligned view (``embed_views``: (2 * align + 1)^2 forwards per sample);
* exact search (``best_match`` over a ``NearestIndex``: one chunked matrix product per view).

Embedding cost grows with the number of images, search with samples x training images x views. The
benchmark measures both over a grid of sizes, prints min/median seconds over ``--repeats`` runs of each
size (sizes interleaved within a repeat), the share of search in the total, and the growth exponent
of each part fitted on a log-log scale. Images are random (cost does not depend on content); the
verifier has the configured architecture with untrained weights.

    python benchmarks/bench_reid.py                      # 1k..10k samples vs 10k training images, 64 px
    python benchmarks/bench_reid.py --samples 10000 --train 1000 2000 5000 10000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from synthcxr.validate.memorization import NearestIndex  # noqa: E402
from synthcxr.validate.reid import best_match  # noqa: E402
from synthcxr.validate.verifier import Verifier, embed_batches, embed_views  # noqa: E402


def _batches(images: np.ndarray, batch: int):
    for s in range(0, len(images), batch):
        yield images[s : s + batch]


def run_once(model: Verifier, samples: np.ndarray, train: np.ndarray, align: int, batch: int, chunk: int,
             device: torch.device) -> dict[str, float]:
    """Seconds of each audit part for one (samples, training images) size."""
    t0 = time.perf_counter()
    index = NearestIndex(embed_batches(model, _batches(train, batch), device), np.arange(len(train)), device, chunk, center=False)
    t1 = time.perf_counter()
    t_embed, t_search = 0.0, 0.0
    for b in _batches(samples, batch):
        a = time.perf_counter()
        views = embed_views(model, b, align, device)
        m = time.perf_counter()
        best_match(index, views)
        t_embed += m - a
        t_search += time.perf_counter() - m
    return {"gallery": t1 - t0, "embed": t_embed, "search": t_search, "total": t1 - t0 + t_embed + t_search}


def slope(x: list[float], y: list[float]) -> float:
    """Least-squares slope of log y on log x (the growth exponent)."""
    if len(x) < 2:
        return float("nan")
    return float(np.polyfit(np.log(x), np.log(np.maximum(y, 1e-9)), 1)[0])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, nargs="+", default=[1000, 2000, 5000, 10000])
    ap.add_argument("--train", type=int, nargs="+", default=[10000])
    ap.add_argument("--res", type=int, default=64)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--embed-dim", type=int, default=128)
    ap.add_argument("--align", type=int, default=1)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    os.environ.setdefault("SYNTHCXR_NO_PROGRESS", "1")  # the table is the output

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = Verifier(args.res, args.width, args.embed_dim).to(device).eval()
    rng = np.random.default_rng(0)
    n_max, m_max = max(args.samples), max(args.train)
    samples_all = rng.integers(0, 256, (n_max, args.res, args.res), dtype=np.uint8)
    train_all = rng.integers(0, 256, (m_max, args.res, args.res), dtype=np.uint8)
    sizes = [(n, m) for m in args.train for n in args.samples]
    views = (2 * args.align + 1) ** 2
    print(f"verifier res {args.res} width {args.width} embed {args.embed_dim}, align {args.align} px ({views} views), "
          f"{args.threads} thread(s), device {device}, {args.repeats} repeat(s)")
    runs: dict[tuple[int, int], list[dict[str, float]]] = {s: [] for s in sizes}
    run_once(model, samples_all[: args.batch], train_all[: args.batch], args.align, args.batch, args.chunk, device)  # warm-up
    for _ in range(args.repeats):
        for n, m in sizes:  # interleaved: every size once per repeat
            runs[(n, m)].append(run_once(model, samples_all[:n], train_all[:m], args.align, args.batch, args.chunk, device))

    print(f"\n{'samples':>8} {'train':>8} {'total min':>10} {'total med':>10} {'gallery':>8} {'embed':>8} {'search':>8} "
          f"{'search %':>8} {'ms/sample':>10}")
    med: dict[tuple[int, int], dict[str, float]] = {}
    for n, m in sizes:
        r = runs[(n, m)]
        med[(n, m)] = {k: float(np.median([x[k] for x in r])) for k in r[0]}
        mn = min(x["total"] for x in r)
        d = med[(n, m)]
        print(f"{n:>8} {m:>8} {mn:>10.2f} {d['total']:>10.2f} {d['gallery']:>8.2f} {d['embed']:>8.2f} {d['search']:>8.2f} "
              f"{100 * d['search'] / d['total']:>7.1f}% {1000 * d['total'] / n:>10.3f}")
    print("\ngrowth exponents (log-log slope of median seconds):")
    for m in args.train:
        ns = [n for n in args.samples]
        if len(ns) > 1:
            print(f"  train {m}: embed ~ samples^{slope(ns, [med[(n, m)]['embed'] for n in ns]):.2f}, "
                  f"search ~ samples^{slope(ns, [med[(n, m)]['search'] for n in ns]):.2f}, "
                  f"total ~ samples^{slope(ns, [med[(n, m)]['total'] for n in ns]):.2f}")
    for n in args.samples:
        ms = list(args.train)
        if len(ms) > 1:
            print(f"  samples {n}: gallery ~ train^{slope(ms, [med[(n, m)]['gallery'] for m in ms]):.2f}, "
                  f"search ~ train^{slope(ms, [med[(n, m)]['search'] for m in ms]):.2f}")
    big = (n_max, m_max)
    d = med[big]
    print(f"\naudit of {n_max} samples against {m_max} training images: {d['total']:.1f} s median "
          f"({d['gallery']:.1f} s gallery, {d['embed']:.1f} s sample views, {d['search']:.1f} s exact search)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
