"""Write one archive shard as HDF5 with pre-sized datasets filled micro-batch by micro-batch.

Pre-sizing keeps memory bounded by one micro-batch however large the shard; ``track_times=False``
keeps the file bytes a function of the content only, so a rerun reproduces the same SHA-256.
The file is built under a temporary name and renamed on success: a killed job leaves no shard.

Each image is one chunk. h5py serialises every HDF5 call, so compressing chunks through the HDF5
filter would keep one core busy however many the job has; instead gzip chunks are deflated by
:func:`deflate_image` on any thread (the same zlib stream the filter stores for that image) and
stored with ``write_direct_chunk``. Finalising copies stored chunks between files the
same way, without decompressing and compressing them again.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..utils.atomic import atomic_path, finish_rows
from .layout import PAIR_FIELDS

#: zlib level of gzip-compressed HDF5 shards.
GZIP_LEVEL = 4
_COMPRESSION = {"gzip": {"compression": "gzip", "compression_opts": GZIP_LEVEL}, "lzf": {"compression": "lzf"}, "none": {}}
#: Compressions whose stored chunk this module can build (or read) itself, off the HDF5 lock.
DIRECT = ("gzip", "none")


def deflate_image(image: np.ndarray) -> bytes:
    """The stored chunk of one uint8 image in a gzip shard: what HDF5's deflate filter writes for it."""
    return zlib.compress(np.ascontiguousarray(image, dtype=np.uint8).tobytes(), GZIP_LEVEL)


def encode_chunk(image: np.ndarray, compression: str) -> bytes:
    """The stored chunk of one image for ``compression`` in :data:`DIRECT` (thread-safe, releases the GIL)."""
    if compression == "gzip":
        return deflate_image(image)
    if compression == "none":
        return np.ascontiguousarray(image, dtype=np.uint8).tobytes()
    raise ValueError(f"chunks of compression {compression!r} are built by HDF5 itself; expected one of {DIRECT}")


def dataset_compression(ds: h5py.Dataset) -> str:
    """The ``archive.compression`` name of an images dataset's filter pipeline (``other`` for anything else)."""
    if ds.compression is None and not ds.shuffle and not ds.fletcher32 and not ds.scaleoffset:
        return "none"
    if ds.compression == "gzip" and ds.compression_opts == GZIP_LEVEL and not ds.shuffle and not ds.fletcher32:
        return "gzip"
    if ds.compression == "lzf" and not ds.shuffle and not ds.fletcher32:
        return "lzf"
    return "other"


def read_chunks(ds: h5py.Dataset, rows) -> list[bytes]:
    """Stored (still compressed) chunks of one-image-per-chunk ``ds`` at ``rows``."""
    tail = (0,) * (ds.ndim - 1)
    out = []
    for r in rows:
        mask, data = ds.id.read_direct_chunk((int(r), *tail))
        if mask:
            raise ValueError(f"{ds.file.filename}: chunk {int(r)} of {ds.name} skipped a filter (mask {mask}); cannot copy it raw")
        out.append(bytes(data))
    return out


def chunk_pixels(chunk: bytes, compression: str, shape: tuple[int, int]) -> np.ndarray:
    """uint8 image of a stored chunk read by :func:`read_chunks` (gzip or none)."""
    raw = zlib.decompress(chunk) if compression == "gzip" else chunk
    if len(raw) != shape[0] * shape[1]:
        raise ValueError(f"stored chunk holds {len(raw)} bytes, expected {shape[0]} x {shape[1]}")
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape)


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
        pairs: bool = False,
    ):
        if compression not in _COMPRESSION:
            raise ValueError(f"archive.compression: {compression!r} not one of {sorted(_COMPRESSION)}")
        self.path = Path(path)
        self.n = int(n)
        self.res = int(resolution)
        self.label_names = list(label_names)
        self.compression = compression
        self.attrs = dict(attrs or {})
        self.pairs = bool(pairs)
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
        if self.pairs:  # paired counterfactuals: the group, the variant's base and its edit
            f.create_dataset("pair_id", shape=(n,), dtype=np.int64, track_times=False)
            f.create_dataset("base_sample_id", shape=(n,), dtype=h5py.string_dtype("utf-8"), track_times=False)
            f.create_dataset("edit", shape=(n,), dtype=h5py.string_dtype("utf-8"), track_times=False)
        f["labels"].attrs["label_names"] = self.label_names
        f["probs"].attrs["label_names"] = self.label_names
        for k, v in {**self.attrs, "count": n, "resolution": R, "label_names": self.label_names}.items():
            f.attrs[k] = v
        self._stack, self._f = stack, f
        self._ds = {k: f[k] for k in ("images", "labels", "probs", "sample_id", *(PAIR_FIELDS if self.pairs else ()))}  # looked up once
        return self

    @property
    def direct(self) -> bool:
        """Whether :meth:`write` takes pre-built chunks (:func:`encode_chunk`) for this shard's compression."""
        return self.compression in DIRECT

    def write(
        self,
        start: int,
        images: np.ndarray | None,
        labels: np.ndarray,
        probs: np.ndarray,
        sample_ids: Sequence[str],
        chunks: Sequence[bytes] | None = None,
        pairs: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Fill rows ``[start, start + len(sample_ids))`` from ``images`` or from their stored ``chunks``."""
        stop = start + len(sample_ids)
        if start < 0 or stop > self.n:
            raise IndexError(f"{self.path}: rows [{start}, {stop}) outside shard of {self.n}")
        ds = self._ds
        if chunks is not None:
            if not self.direct:
                raise ValueError(f"{self.path}: {self.compression} chunks are written by HDF5; pass images")
            if len(chunks) != stop - start:
                raise ValueError(f"{self.path}: {len(chunks)} chunks for {stop - start} rows")
            dsid = ds["images"].id
            for i, c in enumerate(chunks, start):
                dsid.write_direct_chunk((i, 0, 0), c)
        else:
            if images is None or images.shape != (stop - start, self.res, self.res) or images.dtype != np.uint8:
                got = None if images is None else (images.dtype, images.shape)
                raise ValueError(f"{self.path}: images must be uint8 [{stop - start}, {self.res}, {self.res}], got {got}")
            ds["images"][start:stop] = images
        ds["labels"][start:stop] = labels
        ds["probs"][start:stop] = probs
        ds["sample_id"][start:stop] = list(sample_ids)
        if self.pairs:
            ds["pair_id"][start:stop] = np.asarray(pairs["pair_id"], dtype=np.int64)
            ds["base_sample_id"][start:stop] = [str(x) for x in pairs["base_sample_id"]]
            ds["edit"][start:stop] = [str(x) for x in pairs["edit"]]
        self._filled[start:stop] = True

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self._stack is not None and self._f is not None
        self._ds = {}
        self._f.close()
        finish_rows(self._stack, self.path, self.n, int(self._filled.sum()), (exc_type, exc, tb))
        return False


def read_h5_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """Root attributes of an HDF5 shard as plain Python values."""
    with h5py.File(path, "r") as f:
        return h5_attrs(f)


def h5_attrs(f: h5py.File) -> dict[str, Any]:
    """Root attributes of an open HDF5 shard as plain Python values."""
    return {k: _plain(v) for k, v in f.attrs.items()}


def _plain(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.tolist()]
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v
