"""Batch augmentations suited to chest X-rays, applied in torch on the device.

Radiographs vary in patient positioning, magnification and exposure, so the augmentations are a
small rotation and isotropic scaling (one affine warp through ``affine_grid``/``grid_sample``) and an
intensity/contrast jitter. Horizontal flips are off by default: anatomy is lateralised (heart on the
left, gastric bubble), and a flipped film is not a plausible X-ray. Random parameters come from a
dedicated CPU ``torch.Generator`` so a run is identical on every device under the same seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation strengths; zeros switch a transform off (``classifier.augment`` in the config)."""

    rotate_deg: float  # rotation drawn uniformly from [-rotate_deg, rotate_deg]
    scale: float  # zoom factor drawn from [1 - scale, 1 + scale]
    intensity: float  # contrast factor in [1 - i, 1 + i] and brightness shift in [-i, i]
    hflip: bool  # left-right flip with p = 0.5 (off: anatomy is lateralised)

    @property
    def active(self) -> bool:
        return bool(self.rotate_deg or self.scale or self.intensity or self.hflip)


def _uniform(n: int, half_width: float, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * half_width


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Randomly warp and re-expose a float ``[N, 1, H, W]`` batch in [-1, 1]; output stays in [-1, 1].

    Every transform draws its parameters from ``gen`` (a CPU generator) whether or not it is active,
    so switching one transform off does not change the others' draws.
    """
    n = x.shape[0]
    angle = _uniform(n, math.radians(cfg.rotate_deg), gen)
    zoom = 1.0 + _uniform(n, cfg.scale, gen)
    flip = torch.rand(n, generator=gen, dtype=torch.float64) < 0.5
    contrast = 1.0 + _uniform(n, cfg.intensity, gen)
    bright = _uniform(n, cfg.intensity, gen)

    out = x
    if cfg.rotate_deg or cfg.scale or cfg.hflip:
        # theta maps output coordinates to input coordinates: dividing by zoom magnifies by zoom
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        sx = torch.where(flip & cfg.hflip, -1.0, 1.0).to(torch.float64)
        theta = torch.zeros(n, 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = cos * sx
        theta[:, 0, 1] = -sin
        theta[:, 1, 0] = sin * sx
        theta[:, 1, 1] = cos
        theta = theta.to(device=x.device, dtype=x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        # border padding repeats the film edge instead of inventing black corners
        out = F.grid_sample(out, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if cfg.intensity:
        c = contrast.to(device=x.device, dtype=x.dtype).view(n, 1, 1, 1)
        b = bright.to(device=x.device, dtype=x.dtype).view(n, 1, 1, 1)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * c + mean + b
    return out.clamp(-1.0, 1.0)
