import numpy as np
import pytest

from synthcxr.metrics.kid import kid, mmd2_unbiased, polynomial_kernel


def _mmd_loops(x, y):
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    syy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return sxx + syy - 2 * sxy


def test_polynomial_kernel_hand_value():
    x = np.array([[1.0, 2.0]])
    y = np.array([[3.0, -1.0]])
    assert polynomial_kernel(x, y)[0, 0] == pytest.approx(1.5**3)  # ((3 - 2) / 2 + 1) ** 3


def test_mmd2_matches_explicit_double_sums():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 5))
    y = rng.normal(0.5, 1.0, size=(9, 5))
    assert mmd2_unbiased(x, y) == pytest.approx(_mmd_loops(x, y), rel=1e-10)


def test_kid_mean_std_over_subsets_reproducible_by_hand():
    rng = np.random.default_rng(1)
    r = rng.normal(size=(40, 4))
    g = rng.normal(0.8, 1.0, size=(30, 4))
    mean, std = kid(r, g, n_subsets=5, subset_size=10, seed=7)
    sub = np.random.default_rng(7)
    vals = []
    for _ in range(5):
        a = r[sub.choice(40, 10, replace=False)]
        b = g[sub.choice(30, 10, replace=False)]
        vals.append(_mmd_loops(a, b))
    assert mean == pytest.approx(np.mean(vals), rel=1e-10)
    assert std == pytest.approx(np.std(vals), rel=1e-10)
    assert mean > 0


def test_kid_same_distribution_near_zero_and_shift_positive():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(300, 8))
    b = rng.normal(size=(300, 8))
    c = rng.normal(1.0, 1.0, size=(300, 8))
    m_same, s_same = kid(a, b, n_subsets=10, subset_size=100, seed=0)
    m_diff, _ = kid(a, c, n_subsets=10, subset_size=100, seed=0)
    assert abs(m_same) < 3 * s_same + 1e-3
    assert m_diff > 10 * abs(m_same)


def test_kid_subset_size_capped_and_errors():
    rng = np.random.default_rng(3)
    mean, _ = kid(rng.normal(size=(5, 3)), rng.normal(size=(4, 3)), n_subsets=2, subset_size=1000)
    assert np.isfinite(mean)
    with pytest.raises(ValueError, match="same F"):
        kid(rng.normal(size=(5, 3)), rng.normal(size=(5, 2)))
