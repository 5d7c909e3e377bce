"""Progressive GAN training throughput against a peer implementation, same architecture, one process.

The peer is facebookresearch/pytorch_GAN_zoo's ``ProgressiveGAN`` (WGAN-GP, drift, minibatch stddev,
equalized learning rate, Adam), from a checkout the user gives with ``--peer`` (nothing of it is in this
project). Both train on the same random "real" batch at the stable phase of the final resolution: a full
iteration each (critic step with gradient penalty and drift, generator step, EMA update for synthcxr;
the peer's ``optimizeParameters``, which does the same and averages its own G copy). Blocks of
``--steps`` iterations alternate between the two ``--repeats`` times; the script prints img/s best and
median for each and the ratio synthcxr / peer, per network.

``--profile`` then runs two more iterations of each under ``torch.profiler`` and prints the share of
time spent in convolutions (forward and backward kernels, self time) and how many were called (forward
and backward calls; a call may hold several minibatches). ``peer total / synthcxr convolution time``
bounds the ratio any change outside the convolution kernels can reach (Amdahl).

Only compatibility is patched in the peer: its optimizers pass ``betas`` as a list, which current torch
rejects, so the benchmark builds the same Adam with a tuple.

    git clone https://github.com/facebookresearch/pytorch_GAN_zoo /tmp/pytorch_GAN_zoo
    python benchmarks/bench_pggan_peer.py --peer /tmp/pytorch_GAN_zoo [--config config/config.yaml]
        [--nets demo karras32] [--steps 4] [--repeats 5] [--threads 2] [--amp] [--profile]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from synthcxr.config import REPO_ROOT, load_config, section
from synthcxr.pggan.config import PGGANConfig
from synthcxr.pggan.memory import StepOnly
from synthcxr.pggan.networks import n_features, resolutions
from synthcxr.pggan.schedule import Phase, Position
from synthcxr.utils.runtime import resolve_device, synchronize

#: networks to compare: name -> overrides of the config's pggan section (None: the config's own)
NETS = {
    "demo": None,
    "karras32": {"resolution": 32, "fmap_base": 8192, "fmap_max": 512, "latent_dim": 512, "minibatch": {"32": 16}},
    "karras256": {"resolution": 256, "fmap_base": 8192, "fmap_max": 512, "latent_dim": 512, "minibatch": {"256": 8}},
}


def peer_model(peer_root: str, cfg: PGGANConfig, cuda: bool = False):
    """The peer's ProgressiveGAN grown to ``cfg.resolution`` with our channel widths (on the GPU with ``cuda``)."""
    sys.path.insert(0, peer_root)
    import torch.optim as optim
    from models.progressive_gan import ProgressiveGAN

    class Peer(ProgressiveGAN):
        def getOptimizerD(self):
            return optim.Adam([p for p in self.netD.parameters() if p.requires_grad], betas=(0.0, 0.99),
                              lr=self.config.learningRate)

        def getOptimizerG(self):
            return optim.Adam([p for p in self.netG.parameters() if p.requires_grad], betas=(0.0, 0.99),
                              lr=self.config.learningRate)

    stages = len(resolutions(cfg.resolution))
    m = Peer(dimLatentVector=cfg.latent_dim, depthScale0=n_features(1, cfg.fmap_base, cfg.fmap_max), useGPU=cuda,
             lossMode="WGANGP", lambdaGP=cfg.gp_weight, epsilonD=cfg.drift, miniBatchStdDev=True, dimOutput=1,
             learningRate=cfg.lr)
    for s in range(2, stages + 1):
        m.addScale(n_features(s, cfg.fmap_base, cfg.fmap_max))
    return m


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def timed(fn, steps: int, device: torch.device = torch.device("cpu")) -> float:
    synchronize(device)
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    synchronize(device)
    return time.perf_counter() - t


def conv_profile(fn, iterations: int = 2) -> tuple[float, float, int]:
    """(total self seconds, convolution self seconds, convolution calls) over ``iterations`` calls of ``fn``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(iterations):
            fn()
    events = prof.key_averages()
    conv = [e for e in events if "convolution" in e.key]  # the wrappers' self time is ~0, the kernels' is all
    calls = sum(e.count for e in events if e.key in ("aten::convolution", "aten::convolution_backward"))
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    return total, sum(e.self_cpu_time_total for e in conv) / 1e6, calls


def compare(name: str, cfg: PGGANConfig, peer_root: str, steps: int, repeats: int, amp: bool = False,
            profile: bool = False, device: torch.device = torch.device("cpu")) -> float:
    res = cfg.resolution
    batch = int(cfg.minibatch[str(res)])
    torch.manual_seed(0)
    ours = StepOnly(cfg, amp=amp, device=device)
    peer = peer_model(peer_root, cfg, cuda=device.type == "cuda")
    real = (torch.rand(batch, 1, res, res) * 2 - 1).to(device)
    pos = Position(phase=Phase(0, res, "stable", 0, 10**9), res=res, alpha=1.0, batch=batch)

    def ours_step():
        ours.train_step(ours.G, ours.D, real, pos)
        ours.step += 1

    def peer_step():
        peer.optimizeParameters(real)

    ng, nd = count(ours.G), count(ours.D)
    pg, pd_ = count(peer.getOriginalG()), count(peer.getOriginalD())
    print(f"{name}{' (synthcxr with pggan.amp: bf16 autocast; the peer has no AMP path)' if amp else ''}: {res} px, minibatch {batch}, G {ng:,} / peer {pg:,} parameters, D {nd:,} / peer {pd_:,}")
    if (ng, nd) != (pg, pd_):
        print(f"  warning: parameter counts differ ({ng - pg:+,} G, {nd - pd_:+,} D)")
    ours_step(), peer_step()  # warm-up (Adam state, first-call kernels)
    t_ours, t_peer = [], []
    for _ in range(repeats):  # interleaved blocks
        t_ours.append(timed(ours_step, steps, device))
        t_peer.append(timed(peer_step, steps, device))
    n = steps * batch
    ours_best, ours_med = n / min(t_ours), n / statistics.median(t_ours)
    peer_best, peer_med = n / min(t_peer), n / statistics.median(t_peer)
    ratio = ours_med / peer_med
    print(f"  synthcxr img/s best {ours_best:8.2f} median {ours_med:8.2f}")
    print(f"  peer     img/s best {peer_best:8.2f} median {peer_med:8.2f}")
    print(f"  ratio synthcxr/peer: median {ratio:.2f}x, best {ours_best / peer_best:.2f}x "
          f"({repeats} x {steps} iterations each, interleaved)")
    if profile:
        (ot, oc, on), (pt, pc, pn) = conv_profile(ours_step), conv_profile(peer_step)
        print(f"  convolutions (profiler, 2 iterations): synthcxr {oc / ot:.1%} of {ot:.2f} s ({on} calls), "
              f"peer {pc / pt:.1%} of {pt:.2f} s ({pn} calls)")
        print(f"  bound on the ratio from everything but the convolution kernels: {pt / oc:.2f}x "
              f"(peer total / synthcxr convolution time)")
    return ratio


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer", required=True, help="checkout of facebookresearch/pytorch_GAN_zoo")
    ap.add_argument("--config", default=None, help="config whose pggan section is the 'demo' network")
    ap.add_argument("--nets", nargs="+", default=["demo", "karras32"], choices=list(NETS))
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto (both run on it; the peer's useGPU on CUDA)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--amp", action="store_true", help="train synthcxr with pggan.amp (bf16 autocast on CPU)")
    ap.add_argument("--profile", action="store_true", help="also print each one's convolution share (torch.profiler)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    dev = resolve_device(a.device)
    base = section(load_config(a.config or REPO_ROOT / "config" / "config.yaml"), "pggan")
    for name in a.nets:
        over = NETS[name] or {}
        cfg = PGGANConfig.from_section({**base, **over, "device": str(dev)})
        compare(name, cfg, a.peer, a.steps, a.repeats, a.amp, a.profile, dev)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
