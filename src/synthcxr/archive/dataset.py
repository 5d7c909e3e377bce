"""A release as an :class:`~synthcxr.imagesets.ImageSet`: map-style random access to an
:class:`~synthcxr.archive.reader.Archive` view (HDF5 shards make it cheap). Streaming from any fsspec URL,
across workers and ranks, is :mod:`.streaming`; both yield the same ``{"sample_id", "image", "labels"}`` items.
"""

from __future__ import annotations

import numpy as np

from ..imagesets import ImageSet, gather


class ArchiveImages(ImageSet):
    """``archive[i]`` -> ``{"sample_id", "image": float [1, res, res] in [-1, 1], "labels": float32 [L]}``;
    shards are opened lazily (safe across DataLoader worker forks)."""

    def __init__(self, archive, res: int | None = None):
        self.archive = archive
        self.shard = archive.manifest["shard"].to_numpy(dtype=np.int64)
        self.index = archive.manifest["index"].to_numpy(dtype=np.int64)
        super().__init__(archive.manifest["sample_id"].astype(str).to_numpy(), archive.labels(), archive.label_names,
                         origin=str(archive.root), res=res)

    def native(self, positions: np.ndarray) -> np.ndarray:
        pos = np.asarray(positions, dtype=np.int64)
        return np.stack(gather(self.shard[pos], lambda k, sel: self.archive.shard_images(k).rows(self.index[pos[sel]])))
