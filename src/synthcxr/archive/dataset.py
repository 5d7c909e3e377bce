"""Map-style torch dataset over an :class:`~synthcxr.archive.reader.Archive` view, for shuffled random access
(HDF5 shards make that cheap). Streaming (any fsspec URL, workers and ranks) is :mod:`.streaming`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ..imaging import resize_batch, uint8_to_float


def to_tensor(img: np.ndarray, res: int | None) -> torch.Tensor:
    x = uint8_to_float(img)[None]  # [1, R, R]
    if res is not None and res != x.shape[-1]:
        x = resize_batch(x[None], res)[0]
    return x


class ArchiveDataset(Dataset):
    """``archive[i]`` -> ``(float [1, res, res] in [-1, 1], float32 [L] labels)``; shards opened lazily."""

    def __init__(self, archive, res: int | None = None):
        self.archive = archive
        self.res = res
        self.shard = archive.manifest["shard"].to_numpy(dtype=np.int64)
        self.index = archive.manifest["index"].to_numpy(dtype=np.int64)
        self.labels = torch.from_numpy(archive.labels())

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.archive.shard_images(int(self.shard[i])).get(int(self.index[i]))
        return to_tensor(img, self.res), self.labels[i]
