import numpy as np
import pytest
import torch

from synthcxr.metrics.prdc import knn_radii, precision_recall


def test_identical_sets_give_full_precision_recall():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(100, 6))
    out = precision_recall(a, a.copy(), k=3)
    assert out["precision"] == 1.0 and out["recall"] == 1.0 and out["coverage"] == 1.0


def test_disjoint_far_sets_give_zero():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(80, 6))
    b = rng.normal(size=(80, 6)) + 100.0
    out = precision_recall(a, b, k=3)
    assert out == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_mode_collapse_keeps_precision_loses_recall():
    # generated samples cover only one of two real clusters
    rng = np.random.default_rng(2)
    real = np.r_[rng.normal(size=(100, 2)), rng.normal(size=(100, 2)) + 20]
    gen = rng.normal(size=(100, 2))
    out = precision_recall(real, gen, k=3, chunk=37)
    assert out["precision"] > 0.9
    assert 0.4 < out["recall"] < 0.6


def test_knn_radii_match_brute_force():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 4))
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    expected = np.sort(d, axis=1)[:, 2]  # column 0 is the point itself
    np.testing.assert_allclose(knn_radii(x, 2, chunk=7).numpy(), expected, rtol=1e-10)
    with pytest.raises(ValueError, match="k must be"):
        knn_radii(torch.zeros(3, 2, dtype=torch.float64), 3)


def test_precision_by_hand_small_case():
    real = np.array([[0.0], [1.0], [2.0], [10.0]])
    # k=1 radii of real: 1, 1, 1, 8 -> balls [-1,1], [0,2], [1,3], [2,18]
    gen = np.array([[0.5], [20.0], [-5.0]])
    out = precision_recall(real, gen, k=1)
    assert out["precision"] == pytest.approx(1 / 3)
