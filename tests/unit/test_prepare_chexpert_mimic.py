"""CheXpert and MIMIC-CXR-JPG adapters on fixtures in their official layouts."""

from __future__ import annotations

import math

import pytest

from fixtures_real import CHEXPERT_OBS, check_common, dataset_config, read_outputs, write_chexpert, write_mimic
from synthcxr.data.prepare import prepare
from synthcxr.data.splits import patient_key

LABELS = ["Atelectasis", "Cardiomegaly", "Effusion", "Nodule", "No_Finding"]
SRC = {"Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Effusion": "Pleural Effusion",
       "No_Finding": "No Finding"}


def expected(cell: str, policy: str) -> float:
    """Independent statement of the CheXpert conventions: blank -> 0, -1 -> policy."""
    if cell == "":
        return 0.0
    v = float(cell)
    if v == -1.0:
        return {"ones": 1.0, "zeros": 0.0, "ignore": math.nan}[policy]
    return v


def expected_no_finding(raw: dict, policy: str) -> float:
    """No_Finding: 0 when any other observation resolves to 1, else the source's own cell."""
    if any(expected(raw[o], policy) == 1.0 for o in raw if o != "No Finding" and o in CHEXPERT_OBS):
        return 0.0
    return expected(raw["No Finding"], policy)


def expected_other(raw: dict, policy: str, configured: set[str]) -> float:
    """other_finding: 1 when an unconfigured observation resolves to 1, NaN when one is unknown."""
    vals = [expected(raw[o], policy) for o in CHEXPERT_OBS[1:] if o not in configured]
    return 1.0 if 1.0 in vals else (math.nan if any(math.isnan(v) for v in vals) else 0.0)


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.fixture(scope="module")
def chexpert(tmp_path_factory):
    root = tmp_path_factory.mktemp("chx")
    return root, write_chexpert(root)


@pytest.mark.parametrize("policy", ["ones", "zeros", "ignore"])
def test_chexpert_labels_views_quarantine(chexpert, tmp_path, policy):
    root, info = chexpert
    s = prepare(dataset_config("chexpert", root, chexpert_uncertain=policy), LABELS, tmp_path)
    res = read_outputs(tmp_path)
    check_common(res, LABELS)
    t = res["labels"]
    good = [p for p in info["rows"] if p not in info["lateral"] and p not in info["bad"]]
    assert len(t) == len(good)
    assert s["counts"]["filtered_by_view"] == {"LATERAL": len(info["lateral"])}
    assert dict(zip(res["quarantine"]["source"], res["quarantine"]["reason"])) == info["bad"]
    for i, rel in enumerate(good):
        row, raw = t.iloc[i], info["rows"][rel]
        assert row["patient_key"] == patient_key(info["patients"][rel], "unit-test-salt")
        assert row["view"] == raw["AP/PA"] and row["sex"] == raw["Sex"][0] and row["age"] == float(raw["Age"])
        for lab, src in SRC.items():
            want = expected_no_finding(raw, policy) if lab == "No_Finding" else expected(raw[src], policy)
            assert same(row[lab], want), (rel, lab, raw[src], row[lab])
        assert math.isnan(row["Nodule"])  # Lung Lesion covers Nodule and Mass: neither is derived
        assert same(row["other_finding"], expected_other(raw, policy, {SRC[n] for n in SRC}))
    assert any("Nodule" in w for w in s["warnings"])
    split = dict(zip(good, t["split"]))
    assert all(split[p] == "val" for p in good if p in info["valid"])
    assert all(split[p] in ("train", "test") for p in good if p not in info["valid"])


def test_chexpert_root_may_be_the_dataset_folder(chexpert, tmp_path):
    root, info = chexpert
    s = prepare(dataset_config("chexpert", root / "CheXpert-v1.0-small", views=["PA", "AP", "LATERAL"]), LABELS, tmp_path)
    assert s["counts"]["kept"] == len(info["rows"])  # bad rows are not in info["rows"]
    assert s["counts"]["filtered_by_view"] == {}


def test_mimic_join_split_and_quarantine(tmp_path):
    root = tmp_path / "mimic"
    info = write_mimic(root)
    s = prepare(dataset_config("mimic_jpg", root, chexpert_uncertain="zeros"), LABELS, tmp_path / "out")
    res = read_outputs(tmp_path / "out")
    check_common(res, LABELS)
    t = res["labels"]
    good = [d for d, v in info["images"].items() if v["view"] in ("PA", "AP")]
    assert len(t) == len(good)
    q = dict(zip(res["quarantine"]["source"], res["quarantine"]["reason"]))
    assert sorted(q.values()) == sorted(info["bad"].values())
    assert all(any(d in src for d in info["bad"]) for src in q)
    assert s["counts"]["filtered_by_view"] == {"LATERAL": sum(v["view"] == "LATERAL" for v in info["images"].values())}
    want_split = {"train": "train", "validate": "val", "test": "test"}
    for i, did in enumerate(good):
        row, v = t.iloc[i], info["images"][did]
        assert row["split"] == want_split[v["split"]]
        assert row["patient_key"] == patient_key(v["subject"], "unit-test-salt")
        assert row["sex"] is None and math.isnan(row["age"])
        for lab, src in SRC.items():
            raw = v["labels"]
            want = expected_no_finding(raw, "zeros") if lab == "No_Finding" else expected(raw[src], "zeros")
            assert same(row[lab], want), (did, lab)
        assert same(row["other_finding"], expected_other(v["labels"], "zeros", set(SRC.values())))
    text = (tmp_path / "out" / "labels.parquet").read_bytes()
    assert not any(v["subject"].encode() in text for v in info["images"].values())
