"""The phantom's difficulty knobs: neutral values change nothing, each knob moves a measured AUROC the
expected way, label noise and devices follow their rates, prevalence follows ChestX-ray14, bad values are
errors naming the key."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from synthcxr.config import ConfigError, load_config, read_config_file, validate_config
from synthcxr.data import phantom as ph

RES = 16
REPO = Path(__file__).resolve().parents[2]


def _cohort(**knobs):
    return ph.sample_cohort(ph.PhantomConfig.from_section(dict(n_patients=knobs.pop("n_patients", 40), max_studies=2, seed=4, **knobs)))


def test_neutral_knobs_render_the_builtin_phantom():
    plain = _cohort()
    neutral = _cohort(
        subtlety={"contrast": {n: 1.0 for n in ph.FINDINGS}, "size": {n: 1.0 for n in ph.FINDINGS}, "position_spread": 1.0},
        variation={"anatomy": 1.0, "pose": 1.0, "exposure": 1.0},
        label_noise={"Nodule": {"missed": 0.0, "false_positive": 0.0}},
        support_devices={"rate": 0.0},
    )
    labels = list(ph.PHANTOM_LABELS)
    assert plain[labels].equals(neutral[labels]) and "knobs" in neutral.columns and "true_Nodule" not in neutral.columns
    for a, b in zip(plain.to_dict("records"), neutral.to_dict("records")):
        assert np.array_equal(ph.render(a, 64), ph.render(b, 64))


def _auroc(finding: str, n_patients: int = 260, score_on: str = "reported", **knobs) -> float:
    """AUROC of a logistic regression on 16 px pixels for one finding at prevalence 0.5 (first half trains)."""
    cfg = {"prevalence": {finding: 0.5}, "independent_findings": True, **copy.deepcopy(knobs)}
    sub = cfg.setdefault("subtlety", {})
    sub.setdefault("contrast", {}).update({n: 0.05 for n in ph.FINDINGS if n != finding})  # others near invisible
    c = ph.sample_cohort(ph.PhantomConfig.from_section(dict(n_patients=n_patients, max_studies=1, seed=8, **cfg)))
    x = np.stack([ph.render(r, RES).ravel() / 255.0 for r in c.to_dict("records")])
    y_rep = c[finding].to_numpy()
    y_true = c[f"true_{finding}"].to_numpy() if f"true_{finding}" in c.columns else y_rep
    half = len(c) // 2
    model = LogisticRegression(C=0.05, max_iter=2000).fit(x[:half], y_rep[:half])
    s = model.decision_function(x[half:])
    return roc_auc_score((y_rep if score_on == "reported" else y_true)[half:], s)


@pytest.fixture(scope="module")
def baseline() -> float:
    return _auroc("Effusion")


@pytest.mark.parametrize(
    "knobs",
    [
        {"subtlety": {"contrast": {"Effusion": 0.25}}},
        {"subtlety": {"size": {"Effusion": 0.35}}},
        {"variation": {"anatomy": 3.0, "pose": 3.0, "exposure": 3.0}},
        {"label_noise": {"Effusion": {"missed": 0.3, "false_positive": 0.3}}},
    ],
    ids=["contrast", "size", "variation", "label_noise"],
)
def test_each_knob_lowers_the_measured_auroc(baseline, knobs):
    harder = _auroc("Effusion", **knobs)
    assert baseline > 0.9, baseline  # the built-in Effusion is easy for a linear model at 16 px
    assert harder < baseline - 0.03, (harder, baseline)


def test_position_spread_hides_nodules_behind_other_shadows():
    # wider spread puts nodules over the heart, ribs and domes: a linear model finds them less often
    tight = _auroc("Nodule", n_patients=400, subtlety={"position_spread": 0.5})
    wide = _auroc("Nodule", n_patients=400, subtlety={"position_spread": 2.0})
    assert wide < tight - 0.03, (wide, tight)


def test_label_noise_rates_and_drawn_findings_rendered():
    noise = {"Effusion": {"missed": 0.25, "false_positive": 0.05}}
    c = ph.sample_cohort(ph.PhantomConfig.from_section(dict(n_patients=6000, seed=2, label_noise=noise)))
    drawn, rep = c["true_Effusion"].to_numpy(), c["Effusion"].to_numpy()
    missed = 1 - rep[drawn == 1].mean()
    false_pos = rep[drawn == 0].mean()
    n1, n0 = (drawn == 1).sum(), (drawn == 0).sum()
    assert abs(missed - 0.25) < 4 * np.sqrt(0.25 * 0.75 / n1) and abs(false_pos - 0.05) < 4 * np.sqrt(0.05 * 0.95 / n0)
    assert (c["No_Finding"] == (c[list(ph.FINDINGS)].sum(axis=1) == 0)).all()  # No_Finding follows the reported labels
    # pixels follow the drawn finding, not the report: a missed effusion is still rendered
    row = c[(c["true_Effusion"] == 1) & (c["Effusion"] == 0)].iloc[0].to_dict()
    clean = {k: v for k, v in row.items() if not k.startswith("true_")}
    clean.update({n: row[f"true_{n}"] for n in ph.FINDINGS})
    assert np.array_equal(ph.render(row, 32), ph.render(clean, 32))
    truth = ph.true_labels(c)
    assert truth.loc[row["image_id"], "Effusion"] == 1 and truth.loc[row["image_id"], "No_Finding"] == 0


def test_support_devices_follow_findings_and_show():
    dev = {"rate": 0.05, "given": {"Pneumothorax": 0.8}}
    c = ph.sample_cohort(ph.PhantomConfig.from_section(dict(n_patients=8000, seed=2, support_devices=dev)))
    with_ptx = c.loc[c["Pneumothorax"] == 1, "support_device"].mean()
    without = c.loc[c["Pneumothorax"] == 0, "support_device"].mean()
    assert abs(with_ptx - 0.8) < 0.1 and abs(without - 0.05) < 0.01
    # the device alone predicts the finding: the shortcut a classifier can take
    assert roc_auc_score(c["Pneumothorax"], c["support_device"]) > 0.85
    row = c[c["support_device"] == 1].iloc[0].to_dict()
    off = {**row, "support_device": 0}
    diff = np.abs(ph.render(row, 128).astype(int) - ph.render(off, 128))
    assert diff.max() > 40 and 0.002 < (diff > 10).mean() < 0.1  # a thin bright line, nothing else
    # the oracle's cohort keeps the device rate but not the link to findings
    oracle = ph.PhantomConfig.from_section(dict(n_patients=8000, seed=2, support_devices=dev)).oracle(8000, 0.2, float(c["support_device"].mean()))
    o = ph.sample_cohort(oracle)
    assert abs(roc_auc_score(o["Pneumothorax"], o["support_device"]) - 0.5) < 0.03
    assert "true_Pneumothorax" not in o.columns and abs(o["Pneumothorax"].mean() - 0.2) < 0.02


def test_chestxray14_prevalence_of_reported_labels():
    noise = {"Nodule": {"missed": 0.3, "false_positive": 0.02}}
    c = ph.sample_cohort(ph.PhantomConfig.from_section(dict(n_patients=15000, seed=6, prevalence="chestxray14", label_noise=noise)))
    for name, target in ph.CHESTXRAY14_PREVALENCE.items():
        assert abs(c[name].mean() - target) < 0.15 * target + 0.004, (name, c[name].mean(), target)
    # co-occurrence as in the collection: effusion much likelier with cardiomegaly, atelectasis with effusion
    assert c.loc[c["Cardiomegaly"] == 1, "Effusion"].mean() > 2.5 * c.loc[c["Cardiomegaly"] == 0, "Effusion"].mean()
    assert c.loc[c["Effusion"] == 1, "Atelectasis"].mean() > 2 * c.loc[c["Effusion"] == 0, "Atelectasis"].mean()


@pytest.mark.parametrize(
    "knob, key",
    [
        ({"subtlety": {"contrast": {"Nodule": 0}}}, "dataset.phantom.subtlety.contrast.Nodule"),
        ({"subtlety": {"position_spread": 3.0}}, "dataset.phantom.subtlety.position_spread"),
        ({"variation": {"pose": -1}}, "dataset.phantom.variation.pose"),
        ({"label_noise": {"Nodule": {"missed": 0.7}}}, "dataset.phantom.label_noise.Nodule.missed"),
        ({"label_noise": {"Nodle": {"missed": 0.1}}}, "dataset.phantom.label_noise"),
        ({"support_devices": {"given": {"Effusion": 1.5}}}, "dataset.phantom.support_devices.given.Effusion"),
        ({"prevalence": "nih"}, "dataset.phantom.prevalence"),
    ],
)
def test_bad_knob_is_a_schema_error_naming_the_key(knob, key):
    cfg = copy.deepcopy(load_config(REPO / "config" / "config.yaml"))
    cfg["dataset"]["phantom"].update(knob)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(cfg)
    with pytest.raises(ValueError, match=key.split(".")[-1] if "Nodle" not in str(knob) else "Nodle"):
        ph.PhantomConfig.from_section({**knob})


def test_independent_findings_need_a_prevalence():
    with pytest.raises(ValueError, match="independent_findings"):
        ph.PhantomConfig.from_section(dict(independent_findings=True))


def test_realistic_preset_validates():
    cfg = load_config(REPO / "config" / "config.yaml", read_config_file(REPO / "config" / "demo-realistic.yaml"))
    p = ph.PhantomConfig.from_section(cfg["dataset"]["phantom"])
    assert p.noisy and p.devices and p.targets() is not None
