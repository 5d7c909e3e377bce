"""The multi-resolution image store ``images.h5``: one uint8 dataset per power-of-two level.

Progressive GAN training walks through 4, 8, ..., max_res; storing every level once lets each phase
read small images directly instead of shrinking full-size images on every step.

Downsampling is **exact box averaging from the full-resolution image**: level ``r`` is the mean of each
``(max_res/r) x (max_res/r)`` block of the max_res image, rounded half-to-even once. It is computed by
repeated 2x2 means in float64 (the mean of equal-size block means is the block mean, so this is exact)
and never re-rounds intermediate levels, so errors do not accumulate down the pyramid.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import h5py
import numpy as np

MIN_RES = 4


def pyramid_levels(max_res: int, min_res: int = MIN_RES) -> list[int]:
    """Every power of two from ``min_res`` to ``max_res`` (ascending)."""
    if max_res < min_res or max_res & (max_res - 1):
        raise ValueError(f"max_res must be a power of two >= {min_res}, got {max_res}")
    out, r = [], min_res
    while r <= max_res:
        out.append(r)
        r *= 2
    return out


def build_pyramid(img: np.ndarray, min_res: int = MIN_RES) -> dict[int, np.ndarray]:
    """uint8 ``[R, R]`` (R a power of two) -> ``{res: uint8 [res, res]}`` for every level down to ``min_res``."""
    img = np.asarray(img)
    if img.ndim != 2 or img.shape[0] != img.shape[1]:
        raise ValueError(f"expected a square 2-D image, got shape {img.shape}")
    res = img.shape[0]
    levels = pyramid_levels(res, min_res)
    out = {res: np.ascontiguousarray(img, dtype=np.uint8)}
    cur = img.astype(np.float64)
    r = res
    while r > min_res:
        cur = cur.reshape(r // 2, 2, r // 2, 2).mean(axis=(1, 3))
        r //= 2
        out[r] = np.clip(np.rint(cur), 0, 255).astype(np.uint8)
    assert sorted(out) == levels
    return out


class PyramidWriter:
    """Writes pyramids image by image into pre-sized, per-image-chunked HDF5 datasets.

    The datasets are created with room for ``capacity`` images (chunks are only allocated when
    written, so unused room costs no disk) and trimmed to the number actually written on
    :meth:`close`. Memory stays at one image regardless of dataset size.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        capacity: int,
        max_res: int,
        attrs: Mapping[str, object],
        min_res: int = MIN_RES,
    ):
        self.path = str(path)
        self.levels = pyramid_levels(max_res, min_res)
        self.max_res = max_res
        self.n = 0
        # fixed file-format version bounds and no object timestamps: identical inputs give identical bytes
        self._f = h5py.File(self.path, "w", libver=("v110", "v110"), track_order=False)
        group = self._f.create_group("images")
        cap = max(int(capacity), 1)
        self._ds = {
            r: group.create_dataset(
                str(r), shape=(cap, r, r), maxshape=(None, r, r), dtype=np.uint8, chunks=(1, r, r),
                track_times=False,
            )
            for r in self.levels
        }
        for k, v in attrs.items():
            self._f.attrs[k] = v

    def append(self, pyramid: Mapping[int, np.ndarray]) -> int:
        """Write one image's levels at the next row; returns that row index."""
        row = self.n
        for r, ds in self._ds.items():
            if row >= ds.shape[0]:
                ds.resize(max(row + 1, 2 * ds.shape[0]), axis=0)
            ds[row] = pyramid[r]
        self.n += 1
        return row

    def close(self) -> None:
        """Trim datasets to the rows written and close the file."""
        if self._f:
            for ds in self._ds.values():
                ds.resize(self.n, axis=0)
            self._f.attrs["n_images"] = self.n
            self._f.close()
            self._f = None

    def abort(self) -> None:
        if self._f:
            self._f.close()
            self._f = None

    def __enter__(self) -> "PyramidWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def string_attr(values: Sequence[str]) -> np.ndarray:
    """A list of strings as an HDF5 variable-length UTF-8 string array attribute."""
    return np.array(list(values), dtype=h5py.string_dtype("utf-8"))
