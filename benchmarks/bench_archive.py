"""Archive sampling throughput against a bare generator forward pass, and peak memory at two archive sizes.

    python benchmarks/bench_archive.py                      # defaults: 64 px random-weight PGGAN
    python benchmarks/bench_archive.py --generator results/pggan/demo/generator.pt

Prints (1) whether a sample renders to the same uint8 image alone as inside a batch of 64 (why the
archive renders in shard-aligned micro-batches), (2) archive img/s vs bare ``G(z)`` img/s on the same
latents and micro-batches, best of ``--repeats`` (goal: ratio >= 0.9), plus the process CPU-time ratio,
which is steadier than wall time on a shared machine, (3) peak RSS while a fresh process samples
``--sizes`` samples (default 1k and 10k), which should stay flat as the archive grows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from synthcxr.archive.render import micro_batches
from synthcxr.archive.sample import ArchiveConfig, sample_shard
from synthcxr.imaging import float_to_uint8
from synthcxr.labels import PHANTOM_LABELS
from synthcxr.lco.latents import write_latents
from synthcxr.pggan import Generator, load_generator

LABELS = list(PHANTOM_LABELS)


def make_generator(args) -> torch.nn.Module:
    if args.generator:
        return load_generator(args.generator, "cpu")
    torch.manual_seed(0)
    return Generator(resolution=args.res, latent_dim=args.latent_dim, fmap_base=args.fmap_base, fmap_max=args.fmap_max).eval()


def write_fake_latents(folder: Path, n: int, shard_size: int, latent_dim: int, seed: int = 0) -> list[Path]:
    """Latents shards in the lco contract with random z and labels (what sampling consumes)."""
    rng = np.random.default_rng(seed)
    paths = []
    for shard, start in enumerate(range(0, n, shard_size)):
        m = min(shard_size, n - start)
        df = pd.DataFrame({"sample_id": [f"b{start + i:07d}" for i in range(m)], "shard": shard, "index": np.arange(m), "seed": start + np.arange(m), "attempts": 1})
        t = (rng.random((m, len(LABELS))) < 0.2).astype(np.int8)
        for j, name in enumerate(LABELS):
            df[f"target_{name}"] = t[:, j]
            df[f"prob_{name}"] = rng.random(m).astype(np.float32)
        df["steps"], df["g_evals"], df["grad_steps"], df["success"], df["reason"] = 100, 100.0, 100, True, ""
        df["z"] = list(rng.standard_normal((m, latent_dim)).astype(np.float32))
        p = folder / "latents" / f"shard-{shard:05d}.parquet"
        write_latents(df, LABELS, p)
        paths.append(p)
    return paths


def batch_invariance(G, batch: int) -> tuple[int, int]:
    """(# samples whose float output differs alone vs in the batch, # whose uint8 image differs)."""
    z = torch.randn(batch, G.latent_dim, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        full = G(z)
        f = u = 0
        for i in range(batch):
            one = G(z[i : i + 1])[0]
            f += int(not torch.equal(one, full[i]))
            u += int(not torch.equal(float_to_uint8(one), float_to_uint8(full[i])))
    return f, u


def bare_forward_s(G, z: np.ndarray, batch: int) -> tuple[float, float]:
    """(wall, process CPU) seconds of ``G(z)`` over the same micro-batches the archive uses."""
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for s, e in micro_batches(len(z), batch):
            G(torch.from_numpy(z[s:e]))
    return time.perf_counter() - t0, time.process_time() - c0


def archive_s(G, lat_paths: list[Path], out: Path, cfg: ArchiveConfig) -> tuple[float, float, float]:
    """(wall, process CPU, writer-thread busy) seconds of sampling every latents shard."""
    t0, c0, busy = time.perf_counter(), time.process_time(), 0.0
    for lp in lat_paths:
        name = lp.stem
        busy += sample_shard(lp, G, {f: out / f"{name}.{f}" for f in cfg.formats}, cfg, "0" * 64)["writer_seconds"]
    return time.perf_counter() - t0, time.process_time() - c0, busy


def current_rss_mib() -> float:
    """Resident set size now (Linux /proc), in MiB."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(args) -> None:
    """Fresh process: sample the latents under ``args.child``, print RSS before and peak RSS (MiB) as JSON."""
    G = make_generator(args)
    cfg = ArchiveConfig(labels=LABELS, formats=args.formats, compression=args.compression, batch_size=args.batch)
    folder = Path(args.child)
    lat = sorted((folder / "latents").glob("shard-*.parquet"))
    with torch.inference_mode():
        G(torch.zeros(args.batch, G.latent_dim))  # allocator warm-up counted in the baseline
    base = current_rss_mib()
    stop, seen = threading.Event(), [base]

    def watch() -> None:  # current RSS every 20 ms: the high-water mark of the sampling phase alone
        while not stop.wait(0.02):
            seen.append(current_rss_mib())

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    secs = archive_s(G, lat, folder / "shards", cfg)[0]
    stop.set()
    t.join()
    peak = max(seen)
    hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size = sum(p.stat().st_size for p in (folder / "shards").iterdir()) / 2**20
    n = sum(pq.ParquetFile(p).metadata.num_rows for p in lat)
    print(json.dumps({"n": n, "params_m": sum(p.numel() for p in G.parameters()) / 1e6, "rss_before_mib": base, "peak_rss_mib": peak, "process_hwm_mib": hwm, "seconds": secs, "archive_mib": size}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generator", help="generator.pt (default: random-weight PGGAN built from the size options)")
    ap.add_argument("--res", type=int, default=64)
    ap.add_argument("--latent-dim", type=int, default=128)
    # Demo config sizes (config/config.yaml pggan). Pass e.g. --fmap-base 256 --fmap-max 32 for a
    # cheaper generator, where encoding and writing weigh relatively more (the harder case).
    ap.add_argument("--fmap-base", type=int, default=1024)
    ap.add_argument("--fmap-max", type=int, default=128)
    ap.add_argument("--memory-fmap", type=int, nargs=2, default=[64, 16], metavar=("BASE", "MAX"),
                    help="generator width for the memory runs (writer memory does not depend on it; keeps 10k quick)")
    ap.add_argument("--batch", type=int, default=64, help="archive.batch_size")
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--formats", nargs="+", default=["h5", "parquet"])
    ap.add_argument("--compression", default="gzip")
    ap.add_argument("--throughput-n", type=int, default=512, help="samples for the throughput comparison")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="*", default=[1000, 10000], help="archive sizes for the memory test")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("SYNTHCXR_NO_PROGRESS", "1")
    if args.child:
        return child(args)

    G = make_generator(args)
    print(f"generator: {G.resolution} px, latent {G.latent_dim}, {sum(p.numel() for p in G.parameters()) / 1e6:.2f} M params; "
          f"torch threads {torch.get_num_threads()}; formats {args.formats}, compression {args.compression}, batch {args.batch}")
    f, u = batch_invariance(G, args.batch)
    print(f"batch invariance on cpu: {f}/{args.batch} samples differ in float and {u}/{args.batch} in uint8 when rendered alone "
          f"vs in a batch of {args.batch} -> {'micro-batch alignment required' if u else 'no difference seen (alignment kept anyway)'}")

    cfg = ArchiveConfig(labels=LABELS, formats=args.formats, compression=args.compression, batch_size=args.batch)
    with tempfile.TemporaryDirectory() as d:
        lat = write_fake_latents(Path(d), args.throughput_n, args.shard_size, G.latent_dim)
        z = np.concatenate([pd.read_parquet(p)["z"].map(np.asarray).pipe(lambda s: np.stack(s.to_list())) for p in lat]).astype(np.float32)
        bare_forward_s(G, z[: args.batch], args.batch)  # warm-up
        bare, arch = [], []
        for r in range(args.repeats):  # interleaved so both see the same machine load
            bare.append(bare_forward_s(G, z, args.batch))
            arch.append(archive_s(G, lat, Path(d) / f"shards{r}", cfg))
    n = args.throughput_n
    b, a = n / min(x[0] for x in bare), n / min(x[0] for x in arch)
    bc, ac = min(x[1] for x in bare), min(x[1] for x in arch)
    busy = min(x[2] for x in arch)
    print(f"throughput ({n} samples, best of {args.repeats}): bare G(z) {b:.1f} img/s, archive {a:.1f} img/s, "
          f"wall ratio {a / b:.3f} (goal >= 0.9)")
    print(f"  cpu time: bare {bc:.2f}s, archive {ac:.2f}s (cpu ratio {bc / ac:.3f}); writer thread busy {busy:.2f}s, "
          f"overlapped with rendering; machine load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    for size in args.sizes:
        with tempfile.TemporaryDirectory() as d:  # latents written here so the child's RSS is sampling only
            write_fake_latents(Path(d), size, args.shard_size, G.latent_dim)
            cmd = [sys.executable, __file__, *sys.argv[1:], "--sizes", "--child", d]
            if not args.generator:
                cmd += ["--fmap-base", str(args.memory_fmap[0]), "--fmap-max", str(args.memory_fmap[1])]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"memory ({r['params_m']:.3f} M-param generator): {r['n']:>6} samples -> peak RSS while sampling {r['peak_rss_mib']:.0f} MiB "
              f"(before sampling {r['rss_before_mib']:.0f} MiB, process high-water mark {r['process_hwm_mib']:.0f} MiB), "
              f"{r['n'] / r['seconds']:.1f} img/s, archive {r['archive_mib']:.1f} MiB")


if __name__ == "__main__":
    main()
