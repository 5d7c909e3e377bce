"""Scoring a trained classifier: predictions, AUROC with bootstrap CIs, operating points, ROC figure.

Operating points (``thresholds.json``) are chosen on the *validation* split, per label, by maximising
Youden's J = sensitivity + specificity - 1: with no clinical costs attached it weighs a missed finding
and a false alarm equally, independent of prevalence. A label is called present when its sigmoid
probability is >= its threshold. Choosing on val keeps the test split untouched for reporting. The cut
sits mid-way (in logit) between the two val scores it separates, and a label with too few val positives
to place one falls back to 0.5 (see :func:`choose_thresholds`).
``thresholds.json`` is the flat mapping ``{label: threshold}``; the method, rule and each point's
val TPR/FPR/J are recorded under ``operating_points`` in ``metrics.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.special import expit, logit
from torch.utils.data import DataLoader

from ..imagesets import ImageSet
from ..labels import NO_FINDING, combo_key
from ..metrics.auroc import auroc, mean_auroc, roc_curve, youden_threshold
from ..metrics.bootstrap import bootstrap_distribution, percentile_interval
from ..utils.atomic import atomic_path

log = logging.getLogger("synthcxr")

THRESHOLD_METHODS = ("youden_j", "fixed")
THRESHOLD_RULES = {
    "youden_j": (
        "present when sigmoid(logit) >= threshold; threshold maximises TPR - FPR on the val split, at the logit midpoint "
        "of the plateau of equally good cuts; 0.5 when val has fewer than threshold_min_count positives or negatives"
    ),
    "fixed": "present when sigmoid(logit) >= 0.5; val TPR/FPR recorded",
}
_P_EPS = 1e-7


@torch.no_grad()
def predict(
    model: torch.nn.Module, dataset: ImageSet, batch_size: int = 128, device: torch.device | str = "cpu", workers: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities [n, L], labels [n, L])`` over an image set's ``{"image", "labels"}`` items."""
    model.eval()
    cuda = torch.device(device).type == "cuda"
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=cuda)
    probs, labs = [], []
    for batch in loader:
        x, y = batch["image"], batch["labels"]
        probs.append(torch.sigmoid(model(x.to(device, non_blocking=cuda))).float().cpu().numpy())
        labs.append(np.asarray(y, dtype=np.float32))
    return np.concatenate(probs).astype(np.float64), np.concatenate(labs)


def _finding_columns(label_names: Sequence[str]) -> list[int]:
    return [j for j, n in enumerate(label_names) if n != NO_FINDING]


def _summary_vector(y: np.ndarray, s: np.ndarray, findings: Sequence[int]) -> np.ndarray:
    """Per-label AUROCs, then their mean, then the mean over findings (No_Finding excluded)."""
    per = np.array([auroc(y[:, j], s[:, j]) for j in range(y.shape[1])])
    return np.r_[per, mean_auroc(per), mean_auroc(per[list(findings)])]


def _num(v: float) -> float | None:
    """JSON has no NaN: undefined values are written as null."""
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def split_metrics(
    y: np.ndarray,
    probs: np.ndarray,
    label_names: Sequence[str],
    n_boot: int,
    seed: int,
    alpha: float = 0.05,
    groups: np.ndarray | None = None,
) -> dict:
    """AUROC per label with percentile bootstrap CIs (one resampling for all labels).

    ``groups`` (patient keys, one per image) resamples patients with all their images; without it,
    images are resampled. ``ci_resampling`` in the result says which.
    """
    names = list(label_names)
    findings = _finding_columns(names)
    point = _summary_vector(y, probs, findings)
    if n_boot > 0:
        dist = bootstrap_distribution(
            lambda a, b: _summary_vector(a, b, findings), y, probs, n=n_boot, seed=seed, clusters=groups
        )
        lo, hi = percentile_interval(dist, alpha)
        n_ok = np.sum(~np.isnan(dist), axis=0)
    else:
        lo = hi = np.full_like(point, np.nan)
        n_ok = np.zeros_like(point, dtype=int)
    per_label = {}
    for j, n in enumerate(names):
        col = y[:, j]
        per_label[n] = {
            "auroc": _num(point[j]),
            "ci_low": _num(lo[j]),
            "ci_high": _num(hi[j]),
            "n_pos": int(np.sum(col == 1)),
            "n_neg": int(np.sum(col == 0)),
            "n_unknown": int(np.sum(np.isnan(col))),
            "n_boot_defined": int(n_ok[j]),
        }
    L = len(names)
    return {
        "n_images": int(len(y)),
        "n_patients": None if groups is None else int(len(np.unique(np.asarray(groups)))),
        "ci_resampling": "images" if groups is None else "patients (all images of a drawn patient)",
        "per_label": per_label,
        "mean_auroc": _num(point[L]),
        "mean_auroc_ci": [_num(lo[L]), _num(hi[L])],
        "mean_auroc_findings": _num(point[L + 1]),
        "mean_auroc_findings_ci": [_num(lo[L + 1]), _num(hi[L + 1])],
    }


def exact_match(y: np.ndarray, probs: np.ndarray, thresholds: Sequence[float], label_names: Sequence[str]) -> dict:
    """Share of images on which every label is called right at ``thresholds``, overall and per combination.

    This is the rule LCO's checker applies to a generated image (all requested findings present, all
    others absent), measured on real images: how often the classifier reads a real scan of a given label
    combination as exactly that combination. Images with any unknown (NaN) label are left out.

    ``per_label`` gives each label's calls on its own: ``tpr`` over the images that carry it (``n_pos``)
    and ``fpr`` over those that do not (``n_neg``), each counting only images where that label is known.
    A low ``tpr`` caps how often this classifier can confirm a generated image of the finding.
    """
    y = np.asarray(y, dtype=np.float64)
    known = ~np.isnan(y).any(axis=1)
    all_calls = np.asarray(probs) >= np.asarray(thresholds, dtype=np.float64)[None, :]
    yk, calls = y[known], all_calls[known]
    ok = (calls == (yk == 1)).all(axis=1)
    keys = np.array([combo_key(r, label_names) for r in yk], dtype=object)
    per = {str(k): {"n": int((keys == k).sum()), "rate": float(ok[keys == k].mean())} for k in sorted(set(keys))}
    per_label = {}
    for j, name in enumerate(label_names):
        pos, neg = y[:, j] == 1, y[:, j] == 0
        per_label[str(name)] = {
            "n_pos": int(pos.sum()),
            "tpr": float(all_calls[pos, j].mean()) if pos.any() else None,
            "n_neg": int(neg.sum()),
            "fpr": float(all_calls[neg, j].mean()) if neg.any() else None,
        }
    return {
        "rule": "every label called right: sigmoid >= threshold exactly where the label is 1",
        "n": int(known.sum()),
        "n_unknown_excluded": int((~known).sum()),
        "rate": _num(float(ok.mean())) if len(ok) else None,
        "per_combination": per,
        "per_label": per_label,
    }


def plateau_midpoint(top: float, lower: float) -> float:
    """Probability halfway, in logit space, between ``top`` and ``lower`` (``-inf`` lower: ``top``).

    Every cut in ``(lower, top]`` classifies the val split identically; the midpoint leaves the same
    logit margin to the lowest positive call and the highest negative one, so it does not sit on the
    score of a single validation image.
    """
    if not math.isfinite(lower) or lower >= top:
        return float(top)
    a, b = logit(np.clip([top, lower], _P_EPS, 1.0 - _P_EPS))
    return float(expit(0.5 * (a + b)))


def choose_thresholds(
    y_val: np.ndarray, p_val: np.ndarray, label_names: Sequence[str], min_count: int = 1, method: str = "youden_j"
) -> dict:
    """Per-label operating points on validation probabilities.

    ``youden_j``: the threshold maximises Youden's J (TPR - FPR) and sits at the logit midpoint of the
    plateau of cuts that give that J (:func:`plateau_midpoint`). A label with fewer than ``min_count``
    positives or negatives on val (a handful of images cannot place an operating point) falls back to
    0.5, the decision point of the class-weighted loss, with the reason recorded. ``fixed``: 0.5 for
    every label (small val splits, where a val-chosen point is noise; the val TPR/FPR are still recorded).

    Returns ``{label: {"threshold", "tpr", "fpr", "youden_j", "n_pos", "n_neg", "fallback", "reason"}}``
    where tpr/fpr are measured at the chosen threshold; ``thresholds.json`` keeps only the flat
    ``{label: threshold}`` mapping (what LCO reads), ``metrics.json`` the details.
    """
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"classifier.threshold_method: {method!r} is not one of {', '.join(THRESHOLD_METHODS)}")
    out = {}
    for j, n in enumerate(label_names):
        y, p = y_val[:, j], p_val[:, j]
        known = ~np.isnan(y)
        n_pos = int(np.count_nonzero(y[known] == 1))
        n_neg = int(np.count_nonzero(y[known] == 0))
        pt = youden_threshold(y, p)
        reason = ""
        if method == "fixed":
            reason = "threshold_method fixed"
        elif math.isnan(pt["threshold"]):
            reason = "a single class on val"
        elif min(n_pos, n_neg) < min_count:
            reason = f"{min(n_pos, n_neg)} {'positives' if n_pos <= n_neg else 'negatives'} on val, fewer than threshold_min_count {min_count}"
        thr = 0.5 if reason else plateau_midpoint(pt["threshold"], pt["lower"])
        called = p[known] >= thr
        yk = y[known]
        out[n] = {
            "threshold": thr,
            "tpr": _num(float(called[yk == 1].mean())) if n_pos else None,
            "fpr": _num(float(called[yk == 0].mean())) if n_neg else None,
            "youden_j": _num(pt["j"]),
            "n_pos": n_pos,
            "n_neg": n_neg,
            "fallback": bool(reason),
            "reason": reason,
        }
        if reason and method != "fixed":
            log.warning("label %s: %s; threshold falls back to 0.5", n, reason)
    return out


def thresholds_mapping(points: dict) -> dict[str, float]:
    """The ``thresholds.json`` content: ``{label: probability threshold}``."""
    return {n: float(v["threshold"]) for n, v in points.items()}


def read_thresholds(path: str | os.PathLike) -> dict[str, float]:
    """``thresholds.json`` as ``{label: probability threshold}``; errors name the file and the fix."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} missing: run the classifier stage first (rule train_classifier)")
    try:
        with open(p) as fh:
            thr = json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not valid JSON ({exc}); rerun the classifier stage (rule train_classifier)") from None
    if not isinstance(thr, dict) or not all(isinstance(v, (int, float)) for v in thr.values()):
        raise ValueError(f"{p}: expected a mapping {{label: probability threshold}}; rerun the classifier stage (rule train_classifier)")
    return {str(k): float(v) for k, v in thr.items()}


def load_thresholds(path: str | os.PathLike, label_names: Sequence[str]) -> np.ndarray:
    """Probability thresholds from ``thresholds.json`` in the order of ``label_names``."""
    thr = read_thresholds(path)
    missing = [n for n in label_names if n not in thr]
    if missing:
        raise KeyError(f"{path}: no threshold for label(s) {missing}; the classifier was trained on {sorted(thr)}")
    return np.array([thr[n] for n in label_names], dtype=np.float64)


def plot_roc(y: np.ndarray, probs: np.ndarray, label_names: Sequence[str], path: str | os.PathLike, title: str) -> None:
    """Test ROC curves, one per label with its AUROC in the legend, written atomically as PNG."""
    from matplotlib.figure import Figure  # Agg canvas, no pyplot global state

    fig = Figure(figsize=(6.5, 6), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    for j, n in enumerate(label_names):
        col = y[:, j]
        known = ~np.isnan(col)
        if len(np.unique(col[known])) < 2:
            continue
        fpr, tpr, _ = roc_curve(col, probs[:, j])
        ax.plot(fpr, tpr, lw=1.4, label=f"{n} ({auroc(col, probs[:, j]):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(loc="lower right", fontsize=8, title="label (AUROC)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
