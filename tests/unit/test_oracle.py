"""The ground-truth oracle: its statistics against independent references, its cohort, its card text, and
that no format but the phantom gets one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import binomtest
from sklearn.metrics import roc_auc_score

from synthcxr.archive.card import render_card
from synthcxr.data import phantom as ph
from synthcxr.data.splits import pseudonym
from synthcxr.validate import oracle as orc

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("k, n", [(0, 7), (5, 10), (19, 20), (118, 131), (40, 40)])
def test_wilson_matches_scipy(k, n):
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = orc.wilson(k, n)
    assert lo == pytest.approx(ref.low, abs=2e-4) and hi == pytest.approx(ref.high, abs=2e-4)
    assert orc.wilson(0, 0) is None


def test_wilson_interval_holds_its_own_proportion():
    """All k of n confirmed: the upper bound is 1 exactly, not 1 - 1e-16 (which once made the oracle figure's
    error bar negative and failed validate_oracle on 6 of 6)."""
    for n in range(1, 60):
        for k in range(n + 1):
            lo, hi = orc.wilson(k, n)
            assert lo <= k / n <= hi
    assert orc.wilson(6, 6)[1] == 1.0 and orc.wilson(0, 6)[0] == 0.0


def test_oracle_bars_draws_a_finding_confirmed_on_every_sample(tmp_path):
    from synthcxr.validate.figures import oracle_bars

    rate = lambda k, n: {"k": k, "n": n, "rate": k / n, "ci95": list(orc.wilson(k, n))}  # noqa: E731
    per = {"Cardiomegaly": {"n_requested": 6, "oracle": rate(6, 6), "checker": rate(6, 6), "checker_fooled": False},
           "Mass": {"n_requested": 18, "oracle": rate(13, 18), "checker": rate(4, 18), "checker_fooled": True}}
    oracle_bars({"released": {"per_finding": per}}, tmp_path / "o.png")
    assert (tmp_path / "o.png").stat().st_size > 1000


def test_released_agreement_flags_a_fooled_checker():
    names = ["Nodule", "Effusion"]
    lab = np.array([[1, 0]] * 20 + [[0, 1]] * 20)
    oracle = np.array([[1, 0]] * 10 + [[0, 0]] * 10 + [[0, 1]] * 19 + [[0, 0]] * 1)  # 50 % of nodules, 95 % of effusions
    checker = np.array([[1, 0]] * 18 + [[0, 0]] * 2 + [[0, 1]] * 20)  # 90 %, 100 %
    out = orc.released_agreement(lab, oracle, checker, names)
    nod, eff = out["Nodule"], out["Effusion"]
    assert (nod["n_requested"], nod["oracle"]["k"], nod["checker"]["k"]) == (20, 10, 18)
    assert nod["checker_minus_oracle"] == pytest.approx(0.4) and nod["checker_fooled"]
    assert eff["checker_minus_oracle"] == pytest.approx(0.05) and not eff["checker_fooled"]
    # nodule-labelled rows never show effusion to either; effusion-labelled rows show no nodule
    assert (eff["unrequested"]["oracle"]["k"], eff["unrequested"]["oracle"]["n"], eff["unrequested"]["checker"]["k"]) == (0, 20, 0)
    extra = orc.released_agreement(lab, np.ones_like(oracle), checker, names)
    assert extra["Nodule"]["unrequested"]["oracle"]["rate"] == 1.0 and extra["Nodule"]["oracle"]["rate"] == 1.0
    truth = orc.label_truth(lab, oracle, names)
    # label entries: nodule column right on 30 of 40, effusion on 39 of 40
    assert truth["share_true"] == pytest.approx(69 / 80)
    assert truth["per_label"]["Nodule"]["k"] == 30 and truth["samples_all_true"]["k"] == 10 + 19


def test_real_test_scores_match_sklearn():
    rng = np.random.default_rng(0)
    y = (rng.random((300, 2)) < 0.3).astype(int)
    p = np.clip(y * 0.3 + rng.random((300, 2)) * 0.7, 0, 1)
    out = orc.real_test_scores(y, p, np.array([0.5, 0.6]), ["A", "B"])
    for j, name in enumerate("AB"):
        assert out[name]["auroc"] == pytest.approx(roc_auc_score(y[:, j], p[:, j]))
        call = p[:, j] >= [0.5, 0.6][j]
        assert out[name]["sensitivity"]["k"] == int((call & (y[:, j] == 1)).sum())
        assert out[name]["specificity"]["k"] == int((~call & (y[:, j] == 0)).sum())


def test_oracle_cohort_is_clean_independent_and_separate():
    cfg = yaml.safe_load((REPO / "config" / "demo-realistic.yaml").read_text())
    phantom = {**cfg["dataset"]["phantom"], "n_patients": 3000}
    settings = {**orc.ORACLE_DEFAULTS, "n_patients": 3000}
    o = orc.oracle_cohort(phantom, settings)
    assert o.seed == phantom["seed"] + settings["seed_offset"] and not o.noisy and o.independent_findings
    assert o.subtlety == ph.PhantomConfig.from_section(phantom).subtlety  # the same look
    c = ph.sample_cohort(o)
    for n in ph.FINDINGS:
        assert abs(c[n].mean() - 0.2) < 0.03, n
    # findings independent: no co-occurrence structure to lean on
    assert abs(c.loc[c["Cardiomegaly"] == 1, "Effusion"].mean() - c["Effusion"].mean()) < 0.05
    main = ph.sample_cohort(ph.PhantomConfig.from_section(phantom))
    assert abs(c["support_device"].mean() - main["support_device"].mean()) < 0.02
    section = orc.oracle_dataset_section({**cfg["dataset"], "format": "phantom", "phantom": phantom, "seed": 1, "device": "cpu",
                                          "labels": list(ph.PHANTOM_LABELS)}, settings, 32)
    assert section["name"] == "phantom-realistic-oracle" and section["max_res"] == 32


def test_drawn_findings_join_on_the_prepared_pseudonyms():
    phantom = {"n_patients": 30, "seed": 2, "label_noise": {"Effusion": {"missed": 0.5}}}
    truth = orc.drawn_findings(phantom, "salt-1234")
    cohort = ph.sample_cohort(ph.PhantomConfig.from_section(phantom))
    first = cohort.iloc[0]
    assert truth.loc[pseudonym(first["image_id"], "salt-1234"), "Effusion"] == first["true_Effusion"]


def _result(fooled: bool) -> dict:
    rate = lambda k, n: {"k": k, "n": n, "rate": k / n, "ci95": list(orc.wilson(k, n))}  # noqa: E731
    return {
        "fooled_rule": "checker agreement - oracle agreement > 0.1",
        "released": {"n": 30, "per_finding": {"Nodule": {
            "n_requested": 30, "oracle": rate(12 if fooled else 28, 30), "checker": rate(29, 30),
            "checker_minus_oracle": 0.0, "checker_fooled": fooled,
            "unrequested": {"oracle": rate(3, 60), "checker": rate(0, 60)}}}},
        "synthetic_labels": {"share_true": 0.9, "samples_all_true": rate(27, 30), "per_label": {}},
        "oracle": {"real_test": {"per_finding": {"Nodule": {"auroc": 0.991, "sensitivity": rate(9, 10), "specificity": rate(90, 91)}}}},
    }


def test_card_oracle_section(tmp_path):
    from archive_fixtures import build_archive

    arch = build_archive(tmp_path / "arc", seal=False)
    path = tmp_path / "oracle.json"
    path.write_text(json.dumps(_result(fooled=True)))
    info = {**arch["info"], "config": {"dataset": {"format": "phantom"}}}
    text = render_card(info, oracle=path)
    assert "### Ground-truth oracle" in text and "| Nodule | 30 | 40.0 % [25, 58] | 96.7 % [83, 99] | checker fooled | 5.0 % / 0.0 % | 0.991 |" in text
    assert "No oracle exists" not in text
    nih = render_card({**arch["info"], "config": {"dataset": {"format": "nih"}}})
    assert "No oracle exists for this archive" in nih and "`nih`" in nih
    assert "Ground-truth oracle" not in render_card({**info, "config": {"dataset": {"format": "phantom"}}})  # not run: nothing said
    assert orc.card_section(None, "phantom") == []


def _snakemake() -> str:
    exe = Path(sys.executable).with_name("snakemake")
    return str(exe) if exe.exists() else (shutil.which("snakemake") or "")


@pytest.mark.skipif(not _snakemake(), reason="snakemake not installed")
def test_only_the_phantom_plans_an_oracle(tmp_path):
    root = ph.write_layout(tmp_path / "nih", "nih", ph.PhantomConfig.from_section(dict(n_patients=12, max_studies=2, seed=1)), 32)
    plans = {}
    for fmt in ("phantom", "nih"):
        cfg = tmp_path / f"{fmt}.yaml"
        ds = {"name": f"t-{fmt}", "format": fmt, "max_res": 32, "phantom": {"n_patients": 12, "max_studies": 2, "seed": 1}}
        if fmt == "nih":
            ds["root"] = str(root)
        cfg.write_text(yaml.safe_dump({"dataset": ds, "pggan": {"resolution": 32, "minibatch": {"4": 8, "8": 8, "16": 8, "32": 8}}}))
        proc = subprocess.Popen(
            [_snakemake(), "-s", str(REPO / "Snakefile"), "-d", str(tmp_path / fmt), "--configfile", str(cfg), "-n", "--cores", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        )
        try:
            out, _ = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        assert proc.returncode == 0, out
        plans[fmt] = out
    assert "rule validate_oracle" in plans["phantom"] and "oracle.json" in plans["phantom"]
    assert "oracle" not in plans["nih"]


def test_oracle_reaches_0975_on_clean_test_renders(tmp_path):
    """The oracle recipe (clean labels, independent findings, the classifier recipe at the archive's
    resolution) on a small cohort of the built-in look at the full demo's 64 px: every finding's clean test
    AUROC >= 0.975. Measured 0.981-1.000 on AVX-512 kernels and 0.9798 (Consolidation) at the lowest on AVX2
    ones, so 0.98 at this cohort size is a coin flip between CPUs; the realistic preset's 6,000-patient oracle
    at 32 px reaches 0.9845-0.9999 on AVX2 (docs/experiments.md)."""
    from synthcxr.classifier import ClassifierConfig, train_classifier
    from synthcxr.config import load_config, section
    from synthcxr.data.prepare import prepare
    from synthcxr.data.settings import PrepareConfig

    cfg = load_config(REPO / "config" / "config.yaml")
    cfg["device"] = "cpu"
    cfg["dataset"]["phantom"] = {"n_patients": 1500, "max_studies": 1, "seed": 5}
    cfg["validate"]["oracle"] = {"n_patients": 1500, "prevalence": 0.3, "epochs": 10, "width": 16, "seed_offset": 1000}
    cfg["classifier"].update(bootstrap=0, batch_size=32, lr=0.003)
    ds = orc.oracle_dataset_section(section(cfg, "dataset"), orc.oracle_settings(cfg), 64)
    prepare(PrepareConfig.from_section(ds), ds["labels"], tmp_path / "prep")
    train_classifier(ClassifierConfig.from_section(orc.oracle_run_settings(section(cfg, "classifier"), cfg, 64)), tmp_path / "prep", tmp_path / "prep",
                     tmp_path / "model", threads=2)
    per = json.loads((tmp_path / "model" / "metrics.json").read_text())["test"]["per_label"]
    low = {n: round(per[n]["auroc"], 4) for n in ph.FINDINGS if per[n]["auroc"] < 0.975}
    assert not low, low


def test_calibration_against_chexnet():
    steering = {
        n: {"auroc_reported_labels": ph.CHEXNET_AUROC[n] + d, "chexnet_auroc": ph.CHEXNET_AUROC[n], "minus_chexnet": d}
        for n, d in zip(ph.FINDINGS, [0.01, -0.02, 0.04, -0.049, 0.0, 0.02, -0.01])
    }
    cal = orc.calibration(steering)
    assert cal["n_findings"] == 7 and cal["within_goal"] and cal["outside_tolerance"] == []
    assert cal["mean_chexnet"] == pytest.approx(np.mean(list(ph.CHEXNET_AUROC.values())))
    assert cal["mean_minus_chexnet"] == pytest.approx(np.mean([0.01, -0.02, 0.04, -0.049, 0.0, 0.02, -0.01]))
    steering["Nodule"] = {**steering["Nodule"], "auroc_reported_labels": 0.70, "minus_chexnet": 0.70 - 0.7802}
    cal = orc.calibration(steering)
    assert cal["outside_tolerance"] == ["Nodule"] and not cal["within_goal"]
