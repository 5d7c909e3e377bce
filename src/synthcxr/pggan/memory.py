"""Memory of one Progressive-GAN training step per resolution, counted on fake tensors (nothing computed).

The training step is the trainer's own (:meth:`~.train._Trainer.train_step`: critic step with gradient
penalty, generator step, EMA update), run under :class:`~torch._subclasses.fake_tensor.FakeTensorMode`
so a 1024 px step of the paper's 23 M + 23 M parameter networks takes about a second on any machine. A
dispatch mode follows every storage created and freed and keeps the largest total alive at once: the
bytes a caching allocator must hold, before its fragmentation, the CUDA context and cuDNN workspaces
(hence the headroom in :func:`fits`). AMP is counted with CPU autocast (bfloat16: the size of CUDA's
float16; CUDA autocasts a similar set of ops).
"""

from __future__ import annotations

import copy
import math
import warnings
import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only
from torch.utils.weak import WeakIdKeyDictionary

from .config import PGGANConfig
from .dist import DistInfo
from .layers import MinibatchStdDev
from .networks import Discriminator, Generator, resolutions
from .schedule import Phase, Position
from .train import _Trainer

GIB = 2**30


class LiveBytes(TorchDispatchMode):
    """Bytes of tensor storage alive now and at most, for tensors created inside the mode (or added)."""

    def __init__(self):
        super().__init__()
        self._seen = WeakIdKeyDictionary()
        self.now = 0
        self.peak = 0

    def _freed(self, n: int) -> None:
        self.now -= n

    def add(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        if st in self._seen:
            return
        n = st.nbytes()
        self._seen[st] = n
        self.now += n
        weakref.finalize(st, self._freed, n)
        self.peak = max(self.peak, self.now)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tree_map_only(torch.Tensor, self.add, out)
        return out


class StepOnly:
    """The parts of a trainer one training step reads: networks, optimisers, EMA copy, step counter."""

    train_step = _Trainer.train_step
    _autocast = _Trainer._autocast
    _setup_amp = _Trainer._setup_amp

    def __init__(self, cfg: PGGANConfig, amp: bool, device: str | torch.device = "cpu"):
        self.cfg, self.step = cfg, 0
        self.dev = torch.device(device)
        self.info = DistInfo(0, 1, 0, self.dev)
        self.G = Generator(cfg.resolution, cfg.latent_dim, cfg.fmap_base, cfg.fmap_max)
        self.D = Discriminator(cfg.resolution, cfg.fmap_base, cfg.fmap_max)
        if self.dev.type != "cpu":  # (on CPU the networks may be fake tensors: the memory model's step)
            self.G, self.D = self.G.to(self.dev), self.D.to(self.dev)
        self.mbstd_group = next(m.group_size for m in self.D.modules() if isinstance(m, MinibatchStdDev))
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        adam = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.adam_eps)
        self.opt_G = torch.optim.Adam(self.G.parameters(), **adam)
        self.opt_D = torch.optim.Adam(self.D.parameters(), **adam)
        self._setup_amp(amp)


def _bytes(tensors) -> int:
    return sum(t.untyped_storage().nbytes() for t in tensors)


@dataclass(frozen=True)
class StepMemory:
    """Bytes of one training step at ``res`` with ``batch`` images per process."""

    res: int
    batch: int
    params: int  # G, D and the EMA copy of G
    optimizer: int  # Adam's moments (and step counters) for G and D
    peak: int  # most bytes alive at once during the step: the above + activations, gradients, temporaries

    @property
    def transient(self) -> int:
        return self.peak - self.params - self.optimizer


def step_memory(cfg: PGGANConfig, res: int, batch: int, amp: bool = False, fake: bool = True) -> StepMemory:
    """Peak bytes of one training step at ``res`` (the larger of a fade-in and a stable step).

    ``fake=False`` runs the same step on real CPU tensors (the tests' check of the fake count)."""
    if res not in resolutions(cfg.resolution):
        raise ValueError(f"resolution {res} is not a stage of a {cfg.resolution} px network")
    from contextlib import nullcontext

    from torch._subclasses.fake_tensor import FakeTensorMode

    peaks = []
    for alpha in (0.5, 1.0):  # a fade-in runs both the new block and the old output path
        mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else nullcontext()
        with mode, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
            st = StepOnly(cfg, amp)
            real = torch.randn(batch, 1, res, res)
            live = LiveBytes()
            nets = [*st.G.parameters(), *st.D.parameters(), *st.G_ema.parameters(), *st.G.buffers(), *st.D.buffers()]
            for t in [*nets, *st.G_ema.buffers(), real]:
                live.add(t)
            pos = Position(phase=Phase(0, res, "fade" if alpha < 1 else "stable", 0, 10**9), res=res,
                           alpha=alpha, batch=batch)
            with live:
                st.train_step(st.G, st.D, real, pos)  # the first step creates Adam's state
                live.peak = live.now
                st.step = 1
                st.train_step(st.G, st.D, real, pos)
            params = _bytes([*st.G.parameters(), *st.D.parameters(), *st.G_ema.parameters()])
            opt = _bytes([v for o in (st.opt_G, st.opt_D) for s in o.state.values() for v in s.values()
                          if isinstance(v, torch.Tensor)])
            peaks.append(StepMemory(res, batch, params, opt, live.peak))
    return max(peaks, key=lambda m: m.peak)


@dataclass(frozen=True)
class ResolutionBudget:
    """Per-process memory at one resolution: ``fixed + per_image * batch`` bytes."""

    res: int
    params: int
    optimizer: int
    fixed: int
    per_image: int

    def bytes_at(self, batch: int) -> int:
        return self.fixed + self.per_image * batch

    def fits(self, gpu_gib: float, headroom: float = 0.9) -> int:
        """Most images per process whose step fits in ``headroom`` of a ``gpu_gib`` GiB GPU (0: none)."""
        free = gpu_gib * GIB * headroom - self.fixed
        return max(0, math.floor(free / self.per_image)) if self.per_image > 0 else 0


def budget(cfg: PGGANConfig, res: int, amp: bool = False, batches: tuple[int, int] = (4, 8)) -> ResolutionBudget:
    """The linear memory model at ``res``, from two batch sizes (per process) measured on fake tensors."""
    a, b = (step_memory(cfg, res, n, amp) for n in batches)
    per = (b.peak - a.peak) / (batches[1] - batches[0])
    fixed = a.peak - per * batches[0]
    return ResolutionBudget(res, a.params, a.optimizer, int(round(fixed)), int(round(per)))


def memory_table(cfg: PGGANConfig, gpu_gib: tuple[float, ...] = (40, 80), headroom: float = 0.9,
                 amp: bool = False) -> list[dict]:
    """One row per resolution: parameters, optimizer state, activations per image, the configured
    minibatch's bytes per process, and the most images per GPU that fit each GPU size."""
    rows = []
    for r in resolutions(cfg.resolution):
        bud = budget(cfg, r, amp)
        mb = int(cfg.minibatch.get(str(r), 0)) // max(1, cfg.gpus * cfg.nodes)
        row = {"res": r, "params_mib": bud.params / 2**20, "optimizer_mib": bud.optimizer / 2**20,
               "fixed_mib": bud.fixed / 2**20, "per_image_mib": bud.per_image / 2**20,
               "minibatch_per_gpu": mb, "minibatch_gib": bud.bytes_at(mb) / GIB if mb else 0.0}
        for g in gpu_gib:
            row[f"fits_{g:g}gb"] = bud.fits(g, headroom)
        rows.append(row)
    return rows


def markdown(rows: list[dict], gpu_gib: tuple[float, ...]) -> str:
    head = ["res", "G+D+EMA params (MiB)", "Adam state (MiB)", "fixed per step (MiB)", "activations per image (MiB)",
            "configured minibatch per GPU", "its peak (GiB)", *(f"most per {g:g} GB GPU" for g in gpu_gib)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vals = [str(r["res"]), f"{r['params_mib']:.0f}", f"{r['optimizer_mib']:.0f}", f"{r['fixed_mib']:.0f}",
                f"{r['per_image_mib']:.1f}", str(r["minibatch_per_gpu"]), f"{r['minibatch_gib']:.2f}",
                *(str(r[f"fits_{g:g}gb"]) for g in gpu_gib)]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def cli(argv: list[str] | None = None) -> int:
    import argparse

    from .allocations import load_merged

    ap = argparse.ArgumentParser(prog="synthcxr pggan-memory",
                                 description="Memory per training process at each resolution of a config's GAN "
                                             "(counted on fake tensors: nothing is computed, no GPU needed).")
    ap.add_argument("--configfile", action="append", default=[], help="config merged over config/config.yaml (repeatable)")
    ap.add_argument("--gpu-gib", type=float, nargs="+", default=[40, 80], help="GPU sizes to fit (GiB)")
    ap.add_argument("--headroom", type=float, default=0.9, help="share of a GPU the step may use")
    ap.add_argument("--amp", action="store_true", help="count with autocast (half-precision activations)")
    a = ap.parse_args(argv)
    pg = PGGANConfig.from_section(load_merged(a.configfile)["pggan"])
    gpus = tuple(a.gpu_gib)
    print(markdown(memory_table(pg, gpus, a.headroom, a.amp), gpus))
    return 0
