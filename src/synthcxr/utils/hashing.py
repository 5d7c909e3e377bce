"""SHA-256 of files, streamed so large shards never sit in memory, and of images' raw pixels."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_files(paths: Sequence[str | os.PathLike], jobs: int = 1) -> list[str]:
    """:func:`sha256_file` of each path, in order, on ``jobs`` threads (hashlib releases the GIL on large blocks)."""
    if jobs <= 1 or len(paths) <= 1:
        return [sha256_file(p) for p in paths]
    with ThreadPoolExecutor(min(jobs, len(paths))) as pool:
        return list(pool.map(sha256_file, paths))


def pixel_sha256(image: np.ndarray) -> str:
    """SHA-256 of an image's raw uint8 pixels (row-major): the manifest's proof of every pixel."""
    return hashlib.sha256(np.ascontiguousarray(image, dtype=np.uint8).tobytes()).hexdigest()
