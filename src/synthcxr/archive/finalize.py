"""Build the release from the working area: only released samples, copied byte for byte into
byte-sized release shards (one parallel job per shard, :mod:`.release_shard`), with their manifest,
latents and archive.json.

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
import logging
import math
import os
import platform
import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .. import __version__
from ..labels import combo_key, findings_of
from ..lco.latents import OPTIONAL, PAIR_COLUMNS, ShardLatents, read_latents
from ..utils.atomic import atomic_path, is_temporary, write_json
from ..utils.hashing import sha256_file
from ..utils.runtime import progress
from .contract import ROLE_RELEASE, ROLE_WORK, read_shard_attrs, read_shard_ids
from .delivery import delivery_table, enforce_delivery, summary_line
from .gates import pair_counts, pair_mask, release_mask
from .layout import (
    ARCHIVE_JSON,
    CARD,
    CROISSANT,
    DELIVERY_JSON,
    FORMAT_VERSION,
    FORMATS,
    MANIFEST,
    PAIR_FIELDS,
    PNG_COMPRESS_LEVEL,
    RELEASE_LATENTS,
    SUMS,
    dicom_relpath,
    release_shard_relpath,
    shard_formats,
    work_shard_relpath,
)
from .release_shard import ShardJob, write_release_shard
from .sample import ArchiveConfig

log = logging.getLogger("synthcxr")

MB = 1 << 20


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
    for c in PAIR_COLUMNS:
        if c in t.columns:
            cols[c] = t[c].to_numpy()
    cols["success"] = t["success"].to_numpy(dtype=bool)
    return pd.DataFrame(cols)


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


def _run_jobs(jobs: list[ShardJob], workers: int, on_done) -> list[list[str]]:
    """Pixel hashes of every release shard job, in job order; ``workers`` processes (1: in this process)."""
    if workers <= 1 or len(jobs) <= 1:
        out = []
        for job in jobs:
            out.append(write_release_shard(job))
            on_done(len(job))
        return out
    results: list[list[str] | None] = [None] * len(jobs)
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        futures = {pool.submit(write_release_shard, job): k for k, job in enumerate(jobs)}
        try:
            for fut in as_completed(futures):
                k = futures[fut]
                results[k] = fut.result()
                on_done(len(jobs[k]))
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return [r if r is not None else [] for r in results]


def _clear_release(release_dir: Path) -> None:
    """Remove an earlier release: its seal first, then its data, so a failed run leaves no complete-looking release."""
    for name in (SUMS, CARD, CROISSANT, MANIFEST, ARCHIVE_JSON, RELEASE_LATENTS):
        with contextlib.suppress(FileNotFoundError):
            (release_dir / name).unlink()
    shutil.rmtree(release_dir / "dicom", ignore_errors=True)  # one folder of files per shard
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
    wfmts = cfg.work_formats
    gen_sha = sha256_file(generator_path)
    lats = [read_latents(lp, names) for lp in sorted(latents_paths, key=lambda p: Path(p).name)]
    if not lats:
        raise ValueError("finalize_archive: no latents shards given")
    res_seen, bs_seen, threads_seen, devices, png_seen = set(), set(), set(), set(), set()
    for lat in lats:
        a = check_work_shard(work, lat, wfmts, gen_sha)
        res_seen.add(int(a["resolution"]))
        bs_seen.add(int(a["batch_size"]))
        threads_seen.add(a.get("render_threads"))
        png_seen.add(int(a.get("png_compress_level", PNG_COMPRESS_LEVEL)))
        devices.add(str(a.get("render_device", "cpu")))
    if len(res_seen) > 1 or len(bs_seen) > 1 or len(threads_seen) > 1 or len(png_seen) > 1:
        raise ValueError(
            f"{work}: working shards disagree on resolution {sorted(res_seen)}, batch_size {sorted(bs_seen)}, "
            f"render threads {sorted(map(str, threads_seen))} or PNG level {sorted(png_seen)}; rerun sample for all shards"
        )
    png_level = png_seen.pop()
    full = pd.concat([rendered_frame(lat, names) for lat in lats], ignore_index=True)
    if full["sample_id"].duplicated().any():
        raise ValueError(f"{work}: sample_id {full.loc[full['sample_id'].duplicated(), 'sample_id'].iloc[0]!r} appears in two shards")
    released, failed, flagged, matched = release_mask(full, memorization_path, reid_path)
    unpaired = pair_mask(full, released)
    released &= ~unpaired
    delivery = delivery_table(full, names, released, failed, unpaired if "pair_id" in full.columns else None)
    write_json(work / DELIVERY_JSON, delivery)  # kept for the operator even when the floor stops the release
    short = enforce_delivery(delivery, cfg.min_delivery, str(release))
    manifest = full[released].drop(columns=["success"]).reset_index(drop=True)
    res = res_seen.pop()

    bps = _bytes_per_sample(work, lats, wfmts)
    bounds = shard_bounds(len(manifest), bps, cfg.shard_mb)
    png_bps = _bytes_per_sample(work, lats, ["parquet"]) if "parquet" in wfmts else bps
    row_group_rows = max(1, int(cfg.row_group_mb * MB // max(png_bps, 1.0)))
    attrs = {
        "format_version": FORMAT_VERSION,
        "role": ROLE_RELEASE,
        "generator_sha256": gen_sha,
        "resolution": res,
        "label_names": names,
        "png_compress_level": png_level,
        "package_version": __version__,
        "archive": cfg.name,
    }
    release.mkdir(parents=True, exist_ok=True)
    _clear_release(release)
    shard_col = np.zeros(len(manifest), np.int32)
    index_col = np.zeros(len(manifest), np.int32)
    label_cols = manifest[names].to_numpy(np.int8)
    prob_cols = manifest[[f"prob_{n}" for n in names]].to_numpy(np.float32)
    ids, seeds = manifest["sample_id"].tolist(), manifest["seed"].to_numpy(np.int64)
    rshard, rindex = manifest["render_shard"].to_numpy(np.int64), manifest["render_index"].to_numpy(np.int64)
    jobs = []
    for k, (lo, hi) in enumerate(bounds):
        shard_col[lo:hi], index_col[lo:hi] = k, np.arange(hi - lo)
        jobs.append(ShardJob(
            work_dir=str(work), release_dir=str(release), shard=k, render_shard=rshard[lo:hi], render_index=rindex[lo:hi],
            sample_ids=ids[lo:hi], labels=label_cols[lo:hi], probs=prob_cols[lo:hi], seeds=seeds[lo:hi], label_names=names,
            formats=list(cfg.formats), work_formats=wfmts, compression=cfg.compression, resolution=res, attrs=attrs,
            row_group_rows=row_group_rows, dicom_uid_root=cfg.dicom_uid_root if "dicom" in cfg.formats else None,
            archive_name=cfg.name,
            pairs={c: manifest[c].to_numpy()[lo:hi] for c in PAIR_FIELDS} if "pair_id" in manifest.columns else None,
        ))
    latents = _LatentsWriter(release / RELEASE_LATENTS, max((lat.z.shape[1] for lat in lats if len(lat)), default=0))
    try:
        with progress(total=len(manifest), desc=f"release ({cfg.workers} workers)", unit="img") as bar:
            shard_hashes = _run_jobs(jobs, cfg.workers, bar.update)
        pos = 0
        for lat in lats:
            kept = np.flatnonzero(released[pos : pos + len(lat)])
            latents.write(list(full["sample_id"].iloc[pos + kept]), lat.shard, kept, lat.z[kept])
            pos += len(lat)
        latents.close()
    except BaseException as exc:
        latents.close(exc)
        raise
    hashes = [h for hs in shard_hashes for h in hs]
    if len(hashes) != len(manifest):
        raise RuntimeError(f"{work}: copied {len(hashes)} released samples but the manifest lists {len(manifest)}")

    manifest.insert(1, "shard", shard_col)
    manifest.insert(2, "index", index_col)
    for j, fmt in enumerate(cfg.formats):
        paths = ([dicom_relpath(int(s), sid) for s, sid in zip(shard_col, ids)] if fmt == "dicom"
                 else [release_shard_relpath(int(s), fmt) for s in shard_col])
        manifest.insert(3 + j, f"{fmt}_path", paths)
    manifest["pixel_sha256"] = hashes
    write_manifest(release / MANIFEST, manifest, bounds)

    shards_info = []
    for k, (lo, hi) in enumerate(bounds):
        files = {fmt: release_shard_relpath(k, fmt) for fmt in shard_formats(cfg.formats)}
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
        **({"dicom": {"uid_root": cfg.dicom_uid_root, "sop_class": "Secondary Capture Image Storage", "conversion_type": "SYN",
                      "layout": "dicom/shard-NNNNN/<sample_id>.dcm + <sample_id>.json"}} if "dicom" in cfg.formats else {}),
        "work_formats": wfmts,
        "compression": cfg.compression,
        "png_compress_level": png_level,
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
            **(pair_counts(full, released, unpaired) if "pair_id" in full.columns else {}),
            # released counts, as the delivery table has them (combinations with none released left out)
            "per_finding": {n: r["released"] for n, r in delivery["per_finding"].items()},
            "per_combination": {k: r["released"] for k, r in delivery["per_combination"].items() if r["released"]},
        },
        "delivery": {**delivery, "min_delivery": cfg.min_delivery, "short": short},
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
    log.info("release %s: %s", release, summary_line(delivery))
    return info


def write_manifest(path: Path, manifest: pd.DataFrame, bounds: Sequence[tuple[int, int]]) -> None:
    """``manifest.parquet`` with one row group per release shard, so a streaming reader reads each shard's rows once."""
    table = pa.Table.from_pandas(manifest, preserve_index=False)
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, table.schema, write_statistics=["shard", "index"]) as w:
            for lo, hi in bounds or [(0, 0)]:
                w.write_table(table.slice(lo, hi - lo), row_group_size=max(1, hi - lo))


def _torch_version() -> str:
    import torch

    return str(torch.__version__)
