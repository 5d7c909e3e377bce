"""Archive writing and reading at scale: can the sample job keep a GPU fed, and can consumers stream it?

    python benchmarks/bench_archive.py                          # 64, 256 and 1024 px; about 10 minutes on 2 cores
    python benchmarks/bench_archive.py --res 64 --quick         # a smoke run

Sections, each measured in this one run, A and B interleaved, best (min time) and median of ``--repeats``:

1. **Generator rate** on this machine: bare ``G(z)`` img/s with the demo's network at 64 px
   (config/config.yaml) and the NIH example's network (config/examples/nih-cxr14.yaml, 23 M parameters)
   at 256 and 1024 px, random weights (same FLOPs as trained ones), interleaved with section 3.
2. **Writer capacity**: the sample job (``sample_shard``: encoder threads, writer thread, HDF5 + Parquet)
   fed by a generator that costs nothing (pre-rendered phantom radiographs), so only storage work is
   timed: the regime of a GPU node, where rendering is not the bottleneck. img/s with 1, 2 and all
   cores of encoder workers, the scaling efficiency ``rate(k) / (k * rate(1))`` (goal >= 0.8 at 2), the
   ratio to this machine's generator rate, and to ``--target-rate`` (default 100 img/s at 1024 px,
   standing in for a GPU), with the cores that rate needs at the measured per-core rate.
3. **The sample job end to end** with the real-size generator on this machine's CPU: archive img/s over
   bare ``G(z)`` img/s on the same latents (goal >= 0.9: writing must not slow rendering down).
4. **Consumer throughput**: img/s through a ``torch.utils.data.DataLoader`` (2 workers) streaming the
   release with ``synthcxr.archive.stream`` from Parquet, WebDataset and HDF5 shards (pixels checked
   against the manifest, as by default).
5. **Memory flat in archive size**: peak RSS of a fresh process sampling one shard of ``--sizes`` samples,
   and of one streaming a release of that many (above a baseline taken after a warm-up; 64 px), and the
   manifest row groups read per epoch (goal: one scan).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from synthcxr.archive.finalize import finalize_archive
from synthcxr.archive.render import micro_batches
from synthcxr.archive.sample import ArchiveConfig, sample_shard
from synthcxr.config import REPO_ROOT, read_config_file
from synthcxr.labels import PHANTOM_LABELS
from synthcxr.lco.latents import write_latents
from synthcxr.pggan import Generator
from synthcxr.utils.hashing import sha256_file

LABELS = list(PHANTOM_LABELS)
SHA = "0" * 64


# ----------------------------------------------------------------------------------------------- inputs
def network_for(res: int) -> dict:
    """Generator sizes and archive.batch_size: the demo config at <= 64 px, the NIH example above (its real
    1024 px network)."""
    src = "config.yaml" if res <= 64 else "examples/nih-cxr14.yaml"
    conf = read_config_file(REPO_ROOT / "config" / src)
    base = read_config_file(REPO_ROOT / "config" / "config.yaml")
    p = conf["pggan"]
    out = {k: int(p.get(k, base["pggan"][k])) for k in ("latent_dim", "fmap_base", "fmap_max")}
    batch = int(conf.get("archive", {}).get("batch_size", base["archive"]["batch_size"]))
    return out | {"source": src, "batch": batch}


def make_generator(res: int) -> nn.Module:
    net = network_for(res)
    torch.manual_seed(0)
    return Generator(resolution=res, latent_dim=net["latent_dim"], fmap_base=net["fmap_base"], fmap_max=net["fmap_max"]).eval()


def phantom_bank(res: int, n: int) -> np.ndarray:
    """``n`` distinct phantom radiographs at ``res`` (what real renders compress like, unlike noise)."""
    from synthcxr.data.phantom import PhantomConfig, render, sample_cohort

    cohort = sample_cohort(PhantomConfig.from_section(dict(n_patients=n, max_studies=1, seed=5))).iloc[:n]
    return np.stack([render(row, res) for _, row in cohort.iterrows()])


class BankGenerator(nn.Module):
    """A generator that costs nothing: ``G(z)`` returns bank image ``int(z[:, 0]) % len(bank)``.

    Stands in for a GPU, on which rendering is far faster than CPU encoding, so the sample job's rate
    is its writer's capacity.
    """

    def __init__(self, bank: np.ndarray, latent_dim: int = 8):
        super().__init__()
        self.resolution, self.latent_dim = int(bank.shape[-1]), latent_dim
        self.register_buffer("bank", torch.from_numpy(bank.astype(np.float32) / 127.5 - 1.0)[:, None])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.bank[z[:, 0].long() % self.bank.shape[0]]


def write_fake_latents(folder: Path, n: int, shard_size: int, latent_dim: int, seed: int = 0) -> list[Path]:
    """Latents shards in the lco contract (what sampling consumes); ``z[:, 0]`` is the sample number."""
    rng = np.random.default_rng(seed)
    paths = []
    for shard, start in enumerate(range(0, n, shard_size)):
        m = min(shard_size, n - start)
        df = pd.DataFrame({"sample_id": [f"b{start + i:07d}" for i in range(m)], "shard": shard, "index": np.arange(m),
                           "seed": start + np.arange(m), "attempts": 1})
        t = (rng.random((m, len(LABELS))) < 0.2).astype(np.int8)
        for j, name in enumerate(LABELS):
            df[f"target_{name}"] = t[:, j]
            df[f"prob_{name}"] = rng.random(m).astype(np.float32)
        df["steps"], df["g_evals"], df["grad_steps"], df["success"], df["reason"] = 100, 100.0, 100, True, ""
        z = rng.standard_normal((m, latent_dim)).astype(np.float32)
        z[:, 0] = start + np.arange(m)
        df["z"] = list(z)
        p = folder / "latents" / f"shard-{shard:05d}.parquet"
        write_latents(df, LABELS, p)
        paths.append(p)
    return paths


def _z(lat_paths: list[Path]) -> np.ndarray:
    return np.concatenate([np.stack(pd.read_parquet(p)["z"].map(np.asarray).to_list()) for p in lat_paths]).astype(np.float32)


# ----------------------------------------------------------------------------------------------- timing
def bare_s(G: nn.Module, z: np.ndarray, batch: int) -> float:
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s, e in micro_batches(len(z), batch):
            G(torch.from_numpy(z[s:e]))
    return time.perf_counter() - t0


def sample_s(G: nn.Module, lat_paths: list[Path], out: Path, cfg: ArchiveConfig) -> float:
    t0 = time.perf_counter()
    for lp in lat_paths:
        sample_shard(lp, G, {f: out / f"{lp.stem}.{f}" for f in cfg.work_formats}, cfg, SHA)
    return time.perf_counter() - t0


def stats(n: int, secs: list[float]) -> tuple[float, float]:
    """(best, median) img/s of ``n`` images over repeated timings."""
    return n / min(secs), n / statistics.median(secs)


def scaled(n64: int, res: int, floor: int) -> int:
    """``n64`` images at 64 px, the same pixel count at ``res`` (at least ``floor``): similar seconds per run."""
    return max(floor, int(n64 * (64 / res) ** 2))


def section_generator(args, res: int, log: dict, tmp: Path) -> float:
    """Sections 1 and 3: bare G(z) and the sample job on the same latents, interleaved; returns G's rate."""
    G = make_generator(res)
    net = network_for(res)
    n = scaled(args.gen_n, res, 8)
    batch = min(args.batch or net["batch"], n)
    lat = write_fake_latents(tmp / f"e{res}", n, n, G.latent_dim, seed=1)
    z = _z(lat)
    bare_s(G, z[:batch], batch)  # warm-up
    cfg = ArchiveConfig.from_section(dict(name="archive", labels=LABELS, batch_size=batch, workers=os.cpu_count() or 1))
    bare, arch = [], []
    for r in range(args.repeats):
        bare.append(bare_s(G, z, batch))
        arch.append(sample_s(G, lat, tmp / f"e{res}" / f"out{r}", cfg))
    (bb, bm), (ab, am) = stats(n, bare), stats(n, arch)
    params = sum(p.numel() for p in G.parameters()) / 1e6
    print(f"[1] {res:>4} px generator ({net['source']}: latent {net['latent_dim']}, fmap {net['fmap_base']}/{net['fmap_max']}, "
          f"{params:.1f} M params): bare G(z) {bb:.2f} img/s best, {bm:.2f} median ({n} images, batch {batch}, "
          f"{torch.get_num_threads()} torch threads)")
    print(f"[3] {res:>4} px sample job on this CPU: bare G(z) {bb:.2f} img/s, archive {ab:.2f} img/s, ratio {ab / bb:.3f} "
          f"(median {am / bm:.3f}; goal >= 0.9; {cfg.workers} encoder workers)")
    log.setdefault(res, {})["generator"] = {"best": bb, "median": bm, "params_m": params, "n": n}
    log[res]["end_to_end"] = {"bare": bb, "archive": ab, "ratio": ab / bb, "ratio_median": am / bm}
    return bb


def section_writer(args, res: int, g_rate: float, log: dict, tmp: Path) -> None:
    n = scaled(args.writer_n, res, 32)
    bank = phantom_bank(res, min(16, n))
    G = BankGenerator(bank)
    lat = write_fake_latents(tmp / f"w{res}", n, n, G.latent_dim)
    cores = sorted({1, 2, os.cpu_count() or 1})
    secs: dict[int, list[float]] = {k: [] for k in cores}
    for r in range(args.repeats):  # interleaved: every worker count sees the same machine load
        for k in cores:
            cfg = ArchiveConfig.from_section(dict(name="archive", labels=LABELS, batch_size=args.batch or network_for(res)["batch"], workers=k,
                                png_level=args.png_level))
            secs[k].append(sample_s(G, lat, tmp / f"w{res}" / f"out{r}-{k}", cfg))
    size = sum(p.stat().st_size for p in (tmp / f"w{res}" / f"out0-{cores[0]}").iterdir()) / n
    rate1 = stats(n, secs[1])[0]
    out = {}
    for k in cores:
        best, med = stats(n, secs[k])
        eff = best / (k * rate1)
        out[k] = {"best": best, "median": med, "efficiency": eff}
        print(f"[2] {res:>4} px writer, {k} worker(s): {best:7.1f} img/s best, {med:7.1f} median; efficiency {eff:.2f} "
              f"(goal >= 0.8); {best / g_rate:7.1f}x this machine's generator; {best / args.target_rate:.2f}x target "
              f"{args.target_rate:.0f} img/s")
    per_core = out[max(cores)]["best"] / max(cores)
    need = args.target_rate / per_core
    print(f"[2] {res:>4} px: {n} images, batch {args.batch or network_for(res)['batch']}, PNG level {args.png_level}, {size / 1024:.0f} KiB/sample (h5 + parquet working "
          f"shards); at {per_core:.1f} img/s per core, {args.target_rate:.0f} img/s needs about {need:.1f} cores of archive.workers")
    log[res]["writer"] = {"per_worker_count": out, "bytes_per_sample": size, "cores_for_target": need,
                          "target_rate": args.target_rate, "png_level": args.png_level, "n": n}


def build_release(folder: Path, res: int, n: int, formats: list[str], shard_mb: float, workers: int) -> Path:
    """A sealed-less release of ``n`` phantom samples written through the real sample and finalize code."""
    G = BankGenerator(phantom_bank(res, min(16, n)))
    lat = write_fake_latents(folder, n, min(n, 1024), G.latent_dim, seed=2)
    cfg = ArchiveConfig.from_section(dict(labels=LABELS, formats=formats, batch_size=64, workers=workers, shard_mb=shard_mb, name="bench"))
    gen = folder / "generator.pt"
    gen.write_bytes(b"bench generator stand-in")
    for lp in lat:
        sample_shard(lp, G, {f: folder / "work" / "shards" / f"{lp.stem}.{f}" for f in cfg.work_formats}, cfg, sha256_file(gen))
    (folder / "work" / "latents").mkdir(parents=True, exist_ok=True)
    for lp in lat:
        lp.replace(folder / "work" / "latents" / lp.name)
    finalize_archive(folder / "work", folder / "release", cfg, sorted((folder / "work" / "latents").glob("*.parquet")), gen)
    (folder / "release" / "SHA256SUMS").write_text("")  # the stream refuses unsealed releases; contents are not read
    return folder / "release"


def stream_rate(release: Path, fmt: str, workers: int) -> tuple[int, float]:
    import synthcxr.archive as sa

    dl = torch.utils.data.DataLoader(sa.stream(release, format=fmt), batch_size=16, num_workers=workers)
    t0 = time.perf_counter()
    n = sum(len(b["sample_id"]) for b in dl)
    return n, time.perf_counter() - t0


def section_consumer(args, res: int, log: dict, tmp: Path) -> None:
    n = scaled(args.consumer_n, res, 64)
    rel = build_release(tmp / f"c{res}", res, n, ["h5", "parquet", "webdataset"], shard_mb=max(0.05, n * res * res / 4 / 2**20),
                        workers=os.cpu_count() or 1)
    secs: dict[str, list[float]] = {f: [] for f in ("parquet", "webdataset", "h5")}
    for _ in range(args.repeats):
        for fmt in secs:
            got, s = stream_rate(rel, fmt, args.loader_workers)
            assert got == n, (fmt, got, n)
            secs[fmt].append(s)
    out = {}
    for fmt, s in secs.items():
        best, med = stats(n, s)
        out[fmt] = {"best": best, "median": med}
        print(f"[4] {res:>4} px stream {fmt:<10}: {best:8.1f} img/s best, {med:8.1f} median through a DataLoader "
              f"({args.loader_workers} workers, {n} samples, {len(list((rel / 'parquet').iterdir()))} shards, pixels verified)")
    log[res]["consumer"] = out


# ----------------------------------------------------------------------------------------------- memory (children)
def current_rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def watch_peak(fn) -> tuple[float, float, object]:
    """(RSS before, peak RSS while ``fn`` runs, its result), RSS sampled every 20 ms."""
    base = current_rss_mib()
    stop, seen = threading.Event(), [base]

    def watch() -> None:
        while not stop.wait(0.02):
            seen.append(current_rss_mib())

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        res = fn()
    finally:
        stop.set()
        t.join()
    return base, max(seen), res


def child(args) -> None:
    folder = Path(args.child)
    if args.child_mode == "sample":
        G = BankGenerator(phantom_bank(64, 16))
        cfg = ArchiveConfig.from_section(dict(name="archive", labels=LABELS, batch_size=64, workers=2))
        lat = sorted((folder / "latents").glob("shard-*.parquet"))
        warm = write_fake_latents(folder / "warm-up", 256, 256, 8, seed=4)
        sample_s(G, warm, folder / "warm-up", cfg)  # lazy imports and allocator pools before the baseline
        base, peak, secs = watch_peak(lambda: sample_s(G, lat, folder / "shards", cfg))
        n = sum(len(pd.read_parquet(p, columns=["index"])) for p in lat)
        print(json.dumps({"n": n, "rss_before_mib": base, "peak_rss_mib": peak, "seconds": secs}))
        return
    import pyarrow.parquet as pq

    import synthcxr.archive as sa

    rel = folder / "release"
    s = sa.stream(rel, format="parquet", shuffle=256)

    items = s.partition(0, 1)
    next(items)  # lazy imports (decoder, tensors) before the baseline

    def run() -> int:
        return 1 + sum(1 for _ in items)

    base, peak, n = watch_peak(run)
    groups = pq.ParquetFile(rel / "manifest.parquet").num_row_groups
    print(json.dumps({"n": n, "rss_before_mib": base, "peak_rss_mib": peak, "manifest_reads": s.manifest_reads,
                      "manifest_row_groups": groups, "shards": len(s.entries),
                      "hwm_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def section_memory(args, log: dict, tmp: Path) -> None:
    for size in args.sizes:
        d = tmp / f"m{size}"
        write_fake_latents(d, size, size, 8, seed=3)  # one sample job (one LCO shard) of `size` samples
        out = subprocess.run([sys.executable, __file__, "--child", str(d), "--child-mode", "sample"], capture_output=True,
                             text=True, check=True, timeout=3600)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"[5] sampling one shard of {r['n']:>7} samples (64 px): peak RSS {r['peak_rss_mib']:.0f} MiB (before {r['rss_before_mib']:.0f} MiB)")
        log.setdefault("memory", {}).setdefault("sample", {})[size] = r
    for size in args.sizes:
        d = tmp / f"s{size}"
        build_release(d, 64, size, ["parquet"], shard_mb=0.25, workers=os.cpu_count() or 1)
        out = subprocess.run([sys.executable, __file__, "--child", str(d), "--child-mode", "stream"], capture_output=True,
                             text=True, check=True, timeout=3600)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"[5] streaming {r['n']:>7} samples (64 px, {r['shards']} shards, shuffle buffer 256): peak RSS {r['peak_rss_mib']:.0f} MiB "
              f"(before {r['rss_before_mib']:.0f} MiB); manifest row groups read {r['manifest_reads']} of {r['manifest_row_groups']}")
        log["memory"].setdefault("stream", {})[size] = r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--res", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--batch", type=int, help="archive.batch_size (default: the config the resolution's network is from)")
    # counts at 64 px; larger resolutions use the same number of pixels (with a floor)
    ap.add_argument("--gen-n", type=int, default=128, help="images per generator / sample-job timing (floor 8)")
    ap.add_argument("--writer-n", type=int, default=2048, help="images per writer timing (floor 32)")
    ap.add_argument("--consumer-n", type=int, default=4096, help="samples in the consumer release (floor 64)")
    ap.add_argument("--png-level", type=int, default=6, help="archive.png_level of the writer section")
    ap.add_argument("--loader-workers", type=int, default=2)
    ap.add_argument("--target-rate", type=float, default=100.0, help="img/s a GPU renders (stand-in)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="*", default=[1000, 10000, 30000], help="archive sizes for the memory runs")
    ap.add_argument("--skip", nargs="*", default=[], choices=["generator", "writer", "consumer", "memory"])
    ap.add_argument("--quick", action="store_true", help="tiny counts, one repeat (smoke run)")
    ap.add_argument("--json", help="also write every number here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-mode", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("SYNTHCXR_NO_PROGRESS", "1")
    if args.child:
        child(args)
        return 0
    if args.quick:
        args.gen_n, args.writer_n, args.consumer_n, args.repeats = 8, 32, 64, 1
        args.sizes = [s for s in args.sizes if s <= 200] or [100, 200]
    print(f"{os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f}; repeats {args.repeats}")
    log: dict = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for res in args.res:
            log.setdefault(res, {})
            g = section_generator(args, res, log, tmp) if "generator" not in args.skip else float("nan")
            if "writer" not in args.skip:
                section_writer(args, res, g, log, tmp)
            if "consumer" not in args.skip:
                section_consumer(args, res, log, tmp)
        if "memory" not in args.skip:
            section_memory(args, log, tmp)
    if args.json:
        Path(args.json).write_text(json.dumps(log, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
