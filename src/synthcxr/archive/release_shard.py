"""Build one release shard from the working shards: copy its released rows into every release format.

A release shard is a self-contained job (:class:`ShardJob`): which working rows it holds, in order, and
their labels. Jobs share nothing, so ``finalize_archive`` runs them in parallel processes, one release
shard each. Nothing is re-encoded when it need not be: HDF5 chunks are copied as stored (when the
compression is unchanged) and PNG bytes verbatim, so the cost is reading, hashing and writing. Each
image's pixels are hashed from what is written (the stored chunk decompressed, or the PNG decoded) for
the manifest's ``pixel_sha256``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyarrow.parquet as pq

from ..utils.hashing import pixel_sha256
from .dicom_export import DicomShardWriter
from .layout import dicom_folder, release_shard_relpath, work_shard_relpath
from .shard_h5 import DIRECT, H5ShardWriter, chunk_pixels, dataset_compression, read_chunks
from .shard_parquet import ParquetShardWriter, decode_png
from .shard_wds import WdsShardWriter

#: Rows read, copied and written at a time: bounds a job's memory (256 x 1 MiB at 1024 px).
BLOCK = 256


@dataclass
class ShardJob:
    """Release shard ``shard``: rows ``render_index`` of working shards ``render_shard``, in this order."""

    work_dir: str
    release_dir: str
    shard: int
    render_shard: np.ndarray  # int [n], non-decreasing
    render_index: np.ndarray  # int [n], increasing within a working shard
    sample_ids: list[str]
    labels: np.ndarray  # int8 [n, L]
    probs: np.ndarray  # float32 [n, L]
    seeds: np.ndarray  # int64 [n]
    label_names: list[str]
    formats: list[str]  # release formats
    work_formats: list[str]
    compression: str
    resolution: int
    attrs: dict[str, Any]
    row_group_rows: int
    dicom_uid_root: str | None = None  # set when the release exports DICOM
    archive_name: str = ""
    pairs: dict[str, np.ndarray] | None = None  # PAIR_FIELDS columns [n] when the release holds pairs

    def __len__(self) -> int:
        return len(self.sample_ids)


@dataclass
class _Block:
    """Rows ``[lo, lo + n)`` of a release shard: pixels, stored HDF5 chunks (or None), PNG bytes (or None)."""

    lo: int
    pixels: list[np.ndarray]
    chunks: list[bytes] | None
    pngs: list[bytes] | None


def _segments(job: ShardJob) -> Iterator[tuple[int, int, int]]:
    """``(working shard, first row, stop row)`` over the job's rows, grouped by working shard."""
    rs = np.asarray(job.render_shard)
    cuts = np.flatnonzero(np.diff(rs)) + 1
    starts = np.concatenate([[0], cuts]).astype(int)
    stops = np.concatenate([cuts, [len(rs)]]).astype(int)
    for a, b in zip(starts, stops):
        if b > a:
            yield int(rs[a]), int(a), int(b)


def _pngs_of(pf: pq.ParquetFile, rows: np.ndarray) -> list[bytes]:
    """PNG bytes of sorted ``rows`` of a working Parquet shard, reading only the row groups that hold them."""
    sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
    bounds = np.cumsum([0, *sizes])
    groups = sorted(set(np.searchsorted(bounds, rows, side="right") - 1))
    col = pf.read_row_groups(groups, columns=["image"]).column("image").combine_chunks().field("bytes")
    base = np.cumsum([0, *[sizes[g] for g in groups]])
    where = {g: base[i] - bounds[g] for i, g in enumerate(groups)}  # offset of group g inside `col`
    pos = [int(r + where[int(np.searchsorted(bounds, r, side="right") - 1)]) for r in rows]
    return [col[p].as_py() for p in pos]


def _blocks(job: ShardJob) -> Iterator[_Block]:
    """The job's rows in order, ``BLOCK`` at a time, read from the working shards."""
    work = Path(job.work_dir)
    want_png = "parquet" in job.formats or "webdataset" in job.formats
    want_h5 = "h5" in job.formats
    for shard, a, b in _segments(job):
        rows_all = np.asarray(job.render_index[a:b], dtype=np.int64)
        with contextlib.ExitStack() as stack:
            ds = None
            if "h5" in job.work_formats:
                ds = stack.enter_context(h5py.File(work / work_shard_relpath(shard, "h5"), "r"))["images"]
            pf = pq.ParquetFile(work / work_shard_relpath(shard, "parquet")) if "parquet" in job.work_formats else None
            raw = ds is not None and want_h5 and job.compression in DIRECT and dataset_compression(ds) == job.compression
            for s in range(0, len(rows_all), BLOCK):
                rows = rows_all[s : s + BLOCK]
                chunks = pngs = None
                if raw:
                    chunks = read_chunks(ds, rows)
                    pixels = [chunk_pixels(c, job.compression, (job.resolution, job.resolution)) for c in chunks]
                elif ds is not None:
                    pixels = list(ds[rows])  # increasing rows: one h5py fancy read
                if want_png or ds is None:
                    if pf is None:
                        raise FileNotFoundError(f"{work / work_shard_relpath(shard, 'parquet')}: needed for PNG bytes")
                    pngs = _pngs_of(pf, rows)
                if ds is None:
                    pixels = [decode_png(p) for p in pngs]
                yield _Block(a + s, pixels, chunks, pngs if want_png else None)


def write_release_shard(job: ShardJob) -> list[str]:
    """Write every release format of ``job`` (each renamed into place only when complete); returns pixel hashes."""
    root = Path(job.release_dir)
    n = len(job)
    attrs = {**job.attrs, "shard": int(job.shard)}
    hashes: list[str] = []
    with contextlib.ExitStack() as stack:
        h5w = pqw = wdw = dcw = None
        if job.dicom_uid_root is not None:
            dcw = stack.enter_context(DicomShardWriter(root / dicom_folder(job.shard), job.label_names, job.archive_name,
                                                       job.dicom_uid_root))
        if "h5" in job.formats:
            h5w = stack.enter_context(H5ShardWriter(root / release_shard_relpath(job.shard, "h5"), n, job.resolution,
                                                    job.label_names, job.compression, attrs, pairs=job.pairs is not None))
        if "parquet" in job.formats:
            pqw = stack.enter_context(ParquetShardWriter(root / release_shard_relpath(job.shard, "parquet"), n,
                                                         job.label_names, attrs, job.row_group_rows, pairs=job.pairs is not None))
        if "webdataset" in job.formats:
            wdw = stack.enter_context(WdsShardWriter(root / release_shard_relpath(job.shard, "webdataset"), n,
                                                     job.label_names, job.shard))
        for blk in _blocks(job):
            lo, hi = blk.lo, blk.lo + len(blk.pixels)
            ids, lab, prob, seeds = job.sample_ids[lo:hi], job.labels[lo:hi], job.probs[lo:hi], job.seeds[lo:hi]
            pr = {c: v[lo:hi] for c, v in job.pairs.items()} if job.pairs is not None else None
            for px in blk.pixels:
                if px.shape != (job.resolution, job.resolution):
                    raise ValueError(f"{job.work_dir}: a working image has shape {px.shape}, expected {job.resolution} px")
            if h5w is not None:
                chunks = blk.chunks if h5w.direct and blk.chunks is not None else None
                h5w.write(lo, None if chunks is not None else np.stack(blk.pixels), lab.astype(np.uint8), prob, ids, chunks=chunks, pairs=pr)
            if pqw is not None:
                pqw.write(lo, blk.pngs, lab, prob, ids, seeds, pairs=pr)
            if wdw is not None:
                wdw.write(lo, blk.pngs, lab, prob, ids, seeds, pairs=pr)
            if dcw is not None:
                dcw.write(blk.pixels, lab, ids)
            hashes += [pixel_sha256(px) for px in blk.pixels]
    if len(hashes) != n:
        raise RuntimeError(f"{root}: release shard {job.shard} got {len(hashes)} of its {n} rows")
    return hashes
