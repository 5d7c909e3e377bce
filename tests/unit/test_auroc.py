"""AUROC, ROC curve, Youden point and bootstrap CIs against scikit-learn, scipy and hand computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from synthcxr.metrics.auroc import auroc, average_ranks, mean_auroc, per_label_auroc, roc_curve, youden_threshold
from synthcxr.metrics.bootstrap import bootstrap_ci, bootstrap_distribution, percentile_interval


def _tied_data(rng, n, levels):
    y = (rng.random(n) < rng.uniform(0.1, 0.9)).astype(float)
    s = np.round(rng.normal(size=n) + 0.8 * y, levels)  # rounding creates many ties
    return y, s


@pytest.mark.parametrize("seed", range(12))
def test_auroc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y, s = _tied_data(rng, int(rng.integers(5, 400)), int(rng.integers(0, 3)))
    if y.min() == y.max():
        y[0] = 1 - y[0]
    assert abs(auroc(y, s) - roc_auc_score(y, s)) <= 1e-12


def test_average_ranks_match_scipy():
    rng = np.random.default_rng(3)
    v = rng.integers(0, 7, 200).astype(float)
    np.testing.assert_array_equal(average_ranks(v), stats.rankdata(v, method="average"))


def test_auroc_hand_computed_and_edge_cases():
    # positives 0.9, 0.5 ; negatives 0.5, 0.1 -> pairs: (0.9>0.5)=1 (0.9>0.1)=1 (0.5=0.5)=0.5 (0.5>0.1)=1
    assert auroc([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]) == pytest.approx(3.5 / 4, abs=0)
    assert auroc([1, 0], [0.0, 1.0]) == 0.0
    assert np.isnan(auroc([1, 1, np.nan], [0.2, 0.3, 0.4]))  # only positives left
    # NaN labels are ignored, not treated as negatives
    assert auroc([1, np.nan, 0], [0.9, 0.95, 0.1]) == 1.0
    with pytest.raises(ValueError, match="0, 1 or NaN"):
        auroc([2, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="must match"):
        auroc([1, 0, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        auroc([1, 0], [np.nan, 0.2])


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("drop", [True, False])
def test_roc_curve_matches_sklearn(seed, drop):
    rng = np.random.default_rng(100 + seed)
    y, s = _tied_data(rng, int(rng.integers(10, 300)), int(rng.integers(0, 3)))
    y[:2] = [0, 1]
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=drop)
    sfpr, stpr, sthr = sk_roc_curve(y, s, drop_intermediate=drop)
    np.testing.assert_allclose(fpr, sfpr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(tpr, stpr, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(thr, sthr)
    # trapezoidal area of our curve equals the rank statistic
    assert abs(np.trapezoid(tpr, fpr) - auroc(y, s)) <= 1e-12


def test_youden_threshold_brute_force():
    rng = np.random.default_rng(5)
    y, s = _tied_data(rng, 150, 1)
    best = youden_threshold(y, s)
    # brute force over every candidate threshold with the ">= threshold" rule
    js = []
    for t in np.unique(s):
        pred = s >= t
        js.append((pred[y == 1].mean() - pred[y == 0].mean(), t))
    jmax = max(j for j, _ in js)
    assert best["j"] == pytest.approx(jmax, abs=1e-12)
    assert best["threshold"] == max(t for j, t in js if abs(j - jmax) <= 1e-12)
    pred = s >= best["threshold"]
    assert best["tpr"] == pytest.approx(pred[y == 1].mean()) and best["fpr"] == pytest.approx(pred[y == 0].mean())
    assert np.isnan(youden_threshold([1, 1], [0.1, 0.2])["threshold"])


def test_youden_plateau_lower_end():
    """Every cut in (lower, threshold] reaches the maximal J; the cut at ``lower`` itself does not."""
    rng = np.random.default_rng(8)
    for trial in range(20):
        y, s = _tied_data(rng, 60, trial)
        if y.min() == y.max():
            continue
        best = youden_threshold(y, s)

        def j_at(t):
            pred = s >= t
            return pred[y == 1].mean() - pred[y == 0].mean()

        inside = np.unique(s[(s > best["lower"]) & (s <= best["threshold"])])
        assert inside.size >= 1 and all(j_at(t) == pytest.approx(best["j"], abs=1e-12) for t in inside)
        if np.isfinite(best["lower"]):
            assert best["lower"] in s and best["lower"] < best["threshold"]
            assert j_at(best["lower"]) < best["j"] - 1e-12
    # separable data: the plateau runs from the highest negative to the lowest positive score
    sep = youden_threshold([0, 0, 0, 1, 1], [0.1, 0.3, 0.4, 0.8, 0.9])
    assert (sep["threshold"], sep["lower"], sep["j"]) == (0.8, 0.4, 1.0)


def test_per_label_and_mean():
    rng = np.random.default_rng(9)
    y = (rng.random((80, 3)) < 0.4).astype(float)
    s = rng.random((80, 3)) + y
    y[:, 2] = 0  # absent class -> NaN, skipped by the mean
    y[5, 0] = np.nan
    res = per_label_auroc(y, s, ["A", "B", "C"])
    keep = ~np.isnan(y[:, 0])
    assert res["A"] == pytest.approx(roc_auc_score(y[keep, 0], s[keep, 0]), abs=1e-12)
    assert res["B"] == pytest.approx(roc_auc_score(y[:, 1], s[:, 1]), abs=1e-12)
    assert np.isnan(res["C"])
    assert mean_auroc(res) == pytest.approx((res["A"] + res["B"]) / 2)
    with pytest.raises(ValueError, match="label names"):
        per_label_auroc(y, s, ["A"])


def test_bootstrap_ci_hand_computation():
    x = np.arange(10.0)
    lo, hi = bootstrap_ci(np.mean, x, n=500, seed=4, alpha=0.1)
    idx = np.random.default_rng(4).integers(0, 10, size=(500, 10))
    means = x[idx].mean(axis=1)
    assert lo == pytest.approx(np.percentile(means, 5), abs=1e-12)
    assert hi == pytest.approx(np.percentile(means, 95), abs=1e-12)
    # deterministic under the seed, different under another seed
    assert bootstrap_ci(np.mean, x, n=500, seed=4, alpha=0.1) == (lo, hi)
    assert bootstrap_ci(np.mean, x, n=500, seed=5, alpha=0.1) != (lo, hi)


def test_bootstrap_ci_matches_scipy_percentile():
    # scipy draws resample indices the same way (Generator.integers(0, m, (n, m))), so with the same
    # seed the percentile intervals agree to rounding; a basic/BCa interval would not.
    rng = np.random.default_rng(0)
    x = rng.exponential(size=200)
    for alpha in (0.05, 0.2):
        lo, hi = bootstrap_ci(np.mean, x, n=2000, seed=1, alpha=alpha)
        ref = stats.bootstrap(
            (x,), np.mean, n_resamples=2000, method="percentile", confidence_level=1 - alpha,
            rng=np.random.default_rng(1),
        ).confidence_interval
        assert lo == pytest.approx(ref.low, abs=1e-12) and hi == pytest.approx(ref.high, abs=1e-12)


def test_bootstrap_paired_vector_statistic_and_nan():
    y = np.array([1, 0, 0, 0, 0, 0, 0, 0, 1, 0], float)
    s = np.linspace(0, 1, 10)
    dist = bootstrap_distribution(lambda a, b: [auroc(a, b), a.mean()], y, s, n=300, seed=0)
    assert dist.shape == (300, 2)
    idx = np.random.default_rng(0).integers(0, 10, size=(300, 10))
    assert dist[7, 0] == auroc(y[idx[7]], s[idx[7]]) or np.isnan(dist[7, 0])
    n_nan = np.isnan(dist[:, 0]).sum()
    assert n_nan > 0  # some resamples draw no positive
    lo, hi = percentile_interval(dist)
    ok = dist[~np.isnan(dist[:, 0]), 0]
    assert lo[0] == pytest.approx(np.percentile(ok, 2.5)) and hi[0] == pytest.approx(np.percentile(ok, 97.5))
    with pytest.raises(ValueError, match="same number of rows"):
        bootstrap_ci(np.mean, y, s[:5], n=10, seed=0)
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci(np.mean, y, n=10, seed=0, alpha=1.5)
