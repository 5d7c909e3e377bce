import numpy as np
import pytest
from scipy import linalg

from synthcxr.metrics.fid import fid_from_features, frechet_distance, gaussian_stats


def _reference_fid(f1, f2):
    """Independent route: Tr sqrt(S1 S2) = Tr sqrt(sqrt(S1) S2 sqrt(S1)), via symmetric eigendecompositions."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1 = np.cov(f1, rowvar=False)
    s2 = np.cov(f2, rowvar=False)
    w, v = linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ s2 @ root1
    ev = linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = np.sqrt(np.clip(ev, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def test_fid_matches_eigendecomposition_reference():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 16)) @ rng.normal(size=(16, 16))
    b = rng.normal(0.3, 1.2, size=(300, 16)) @ rng.normal(size=(16, 16))
    ours = fid_from_features(a, b)
    ref = _reference_fid(a, b)
    assert ours > 1.0
    assert abs(ours - ref) / ref < 1e-6


def test_fid_identical_sets_is_zero_and_symmetric():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(200, 8))
    assert abs(fid_from_features(a, a)) < 1e-6
    b = rng.normal(1.0, 2.0, size=(250, 8))
    assert fid_from_features(a, b) == pytest.approx(fid_from_features(b, a), rel=1e-7)


def test_fid_one_dimensional_hand_computation():
    # 1-D Gaussians: (m1-m2)^2 + s1^2 + s2^2 - 2 s1 s2 = (m1-m2)^2 + (s1-s2)^2
    x = np.array([[0.0], [2.0]])  # mean 1, var 2 (ddof=1)
    y = np.array([[3.0], [5.0], [7.0]])  # mean 5, var 4
    expected = (1 - 5) ** 2 + (np.sqrt(2) - 2) ** 2
    assert fid_from_features(x, y) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance([1.0], [[2.0]], [5.0], [[4.0]]) == pytest.approx(expected, rel=1e-9)


def test_fid_singular_covariances_use_eps_fallback():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(5, 20))  # fewer samples than dimensions: rank-deficient covariance
    b = rng.normal(size=(6, 20))
    v = fid_from_features(a, b)
    assert np.isfinite(v) and v > 0


def test_gaussian_stats_matches_numpy_and_validates_input():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(50, 4))
    mu, s = gaussian_stats(a)
    np.testing.assert_allclose(mu, a.mean(0))
    np.testing.assert_allclose(s, np.cov(a, rowvar=False))
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_stats(a[:1])
    with pytest.raises(ValueError, match="NaN"):
        gaussian_stats(np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match="same F"):
        fid_from_features(a, rng.normal(size=(10, 3)))
