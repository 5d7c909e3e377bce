"""Write one archive shard as HDF5 with pre-sized datasets filled micro-batch by micro-batch.

Pre-sizing keeps memory bounded by one micro-batch however large the shard; ``track_times=False``
keeps the file bytes a function of the content only, so a rerun reproduces the same SHA-256.
The file is built under a temporary name and renamed on success: a killed job leaves no shard.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..utils.atomic import atomic_path

_COMPRESSION = {"gzip": {"compression": "gzip", "compression_opts": 4}, "lzf": {"compression": "lzf"}, "none": {}}


class H5ShardWriter:
    """Context manager: ``with H5ShardWriter(...) as w: w.write(start, ...)``; renamed into place on exit."""

    def __init__(
        self,
        path: str | os.PathLike,
        n: int,
        resolution: int,
        label_names: Sequence[str],
        compression: str = "gzip",
        attrs: dict[str, Any] | None = None,
    ):
        if compression not in _COMPRESSION:
            raise ValueError(f"archive.compression: {compression!r} not one of {sorted(_COMPRESSION)}")
        self.path = Path(path)
        self.n = int(n)
        self.res = int(resolution)
        self.label_names = list(label_names)
        self.compression = compression
        self.attrs = dict(attrs or {})
        self._filled = np.zeros(self.n, dtype=bool)
        self._stack: contextlib.ExitStack | None = None
        self._f: h5py.File | None = None

    def __enter__(self) -> "H5ShardWriter":
        stack = contextlib.ExitStack()
        tmp = stack.enter_context(atomic_path(self.path))
        f = h5py.File(tmp, "w")
        L, R, n = len(self.label_names), self.res, self.n
        f.create_dataset(
            "images", shape=(n, R, R), dtype=np.uint8, chunks=(1, R, R) if n else None,
            track_times=False, **(_COMPRESSION[self.compression] if n else {}),
        )
        f.create_dataset("labels", shape=(n, L), dtype=np.uint8, track_times=False)
        f.create_dataset("probs", shape=(n, L), dtype=np.float32, track_times=False)
        f.create_dataset("sample_id", shape=(n,), dtype=h5py.string_dtype("utf-8"), track_times=False)
        f["labels"].attrs["label_names"] = self.label_names
        f["probs"].attrs["label_names"] = self.label_names
        for k, v in {**self.attrs, "count": n, "resolution": R, "label_names": self.label_names}.items():
            f.attrs[k] = v
        self._stack, self._f = stack, f
        return self

    def write(self, start: int, images: np.ndarray, labels: np.ndarray, probs: np.ndarray, sample_ids: Sequence[str]) -> None:
        """Fill rows ``[start, start + len(images))``."""
        stop = start + len(images)
        if start < 0 or stop > self.n:
            raise IndexError(f"{self.path}: rows [{start}, {stop}) outside shard of {self.n}")
        if images.shape[1:] != (self.res, self.res) or images.dtype != np.uint8:
            raise ValueError(f"{self.path}: images must be uint8 [b, {self.res}, {self.res}], got {images.dtype} {images.shape}")
        f = self._f
        f["images"][start:stop] = images
        f["labels"][start:stop] = labels
        f["probs"][start:stop] = probs
        f["sample_id"][start:stop] = list(sample_ids)
        self._filled[start:stop] = True

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self._stack is not None and self._f is not None
        self._f.close()
        if exc_type is None and not self._filled.all():
            missing = int((~self._filled).sum())
            exc = RuntimeError(f"{self.path}: {missing} of {self.n} rows never written; shard not published")
            self._stack.__exit__(type(exc), exc, None)
            raise exc
        self._stack.__exit__(exc_type, exc, tb)
        return False


def read_h5_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """Root attributes of an HDF5 shard as plain Python values."""
    with h5py.File(path, "r") as f:
        return {k: _plain(v) for k, v in f.attrs.items()}


def _plain(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.tolist()]
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v
