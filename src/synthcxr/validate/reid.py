"""Patient re-identification audit: does a synthetic sample show a *training patient*, not just copy an image?

The memorisation audit catches near-copies. A generator can also reproduce a real patient's anatomy (rib
and vessel pattern, heart shape) in an image that copies none of their scans; a patient-verification network
re-identifies such a patient the way it matches two follow-ups (Packhäuser et al., Sci Rep 2022). Two stages:

* :func:`run_train_verifier` trains the verifier (:mod:`.verifier`) on training patients, reports its ROC AUC
  and pair threshold on held-out patients' pairs, and **calibrates the audit threshold**: every val image is
  searched against the whole training gallery, and the threshold is set so that at most
  ``false_match_rate`` of them (patients the gallery cannot hold) score above it. The threshold is then
  checked on the test split, which took no part in choosing it. A per-pair threshold would be far too low
  for this question: the best of N comparisons exceeds a 1 % per-pair cut almost surely.
* :func:`run_reid` embeds every rendered sample, finds its best-matching training image by exact search
  (chunked matrix products), and marks it ``matched`` above the threshold; ``finalize_archive`` withholds
  matched samples when ``validate.reid.gate`` is on.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..config import build, filled
from ..data.store import PreparedDataset
from ..labels import combo_key
from ..lco.latents import read_latents
from ..utils.atomic import atomic_path, torch_save, write_json
from ..utils.hashing import sha256_file
from ..utils.runtime import progress, resolve_device, seed_everything, setup_logging
from . import figures
from .common import real_batches, real_images
from .memorization import NearestIndex
from .shards import WorkingShards
from .verifier import (
    best_scores,
    Verifier,
    VerifierConfig,
    embed_rows,
    embed_views,
    heldout_verification,
    threshold_at,
    train_verifier,
)

log = logging.getLogger("synthcxr")

COLUMNS = ["sample_id", "combination", "success", "nn_row", "nn_patient", "score", "matched"]
VERIFIER_FORMAT = "synthcxr-reid-verifier-1"


#: rows per chunk of the nearest-patient search: not a config key
REID_TUNING = {"chunk": 4096}


@dataclass
class ReidConfig:
    """``validate.reid`` plus the global seed, device and labels."""

    verifier: VerifierConfig
    false_match_rate: float
    gate: bool
    gallery: int
    chunk: int
    device: str
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        if not 0.0 < self.false_match_rate < 1.0:
            raise ValueError(f"validate.reid.false_match_rate must lie in (0, 1), got {self.false_match_rate}")

    @classmethod
    def from_section(cls, sec: Mapping[str, Any], **tuning: Any) -> "ReidConfig":
        """From the ``validate`` section (as given by ``stage('validate', ['reid'])``, or part of it)."""
        v = filled("validate", sec)
        reid = v["reid"]
        return build(cls, "validate.reid", {**reid, "device": v["device"]},
                     verifier=build(VerifierConfig, "validate.reid", {**reid, "seed": v["seed"]}),
                     labels=tuple(v.get("labels") or ()), **{**REID_TUNING, **tuning})


def patient_codes(prep: PreparedDataset, rows: np.ndarray) -> np.ndarray:
    """``patient_key`` of each prepared ``row``."""
    by_row = prep.table.set_index("row")["patient_key"]
    return by_row.loc[np.asarray(rows, np.int64)].astype(str).to_numpy()


def wilson_upper(k: int, n: int, z: float = 1.96) -> float:
    """Upper end of the Wilson score interval of a rate ``k / n`` (95 % by default)."""
    if n == 0:
        return float("nan")
    p = k / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return float(min(1.0, (centre + half) / (1 + z * z / n)))


def _rate(matched: np.ndarray) -> dict[str, Any]:
    k, n = int(np.count_nonzero(matched)), int(len(matched))
    return {"n": n, "n_matched": k, "match_rate": k / n if n else float("nan"), "match_rate_upper95": wilson_upper(k, n)}


def _heldout_rows(prep: PreparedDataset, split: str, cap: int, seed: int) -> np.ndarray:
    held = prep.split(split)
    if len(held) > cap:
        held = held.sample(cap, random_state=seed)
    return np.sort(held["row"].to_numpy(np.int64))


def best_match(index: NearestIndex, views: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Best score over every view ``[V, n, d]`` of each query against the index, and that reference's row."""
    best, rows = index.query(views[0])
    for v in views[1:]:
        b, r = index.query(v)
        better = b > best
        best, rows = np.where(better, b, best), np.where(better, r, rows)
    return best, rows


def view_rows(model: Verifier, prep: PreparedDataset, rows: np.ndarray, cfg: ReidConfig, device: torch.device,
              desc: str) -> torch.Tensor:
    """``[V, n, d]`` aligned-view embeddings of prepared images ``rows`` (held-out sets: a few thousand)."""
    vc = cfg.verifier
    parts = [embed_views(model, b, vc.align, device)
             for b in progress(real_batches(prep, rows, vc.res, vc.batch_size), total=math.ceil(len(rows) / vc.batch_size),
                               desc=desc, leave=False)]
    return torch.cat(parts, dim=1)


def calibrate(model: Verifier, prep: PreparedDataset, cfg: ReidConfig, index: NearestIndex, device: torch.device) -> dict[str, Any]:
    """Audit threshold from val images' best training match; its check on test images and test follow-ups."""
    vc = cfg.verifier
    val_rows = _heldout_rows(prep, "val", vc.max_heldout, vc.seed)
    if len(val_rows) == 0:
        raise ValueError(f"{prep.labels_path}: no val images; the re-identification threshold is calibrated on them")
    val_best, _ = best_match(index, view_rows(model, prep, val_rows, cfg, device, "calibration (val)"))
    thr = threshold_at(val_best, cfg.false_match_rate)
    out: dict[str, Any] = {
        "threshold": thr,
        "rule": f"matched when the best cosine to any training image, over shifts of up to {vc.align} px, is above threshold",
        "false_match_rate": cfg.false_match_rate,
        "align_px": vc.align,
        "calibration": {"split": "val", **_rate(val_best > thr)},
    }
    test_rows = _heldout_rows(prep, "test", vc.max_heldout, vc.seed)
    if len(test_rows):
        views = view_rows(model, prep, test_rows, cfg, device, "check (test)")
        test_best, _ = best_match(index, views)
        out["heldout_check"] = {"split": "test", **_rate(test_best > thr),
                                "score_p99": float(np.quantile(test_best, 0.99))}
        out["followup_reid"] = followup_reid(views, patient_codes(prep, test_rows), index, thr)
    return out


def followup_reid(views: torch.Tensor, patient: np.ndarray, index: NearestIndex, thr: float) -> dict[str, Any]:
    """How often the audit re-identifies a patient from a *new* study: each held-out patient with >= 2 studies
    is enrolled with one study in the training gallery; another study is the probe. Counts a probe found when
    its best match in gallery + enrolled is its own enrolled study and above the threshold (``rank1``: best
    match is its own study, whatever the score). ``views``: ``[V, n, d]`` aligned views, view 0 unshifted."""
    first: dict[str, int] = {}
    probe: dict[str, int] = {}
    for i, p in enumerate(patient):
        if p not in first:
            first[p] = i
        elif p not in probe:
            probe[p] = i
    keys = sorted(probe)
    if not keys:
        return {"n": 0}
    enrolled = views[0][[first[k] for k in keys]]
    probes = views[:, [probe[k] for k in keys]]
    g_best, _ = best_match(index, probes)
    own = best_scores(probes, enrolled)
    others = torch.einsum("vnd,md->vnm", probes, enrolled).max(dim=0).values
    others.fill_diagonal_(-2.0)
    o_best = others.max(dim=1).values.numpy().astype(np.float64)
    rank1 = (own >= g_best) & (own >= o_best)
    found = rank1 & (own > thr)
    return {"n": len(keys), "reidentified": int(found.sum()), "rate": float(found.mean()), "rank1": float(rank1.mean())}


def save_verifier(path: str | os.PathLike, model: Verifier, meta: dict[str, Any]) -> None:
    """Plain state dict + JSON-able metadata (loadable with ``weights_only=True``)."""
    torch_save({"format": VERIFIER_FORMAT, "arch": model.arch, "state_dict": model.state_dict(), "meta": meta}, path)


def load_verifier(path: str | os.PathLike, device: torch.device) -> tuple[Verifier, dict[str, Any]]:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} missing: run the train_reid_verifier rule first")
    obj = torch.load(p, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != VERIFIER_FORMAT:
        raise ValueError(f"{p}: not a synthcxr re-identification verifier (format {obj.get('format') if isinstance(obj, dict) else None!r})")
    model = Verifier(**obj["arch"])
    model.load_state_dict(obj["state_dict"])
    return model.to(device).eval(), dict(obj["meta"])


def training_index(model: Verifier, prep: PreparedDataset, cfg: ReidConfig, device: torch.device) -> NearestIndex:
    """Embeddings of every training image: the gallery a sample must not match."""
    train = prep.split("train")
    if train.empty:
        raise ValueError(f"{prep.labels_path}: no rows with split == 'train'; the audit needs the training images")
    rows = np.sort(train["row"].to_numpy(np.int64))
    return NearestIndex(embed_rows(model, prep, rows, cfg.verifier, device, desc="training gallery"), rows, device,
                        cfg.chunk, center=False)


def run_train_verifier(cfg: ReidConfig, prepared_dir: str | os.PathLike, out_model: str | os.PathLike,
                       out_metrics: str | os.PathLike, log_file: str | os.PathLike | None = None) -> dict[str, Any]:
    """Stage entry point: train, evaluate on held-out pairs, calibrate; writes verifier.pt and its metrics JSON."""
    setup_logging(log_file)
    seed_everything(cfg.verifier.seed)
    device = resolve_device(cfg.device)
    prep = PreparedDataset(prepared_dir)
    model, train_info = train_verifier(prep, cfg.verifier, device)
    verification = heldout_verification(model, prep, cfg.verifier, cfg.false_match_rate, device)
    audit = calibrate(model, prep, cfg, training_index(model, prep, cfg, device), device)
    metrics = {"verifier": {**model.arch, **train_info}, "verification": verification, "audit": audit}
    save_verifier(out_model, model, {"threshold": audit["threshold"], "false_match_rate": cfg.false_match_rate,
                                     "prepared_labels_sha256": sha256_file(prep.labels_path)})
    write_json(out_metrics, metrics)
    msg = (f"re-id verifier: held-out pair AUC {verification['auc']:.4f}; audit threshold {audit['threshold']:.4f} "
           f"at false-match rate {cfg.false_match_rate:g} (test images matched: "
           f"{audit.get('heldout_check', {}).get('match_rate', float('nan')):.4f})")
    log.info(msg)
    print(msg)
    return metrics


def _combinations(latent_paths: Sequence[str | os.PathLike], labels: Sequence[str]) -> pd.DataFrame:
    parts = []
    for p in latent_paths:
        lat = read_latents(p, labels)
        parts.append(pd.DataFrame({
            "sample_id": lat.table["sample_id"].astype(str).to_numpy(),
            "combination": [combo_key(v, labels) for v in lat.targets],
            "success": lat.table["success"].to_numpy(bool),
        }))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["sample_id", "combination", "success"])


def audit_samples(shard_files: Sequence[str | os.PathLike], model: Verifier, index: NearestIndex, threshold: float,
                  prep: PreparedDataset, cfg: ReidConfig, device: torch.device) -> pd.DataFrame:
    """``sample_id, nn_row, nn_patient, score, matched`` for every sample of the rendered shards (batch by batch:
    memory is one batch's views plus the training gallery)."""
    ids: list[str] = []
    best, rows = [], []
    for batch in progress(WorkingShards(shard_files).batches(cfg.verifier.batch_size), desc="re-id audit", leave=False):
        b, r = best_match(index, embed_views(model, batch["image"], cfg.verifier.align, device))
        ids += batch["sample_id"]
        best.append(b)
        rows.append(r)
    best_a = np.concatenate(best) if best else np.zeros(0)
    rows_a = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64)
    return pd.DataFrame({"sample_id": ids, "nn_row": rows_a,
                         "nn_patient": patient_codes(prep, rows_a) if len(rows_a) else np.zeros(0, str),
                         "score": best_a, "matched": best_a > threshold})


def summarise(df: pd.DataFrame, threshold: float) -> dict[str, Any]:
    """Counts overall, over successful samples and per label combination; score quantiles."""
    q = np.quantile(df["score"], [0.5, 0.99, 1.0]) if len(df) else [float("nan")] * 3
    per = {}
    for combo, g in df.groupby("combination", sort=True):
        per[str(combo)] = {"n": int(len(g)), "n_matched": int(g["matched"].sum()), "match_rate": float(g["matched"].mean())}
    ok = df[df["success"]]
    return {
        "threshold": threshold,
        **_rate(df["matched"].to_numpy(bool)),
        "successful": _rate(ok["matched"].to_numpy(bool)),
        "distinct_patients_matched": int(df.loc[df["matched"], "nn_patient"].nunique()),
        "score": {"median": float(q[0]), "p99": float(q[1]), "max": float(q[2])},
        "per_combination": per,
    }


def gallery_rows(df: pd.DataFrame, shard_files: Sequence[str | os.PathLike], prep: PreparedDataset, n: int) -> list[dict]:
    """The ``n`` best-matching samples with their nearest training image and another study of that patient."""
    if df.empty or n <= 0:
        return []
    top = df.nlargest(n, "score")
    ids = top["sample_id"].tolist()
    gen = dict(zip(ids, WorkingShards(shard_files).select_ids(ids).read()))
    res = next(iter(gen.values())).shape[-1]
    table = prep.table
    out = []
    for r in top.itertuples():
        others = table.loc[(table["patient_key"] == r.nn_patient) & (table["row"] != r.nn_row), "row"].to_numpy()
        rows = [int(r.nn_row)] + ([int(others.min())] if len(others) else [])
        imgs = real_images(prep, np.asarray(rows), res).read()
        out.append({"sample_id": r.sample_id, "generated": gen[r.sample_id], "nearest": imgs[0],
                    "other_study": imgs[1] if len(imgs) > 1 else None, "score": float(r.score),
                    "matched": bool(r.matched), "nn_row": int(r.nn_row), "combination": str(r.combination)})
    return out


def run_reid(
    cfg: ReidConfig,
    shard_files: Sequence[str | os.PathLike],
    latent_files: Sequence[str | os.PathLike],
    prepared_dir: str | os.PathLike,
    verifier_path: str | os.PathLike,
    verifier_metrics: str | os.PathLike,
    out_parquet: str | os.PathLike,
    out_summary: str | os.PathLike,
    out_gallery: str | os.PathLike,
    log_file: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Stage entry point: writes reid.parquet (per sample), reid.json (verifier, calibration, samples) and the gallery."""
    setup_logging(log_file)
    device = resolve_device(cfg.device)
    prep = PreparedDataset(prepared_dir)
    model, meta = load_verifier(verifier_path, device)
    threshold = float(meta["threshold"])
    shards = list(shard_files)
    index = training_index(model, prep, cfg, device)
    df = audit_samples(shards, model, index, threshold, prep, cfg, device)
    combos = _combinations(latent_files, cfg.labels)
    if set(df["sample_id"]) != set(combos["sample_id"]):
        missing = sorted(set(combos["sample_id"]) - set(df["sample_id"]))[:5]
        extra = sorted(set(df["sample_id"]) - set(combos["sample_id"]))[:5]
        raise ValueError(f"rendered shards and latents disagree: missing from shards {missing}, not in latents {extra}; "
                         "rerun the sample stage")
    df = df.merge(combos, on="sample_id", how="left")[COLUMNS]
    with atomic_path(out_parquet) as tmp:
        df.to_parquet(tmp, index=False)
    summary = {
        **json.loads(Path(verifier_metrics).read_text()),
        "verifier_sha256": sha256_file(verifier_path),
        "samples": summarise(df, threshold),
    }
    write_json(out_summary, summary)
    figures.match_gallery(gallery_rows(df, shards, prep, cfg.gallery), out_gallery, threshold)
    s = summary["samples"]
    msg = (f"re-id audit: {s['n_matched']}/{s['n']} samples matched to a training patient (threshold {threshold:.4f}; "
           f"held-out test images matched at {summary['audit'].get('heldout_check', {}).get('match_rate', float('nan')):.4f})")
    log.info(msg)
    print(msg)
    return summary
