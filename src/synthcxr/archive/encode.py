"""Encode rendered micro-batches for storage on a pool of threads: PNG bytes and stored HDF5 chunks.

PNG (Pillow) and zlib release the GIL while they compress, so ``workers`` threads encode about
``workers`` times faster than one; each image is encoded on its own, so the bytes never depend on the
number of threads. A batch is split into at most ``2 * workers`` slices, so small images are not
dominated by task overhead and large batches keep every thread busy.
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .shard_h5 import encode_chunk
from .shard_parquet import encode_png


@dataclass
class EncodedBatch:
    """One micro-batch and its encodings (``None`` where the shard formats do not need one)."""

    start: int
    images: np.ndarray
    pngs: list[bytes] | None
    chunks: list[bytes] | None


class PendingBatch:
    """Handle of a submitted batch; :meth:`result` waits for its slices in order."""

    def __init__(self, start: int, images: np.ndarray, parts: list[Future]):
        self.start, self.images, self._parts = start, images, parts

    def __len__(self) -> int:
        return len(self.images)

    def result(self) -> EncodedBatch:
        parts = [fut.result() for fut in self._parts]
        pngs = [b for p, _ in parts for b in p] if parts and parts[0][0] is not None else None
        chunks = [b for _, c in parts for b in c] if parts and parts[0][1] is not None else None
        return EncodedBatch(self.start, self.images, pngs, chunks)


def _encode_slice(images: np.ndarray, png: int | None, chunk: str | None) -> tuple[list[bytes] | None, list[bytes] | None]:
    pngs = None if png is None else [encode_png(im, png) for im in images]
    return pngs, [encode_chunk(im, chunk) for im in images] if chunk else None


class BatchEncoder:
    """``with BatchEncoder(workers, png=6, chunk="gzip") as enc: enc.submit(start, images).result()``.

    ``png``: zlib level of the PNG bytes to build (Parquet, WebDataset), ``None`` for none; ``chunk``: build
    stored HDF5 chunks for this compression (``gzip``/``none``; ``None`` when HDF5 is not written or
    compresses itself, e.g. lzf).
    """

    def __init__(self, workers: int, png: int | None, chunk: str | None):
        if workers < 1:
            raise ValueError(f"archive.workers must be >= 1, got {workers}")
        self.workers, self.png, self.chunk = int(workers), png, chunk
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> "BatchEncoder":
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="synthcxr-encode")
        return self

    def __exit__(self, *exc) -> None:
        assert self._pool is not None
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None

    def submit(self, start: int, images: np.ndarray) -> PendingBatch:
        """Queue the encoding of ``images`` (rows ``start..``) and return at once."""
        assert self._pool is not None, "BatchEncoder used outside its with-block"
        n = len(images)
        if (self.png is None and not self.chunk) or n == 0:
            return PendingBatch(start, images, [])
        step = max(1, math.ceil(n / (2 * self.workers)))
        parts = [self._pool.submit(_encode_slice, images[s : s + step], self.png, self.chunk) for s in range(0, n, step)]
        return PendingBatch(start, images, parts)
