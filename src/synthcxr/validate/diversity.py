"""Diversity / pathology report: does the archive hold the findings, and their combinations, that the
plan asked for, compared with the real training split?

Prevalence alone hides whether findings co-occur as they do in real patients (e.g. Effusion with
Cardiomegaly); the co-occurrence matrix ``C[i, j] = P(label i and label j)`` (diagonal = prevalence)
shows both. The archive is described twice: by its target labels and by the classifier's calls on
the rendered images (``prob_<label> >= 0.5``), so a plan that was not realised shows up as a gap.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.store import PreparedDataset
from ..utils.atomic import write_json
from ..utils.runtime import setup_logging
from . import figures

log = logging.getLogger("synthcxr")


def prevalence(labels: np.ndarray) -> np.ndarray:
    """Fraction of positives per column over known (non-NaN) entries."""
    y = np.asarray(labels, np.float64)
    known = ~np.isnan(y)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(known.sum(0) > 0, np.nansum(y, 0) / known.sum(0), np.nan)


def cooccurrence(labels: np.ndarray) -> np.ndarray:
    """``C[i, j]`` = fraction of images with labels i and j both positive, over images where both are known."""
    y = np.asarray(labels, np.float64)
    known = (~np.isnan(y)).astype(np.float64)
    pos = np.nan_to_num(y)
    both_known = known.T @ known
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(both_known > 0, (pos.T @ pos) / both_known, np.nan)


def sample_rows(manifest: pd.DataFrame, labels: Sequence[str], per_label: int, seed: int) -> dict[str, list[str]]:
    """Up to ``per_label`` sample ids whose target includes each label (deterministic for ``seed``)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in labels:
        ids = manifest.loc[manifest[name] >= 0.5, "sample_id"].astype(str).to_numpy()
        out[name] = sorted(rng.choice(ids, min(per_label, len(ids)), replace=False).tolist()) if len(ids) else []
    return out


def run_diversity(
    labels: Sequence[str],
    archive_dir: str | os.PathLike,
    prepared_dir: str | os.PathLike,
    out_prevalence: str | os.PathLike,
    out_cooccurrence: str | os.PathLike,
    out_grids: str | os.PathLike,
    out_json: str | os.PathLike | None = None,
    per_label: int = 8,
    seed: int = 0,
    log_file: str | os.PathLike | None = None,
    read_images: Callable[[list[str]], dict[str, np.ndarray]] | None = None,
) -> dict:
    """Stage entry point: prevalence bars, co-occurrence heatmaps, one sample-grid row per label.

    Images come from ``synthcxr.archive.open(archive_dir).read(sample_id)`` unless ``read_images``
    (ids -> uint8 images) is given.
    """
    setup_logging(log_file)
    labels = list(labels)
    manifest_path = Path(archive_dir) / "manifest.parquet"
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path} missing: run the finalize_archive rule first")
    manifest = pd.read_parquet(manifest_path)
    missing = [n for n in labels if n not in manifest.columns]
    if missing:
        raise KeyError(f"{manifest_path}: no column for label(s) {missing}; the archive was built with other labels")
    prep = PreparedDataset(prepared_dir)
    real = prep.label_matrix(prep.split("train"), labels)
    target = manifest[labels].to_numpy(np.float64)
    series = {"real train": prevalence(real), "archive (target)": prevalence(target)}
    mats = {"real train": cooccurrence(real), "archive (target)": cooccurrence(target)}
    prob_cols = [f"prob_{n}" for n in labels]
    if all(c in manifest.columns for c in prob_cols):
        called = (manifest[prob_cols].to_numpy(np.float64) >= 0.5).astype(np.float64)
        series["archive (classifier calls)"] = prevalence(called)
        mats["archive (classifier calls)"] = cooccurrence(called)
    mats["archive - real"] = mats["archive (target)"] - mats["real train"]

    figures.prevalence_bars(labels, series, out_prevalence)
    figures.heatmaps(labels, mats, out_cooccurrence, title="Label co-occurrence P(i and j) (diagonal: prevalence)")

    picks = sample_rows(manifest, labels, per_label, seed)
    if read_images is None:
        from .. import archive as archive_mod

        arc = archive_mod.open(archive_dir, sealed=False)  # validation runs before the release is sealed
        read_images = lambda ids: {i: np.asarray(arc.read(i)) for i in ids}  # noqa: E731
    all_ids = sorted({i for ids in picks.values() for i in ids})
    imgs = read_images(all_ids) if all_ids else {}
    figures.image_grid({n: [imgs[i] for i in picks[n]] for n in labels}, out_grids, per_label,
                       title="Archive samples per target label")

    result = {
        "labels": labels,
        "n_real_train": int(len(real)),
        "n_archive": int(len(manifest)),
        "prevalence": {k: dict(zip(labels, map(float, v))) for k, v in series.items()},
        "cooccurrence": {k: np.asarray(v).tolist() for k, v in mats.items()},
        "max_abs_prevalence_gap": float(np.nanmax(np.abs(series["archive (target)"] - series["real train"]))),
        "grid_samples": picks,
    }
    if out_json is not None:
        write_json(out_json, result)
    log.info("diversity: %d archive samples vs %d real train; largest prevalence gap %.3f",
             len(manifest), len(real), result["max_abs_prevalence_gap"])
    return result
