"""Consumer API: ``synthcxr.archive.open(RELEASE)`` -> :class:`Archive`, a view over the released samples.

A release holds only released samples; the reader still goes through ``manifest.parquet`` and checks each
shard it opens against it (attributes and sample ids, :mod:`.contract`), so a swapped, foreign or stale
shard raises instead of streaming wrong pixels. Only a sealed release (with SHA256SUMS) opens; the
validation rules, which run between finalising and sealing, pass ``sealed=False``. Images come from
HDF5 shards when present (cheap random access), else from Parquet PNGs, else from WebDataset tars.
For streaming from object storage or across distributed ranks, see :mod:`.streaming`.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from .contract import check_identity
from .layout import SUMS
from .shard_parquet import decode_png
from .verify import read_info, read_manifest


class ShardImages:
    """Lazy, fork-safe access to the images of one shard file (HDF5 or Parquet).

    With ``expect = (info, entry, ids)`` the shard is checked against archive.json's entry for it and the
    manifest's ids the first time each process opens it.
    """

    def __init__(self, path: Path, fmt: str, expect: tuple[Mapping[str, Any], Mapping[str, Any], Sequence[str]] | None = None):
        self.path, self.fmt, self.expect = path, fmt, expect
        self._pid: int | None = None
        self._h5: h5py.File | None = None
        self._pf: pq.ParquetFile | None = None
        self._tar: tarfile.TarFile | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        self._bounds: np.ndarray | None = None
        self._cache: tuple[int, list] | None = None  # (row group, PNG bytes)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "fmt": self.fmt, "expect": self.expect}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["fmt"], state.get("expect"))

    def _open(self) -> None:
        if self._pid == os.getpid():
            return
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path} missing: the release is incomplete; run 'synthcxr verify' on it")
        if self.expect is not None:
            check_identity(self.path, self.fmt, *self.expect)
        self._h5 = self._pf = self._tar = None
        if self.fmt == "h5":
            self._h5 = h5py.File(self.path, "r")
        elif self.fmt == "webdataset":
            if self.expect is None:
                raise ValueError(f"{self.path}: a WebDataset shard is read by sample id; open it through synthcxr.archive.open")
            self._tar = tarfile.open(self.path, "r")
            self._members = {m.name: m for m in self._tar.getmembers()}
        else:
            self._pf = pq.ParquetFile(self.path)
            sizes = [self._pf.metadata.row_group(i).num_rows for i in range(self._pf.num_row_groups)]
            self._bounds = np.cumsum([0, *sizes])
        self._cache = None
        self._pid = os.getpid()

    def get(self, index: int) -> np.ndarray:
        """uint8 ``[R, R]`` image at shard position ``index``."""
        self._open()
        if self._h5 is not None:
            return self._h5["images"][index]
        if self._tar is not None:
            name = f"{self.expect[2][index]}.png"
            fh = self._tar.extractfile(self._members[name])
            return decode_png(fh.read())
        rg = int(np.searchsorted(self._bounds, index, side="right") - 1)
        return decode_png(self._row_group(rg)[index - int(self._bounds[rg])])

    def _row_group(self, rg: int) -> list[bytes]:
        """The PNG bytes of Parquet row group ``rg``; the last one read is kept for the next call."""
        if self._cache is None or self._cache[0] != rg:
            col = self._pf.read_row_group(rg, columns=["image"]).column("image").combine_chunks()
            self._cache = (rg, col.field("bytes").to_pylist())
        return self._cache[1]

    def rows(self, indices: Iterable[int]) -> list[np.ndarray]:
        """uint8 ``[R, R]`` images at shard positions ``indices``, in the order given (repeats allowed); HDF5
        reads only those rows, Parquet each row group holding one once."""
        idx = [int(i) for i in indices]
        want = sorted(set(idx))
        self._open()
        if self._h5 is not None:
            got = dict(zip(want, self._h5["images"][want])) if want else {}
        else:
            got = dict(self.iter_rows(want))
        return [got[i] for i in idx]

    def iter_rows(self, indices: Iterable[int], block: int = 256) -> Iterator[tuple[int, np.ndarray]]:
        """Stream ``(index, image)`` for sorted ``indices``, reading at most ``block`` rows (or one row group) at a time."""
        wanted = np.asarray(sorted(indices), dtype=np.int64)
        self._open()
        if self._h5 is not None:
            ds = self._h5["images"]
            for s in range(0, len(wanted), block):
                part = wanted[s : s + block]
                lo, hi = int(part[0]), int(part[-1]) + 1
                chunk = ds[lo:hi]
                for i in part:
                    yield int(i), chunk[int(i) - lo]
            return
        if self._tar is not None:
            for i in wanted:
                yield int(i), self.get(int(i))
            return
        for rg in range(self._pf.num_row_groups):
            lo, hi = int(self._bounds[rg]), int(self._bounds[rg + 1])
            part = wanted[(wanted >= lo) & (wanted < hi)]
            if len(part):
                pngs = self._row_group(rg)
                for i in part:
                    yield int(i), decode_png(pngs[int(i) - lo])

    def close(self) -> None:
        if self._pid == os.getpid():
            for f in (self._h5, self._tar):
                if f is not None:
                    f.close()
        self._h5 = self._pf = self._tar = None
        self._pid = None


class Archive:
    """A (possibly filtered) view of a release folder."""

    def __init__(self, root: str | os.PathLike, manifest: pd.DataFrame, info: dict[str, Any], full: pd.DataFrame | None = None,
                 sealed: bool = True, require: Sequence[str] = (), exclude: Sequence[str] = ()):
        self.root = Path(root)
        self.sealed = sealed
        self.require, self.exclude = list(require), list(exclude)  # the view's filter, for streaming it
        self.manifest = manifest.reset_index(drop=True)
        self.info = info
        self.label_names: list[str] = list(info["label_names"])
        self.resolution: int = int(info["resolution"])
        self.formats: list[str] = list(info["formats"])
        self.image_format = next(f for f in ("h5", "parquet", "webdataset") if f in self.formats)
        self._full = self.manifest if full is None else full  # every released sample: what each shard must hold
        self._entries = {int(sh["shard"]): sh for sh in info["shards"]}
        self._shards: dict[int, ShardImages] = {}
        self._by_id: dict[str, int] | None = None
        self._ids_by_shard: dict[int, list[str]] | None = None

    def __len__(self) -> int:
        return len(self.manifest)

    def __repr__(self) -> str:
        return f"Archive({str(self.root)!r}, {len(self)} samples, {self.resolution}px, labels={self.label_names})"

    def labels(self) -> np.ndarray:
        """float32 ``[n, L]`` target labels of the samples in this view, in ``label_names`` order."""
        return np.array(self.manifest[self.label_names].to_numpy(dtype=np.float32), copy=True)

    def filter(self, require: Iterable[str] = (), exclude: Iterable[str] = ()) -> "Archive":
        """View of samples having every label in ``require`` and none in ``exclude``."""
        require, exclude = list(require), list(exclude)
        unknown = [n for n in [*require, *exclude] if n not in self.label_names]
        if unknown:
            raise KeyError(f"unknown label(s) {unknown}; this archive has {self.label_names}")
        keep = np.ones(len(self.manifest), dtype=bool)
        for n in require:
            keep &= self.manifest[n].to_numpy() == 1
        for n in exclude:
            keep &= self.manifest[n].to_numpy() == 0
        return Archive(self.root, self.manifest[keep], self.info, self._full, self.sealed,
                       [*self.require, *require], [*self.exclude, *exclude])

    def pairs(self) -> pd.DataFrame:
        """The released paired counterfactuals, one row per variant: pair_id, base_sample_id, sample_id (the
        variant) and edit (``+Effusion`` adds the finding to the base, ``-Effusion`` removes it); empty when the
        release holds no pairs. Read both images with :meth:`read`."""
        cols = ["pair_id", "base_sample_id", "sample_id", "edit"]
        man = self.manifest
        if "pair_id" not in man.columns:
            return pd.DataFrame(columns=cols)
        v = man[(man["pair_id"] >= 0) & (man["edit"] != "")]
        return v[cols].sort_values(["pair_id", "sample_id"]).reset_index(drop=True)

    def shard_images(self, shard: int) -> ShardImages:
        """Image access for one shard, checked against the manifest (cached; safe across DataLoader worker forks)."""
        if shard not in self._shards:
            entry = self._entries.get(int(shard))
            if entry is None:
                raise KeyError(f"{self.root}: archive.json lists no shard {shard}")
            if self._ids_by_shard is None:  # one pass over the manifest for all shards, not one per shard
                full = self._full.sort_values(["shard", "index"])
                self._ids_by_shard = {int(k): g.astype(str).tolist() for k, g in full.groupby("shard")["sample_id"]}
            expect = (self.info, entry, self._ids_by_shard.get(int(shard), []))
            self._shards[shard] = ShardImages(self.root / entry["files"][self.image_format], self.image_format, expect)
        return self._shards[shard]

    def _row(self, sample_id: str) -> pd.Series:
        """The manifest row of a released sample of this view; KeyError naming it otherwise."""
        if self._by_id is None:
            self._by_id = {s: i for i, s in enumerate(self.manifest["sample_id"].astype(str))}
        if sample_id not in self._by_id:
            raise KeyError(f"sample {sample_id!r} is not among the {len(self)} released samples of this view")
        return self.manifest.iloc[self._by_id[sample_id]]

    def read(self, sample_id: str) -> np.ndarray:
        """uint8 ``[R, R]`` image of a released sample."""
        row = self._row(sample_id)
        return self.shard_images(int(row["shard"])).get(int(row["index"]))

    def read_dicom(self, sample_id: str) -> np.ndarray:
        """uint8 ``[R, R]`` image of a released sample from its DICOM file (``archive.formats`` with dicom),
        checked against the manifest's pixel hash."""
        from ..utils.hashing import pixel_sha256
        from .dicom_export import read_dicom_image

        if "dicom" not in self.formats:
            raise KeyError(f"{self.root}: this release has no DICOM files (formats {self.formats})")
        row = self._row(sample_id)
        img = read_dicom_image(self.root / str(row["dicom_path"]))
        if pixel_sha256(img) != row["pixel_sha256"]:
            raise ValueError(f"{self.root / str(row['dicom_path'])}: pixels differ from the manifest; run 'synthcxr verify' on the release")
        return img

    def iter_batches(self, batch_size: int = 256) -> Iterator[tuple[list[str], np.ndarray]]:
        """``(sample_ids, uint8 [b, R, R])`` over this view, shard by shard; memory bounded by one batch."""
        for shard, rows in self.manifest.groupby("shard", sort=True):
            rows = rows.sort_values("index")
            id_of = dict(zip(rows["index"].astype(int), rows["sample_id"].astype(str)))
            ids: list[str] = []
            imgs: list[np.ndarray] = []
            for ix, img in self.shard_images(int(shard)).iter_rows(id_of.keys(), block=batch_size):
                ids.append(id_of[ix])
                imgs.append(img)
                if len(ids) == batch_size:
                    yield ids, np.stack(imgs)
                    ids, imgs = [], []
            if ids:
                yield ids, np.stack(imgs)

    def torch_dataset(self, res: int | None = None):
        """This view as a map-style :class:`~synthcxr.imagesets.ImageSet` of ``{"sample_id", "image": float
        [1, res, res] in [-1, 1], "labels": float32 [L]}`` items (the stream's items, with random access)."""
        from .dataset import ArchiveImages

        return ArchiveImages(self, res)

    def iterable_dataset(self, shuffle: int = 0, seed: int = 0, res: int | None = None, **kwargs: Any):
        """This view streamed (:func:`synthcxr.archive.stream`): ``{"sample_id", "image", "labels"}`` items, each
        sample read once across DataLoader workers and distributed ranks; ``shuffle`` is the buffer size."""
        from .streaming import ReleaseStream

        kwargs.setdefault("format", self.image_format)
        return ReleaseStream(self.root, shuffle=shuffle, seed=seed, res=res, require=self.require, exclude=self.exclude,
                             sealed=self.sealed, **kwargs)

    def close(self) -> None:
        for s in self._shards.values():
            s.close()


def open_archive(path: str | os.PathLike, sealed: bool = True) -> Archive:
    """Open a release folder (``manifest.parquet`` + ``archive.json`` + shards, sealed by ``SHA256SUMS``).

    ``sealed=False`` opens a finalised release before the ``release`` rule sealed it (the validation rules).
    """
    root = Path(path)
    info = read_info(root)
    if sealed and not (root / SUMS).exists():
        raise FileNotFoundError(
            f"{root / SUMS} missing: the release is not sealed (half-finalised, or its validation has not finished); "
            "run snakemake to completion, then 'synthcxr verify'"
        )
    return Archive(root, read_manifest(root, info), info, sealed=sealed)
