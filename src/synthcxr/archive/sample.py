"""Render one latents shard into archive shard files (HDF5 and/or Parquet): the ``sample`` rule's job.

The main thread runs the generator while one writer thread PNG-encodes, compresses and writes the
previous micro-batch (zlib and HDF5 filters release the GIL), so storage work overlaps rendering
instead of adding to it. A queue of two micro-batches bounds memory whatever the shard size.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..lco.latents import read_latents
from ..utils.hashing import sha256_file
from ..utils.runtime import fixed_threads, progress, resolve_device
from .contract import ROLE_WORK
from .layout import FORMAT_VERSION, FORMATS, PNG_COMPRESS_LEVEL
from .render import generator_resolution, render_batches
from .shard_h5 import H5ShardWriter
from .shard_parquet import ParquetShardWriter, encode_png

log = logging.getLogger("synthcxr")


@dataclass
class ArchiveConfig:
    """The ``archive`` config section (plus global labels/device) as the package sees it."""

    labels: list[str]
    formats: list[str] = field(default_factory=lambda: ["h5", "parquet"])
    compression: str = "gzip"
    batch_size: int = 64
    device: str = "auto"
    name: str = "archive"
    shard_mb: float = 256.0
    row_group_mb: float = 16.0
    threads: int = 2

    def __post_init__(self) -> None:
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ValueError(f"archive.formats: {self.formats} must be a non-empty subset of {sorted(FORMATS)}")
        self.formats = [f for f in FORMATS if f in self.formats]  # one canonical order: h5, parquet
        if self.batch_size < 1:
            raise ValueError(f"archive.batch_size must be >= 1, got {self.batch_size}")
        if self.shard_mb <= 0 or self.row_group_mb <= 0:
            raise ValueError(f"archive.shard_mb and archive.row_group_mb must be > 0, got {self.shard_mb}, {self.row_group_mb}")
        if self.threads < 1:
            raise ValueError(f"archive.threads must be >= 1, got {self.threads}")

    @classmethod
    def from_section(cls, sec: Mapping[str, Any]) -> "ArchiveConfig":
        """Build from ``synthcxr.config.section(config, "archive")``."""
        return cls(
            labels=list(sec["labels"]),
            formats=list(sec.get("formats", ["h5", "parquet"])),
            compression=str(sec.get("compression", "gzip")),
            batch_size=int(sec.get("batch_size", 64)),
            device=str(sec.get("device", "auto")),
            name=str(sec.get("name", "archive")),
            shard_mb=float(sec.get("shard_mb", 256.0)),
            row_group_mb=float(sec.get("row_group_mb", 16.0)),
            threads=int(sec.get("threads", 2)),
        )


def shard_attrs(shard: int, generator_sha256: str, batch_size: int, device: str, resolution: int, threads: int | None = None) -> dict[str, Any]:
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
        "png_compress_level": PNG_COMPRESS_LEVEL,
        "package_version": __version__,
    }
    return {k: v for k, v in attrs.items() if v is not None}  # HDF5 attributes cannot hold None


class _Writers:
    """Receives rendered micro-batches and writes them to every configured format."""

    def __init__(self, lat, h5w: H5ShardWriter | None, pqw: ParquetShardWriter | None):
        self.lat, self.h5w, self.pqw = lat, h5w, pqw
        self.seeds = lat.table["seed"].to_numpy(dtype=np.int64)
        self.ids = lat.sample_ids
        self.busy_s = 0.0

    def __call__(self, start: int, imgs: np.ndarray) -> None:
        t0 = time.perf_counter()
        stop = start + len(imgs)
        lab, prob, ids = self.lat.targets[start:stop], self.lat.probs[start:stop], self.ids[start:stop]
        if self.h5w is not None:
            self.h5w.write(start, imgs, lab, prob, ids)
        if self.pqw is not None:
            self.pqw.write(start, [encode_png(im) for im in imgs], lab, prob, ids, self.seeds[start:stop])
        self.busy_s += time.perf_counter() - t0


def _run_pipelined(batches, sink, on_batch) -> None:
    """Feed ``batches`` to ``sink`` on a writer thread, at most two micro-batches in flight."""
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
                sink(*item)
            except BaseException as exc:  # noqa: BLE001 - re-raised on the main thread
                errors.append(exc)

    t = threading.Thread(target=worker, name="synthcxr-shard-writer", daemon=True)
    t.start()
    try:
        for item in batches:
            if errors:
                break
            q.put(item)
            on_batch(len(item[1]))
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
    missing = [f for f in cfg.formats if f not in outputs]
    if missing or set(outputs) - set(cfg.formats):
        raise ValueError(f"outputs {sorted(outputs)} must match archive.formats {cfg.formats}")
    lat = read_latents(latents_path, cfg.labels)
    res = generator_resolution(G)
    if lat.z.shape[0] and lat.z.shape[1] != getattr(G, "latent_dim", lat.z.shape[1]):
        raise ValueError(f"{latents_path}: latents have length {lat.z.shape[1]} but the generator expects {G.latent_dim}")
    dev = next((p.device.type for p in G.parameters()), "cpu")
    attrs = shard_attrs(lat.shard, generator_sha256, cfg.batch_size, dev, res, torch.get_num_threads())
    n = len(lat)
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        h5w = pqw = None
        if "h5" in outputs:
            h5w = stack.enter_context(H5ShardWriter(outputs["h5"], n, res, cfg.labels, cfg.compression, attrs))
        if "parquet" in outputs:
            pqw = stack.enter_context(ParquetShardWriter(outputs["parquet"], n, cfg.labels, attrs))
        sink = _Writers(lat, h5w, pqw)
        with progress(total=n, desc=f"shard {lat.shard:05d}", unit="img") as bar:
            _run_pipelined(render_batches(G, lat.z, cfg.batch_size), sink, bar.update)
    wall = time.perf_counter() - t0
    log.info(
        "shard %05d: %d images at %d px -> %s in %.2fs (%.1f img/s, writer busy %.2fs)",
        lat.shard, n, res, ", ".join(str(outputs[f]) for f in cfg.formats), wall, n / max(wall, 1e-9), sink.busy_s,
    )
    return {"shard": lat.shard, "count": n, "seconds": wall, "writer_seconds": sink.busy_s, "resolution": res}


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
