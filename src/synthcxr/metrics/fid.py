"""Frechet Inception Distance between two feature sets (the pytorch-fid definition).

FID fits a Gaussian to each feature set and measures the Frechet (2-Wasserstein) distance between
the fits. Computing it exactly as the reference implementation does (``np.cov`` with
``rowvar=False``, ``scipy.linalg.sqrtm`` of ``sigma1 @ sigma2`` with an ``eps * I`` fallback) keeps
numbers comparable with published values when the ``inception`` extractor is used with the
``pytorch_fid`` resize and a comparable sample size: FID is biased upward by roughly a term in 1/N,
so numbers at different N (e.g. 1,000 here against 50,000 in a paper) are not comparable;
:func:`fid_infinity` removes that term.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import linalg

log = logging.getLogger("synthcxr")


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (``np.cov(rowvar=False)``) of ``[N, F]`` features, in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be a 2-D [N, F] array, got shape {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors to fit a Gaussian, got {f.shape[0]}")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or inf; check the feature extractor's input range")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    eps: float = 1e-6,
    imag_tol: float = 1e-3,
) -> float:
    """``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2))`` for two Gaussians.

    ``sqrtm`` of a product of (near-)singular covariances can fail or return non-finite values when
    there are fewer samples than feature dimensions; then ``eps * I`` is added to both covariances,
    as pytorch-fid does. Round-off leaves tiny imaginary parts, which are dropped; a large imaginary
    component means the covariances are not valid and is an error rather than a silent number.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors differ in length: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"covariances must both be {mu1.size}x{mu1.size}, got {sigma1.shape} and {sigma2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        log.warning("FID: sqrtm of the covariance product is singular; adding %g to the diagonals", eps)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        biggest = float(np.max(np.abs(covmean.imag)))
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=imag_tol):
            raise ValueError(
                f"FID: sqrtm returned an imaginary component of {biggest:.3g}; the feature covariances are "
                "not positive semi-definite (too few samples or non-finite features?)"
            )
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fid_from_features(features1: np.ndarray, features2: np.ndarray, eps: float = 1e-6) -> float:
    """FID between two ``[N, F]`` feature sets (same F, any N >= 2)."""
    f1, f2 = np.asarray(features1), np.asarray(features2)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature sets must be [N, F] with the same F, got {f1.shape} and {f2.shape}")
    return frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2), eps=eps)


def sample_sizes(n_max: int, points: int, smallest: float = 0.2) -> list[int]:
    """``points`` sample sizes evenly spaced in 1/N from ``smallest * n_max`` (at least 2) up to ``n_max``."""
    if n_max < 2:
        raise ValueError(f"FID needs at least 2 samples, got {n_max}")
    lo = max(2, int(round(smallest * n_max)))
    if points < 2 or lo >= n_max:
        return [int(n_max)]
    inv = np.linspace(1.0 / lo, 1.0 / n_max, points)
    return sorted({int(round(1.0 / v)) for v in inv})


def fid_infinity(
    features: np.ndarray, reference: np.ndarray, sizes: list[int], seed: int = 0
) -> tuple[float, float, list[dict]]:
    """FID extrapolated to infinitely many samples (Chong & Forsyth, CVPR 2020).

    FID_N is biased upward by a term linear in 1/N, so FID is computed on a random subset of ``features``
    of each size N in ``sizes`` (the ``reference`` set stays whole), a line ``FID_N = FID_inf + k / N`` is
    fitted by least squares, and its intercept is returned with the slope ``k`` and the points. Draws are
    nested prefixes of one permutation, so a larger N always contains the smaller subsets.
    """
    f = np.asarray(features)
    perm = np.random.default_rng(seed).permutation(len(f))
    pts = [{"n": int(n), "fid": fid_from_features(f[np.sort(perm[:n])], reference)} for n in sizes if 2 <= n <= len(f)]
    if len(pts) < 2:
        raise ValueError(f"FID_inf needs at least two sample sizes <= {len(f)}, got {sizes}")
    x = np.array([1.0 / p["n"] for p in pts])
    y = np.array([p["fid"] for p in pts])
    design = np.stack([np.ones_like(x), x], axis=1)
    (intercept, slope), *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(intercept), float(slope), pts
