"""Patient pseudonyms and patient-level splits."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from synthcxr.data.splits import assign_splits, patient_key, pseudonym, split_summary

FR = {"train": 0.7, "val": 0.15, "test": 0.15}


def test_patient_key_is_salted_sha256_and_stable():
    k = patient_key("00001234", "salt-abcdefgh")
    assert k == hashlib.sha256(b"salt-abcdefgh\x0000001234").hexdigest()
    assert k == patient_key(" 00001234 ", "salt-abcdefgh")  # whitespace-normalised
    assert k != patient_key("00001234", "other-salt-123")
    assert k != hashlib.sha256(b"00001234").hexdigest() and "00001234" not in k
    assert len(k) == 64
    with pytest.raises(ValueError):
        patient_key("", "salt-abcdefgh")
    assert pseudonym("00001234_000.png", "salt-abcdefgh").startswith("img-")


def _keys(n_patients, per=3, seed=0):
    rng = np.random.default_rng(seed)
    pats = [patient_key(f"P{i}", "saltsalt") for i in range(n_patients)]
    return [p for p in pats for _ in range(int(rng.integers(1, per + 1)))]


def test_patient_disjoint_exact_fractions_and_deterministic():
    keys = _keys(200)
    s = assign_splits(keys, FR, seed=5)
    df = pd.DataFrame({"k": keys, "s": s})
    assert (df.groupby("k")["s"].nunique() == 1).all()
    per_patient = df.drop_duplicates("k")["s"].value_counts().to_dict()
    assert per_patient == {"train": 140, "val": 30, "test": 30}
    np.testing.assert_array_equal(s, assign_splits(keys, FR, seed=5))
    # order of images does not matter
    perm = np.random.default_rng(1).permutation(len(keys))
    s2 = assign_splits([keys[i] for i in perm], FR, seed=5)
    np.testing.assert_array_equal(s2, s[perm])
    assert not np.array_equal(s, assign_splits(keys, FR, seed=6))


def test_largest_remainder_counts():
    keys = [f"k{i}" for i in range(7)]
    s = assign_splits(keys, {"train": 0.5, "val": 0.25, "test": 0.25}, seed=0)
    # 3.5 / 1.75 / 1.75 -> floors 3/1/1, two leftovers go to the largest remainders (val, test)
    assert sorted(pd.Series(s).value_counts().to_dict().items()) == [("test", 2), ("train", 3), ("val", 2)]


def test_official_tags_honoured_and_conflicts_resolved():
    keys = ["a", "a", "b", "c", "d", "e", "f", "g", "h", "h"]
    tags = ["test", "train_val", "test", "train_val", "train_val", "train_val", "train_val", None, "val", "train"]
    s = dict(zip(keys, assign_splits(keys, FR, seed=0, official=tags)))
    assert s["a"] == "test" and s["b"] == "test"  # any image in the test list puts the patient in test
    assert s["h"] == "val"
    assert all(s[k] in ("train", "val") for k in "cdef")
    with pytest.raises(ValueError):
        assign_splits(["a"], FR, 0, official=["holdout"])


def test_split_summary_numbers():
    t = pd.DataFrame({
        "patient_key": ["p1", "p1", "p2", "p3"], "split": ["train", "train", "train", "test"],
        "A": [1.0, 0.0, np.nan, 1.0],
    })
    s = split_summary(t, ["A"])
    assert s["train"]["n_images"] == 3 and s["train"]["n_patients"] == 2
    assert s["train"]["prevalence"]["A"] == pytest.approx(0.5) and s["train"]["n_unknown"]["A"] == 1
    assert s["val"]["n_images"] == 0 and s["val"]["prevalence"]["A"] is None
