"""One prepared measurement for a GPU slot: PGGAN training, LCO, the sample job, the classifier, FID features.

    python benchmarks/gpu_suite.py OUT [--budget-s 480] [--peer /path/to/pytorch_GAN_zoo] [--device auto]
    python benchmarks/gpu_suite.py OUT --smoke        # every part on CPU at tiny sizes, well under a minute

GPU time comes in slots of minutes, so everything runs from this one command and nothing can waste the slot
on a crash: each part gets a share of ``--budget-s``, sizes its repeats to it, and a part that fails is
recorded with its error while the rest still run. ``OUT/gpu_suite.json`` and ``OUT/gpu_suite.md`` are
rewritten after every part, so a slot that ends early still leaves what was measured.

Parts (A and B interleaved where two things are compared; best and median of the repeats):

1. **pggan**: training img/s at the stable phase of 64, 256 and 1024 px with the NIH example's networks
   (config/examples/nih-cxr14.yaml), fp32 and ``pggan.amp`` interleaved, their ratio; peak CUDA memory of
   each beside ``synthcxr pggan-memory``'s prediction for that minibatch. With ``--peer``,
   ``bench_pggan_peer.py`` against pytorch_GAN_zoo's PGAN at 256 px on the same device (its output is kept).
2. **lco** at 1024 px: forward-equivalents per second of the batched optimiser (an update priced by the
   measured update/forward time ratio, :mod:`synthcxr.lco.cost`), and peak memory beside the chunk plan
   of :mod:`synthcxr.lco.memory`.
3. **sample** at 1024 px: the sample job's img/s with ``archive.workers`` 1, 4, 8 and 16, each as a ratio
   to bare ``G(z)`` (rendered and copied to the host) on the same GPU, interleaved.
4. **classifier**: DenseNet-121 training img/s at 256 px, fp32 and autocast.
5. **fid**: feature extraction img/s (the checker's penultimate layer, DenseNet-121 at 256 px).

The JSON also records which CUDA paths were active (pinned memory, non-blocking copies, autocast dtype,
GradScaler, cudnn.benchmark, the DDP backend) and the device. Random weights: the FLOPs of trained ones.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling benchmarks

from bench_archive import LABELS, _z, make_generator, network_for, sample_s, write_fake_latents  # noqa: E402
from bench_pggan import synthetic_prepared  # noqa: E402

from synthcxr.archive.sample import ArchiveConfig  # noqa: E402
from synthcxr.classifier.models import Classifier, default_arch  # noqa: E402
from synthcxr.config import REPO_ROOT, read_config_file  # noqa: E402
from synthcxr.lco.cost import backward_ratio, forward_equivalents  # noqa: E402
from synthcxr.lco.config import LCOConfig  # noqa: E402
from synthcxr.lco.memory import plan_chunks  # noqa: E402
from synthcxr.lco.optimize import optimise_latents  # noqa: E402
from synthcxr.pggan.config import PGGANConfig  # noqa: E402
from synthcxr.pggan.dist import DistInfo  # noqa: E402
from synthcxr.pggan.memory import budget as pggan_budget  # noqa: E402
from synthcxr.pggan.networks import Generator  # noqa: E402
from synthcxr.pggan.train import _Trainer  # noqa: E402
from synthcxr.utils.amp import autocast, grad_scaler  # noqa: E402
from synthcxr.utils.runtime import resolve_device, synchronize  # noqa: E402

MIB = 1 << 20
#: share of --budget-s per part
SHARES = {"pggan": 0.4, "lco": 0.2, "sample": 0.2, "classifier": 0.12, "fid": 0.08}
FULL = {"pggan_res": [64, 256, 1024], "lco_res": 1024, "sample_res": 1024, "workers": [1, 4, 8, 16], "clf_res": 256,
        "clf_arch": "densenet121", "clf_batch": 32, "lco_targets": 64, "lco_steps": 10, "sample_n": 64}
SMOKE = {"pggan_res": [16], "lco_res": 16, "sample_res": 16, "workers": [1, 2], "clf_res": 16,
         "clf_arch": "small_cnn", "clf_batch": 8, "lco_targets": 8, "lco_steps": 3, "sample_n": 16}


def peak_reset(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def peak_mib(dev: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(dev) / MIB if dev.type == "cuda" else None


def rates(n: int, secs: list[float]) -> dict[str, float]:
    """Best (min time) and median img/s of ``n`` items over repeated timings."""
    return {"best": n / min(secs), "median": n / statistics.median(secs), "repeats": len(secs)}


class Clock:
    """A part's time box: ``more()`` while repeats remain and the budget has room for one more of the last."""

    def __init__(self, seconds: float, min_repeats: int = 2, max_repeats: int = 7):
        self.end, self.min, self.max, self.n, self.last = time.perf_counter() + seconds, min_repeats, max_repeats, 0, 0.0

    def more(self) -> bool:
        left = self.end - time.perf_counter()
        return self.n < self.min or (self.n < self.max and left > self.last)

    @contextlib.contextmanager
    def repeat(self):
        t0 = time.perf_counter()
        yield
        self.n += 1
        self.last = time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------ parts
def pggan_config(res: int, dev: torch.device, amp: bool, smoke: bool) -> PGGANConfig:
    base = read_config_file(REPO_ROOT / "config" / "config.yaml")
    sec = {**base["pggan"], **({} if smoke else read_config_file(REPO_ROOT / "config" / "examples" / "nih-cxr14.yaml")["pggan"])}
    if smoke:
        sec.update(latent_dim=16, fmap_base=64, fmap_max=16, minibatch={str(r): 4 for r in (4, 8, 16, 32)})
    sec.update(resolution=res, amp=amp, device=str(dev), seed=0, labels=LABELS, workers=0 if smoke else 2, total_kimg=None)
    return PGGANConfig.from_section(sec)


def part_pggan(args, dev: torch.device, clock_s: float, sz: dict, tmp: Path) -> dict:
    out = {}
    per_res = clock_s / len(sz["pggan_res"])
    for res in sz["pggan_res"]:
        data = synthetic_prepared(Path(tempfile.mkdtemp(dir=tmp)), res, LABELS, n=64)
        trainers, loaders, pos = {}, {}, None
        for mode in ("fp32", "amp"):
            cfg = pggan_config(res, dev, mode == "amp", args.smoke)
            tr = _Trainer(cfg, data, tmp / f"pg{res}{mode}", DistInfo(0, 1, 0, dev))
            ph = next(p for p in tr.sched.phases if p.kind == "stable" and p.res == res)
            pos = tr.sched.at(ph.start_nimg)
            tr.nimg = ph.start_nimg
            trainers[mode], loaders[mode] = tr, tr.loader(pos.res, pos.batch)
            for _ in range(2):  # warm-up (cudnn.benchmark picks its kernels here)
                tr.train_step(tr.G, tr.D, next(loaders[mode])["image"].to(dev, non_blocking=True), pos)
        steps = 2 if args.smoke else 4
        secs, peaks = {"fp32": [], "amp": []}, {"fp32": 0.0, "amp": 0.0}
        clock = Clock(per_res)
        while clock.more():
            with clock.repeat():
                for mode, tr in trainers.items():
                    peak_reset(dev)
                    synchronize(dev)
                    t0 = time.perf_counter()
                    for _ in range(steps):
                        tr.train_step(tr.G, tr.D, next(loaders[mode])["image"].to(dev, non_blocking=True), pos)
                    synchronize(dev)
                    secs[mode].append(time.perf_counter() - t0)
                    peaks[mode] = max(peaks[mode], peak_mib(dev) or 0.0)
        row = {"minibatch": pos.batch, "steps_per_block": steps}
        for mode, tr in trainers.items():
            pred = pggan_budget(tr.cfg, res, amp=mode == "amp").bytes_at(pos.batch) / MIB
            row[mode] = {**rates(steps * pos.batch, secs[mode]), "peak_mib": peaks[mode] if dev.type == "cuda" else None,
                         "predicted_mib": pred, "autocast": str(tr.amp_dtype), "grad_scaler": tr.scaler_G is not None}
            if dev.type == "cuda" and pred:
                row[mode]["peak_over_predicted"] = peaks[mode] / pred
        row["amp_over_fp32"] = row["amp"]["median"] / row["fp32"]["median"]
        out[str(res)] = row
        del trainers, loaders
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    if args.peer:
        nets = ["karras32"] if args.smoke else ["karras256"]
        cmd = [sys.executable, str(Path(__file__).parent / "bench_pggan_peer.py"), "--peer", args.peer, "--steps", "2" if args.smoke else "4",
               "--repeats", "2" if args.smoke else "5", "--nets", *nets, "--device", str(dev)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(60, clock_s / 2))
            out["peer"] = {"returncode": proc.returncode, "output": (proc.stdout + proc.stderr)[-4000:]}
        except subprocess.TimeoutExpired:
            out["peer"] = {"error": "timed out"}
    return out


def part_lco(args, dev: torch.device, clock_s: float, sz: dict, tmp: Path) -> dict:
    res = sz["lco_res"]
    G = (make_generator(res) if not args.smoke else Generator(res, 16, 64, 16).eval()).to(dev)
    clf_res = min(sz["clf_res"], res)
    C = Classifier(default_arch(sz["clf_arch"], len(LABELS), clf_res), LABELS, clf_res).to(dev).eval()
    idx = torch.arange(len(LABELS), device=dev)
    plan = plan_chunks(G, C, dev, 64)
    ratio = backward_ratio(G, C, idx, plan.step_batch, dev, repeats=2 if args.smoke else 5)
    n = max(sz["lco_targets"], plan.step_batch)
    rng = np.random.default_rng(0)
    targets = (rng.random((n, len(LABELS))) < 0.2).astype(np.float32)
    # thresholds no latent meets: every target runs every step, so the rate is the optimiser's own
    cfg = LCOConfig.from_section({"labels": LABELS, "steps": sz["lco_steps"], "retries": 0, "mode": "per_sample", "init_candidates": 1,
                                  "patience": None, "batch_size": 64, "device": str(dev)})
    thr = {name: 1.0 for name in LABELS}
    secs, fe, peak = [], 0.0, 0.0
    clock = Clock(clock_s, min_repeats=1, max_repeats=3)
    while clock.more():
        with clock.repeat():
            peak_reset(dev)
            synchronize(dev)
            t0 = time.perf_counter()
            res_df = optimise_latents(G, C, thr, targets, np.arange(n), cfg)
            synchronize(dev)
            secs.append(time.perf_counter() - t0)
            fe = forward_equivalents(res_df["g_evals"].to_numpy(), res_df["grad_steps"].to_numpy(), ratio["ratio"])
            peak = max(peak, peak_mib(dev) or 0.0)
    weights = sum(p.numel() * p.element_size() for m in (G, C) for p in m.parameters()) / MIB
    predicted = weights + plan.step_batch * plan.step_mib_per_latent
    out = {"res": res, "targets": n, "steps": sz["lco_steps"], "update_over_forward": ratio,
           "fe_per_s": {"best": fe / min(secs), "median": fe / statistics.median(secs)},
           "plan": {"step_batch": plan.step_batch, "score_chunk": plan.score_chunk, "budget_mib": plan.budget_mb,
                    "step_mib_per_latent": plan.step_mib_per_latent, "weights_mib": weights, "predicted_peak_mib": predicted},
           "peak_mib": peak if dev.type == "cuda" else None}
    if dev.type == "cuda":
        out["peak_over_predicted"] = peak / predicted
    return out


def part_sample(args, dev: torch.device, clock_s: float, sz: dict, tmp: Path) -> dict:
    res = sz["sample_res"]
    G = (make_generator(res) if not args.smoke else Generator(res, 16, 64, 16).eval()).to(dev)
    batch = min(network_for(res)["batch"], sz["sample_n"]) if not args.smoke else 8
    n = sz["sample_n"]
    lat = write_fake_latents(tmp / f"s{res}", n, n, G.latent_dim, seed=1)
    z = torch.from_numpy(_z(lat))

    def bare() -> float:
        synchronize(dev)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for s in range(0, n, batch):
                G(z[s:s + batch].to(dev, non_blocking=True)).cpu()
        synchronize(dev)
        return time.perf_counter() - t0

    bare()  # warm-up
    cfgs = {k: ArchiveConfig.from_section(dict(name="archive", labels=LABELS, batch_size=batch, workers=k, device=str(dev))) for k in sz["workers"]}
    secs = {"bare": [], **{k: [] for k in cfgs}}
    clock = Clock(clock_s)
    while clock.more():
        with clock.repeat():
            secs["bare"].append(bare())
            for k, cfg in cfgs.items():
                secs[k].append(sample_s(G, lat, tmp / f"s{res}" / f"out{k}-{clock.n}", cfg))
    out = {"res": res, "n": n, "batch": batch, "bare_g": rates(n, secs["bare"])}
    for k in cfgs:
        r = rates(n, secs[k])
        out[f"workers_{k}"] = {**r, "over_bare_median": r["median"] / out["bare_g"]["median"]}
    return out


def classifier_net(sz: dict, dev: torch.device) -> Classifier:
    torch.manual_seed(0)
    return Classifier(default_arch(sz["clf_arch"], len(LABELS), sz["clf_res"]), LABELS, sz["clf_res"]).to(dev)


def part_classifier(args, dev: torch.device, clock_s: float, sz: dict, tmp: Path) -> dict:
    b, r = sz["clf_batch"], sz["clf_res"]
    x = torch.rand(b, 1, r, r, device=dev) * 2 - 1
    y = (torch.rand(b, len(LABELS), device=dev) < 0.2).float()
    amp = "fp16" if dev.type == "cuda" else "bf16"  # what classifier.amp can ask for on this device
    nets = {m: classifier_net(sz, dev).train() for m in ("fp32", "amp")}
    opts = {m: torch.optim.Adam(n.parameters(), 1e-4) for m, n in nets.items()}
    scaler = grad_scaler(dev, amp)

    def step(m: str) -> None:
        with autocast(dev, amp if m == "amp" else "none", "classifier.amp"):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(nets[m](x).float(), y)
        opts[m].zero_grad(set_to_none=True)
        if m == "amp" and scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opts[m])
            scaler.update()
        else:
            loss.backward()
            opts[m].step()

    for m in nets:
        step(m)
    steps = 2 if args.smoke else 5
    secs = {m: [] for m in nets}
    clock = Clock(clock_s)
    while clock.more():
        with clock.repeat():
            for m in nets:
                synchronize(dev)
                t0 = time.perf_counter()
                for _ in range(steps):
                    step(m)
                synchronize(dev)
                secs[m].append(time.perf_counter() - t0)
    out = {"arch": sz["clf_arch"], "res": r, "batch": b, "autocast": amp, "grad_scaler": scaler is not None}
    for m in nets:
        out[m] = rates(steps * b, secs[m])
    out["amp_over_fp32"] = out["amp"]["median"] / out["fp32"]["median"]
    return out


def part_fid(args, dev: torch.device, clock_s: float, sz: dict, tmp: Path) -> dict:
    net = classifier_net(sz, dev).eval()
    b, r = 2 * sz["clf_batch"], sz["clf_res"]
    x = torch.rand(b, 1, r, r) * 2 - 1

    def run() -> float:
        synchronize(dev)
        t0 = time.perf_counter()
        with torch.inference_mode():
            net.features(x.to(dev, non_blocking=True)).cpu()
        synchronize(dev)
        return time.perf_counter() - t0

    run()
    secs = []
    clock = Clock(clock_s, max_repeats=9)
    while clock.more():
        with clock.repeat():
            secs.append(run())
    return {"arch": sz["clf_arch"], "res": r, "batch": b, **rates(b, secs)}


PARTS = {"pggan": part_pggan, "lco": part_lco, "sample": part_sample, "classifier": part_classifier, "fid": part_fid}


# ------------------------------------------------------------------------------------------------ report
def cuda_paths(dev: torch.device) -> dict:
    on = dev.type == "cuda"
    return {
        "device": torch.cuda.get_device_name(dev) if on else "cpu",
        "torch": torch.__version__,
        "pinned_memory_and_non_blocking": on,  # the PGGAN and classifier loaders pin only for CUDA
        "cudnn_benchmark": on,  # set by the PGGAN trainer and here
        "pggan_amp": "fp16 + GradScaler" if on else "bf16 autocast",
        "bf16_supported": bool(on and torch.cuda.is_bf16_supported()),
        "ddp_backend": "nccl" if on else "gloo",
        "nccl_available": bool(torch.distributed.is_available() and torch.distributed.is_nccl_available()),
    }


def markdown(result: dict) -> str:
    lines = [f"# gpu_suite on {result['cuda_paths']['device']} ({'smoke' if result['smoke'] else 'full'}, budget {result['budget_s']:g} s)", ""]
    for name, part in result["parts"].items():
        lines.append(f"## {name} ({part.get('status')}, {part.get('seconds', 0):.1f} s)")
        lines.append("")
        if part.get("status") != "ok":
            lines += ["```", str(part.get("error", ""))[-1500:], "```", ""]
            continue
        lines += ["```json", json.dumps(part["result"], indent=1, default=str)[:6000], "```", ""]
    return "\n".join(lines)


def write(out: Path, result: dict) -> None:
    for name, text in (("gpu_suite.json", json.dumps(result, indent=1, default=str)), ("gpu_suite.md", markdown(result))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="folder for gpu_suite.json and gpu_suite.md")
    ap.add_argument("--budget-s", type=float, default=480.0, help="seconds for all parts together (default 480)")
    ap.add_argument("--smoke", action="store_true", help="every part on CPU at tiny sizes")
    ap.add_argument("--peer", default=None, help="a pytorch_GAN_zoo checkout: also run bench_pggan_peer.py")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cpu") if args.smoke else resolve_device(args.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    sz = SMOKE if args.smoke else FULL
    budget = min(args.budget_s, 40.0) if args.smoke else args.budget_s
    chosen = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in chosen if p not in PARTS]
    if bad:
        ap.error(f"unknown part(s) {bad}; choose from {', '.join(PARTS)}")
    result = {"smoke": args.smoke, "budget_s": budget, "cuda_paths": cuda_paths(dev), "parts": {}}
    total = sum(SHARES[p] for p in chosen)
    with tempfile.TemporaryDirectory() as tmpdir:
        for name in chosen:
            t0 = time.perf_counter()
            share = budget * SHARES[name] / total
            try:
                part = {"status": "ok", "result": PARTS[name](args, dev, share, sz, Path(tmpdir))}
            except Exception as exc:  # a failed part is recorded; the rest still run
                part = {"status": "failed", "error": f"{exc!r}\n{traceback.format_exc()}"}
            part.update(seconds=time.perf_counter() - t0, budget_s=share)
            result["parts"][name] = part
            write(out, result)
            print(f"[gpu_suite] {name}: {part['status']} in {part['seconds']:.1f} s (budget {share:.0f} s)", flush=True)
    failed = [n for n, p in result["parts"].items() if p["status"] != "ok"]
    print(f"[gpu_suite] wrote {out / 'gpu_suite.json'} and gpu_suite.md; failed parts: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("SYNTHCXR_NO_PROGRESS", "1")
    sys.exit(main())
