"""Read rendered working shards directly (HDF5 preferred, Parquet otherwise), batch by batch.

The memorisation audit runs before the release exists (its flags decide what is released), so it reads
the working area's shards, every rendered sample; everything after finalising reads the release
through ``synthcxr.archive``. Reading in batches keeps memory bounded by one batch at any size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyarrow.parquet as pq

from ..archive.shard_parquet import decode_png
from ..archive.reader import ShardImages
from ..imagesets import ImageSet, gather


def _decode_ids(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def pick_format(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """From a list holding possibly both formats of each shard, keep one file per shard (HDF5 preferred)."""
    by_stem: dict[str, Path] = {}
    for p in map(Path, paths):
        if p.suffix not in (".h5", ".parquet"):
            raise ValueError(f"{p}: not an archive shard (expected shard-XXXXX.h5 or .parquet)")
        if p.stem not in by_stem or p.suffix == ".h5":
            by_stem[p.stem] = p
    return [by_stem[k] for k in sorted(by_stem)]


class WorkingShards(ImageSet):
    """The rendered samples of working shards (one file per shard, :func:`pick_format`) as an
    :class:`~synthcxr.imagesets.ImageSet` (ids, no labels). :meth:`batches` reads each shard in stored
    order and never mixes two shards in a batch; random access (:meth:`~ImageSet.select_ids`) reads rows."""

    def __init__(self, paths: Sequence[str | os.PathLike]):
        self.paths = pick_format(paths)
        ids, shard, index = [], [], []
        for k, path in enumerate(self.paths):
            got = _shard_ids(path)
            ids += got
            shard.append(np.full(len(got), k, np.int64))
            index.append(np.arange(len(got), dtype=np.int64))
        self.shard = np.concatenate(shard) if shard else np.zeros(0, np.int64)
        self.index = np.concatenate(index) if index else np.zeros(0, np.int64)
        self._readers = [ShardImages(p, "h5" if p.suffix == ".h5" else "parquet") for p in self.paths]
        where = str(self.paths[0].parent) if self.paths else "<no shards>"
        super().__init__(ids, None, [], origin=where)

    def native(self, positions: np.ndarray) -> np.ndarray:
        pos = np.asarray(positions, dtype=np.int64)
        return np.stack(gather(self.shard[pos], lambda k, sel: self._readers[k].rows(self.index[pos[sel]])))

    def batches(self, batch_size: int = 256) -> Iterator[dict[str, Any]]:
        """``{"sample_id", "image": uint8 [b, R, R], "labels": [b, 0]}`` shard by shard, in stored order."""
        start = 0
        for path in self.paths:
            for b_ids, imgs in _iter_file(path, batch_size):
                if b_ids != [str(i) for i in self.ids[start : start + len(b_ids)]]:
                    raise ValueError(f"{path}: its sample ids changed while it was read; rerun the sample stage")
                start += len(b_ids)
                yield {"sample_id": b_ids, "image": imgs, "labels": np.zeros((len(b_ids), 0), np.float32)}


def _shard_ids(path: Path) -> list[str]:
    """The sample ids of one shard, in stored order; raises naming a file not in the archive format."""
    if path.suffix == ".h5":
        with h5py.File(path, "r") as f:
            for key in ("images", "sample_id"):
                if key not in f:
                    raise KeyError(f"{path}: dataset /{key} missing; the shard is not in the archive format")
            return _decode_ids(f["sample_id"][:])
    pf = pq.ParquetFile(path)
    missing = [c for c in ("sample_id", "image") if c not in pf.schema_arrow.names]
    if missing:
        raise KeyError(f"{path}: column(s) {missing} missing; the shard is not in the archive format")
    return _decode_ids(pf.read(columns=["sample_id"]).column("sample_id").to_pylist())


def _iter_file(path: Path, batch_size: int) -> Iterator[tuple[list[str], np.ndarray]]:
    """``(sample_ids, uint8 [b, R, R])`` batches of one shard file, in stored order."""
    if path.suffix == ".h5":
        with h5py.File(path, "r") as f:
            n = f["images"].shape[0]
            for s in range(0, n, batch_size):
                yield _decode_ids(f["sample_id"][s : s + batch_size]), np.asarray(f["images"][s : s + batch_size], np.uint8)
        return
    pf = pq.ParquetFile(path)
    for rb in pf.iter_batches(batch_size=batch_size, columns=["sample_id", "image"]):
        ids = _decode_ids(rb.column("sample_id").to_pylist())
        imgs = [decode_png(d["bytes"]) for d in rb.column("image").to_pylist()]
        yield ids, (np.stack(imgs) if imgs else np.zeros((0, 0, 0), np.uint8))
