"""Read access to a prepared dataset (``images.h5`` pyramid + ``labels.parquet``) for every later stage."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from ..imagesets import ImageSet


class PreparedDataset:
    """A prepared dataset folder: ``images.h5`` + ``labels.parquet`` as :func:`synthcxr.data.prepare.prepare` writes them (docs/interfaces.md)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.h5_path = self.folder / "images.h5"
        self.labels_path = self.folder / "labels.parquet"
        for p in (self.h5_path, self.labels_path):
            if not p.exists():
                raise FileNotFoundError(f"{p} missing: run the prepare stage first (snakemake prepare)")
        self.table = pd.read_parquet(self.labels_path)
        with h5py.File(self.h5_path, "r") as f:
            self.label_names = [str(s) for s in f.attrs["label_names"]]
            self.resolutions = sorted(int(k) for k in f["images"].keys())

    def split(self, name: str) -> pd.DataFrame:
        return self.table[self.table["split"] == name]

    def label_matrix(self, rows: pd.DataFrame, labels: Sequence[str]) -> np.ndarray:
        """``[n, len(labels)]`` float32, NaN where unknown. Raises naming a label the dataset lacks."""
        missing = [n for n in labels if n not in rows.columns]
        if missing:
            raise KeyError(f"{self.labels_path}: no column for label(s) {missing}; available {self.label_names}")
        return rows[list(labels)].to_numpy(dtype=np.float32)

    def images(self, split: str | None, level: int, labels: Sequence[str] | None = None,
               rows: pd.DataFrame | None = None) -> "PreparedImages":
        """The images of ``split`` (None: all; or the given ``rows`` of the table) at pyramid ``level``, as an
        :class:`~synthcxr.imagesets.ImageSet` whose labels are ``labels`` (default: all of the dataset's)."""
        if rows is None:
            rows = self.table if split is None else self.split(split)
        names = list(labels) if labels is not None else self.label_names
        origin = f"{self.folder}" + (f" [{split}]" if split else "")
        groups = rows["patient_key"].to_numpy() if "patient_key" in rows.columns else None
        ids = rows["image_id"].to_numpy() if "image_id" in rows.columns else rows["row"].to_numpy()
        return PreparedImages(self.h5_path, rows["row"].to_numpy(), level, ids,
                              self.label_matrix(rows, names), names, groups=groups, origin=origin)

    def read_images(self, res: int, rows: np.ndarray) -> np.ndarray:
        """uint8 ``[n, res, res]`` for the given ``row`` indices (sorted internally for h5py)."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows)
        with h5py.File(self.h5_path, "r") as f:
            ds = f[f"images/{res}"]
            out = np.empty((len(rows), res, res), dtype=np.uint8)
            for i in order:
                out[i] = ds[rows[i]]
        return out


class PreparedImages(ImageSet):
    """Rows of a prepared ``images.h5`` at one pyramid level (see :meth:`PreparedDataset.images`).

    The HDF5 file is opened lazily in each process (h5py handles must not cross a DataLoader fork).
    """

    def __init__(self, h5_path: str | os.PathLike, rows: np.ndarray, level: int, ids: Sequence[str], labels: np.ndarray,
                 label_names: Sequence[str], *, groups: Sequence[str] | None = None, origin: str | None = None):
        self.h5_path = str(h5_path)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.level = int(level)
        self._file: h5py.File | None = None
        self._pid: int | None = None
        with h5py.File(self.h5_path, "r") as f:
            if f"images/{self.level}" not in f:
                have = sorted(int(k) for k in f["images"].keys())
                raise KeyError(f"{self.h5_path}: no pyramid level {self.level} (have {have}); raise dataset.max_res")
        super().__init__(ids, labels, label_names, groups=groups, origin=origin or self.h5_path)

    def _images(self):
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.h5_path, "r")
            self._pid = os.getpid()
        return self._file[f"images/{self.level}"]

    def native(self, positions: np.ndarray) -> np.ndarray:
        rows = self.rows[np.asarray(positions, dtype=np.int64)]
        ds = self._images()
        out = np.empty((len(rows), self.level, self.level), dtype=np.uint8)
        for i in np.argsort(rows, kind="stable"):  # ascending rows read faster from HDF5
            out[i] = ds[rows[i]]
        return out

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        return state
