"""FID / KID / precision-recall of the release against real training images, a held-out real baseline,
FID extrapolated to infinite samples, and an FID curve over the generator's training snapshots.

All numbers use one feature extractor chosen by ``validate.features`` (never the steering classifier;
see :mod:`synthcxr.metrics.features`) and recorded with its weights' sha256 in fid.json. The
reference set is the prepared *train* split (what the GAN learnt from, at most ``validate.max_real``
images). Two sets are compared with it at the same size N: the released samples, and held-out real
images (val + test, patients the GAN never saw). FID is biased by N, so the held-out set is the floor
a generator is judged against at equal N, and FID_inf (Chong & Forsyth 2020: FID at several N,
extrapolated linearly in 1/N) is reported for both. Snapshots are scored against the reference with
the same N, after resizing their (lower-resolution) output to the archive's.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..archive.reader import open_archive
from ..data.store import PreparedDataset
from ..imaging import float_to_uint8, resize_batch, uint8_to_float
from ..metrics.features import FeatureExtractor, get_extractor
from ..metrics.fid import fid_from_features
from ..metrics.registry import MetricOptions, evaluate
from ..utils.atomic import write_json, write_text
from ..utils.runtime import progress, resolve_device, seed_everything, setup_logging
from . import figures
from .common import real_batches
from .feature_cache import cache_key, cached_features, dataset_identity
from .settings import FID_TUNING, FidConfig  # noqa: F401  (re-exported: the stage's config)

log = logging.getLogger("synthcxr")

_SNAPSHOT_RE = re.compile(r"generator-(\d+)\.pt$")
HELD_OUT = ("val", "test")


def real_sets(table: pd.DataFrame, max_images: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Prepared ``row`` indices of (train reference, held-out val+test), each at most ``max_images`` (random)."""
    rng = np.random.default_rng(seed)
    out = []
    for splits in (("train",), HELD_OUT):
        rows = table.loc[table["split"].isin(splits), "row"].to_numpy()
        if len(rows) < 2:
            raise ValueError(
                f"labels.parquet: the {'+'.join(splits)} split has {len(rows)} image(s); FID needs at least 2"
            )
        if len(rows) > max_images:
            rows = rng.choice(rows, max_images, replace=False)
        out.append(np.sort(rows))
    return out[0], out[1]


def distribution_metrics(real: np.ndarray, other: np.ndarray, cfg: FidConfig,
                         record: Callable[[Mapping[str, Any]], None] | None = None) -> dict:
    """The metrics of ``validate.metrics`` (:mod:`synthcxr.metrics.registry`) of ``other`` against ``real``,
    their values merged; ``record`` receives each evaluation."""
    options = MetricOptions(cfg.seed, cfg.kid_subsets, cfg.kid_subset_size, cfg.pr_k, cfg.fid_n_points)
    return evaluate(cfg.metrics, real, other, options, record)


def snapshot_files(folder: str | os.PathLike) -> list[tuple[float, Path]]:
    """``(kimg, path)`` of ``generator-{kimg:06d}.pt`` files, ordered by kimg."""
    out = []
    for p in Path(folder).glob("generator-*.pt"):
        m = _SNAPSHOT_RE.search(p.name)
        if m:
            out.append((float(m.group(1)), p))
    return sorted(out)


@torch.no_grad()
def generator_features(
    G: torch.nn.Module, n: int, res: int, extractor: FeatureExtractor, seed: int, batch_size: int, device: torch.device
) -> np.ndarray:
    """Features of ``n`` samples of ``G`` (fixed latents), quantised to uint8 at ``res`` like the archive.

    A training snapshot renders at the resolution (and fade-in alpha) it had reached, which its
    ``meta`` records; the output is resized to ``res`` so every point is scored the same way.
    """
    latent_dim = int(getattr(G, "latent_dim"))
    meta = getattr(G, "meta", {}) or {}
    kwargs = {}
    if "res" in meta:
        kwargs = {"res": int(meta["res"]), "alpha": float(meta.get("alpha", 1.0))}
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, latent_dim, generator=gen)

    def batches():
        for s in range(0, n, batch_size):
            x = G(z[s : s + batch_size].to(device), **kwargs).float()
            x = resize_batch(x.clamp(-1, 1), res)
            yield uint8_to_float(float_to_uint8(x).cpu())

    return extractor.from_batches(batches(), total=-(-n // batch_size), desc="snapshot features")


def fid_curve(
    generator_path: str | os.PathLike | None,
    real_ref: np.ndarray,
    n: int,
    res: int,
    extractor: FeatureExtractor,
    cfg: FidConfig,
    device: torch.device,
) -> list[dict]:
    """FID against ``real_ref`` of every snapshot in ``<generator dir>/snapshots`` (plus the final
    generator when its metadata says at which kimg it was taken and no snapshot has that kimg)."""
    if generator_path is None:
        return []
    from ..pggan.checkpoint import load_generator

    snaps = snapshot_files(Path(generator_path).parent / "snapshots")
    if Path(generator_path).exists():
        meta = torch.load(generator_path, map_location="cpu", weights_only=True).get("meta", {})
        kimg = meta.get("kimg")
        if kimg is not None and all(abs(k - float(kimg)) > 1e-6 for k, _ in snaps):
            snaps.append((float(kimg), Path(generator_path)))
    if not snaps:
        log.warning("FID curve: no generator snapshots under %s/snapshots", Path(generator_path).parent)
    curve = []
    for kimg, path in progress(sorted(snaps), desc="FID curve", leave=False):
        G = load_generator(path, device)
        feats = generator_features(G, n, res, extractor, cfg.seed + 1, cfg.batch_size, device)
        point = {"kimg": kimg, "fid": fid_from_features(feats, real_ref), "path": str(path)}
        if "res" in getattr(G, "meta", {}):
            point["res"] = int(G.meta["res"])
        log.info("FID curve: %g kimg -> %.3f", kimg, point["fid"])
        curve.append(point)
        del G
    return curve


def run_fid(
    cfg: FidConfig,
    prepared_dir: str | os.PathLike,
    archive_dir: str | os.PathLike,
    out_json: str | os.PathLike,
    out_png: str | os.PathLike,
    generator_path: str | os.PathLike | None = None,
    checker_path: str | os.PathLike | None = None,
    out_curve_json: str | os.PathLike | None = None,
    log_file: str | os.PathLike | None = None,
    extractor: FeatureExtractor | None = None,
    out_jsonl: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> dict:
    """Stage entry point: writes fid.json, fid_curve.json and fid_curve.png; returns fid.json's content.

    ``out_jsonl`` gets one line per metric evaluation (metric, comparison, extractor, N, seconds, values);
    ``cache_dir`` keeps the real images' features (:mod:`.feature_cache`) for the next run."""
    setup_logging(log_file)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    if extractor is None:
        extractor = get_extractor(cfg.features, checker_path=checker_path, inception_weights=cfg.inception_weights,
                                  device=device, resize=cfg.resize, feature_res=cfg.feature_res)
    prep = PreparedDataset(prepared_dir)
    # The release, through the checked reader: FID sees exactly the released shards' pixels.
    arc = open_archive(archive_dir, sealed=False)
    if len(arc) < 2:
        raise ValueError(f"{archive_dir}: {len(arc)} released sample(s); FID needs at least 2")
    gen_feats, res = [], arc.resolution
    for _, imgs in progress(arc.iter_batches(cfg.batch_size), desc="archive features", leave=False):
        gen_feats.append(extractor(uint8_to_float(imgs).unsqueeze(1)).numpy())
    gen = np.concatenate(gen_feats)

    ref_rows, held_rows = real_sets(prep.table, cfg.max_real, cfg.seed)
    feats = {}
    ident = dataset_identity(prepared_dir) if cache_dir is not None else None
    for name, rows in (("train", ref_rows), ("held-out", held_rows)):
        key = {"dataset": ident, "extractor": extractor.describe(), "res": res, "batch_size": cfg.batch_size,
               "rows": cache_key(rows=np.asarray(rows).tolist())}
        feats[name] = cached_features(cache_dir, key, lambda rows=rows, name=name: extractor.from_batches(
            (uint8_to_float(b).unsqueeze(1) for b in real_batches(prep, rows, res, cfg.batch_size)),
            total=-(-len(rows) // cfg.batch_size), desc=f"real {name}",
        ))
    ref = feats["train"]
    n = min(len(gen), len(feats["held-out"]))
    rng = np.random.default_rng(cfg.seed)
    gen_n = gen[np.sort(rng.choice(len(gen), n, replace=False))] if n < len(gen) else gen
    held = feats["held-out"]
    held_n = held[np.sort(rng.choice(len(held), n, replace=False))] if n < len(held) else held
    log.info("FID: %s features at %d px (%s resize); %d generated and %d held-out real vs %d train real",
             extractor.name, res, extractor.resize, n, len(held_n), len(ref))

    lines: list[dict[str, Any]] = []
    described = extractor.describe()

    def record(comparison: str):
        return lambda ev: lines.append({"comparison": comparison, "extractor": described, "resolution": int(res), **ev})

    g_vs_r = distribution_metrics(ref, gen_n, cfg, record("generated_vs_train"))
    h_vs_r = distribution_metrics(ref, held_n, cfg, record("heldout_vs_train"))
    curve = fid_curve(generator_path, ref, n, res, extractor, cfg, device)
    lines += [{"comparison": "snapshot_vs_train", "extractor": described, "resolution": int(res), "metric": "fid",
               "kimg": c["kimg"], "values": {"fid": c["fid"]}, "n": int(n), "n_real": int(len(ref))} for c in curve]
    result = {
        "extractor": extractor.describe(),
        "resize": extractor.resize,
        "resolution": res,
        "reference": {"split": "train", "n": int(len(ref))},
        "baseline": {"split": "+".join(HELD_OUT), "n": int(len(held_n)), "n_total": int(len(held))},
        "n_generated": int(n),
        "n_generated_total": int(len(gen)),
        "generated_vs_train": g_vs_r,
        "heldout_vs_train": h_vs_r,
        "curve": [{"kimg": c["kimg"], "fid": c["fid"]} for c in curve],
        "fid_ratio_to_heldout": g_vs_r["fid"] / h_vs_r["fid"] if h_vs_r["fid"] > 0 else None,
        "generated_above_heldout": bool(g_vs_r["fid"] > h_vs_r["fid"]),
    }
    write_json(out_json, result)
    if out_jsonl is not None:
        write_text(out_jsonl, "".join(json.dumps(line, sort_keys=True, default=float) + "\n" for line in lines))
    if out_curve_json is not None:
        write_json(out_curve_json, {"extractor": extractor.describe(), "n": int(n), "n_real": int(len(ref)), "curve": curve})
    figures.fid_curve(result["curve"], out_png, h_vs_r["fid"], g_vs_r["fid"], extractor.name)
    msg = f"FID ({extractor.name}, {extractor.resize}): generated vs train {g_vs_r['fid']:.3f}"
    if "fid_infinity" in g_vs_r:
        msg += f" (FID_inf {g_vs_r['fid_infinity']:.3f})"
    msg += f" | held-out real vs train {h_vs_r['fid']:.3f}"
    if "kid_mean" in g_vs_r:
        msg += f" | KID {g_vs_r['kid_mean']:.4f}+-{g_vs_r['kid_std']:.4f}"
    if "precision" in g_vs_r:
        msg += f" | precision {g_vs_r['precision']:.3f} recall {g_vs_r['recall']:.3f}"
    msg += f" | n={n}"
    log.info(msg)
    print(msg)
    return result
