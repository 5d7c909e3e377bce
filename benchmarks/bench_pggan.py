"""Progressive GAN training throughput (img/s) per resolution, and the wall time it implies.

Runs real training steps (critic + generator + EMA, data loading included) at the stable phase of
each resolution with the configured networks and minibatches, in ``--repeats`` timed blocks of ``--steps``
steps, and prints the best (min time) and median img/s over the blocks; then estimates how long the configured
schedule takes on this machine (at the median rates). Uses a prepared dataset when given, else a
throwaway synthetic one carrying the config's labels (so ``pggan.finding_floor`` has findings to raise).

    python benchmarks/bench_pggan.py [--config config/config.yaml] [--data results/prepared/phantom]
                                     [--max-res 64] [--steps 6] [--repeats 5] [--device auto] [--amp]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

from synthcxr.config import load_config, section
from synthcxr.pggan.config import PGGANConfig
from synthcxr.pggan.dist import DistInfo
from synthcxr.pggan.train import _Trainer
from synthcxr.utils.runtime import resolve_device


def synthetic_prepared(folder: Path, max_res: int, labels: list[str], n: int = 64) -> Path:
    """Minimal images.h5 + labels.parquet: blocky random images, each finding positive in ~1 of 8 images."""
    rng = np.random.default_rng(0)
    findings = [name for name in labels if name != "No_Finding"]
    y = (rng.random((n, len(findings))) < 0.125).astype(np.float64)
    with h5py.File(folder / "images.h5", "w") as f:
        g = f.create_group("images")
        base = rng.integers(0, 256, (n, 4, 4)).astype(np.float64)
        r = 4
        while r <= max_res:
            level = np.kron(base, np.ones((r // 4, r // 4))) if r > 4 else base
            g.create_dataset(str(r), data=level.astype(np.uint8), chunks=(1, r, r))
            r *= 2
        f.attrs["label_names"] = list(labels)
        f.attrs["max_res"] = max_res
    table = pd.DataFrame({"row": np.arange(n), "split": "train"})
    for j, name in enumerate(findings):
        table[name] = y[:, j]
    if "No_Finding" in labels:
        table["No_Finding"] = (y.sum(axis=1) == 0).astype(np.float64)
    table.to_parquet(folder / "labels.parquet")
    return folder


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--data", default=None, help="prepared dataset folder (default: synthetic)")
    ap.add_argument("--max-res", type=int, default=None, help="highest resolution to time (default: pggan.resolution)")
    ap.add_argument("--steps", type=int, default=6, help="steps per timed block (after 2 warm-up steps)")
    ap.add_argument("--repeats", type=int, default=5, help="timed blocks per resolution: min and median are printed")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", action="store_true")
    a = ap.parse_args(argv)
    if a.steps < 1 or a.repeats < 1:
        ap.error("--steps and --repeats must be >= 1")

    cfg_all = load_config(a.config)
    sec = section(cfg_all, "pggan")
    sec.update(device=a.device, amp=a.amp or sec.get("amp", False))
    if a.max_res:
        sec["resolution"] = a.max_res
    cfg = PGGANConfig.from_section(sec)
    dev = resolve_device(a.device)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(a.data) if a.data else synthetic_prepared(Path(tmp), cfg.resolution, list(cfg_all["labels"]))
        tr = _Trainer(cfg, data, Path(tmp) / "out", DistInfo(0, 1, 0, dev))
        print(f"device {dev}  torch threads {torch.get_num_threads()}  amp {tr.amp_dtype}  "
              f"G {sum(p.numel() for p in tr.G.parameters()) / 1e6:.2f}M  D {sum(p.numel() for p in tr.D.parameters()) / 1e6:.2f}M")
        rates: dict[int, float] = {}
        for ph in tr.sched.phases:
            if ph.kind != "stable" or ph.res in rates:
                continue
            pos = tr.sched.at(ph.start_nimg)
            tr.nimg = ph.start_nimg
            it = tr.loader(pos.res, pos.batch)
            for _ in range(2):
                tr.train_step(tr.G, tr.D, next(it)["image"].to(dev), pos)
            block_rates = []
            for _ in range(a.repeats):
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(a.steps):
                    tr.train_step(tr.G, tr.D, next(it)["image"].to(dev), pos)
                    tr.step += 1
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                block_rates.append(a.steps * pos.batch / (time.perf_counter() - t0))
            rates[pos.res] = statistics.median(block_rates)
            print(f"res {pos.res:5d}  minibatch {pos.batch:4d}  img/s best {max(block_rates):9.1f}  "
                  f"median {rates[pos.res]:9.1f}  ({a.repeats} x {a.steps} steps)", flush=True)
        total = 0.0
        for ph in tr.sched.phases:
            total += (ph.end_nimg - ph.start_nimg) / rates[ph.res]
        print(f"schedule {tr.sched.total_nimg / 1000:g} kimg -> about {total / 60:.1f} min of training on this machine "
              f"(fade phases counted at the stable rate)")


if __name__ == "__main__":
    os.environ.setdefault("SYNTHCXR_NO_PROGRESS", "1")
    main()
