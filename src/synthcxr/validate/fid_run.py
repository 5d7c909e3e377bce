"""FID / KID / precision-recall of the archive against real images, a real-vs-real baseline and an FID
curve over the generator's training snapshots.

FID is biased by sample size, so a bare number says little on a small demo. The real images (the
prepared training split, at most ``validate.max_real``) are therefore split *by patient* into two
disjoint halves A and B: ``real_vs_real`` compares A with B and ``generated_vs_real`` compares as many
generated samples as A holds with the same B. Both numbers then carry the same bias, and a
generator is only as good as its distance to the real-vs-real floor. Snapshots are scored against B
with the same number of samples, after resizing their (lower-resolution) output to the archive's.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.store import PreparedDataset
from ..imaging import float_to_uint8, resize_batch, uint8_to_float
from ..metrics.features import FeatureExtractor, get_extractor
from ..metrics.fid import fid_from_features
from ..metrics.kid import kid
from ..metrics.prdc import precision_recall
from ..utils.atomic import write_json
from ..utils.runtime import progress, resolve_device, seed_everything, setup_logging
from . import figures
from .common import iter_real
from ..archive.reader import open_archive

log = logging.getLogger("synthcxr")

_SNAPSHOT_RE = re.compile(r"generator-(\d+)\.pt$")


@dataclass
class FidConfig:
    """The ``validate`` section keys this stage uses."""

    features: str = "classifier"
    inception_weights: str | None = None
    max_real: int = 10000
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    pr_k: int = 3
    seed: int = 0
    device: str = "auto"
    batch_size: int = 64
    real_split: str = "train"

    @classmethod
    def from_section(cls, sec: dict) -> "FidConfig":
        keys = ("features", "inception_weights", "max_real", "kid_subsets", "kid_subset_size", "pr_k", "seed", "device")
        return cls(**{k: sec[k] for k in keys if k in sec})


def patient_halves(table: pd.DataFrame, max_images: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Prepared ``row`` indices of two patient-disjoint halves with near-equal image counts.

    Patients are shuffled and each goes to the half holding fewer images so far; each half is then
    capped at ``max_images // 2`` images (random subset), so the two never share a patient.
    """
    if "patient_key" not in table.columns:
        raise KeyError("labels.parquet has no 'patient_key' column; rerun the prepare stage")
    rng = np.random.default_rng(seed)
    groups = table.groupby("patient_key", sort=True)["row"].apply(lambda s: s.to_numpy())
    if len(groups) < 2:
        raise ValueError(f"need at least 2 patients for a real-vs-real baseline, found {len(groups)}")
    halves: list[list[np.ndarray]] = [[], []]
    counts = [0, 0]
    for i in rng.permutation(len(groups)):
        k = 0 if counts[0] <= counts[1] else 1
        halves[k].append(groups.iloc[i])
        counts[k] += len(groups.iloc[i])
    cap = max(max_images // 2, 2)
    out = []
    for h in halves:
        rows = np.concatenate(h)
        if len(rows) > cap:
            rows = rng.choice(rows, cap, replace=False)
        out.append(np.sort(rows))
    return out[0], out[1]


def distribution_metrics(real: np.ndarray, gen: np.ndarray, cfg: FidConfig) -> dict[str, float]:
    """FID, KID (mean, std), precision, recall, density and coverage of ``gen`` against ``real``."""
    kid_mean, kid_std = kid(real, gen, cfg.kid_subsets, cfg.kid_subset_size, cfg.seed)
    pr = precision_recall(real, gen, k=min(cfg.pr_k, len(real) - 1, len(gen) - 1))
    return {"fid": fid_from_features(gen, real), "kid_mean": kid_mean, "kid_std": kid_std, **pr}


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
    classifier_path: str | os.PathLike | None = None,
    out_curve_json: str | os.PathLike | None = None,
    log_file: str | os.PathLike | None = None,
    extractor: FeatureExtractor | None = None,
) -> dict:
    """Stage entry point: writes fid.json, fid_curve.json and fid_curve.png; returns fid.json's content."""
    setup_logging(log_file)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    if extractor is None:
        extractor = get_extractor(cfg.features, classifier_path=classifier_path, inception_weights=cfg.inception_weights, device=device)
    prep = PreparedDataset(prepared_dir)
    # The release, through the checked reader: FID sees exactly the released shards' pixels.
    arc = open_archive(archive_dir, sealed=False)
    if len(arc) < 2:
        raise ValueError(f"{archive_dir}: {len(arc)} released sample(s); FID needs at least 2")
    gen_feats, res = [], arc.resolution
    for _, imgs in progress(arc.iter_batches(cfg.batch_size), desc="archive features", leave=False):
        gen_feats.append(extractor(uint8_to_float(imgs).unsqueeze(1)).numpy())
    gen = np.concatenate(gen_feats)

    table = prep.split(cfg.real_split)
    half_a, half_b = patient_halves(table, cfg.max_real, cfg.seed)
    feats = {}
    for name, rows in (("a", half_a), ("b", half_b)):
        feats[name] = extractor.from_batches(
            (uint8_to_float(b).unsqueeze(1) for b in iter_real(prep, rows, res, cfg.batch_size)),
            total=-(-len(rows) // cfg.batch_size), desc=f"real half {name.upper()}",
        )
    n = min(len(gen), len(feats["a"]))
    rng = np.random.default_rng(cfg.seed)
    gen_n = gen[np.sort(rng.choice(len(gen), n, replace=False))] if n < len(gen) else gen
    real_a = feats["a"][np.sort(rng.choice(len(feats["a"]), n, replace=False))] if n < len(feats["a"]) else feats["a"]
    real_b = feats["b"]
    log.info("FID: %s features at %d px; %d generated and %d real (half A) vs %d real (half B, disjoint patients)",
             extractor.name, res, n, len(real_a), len(real_b))

    g_vs_r = distribution_metrics(real_b, gen_n, cfg)
    r_vs_r = distribution_metrics(real_b, real_a, cfg)
    curve = fid_curve(generator_path, real_b, n, res, extractor, cfg, device)
    result = {
        "extractor": extractor.name,
        "resolution": res,
        "real_split": cfg.real_split,
        "n_real": int(len(real_b)),
        "n_generated": int(n),
        "n_generated_total": int(len(gen)),
        "generated_vs_real": g_vs_r,
        "real_vs_real": r_vs_r,
        "curve": [{"kimg": c["kimg"], "fid": c["fid"]} for c in curve],
        "fid_ratio_to_real_baseline": g_vs_r["fid"] / r_vs_r["fid"] if r_vs_r["fid"] > 0 else None,
        "generated_above_real_baseline": bool(g_vs_r["fid"] > r_vs_r["fid"]),
    }
    write_json(out_json, result)
    if out_curve_json is not None:
        write_json(out_curve_json, {"extractor": extractor.name, "n": int(n), "n_real": int(len(real_b)), "curve": curve})
    figures.fid_curve(result["curve"], out_png, r_vs_r["fid"], g_vs_r["fid"], extractor.name)
    msg = (f"FID ({extractor.name}): generated vs real {g_vs_r['fid']:.3f} | real vs real {r_vs_r['fid']:.3f} | "
           f"KID {g_vs_r['kid_mean']:.4f}+-{g_vs_r['kid_std']:.4f} | precision {g_vs_r['precision']:.3f} "
           f"recall {g_vs_r['recall']:.3f} | n={n}")
    log.info(msg)
    print(msg)
    return result
