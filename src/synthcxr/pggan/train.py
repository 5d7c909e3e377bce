"""Progressive GAN training loop: WGAN-GP + drift, Adam, EMA generator, exact resume, optional DDP.

Every random draw of a training step (latents, gradient-penalty mixing factors, which real images
are shown) is a pure function of ``(seed, step)`` or of the number of images shown, drawn for the whole
minibatch, of which each rank keeps its share: a run killed after a checkpoint and resumed reproduces
the uninterrupted run bit for bit on the same platform, and N ranks compute the losses of one process
on the same global minibatch. Only rank 0 writes files.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..data.store import PreparedDataset
from ..utils.amp import grad_scaler
from ..utils.atomic import torch_save, write_json, write_text
from ..utils.runtime import progress, seed_everything, setup_logging
from .checkpoint import generator_payload, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import PGGANConfig, diff_training
from .dist import DistInfo, any_rank, barrier, init_distributed, mean_across_ranks, ranks_per_host, shutdown
from .grid import grid_latents, grid_shape, render_grid, save_png
from .layers import MinibatchStdDev
from .loss import critic_loss, generator_loss, gradient_penalty
from .networks import Discriminator, Generator
from .preempt import MARKER, PREEMPTED_EXIT, Preempted, StopRequest, slurm_time_left_s, time_budget_s
from .schedule import Position
from .steps import blend_reals, ema_beta, step_generator, update_ema
from .stream import ImageStream, StepBatchSampler, epoch_repeats, rank_share

log = logging.getLogger("synthcxr")

# ----------------------------------------------------------------------------------------------
# Training


def _crossed(prev: int, cur: int, every_kimg: float) -> bool:
    every = max(1, round(every_kimg * 1000))
    return prev // every != cur // every


def _unwrap(m: torch.nn.Module) -> torch.nn.Module:
    return m.module if hasattr(m, "module") else m


class _Trainer:
    def __init__(self, cfg: PGGANConfig, data_folder: Path, out_dir: Path, info: DistInfo):
        self.cfg, self.out, self.info = cfg, out_dir, info
        self.dev = info.device
        self.data = PreparedDataset(data_folder)
        if cfg.resolution not in self.data.resolutions:
            raise ValueError(
                f"{self.data.h5_path}: no {cfg.resolution} px level (have {self.data.resolutions}); "
                "raise dataset.max_res or lower pggan.resolution"
            )
        self.n_train = int(len(self.data.split("train")))
        if self.n_train == 0:
            raise ValueError(f"{self.data.labels_path}: the train split is empty")
        self.sched = cfg.schedule()
        for r, b in self.sched.minibatch.items():
            if r <= cfg.resolution and b % info.world_size:
                raise ValueError(f"pggan.minibatch[\"{r}\"] = {b} is not divisible by the {info.world_size} GPUs")
        self.stream = ImageStream(self.n_train, cfg.seed, epoch_repeats(self.data, cfg, log if info.is_main else None))

        seed_everything(cfg.seed)
        self.G = Generator(cfg.resolution, cfg.latent_dim, cfg.fmap_base, cfg.fmap_max).to(self.dev)
        self.D = Discriminator(cfg.resolution, cfg.fmap_base, cfg.fmap_max).to(self.dev)
        self.mbstd_group = next(m.group_size for m in self.D.modules() if isinstance(m, MinibatchStdDev))
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        adam = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.adam_eps)
        self.opt_G = torch.optim.Adam(self.G.parameters(), **adam)
        self.opt_D = torch.optim.Adam(self.D.parameters(), **adam)
        self._setup_amp(cfg.amp)
        self.nimg = 0
        self.step = 0
        self.seconds = 0.0
        self.log_lines: list[str] = []
        self.resumed_log: tuple[dict[str, torch.Tensor], int] = ({}, 0)
        self.grid_z = grid_latents(math.prod(grid_shape(cfg.resolution)), cfg.latent_dim, cfg.seed)

    # -- state ---------------------------------------------------------------------------------
    @property
    def ckpt_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def state(self, pos: Position, log_acc: dict[str, torch.Tensor] | None = None, log_n: int = 0) -> dict[str, Any]:
        st = {
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "nimg": self.nimg,
            "step": self.step,
            "phase": pos.phase.index,
            "phase_name": pos.phase.name,
            "res": pos.res,
            "alpha": pos.alpha,
            "seconds": self.seconds,
            "rng": rng_state(),
            "config": self.cfg.training_dict(),
            "fingerprint": self.cfg.fingerprint(),
            "n_train": self.n_train,
            # the running means of the log interval in progress, so a resumed run logs the same numbers
            "log_acc": {k: v.detach().cpu() for k, v in (log_acc or {}).items()},
            "log_n": int(log_n),
        }
        if self.scaler_G is not None:
            st["scaler_G"] = self.scaler_G.state_dict()
            st["scaler_D"] = self.scaler_D.state_dict()
        return st

    def try_resume(self) -> bool:
        if not self.ckpt_path.exists():
            return False
        ck = load_checkpoint(self.ckpt_path, map_location=self.dev)
        reasons = []
        if ck["fingerprint"] != self.cfg.fingerprint():
            reasons = diff_training(ck["config"], self.cfg.training_dict())
        elif ck["n_train"] != self.n_train:
            reasons = [f"train split: {ck['n_train']} -> {self.n_train} images"]
        if reasons:
            self._set_aside(ck["fingerprint"], reasons)
            return False
        self.G.load_state_dict(ck["G"])
        self.D.load_state_dict(ck["D"])
        self.G_ema.load_state_dict(ck["G_ema"])
        self.opt_G.load_state_dict(ck["opt_G"])
        self.opt_D.load_state_dict(ck["opt_D"])
        if self.scaler_G is not None and "scaler_G" in ck:
            self.scaler_G.load_state_dict(ck["scaler_G"])
            self.scaler_D.load_state_dict(ck["scaler_D"])
        self.nimg, self.step, self.seconds = int(ck["nimg"]), int(ck["step"]), float(ck["seconds"])
        self.resumed_log = ({k: v.to(self.dev) for k, v in ck.get("log_acc", {}).items()}, int(ck.get("log_n", 0)))
        set_rng_state(ck["rng"])
        log_path = self.out / "log.jsonl"
        if log_path.exists():  # drop lines written after the checkpoint: they will be written again
            keep = []
            for line in log_path.read_text().splitlines():
                if line.strip() and json.loads(line)["kimg"] * 1000 <= self.nimg + 1e-6:
                    keep.append(line)
            self.log_lines = keep
        return True

    def _set_aside(self, old_fingerprint: str, reasons: list[str]) -> None:
        """A checkpoint from another training config cannot be resumed: keep it under a new name
        (nothing is lost) and train from scratch, so a config edit simply retrains the stage."""
        if self.info.is_main:
            kept = self.out / f"checkpoint-{old_fingerprint[:12]}.pt"
            os.replace(self.ckpt_path, kept)
            log.warning(
                "%s was written with a different training setup:\n  %s\nkept it as %s; training from scratch",
                self.ckpt_path, "\n  ".join(reasons), kept.name,
            )
            for stale in ("log.jsonl", "snapshots", "fakes"):  # the old run's history goes with it
                path = self.out / stale
                if path.exists():
                    os.replace(path, self.out / f"{path.stem}-{old_fingerprint[:12]}{path.suffix}")
        barrier(self.info)

    # -- outputs (rank 0) ----------------------------------------------------------------------
    def meta(self, pos: Position) -> dict[str, Any]:
        return {
            "kimg": self.nimg / 1000.0,
            "res": pos.res,
            "alpha": pos.alpha,
            "config": self.cfg.provenance_dict(),
            "fingerprint": self.cfg.fingerprint(),
            "n_train": self.n_train,
        }  # no wall-clock time here: same config + same platform must give the same generator bytes

    def snapshot(self, pos: Position) -> None:
        kimg = int(self.nimg // 1000)
        rows, cols = grid_shape(self.cfg.resolution)
        cell = max(pos.res, min(128, self.cfg.resolution * 2))
        arr = render_grid(self.G_ema, self.grid_z, pos.res, pos.alpha, rows, cols, cell)
        save_png(self.out / "fakes" / f"fakes-{kimg:06d}.png", arr)
        torch_save(generator_payload(self.G_ema, self.meta(pos)), self.out / "snapshots" / f"generator-{kimg:06d}.pt")

    def write_log(self, record: dict[str, Any]) -> None:
        self.log_lines.append(json.dumps(record, sort_keys=True))
        write_text(self.out / "log.jsonl", "\n".join(self.log_lines) + "\n")

    # -- one step --------------------------------------------------------------------------------
    def _setup_amp(self, amp: bool) -> None:
        """``pggan.amp``: fp16 autocast with a gradient scaler per network on CUDA, bf16 autocast on CPU."""
        mode = ("fp16" if self.dev.type == "cuda" else "bf16") if amp else "none"
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]
        self.scaler_G, self.scaler_D = grad_scaler(self.dev, mode), grad_scaler(self.dev, mode)

    def _autocast(self):
        return torch.autocast(device_type=self.dev.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def train_step(self, G_net, D_net, real: torch.Tensor, pos: Position) -> dict[str, torch.Tensor]:
        G_raw, D_raw = _unwrap(G_net), _unwrap(D_net)
        res, alpha = pos.res, pos.alpha
        # Every rank draws the whole minibatch's latents and keeps its share, so a data-parallel run
        # sees the same latents, in the same critic groups, as one process with the global minibatch.
        share = torch.from_numpy(rank_share(pos.batch, self.info.rank, self.info.world_size, self.mbstd_group))
        if real.shape[0] != len(share):
            raise RuntimeError(f"rank {self.info.rank} got {real.shape[0]} images for a share of {len(share)}")
        gen = step_generator(self.cfg.seed, self.step)
        z_d = torch.randn(pos.batch, self.cfg.latent_dim, generator=gen)[share].to(self.dev)
        mix = torch.rand(pos.batch, generator=gen)[share]
        z_g = torch.randn(pos.batch, self.cfg.latent_dim, generator=gen)[share].to(self.dev)
        real = blend_reals(real, alpha)

        # critic step
        D_raw.requires_grad_(True)
        with torch.no_grad(), self._autocast():
            fake = G_raw(z_d, res=res, alpha=alpha)
        with self._autocast():
            d_real = D_net(real, res=res, alpha=alpha)
            d_fake = D_net(fake, res=res, alpha=alpha)
        gp = gradient_penalty(lambda x: D_net(x, res=res, alpha=alpha), real, fake, mix)
        dl = critic_loss(d_real, d_fake, gp, self.cfg.gp_weight, self.cfg.drift)
        self.opt_D.zero_grad(set_to_none=True)
        if self.scaler_D is not None:
            self.scaler_D.scale(dl.total).backward()
            self.scaler_D.step(self.opt_D)
            self.scaler_D.update()
        else:
            dl.total.backward()
            self.opt_D.step()

        # generator step (the critic's weights get no gradient)
        D_raw.requires_grad_(False)
        with self._autocast():
            fake = G_net(z_g, res=res, alpha=alpha)
            gl = generator_loss(D_raw(fake, res=res, alpha=alpha))
        self.opt_G.zero_grad(set_to_none=True)
        if self.scaler_G is not None:
            self.scaler_G.scale(gl).backward()
            self.scaler_G.step(self.opt_G)
            self.scaler_G.update()
        else:
            gl.backward()
            self.opt_G.step()
        D_raw.requires_grad_(True)
        update_ema(self.G_ema, G_raw, ema_beta(pos.batch, self.cfg.ema_kimg))
        return {"loss_d": dl.total.detach(), "loss_g": gl.detach(), "gp": dl.gp, "drift": dl.drift, "wdist": dl.wdist}

    def loader(self, res: int, batch: int) -> Iterator:
        ds = self.data.images("train", res)
        sampler = StepBatchSampler(self.stream, self.nimg, batch, self.info.rank, self.info.world_size, self.mbstd_group)
        dl = DataLoader(ds, batch_sampler=sampler, num_workers=self.cfg.workers,
                        pin_memory=self.dev.type == "cuda")
        return iter(dl)

    # -- loop ------------------------------------------------------------------------------------
    def run(self, max_steps: int | None = None) -> Path:
        cfg, info = self.cfg, self.info
        resumed = self.try_resume()
        hosts = ranks_per_host(info)
        if info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            if info.distributed:
                log.info("ranks per node: %s", ", ".join(f"{h} x{n}" for h, n in hosts.items()))
            log.info(
                "PGGAN %s: %s at %.1f kimg of %.1f (%d train images, device %s, %d rank(s), amp %s)",
                cfg.run, "resuming" if resumed else "starting", self.nimg / 1000, self.sched.total_nimg / 1000,
                self.n_train, self.dev, info.world_size, self.amp_dtype,
            )
            for p in self.sched.phases:
                log.info("  phase %d %-9s res %4d  %7.1f -> %7.1f kimg  minibatch %d", p.index, p.name, p.res,
                         p.start_nimg / 1000, p.end_nimg / 1000, self.sched.minibatch[p.res])
        G_net, D_net = self.G, self.D
        if self.dev.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes within a phase
        if info.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.dev] if self.dev.type == "cuda" else None
            G_net = DDP(self.G, device_ids=ids, broadcast_buffers=False, find_unused_parameters=True)
            D_net = DDP(self.D, device_ids=ids, broadcast_buffers=False, find_unused_parameters=True)
        if info.is_main and not resumed:
            self.snapshot(self.sched.at(0))

        bar_kw = {} if info.is_main else {"disable": True}
        pbar = progress(total=round(self.sched.total_nimg / 1000, 3), initial=round(self.nimg / 1000, 3),
                        unit="kimg", desc="pggan", **bar_kw,
                        bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} kimg [{elapsed}<{remaining}{postfix}]")
        it, cur_key = None, None
        acc, acc_n = self.resumed_log
        t_int, img_int = time.perf_counter(), 0
        steps_here = 0
        marker = self.out / MARKER
        if info.is_main and marker.exists():
            marker.unlink()  # training continues: this run is no longer stopped early
        budget = time_budget_s(cfg.job_minutes, cfg.stop_margin_minutes, slurm_time_left_s()) if info.is_main else None
        if info.is_main and budget is not None:
            log.info("time budget of this job: %.1f s of training, then checkpoint and exit %d to be resumed", budget, PREEMPTED_EXIT)
        stop = StopRequest(budget)
        stop.__enter__()
        try:
            while self.nimg < self.sched.total_nimg:
                if max_steps is not None and steps_here >= max_steps:
                    break
                pos = self.sched.at(self.nimg)
                if (pos.res, pos.batch) != cur_key:
                    it, cur_key = self.loader(pos.res, pos.batch), (pos.res, pos.batch)
                    if info.is_main:
                        log.info("res %d (%s) from %.1f kimg", pos.res, pos.phase.name, self.nimg / 1000)
                real = next(it)["image"]
                t0 = time.perf_counter()
                stats = self.train_step(G_net, D_net, real.to(self.dev, non_blocking=True), pos)
                prev = self.nimg
                self.nimg += pos.batch
                self.step += 1
                steps_here += 1
                dt = time.perf_counter() - t0
                self.seconds += dt
                for k, v in stats.items():  # stays on the device: no per-step host sync
                    acc[k] = acc[k] + v if k in acc else v.clone()
                acc_n += 1
                img_int += pos.batch
                pbar.update(pos.batch / 1000)
                done = self.nimg >= self.sched.total_nimg
                # The first step is logged on its own: its losses are those of the initial networks, the one
                # point where N ranks and one process must agree to float rounding (later points drift apart
                # by reassociation amplified through training). Its img/s includes warm-up.
                first = self.step == 1
                if _crossed(prev, self.nimg, cfg.log_kimg) or done or first:
                    vals = mean_across_ranks(torch.stack([acc[k].double() / acc_n for k in sorted(acc)]), info).cpu()
                    now = time.perf_counter()
                    rec = {k: float(v) for k, v in zip(sorted(acc), vals.tolist())}
                    rec.update(kimg=self.nimg / 1000, phase=pos.phase.name, res=pos.res, alpha=round(pos.alpha, 6),
                               **{"img/s": img_int / max(now - t_int, 1e-9)}, seconds=round(self.seconds, 3))
                    if first:
                        rec["first_step"] = True
                    if info.is_main:
                        self.write_log(rec)
                        pbar.set_postfix(res=pos.res, a=f"{pos.alpha:.2f}", d=f"{rec['loss_d']:.2f}",
                                         g=f"{rec['loss_g']:.2f}", ips=f"{rec['img/s']:.0f}")
                    acc, acc_n, t_int, img_int = {}, 0, now, 0
                if info.is_main and (_crossed(prev, self.nimg, cfg.snapshot_kimg) or done):
                    self.snapshot(self.sched.at(prev))
                reason = stop.reason() if not done else None
                stopping = any_rank(reason is not None, info)
                if _crossed(prev, self.nimg, cfg.checkpoint_kimg) or done or stopping:
                    log_acc = {k: mean_across_ranks(v, info) for k, v in sorted(acc.items())}
                    if info.is_main:
                        save_checkpoint(self.ckpt_path, self.state(self.sched.at(prev), log_acc, acc_n))
                    barrier(info)
                if stopping:
                    reason = reason or "another rank was asked to stop"
                    if info.is_main:
                        write_json(marker, {"kimg": self.nimg / 1000, "reason": reason, "total_kimg": self.sched.total_nimg / 1000})
                        log.warning("stopping early at %.3f kimg of %.1f (%s): checkpoint written; rerun to resume",
                                    self.nimg / 1000, self.sched.total_nimg / 1000, reason)
                    barrier(info)
                    raise Preempted(self.nimg, reason)
        finally:
            stop.__exit__(None, None, None)
            pbar.close()
        final = self.out / "generator.pt"
        if self.nimg >= self.sched.total_nimg and info.is_main:
            pos = self.sched.at(self.nimg - 1)
            torch_save(generator_payload(self.G_ema, self.meta(pos)), final)
            log.info("wrote %s (%.1f kimg, %.0f s of training)", final, self.nimg / 1000, self.seconds)
        barrier(info)
        return final


def train_pggan(
    cfg: PGGANConfig,
    data_folder: str | os.PathLike,
    out_dir: str | os.PathLike,
    log_file: str | os.PathLike | None = None,
    max_steps: int | None = None,
) -> Path:
    """Train (or resume) a Progressive GAN on a prepared dataset's train split; returns generator.pt.

    Resumes from ``out_dir/checkpoint.pt`` when present and written with the same training config.
    ``max_steps`` stops early after that many steps in this call (benchmarks, tests); generator.pt
    is only written once the whole schedule has been shown. Under ``torchrun`` each process joins
    the process group and trains its share of every minibatch.
    """
    info = init_distributed(cfg.device)
    if info.is_main:
        setup_logging(log_file)
    try:
        return _Trainer(cfg, Path(data_folder), Path(out_dir), info).run(max_steps=max_steps)
    finally:
        shutdown(info)
