"""Stream a release from any fsspec URL into PyTorch, split across DataLoader workers and distributed ranks.

``synthcxr.archive.stream("s3://bucket/release")`` (or a local path, ``file://``, ``hf://``, any protocol
fsspec has installed) is an ``IterableDataset`` of ``{"sample_id", "image", "labels"}`` items:

- **Planning reads no samples.** It reads archive.json (the shard list) and the manifest's footer (one
  row group per release shard; older releases: any row groups, found by their statistics), so it costs
  the same at a thousand samples as at a million.
- **Work units** are release shards, or, when a release has fewer than ``8 x world size`` shards, equal
  row ranges of them. Each epoch the units are (optionally) shuffled with ``(seed, epoch)``, then dealt to
  ranks and, within a rank, to DataLoader workers, each time to the least-loaded one. Every sample is read
  by exactly one worker of one rank, and with ``equal_ranks`` every rank yields the same number of
  samples (a rank never waits for another in a collective), dropping at most the excess of the most
  loaded ranks.
- **One manifest scan per epoch.** A worker reads the manifest rows of the units it streams, and only
  those: the id, labels and pixel hash of each sample of its units.
- **Checked as it streams.** A Parquet or HDF5 shard's attributes must match archive.json, every item's
  sample id must be the one the manifest lists at that row (a swapped, stale or foreign shard raises at
  its first row), and with ``verify_pixels`` (default) every decoded image must hash to the manifest's
  ``pixel_sha256``. Labels come from the manifest.
- **Shuffle buffer.** ``shuffle=N`` keeps up to N undecoded samples per worker and yields a random one as
  each new sample arrives (seeded by seed, epoch, rank and worker); memory is N encoded images.

Call ``set_epoch(epoch)`` before each epoch (as with ``DistributedSampler``; with ``persistent_workers``
the workers keep the epoch they started with).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..imagesets import image_tensor
from ..utils.hashing import pixel_sha256
from .contract import attr_problems, path_column_problems, shard_file_problems
from .layout import ARCHIVE_JSON, FORMAT_VERSION, MANIFEST, SUMS, dicom_folder, stream_format
from .partition import Unit, _rank_world, deal, quotas
from .shard_parquet import decode_png, read_parquet_attrs_from_schema
from .shard_wds import iter_tar_samples

#: With fewer shards than this many per rank, shards are split into row ranges so every rank gets work.
UNITS_PER_RANK = 8
#: Rows of an HDF5 shard read at a time.
H5_BLOCK = 64


class ReleaseStream(IterableDataset):
    """Iterable dataset over a sealed release at ``url``; see the module docstring. ``len()`` is this rank's share."""

    def __init__(
        self,
        url: str | os.PathLike,
        format: str | None = None,  # noqa: A002 - the archive's own word
        shuffle: int = 0,
        seed: int = 0,
        res: int | None = None,
        require: Iterable[str] = (),
        exclude: Iterable[str] = (),
        rank: int | None = None,
        world_size: int | None = None,
        equal_ranks: bool = True,
        verify_pixels: bool = True,
        decode: str = "float",
        sealed: bool = True,
        storage_options: Mapping[str, Any] | None = None,
    ):
        import fsspec

        self.url = str(url)
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self.root = self.root.rstrip("/")
        self.info = self._read_info(sealed)
        self.label_names: list[str] = list(self.info["label_names"])
        self.resolution = int(self.info["resolution"])
        avail = list(self.info["formats"])
        self.format = format or stream_format(avail)
        if self.format not in avail:
            raise ValueError(f"{self.url}: format {self.format!r} not in this release; it has {avail}")
        if decode not in ("float", "uint8"):
            raise ValueError(f"decode must be 'float' or 'uint8', got {decode!r}")
        self.require, self.exclude = list(require), list(exclude)
        unknown = [n for n in [*self.require, *self.exclude] if n not in self.label_names]
        if unknown:
            raise KeyError(f"unknown label(s) {unknown}; this release has {self.label_names}")
        self.shuffle, self.seed, self.res = int(shuffle), int(seed), res
        self.rank, self.world_size, self.equal_ranks = rank, world_size, bool(equal_ranks)
        self.verify_pixels, self.decode = bool(verify_pixels), decode
        self.epoch = 0
        self.entries = {int(sh["shard"]): sh for sh in self.info["shards"]}
        self._groups = self._manifest_groups()
        self._kept = self._filter_counts() if (self.require or self.exclude) else None
        self.manifest_reads = 0  # row groups of the manifest this process has read while streaming

    # ---------------------------------------------------------------------------------------- planning
    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def _read_info(self, sealed: bool) -> dict[str, Any]:
        p = self._path(ARCHIVE_JSON)
        if not self.fs.exists(p):
            raise FileNotFoundError(f"{self.url}: no {ARCHIVE_JSON}; not a synthcxr release")
        with self.fs.open(p, "rb") as fh:
            info = json.load(fh)
        if int(info.get("format_version", -1)) != FORMAT_VERSION:
            raise ValueError(f"{self.url}: format_version {info.get('format_version')!r}; this synthcxr streams format {FORMAT_VERSION}")
        if sealed and not self.fs.exists(self._path(SUMS)):
            raise FileNotFoundError(f"{self.url}: {SUMS} missing: the release is not sealed; run snakemake to completion, then 'synthcxr verify'")
        bad = shard_file_problems(info)
        if bad:
            raise ValueError(f"{p}: {bad[0]}. Refusing to stream files it names; run 'synthcxr verify' on the release")
        return info

    def _manifest(self):
        return self.fs.open(self._path(MANIFEST), "rb")

    def _manifest_groups(self) -> dict[int, list[int]]:
        """Shard -> manifest row groups that may hold its rows (footer statistics only)."""
        with self._manifest() as fh:
            pf = pq.ParquetFile(fh)
            meta = pf.metadata
        self._columns = set(meta.schema.to_arrow_schema().names)
        col = meta.schema.to_arrow_schema().get_field_index("shard")
        out: dict[int, list[int]] = {}
        for g in range(meta.num_row_groups):
            st = meta.row_group(g).column(col).statistics
            lo, hi = (int(st.min), int(st.max)) if st is not None and st.has_min_max else (min(self.entries), max(self.entries))
            for s in range(lo, hi + 1):  # one shard per row group in releases written since the manifest was aligned
                if s in self.entries:
                    out.setdefault(s, []).append(g)
        return out

    def _filter_counts(self) -> dict[int, np.ndarray]:
        """Per shard, the cumulative count of rows passing require/exclude (one pass over the label columns)."""
        out: dict[int, np.ndarray] = {}
        with self._manifest() as fh:
            pf = pq.ParquetFile(fh)
            for g in range(pf.num_row_groups):
                t = pf.read_row_group(g, columns=["shard", "index", *self.require, *self.exclude]).to_pandas()
                for s, rows in t.groupby("shard"):
                    if int(s) not in self.entries:
                        raise ValueError(f"{self._path(MANIFEST)}: rows of shard {int(s)}, which archive.json does not list; "
                                         "run 'synthcxr verify' on the release")
                    keep = self._keep(rows).astype(np.int64)
                    cum = out.setdefault(int(s), np.zeros(int(self.entries[int(s)]["count"]) + 1, np.int64))
                    np.add.at(cum, rows["index"].to_numpy(np.int64) + 1, keep)
        return {s: np.cumsum(c) for s, c in out.items()}

    def _keep(self, rows) -> np.ndarray:
        keep = np.ones(len(rows), dtype=bool)
        for n in self.require:
            keep &= rows[n].to_numpy() == 1
        for n in self.exclude:
            keep &= rows[n].to_numpy() == 0
        return keep

    def units(self, world: int) -> list[Unit]:
        """Work units for ``world`` ranks, in shard order."""
        shards = sorted(self.entries)
        pieces = max(1, math.ceil(UNITS_PER_RANK * world / max(len(shards), 1)))
        step = int(self.info.get("row_group_rows") or 1) if self.format == "parquet" else 1
        out = []
        for s in shards:
            count = int(self.entries[s]["count"])
            size = max(1, math.ceil(count / pieces))
            size = math.ceil(size / step) * step if step > 1 and size > step else size
            for lo in range(0, count, size):
                hi = min(lo + size, count)
                n = hi - lo if self._kept is None else int(self._kept[s][hi] - self._kept[s][lo]) if s in self._kept else 0
                out.append(Unit(s, lo, hi, n))
        return out

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle units (and buffers) for ``epoch``; call before iterating, in every rank."""
        self.epoch = int(epoch)

    def plan(self, rank: int, world: int, worker: int = 0, num_workers: int = 1) -> tuple[list[Unit], int]:
        """``(units, quota)`` of one worker of one rank this epoch: what it reads and how many samples it yields."""
        units = self.units(world)
        order = list(range(len(units)))
        if self.shuffle:
            order = [int(i) for i in np.random.default_rng([self.seed, self.epoch]).permutation(len(units))]
        ordered = [units[i] for i in order]
        by_rank = deal(ordered, world)
        loads = [sum(ordered[i].n for i in idx) for idx in by_rank]
        mine = [ordered[i] for i in by_rank[rank]]
        total = min(loads) if (self.equal_ranks and world > 1) else loads[rank]
        by_worker = deal(mine, num_workers)
        q = quotas([sum(mine[i].n for i in idx) for idx in by_worker], total)
        own = [mine[i] for i in by_worker[worker]]
        first = {}  # pieces of one shard back to back (in dealt order), so its manifest rows are read once
        for k, u in enumerate(own):
            first.setdefault(u.shard, k)
        return sorted(own, key=lambda u: first[u.shard]), q[worker]

    def __len__(self) -> int:
        rank, world = _rank_world(self.rank, self.world_size)
        return self.plan(rank, world)[1]

    # ---------------------------------------------------------------------------------------- reading
    def _manifest_rows(self, shard: int):
        """``(ids, labels float32 [n, L], pixel hashes or None, keep mask)`` of one shard, in index order."""
        path_col = [f"{self.format}_path"] if f"{self.format}_path" in self._columns else []
        cols = ["sample_id", "shard", "index", *self.label_names, *path_col] + (["pixel_sha256"] if self.verify_pixels else [])
        groups = self._groups.get(shard, [])
        self.manifest_reads += len(groups)
        t = None
        if groups:
            with self._manifest() as fh:
                t = pq.ParquetFile(fh).read_row_groups(groups, columns=cols).to_pandas()
        if t is not None:
            t = t[t["shard"].to_numpy() == shard].sort_values("index")
        count = int(self.entries[shard]["count"])
        if t is None or not np.array_equal(t["index"].to_numpy(np.int64), np.arange(count)):
            raise ValueError(f"{self._path(MANIFEST)}: rows of shard {shard} are not indices 0..{count - 1}; run 'synthcxr verify' on the release")
        bad = path_column_problems(t, [self.format])
        if bad:
            raise ValueError(f"{self._path(MANIFEST)}: {bad[0]}. Refusing to stream it; run 'synthcxr verify' on the release")
        ids = t["sample_id"].astype(str).tolist()
        labels = t[self.label_names].to_numpy(np.float32)
        hashes = t["pixel_sha256"].tolist() if self.verify_pixels else None
        paths = t[path_col[0]].astype(str).tolist() if path_col else None
        return ids, labels, hashes, self._keep(t), paths

    def _shard_path(self, shard: int) -> str:
        if self.format == "dicom":  # one file per sample, in one folder per shard
            return self._path(dicom_folder(shard))
        return self._path(self.entries[shard]["files"][self.format])

    def _check_attrs(self, shard: int, attrs: Mapping[str, Any]) -> None:
        problems = attr_problems(attrs, self.info, self.entries[shard])
        if problems:
            raise ValueError(f"{self._shard_path(shard)}: not the shard this release's manifest describes: {'; '.join(problems)}. "
                             "Refusing to stream it; run 'synthcxr verify' on the release.")

    def _rows(self, unit: Unit, paths: Sequence[str] | None = None) -> Iterator[tuple[int, str, Any]]:
        """``(row, stored sample id, encoded image)`` of the unit's rows, read sequentially from the shard file
        (DICOM: from each row's file, whose PatientID names its sample)."""
        if self.format == "dicom":
            from .dicom_export import read_dicom_sample

            for r in range(unit.lo, unit.hi):
                with self.fs.open(self._path(paths[r]), "rb") as fh:
                    yield r, *read_dicom_sample(fh, where=self._path(paths[r]))
            return
        path = self._shard_path(unit.shard)
        with self.fs.open(path, "rb") as fh:
            if self.format == "parquet":
                pf = pq.ParquetFile(fh)
                self._check_attrs(unit.shard, read_parquet_attrs_from_schema(pf.schema_arrow, path))
                sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
                bounds = np.cumsum([0, *sizes])
                for g in range(pf.num_row_groups):
                    a, b = int(bounds[g]), int(bounds[g + 1])
                    if b <= unit.lo or a >= unit.hi:
                        continue
                    t = pf.read_row_group(g, columns=["sample_id", "image"])
                    ids, imgs = t.column("sample_id").to_pylist(), t.column("image").combine_chunks().field("bytes")
                    for r in range(max(a, unit.lo), min(b, unit.hi)):
                        yield r, ids[r - a], imgs[r - a].as_py()
            elif self.format == "h5":
                import h5py

                from .shard_h5 import h5_attrs

                with h5py.File(fh, "r") as f:
                    self._check_attrs(unit.shard, h5_attrs(f))
                    for s in range(unit.lo, unit.hi, H5_BLOCK):
                        e = min(s + H5_BLOCK, unit.hi)
                        ids, imgs = f["sample_id"][s:e], f["images"][s:e]
                        for k in range(e - s):
                            sid = ids[k].decode() if isinstance(ids[k], bytes) else str(ids[k])
                            yield s + k, sid, imgs[k]
            else:
                for r, (sid, png, meta) in enumerate(iter_tar_samples(fh, path)):
                    if r >= unit.hi:
                        break
                    if r >= unit.lo:
                        if meta.get("shard") != unit.shard or meta.get("index") != r:
                            raise ValueError(f"{path}: sample {sid} says shard {meta.get('shard')} index {meta.get('index')}, "
                                             f"but sits at shard {unit.shard} row {r}; run 'synthcxr verify' on the release")
                        yield r, sid, png

    def _samples(self, units: Sequence[Unit]) -> Iterator[tuple[str, Any, np.ndarray, str | None, str]]:
        """``(sample_id, encoded image, labels, pixel hash, where)`` of kept rows, checked against the manifest."""
        cache: tuple[int, Any] | None = None
        for u in units:
            if cache is None or cache[0] != u.shard:
                cache = (u.shard, self._manifest_rows(u.shard))
            ids, labels, hashes, keep, paths = cache[1]
            expect_rows = u.hi - u.lo
            seen = 0
            for r, sid, enc in self._rows(u, paths):
                seen += 1
                if sid != ids[r]:
                    raise ValueError(f"{self._shard_path(u.shard)}: row {r} holds sample {sid!r} but the manifest lists {ids[r]!r}: "
                                     "not the shard this release describes; run 'synthcxr verify' on the release")
                if keep[r]:
                    yield sid, enc, labels[r], None if hashes is None else hashes[r], f"{self._shard_path(u.shard)} row {r}"
            if seen != expect_rows:
                raise ValueError(f"{self._shard_path(u.shard)}: ended after {seen} of rows {u.lo}..{u.hi - 1}; the file is truncated")

    def _item(self, sid: str, enc: Any, labels: np.ndarray, digest: str | None, where: str) -> dict[str, Any]:
        img = decode_png(enc) if isinstance(enc, (bytes, bytearray)) else np.asarray(enc, dtype=np.uint8)
        if img.shape != (self.resolution, self.resolution):
            raise ValueError(f"{where}: image {img.shape}, archive.json says {self.resolution} px")
        if digest is not None and pixel_sha256(img) != digest:
            raise ValueError(f"{where}: pixels of sample {sid!r} do not hash to the manifest's pixel_sha256; "
                             "the shard was altered: run 'synthcxr verify' on the release")
        if self.decode == "uint8":
            image: Any = img
        else:
            image = image_tensor(img, self.res)
        return {"sample_id": sid, "image": image, "labels": torch.from_numpy(np.array(labels, dtype=np.float32))}

    def partition(self, rank: int, world: int, worker: int = 0, num_workers: int = 1) -> Iterator[dict[str, Any]]:
        """The items of one worker of one rank this epoch (what ``__iter__`` yields inside that worker)."""
        units, quota = self.plan(rank, world, worker, num_workers)
        source = self._samples(units)
        taken = 0

        def take() -> Iterator[tuple]:
            nonlocal taken
            for s in source:
                if taken >= quota:
                    return
                taken += 1
                yield s

        if self.shuffle <= 1:
            for s in take():
                yield self._item(*s)
            return
        rng = np.random.default_rng([self.seed, self.epoch, rank, worker, 1])
        buf: list[tuple] = []
        for s in take():
            if len(buf) < self.shuffle:
                buf.append(s)
                continue
            j = int(rng.integers(len(buf)))
            out, buf[j] = buf[j], s
            yield self._item(*out)
        for j in rng.permutation(len(buf)):
            yield self._item(*buf[int(j)])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world = _rank_world(self.rank, self.world_size)
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.partition(rank, world, worker, num_workers)

    def __repr__(self) -> str:
        return f"ReleaseStream({self.url!r}, format={self.format!r}, {self.info['counts']['n_released']} samples, {len(self.entries)} shards)"


def stream(url: str | os.PathLike, **kwargs: Any) -> ReleaseStream:
    """A :class:`ReleaseStream` over the release at ``url`` (local path or any fsspec URL); keywords as the class."""
    return ReleaseStream(url, **kwargs)
