"""The per-step arithmetic of PGGAN training: the EMA generator's decay, each step's seeded random
stream, and the fading of real images while a new resolution blends in."""

from __future__ import annotations

import numpy as np
import torch

from .layers import downsample2x, lerp, upsample2x

STEP_SEED_SALT = 0x57E9


def ema_beta(batch: int, ema_kimg: float) -> float:
    """Per-step decay for an EMA whose half-life is ``ema_kimg`` thousand images."""
    if ema_kimg <= 0:
        return 0.0
    return 0.5 ** (batch / (ema_kimg * 1000.0))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, beta: float) -> None:
    """``ema <- beta * ema + (1 - beta) * model`` for parameters; buffers are copied."""
    for pe, p in zip(ema.parameters(), model.parameters(), strict=True):
        pe.copy_(p.detach().lerp(pe, beta))
    for be, b in zip(ema.buffers(), model.buffers(), strict=True):
        be.copy_(b)


def step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator for one training step's latents and mixing factors (the whole minibatch's)."""
    # the trailing 0 keeps the stream of earlier single-process runs (it once named the rank)
    state = np.random.SeedSequence([seed, STEP_SEED_SALT, step, 0]).generate_state(2, np.uint32)
    g = torch.Generator()
    g.manual_seed((int(state[0]) << 31) ^ int(state[1]))
    return g


def blend_reals(real: torch.Tensor, alpha: float) -> torch.Tensor:
    """During fade-in, reals are ``lerp(upsample(downsample(x)), x, alpha)`` so they match what the
    growing generator can express."""
    if alpha >= 1.0:
        return real
    return lerp(upsample2x(downsample2x(real)), real, alpha)
