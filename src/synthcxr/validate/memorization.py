"""Memorisation audit: the nearest real training image of every generated sample, in two spaces.

A GAN that copies training images leaks patient data, so every rendered sample is compared with every
training image twice:

* feature space: cosine similarity of the classifier's penultimate features, *centred* on the mean
  training feature. Centring matters because ReLU features share a large common component that makes
  raw cosines of any two chest X-rays high; after it, only a true near-duplicate scores close to 1;
* pixel space: Pearson correlation of the images downsampled to ``memorization.pixel_res`` after
  subtracting the mean training image (the shared anatomy), for the same reason.

A sample is **flagged when either similarity is at or above** ``memorization.threshold``. The same
search is run for held-out real images (the val split, never trained on) against the training split;
their flag rate is the audit's false-positive reference and is logged and written to the summary.

Comparisons run in chunks (generated x real blocks through one matmul, keeping a running maximum), so
memory is bounded by the chunk sizes and the stored training vectors, not by the product of the sets.
The audit reads the rendered shards directly because it runs before the archive is finalised.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.store import PreparedDataset
from ..imaging import resize_batch
from ..metrics.features import FeatureExtractor, get_extractor
from ..utils.atomic import atomic_path, write_json
from ..utils.runtime import progress, resolve_device, seed_everything, setup_logging
from . import figures
from .common import real_batches, real_images, to_float
from .settings import MEMORIZATION_TUNING, MemorizationConfig  # noqa: F401  (re-exported: the stage's config)
from .shards import WorkingShards

log = logging.getLogger("synthcxr")

COLUMNS = ["sample_id", "nn_feature_row", "feature_sim", "nn_pixel_row", "pixel_sim", "flagged"]


class NearestIndex:
    """Unit-normalised reference vectors (after subtracting their mean unless ``center`` is off) for chunked
    max-cosine search: exact, one ``[query, chunk]`` matrix product at a time."""

    def __init__(self, vectors: torch.Tensor, rows: np.ndarray, device: torch.device, chunk: int = 2048, center: bool = True):
        vectors = vectors.to(torch.float32)
        if len(vectors) == 0:
            raise ValueError("no reference (training) images to compare against")
        self.mean = vectors.mean(dim=0, keepdim=True) if center else torch.zeros_like(vectors[:1])
        self.ref = _unit(vectors - self.mean).to(device)
        self.mean = self.mean.to(device)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.device = device
        self.chunk = int(chunk)

    def query(self, vectors: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Best similarity and the prepared ``row`` of the best reference, for each query vector."""
        q = _unit(vectors.to(self.device, torch.float32) - self.mean)
        best = torch.full((len(q),), -2.0, device=self.device)
        arg = torch.zeros(len(q), dtype=torch.int64, device=self.device)
        for s in range(0, len(self.ref), self.chunk):
            sims = q @ self.ref[s : s + self.chunk].T
            m, i = sims.max(dim=1)
            better = m > best
            best = torch.where(better, m, best)
            arg = torch.where(better, i + s, arg)
        return best.clamp(-1.0, 1.0).cpu().numpy().astype(np.float64), self.rows[arg.cpu().numpy()]


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def pixel_vectors(images: torch.Tensor, pixel_res: int) -> torch.Tensor:
    """Float ``[n, 1, R, R]`` -> ``[n, pixel_res**2]`` with each image's own mean removed (correlation)."""
    v = resize_batch(images.float(), pixel_res).flatten(1)
    return v - v.mean(dim=1, keepdim=True)


def build_indexes(
    images: Iterable[np.ndarray], rows: np.ndarray, extractor: FeatureExtractor, cfg: MemorizationConfig, device: torch.device
) -> tuple[NearestIndex, NearestIndex]:
    """Feature and pixel indexes of the training images (streamed uint8 batches in ``rows`` order)."""
    feats, pix = [], []
    for batch in progress(images, total=-(-len(rows) // cfg.batch_size), desc="training images", leave=False):
        x = to_float(batch)
        feats.append(extractor(x))
        pix.append(pixel_vectors(x, cfg.pixel_res))
    return (NearestIndex(torch.cat(feats), rows, device, cfg.chunk), NearestIndex(torch.cat(pix), rows, device, cfg.chunk))


def search(
    batches: Iterable[tuple[Sequence[str], np.ndarray]],
    extractor: FeatureExtractor,
    feat_index: NearestIndex,
    pix_index: NearestIndex,
    cfg: MemorizationConfig,
    total: int | None = None,
    desc: str = "memorisation audit",
) -> pd.DataFrame:
    """Nearest training neighbour in both spaces for every ``(ids, uint8 images)`` batch."""
    parts = []
    for ids, imgs in progress(batches, total=total, desc=desc, leave=False):
        x = to_float(imgs)
        fs, fr = feat_index.query(extractor(x))
        ps, pr = pix_index.query(pixel_vectors(x, cfg.pixel_res))
        parts.append(
            pd.DataFrame({"sample_id": list(ids), "nn_feature_row": fr, "feature_sim": fs, "nn_pixel_row": pr, "pixel_sim": ps})
        )
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({c: [] for c in COLUMNS[:-1]})
    df["flagged"] = (df["feature_sim"] >= cfg.threshold) | (df["pixel_sim"] >= cfg.threshold)
    return df[COLUMNS]


def _ids_from_latents(latent_paths: Sequence[str | os.PathLike]) -> set[str]:
    ids: set[str] = set()
    for p in latent_paths:
        if not Path(p).exists():
            raise FileNotFoundError(f"{p} missing: run the lco stage first")
        ids.update(pd.read_parquet(p, columns=["sample_id"])["sample_id"].astype(str))
    return ids


def audit(
    shard_files: Sequence[str | os.PathLike],
    prep: PreparedDataset,
    extractor: FeatureExtractor,
    cfg: MemorizationConfig,
    latent_paths: Sequence[str | os.PathLike] | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Run the audit; returns the per-sample table and a summary (counts, held-out reference)."""
    device = resolve_device(cfg.device)
    generated = WorkingShards(shard_files)
    if not len(generated):
        raise ValueError(f"{generated.paths[0]}: empty shard; nothing to audit")
    res = int(generated.read([0]).shape[-1])
    train = prep.split("train")
    if train.empty:
        raise ValueError(f"{prep.labels_path}: no rows with split == 'train'; the audit needs the training images")
    train_rows = train["row"].to_numpy()
    log.info("memorisation: %d training images at %d px, pixel space %d px, threshold %.3f",
             len(train_rows), res, cfg.pixel_res, cfg.threshold)
    feat_index, pix_index = build_indexes(real_batches(prep, train_rows, res, cfg.batch_size), train_rows, extractor, cfg, device)

    expected = _ids_from_latents(latent_paths) if latent_paths else None
    df = search(((b["sample_id"], b["image"]) for b in generated.batches(cfg.batch_size)), extractor, feat_index, pix_index, cfg)
    if expected is not None:
        got = set(df["sample_id"])
        if got != expected:
            missing, extra = sorted(expected - got)[:5], sorted(got - expected)[:5]
            raise ValueError(
                f"rendered shards and latents disagree: missing from shards {missing}, not in latents {extra}; "
                "rerun the sample stage"
            )

    # False-positive reference: unseen real images (val split, patient-disjoint) against the training set.
    held = prep.split("val")
    if len(held) > cfg.max_heldout:
        held = held.sample(cfg.max_heldout, random_state=cfg.seed)
    held_df = None
    if len(held):
        hrows = held["row"].to_numpy()
        batches = ((list(map(str, hrows[s : s + cfg.batch_size])), b)
                   for s, b in zip(range(0, len(hrows), cfg.batch_size), real_batches(prep, hrows, res, cfg.batch_size)))
        held_df = search(batches, extractor, feat_index, pix_index, cfg, desc="held-out reference")
    summary = _summary(df, held_df, cfg, len(train_rows))
    summary["extractor"] = extractor.describe()
    return df, summary


def _stats(values: np.ndarray) -> dict:
    if len(values) == 0:
        return {}
    q = np.quantile(values, [0.5, 0.95, 0.99, 1.0])
    return {"median": float(q[0]), "p95": float(q[1]), "p99": float(q[2]), "max": float(q[3])}


def _summary(df: pd.DataFrame, held: pd.DataFrame | None, cfg: MemorizationConfig, n_train: int) -> dict:
    out = {
        "threshold": cfg.threshold,
        "rule": "flagged when feature_sim >= threshold or pixel_sim >= threshold",
        "pixel_res": cfg.pixel_res,
        "features": cfg.features,
        "n_generated": int(len(df)),
        "n_train": int(n_train),
        "n_flagged": int(df["flagged"].sum()),
        "flag_rate": float(df["flagged"].mean()) if len(df) else 0.0,
        "feature_sim": _stats(df["feature_sim"].to_numpy()),
        "pixel_sim": _stats(df["pixel_sim"].to_numpy()),
    }
    if held is not None:
        out["heldout_reference"] = {
            "split": "val",
            "n": int(len(held)),
            "flag_rate": float(held["flagged"].mean()),
            "feature_sim": _stats(held["feature_sim"].to_numpy()),
            "pixel_sim": _stats(held["pixel_sim"].to_numpy()),
        }
    return out


def gallery_pairs(df: pd.DataFrame, shard_files: Sequence[str | os.PathLike], prep: PreparedDataset, n: int) -> list[dict]:
    """The ``n`` generated samples most similar to a training image (max over both spaces), with images."""
    if df.empty or n <= 0:
        return []
    top = df.assign(_s=np.maximum(df["feature_sim"], df["pixel_sim"])).nlargest(n, "_s")
    ids = top["sample_id"].tolist()
    gen = dict(zip(ids, WorkingShards(shard_files).select_ids(ids).read()))
    res = next(iter(gen.values())).shape[-1]
    real_rows = np.unique(np.r_[top["nn_feature_row"].to_numpy(), top["nn_pixel_row"].to_numpy()])
    real = dict(zip(real_rows.tolist(), real_images(prep, real_rows, res).read()))
    return [
        {
            "sample_id": r.sample_id, "generated": gen[r.sample_id], "feature_nn": real[int(r.nn_feature_row)],
            "pixel_nn": real[int(r.nn_pixel_row)], "feature_sim": float(r.feature_sim), "pixel_sim": float(r.pixel_sim),
            "nn_feature_row": int(r.nn_feature_row), "nn_pixel_row": int(r.nn_pixel_row), "flagged": bool(r.flagged),
        }
        for r in top.itertuples()
    ]


def run_memorization(
    cfg: MemorizationConfig,
    shard_files: Sequence[str | os.PathLike],
    latent_files: Sequence[str | os.PathLike],
    prepared_dir: str | os.PathLike,
    checker_path: str | os.PathLike | None,
    out_parquet: str | os.PathLike,
    out_gallery: str | os.PathLike,
    out_summary: str | os.PathLike | None = None,
    log_file: str | os.PathLike | None = None,
    extractor: FeatureExtractor | None = None,
) -> dict:
    """Stage entry point: writes memorization.parquet, the gallery PNG and (optionally) a JSON summary."""
    setup_logging(log_file)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    prep = PreparedDataset(prepared_dir)
    if extractor is None:
        extractor = get_extractor(cfg.features, checker_path=checker_path, inception_weights=cfg.inception_weights,
                                  device=device, resize=cfg.resize, feature_res=cfg.feature_res)
    df, summary = audit(shard_files, prep, extractor, cfg, latent_files)
    with atomic_path(out_parquet) as tmp:
        df.to_parquet(tmp, index=False)
    figures.pair_gallery(gallery_pairs(df, shard_files, prep, cfg.gallery), out_gallery, cfg.threshold)
    if out_summary is not None:
        write_json(out_summary, summary)
    ref = summary.get("heldout_reference", {})
    msg = (f"memorisation: {summary['n_flagged']}/{summary['n_generated']} generated samples flagged "
           f"(threshold {cfg.threshold}); held-out real reference flag rate {ref.get('flag_rate', float('nan')):.3f}")
    log.info(msg)
    print(msg)
    if ref and ref.get("flag_rate", 0) > 0.05:
        log.warning("memorisation: %.1f%% of unseen real images exceed the threshold; it is too low for this data "
                    "(raise validate.memorization.threshold)", 100 * ref["flag_rate"])
    return summary
