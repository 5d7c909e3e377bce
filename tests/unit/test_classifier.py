"""Classifier stage: networks, augmentation, loss, config helpers and a short training run end to end."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, log_loss, recall_score, roc_auc_score

from synthcxr.classifier import Classifier, ClassifierConfig, load_classifier, load_thresholds, run_settings, train_classifier
from synthcxr.classifier.augment import AugmentConfig, augment_batch
from synthcxr.classifier.evaluate import choose_thresholds, exact_match, plateau_midpoint, predict
from synthcxr.classifier.models import DenseNet121, SmallCNN, count_parameters, default_arch
from synthcxr.classifier.sources import resolve_sources, source_kind
from synthcxr.classifier.train import masked_bce, mean_label_bce, pos_weights
from synthcxr.data.store import PreparedDataset
from synthcxr.labels import PHANTOM_LABELS
from synthcxr.metrics.auroc import youden_threshold

LABELS = list(PHANTOM_LABELS)


def _cfg(**kw) -> dict:
    base = {
        "name": "t", "arch": "small_cnn", "labels": LABELS, "input_res": 32, "width": 16, "epochs": 2,
        "batch_size": 32, "lr": 3e-3, "patience": 5, "bootstrap": 200, "seed": 1, "device": "cpu",
    }
    return {**base, **kw}


def _run(**kw) -> ClassifierConfig:
    return ClassifierConfig.from_section(_cfg(**kw))


# ---------------------------------------------------------------- networks


def test_densenet121_matches_reference_parameter_count():
    # the reference (3-channel, 1000-class) DenseNet-121 has 7,978,856 parameters
    assert count_parameters(DenseNet121(1000, in_ch=3)) == 7_978_856
    one = DenseNet121(1000, in_ch=1)
    # a 1-channel stem removes 2 * 64 * 7 * 7 weights
    assert count_parameters(one) == 7_978_856 - 2 * 64 * 49
    assert one.n_features == 1024


def test_densenet121_forward_shape_and_features():
    torch.manual_seed(0)
    clf = Classifier(default_arch("densenet121", 14, 64), [f"x{i}" for i in range(14)], 64).eval()
    x = torch.rand(2, 1, 48, 48) * 2 - 1
    with torch.no_grad():
        assert clf(x).shape == (2, 14)
        assert clf.features(x).shape == (2, 1024)


def test_small_cnn_depth_follows_resolution():
    assert default_arch("small_cnn", 8, 64, 16)["n_stages"] == 4
    assert default_arch("small_cnn", 8, 16, 16)["n_stages"] == 2
    net = SmallCNN(3, width=8, n_stages=3)
    assert net(torch.zeros(4, 1, 32, 32)).shape == (4, 3)
    assert net.features(torch.zeros(4, 1, 32, 32)).shape == (4, 32)
    with pytest.raises(ValueError, match="unknown architecture"):
        default_arch("resnet", 3, 32)
    with pytest.raises(ValueError, match="n_out"):
        Classifier(default_arch("small_cnn", 3, 32), ["A", "B"], 32)
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\]"):
        Classifier(default_arch("small_cnn", 2, 32), ["A", "B"], 32)(torch.zeros(1, 3, 32, 32))


# ---------------------------------------------------------------- augmentation


def test_augment_identity_deterministic_and_bounded():
    x = torch.rand(6, 1, 16, 16) * 2 - 1
    off = AugmentConfig(rotate_deg=0, scale=0, intensity=0, hflip=False)
    assert torch.allclose(augment_batch(x, off, torch.Generator().manual_seed(0)), x, atol=1e-6)
    on = AugmentConfig(rotate_deg=10, scale=0.1, intensity=0.3, hflip=False)
    a = augment_batch(x, on, torch.Generator().manual_seed(5))
    b = augment_batch(x, on, torch.Generator().manual_seed(5))
    c = augment_batch(x, on, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1 and not torch.allclose(a, x, atol=1e-3)


def test_augment_flip_only_mirrors_exactly_and_is_off_by_default():
    assert _run().augment.hflip is False  # the schema's default
    x = torch.rand(16, 1, 8, 8)
    y = augment_batch(x, AugmentConfig(rotate_deg=0, scale=0, intensity=0, hflip=True), torch.Generator().manual_seed(3))
    mirrored = [torch.allclose(y[i], x[i].flip(-1), atol=1e-5) for i in range(16)]
    same = [torch.allclose(y[i], x[i], atol=1e-5) for i in range(16)]
    assert all(m or s for m, s in zip(mirrored, same)) and any(mirrored) and any(same)


def test_augment_intensity_is_monotone_per_image():
    x = torch.linspace(-0.5, 0.5, 64).view(1, 1, 8, 8).repeat(3, 1, 1, 1)
    y = augment_batch(x, AugmentConfig(rotate_deg=0, scale=0, intensity=0.2, hflip=False), torch.Generator().manual_seed(1))
    # a contrast/brightness change keeps the pixel order and is affine in the input
    for i in range(3):
        d = torch.diff(y[i].flatten())
        assert (d > 0).all()
        assert torch.allclose(d, d[0].expand_as(d), atol=1e-5)


def test_augment_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown key 'classifier\.augment\.rotate'"):
        _run(augment={"rotate": 3})


# ---------------------------------------------------------------- loss and config


def test_masked_bce_matches_hand_computation():
    torch.manual_seed(0)
    logits = torch.randn(5, 3)
    y = torch.tensor([[1, 0, float("nan")], [0, 0, 1], [float("nan")] * 3, [1, 1, 0], [0, float("nan"), 1]])
    pw = torch.tensor([2.0, 0.5, 3.0])
    known = ~torch.isnan(y)
    p = torch.sigmoid(logits)
    yy = torch.nan_to_num(y)
    per = -(pw * yy * torch.log(p) + (1 - yy) * torch.log(1 - p))
    assert masked_bce(logits, y, pw).item() == pytest.approx(per[known].mean().item(), rel=1e-6)
    plain = F.binary_cross_entropy_with_logits(logits[known], y[known])
    assert masked_bce(logits, y).item() == pytest.approx(plain.item(), rel=1e-6)
    # unknown entries carry no gradient
    lg = logits.clone().requires_grad_(True)
    masked_bce(lg, y, pw).backward()
    assert (lg.grad[~known] == 0).all() and (lg.grad[known] != 0).all()


def test_mean_label_bce_is_the_mean_of_sklearn_log_loss_per_label():
    rng = np.random.default_rng(4)
    y = (rng.random((40, 3)) < [0.5, 0.1, 0.9]).astype(np.float64)
    y[rng.random((40, 3)) < 0.2] = np.nan
    p = rng.random((40, 3))
    p[0, 0] = 0.0  # clipped, not infinite
    ref = []
    for j in range(3):
        k = ~np.isnan(y[:, j])
        ref.append(log_loss(y[k, j], np.clip(p[k, j], 1e-7, 1 - 1e-7), labels=[0, 1]))
    assert mean_label_bce(y, p) == pytest.approx(np.mean(ref), rel=1e-9)
    # a label with nothing known is left out; nothing known at all is NaN
    y2 = y.copy()
    y2[:, 2] = np.nan
    assert mean_label_bce(y2, p) == pytest.approx(np.mean(ref[:2]), rel=1e-9)
    assert math.isnan(mean_label_bce(np.full((3, 2), np.nan), np.full((3, 2), 0.5)))
    # with class weights: sklearn's log loss with sample weight w on positives, normalised by the count
    w = np.array([2.0, 9.0, 0.5])
    ref_w = []
    for j in range(3):
        k = ~np.isnan(y[:, j])
        sw = np.where(y[k, j] == 1, w[j], 1.0)
        ref_w.append(log_loss(y[k, j], np.clip(p[k, j], 1e-7, 1 - 1e-7), sample_weight=sw, labels=[0, 1], normalize=False) / k.sum())
    assert mean_label_bce(y, p, w) == pytest.approx(np.mean(ref_w), rel=1e-9)


def test_pos_weights_from_prevalence():
    lab = np.array([[1, 0, 1], [0, 0, 1], [0, np.nan, 1], [0, 1, np.nan]], np.float32)
    np.testing.assert_allclose(pos_weights(lab), [3.0, 2.0, 1.0])  # last: no negatives -> 1


def test_run_settings_picks_main_or_checker():
    sec = {"name": "real", "arch": "small_cnn", "width": 32, "seed": 3,
           "checker": {"name": "check", "arch": "densenet121", "width": 24, "seed_offset": 7}}
    main = run_settings(sec, "real")
    assert main["seed_offset"] == 0 and main["width"] == 32 and "checker" not in main
    chk = run_settings(sec, "check")
    assert (chk["name"], chk["arch"], chk["width"], chk["seed_offset"], chk["seed"]) == ("check", "densenet121", 24, 7, 3)
    with pytest.raises(ValueError, match="neither"):
        run_settings(sec, "other")
    with pytest.raises(ValueError, match="must differ"):
        run_settings({**sec, "checker": {**sec["checker"], "name": "real"}}, "real")


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="unknown key"):
        ClassifierConfig.from_section(_cfg(lr_max=3))
    with pytest.raises(ValueError, match="labels"):
        ClassifierConfig.from_section({"name": "x", "arch": "small_cnn"})
    with pytest.raises(ValueError, match="classifier.arch"):
        ClassifierConfig.from_section(_cfg(arch="vit"))
    with pytest.raises(ValueError, match=r"'classifier.select_on': 'f1' is not one of \['auroc', 'bce', 'last'\]"):
        ClassifierConfig.from_section(_cfg(select_on="f1"))
    assert ClassifierConfig.from_section(_cfg(checker={"name": "c"})).name == "t"
    with pytest.raises(ValueError, match=r"'classifier.amp': 'fp8' is not one of"):
        ClassifierConfig.from_section(_cfg(amp="fp8"))


def test_source_kind_errors(tmp_path, tiny_prepared):
    assert source_kind(tiny_prepared) == "prepared"
    with pytest.raises(FileNotFoundError, match="neither a prepared dataset"):
        source_kind(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        source_kind(tmp_path / "nope")
    (tmp_path / "manifest.parquet").write_bytes(b"")
    assert source_kind(tmp_path) == "archive"
    with pytest.raises(ValueError, match="must be a prepared"):
        resolve_sources(tiny_prepared, tmp_path, LABELS, 32)


# ---------------------------------------------------------------- training end to end


@pytest.fixture(scope="module")
def trained(tiny_prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("clf")
    metrics = train_classifier(_run(), tiny_prepared, None, out, log_file=out / "train.log")
    return out, metrics


def test_training_writes_outputs_and_learns(trained, tiny_prepared):
    out, metrics = trained
    for f in ("model.pt", "metrics.json", "thresholds.json", "roc.png", "train.log"):
        assert (out / f).stat().st_size > 0, f
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".tmp-*"))
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["test"]["mean_auroc"] == pytest.approx(metrics["test"]["mean_auroc"])
    test = on_disk["test"]
    print(f"tiny_prepared, 2 epochs: test mean AUROC {test['mean_auroc']:.3f}, val {on_disk['val']['mean_auroc']:.3f}")
    assert test["mean_auroc"] > 0.7
    assert test["mean_auroc_ci"][0] <= test["mean_auroc"] <= test["mean_auroc_ci"][1]
    table = PreparedDataset(tiny_prepared).split("test")
    for name in LABELS:
        row = test["per_label"][name]
        assert row["n_pos"] == int((table[name] == 1).sum())
        assert row["n_pos"] + row["n_neg"] + row["n_unknown"] == len(table)
        if row["auroc"] is not None:
            assert row["ci_low"] <= row["auroc"] + 1e-12 and row["auroc"] <= row["ci_high"] + 1e-12
    assert 1 <= on_disk["best_epoch"] <= on_disk["epochs_run"] == 2
    assert "epoch 2/2" in (out / "train.log").read_text()


def test_saved_model_reproduces_metrics_and_thresholds(trained, tiny_prepared):
    out, metrics = trained
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert set(ckpt) == {"arch", "state_dict", "meta"}
    assert ckpt["meta"]["label_names"] == LABELS and ckpt["meta"]["input_res"] == 32
    model = load_classifier(out / "model.pt")
    assert not model.training and model.label_names == LABELS and model.input_res == 32
    src = resolve_sources(tiny_prepared, None, LABELS, 32)
    p_test, y_test = predict(model, src.test.dataset)
    for j, name in enumerate(LABELS):
        known = ~np.isnan(y_test[:, j])
        if len(np.unique(y_test[known, j])) == 2:
            ref = roc_auc_score(y_test[known, j], p_test[known, j])
            assert metrics["test"]["per_label"][name]["auroc"] == pytest.approx(ref, abs=1e-6)
    p_val, y_val = predict(model, src.val.dataset)
    thr = json.loads((out / "thresholds.json").read_text())
    assert set(thr) == set(LABELS) and all(0 <= v <= 1 for v in thr.values())
    assert metrics["operating_points"]["method"] == "youden_j"
    loaded = load_thresholds(out / "thresholds.json", LABELS)
    min_count = _run().threshold_min_count
    for j, name in enumerate(LABELS):
        ref = youden_threshold(y_val[:, j], p_val[:, j])
        point = metrics["operating_points"]["labels"][name]
        n_pos = int(np.nansum(y_val[:, j]))
        if math.isnan(ref["threshold"]) or min(n_pos, int((y_val[:, j] == 0).sum())) < min_count:
            assert loaded[j] == 0.5 and point["fallback"] and point["reason"]
            continue
        # inside the plateau of equally good cuts, so it calls val exactly as the Youden point does
        assert ref["lower"] < loaded[j] <= ref["threshold"]
        assert ((p_val[:, j] >= loaded[j]) == (p_val[:, j] >= ref["threshold"])).all()
        assert point["youden_j"] == pytest.approx(ref["j"], abs=1e-9) and not point["fallback"]
    with pytest.raises(KeyError, match="Hernia"):
        load_thresholds(out / "thresholds.json", ["Hernia"])
    # exact match on test at the written thresholds = sklearn's subset accuracy over fully labelled images
    em = metrics["test"]["exact_match"]
    full = ~np.isnan(y_test).any(axis=1)
    assert em["n"] == int(full.sum()) and em["n_unknown_excluded"] == int((~full).sum())
    assert em["rate"] == pytest.approx(accuracy_score(y_test[full] == 1, p_test[full] >= loaded[None, :]))
    assert sum(v["n"] for v in em["per_combination"].values()) == em["n"]


def test_loaded_model_any_resolution_features_and_gradients(trained):
    out, _ = trained
    model = load_classifier(out / "model.pt")
    for r in (16, 32, 64):
        x = torch.rand(3, 1, r, r) * 2 - 1
        assert model(x).shape == (3, len(LABELS))
        assert model.features(x).shape == (3, model.n_features)
    x = (torch.rand(2, 1, 64, 64) * 2 - 1).requires_grad_(True)
    model(x)[:, 1].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_training_is_deterministic_and_masks_unknown_labels(tiny_prepared, tmp_path, trained):
    _, first = trained
    again = train_classifier(_run(epochs=2), tiny_prepared, None, tmp_path / "again")
    assert again["test"]["per_label"] == first["test"]["per_label"]
    # unknown labels: training still runs and the counts report them
    data = tmp_path / "nan"
    shutil.copytree(tiny_prepared, data)
    table = pd.read_parquet(data / "labels.parquet")
    table.loc[table.index % 3 == 0, "Nodule"] = np.nan
    table.to_parquet(data / "labels.parquet", index=False)
    m = train_classifier(_run(epochs=1, bootstrap=0), data, None, tmp_path / "nan_out")
    n_unknown = int(table.loc[table.split == "test", "Nodule"].isna().sum())
    assert m["test"]["per_label"]["Nodule"]["n_unknown"] == n_unknown > 0
    assert m["test"]["per_label"]["Nodule"]["ci_low"] is None  # bootstrap off


@pytest.mark.parametrize("select_on", ["auroc", "bce", "last"])
def test_epoch_selection_keeps_the_epoch_the_criterion_names(tiny_prepared, tmp_path, select_on):
    m = train_classifier(_run(epochs=4, bootstrap=0, select_on=select_on), tiny_prepared, None, tmp_path / select_on)
    hist = m["history"]
    assert m["select_on"] == select_on and len(hist) == m["epochs_run"] == 4
    if select_on == "auroc":
        want = int(np.argmax([h["val_mean_auroc"] for h in hist])) + 1  # first of ties, as training keeps it
    elif select_on == "bce":
        want = int(np.argmin([h["val_bce"] for h in hist])) + 1
    else:
        want = 4
    assert m["best_epoch"] == want
    # the saved weights are that epoch's: their val BCE and AUROC are the ones logged for it
    model = load_classifier(tmp_path / select_on / "model.pt")
    src = resolve_sources(tiny_prepared, None, LABELS, 32)
    p_val, y_val = predict(model, src.val.dataset)
    # _cfg trains class-weighted, so val loss carries the training split's positive weights
    assert mean_label_bce(y_val, p_val, pos_weights(src.train.labels)) == pytest.approx(hist[want - 1]["val_bce"], rel=1e-5)
    assert m["val"]["mean_auroc"] == pytest.approx(hist[want - 1]["val_mean_auroc"], abs=1e-9)
    print(select_on, "epoch", want, [(round(h["val_mean_auroc"], 4), round(h["val_bce"], 4)) for h in hist])


def test_load_classifier_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_classifier"):
        load_classifier(tmp_path / "missing.pt")
    torch.save({"state_dict": {}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="lacks 'arch'"):
        load_classifier(tmp_path / "bad.pt")


# ---------------------------------------------------------------- train on an archive (TSTR)


def _archive_from_prepared(prepared: str, root, label_order: list[str]) -> None:
    """A release holding the prepared train split, labels stored in ``label_order``."""
    from archive_fixtures import write_release

    ds = PreparedDataset(prepared)
    rows = ds.split("train")
    write_release(root, ds.read_images(32, rows["row"].to_numpy()), rows[label_order].to_numpy(), label_order)


def test_train_on_archive_equals_training_on_the_same_real_images(tiny_prepared, tmp_path, trained):
    pytest.importorskip("synthcxr.archive")
    _, real = trained
    arc = tmp_path / "arc"
    _archive_from_prepared(tiny_prepared, arc, LABELS[::-1])  # other label order: mapped back by name
    assert source_kind(arc) == "archive"
    m = train_classifier(_run(), arc, tiny_prepared, tmp_path / "tstr")
    assert m["train_kind"] == "archive" and m["n_train"] == real["n_train"]
    # same pixels, same labels, same batch order and seed: the very same model and numbers
    assert m["test"]["per_label"] == real["test"]["per_label"]
    with pytest.raises(KeyError, match="archive lacks label"):
        train_classifier(_run(labels=LABELS + ["Hernia"]), arc, tiny_prepared, tmp_path / "bad")


def test_exact_match_overall_and_per_combination_by_hand():
    names = ["A", "B", "No_Finding"]
    y = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1], [1, 1, 0], [0, 0, 1], [np.nan, 0, 0]], dtype=np.float32)
    p = np.array(
        [[0.9, 0.1, 0.1], [0.9, 0.7, 0.0], [0.2, 0.2, 0.8], [0.6, 0.65, 0.1], [0.1, 0.1, 0.3], [0.9, 0.1, 0.1]]
    )
    em = exact_match(y, p, [0.5, 0.6, 0.5], names)
    # row 1 calls B (0.7 >= 0.6), row 4 misses No_Finding (0.3 < 0.5); row 3 is right (0.65 >= 0.6); row 5 unknown
    assert (em["n"], em["n_unknown_excluded"], em["rate"]) == (5, 1, pytest.approx(3 / 5))
    assert em["per_combination"] == {
        "A": {"n": 2, "rate": 0.5},
        "A+B": {"n": 1, "rate": 1.0},
        "No_Finding": {"n": 2, "rate": 0.5},
    }
    assert em["rate"] == pytest.approx(accuracy_score(y[:5] == 1, p[:5] >= np.array([0.5, 0.6, 0.5])))
    # per label, over the rows where that label is known (row 5 counts for B and No_Finding, not for A)
    assert em["per_label"]["A"] == {"n_pos": 3, "tpr": 1.0, "n_neg": 2, "fpr": 0.0}
    assert em["per_label"]["B"] == {"n_pos": 1, "tpr": 1.0, "n_neg": 5, "fpr": pytest.approx(1 / 5)}  # row 1: 0.7
    assert em["per_label"]["No_Finding"] == {"n_pos": 2, "tpr": 0.5, "n_neg": 4, "fpr": 0.0}  # row 4 missed
    for j, name in enumerate(names):
        known = ~np.isnan(y[:, j])
        calls = p[known, j] >= [0.5, 0.6, 0.5][j]
        assert em["per_label"][name]["tpr"] == pytest.approx(recall_score(y[known, j], calls))
    none = exact_match(np.zeros((2, 1)), np.zeros((2, 1)), [0.5], ["A"])["per_label"]["A"]
    assert none == {"n_pos": 0, "tpr": None, "n_neg": 2, "fpr": 0.0}


def test_choose_thresholds_midpoint_and_small_count_fallback():
    """Hand-computed operating points: logit midpoint of the separating gap; 0.5 with too few positives."""
    y = np.array([[0, 0], [0, 0], [0, 0], [1, 0], [1, 1], [1, 0]], dtype=np.float32)
    p = np.array([[0.1, 0.2], [0.2, 0.3], [0.5, 0.1], [0.9, 0.4], [0.8, 0.9], [0.95, 0.6]])
    pts = choose_thresholds(y, p, ["A", "B"], min_count=2)
    # A: negatives up to 0.5, positives from 0.8 -> halfway between logit(0.5) = 0 and logit(0.8) = ln 4
    assert pts["A"]["threshold"] == pytest.approx(1 / (1 + math.exp(-0.5 * math.log(4))), abs=1e-12)
    assert pts["A"]["threshold"] == pytest.approx(2 / 3, abs=1e-12)  # sigmoid(ln 2) = 2/3
    assert (pts["A"]["tpr"], pts["A"]["fpr"], pts["A"]["youden_j"], pts["A"]["fallback"]) == (1.0, 0.0, 1.0, False)
    assert (pts["A"]["n_pos"], pts["A"]["n_neg"]) == (3, 3)
    # B has one positive: fewer than min_count, so 0.5 and a reason naming the count
    assert pts["B"]["threshold"] == 0.5 and pts["B"]["fallback"]
    assert "1 positives" in pts["B"]["reason"] and pts["B"]["tpr"] == 1.0 and pts["B"]["fpr"] == pytest.approx(0.2)
    # with min_count 1, B gets its own separating midpoint between 0.6 and 0.9
    b = choose_thresholds(y, p, ["A", "B"], min_count=1)["B"]
    lg = lambda q: math.log(q / (1 - q))  # noqa: E731
    assert b["threshold"] == pytest.approx(1 / (1 + math.exp(-(lg(0.6) + lg(0.9)) / 2)), abs=1e-12)
    # unknown labels (NaN) are not counted; a single known class falls back
    y2 = y.copy()
    y2[3:, 0] = np.nan
    assert choose_thresholds(y2, p, ["A", "B"], min_count=1)["A"]["reason"] == "a single class on val"
    # fixed: 0.5 everywhere, val rates still measured at 0.5
    fx = choose_thresholds(y, p, ["A", "B"], min_count=1, method="fixed")
    assert all(v["threshold"] == 0.5 and v["reason"] == "threshold_method fixed" for v in fx.values())
    assert fx["A"]["tpr"] == 1.0 and fx["A"]["fpr"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="threshold_method"):
        choose_thresholds(y, p, ["A", "B"], method="f1")
    # plateau_midpoint: no lower score means the top itself
    assert plateau_midpoint(0.7, float("-inf")) == 0.7


def test_score_classifier_on_a_prepared_dataset(trained, tiny_prepared, tmp_path, capsys):
    """Scoring the test split again reproduces metrics.json's exact match; 'all' counts every split's labels."""
    from synthcxr.classifier.score import cli, score_prepared
    from conftest import write_prepared

    out, metrics = trained
    model = out / "model.pt"
    got = score_prepared(model, tiny_prepared)
    assert got["splits"] == ["test"]
    assert score_prepared(model, tiny_prepared, device="cpu")["per_label"] == got["per_label"]  # auto is cpu here
    for key in ("n", "rate", "per_combination", "per_label"):
        assert got[key] == metrics["test"]["exact_match"][key], key
    everything = score_prepared(model, tiny_prepared, ["train", "val", "test"])
    table = pd.read_parquet(f"{tiny_prepared}/labels.parquet")
    for name in LABELS:
        assert everything["per_label"][name]["n_pos"] == int((table[name] == 1).sum())
    assert everything["n"] == len(table)
    # stricter thresholds from another file: fewer calls, so sensitivity cannot rise
    strict = tmp_path / "strict.json"
    strict.write_text(json.dumps({n: 0.99 for n in LABELS}))
    hard = score_prepared(model, tiny_prepared, ["test"], thresholds_path=strict)
    assert all(hard["per_label"][n]["tpr"] <= got["per_label"][n]["tpr"] for n in LABELS if got["per_label"][n]["n_pos"])
    # the command line prints the tables and writes the same result as JSON
    assert cli([str(model), str(tiny_prepared), "--splits", "all", "--json", str(tmp_path / "s.json"), "--min-n", "1"]) == 0
    text = capsys.readouterr().out
    assert f"{len(table)} images" in text and "sensitivity" in text and "No_Finding" in text
    assert json.loads((tmp_path / "s.json").read_text())["per_label"] == everything["per_label"]
    # errors name what is wrong and leave no JSON behind
    assert cli([str(model), str(tiny_prepared), "--splits", "tset", "--json", str(tmp_path / "x.json")]) == 2
    assert "unknown split(s) ['tset']" in capsys.readouterr().err and not (tmp_path / "x.json").exists()
    other = write_prepared(tmp_path / "fewer", n=40, max_res=32, seed=1, names=[n for n in LABELS if n != "Mass"])
    with pytest.raises(KeyError, match="labels.parquet: no column for label.*Mass"):
        score_prepared(model, other)
    assert cli([str(tmp_path / "none.pt"), str(tiny_prepared)]) == 2
    assert "none.pt missing" in capsys.readouterr().err


def test_real_plus_synthetic_source_and_equal_steps(tiny_prepared, tmp_path, trained):
    """TSTR's arms: a concatenated real + archive training set, and a fixed number of images per epoch."""
    pytest.importorskip("synthcxr.archive")
    _, real = trained
    arc = tmp_path / "arc"
    _archive_from_prepared(tiny_prepared, arc, LABELS)
    n = real["n_train"]
    both = train_classifier(_run(epochs=2, bootstrap=0, samples_per_epoch=n), [tiny_prepared, arc], tiny_prepared,
                            tmp_path / "both")
    assert both["n_train"] == 2 * n and both["train_kind"] == "prepared+archive"
    assert both["samples_per_epoch"] == n and both["steps"] == 2 * (n // 32)  # drop_last batches of 32
    assert both["test"]["ci_resampling"].startswith("patients")
    small = train_classifier(_run(epochs=2, bootstrap=0, samples_per_epoch=n), arc, tiny_prepared, tmp_path / "s")
    assert small["steps"] == both["steps"]  # same optimisation steps whatever the training set's size
    with pytest.raises(ValueError, match="eval_source"):
        train_classifier(_run(epochs=1), [tiny_prepared, arc], None, tmp_path / "noeval")


# ---------------------------------------------------------------- TSTR mechanics: fractions, pretrain, mixing


def test_patient_subsets_are_nested_whole_patients():
    from synthcxr.classifier.sources import patient_subset

    groups = np.repeat([f"p{i:03d}" for i in range(200)], 3)[np.random.default_rng(0).permutation(600)]
    masks = {f: patient_subset(groups, f, seed=4) for f in (0.01, 0.1, 0.5, 1.0)}
    counts = {f: len(set(groups[m])) for f, m in masks.items()}
    assert counts == {0.01: 2, 0.1: 20, 0.5: 100, 1.0: 200}
    assert all((masks[a] <= masks[b]).all() for a, b in [(0.01, 0.1), (0.1, 0.5), (0.5, 1.0)])  # nested
    for m in masks.values():  # every image of a kept patient, none of the others
        assert set(groups[m]).isdisjoint(groups[~m])
    assert len(set(groups[patient_subset(groups, 1e-6, 4)])) == 1  # at least one patient
    assert not np.array_equal(masks[0.1], patient_subset(groups, 0.1, seed=5))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        patient_subset(groups, 0.0, 4)


def test_mix_weights_give_the_synthetic_share_by_hand_and_by_sampling():
    from synthcxr.classifier.sources import mix_weights

    w = mix_weights([("prepared", 6), ("archive", 2)], 0.25)
    np.testing.assert_allclose(w, [0.125] * 6 + [0.125] * 2)
    w = mix_weights([("prepared", 90), ("archive", 10)], 0.5)
    np.testing.assert_allclose(w[:90].sum(), 0.5) and np.testing.assert_allclose(w[90:], 0.05)
    draws = torch.multinomial(torch.as_tensor(w), 20000, replacement=True, generator=torch.Generator().manual_seed(0))
    assert abs(float((draws >= 90).float().mean()) - 0.5) < 0.02
    with pytest.raises(ValueError, match="real and synthetic"):
        mix_weights([("prepared", 5)], 0.5)


def test_real_fraction_trains_on_a_patient_subset(tiny_prepared, tmp_path):
    m = train_classifier(_run(epochs=1, bootstrap=0, real_fraction=0.25), tiny_prepared, None, tmp_path / "q")
    train = PreparedDataset(tiny_prepared).split("train")
    from synthcxr.classifier.sources import patient_subset

    want = int(patient_subset(train["patient_key"].to_numpy(), 0.25, seed=1).sum())
    assert m["n_train"] == want < len(train) and m["real_fraction"] == 0.25
    with pytest.raises(ValueError, match="real_fraction"):
        ClassifierConfig.from_section(_cfg(real_fraction=0.0))


def test_finetune_restores_the_pretrained_checkpoint_and_continues(trained, tiny_prepared, tmp_path):
    out, _ = trained
    start = dict(load_classifier(out / "model.pt").named_parameters())
    # a vanishing learning rate: the weights must end where they started, i.e. on the pretrained ones
    # (parameters only: BatchNorm's running statistics follow the new data whatever the learning rate)
    m = train_classifier(_run(epochs=1, bootstrap=0, lr=1e-12, init_from=str(out / "model.pt")), tiny_prepared, None, tmp_path / "ft")
    ft = dict(load_classifier(tmp_path / "ft" / "model.pt").named_parameters())
    for k, v in start.items():
        torch.testing.assert_close(ft[k], v, atol=1e-6, rtol=0, msg=k)
    assert m["init_from"] == str(out / "model.pt")
    # from scratch the same run ends elsewhere: the start really came from the checkpoint
    train_classifier(_run(epochs=1, bootstrap=0, lr=1e-12), tiny_prepared, None, tmp_path / "s")
    scratch = dict(load_classifier(tmp_path / "s" / "model.pt").named_parameters())
    assert max(float((scratch[k] - v).detach().abs().max()) for k, v in start.items()) > 1e-3
    with pytest.raises(ValueError, match="architecture or labels differ"):
        train_classifier(_run(epochs=1, bootstrap=0, width=8, init_from=str(out / "model.pt")), tiny_prepared, None, tmp_path / "bad")


def test_bf16_autocast_and_channels_last_train_the_same_model(trained, tiny_prepared, tmp_path):
    """classifier.amp and classifier.channels_last change how training runs, not what it learns: on CPU bf16
    autocast trains a model as good as fp32, channels-last the same one to float rounding; fp16 needs CUDA."""
    _, ref = trained
    bf = train_classifier(_run(amp="bf16"), tiny_prepared, None, tmp_path / "bf16")
    assert bf["test"]["mean_auroc"] > 0.7 and abs(bf["test"]["mean_auroc"] - ref["test"]["mean_auroc"]) < 0.1
    cl = train_classifier(_run(channels_last=True), tiny_prepared, None, tmp_path / "cl")
    np.testing.assert_allclose([h["train_loss"] for h in cl["history"]], [h["train_loss"] for h in ref["history"]], rtol=1e-3)
    state = torch.load(tmp_path / "cl" / "model.pt", weights_only=True)["state_dict"]
    assert all(v.is_contiguous() for v in state.values())  # saved in the standard layout
    with pytest.raises(ValueError, match="classifier.amp: fp16 autocast needs a CUDA device"):
        train_classifier(_run(amp="fp16"), tiny_prepared, None, tmp_path / "fp16")
