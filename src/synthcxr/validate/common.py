"""Small helpers the validation modules share: reading real images at a chosen resolution."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..data.store import PreparedDataset
from ..imaging import float_to_uint8, resize_batch, uint8_to_float


def pyramid_level_for(prep: PreparedDataset, res: int) -> int:
    """The pyramid level to read for images wanted at ``res``: ``res`` itself when stored, otherwise the
    smallest larger level (downsampled by area averaging), otherwise the largest level (upsampled)."""
    if res in prep.resolutions:
        return res
    larger = [r for r in prep.resolutions if r > res]
    return min(larger) if larger else max(prep.resolutions)


def iter_real(prep: PreparedDataset, rows: np.ndarray, res: int, batch_size: int = 256) -> Iterator[np.ndarray]:
    """uint8 ``[b, res, res]`` batches of prepared images ``rows`` (in the given order) at ``res``."""
    level = pyramid_level_for(prep, res)
    rows = np.asarray(rows, dtype=np.int64)
    for s in range(0, len(rows), batch_size):
        imgs = prep.read_images(level, rows[s : s + batch_size])
        if level != res:
            imgs = float_to_uint8(resize_batch(uint8_to_float(imgs).unsqueeze(1), res)).squeeze(1).numpy()
        yield imgs


def read_real(prep: PreparedDataset, rows: np.ndarray, res: int) -> np.ndarray:
    """All of :func:`iter_real` concatenated (use for small sets: figures, demo sizes)."""
    parts = list(iter_real(prep, rows, res))
    return np.concatenate(parts) if parts else np.zeros((0, res, res), np.uint8)


def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[n, R, R]`` -> float ``[n, 1, R, R]`` in [-1, 1]."""
    return uint8_to_float(images).unsqueeze(1)
