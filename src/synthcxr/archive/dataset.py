"""torch datasets over an :class:`~synthcxr.archive.reader.Archive` view, for training on synthetic data.

Map-style for shuffled random access (HDF5 shards make that cheap); iterable for streaming whole
shards in order, where DataLoader workers take disjoint shard subsets so each sample appears once.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ..imaging import resize_batch, uint8_to_float


def _to_tensor(img: np.ndarray, res: int | None) -> torch.Tensor:
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
        return _to_tensor(img, self.res), self.labels[i]


class ArchiveIterableDataset(IterableDataset):
    """Streams shards in order (or a seeded shuffle of shards); worker w of W takes shards ``w::W``."""

    def __init__(self, archive, shuffle_shards: bool = False, seed: int = 0, res: int | None = None):
        self.archive = archive
        self.res = res
        self.shuffle_shards = shuffle_shards
        self.seed = seed
        self.epoch = 0
        # one manifest scan, here: each shard's (index order) positions and labels
        names = archive.label_names
        self._rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for shard, rows in archive.manifest.groupby("shard", sort=True):
            rows = rows.sort_values("index")
            self._rows[int(shard)] = (rows["index"].to_numpy(np.int64), rows[names].to_numpy(np.float32))
        self.shards = sorted(self._rows)

    def set_epoch(self, epoch: int) -> None:
        """Vary the shard order between epochs (same order in every worker, so the split stays disjoint)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.archive)

    def shard_order(self) -> list[int]:
        if not self.shuffle_shards:
            return list(self.shards)
        rng = np.random.default_rng([self.seed, self.epoch])
        return [self.shards[i] for i in rng.permutation(len(self.shards))]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        order = self.shard_order()
        if info is not None:
            order = order[info.id :: info.num_workers]
        for shard in order:
            index, labels = self._rows[shard]
            pos = {int(ix): k for k, ix in enumerate(index)}
            lab = torch.from_numpy(np.array(labels, copy=True))
            for ix, img in self.archive.shard_images(shard).iter_rows(pos.keys()):
                yield _to_tensor(img, self.res), lab[pos[ix]]
