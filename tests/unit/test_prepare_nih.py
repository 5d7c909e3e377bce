"""NIH ChestX-ray14 adapter on a fixture in the official layout, with every bad-input kind."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fixtures_real import check_common, dataset_config, read_outputs, write_nih
from synthcxr.config import ConfigError
from synthcxr.data.prepare import prepare
from synthcxr.data.splits import patient_key

LABELS = ["Atelectasis", "Effusion", "Pleural_Thickening", "Nodule", "No_Finding"]


@pytest.fixture(scope="module")
def nih(tmp_path_factory):
    root = tmp_path_factory.mktemp("nih")
    info = write_nih(root)
    out0 = tmp_path_factory.mktemp("out0")
    summary = prepare(dataset_config("nih", root), LABELS, out0)
    return root, info, out0, summary


def test_outputs_labels_and_quarantine(nih):
    root, info, out, summary = nih
    res = read_outputs(out)
    check_common(res, LABELS)
    t = res["labels"]
    good = [k for k in info["labels"]]
    assert len(t) == len(good)
    q = dict(zip(res["quarantine"]["source"], res["quarantine"]["reason"]))
    assert q == info["bad"]
    assert summary["counts"]["quarantined_by_reason"] == {k: 1 for k in sorted(info["bad"].values())}
    # labels: rows follow CSV order, ids are salted pseudonyms; compare with the written findings
    for i, name in enumerate(good):
        row = t.iloc[i]
        assert row["patient_key"] == patient_key(info["patients"][name], "unit-test-salt")
        assert row["patient_key"] != info["patients"][name]
        found = info["labels"][name]
        for lab in LABELS:
            want = float(not found) if lab == "No_Finding" else float(lab in found)
            assert row[lab] == want, (name, lab)
    assert set(t["sex"]) == {"M", "F"} and t["age"].between(30, 60).all()
    assert summary["resolutions"] == [4, 8, 16, 32]
    assert res["attrs"]["source_format"] == "nih" and int(res["attrs"]["max_res"]) == 32


def test_pixels_match_pil_reference(nih):
    _, info, out, _ = nih
    res = read_outputs(out)
    diffs = []
    for i, name in enumerate(info["labels"]):
        src = info["images"][name]
        h, w = src.shape
        s = min(h, w)
        crop = src[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        ref = np.asarray(Image.fromarray(crop).resize((32, 32), Image.LANCZOS)).astype(int)
        diffs.append(np.abs(ref - res["images"][32][i].astype(int)))
    d = np.stack(diffs)
    assert d.max() <= 3 and d.mean() < 0.3, (d.max(), d.mean())
    # lower levels are box means of the stored 32 px level
    r8 = res["images"][32].reshape(-1, 8, 4, 8, 4).astype(float).mean(axis=(2, 4))
    np.testing.assert_array_equal(res["images"][8], np.rint(r8).astype(np.uint8))


def test_official_lists_and_patient_split(nih):
    _, info, out, _ = nih
    t = read_outputs(out)["labels"]
    names = list(info["labels"])
    split = dict(zip(names, t["split"]))
    assert all(split[n] == "test" for n in names if n in info["test"])
    assert all(split[n] in ("train", "val") for n in names if n in info["train_val"])
    assert (t["split"] == "val").any() and (t["split"] == "train").any()


def test_no_raw_ids_in_tables(nih):
    _, info, out, _ = nih
    text = (out / "labels.parquet").read_bytes() + (out / "prepare.json").read_bytes()
    for name, pid in info["patients"].items():
        assert f"{int(pid):08d}".encode() not in text
        assert name.encode() not in text


def test_workers_do_not_change_outputs(nih, tmp_path):
    root, _, out0, _ = nih
    prepare(dataset_config("nih", root, workers=2), LABELS, tmp_path)
    a, b = read_outputs(out0), read_outputs(tmp_path)
    for r in a["images"]:
        np.testing.assert_array_equal(a["images"][r], b["images"][r])
    assert a["labels"].equals(b["labels"])
    # byte-identical files (no timestamps in HDF5 object headers, no timings in prepare.json)
    for name in ("images.h5", "labels.parquet", "quarantine.csv"):
        assert (out0 / name).read_bytes() == (tmp_path / name).read_bytes(), name
    a["summary"]["config"].pop("workers"), b["summary"]["config"].pop("workers")
    assert a["summary"] == b["summary"]


def test_images_under_plain_images_folder_and_no_official_lists(tmp_path):
    root = tmp_path / "nih"
    info = write_nih(root, n_patients=6, bad=False, official=False)
    (root / "images").mkdir()
    for sub in ("images_001", "images_002"):
        for p in (root / sub / "images").iterdir():
            p.rename(root / "images" / p.name)
    s = prepare(dataset_config("nih", root), LABELS, tmp_path / "out")
    assert s["counts"]["kept"] == len(info["labels"]) and s["counts"]["quarantined"] == 0
    assert not any("official" in n for n in s["label_notes"])


def test_config_errors_fail_fast(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="dataset.root"):
        prepare(dataset_config("nih", tmp_path / "nowhere"), LABELS, out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="Data_Entry_2017.csv"):
        prepare(dataset_config("nih", tmp_path / "empty"), LABELS, out)
    with pytest.raises(ConfigError, match="dataset.format"):
        prepare(dataset_config("xray9000", tmp_path / "empty"), LABELS, out)
    with pytest.raises(ConfigError, match="labels"):
        prepare(dataset_config("nih", tmp_path / "empty"), ["Effusion", "Dragon"], out)
    with pytest.raises(ConfigError, match="dataset.split"):
        prepare(dataset_config("nih", tmp_path / "empty", split={"train": 0.9, "val": 0.2, "test": 0.1}), LABELS, out)
    assert not out.exists() or not any(out.iterdir())


def test_failure_leaves_no_complete_looking_outputs(tmp_path, monkeypatch):
    root = tmp_path / "nih"
    write_nih(root, n_patients=4, bad=False)
    import synthcxr.data.prepare as mod

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(mod, "split_summary", boom)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="disk full"):
        prepare(dataset_config("nih", root), LABELS, out)
    assert sorted(p.name for p in out.iterdir()) == []


def test_permission_denied_is_quarantined(tmp_path, monkeypatch):
    root = tmp_path / "nih"
    info = write_nih(root, n_patients=3, bad=False)
    victim = next(iter(info["labels"]))
    import builtins

    real_open = builtins.open

    def guarded(file, *a, **k):
        if str(file).endswith(victim):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", guarded)
    s = prepare(dataset_config("nih", root), LABELS, tmp_path / "out")
    assert s["counts"]["quarantined_by_reason"] == {"unreadable": 1}


def test_duplicate_rows_are_quarantined_before_decoding(tmp_path):
    root = tmp_path / "nih"
    info = write_nih(root, n_patients=3, bad=False)
    csv = root / "Data_Entry_2017.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([*lines, lines[1]]) + "\n")
    out = tmp_path / "out"
    s = prepare(dataset_config("nih", root), LABELS, out)
    assert s["counts"]["kept"] == len(info["labels"])
    assert s["counts"]["quarantined_by_reason"] == {"duplicate": 1}
    assert s["counts"]["seen"] == len(info["labels"]) + 1


def test_no_usable_image_is_a_clear_error(tmp_path):
    root = tmp_path / "nih"
    write_nih(root, n_patients=2, bad=False)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="dataset.views"):
        prepare(dataset_config("nih", root, views=["LL"]), LABELS, out)
    assert not out.exists() or not any(out.iterdir())
