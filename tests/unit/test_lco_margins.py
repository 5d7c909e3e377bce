"""Per-label, per-side acceptance margins: calibration against hand computations, the rule they feed,
the lco_margins job on a real prepared split, and LCO stopping at each label's own cut."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.special import expit, logit

from synthcxr.lco.accept import accept_rule, margin_thresholds, resolve_label_space, unmet_reason
from synthcxr.lco.margins import MIN_COUNT, calibrate_margins, read_margins, run_margins

LABELS = ["Cardiomegaly", "Effusion", "No_Finding"]


def _probs_at(thr: float, logits_past: list[float]) -> list[float]:
    return [float(expit(logit(thr) + d)) for d in logits_past]


def test_calibrate_margins_hand_computation():
    # label 0, threshold 0.5: called positives 0.5, 1, 2, 4 logits past (median 1.5); one missed positive (-1)
    # is not counted; called negatives 1, 3, 3, 7 logits below (median 3); one false positive is not counted
    thr = [0.5, 0.2]
    p0 = _probs_at(0.5, [0.5, 1, 2, 4, -1]) + _probs_at(0.5, [-1, -3, -3, -7, 0.5])
    y0 = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    # label 1, threshold 0.2: positives 6 and 8 logits past (median 7, capped at 5); negatives: 2 only
    p1 = _probs_at(0.2, [6, 8]) + _probs_at(0.2, [-2]) + _probs_at(0.2, [3] * 7)
    y1 = [1, 1, 0] + [np.nan] * 7
    probs = np.array([p0, p1]).T
    y = np.array([y0, y1], dtype=float).T
    out = calibrate_margins(y, probs, thr, ["A", "B"], cap=5.0, quantile=0.5, min_count=2)
    assert out["A"]["above"] == pytest.approx(1.5, abs=1e-9) and out["A"]["below"] == pytest.approx(3.0, abs=1e-9)
    assert (out["A"]["n_pos_called"], out["A"]["n_neg_called"]) == (4, 4)
    assert out["B"]["raw_above"] == pytest.approx(7.0, abs=1e-9) and out["B"]["above"] == 5.0  # capped
    assert out["B"]["n_neg_called"] == 1 and out["B"]["below"] == 5.0 and out["B"]["raw_below"] is None
    assert "below: 1 real val scans called right, fewer than 2" in out["B"]["note"]
    # the quantile is numpy's linear one: q = 0.25 of (0.5, 1, 2, 4) is 0.875
    assert calibrate_margins(y, probs, thr, ["A", "B"], 5.0, 0.25, min_count=2)["A"]["above"] == pytest.approx(0.875, abs=1e-9)
    # null quantile: the cap everywhere, nothing scored
    fixed = calibrate_margins(y, probs, thr, ["A", "B"], 3.0, None)
    assert all(r["below"] == r["above"] == 3.0 for r in fixed.values())
    with pytest.raises(ValueError, match="margin_quantile"):
        calibrate_margins(y, probs, thr, ["A", "B"], 3.0, 1.0)


def test_margin_thresholds_per_label_and_side_match_scipy():
    thr = np.array([0.5, 0.2, np.nan])
    m = np.array([[1.0, 0.0, 2.0], [2.0, 3.0, 2.0]])
    lo, hi = margin_thresholds(thr, m)
    np.testing.assert_allclose(lo[:2], [expit(-1.0), 0.2])
    np.testing.assert_allclose(hi[:2], [expit(2.0), expit(logit(0.2) + 3.0)])
    assert np.isnan(lo[2]) and np.isnan(hi[2])
    # a scalar is both sides of every label
    lo_s, hi_s = margin_thresholds(thr[:2], 1.5)
    lo_a, hi_a = margin_thresholds(thr[:2], np.full((2, 2), 1.5))
    np.testing.assert_array_equal(lo_s, lo_a)
    np.testing.assert_array_equal(hi_s, hi_a)


def test_accept_rule_uses_each_labels_own_side():
    thr = np.array([0.5, 0.5])
    m = np.array([[0.5, 4.0], [1.0, 0.2]])  # label 0: 1 logit above; label 1: 4 logits below
    p = np.array([[expit(1.1), expit(-4.1)],   # both cleared
                  [expit(0.9), expit(-4.1)],   # label 0 short of its 1 logit
                  [expit(1.1), expit(-3.0)]])  # label 1 short of its 4 logits below
    tgt = np.array([[1, 0]] * 3)
    assert accept_rule(p, tgt, thr, m).tolist() == [True, False, False]
    assert accept_rule(torch.as_tensor(p), torch.as_tensor(tgt), thr, m).tolist() == [True, False, False]
    # the scalar rule at the larger margin rejects all three
    assert accept_rule(p, tgt, thr, 4.0).tolist() == [False, False, False]
    space = resolve_label_space(["A", "B"], ["A", "B"], {"A": 0.5, "B": 0.5}).with_margins(m)
    why = unmet_reason(p[2].astype(np.float32), tgt[2], space, 2, 50)
    assert "B p=0.0474>0.0180" in why and "A " not in why and "calibrated margins" in why
    with pytest.raises(ValueError, match="finite and >= 0"):
        space.with_margins(-1.0)


def test_read_margins_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the lco_margins rule"):
        read_margins(tmp_path / "none.json", LABELS)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json: not a margins file"):
        read_margins(tmp_path / "bad.json", LABELS)
    (tmp_path / "part.json").write_text(json.dumps({"labels": {"Effusion": {"below": 1, "above": 2}}}))
    with pytest.raises(ValueError, match=r"part.json: no margins for label\(s\) \['Cardiomegaly', 'No_Finding'\]"):
        read_margins(tmp_path / "part.json", LABELS)


def test_run_margins_scores_the_real_val_split(tmp_path):
    from conftest import prepared_with_random_classifier

    from synthcxr.classifier import load_classifier
    from synthcxr.classifier.evaluate import predict
    from synthcxr.classifier.sources import prepared_split
    from synthcxr.data.store import PreparedDataset

    folder, names = prepared_with_random_classifier(tmp_path)
    # independent reference: the model's own val predictions; thresholds at each label's val median
    C = load_classifier(tmp_path / "model.pt", "cpu")
    part = prepared_split(PreparedDataset(folder), "val", names, 16)
    p, y = predict(C, part.dataset, 64, "cpu")
    thr = {n: float(np.median(p[:, j])) for j, n in enumerate(names)}
    (tmp_path / "thresholds.json").write_text(json.dumps(thr))
    cfg = {"labels": names, "margin": 3.0, "margin_quantile": 0.5, "device": "cpu"}
    out = run_margins(cfg, tmp_path / "model.pt", tmp_path / "thresholds.json", folder, tmp_path / "margins.json")
    assert out["n_val"] == len(y) == 60
    for j, n in enumerate(names):
        lp, lt = logit(np.clip(p[:, j], 1e-7, 1 - 1e-7)), logit(thr[n])
        pos = (lp - lt)[(y[:, j] == 1) & (p[:, j] >= thr[n])]
        neg = (lt - lp)[(y[:, j] == 0) & (p[:, j] < thr[n])]
        want_above = min(3.0, float(np.quantile(pos, 0.5))) if len(pos) >= MIN_COUNT else 3.0
        want_below = min(3.0, float(np.quantile(neg, 0.5))) if len(neg) >= MIN_COUNT else 3.0
        assert out["labels"][n]["above"] == pytest.approx(want_above, abs=1e-6), n
        assert out["labels"][n]["below"] == pytest.approx(want_below, abs=1e-6), n
    got = read_margins(tmp_path / "margins.json", names)
    assert got.shape == (2, len(names)) and got[1, 0] == out["labels"][names[0]]["above"]
    assert any(out["labels"][n]["note"] == "calibrated" for n in names)
    fixed = run_margins({**cfg, "margin_quantile": None}, tmp_path / "model.pt", tmp_path / "thresholds.json", folder, tmp_path / "f.json")
    assert fixed["n_val"] == 0 and (read_margins(tmp_path / "f.json", names) == 3.0).all()
