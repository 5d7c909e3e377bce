"""Read access to a prepared dataset (``images.h5`` pyramid + ``labels.parquet``) for every later stage."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ..imaging import uint8_to_float


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

    def torch_dataset(self, split: str | None, res: int, labels: Sequence[str] | None = None) -> "ImageLabelDataset":
        rows = self.table if split is None else self.split(split)
        names = list(labels) if labels is not None else self.label_names
        return ImageLabelDataset(self.h5_path, rows["row"].to_numpy(), res, self.label_matrix(rows, names))

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


class ImageLabelDataset(Dataset):
    """Images at one pyramid level as float [-1, 1] tensors ``[1, R, R]`` with a label vector.

    The HDF5 file is opened lazily in each DataLoader worker (h5py handles must not cross a fork).
    """

    def __init__(self, h5_path: str | os.PathLike, rows: np.ndarray, res: int, labels: np.ndarray | None = None):
        self.h5_path = str(h5_path)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.res = int(res)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.float32)
        self._file: h5py.File | None = None
        self._pid: int | None = None
        with h5py.File(self.h5_path, "r") as f:
            if f"images/{self.res}" not in f:
                have = sorted(int(k) for k in f["images"].keys())
                raise KeyError(f"{self.h5_path}: no pyramid level {self.res} (have {have}); raise dataset.max_res")

    def __len__(self) -> int:
        return len(self.rows)

    def _images(self):
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.h5_path, "r")
            self._pid = os.getpid()
        return self._file[f"images/{self.res}"]

    def __getitem__(self, i: int):
        img = uint8_to_float(self._images()[self.rows[i]]).unsqueeze(0)
        if self.labels is None:
            return img
        return img, torch.tensor(self.labels[i])

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        return state
