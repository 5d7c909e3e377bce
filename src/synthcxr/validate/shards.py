"""Read rendered working shards directly (HDF5 preferred, Parquet otherwise), batch by batch.

The memorisation audit runs before the release exists (its flags decide what is released), so it reads
the working area's shards, every rendered sample; everything after finalising reads the release
through ``synthcxr.archive``. Reading in batches keeps memory bounded by one batch at any size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq


def _decode_ids(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def pick_format(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """From a list holding possibly both formats of each shard, keep one file per shard (HDF5 preferred)."""
    by_stem: dict[str, Path] = {}
    for p in map(Path, paths):
        if p.suffix not in (".h5", ".parquet"):
            raise ValueError(f"{p}: not an archive shard (expected shard-XXXXX.h5 or .parquet)")
        if p.stem not in by_stem or p.suffix == ".h5":
            by_stem[p.stem] = p
    return [by_stem[k] for k in sorted(by_stem)]


def iter_shard(path: str | os.PathLike, batch_size: int = 256) -> Iterator[tuple[list[str], np.ndarray]]:
    """``(sample_ids, uint8 [b, R, R])`` batches of one shard, in stored order."""
    path = Path(path)
    if path.suffix == ".h5":
        with h5py.File(path, "r") as f:
            for key in ("images", "sample_id"):
                if key not in f:
                    raise KeyError(f"{path}: dataset /{key} missing; the shard is not in the archive format")
            n = f["images"].shape[0]
            for s in range(0, n, batch_size):
                yield _decode_ids(f["sample_id"][s : s + batch_size]), np.asarray(f["images"][s : s + batch_size], np.uint8)
    elif path.suffix == ".parquet":
        from ..archive.shard_parquet import decode_png

        pf = pq.ParquetFile(path)
        missing = [c for c in ("sample_id", "image") if c not in pf.schema_arrow.names]
        if missing:
            raise KeyError(f"{path}: column(s) {missing} missing; the shard is not in the archive format")
        for rb in pf.iter_batches(batch_size=batch_size, columns=["sample_id", "image"]):
            ids = _decode_ids(rb.column("sample_id").to_pylist())
            imgs = [decode_png(d["bytes"]) for d in rb.column("image").to_pylist()]
            yield ids, (np.stack(imgs) if imgs else np.zeros((0, 0, 0), np.uint8))
    else:
        raise ValueError(f"{path}: not an archive shard (expected .h5 or .parquet)")


def iter_shards(
    paths: Sequence[str | os.PathLike], batch_size: int = 256, keep: set[str] | None = None
) -> Iterator[tuple[list[str], np.ndarray]]:
    """Batches over several shards; with ``keep`` only those sample ids are yielded."""
    for p in pick_format(paths):
        for ids, imgs in iter_shard(p, batch_size):
            if keep is not None:
                mask = np.array([i in keep for i in ids], dtype=bool)
                if not mask.any():
                    continue
                ids, imgs = [i for i, m in zip(ids, mask) if m], imgs[mask]
            yield ids, imgs


def read_samples(paths: Sequence[str | os.PathLike], sample_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """The images of the given sample ids (for figures); raises naming ids that no shard holds."""
    want = set(sample_ids)
    out: dict[str, np.ndarray] = {}
    for ids, imgs in iter_shards(paths, keep=want):
        out.update(zip(ids, imgs))
    missing = want - set(out)
    if missing:
        raise KeyError(f"sample id(s) {sorted(missing)[:5]} not found in shards {[str(p) for p in paths][:3]}...")
    return out
