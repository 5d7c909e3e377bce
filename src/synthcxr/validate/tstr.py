"""Train on synthetic, test on real (TSTR).

If the archive carries the label information of the real data, a classifier trained only on it should
score real images nearly as well as one trained on real images. The synthetic-trained classifier uses
the same architecture, budget and seed as the real-trained one (the ``classifier`` section, renamed),
both are scored on the same real test split by the same code, and a paired bootstrap over test images
gives a CI for the per-label AUROC difference (synthetic - real).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..data.store import PreparedDataset
from ..labels import NO_FINDING
from ..metrics.auroc import auroc, mean_auroc
from ..metrics.bootstrap import bootstrap_ci
from ..utils.atomic import write_json
from ..utils.runtime import resolve_device, setup_logging
from . import figures

log = logging.getLogger("synthcxr")


def _num(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


@torch.no_grad()
def predict_split(
    model: torch.nn.Module, prep: PreparedDataset, split: str, labels: list[str], batch_size: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """``(labels [n, L], probabilities [n, L])`` of ``model`` on a prepared split (model's input res)."""
    res = int(getattr(model, "input_res"))
    level = res if res in prep.resolutions else max(prep.resolutions)
    ds = prep.torch_dataset(split, level, labels)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)
    ys, ps = [], []
    model.eval()
    for x, y in loader:
        ps.append(torch.sigmoid(model(x.to(device))).float().cpu().numpy())
        ys.append(y.numpy())
    return np.concatenate(ys).astype(np.float64), np.concatenate(ps).astype(np.float64)


def paired_difference(
    y: np.ndarray,
    p_real: np.ndarray,
    p_syn: np.ndarray,
    labels: list[str],
    n_boot: int,
    seed: int,
    groups: np.ndarray | None = None,
) -> dict[str, dict]:
    """Per-label AUROC(synthetic) - AUROC(real) with a paired percentile bootstrap CI over test patients
    (``groups``: patient key per image; None resamples images)."""

    def stat(yy, a, b):
        return np.array([auroc(yy[:, j], b[:, j]) - auroc(yy[:, j], a[:, j]) for j in range(yy.shape[1])])

    point = stat(y, p_real, p_syn)
    if n_boot > 0:
        lo, hi = bootstrap_ci(stat, y, p_real, p_syn, n=n_boot, seed=seed, clusters=groups)
    else:
        lo = hi = np.full_like(point, np.nan)
    return {n: {"delta": _num(point[j]), "ci_low": _num(lo[j]), "ci_high": _num(hi[j])} for j, n in enumerate(labels)}


def _per_label(metrics: dict, labels: list[str]) -> dict[str, dict]:
    test = metrics.get("test", {}).get("per_label", {})
    return {n: {k: test.get(n, {}).get(k) for k in ("auroc", "ci_low", "ci_high", "n_pos", "n_neg")} for n in labels}


def summarise(real_metrics: dict, syn_metrics: dict, diff: dict, labels: list[str], target: float = 0.80) -> dict:
    """tstr.json content from the two classifiers' metrics.json and the paired differences."""
    findings = [n for n in labels if n != NO_FINDING]
    real, syn = _per_label(real_metrics, labels), _per_label(syn_metrics, labels)

    def mean_of(d):
        return _num(mean_auroc([np.nan if d[n]["auroc"] is None else d[n]["auroc"] for n in findings]))

    out = {
        "labels": labels,
        "findings": findings,
        "split": "test",
        "real_trained": real,
        "synthetic_trained": syn,
        "difference": diff,
        "mean_auroc_findings": {"real_trained": mean_of(real), "synthetic_trained": mean_of(syn)},
        "mean_auroc_findings_ci": {
            "real_trained": real_metrics.get("test", {}).get("mean_auroc_findings_ci"),
            "synthetic_trained": syn_metrics.get("test", {}).get("mean_auroc_findings_ci"),
        },
        "n_train": {"real_trained": real_metrics.get("n_train"), "synthetic_trained": syn_metrics.get("n_train")},
        "target_mean_auroc": target,
    }
    m = out["mean_auroc_findings"]["synthetic_trained"]
    out["meets_target"] = bool(m is not None and m >= target)
    return out


def run_tstr(
    clf_section: dict,
    archive_dir: str | os.PathLike,
    prepared_dir: str | os.PathLike,
    real_model: str | os.PathLike,
    real_metrics: str | os.PathLike,
    out_dir: str | os.PathLike,
    out_json: str | os.PathLike,
    out_png: str | os.PathLike,
    log_file: str | os.PathLike | None = None,
    trainer: Callable[..., dict] | None = None,
    loader: Callable[..., torch.nn.Module] | None = None,
) -> dict:
    """Stage entry point: trains the TSTR classifier into ``out_dir`` and writes tstr.json + AUROC bars.

    ``trainer``/``loader`` default to :func:`synthcxr.classifier.train_classifier` / ``load_classifier``.
    """
    setup_logging(log_file)
    if trainer is None or loader is None:
        from ..classifier import load_classifier, train_classifier

        trainer = trainer or train_classifier
        loader = loader or load_classifier
    sec = {k: v for k, v in dict(clf_section).items() if k != "checker"}
    sec["name"] = f"{sec.get('name', 'real')}-tstr"
    labels = list(sec["labels"])
    real_metrics_path = Path(real_metrics)
    if not real_metrics_path.exists():
        raise FileNotFoundError(f"{real_metrics_path} missing: run the train_classifier rule first")
    real_m = json.loads(real_metrics_path.read_text())

    log.info("TSTR: training %s on the archive %s, testing on the real test split of %s", sec["name"], archive_dir, prepared_dir)
    syn_m = trainer(sec, archive_dir, prepared_dir, out_dir, log_file)
    setup_logging(log_file)  # the trainer may have reconfigured logging

    device = resolve_device(str(sec.get("device", "auto")))
    prep = PreparedDataset(prepared_dir)
    real_clf = loader(real_model, device)
    syn_clf = loader(Path(out_dir) / "model.pt", device)
    bs = int(sec.get("batch_size", 64)) * 2
    y, p_real = predict_split(real_clf, prep, "test", labels, bs, device)
    y2, p_syn = predict_split(syn_clf, prep, "test", labels, bs, device)
    if not np.array_equal(np.nan_to_num(y, nan=-1), np.nan_to_num(y2, nan=-1)):
        raise RuntimeError("test labels differ between the two predictions; the prepared dataset changed mid-run")
    test_rows = prep.split("test")
    groups = test_rows["patient_key"].to_numpy() if "patient_key" in test_rows.columns else None
    diff = paired_difference(y, p_real, p_syn, labels, int(sec.get("bootstrap", 1000)), int(sec.get("seed", 0)) + 5, groups)
    result = summarise(real_m, syn_m, diff, labels)
    write_json(out_json, result)
    findings = result["findings"]
    figures.auroc_bars(
        findings,
        {"real-trained": result["real_trained"], "synthetic-trained (TSTR)": result["synthetic_trained"]},
        out_png,
        title="Per-finding AUROC on the real test split",
    )
    m = result["mean_auroc_findings"]
    fmt = lambda v: "nan" if v is None else f"{v:.3f}"  # noqa: E731
    msg = (f"TSTR: mean AUROC over findings on real test: synthetic-trained {fmt(m['synthetic_trained'])} vs "
           f"real-trained {fmt(m['real_trained'])} (target >= {result['target_mean_auroc']:.2f}: "
           f"{'met' if result['meets_target'] else 'NOT met'})")
    log.info(msg)
    print(msg)
    return result
