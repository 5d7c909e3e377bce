"""Render one latents shard into working shard files (HDF5 and/or Parquet): the ``sample`` rule's job.

The main thread runs the generator; each rendered micro-batch goes to a pool of ``archive.workers``
encoder threads (PNG for Parquet, deflated chunks for HDF5; :mod:`.encode`), and one writer thread
stores the encoded batches in order. Storage work overlaps rendering and scales with the job's cores,
so a GPU rendering 1024 px images is not left waiting on one core's PNG encoder. At most two batches
wait for the writer, which bounds memory whatever the shard size.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..config import build
from ..lco.latents import read_latents
from ..utils.hashing import sha256_file
from ..utils.runtime import fixed_threads, progress, resolve_device
from .contract import ROLE_WORK
from .encode import BatchEncoder, EncodedBatch, PendingBatch
from .layout import FORMAT_VERSION, PNG_COMPRESS_LEVEL, WORK_ROW_GROUP_MB, canonical_formats, work_formats
from .render import generator_resolution, render_batches
from .shard_h5 import H5ShardWriter
from .shard_parquet import ParquetShardWriter

log = logging.getLogger("synthcxr")


@dataclass
class ArchiveConfig:
    """The ``archive`` config section (plus global labels/device) as the package sees it; defaults live in
    the schema (:func:`synthcxr.config.build`).

    ``formats`` are the release's formats; :attr:`work_formats` the working shards the sample rule writes.
    """

    labels: list[str]
    device: str
    name: str
    dicom_uid_root: str
    formats: list[str]
    compression: str
    batch_size: int
    threads: int
    png_level: int
    workers: int
    shard_mb: float
    row_group_mb: float
    license: str
    min_delivery: float

    #: keys of the section that belong to another class (``archive.pairs``: :class:`~synthcxr.lco.pair_plan.PairsConfig`)
    NESTED = ("pairs",)

    def __post_init__(self) -> None:
        self.formats = canonical_formats(self.formats)

    @property
    def work_formats(self) -> list[str]:
        """Formats of the working shards (HDF5 and/or Parquet) that the release formats are built from."""
        return work_formats(self.formats)

    @classmethod
    def from_section(cls, sec: Mapping[str, Any]) -> "ArchiveConfig":
        """Build from ``synthcxr.config.section(config, "archive")`` (or part of it: the schema fills the rest)."""
        return build(cls, "archive", sec)


def shard_attrs(shard: int, generator_sha256: str, batch_size: int, device: str, resolution: int, threads: int | None = None,
                png_level: int = PNG_COMPRESS_LEVEL) -> dict[str, Any]:
    """Attributes every working shard file carries (HDF5 root attrs, Parquet schema metadata)."""
    attrs = {
        "format_version": FORMAT_VERSION,
        "role": ROLE_WORK,
        "render_threads": None if threads is None else int(threads),
        "shard": int(shard),
        "generator_sha256": generator_sha256,
        "batch_size": int(batch_size),
        "render_device": device,
        "resolution": int(resolution),
        "png_compress_level": int(png_level),
        "package_version": __version__,
    }
    return {k: v for k, v in attrs.items() if v is not None}  # HDF5 attributes cannot hold None


class _Writers:
    """Receives encoded micro-batches in order and writes them to every working format."""

    def __init__(self, lat, h5w: H5ShardWriter | None, pqw: ParquetShardWriter | None):
        self.lat, self.h5w, self.pqw = lat, h5w, pqw
        self.seeds = lat.table["seed"].to_numpy(dtype=np.int64)
        self.ids = lat.sample_ids
        self.wait_s = 0.0  # waiting for the encoders
        self.write_s = 0.0  # storing encoded bytes

    def __call__(self, pending: PendingBatch) -> None:
        t0 = time.perf_counter()
        eb: EncodedBatch = pending.result()
        t1 = time.perf_counter()
        start, stop = eb.start, eb.start + len(eb.images)
        lab, prob, ids = self.lat.targets[start:stop], self.lat.probs[start:stop], self.ids[start:stop]
        if self.h5w is not None:
            self.h5w.write(start, eb.images, lab, prob, ids, chunks=eb.chunks)
        if self.pqw is not None:
            self.pqw.write(start, eb.pngs, lab, prob, ids, self.seeds[start:stop])
        self.wait_s += t1 - t0
        self.write_s += time.perf_counter() - t1


def _run_pipelined(batches, encoder: BatchEncoder, sink, on_batch) -> None:
    """Encode ``batches`` on ``encoder``'s threads and feed them, in order, to ``sink`` on a writer thread.

    At most two submitted batches wait for the writer, so the renderer runs ahead by two batches at most.
    """
    q: queue.Queue = queue.Queue(maxsize=2)
    errors: list[BaseException] = []

    def worker() -> None:
        while True:
            item = q.get()
            if item is None:
                return
            if errors:
                continue  # keep draining so the producer never blocks on a dead consumer
            try:
                sink(item)
            except BaseException as exc:  # noqa: BLE001 - re-raised on the main thread
                errors.append(exc)

    t = threading.Thread(target=worker, name="synthcxr-shard-writer", daemon=True)
    t.start()
    try:
        for start, imgs in batches:
            if errors:
                break
            q.put(encoder.submit(start, imgs))
            on_batch(len(imgs))
    finally:
        q.put(None)
        t.join()
    if errors:
        raise errors[0]


def sample_shard(
    latents_path: str | os.PathLike,
    G: nn.Module,
    outputs: Mapping[str, str | os.PathLike],
    cfg: ArchiveConfig,
    generator_sha256: str,
) -> dict[str, Any]:
    """Render ``latents_path`` with generator ``G`` into ``outputs`` (format -> path). Returns a summary.

    Every output file appears only once complete (atomic rename); on any failure none is published.
    """
    want = cfg.work_formats
    if sorted(outputs) != sorted(want):
        raise ValueError(f"outputs {sorted(outputs)} must be the working formats {want} of archive.formats {cfg.formats}")
    lat = read_latents(latents_path, cfg.labels)
    res = generator_resolution(G)
    if lat.z.shape[0] and hasattr(G, "offset_res"):
        try:  # the latent length, or it plus one block's feature offset (lco.feature_res)
            G.offset_res(lat.z.shape[1])
        except ValueError as exc:
            raise ValueError(f"{latents_path}: {exc}; rerun lco with this generator") from None
    elif lat.z.shape[0] and lat.z.shape[1] != getattr(G, "latent_dim", lat.z.shape[1]):
        raise ValueError(f"{latents_path}: latents have length {lat.z.shape[1]} but the generator expects {G.latent_dim}")
    dev = next((p.device.type for p in G.parameters()), "cpu")
    attrs = shard_attrs(lat.shard, generator_sha256, cfg.batch_size, dev, res, torch.get_num_threads(), cfg.png_level)
    n = len(lat)
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        h5w = pqw = None
        if "h5" in outputs:
            h5w = stack.enter_context(H5ShardWriter(outputs["h5"], n, res, cfg.labels, cfg.compression, attrs))
        if "parquet" in outputs:
            pqw = stack.enter_context(ParquetShardWriter(outputs["parquet"], n, cfg.labels, attrs,
                                                         row_group_bytes=WORK_ROW_GROUP_MB << 20))
        sink = _Writers(lat, h5w, pqw)
        chunk = cfg.compression if h5w is not None and h5w.direct else None
        with BatchEncoder(cfg.workers, png=cfg.png_level if pqw is not None else None, chunk=chunk) as enc, \
                progress(total=n, desc=f"shard {lat.shard:05d}", unit="img") as bar:
            _run_pipelined(render_batches(G, lat.z, cfg.batch_size), enc, sink, bar.update)
    wall = time.perf_counter() - t0
    log.info(
        "shard %05d: %d images at %d px -> %s in %.2fs (%.1f img/s; %d encoder threads; writer waited %.2fs for them, "
        "wrote for %.2fs)",
        lat.shard, n, res, ", ".join(str(outputs[f]) for f in want), wall, n / max(wall, 1e-9), cfg.workers,
        sink.wait_s, sink.write_s,
    )
    return {"shard": lat.shard, "count": n, "seconds": wall, "writer_wait_seconds": sink.wait_s,
            "writer_seconds": sink.write_s, "resolution": res, "workers": cfg.workers}


def load_generator_file(path: str | os.PathLike, device: str = "auto") -> tuple[nn.Module, str]:
    """``(G, sha256)`` for a saved EMA generator, via the pggan stage's loader."""
    from ..pggan import load_generator

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} missing: train the generator first (snakemake train_pggan) or pass --generator")
    return load_generator(p, resolve_device(device)), sha256_file(p)


def sample_shard_files(
    latents_path: str | os.PathLike, generator_path: str | os.PathLike, outputs: Mapping[str, str | os.PathLike], cfg: ArchiveConfig
) -> dict[str, Any]:
    """Snakemake entry point: fix the thread count, load the generator file, then :func:`sample_shard`."""
    fixed_threads(cfg.threads)
    G, sha = load_generator_file(generator_path, cfg.device)
    return sample_shard(latents_path, G, outputs, cfg, sha)
