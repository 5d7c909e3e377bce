"""Kernel Inception Distance: unbiased MMD^2 with the cubic polynomial kernel, averaged over subsets.

Unlike FID, the KID estimator is unbiased in the number of samples, so it is the fairer number when
the generated and real sets are small (the CPU demo) or of different sizes. Subsets of a fixed size
are drawn without replacement from each set; the mean and standard deviation over subsets are
reported, following Binkowski et al. (2018).
"""

from __future__ import annotations

import numpy as np


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``k(x, y) = (x . y / d + 1) ** 3`` for every pair of rows (``d`` = feature dimension)."""
    d = x.shape[1]
    return (x @ y.T / d + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between samples ``x [m, d]`` and ``y [n, d]`` under :func:`polynomial_kernel`.

    The within-set sums leave out the diagonal (``i == j``) terms, which is what makes it unbiased.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"unbiased MMD needs at least 2 samples per set, got {m} and {n}")
    kxx = polynomial_kernel(x, x)
    kyy = polynomial_kernel(y, y)
    kxy = polynomial_kernel(x, y)
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def kid(
    real: np.ndarray,
    generated: np.ndarray,
    n_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Mean and standard deviation of :func:`mmd2_unbiased` over ``n_subsets`` random subsets.

    ``subset_size`` is capped at the smaller set's size so small demo sets still give a number.
    """
    real = np.asarray(real, np.float64)
    generated = np.asarray(generated, np.float64)
    if real.ndim != 2 or generated.ndim != 2 or real.shape[1] != generated.shape[1]:
        raise ValueError(f"feature sets must be [N, F] with the same F, got {real.shape} and {generated.shape}")
    if n_subsets < 1:
        raise ValueError(f"n_subsets must be >= 1, got {n_subsets}")
    size = min(int(subset_size), len(real), len(generated))
    rng = np.random.default_rng(seed)
    values = np.empty(n_subsets)
    for i in range(n_subsets):
        a = real[rng.choice(len(real), size, replace=False)]
        b = generated[rng.choice(len(generated), size, replace=False)]
        values[i] = mmd2_unbiased(a, b)
    return float(values.mean()), float(values.std())
