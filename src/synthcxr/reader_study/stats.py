"""The statistics of a reader study: accuracy with exact tests, rating AUC, inter-reader kappas."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import binomtest

from ..metrics.auroc import auroc
from ..metrics.bootstrap import bootstrap_ci
from .power import tost


def _ratio(num: int, den: int) -> float:
    return num / den if den else float("nan")


def accuracy_stats(truth: Sequence[str], answer: Sequence[str], margin: float = 0.1) -> dict[str, Any]:
    """Accuracy (+ exact CI, binomial test vs 0.5, TOST within +-margin), sensitivity/specificity (fake = positive)."""
    t = np.asarray(truth, dtype=object)
    a = np.asarray(answer, dtype=object)
    n = len(t)
    tp = int(np.sum((t == "fake") & (a == "fake")))
    fn = int(np.sum((t == "fake") & (a == "real")))
    tn = int(np.sum((t == "real") & (a == "real")))
    fp = int(np.sum((t == "real") & (a == "fake")))
    correct = tp + tn
    out: dict[str, Any] = {
        "n": n,
        "n_fake": tp + fn,
        "n_real": tn + fp,
        "tp": tp,
        "fn": fn,
        "tn": tn,
        "fp": fp,
        "correct": correct,
        "accuracy": _ratio(correct, n),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "fake_called_real": _ratio(fn, tp + fn),
        "real_called_fake": _ratio(fp, tn + fp),
    }
    if n:
        test = binomtest(correct, n, p=0.5, alternative="two-sided")
        ci = test.proportion_ci(confidence_level=0.95, method="exact")
        out.update(p_value=float(test.pvalue), ci_low=float(ci.low), ci_high=float(ci.high))
    else:
        out.update(p_value=float("nan"), ci_low=float("nan"), ci_high=float("nan"))
    out["equivalence"] = tost(correct, n, margin)
    return out


def verdict(st: dict[str, Any], alpha: float = 0.05) -> str:
    """``different`` (told apart), ``equivalent`` (within the margin of chance) or ``inconclusive``."""
    if st["n"] == 0 or math.isnan(st["p_value"]):
        return "inconclusive"
    if st["p_value"] < alpha:
        return "different"
    return "equivalent" if st["equivalence"]["equivalent"] else "inconclusive"


def rating_auc_ci(
    truth: Sequence[str], answer: Sequence[str], confidence: Sequence[float], images: Sequence[str] | None = None,
    n_boot: int = 2000, seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of :func:`rating_auc`, resampling images (all of an image's answers together)."""
    t = np.asarray(truth, dtype=object)
    a = np.asarray(answer, dtype=object)
    c = np.asarray(confidence, dtype=np.float64)
    keep = ~np.isnan(c)
    if keep.sum() < 2 or len(set(t[keep])) < 2:
        return float("nan"), float("nan")
    clusters = None if images is None else np.asarray(images, dtype=object)[keep]
    y = (t[keep] == "fake").astype(np.float64)
    rating = np.where(a[keep] == "fake", c[keep], -c[keep])
    return bootstrap_ci(auroc, y, rating, n=n_boot, seed=seed, clusters=clusters)


def rating_auc(truth: Sequence[str], answer: Sequence[str], confidence: Sequence[float]) -> tuple[float, int]:
    """ROC AUC of the 10-point "how fake" rating (fake x confidence = +c, real x confidence = -c).

    A reader at chance accuracy can still rank images well when confident answers are right, so this
    separates "cannot tell" from "can tell but hedges". Rows without a confidence are left out; returns
    (AUC, rows used), AUC NaN when a class is missing.
    """
    t = np.asarray(truth, dtype=object)
    a = np.asarray(answer, dtype=object)
    c = np.asarray(confidence, dtype=np.float64)
    keep = ~np.isnan(c)
    if not keep.any():
        return float("nan"), 0
    rating = np.where(a[keep] == "fake", c[keep], -c[keep])
    return auroc((t[keep] == "fake").astype(np.float64), rating), int(keep.sum())


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float:
    """Cohen's kappa of two raters on the same items; NaN when chance agreement is 1 (no variation)."""
    a = np.asarray(a, dtype=object)
    b = np.asarray(b, dtype=object)
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa: rater lengths differ ({len(a)} vs {len(b)})")
    if len(a) == 0:
        return float("nan")
    cats = sorted(set(a) | set(b))
    po = float(np.mean(a == b))
    pe = float(sum(np.mean(a == c) * np.mean(b == c) for c in cats))
    return (po - pe) / (1.0 - pe) if pe < 1.0 else float("nan")


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa (Fleiss 1971) from an ``[items, categories]`` table of rater counts per item.

    Every item must have the same number of ratings ``m >= 2``. NaN when expected agreement is 1.
    """
    x = np.asarray(counts, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"fleiss_kappa: need a non-empty [items, categories] table, got shape {list(x.shape)}")
    m = x.sum(axis=1)
    if not np.all(m == m[0]) or m[0] < 2:
        raise ValueError("fleiss_kappa: every item needs the same number (>= 2) of ratings")
    m = m[0]
    p_j = x.sum(axis=0) / (x.shape[0] * m)
    p_i = (np.sum(x * x, axis=1) - m) / (m * (m - 1))
    p_bar, pe_bar = float(p_i.mean()), float(np.sum(p_j**2))
    return (p_bar - pe_bar) / (1.0 - pe_bar) if pe_bar < 1.0 else float("nan")
