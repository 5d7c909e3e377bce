"""Per-label, per-side acceptance margins: calibration against hand computations, the rule they feed,
the lco_margins job on a real prepared split, and LCO stopping at each label's own cut."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.special import expit, logit

from synthcxr.lco.accept import accept_rule, margin_thresholds, resolve_label_space, unmet_reason
from synthcxr.lco.margins import MIN_COUNT, calibrate_margins, joint_quantile, margins_array, read_margins, real_pass, run_margins

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


def test_real_pass_hand_computation():
    # two labels at threshold 0.5, margins: A 1 logit above / 2 below, B 0.5 above / 1 below
    m = np.array([[2.0, 1.0], [1.0, 0.5]])
    lg = np.array([
        [1.5, -1.5],   # A only: called right, passes (A 1.5 >= 1, B -1.5 <= -1)
        [0.5, -1.5],   # A only: called right, fails A's 1 logit above
        [1.5, -0.5],   # A only: called right, fails B's 1 logit below
        [-0.5, -2.0],  # A only: missed (A under its threshold): not counted
        [1.2, 0.7],    # A and B: called right, passes both
        [-3.0, 0.6],   # B only: called right, passes
        [-1.0, 0.6],   # B only: called right, fails A's 2 logits below
    ])
    y = np.array([[1, 0], [1, 0], [1, 0], [1, 0], [1, 1], [0, 1], [0, 1]], dtype=float)
    y_unknown = np.vstack([y, [[np.nan, 1]]])  # a scan with an unknown label is left out
    lg_unknown = np.vstack([lg, [[3.0, 3.0]]])
    out = real_pass(y_unknown, expit(lg_unknown), [0.5, 0.5], ["A", "B"], m, min_count=2)
    assert out["A"] == {"n": 4, "share": pytest.approx(2 / 4)}  # rows 0, 1, 2, 4 called right; 0 and 4 pass
    assert out["B"] == {"n": 3, "share": pytest.approx(2 / 3)}  # rows 4, 5, 6; 4 and 5 pass
    assert real_pass(y, expit(lg), [0.5, 0.5], ["A", "B"], m, min_count=4)["B"] == {"n": 3, "share": None}


def test_joint_quantile_is_the_largest_quantile_every_label_passes_at():
    rng = np.random.default_rng(0)
    n, labels, thr = 3000, ["A", "B", "C"], [0.5, 0.3, 0.6]
    y = (rng.random((n, 3)) < [0.3, 0.2, 0.4]).astype(float)
    lg = np.where(y == 1, 1.0, -1.5) * rng.gamma(2.0, 1.0, (n, 3)) + logit(thr) + rng.normal(0, 0.6, (n, 3))
    probs = expit(lg)
    q, table = joint_quantile(y, probs, thr, labels, cap=4.0, quantile=0.6, share=0.5)

    def worst(qq):
        rows = real_pass(y, probs, thr, labels, margins_array(calibrate_margins(y, probs, thr, labels, 4.0, qq), labels))
        return min(r["share"] for r in rows.values())

    # independent reference: a grid over the quantile; the answer passes, a hair above it does not
    assert 0 < q < 0.6 and worst(q) >= 0.5 > worst(q + 1e-6)
    grid = [g for g in np.linspace(0.001, 0.6, 600) if worst(g) >= 0.5]
    assert max(grid) <= q < max(grid) + 0.6 / 599
    assert table == calibrate_margins(y, probs, thr, labels, 4.0, q)
    # the share only falls as the quantile rises: a laxer target gives a larger quantile; an easy one keeps q
    assert joint_quantile(y, probs, thr, labels, 4.0, 0.6, 0.3)[0] > q
    assert joint_quantile(y, probs, thr, labels, 4.0, 0.1, 0.05)[0] == 0.1
    with pytest.raises(ValueError, match="margin_real_pass"):
        joint_quantile(y, probs, thr, labels, 4.0, 0.6, 0.0)


def test_run_margins_records_the_real_pass_shares_and_lowers_the_quantile(tmp_path, monkeypatch):
    from conftest import prepared_with_random_classifier

    import synthcxr.classifier.evaluate as evaluate

    folder, names = prepared_with_random_classifier(tmp_path)
    # the val scans' scores as a classifier that sees every label would give them (the untrained one does not)
    rng = np.random.default_rng(1)
    y = (rng.random((2000, len(names))) < 0.25).astype(float)
    probs = expit(np.where(y == 1, 1.0, -1.5) * rng.gamma(2.0, 1.0, y.shape) + rng.normal(0, 0.6, y.shape))
    monkeypatch.setattr(evaluate, "predict", lambda *a, **k: (probs, y))
    (tmp_path / "thresholds.json").write_text(json.dumps({n: 0.5 for n in names}))
    args = (tmp_path / "model.pt", tmp_path / "thresholds.json", folder)
    cfg = {"labels": names, "margin": 3.0, "margin_quantile": 0.9, "device": "cpu"}
    plain = run_margins(cfg, *args, tmp_path / "plain.json")
    assert plain["quantile"] == 0.9 and plain["real_pass_target"] is None
    assert plain["real_pass"] == real_pass(y, probs, [0.5] * len(names), names, read_margins(tmp_path / "plain.json", names))
    assert min(r["share"] for r in plain["real_pass"].values()) < 0.5
    joint = run_margins({**cfg, "margin_real_pass": 0.5}, *args, tmp_path / "joint.json")
    q, table = joint_quantile(y, probs, [0.5] * len(names), names, 3.0, 0.9, 0.5)
    assert joint["quantile_configured"] == 0.9 and joint["quantile"] == q < 0.9 and joint["labels"] == table
    assert min(r["share"] for r in joint["real_pass"].values()) >= 0.5
    with pytest.raises(ValueError, match="set margin_quantile too"):
        run_margins({**cfg, "margin_quantile": None, "margin_real_pass": 0.5}, *args, tmp_path / "x.json")
