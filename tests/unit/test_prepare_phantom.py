"""The phantom adapter, and the same phantom cohort prepared through its NIH on-disk layout."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fixtures_real import check_common, dataset_config, read_outputs
from synthcxr.data.phantom import PhantomConfig, render, sample_cohort, write_layout
from synthcxr.data.prepare import prepare
from synthcxr.data.splits import patient_key

LABELS = ["Cardiomegaly", "Effusion", "Edema", "No_Finding"]
PH = {"n_patients": 10, "max_studies": 3, "seed": 5}


@pytest.fixture(scope="module")
def phantom_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("ph")
    s = prepare(dataset_config("phantom", None, phantom=PH, views=["PA", "AP"]), LABELS, out)
    return out, s


def test_phantom_pixels_labels_and_splits(phantom_out):
    out, s = phantom_out
    res = read_outputs(out)
    check_common(res, LABELS)
    cohort = sample_cohort(PhantomConfig.from_section(PH))
    t = res["labels"]
    assert len(t) == len(cohort) == s["counts"]["seen"]
    for i, row in enumerate(cohort.to_dict("records")):
        np.testing.assert_array_equal(res["images"][32][i], render(row, 32))
        assert t.iloc[i]["patient_key"] == patient_key(row["patient_id"], "unit-test-salt")
        assert t.iloc[i]["view"] == row["view"] and t.iloc[i]["sex"] == row["sex"]
        for lab in ("Cardiomegaly", "Effusion", "No_Finding"):
            assert t.iloc[i][lab] == row[lab]
        assert math.isnan(t.iloc[i]["Edema"])
    assert any("Edema" in w for w in s["warnings"])
    n_pat = {k: v["n_patients"] for k, v in s["splits"].items()}
    assert n_pat == {"train": 6, "val": 2, "test": 2}


def test_view_filter_counts(tmp_path):
    s = prepare(dataset_config("phantom", None, phantom=PH, views=["PA"]), LABELS, tmp_path)
    cohort = sample_cohort(PhantomConfig.from_section(PH))
    assert s["counts"]["filtered_by_view"] == {"AP": int((cohort["view"] == "AP").sum())}
    assert s["counts"]["kept"] == int((cohort["view"] == "PA").sum())


def test_phantom_through_nih_layout_gives_the_same_dataset(phantom_out, tmp_path):
    out, _ = phantom_out
    root = write_layout(tmp_path / "nih", "nih", PhantomConfig.from_section(PH), 32)
    prepare(dataset_config("nih", root, phantom=PH), LABELS[:2] + ["No_Finding"], tmp_path / "out")
    a, b = read_outputs(out), read_outputs(tmp_path / "out")
    assert len(a["labels"]) == len(b["labels"])
    # identical pixels at every level (PNG is lossless and already square at max_res), same rows
    for r in a["images"]:
        np.testing.assert_array_equal(a["images"][r], b["images"][r])
    for col in ("Cardiomegaly", "Effusion", "No_Finding", "view", "sex"):
        assert list(a["labels"][col]) == list(b["labels"][col]), col


@pytest.mark.parametrize("layout,max_diff,mean_diff", [("dicom", 1, 0.05), ("mimic_jpg", 24, 3.0), ("chexpert", None, None)])
def test_phantom_layouts_round_trip(phantom_out, tmp_path, layout, max_diff, mean_diff):
    """The phantom's writers for each real layout, read back by the matching adapter."""
    out, _ = phantom_out
    ref = read_outputs(out)
    root = write_layout(tmp_path / layout, layout, PhantomConfig.from_section(PH), 32)
    s = prepare(dataset_config(layout, root), LABELS, tmp_path / "out")
    got = read_outputs(tmp_path / "out")
    check_common(got, LABELS)
    assert s["counts"]["kept"] == len(ref["labels"]) and s["counts"]["quarantined"] == 0
    if max_diff is None:  # CheXpert rows are regrouped into train.csv/valid.csv and carry uncertain labels
        return
    d = np.abs(got["images"][32].astype(int) - ref["images"][32].astype(int))
    assert d.max() <= max_diff and d.mean() <= mean_diff, (d.max(), d.mean())
    for lab in ("Cardiomegaly", "Effusion", "No_Finding"):
        assert list(got["labels"][lab]) == list(ref["labels"][lab]), lab
