"""WGAN-GP losses with the epsilon drift term, as used to train the Progressive GAN.

The gradient penalty is always evaluated in float32 (autocast disabled): its second-order graph is
numerically fragile in fp16/bf16, and the penalty is what keeps the critic Lipschitz.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Critic = Callable[[torch.Tensor], torch.Tensor]


def gradient_penalty(
    critic: Critic,
    real: torch.Tensor,
    fake: torch.Tensor,
    mix: torch.Tensor | None = None,
    target: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-sample ``(||grad_x critic(x_hat)||_2 - target)^2 / target^2`` at ``x_hat = lerp(real, fake, mix)``.

    ``mix`` (shape ``[N]``) defaults to U(0, 1) draws from ``generator``. The graph is kept
    (``create_graph=True``) so the penalty can be back-propagated into the critic's weights.
    """
    n = real.shape[0]
    if mix is None:
        mix = torch.rand(n, generator=generator).to(real.device)
    mix = mix.to(device=real.device, dtype=torch.float32).view(n, *([1] * (real.ndim - 1)))
    with torch.autocast(device_type=real.device.type, enabled=False):
        r = real.detach().float()
        x_hat = (r + (fake.detach().float() - r) * mix).requires_grad_(True)
        score = critic(x_hat).float()
        (grad,) = torch.autograd.grad(score.sum(), x_hat, create_graph=True)
        norm = grad.flatten(1).norm(2, dim=1)
        return (norm - target).pow(2) / (target**2)


@dataclass
class DLoss:
    total: torch.Tensor
    wdist: torch.Tensor  # mean D(real) - mean D(fake), for logging
    gp: torch.Tensor
    drift: torch.Tensor


def critic_loss(
    d_real: torch.Tensor, d_fake: torch.Tensor, gp: torch.Tensor, gp_weight: float, drift_weight: float
) -> DLoss:
    """``mean(D(fake)) - mean(D(real)) + gp_weight * mean(gp) + drift * mean(D(real)^2)``."""
    d_real = d_real.float().flatten()
    d_fake = d_fake.float().flatten()
    gp_term = gp.float().mean()
    drift_term = d_real.pow(2).mean()
    total = d_fake.mean() - d_real.mean() + gp_weight * gp_term + drift_weight * drift_term
    return DLoss(total=total, wdist=(d_real.mean() - d_fake.mean()).detach(), gp=gp_term.detach(), drift=drift_term.detach())


def generator_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """``-mean(D(G(z)))``."""
    return -d_fake.float().mean()
