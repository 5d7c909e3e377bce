"""Pixel conventions shared by every stage: uint8 on disk, float in [-1, 1] inside networks."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def uint8_to_float(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., H, W]`` -> float32 in [-1, 1] (same shape)."""
    t = torch.as_tensor(np.array(x, copy=True) if isinstance(x, np.ndarray) and not x.flags.writeable else x)
    return t.to(torch.float32).div_(127.5).sub_(1.0)


def float_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] -> uint8 with round-half-to-even, clamped. Deterministic on every device."""
    y = x.detach().float() + 1.0  # a new tensor: the in-place steps below never touch ``x``
    return y.mul_(127.5).round_().clamp_(0, 255).to(torch.uint8)


def resize_batch(x: torch.Tensor, res: int) -> torch.Tensor:
    """Resize ``[N, C, H, W]`` to ``res``: area averaging when shrinking, bilinear when enlarging.

    Differentiable, so latent optimisation can back-propagate through it.
    """
    h = x.shape[-1]
    if h == res:
        return x
    if h > res:
        return F.adaptive_avg_pool2d(x, res) if h % res else F.avg_pool2d(x, h // res)
    return F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False)


def resize_uint8(x: np.ndarray, res: int) -> np.ndarray:
    """uint8 ``[N, H, W]`` -> ``[N, res, res]`` through float (:func:`resize_batch`) and back (:func:`float_to_uint8`)."""
    if x.shape[-1] == res:
        return x
    with torch.no_grad():
        return float_to_uint8(resize_batch(uint8_to_float(x).unsqueeze(1), res)).squeeze(1).numpy()
