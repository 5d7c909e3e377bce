"""Small helpers the validation modules share: reading real images at a chosen resolution."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch

from ..data.store import PreparedDataset
from ..imagesets import ImageSet
from ..imaging import uint8_to_float


def pyramid_level_for(prep: PreparedDataset, res: int) -> int:
    """The pyramid level to read for images wanted at ``res``: ``res`` itself when stored, otherwise the
    smallest larger level (downsampled by area averaging), otherwise the largest level (upsampled)."""
    if res in prep.resolutions:
        return res
    larger = [r for r in prep.resolutions if r > res]
    return min(larger) if larger else max(prep.resolutions)


def real_images(prep: PreparedDataset, rows: np.ndarray, res: int) -> ImageSet:
    """The prepared images of ``rows`` (``row`` indices, in the order given, repeats allowed) read at ``res``:
    from :func:`pyramid_level_for` and resized. Batches: ``real_images(...).batches(n)``; all: ``.read()``."""
    rows = np.asarray(rows, dtype=np.int64)
    table = prep.table
    at = pd.Index(table["row"].to_numpy()).get_indexer(rows)
    if (at < 0).any():
        raise KeyError(f"{prep.labels_path}: no row(s) {rows[at < 0][:5].tolist()}")
    return prep.images(None, pyramid_level_for(prep, res), labels=[], rows=table.iloc[at]).at(res)


def real_batches(prep: PreparedDataset, rows: np.ndarray, res: int, batch_size: int = 256) -> Iterator[np.ndarray]:
    """The uint8 ``[b, res, res]`` images of :func:`real_images`, batch by batch."""
    return (b["image"] for b in real_images(prep, rows, res).batches(batch_size))


def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[n, R, R]`` -> float ``[n, 1, R, R]`` in [-1, 1]."""
    return uint8_to_float(images).unsqueeze(1)
