"""Build the release from the working area: only released samples, copied byte for byte into
byte-sized release shards, with their manifest, latents and archive.json.

A sample is released when its label optimisation succeeded (``success``), the memorisation audit did
not flag it (when ``validate.memorization.gate`` is on) and the re-identification audit did not match it
to a training patient (when ``validate.reid.gate`` is on). Everything else stays in the working
area (``work/``), which is never handed out. Release shards hold the working shards' HDF5 pixels and
Parquet PNG bytes unchanged, in render order, so ``regenerate`` still reproduces every image byte for
byte. The release is unsealed until the ``release`` rule has checked it and written README.md and
SHA256SUMS (:mod:`.seal`); finalising therefore first removes any seal of an earlier release.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import itertools
import logging
import math
import os
import platform
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .. import __version__
from ..labels import combo_key, findings_of
from ..lco.latents import OPTIONAL, ShardLatents, read_latents
from ..utils.atomic import atomic_path, is_temporary, write_json
from ..utils.hashing import sha256_file
from ..utils.runtime import progress
from .contract import ROLE_RELEASE, ROLE_WORK, read_shard_attrs, read_shard_ids
from .layout import (
    ARCHIVE_JSON,
    CARD,
    FORMAT_VERSION,
    FORMATS,
    MANIFEST,
    PNG_COMPRESS_LEVEL,
    RELEASE_LATENTS,
    SUMS,
    release_shard_relpath,
    work_shard_relpath,
)
from .sample import ArchiveConfig
from .shard_h5 import H5ShardWriter
from .shard_parquet import ParquetShardWriter, decode_png

log = logging.getLogger("synthcxr")

MB = 1 << 20


def pixel_sha256(image: np.ndarray) -> str:
    """SHA-256 of an image's raw uint8 pixels (row-major): the manifest's proof of every pixel."""
    return hashlib.sha256(np.ascontiguousarray(image, dtype=np.uint8).tobytes()).hexdigest()


def read_audit(path: str | os.PathLike, column: str = "flagged", what: str = "memorisation audit",
               key: str = "validate.memorization.gate") -> pd.DataFrame:
    """``sample_id -> column`` (bool) from one of the validate stage's per-sample audits."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} missing: run the {what} (validate stage) or set {key}: false")
    df = pd.read_parquet(p)
    missing = [c for c in ("sample_id", column) if c not in df.columns]
    if missing:
        raise ValueError(f"{p}: missing column(s) {missing}; expected at least sample_id, {column}")
    return df[["sample_id", column]].astype({"sample_id": str, column: bool}).drop_duplicates("sample_id")


def read_memorization(path: str | os.PathLike) -> pd.DataFrame:
    """``sample_id -> flagged`` from the memorisation audit."""
    return read_audit(path)


def check_work_shard(work_dir: Path, lat: ShardLatents, formats: Sequence[str], generator_sha256: str) -> dict[str, Any]:
    """Check that the rendered working shards of ``lat`` match it; returns their attributes."""
    attrs: dict[str, Any] = {}
    for fmt in formats:
        sp = work_dir / work_shard_relpath(lat.shard, fmt)
        if not sp.exists():
            raise FileNotFoundError(f"{sp} missing: run the sample rule for this shard (snakemake {sp})")
        a = read_shard_attrs(sp, fmt)
        if int(a.get("count", -1)) != len(lat):
            raise ValueError(f"{sp}: holds {a.get('count')} samples but {lat.path} has {len(lat)}; delete the shard and rerun sample")
        if read_shard_ids(sp, fmt) != lat.sample_ids:
            raise ValueError(f"{sp}: sample ids differ from {lat.path} (latents changed after rendering); delete the shard and rerun sample")
        if a.get("generator_sha256") != generator_sha256:
            raise ValueError(f"{sp}: rendered by a different generator than the one given; delete the shard and rerun sample")
        if a.get("role", ROLE_WORK) != ROLE_WORK:
            raise ValueError(f"{sp}: attribute role={a.get('role')!r}; the working area must hold rendered (work) shards")
        attrs = a
    return attrs


def rendered_frame(lat: ShardLatents, label_names: Sequence[str]) -> pd.DataFrame:
    """One row per rendered sample of a working shard: ids, where it was rendered, labels, probabilities."""
    t = lat.table
    cols: dict[str, Any] = {
        "sample_id": t["sample_id"].astype(str).to_numpy(),
        "render_shard": np.full(len(t), lat.shard, dtype=np.int32),
        "render_index": t["index"].to_numpy(dtype=np.int32),
    }
    for j, n in enumerate(label_names):
        cols[n] = lat.targets[:, j].astype(np.int8)
    for j, n in enumerate(label_names):
        cols[f"prob_{n}"] = lat.probs[:, j].astype(np.float32)
    cols["combination"] = [combo_key(v, label_names) for v in lat.targets]
    cols["seed"] = t["seed"].to_numpy(dtype=np.int64)
    for c in OPTIONAL:
        if c in t.columns:
            cols[c] = t[c].to_numpy()
    cols["success"] = t["success"].to_numpy(dtype=bool)
    return pd.DataFrame(cols)


def _audit_mask(full: pd.DataFrame, failed: np.ndarray, path: str | os.PathLike, column: str, what: str, key: str) -> np.ndarray:
    """Successful samples that the audit in ``path`` marks in ``column``; every successful sample must be audited."""
    mark = read_audit(path, column, what, key).set_index("sample_id")[column]
    audited = full["sample_id"].isin(mark.index).to_numpy()
    unaudited = ~audited & ~failed
    if unaudited.any():
        raise ValueError(
            f"{path}: {int(unaudited.sum())} successful sample(s) were not audited "
            f"(e.g. {full.loc[unaudited, 'sample_id'].iloc[0]!r}); rerun the {what}"
        )
    return audited & full["sample_id"].map(mark).fillna(False).to_numpy(dtype=bool) & ~failed


def release_mask(
    full: pd.DataFrame, memorization_path: str | os.PathLike | None, reid_path: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(released, failed, flagged, matched)`` boolean masks over ``full``'s rows.

    ``flagged``: withheld by the memorisation audit; ``matched``: withheld by the re-identification audit
    (a sample can be both). Failed samples are never counted as flagged or matched.
    """
    failed = ~full["success"].to_numpy(dtype=bool)
    flagged = np.zeros(len(full), dtype=bool)
    matched = np.zeros(len(full), dtype=bool)
    if memorization_path is not None:
        flagged = _audit_mask(full, failed, memorization_path, "flagged", "memorisation audit", "validate.memorization.gate")
    if reid_path is not None:
        matched = _audit_mask(full, failed, reid_path, "matched", "re-identification audit", "validate.reid.gate")
    return ~failed & ~flagged & ~matched, failed, flagged, matched


def shard_bounds(n: int, bytes_per_sample: float, shard_mb: float) -> list[tuple[int, int]]:
    """``[start, stop)`` of each release shard: equal sample counts of about ``shard_mb`` MiB each."""
    if n == 0:
        return []
    per = max(1, int(shard_mb * MB // max(bytes_per_sample, 1.0)))
    n_shards = math.ceil(n / per)
    per = math.ceil(n / n_shards)  # spread the remainder so the last shard is not a sliver
    return [(s, min(s + per, n)) for s in range(0, n, per)]


def _bytes_per_sample(work_dir: Path, lats: Sequence[ShardLatents], formats: Sequence[str]) -> float:
    """Mean bytes one rendered sample takes in the larger of its working shard formats."""
    n = sum(len(lat) for lat in lats)
    sizes = [sum((work_dir / work_shard_relpath(lat.shard, f)).stat().st_size for lat in lats) for f in formats]
    return max(sizes) / max(n, 1)


def _iter_work_rows(work_dir: Path, shard: int, formats: Sequence[str], block: int = 256) -> Iterator[tuple[np.ndarray | None, bytes | None]]:
    """``(pixels or None, PNG bytes or None)`` of every row of a working shard, in index order."""
    pixels: Iterator[np.ndarray | None]
    pngs: Iterator[bytes | None]
    with contextlib.ExitStack() as stack:
        if "h5" in formats:
            f = stack.enter_context(h5py.File(work_dir / work_shard_relpath(shard, "h5"), "r"))
            ds = f["images"]

            def _pixels() -> Iterator[np.ndarray]:
                for s in range(0, ds.shape[0], block):
                    yield from ds[s : s + block]

            pixels = _pixels()
        if "parquet" in formats:
            pf = pq.ParquetFile(work_dir / work_shard_relpath(shard, "parquet"))

            def _pngs() -> Iterator[bytes]:
                for rb in pf.iter_batches(batch_size=block, columns=["image"]):
                    yield from rb.column("image").field("bytes").to_pylist()

            pngs = _pngs()
        if "h5" not in formats:
            pixels = itertools.repeat(None)
        if "parquet" not in formats:
            pngs = itertools.repeat(None)
        n = int(read_shard_attrs(work_dir / work_shard_relpath(shard, formats[0]), formats[0])["count"])
        for _, px, png in zip(range(n), pixels, pngs):
            yield px, png


class _ReleaseWriter:
    """Writes released rows, in order, into the release shards given by ``bounds``."""

    def __init__(self, release_dir: Path, bounds: list[tuple[int, int]], cfg: ArchiveConfig, res: int, attrs: dict[str, Any], row_group_rows: int):
        self.root, self.bounds, self.cfg, self.res, self.attrs = release_dir, bounds, cfg, res, attrs
        self.row_group_rows = row_group_rows
        self.k = -1
        self._stack: contextlib.ExitStack | None = None
        self._h5: H5ShardWriter | None = None
        self._pq: ParquetShardWriter | None = None
        self._buf: list[tuple] = []
        self._start = 0  # row of the current shard where the buffer starts

    def _open_next(self) -> None:
        self.close()
        self.k += 1
        lo, hi = self.bounds[self.k]
        n, stack = hi - lo, contextlib.ExitStack()
        attrs = {**self.attrs, "shard": self.k}
        if "h5" in self.cfg.formats:
            self._h5 = stack.enter_context(
                H5ShardWriter(self.root / release_shard_relpath(self.k, "h5"), n, self.res, self.cfg.labels, self.cfg.compression, attrs)
            )
        if "parquet" in self.cfg.formats:
            self._pq = stack.enter_context(
                ParquetShardWriter(self.root / release_shard_relpath(self.k, "parquet"), n, self.cfg.labels, attrs, self.row_group_rows)
            )
        self._stack, self._start = stack, 0

    def _flush(self) -> None:
        if not self._buf:
            return
        imgs, pngs, labels, probs, ids, seeds = zip(*self._buf)
        labels, probs = np.stack(labels), np.stack(probs)
        if self._h5 is not None:
            self._h5.write(self._start, np.stack(imgs), labels.astype(np.uint8), probs, ids)
        if self._pq is not None:
            self._pq.write(self._start, list(pngs), labels, probs, ids, seeds)
        self._start += len(self._buf)
        self._buf = []

    def add(self, row: int, img: np.ndarray, png: bytes | None, labels: np.ndarray, probs: np.ndarray, sample_id: str, seed: int) -> tuple[int, int]:
        """Append released row ``row`` (0-based over the release); returns its ``(shard, index)``."""
        if self.k < 0 or row >= self.bounds[self.k][1]:
            self._flush()
            self._open_next()
        self._buf.append((img, png, labels, probs, sample_id, seed))
        where = (self.k, row - self.bounds[self.k][0])
        if len(self._buf) >= 64:
            self._flush()
        return where

    def close(self) -> None:
        self._flush()
        if self._stack is not None:
            self._stack.close()  # renames the finished shard files into place
        self._stack = self._h5 = self._pq = None

    def abort(self, exc: BaseException) -> None:
        if self._stack is not None:
            self._stack.__exit__(type(exc), exc, exc.__traceback__)
        self._stack = self._h5 = self._pq = None


def _clear_release(release_dir: Path) -> None:
    """Remove an earlier release: its seal first, then its data, so a failed run leaves no complete-looking release."""
    for name in (SUMS, CARD, MANIFEST, ARCHIVE_JSON, RELEASE_LATENTS):
        with contextlib.suppress(FileNotFoundError):
            (release_dir / name).unlink()
    for p in release_dir.rglob("*") if release_dir.is_dir() else []:
        in_shard_folder = p.parent.parent == release_dir and p.parent.name in FORMATS
        if p.is_file() and (is_temporary(p.name) or in_shard_folder):
            p.unlink()


class _LatentsWriter:
    """Streams ``latents.parquet`` (sample_id, where it was rendered, its latent) shard by shard."""

    def __init__(self, path: Path, latent_dim: int):
        self.d = int(latent_dim)
        self.schema = pa.schema([
            ("sample_id", pa.string()), ("render_shard", pa.int32()), ("render_index", pa.int32()),
            ("z", pa.list_(pa.float32(), self.d)),
        ])
        self._stack = contextlib.ExitStack()
        self._writer = pq.ParquetWriter(self._stack.enter_context(atomic_path(path)), self.schema)

    def write(self, ids: Sequence[str], shard: int, index: np.ndarray, z: np.ndarray) -> None:
        z = np.ascontiguousarray(z, np.float32).reshape(len(ids), self.d)
        self._writer.write_table(pa.Table.from_arrays([
            pa.array(list(ids), pa.string()), pa.array(np.full(len(ids), shard, np.int32)), pa.array(np.asarray(index, np.int32)),
            pa.FixedSizeListArray.from_arrays(pa.array(z.reshape(-1), pa.float32()), self.d),
        ], schema=self.schema))

    def close(self, exc: BaseException | None = None) -> None:
        self._writer.close()
        if exc is None:
            self._stack.close()  # renames into place
        else:
            self._stack.__exit__(type(exc), exc, exc.__traceback__)


def finalize_archive(
    work_dir: str | os.PathLike,
    release_dir: str | os.PathLike,
    cfg: ArchiveConfig,
    latents_paths: Sequence[str | os.PathLike],
    generator_path: str | os.PathLike,
    classifier_path: str | os.PathLike | None = None,
    memorization_path: str | os.PathLike | None = None,
    reid_path: str | os.PathLike | None = None,
    full_config: Mapping[str, Any] | None = None,
    shard_size: int | None = None,
) -> dict[str, Any]:
    """Write the release folder (shards, ``manifest.parquet``, ``latents.parquet``, ``archive.json``); return archive.json."""
    work, release = Path(work_dir), Path(release_dir)
    names = list(cfg.labels)
    gen_sha = sha256_file(generator_path)
    lats = [read_latents(lp, names) for lp in sorted(latents_paths, key=lambda p: Path(p).name)]
    if not lats:
        raise ValueError("finalize_archive: no latents shards given")
    res_seen, bs_seen, threads_seen, devices = set(), set(), set(), set()
    for lat in lats:
        a = check_work_shard(work, lat, cfg.formats, gen_sha)
        res_seen.add(int(a["resolution"]))
        bs_seen.add(int(a["batch_size"]))
        threads_seen.add(a.get("render_threads"))
        devices.add(str(a.get("render_device", "cpu")))
    if len(res_seen) > 1 or len(bs_seen) > 1 or len(threads_seen) > 1:
        raise ValueError(
            f"{work}: working shards disagree on resolution {sorted(res_seen)}, batch_size {sorted(bs_seen)} or "
            f"render threads {sorted(map(str, threads_seen))}; rerun sample for all shards"
        )
    full = pd.concat([rendered_frame(lat, names) for lat in lats], ignore_index=True)
    if full["sample_id"].duplicated().any():
        raise ValueError(f"{work}: sample_id {full.loc[full['sample_id'].duplicated(), 'sample_id'].iloc[0]!r} appears in two shards")
    released, failed, flagged, matched = release_mask(full, memorization_path, reid_path)
    manifest = full[released].drop(columns=["success"]).reset_index(drop=True)
    res = res_seen.pop()

    bps = _bytes_per_sample(work, lats, cfg.formats)
    bounds = shard_bounds(len(manifest), bps, cfg.shard_mb)
    png_bps = _bytes_per_sample(work, lats, ["parquet"]) if "parquet" in cfg.formats else bps
    row_group_rows = max(1, int(cfg.row_group_mb * MB // max(png_bps, 1.0)))
    attrs = {
        "format_version": FORMAT_VERSION,
        "role": ROLE_RELEASE,
        "generator_sha256": gen_sha,
        "resolution": res,
        "label_names": names,
        "png_compress_level": PNG_COMPRESS_LEVEL,
        "package_version": __version__,
        "archive": cfg.name,
    }
    release.mkdir(parents=True, exist_ok=True)
    _clear_release(release)
    shard_col = np.zeros(len(manifest), np.int32)
    index_col = np.zeros(len(manifest), np.int32)
    hashes: list[str] = [""] * len(manifest)
    writer = _ReleaseWriter(release, bounds, cfg, res, attrs, row_group_rows)
    latents = _LatentsWriter(release / RELEASE_LATENTS, max((lat.z.shape[1] for lat in lats if len(lat)), default=0))
    label_cols = manifest[names].to_numpy(np.int8)
    prob_cols = manifest[[f"prob_{n}" for n in names]].to_numpy(np.float32)
    ids, seeds = manifest["sample_id"].tolist(), manifest["seed"].to_numpy(np.int64)
    out_row = 0
    try:
        with progress(total=len(full), desc="release", unit="img") as bar:
            pos = 0
            for lat in lats:
                keep = released[pos : pos + len(lat)]
                first = out_row
                for i, (px, png) in enumerate(_iter_work_rows(work, lat.shard, cfg.formats)):
                    if keep[i]:
                        img = px if px is not None else decode_png(png)
                        shard_col[out_row], index_col[out_row] = writer.add(
                            out_row, img, png, label_cols[out_row], prob_cols[out_row], ids[out_row], int(seeds[out_row])
                        )
                        hashes[out_row] = pixel_sha256(img)
                        out_row += 1
                    bar.update(1)
                kept = np.flatnonzero(keep)
                latents.write(ids[first:out_row], lat.shard, kept, lat.z[kept])
                pos += len(lat)
        writer.close()
        latents.close()
    except BaseException as exc:
        writer.abort(exc)
        latents.close(exc)
        raise
    if out_row != len(manifest):
        raise RuntimeError(f"{work}: copied {out_row} released samples but the manifest lists {len(manifest)}")

    manifest.insert(1, "shard", shard_col)
    manifest.insert(2, "index", index_col)
    for j, fmt in enumerate(cfg.formats):
        manifest.insert(3 + j, f"{fmt}_path", [release_shard_relpath(int(s), fmt) for s in shard_col])
    manifest["pixel_sha256"] = hashes
    with atomic_path(release / MANIFEST) as tmp:
        pq.write_table(pa.Table.from_pandas(manifest, preserve_index=False), tmp)

    shards_info = []
    for k, (lo, hi) in enumerate(bounds):
        files = {fmt: release_shard_relpath(k, fmt) for fmt in cfg.formats}
        sizes = {fmt: (release / rel).stat().st_size for fmt, rel in files.items()}
        shards_info.append({"shard": k, "count": hi - lo, "files": files, "bytes": sizes})
    info: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "name": cfg.name,
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "package_version": __version__,
        "label_names": names,
        "findings": findings_of(names),
        "resolution": res,
        "formats": list(cfg.formats),
        "compression": cfg.compression,
        "png_compress_level": PNG_COMPRESS_LEVEL,
        "shard_mb": cfg.shard_mb,
        "row_group_rows": row_group_rows,
        "n_shards": len(shards_info),
        "shards": shards_info,
        "latents": RELEASE_LATENTS,
        "render": {
            "batch_size": bs_seen.pop(),
            "threads": threads_seen.pop(),
            "device": sorted(devices)[0] if len(devices) == 1 else sorted(devices),
            "lco_shard_size": shard_size,
            "shard_counts": {str(lat.shard): len(lat) for lat in lats},
        },
        "counts": {
            "n_requested": int(len(full)),
            "n_released": int(released.sum()),
            "n_failed": int(failed.sum()),
            "n_flagged": int(flagged.sum()),
            "n_reid_matched": int(matched.sum()),
            "n_withheld": int((flagged | matched).sum()),
            "per_finding": {n: int(manifest[n].sum()) for n in names},
            "per_combination": {k: int(v) for k, v in sorted(manifest["combination"].value_counts().items())},
        },
        "release_policy": (
            "the release holds only samples whose label optimisation succeeded and that neither the memorisation "
            "audit flagged nor the re-identification audit matched to a training patient (each when gated); failed "
            "and withheld samples stay in the working area and are never released"
        ),
        "memorization_gate": memorization_path is not None,
        "reid_gate": reid_path is not None,
        "generator": {"file": Path(generator_path).name, "sha256": gen_sha},
        "classifier": {"file": Path(classifier_path).name, "sha256": sha256_file(classifier_path)} if classifier_path else None,
        "memorization": {"file": Path(memorization_path).name, "sha256": sha256_file(memorization_path)} if memorization_path else None,
        "reid": {"file": Path(reid_path).name, "sha256": sha256_file(reid_path)} if reid_path else None,
        "platform": {"python": platform.python_version(), "machine": platform.machine(), "torch": _torch_version()},
        "config": dict(full_config) if full_config is not None else None,
    }
    write_json(release / ARCHIVE_JSON, info)
    log.info(
        "release %s: %d requested, %d released in %d shard(s), %d failed, %d flagged, %d matched to a training patient "
        "(withheld in %s)",
        release, len(full), info["counts"]["n_released"], len(shards_info), info["counts"]["n_failed"],
        info["counts"]["n_flagged"], info["counts"]["n_reid_matched"], work,
    )
    return info


def _torch_version() -> str:
    import torch

    return str(torch.__version__)
