"""Where the phantom draws each finding (data.phantom.atlas) and the pairs' region check built on it."""

from __future__ import annotations

import numpy as np
import pytest

from synthcxr.data.phantom import PhantomConfig, render, sample_cohort
from synthcxr.data.phantom.atlas import _with, finding_atlas, region
from synthcxr.validate.pairs import region_shares

CFG = PhantomConfig.from_section({"n_patients": 300, "max_studies": 2, "seed": 5})


def test_region_keeps_the_fewest_pixels_holding_the_mass():
    a = np.array([[0.5, 0.2], [0.2, 0.1]])
    np.testing.assert_array_equal(region(a, 0.7), [[True, True], [False, False]])  # a tie goes to the first pixel
    np.testing.assert_array_equal(region(a, 0.71), [[True, True], [True, False]])
    assert region(a, 1.0).all()
    with pytest.raises(ValueError, match="region mass"):
        region(a, 0.0)


@pytest.fixture(scope="module")
def atlas():
    return finding_atlas(CFG, ["Cardiomegaly", "Effusion", "Pneumothorax"], 32, n=24, seed=0)


def test_atlas_is_a_distribution_that_holds_a_new_studys_own_change(atlas):
    for m in atlas.values():
        assert m.shape == (32, 32) and m.min() >= 0 and m.sum() == pytest.approx(1.0)
    cohort = sample_cohort(CFG)
    held = cohort.drop(cohort.sample(24, random_state=0).index).iloc[:6]  # studies the atlas never saw
    for name in atlas:
        own, other = [], []
        mask = region(atlas[name], 0.9)
        assert 0.02 < mask.mean() < 0.35  # a region, not the whole image
        for row in held.to_dict("records"):
            none = render(_with(row, ()), 32).astype(float)
            change = np.abs(render(_with(row, (name,)), 32) - none)
            own.append(change[mask].sum() / change.sum())
            foe = [f for f in atlas if f != name][0]
            c2 = np.abs(render(_with(row, (foe,)), 32) - none)
            other.append(c2[mask].sum() / c2.sum())
        assert np.median(own) > 0.6 and np.median(own) > np.median(other) + 0.2, (name, own, other)
    with pytest.raises(KeyError, match="no finding"):
        finding_atlas(CFG, ["Fracture"], 32)


def test_region_shares_against_a_hand_count():
    res = 8
    atlas = np.zeros((res, res))
    atlas[:2, :] = 1.0 / 16  # the region is the top two rows: a quarter of the image
    base = np.zeros((3, res, res), np.uint8)
    var = base.copy()
    var[0, 0, :] = 10  # all of the change inside
    var[1] = 4  # spread evenly: a quarter inside
    var[2, 5:, :] = 3  # all outside
    out = region_shares(base, var, ["+Effusion", "+Effusion", "-Effusion"], {"Effusion": atlas}, mass=1.0)
    plus, minus = out["per_edit"]["+Effusion"], out["per_edit"]["-Effusion"]
    assert plus["n"] == 2 and plus["region_area"] == 0.25
    assert plus["inside_median"] == pytest.approx((1.0 + 0.25) / 2) and plus["enrichment"] == pytest.approx(2.5)
    assert minus["inside_median"] == 0.0
    assert out["inside_median"] == pytest.approx(0.25)
