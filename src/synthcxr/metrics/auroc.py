"""Area under the ROC curve and ROC curves, written out so their handling of the edge cases is ours.

Multi-label X-ray labels carry unknowns (NaN) and rare classes that can be absent from a split or a
bootstrap resample. A library call would either fail or silently return something; here unknown
labels are dropped and a missing class gives NaN, which the callers skip explicitly.

AUROC is computed as the Mann-Whitney U statistic: with average ranks for tied scores it equals the
trapezoidal area under the ROC curve exactly (a tie between a positive and a negative counts 1/2).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _clean(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    """1-D float arrays with unknown (NaN) labels removed; raises on shape mismatch or NaN scores."""
    y = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} values but y_score has {s.size}; they must match")
    keep = ~np.isnan(y)
    y, s = y[keep], s[keep]
    if np.isnan(s).any():
        raise ValueError("y_score contains NaN where the label is known; check the model outputs")
    bad = (y != 0) & (y != 1)
    if bad.any():
        raise ValueError(f"y_true must be 0, 1 or NaN (unknown); found {np.unique(y[bad])[:5].tolist()}")
    return y, s


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``; tied values share the mean of the ranks they span."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="mergesort")
    sv = v[order]
    n = sv.size
    # start index of each run of equal values
    starts = np.flatnonzero(np.r_[True, sv[1:] != sv[:-1]])
    ends = np.r_[starts[1:], n]  # exclusive
    run_rank = (starts + ends + 1) / 2.0  # mean of (start+1 .. end)
    ranks_sorted = np.repeat(run_rank, ends - starts)
    out = np.empty(n, dtype=np.float64)
    out[order] = ranks_sorted
    return out


def auroc(y_true, y_score) -> float:
    """AUROC of one label: P(score of a positive > score of a negative), ties counting one half.

    NaN labels are ignored; returns NaN when, after that, only one class is present.
    """
    y, s = _clean(y_true, y_score)
    n_pos = float(np.count_nonzero(y == 1))
    n_neg = float(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = average_ranks(s)
    u = r[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(y_true, y_score, drop_intermediate: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve points ``(fpr, tpr, thresholds)``; a sample is called positive when score >= threshold.

    Thresholds are the distinct scores in decreasing order, preceded by ``+inf`` (nothing called
    positive). With ``drop_intermediate`` a point is dropped when it lies inside a straight run of
    equal steps (it changes neither the curve nor its area), so plots and threshold searches stay small.
    NaN labels are ignored; raises when a class is absent (rates would be undefined).
    """
    y, s = _clean(y_true, y_score)
    n_pos = np.count_nonzero(y == 1)
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"roc_curve needs both classes; got {n_pos} positives and {n_neg} negatives")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    # last index of each run of equal scores: where the curve gets a point
    last = np.flatnonzero(np.r_[s_sorted[1:] != s_sorted[:-1], True])
    tp = np.cumsum(y_sorted)[last]
    fp = (last + 1) - tp
    thr = s_sorted[last]
    if drop_intermediate and tp.size > 2:
        step_tp, step_fp = np.diff(tp), np.diff(fp)
        bend = (step_tp[1:] != step_tp[:-1]) | (step_fp[1:] != step_fp[:-1])
        keep = np.r_[True, bend, True]
        tp, fp, thr = tp[keep], fp[keep], thr[keep]
    tp = np.r_[0.0, tp]
    fp = np.r_[0.0, fp]
    thr = np.r_[np.inf, thr]
    return fp / n_neg, tp / n_pos, thr


def youden_threshold(y_true, y_score) -> dict:
    """Operating point maximising Youden's J = sensitivity + specificity - 1 = TPR - FPR.

    Returns ``threshold`` (call positive when score >= threshold), ``tpr``, ``fpr`` and ``j``, plus
    ``lower``: the largest score below the optimal plateau. Every cut in ``(lower, threshold]`` gives the
    same calls on these data (and so the same J); the plateau is the run of consecutive ROC points with
    the maximal J that starts at the most specific one (``-inf`` when it reaches the lowest score). With
    one class absent returns NaNs so the caller can fall back explicitly.
    """
    y, s = _clean(y_true, y_score)
    n_pos = np.count_nonzero(y == 1)
    if n_pos == 0 or n_pos == y.size:
        nan = float("nan")
        return {"threshold": nan, "tpr": nan, "fpr": nan, "j": nan, "lower": nan}
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    j = tpr - fpr
    j[0] = -np.inf  # +inf threshold calls nothing positive: never an operating point
    i = int(np.argmax(j))
    k = i
    while k + 1 < j.size and j[k + 1] == j[i]:
        k += 1
    lower = float(thr[k + 1]) if k + 1 < thr.size else float("-inf")
    return {"threshold": float(thr[i]), "tpr": float(tpr[i]), "fpr": float(fpr[i]), "j": float(j[i]), "lower": lower}


def per_label_auroc(y_true, y_score, label_names: Sequence[str] | None = None) -> dict[str, float]:
    """AUROC per column of ``[n, L]`` label and score matrices, keyed by label name (NaN when undefined)."""
    y = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(y_score, dtype=np.float64)
    if y.ndim != 2 or y.shape != s.shape:
        raise ValueError(f"expected matching [n, L] matrices, got {y.shape} and {s.shape}")
    names = list(label_names) if label_names is not None else [str(j) for j in range(y.shape[1])]
    if len(names) != y.shape[1]:
        raise ValueError(f"{len(names)} label names for {y.shape[1]} columns")
    return {n: auroc(y[:, j], s[:, j]) for j, n in enumerate(names)}


def auroc_matrix(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """Vector of per-column AUROCs (NaN where undefined); the bootstrap statistic."""
    return np.array([auroc(y_true[:, j], y_score[:, j]) for j in range(y_true.shape[1])])


def mean_auroc(values) -> float:
    """Mean of the defined AUROCs (NaN entries skipped); NaN when none is defined."""
    v = np.asarray(list(values.values()) if isinstance(values, dict) else values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")
