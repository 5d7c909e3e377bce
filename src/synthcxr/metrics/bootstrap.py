"""Percentile bootstrap confidence intervals for any statistic of paired arrays.

Rows are resampled with replacement, jointly across the arrays (row i of every array stays together).
With ``clusters`` (one id per row, e.g. the patient key) whole clusters are resampled instead: a
patient's follow-up images are correlated, so resampling images alone treats them as independent and
gives intervals that are too narrow. Resamples where the statistic is undefined (NaN, e.g. a class
drawn zero times) are skipped per component and counted, instead of silently biasing the interval.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np


def resample_indices(m: int, n: int, seed: int, clusters=None) -> list[np.ndarray]:
    """Row indices of ``n`` bootstrap resamples of ``m`` rows.

    Without clusters, resample ``b`` is ``np.random.default_rng(seed).integers(0, m, size=(n, m))[b]``.
    With clusters (``m`` ids, any hashable values), the ``k`` distinct clusters are numbered in sorted
    order, resample ``b`` draws ``default_rng(seed).integers(0, k, size=(n, k))[b]`` and takes every row
    of each drawn cluster (in row order, a cluster drawn twice contributing twice), so a caller or a test
    can rebuild any resample exactly.
    """
    rng = np.random.default_rng(seed)
    if clusters is None:
        return list(rng.integers(0, m, size=(n, m)))
    ids = np.asarray(clusters)
    if len(ids) != m:
        raise ValueError(f"clusters must give one id per row: {len(ids)} ids for {m} rows")
    _, code = np.unique(ids, return_inverse=True)
    k = int(code.max()) + 1
    members = [np.flatnonzero(code == c) for c in range(k)]
    return [np.concatenate([members[c] for c in draw]) for draw in rng.integers(0, k, size=(n, k))]


def bootstrap_distribution(stat_fn: Callable[..., object], *arrays, n: int, seed: int, clusters=None) -> np.ndarray:
    """``[n, *stat_shape]`` values of ``stat_fn`` on ``n`` resamples of the rows of ``arrays``
    (rows or, with ``clusters``, whole clusters: see :func:`resample_indices`)."""
    if not arrays:
        raise ValueError("bootstrap needs at least one array")
    if n < 1:
        raise ValueError(f"bootstrap n must be >= 1, got {n}")
    arrs = [np.asarray(a) for a in arrays]
    m = len(arrs[0])
    if any(len(a) != m for a in arrs):
        raise ValueError(f"arrays must have the same number of rows, got {[len(a) for a in arrs]}")
    if m == 0:
        raise ValueError("cannot bootstrap empty arrays")
    idx = resample_indices(m, n, seed, clusters)
    return np.stack([np.asarray(stat_fn(*(a[i] for a in arrs)), dtype=np.float64) for i in idx])


def bootstrap_ci(
    stat_fn: Callable[..., object], *arrays, n: int, seed: int, alpha: float = 0.05, clusters=None
) -> tuple[np.ndarray | float, np.ndarray | float]:
    """Percentile ``1 - alpha`` interval ``(low, high)`` of ``stat_fn`` over ``n`` bootstrap resamples.

    ``stat_fn`` may return a scalar or a vector (e.g. one AUROC per label: one resampling then serves
    every label). Bounds are ``np.nanpercentile`` at ``100*alpha/2`` and ``100*(1-alpha/2)`` (linear
    interpolation), NaN for a component that was never defined. ``clusters``: resample whole clusters.
    """
    dist = bootstrap_distribution(stat_fn, *arrays, n=n, seed=seed, clusters=clusters)
    return percentile_interval(dist, alpha)


def percentile_interval(dist: np.ndarray, alpha: float = 0.05) -> tuple[np.ndarray | float, np.ndarray | float]:
    """``(low, high)`` percentile bounds of a bootstrap distribution ``[n, ...]``, NaN resamples skipped."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN component -> NaN bound
        lo = np.nanpercentile(dist, 100 * alpha / 2, axis=0)
        hi = np.nanpercentile(dist, 100 * (1 - alpha / 2), axis=0)
    if np.ndim(lo) == 0:
        return float(lo), float(hi)
    return lo, hi


def n_defined(dist: np.ndarray) -> np.ndarray | int:
    """How many resamples gave a defined (non-NaN) value, per component."""
    c = np.sum(~np.isnan(dist), axis=0)
    return int(c) if np.ndim(c) == 0 else c
