"""Progress grids: a fixed set of latents rendered by the EMA generator into one PNG per snapshot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..imaging import float_to_uint8
from ..utils.atomic import atomic_path
from .networks import Generator

GRID_SEED_SALT = 0x6121D


def grid_latents(n: int, latent_dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1000003 + GRID_SEED_SALT)
    return torch.randn(n, latent_dim, generator=g)


def grid_shape(final_res: int) -> tuple[int, int]:
    side = int(min(8, max(2, 2048 // final_res)))
    return side, side


@torch.no_grad()
def render_grid(G: Generator, z: torch.Tensor, res: int, alpha: float, rows: int, cols: int, cell: int) -> np.ndarray:
    """uint8 ``[rows*cell, cols*cell]`` mosaic, each image nearest-upsampled to ``cell`` pixels."""
    imgs = []
    for chunk in z.split(16):
        imgs.append(G(chunk.to(next(G.parameters()).device), res=res, alpha=alpha).float().cpu())
    x = torch.cat(imgs)[: rows * cols]
    if cell != res:
        x = torch.nn.functional.interpolate(x, size=(cell, cell), mode="nearest")
    u8 = float_to_uint8(x)[:, 0].numpy()
    return u8.reshape(rows, cols, cell, cell).transpose(0, 2, 1, 3).reshape(rows * cell, cols * cell)


def save_png(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(arr, mode="L").save(tmp, format="PNG")
