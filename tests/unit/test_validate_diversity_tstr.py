import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from synthcxr.labels import PHANTOM_LABELS
from synthcxr.validate.diversity import cooccurrence, prevalence, run_diversity, sample_rows
from synthcxr.validate.tstr import paired_difference, run_tstr, summarise_arms


def test_prevalence_and_cooccurrence_by_hand():
    y = np.array([[1, 1, 0], [1, 0, 0], [0, 1, np.nan], [1, 1, 1]], float)
    np.testing.assert_allclose(prevalence(y), [0.75, 0.75, 1 / 3])
    c = cooccurrence(y)
    assert c[0, 1] == pytest.approx(2 / 4) and c[1, 0] == c[0, 1]
    assert c[0, 2] == pytest.approx(1 / 3)  # only 3 rows have label 2 known
    np.testing.assert_allclose(np.diag(c), prevalence(y))


def test_run_diversity_writes_figures_and_numbers(tmp_path, tiny_prepared):
    labels = list(PHANTOM_LABELS)
    rng = np.random.default_rng(0)
    n = 30
    man = pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)]})
    for j, name in enumerate(labels):
        man[name] = (rng.random(n) < 0.3).astype(np.int8)
        man[f"prob_{name}"] = rng.random(n).astype(np.float32)
    arch = tmp_path / "archive"
    arch.mkdir()
    man.to_parquet(arch / "manifest.parquet")
    imgs = {sid: rng.integers(0, 256, (16, 16), dtype=np.uint8) for sid in man["sample_id"]}
    out = run_diversity(labels, arch, tiny_prepared, tmp_path / "p.png", tmp_path / "c.png", tmp_path / "g.png",
                        tmp_path / "d.json", per_label=4, read_images=lambda ids: {i: imgs[i] for i in ids})
    for f in ("p.png", "c.png", "g.png"):
        assert (tmp_path / f).stat().st_size > 2000
    js = json.loads((tmp_path / "d.json").read_text())
    want = man[labels].mean().to_dict()
    for name in labels:
        assert js["prevalence"]["archive (target)"][name] == pytest.approx(want[name])
        assert set(out["grid_samples"][name]) <= set(man.loc[man[name] == 1, "sample_id"])
    assert sample_rows(man, labels, 4, 0) == out["grid_samples"]


def test_paired_difference_matches_sklearn_and_summary():
    rng = np.random.default_rng(0)
    y = (rng.random((150, 3)) < 0.4).astype(float)
    p_real = np.clip(y * 0.6 + rng.random((150, 3)) * 0.7, 0, 1)
    p_syn = np.clip(y * 0.3 + rng.random((150, 3)) * 0.7, 0, 1)
    names = ["Effusion", "Nodule", "No_Finding"]
    d = paired_difference(y, p_real, p_syn, names, n_boot=200, seed=0)
    for j, n in enumerate(names):
        want = roc_auc_score(y[:, j], p_syn[:, j]) - roc_auc_score(y[:, j], p_real[:, j])
        assert d[n]["delta"] == pytest.approx(want, abs=1e-12)
        assert d[n]["ci_low"] <= d[n]["delta"] <= d[n]["ci_high"]
        assert d[n]["ci_high"] < 0  # the weaker synthetic-trained scores are significantly worse here
    assert "mean_findings" not in d
    dm = paired_difference(y, p_real, p_syn, names, n_boot=200, seed=0, mean_over=[0, 1])
    hand = np.mean([roc_auc_score(y[:, j], p_syn[:, j]) - roc_auc_score(y[:, j], p_real[:, j]) for j in (0, 1)])
    assert dm["mean_findings"]["delta"] == pytest.approx(hand, abs=1e-12)
    assert dm["mean_findings"]["ci_low"] <= hand <= dm["mean_findings"]["ci_high"] < 0
    assert {n: dm[n] for n in names} == d  # the same resamples give the same per-label intervals

    # three arms x two seeds: per-seed AUROCs, their mean and sd, and the ensemble, all against sklearn
    groups = np.repeat(np.arange(50), 3)
    probs = {"real": [p_real, np.clip(p_real + 0.05 * rng.random(p_real.shape), 0, 1)],
             "synthetic": [p_syn, np.clip(p_syn + 0.05 * rng.random(p_syn.shape), 0, 1)],
             "real+synthetic": [p_real, p_syn]}
    s = summarise_arms(y, probs, names, groups, n_boot=200, seed=0, target=0.8)
    assert s["findings"] == ["Effusion", "Nodule"] and s["ci"]["resampling"] == "test patients"
    for arm, ps in probs.items():
        per_seed = [[roc_auc_score(y[:, j], p[:, j]) for j in range(3)] for p in ps]
        ens = np.mean(ps, axis=0)
        for j, n in enumerate(names):
            got = s["arms"][arm]["per_label"][n]
            assert got["auroc_per_seed"] == pytest.approx([r[j] for r in per_seed])
            assert got["auroc_mean"] == pytest.approx(np.mean([r[j] for r in per_seed]))
            assert got["auroc_sd"] == pytest.approx(np.std([r[j] for r in per_seed], ddof=1))
            assert got["ensemble_auroc"] == pytest.approx(roc_auc_score(y[:, j], ens[:, j]))
            assert got["ci_low"] <= got["ensemble_auroc"] <= got["ci_high"]
        want = np.mean([np.mean(r[:2]) for r in per_seed])
        assert s["arms"][arm]["mean_auroc_findings"] == pytest.approx(want)
    ens_real, ens_syn = np.mean(probs["real"], axis=0), np.mean(probs["synthetic"], axis=0)
    d_syn = s["difference_from_real"]["synthetic"]["Effusion"]["delta"]
    assert d_syn == pytest.approx(roc_auc_score(y[:, 0], ens_syn[:, 0]) - roc_auc_score(y[:, 0], ens_real[:, 0]))
    assert set(s["difference_from_real"]) == {"synthetic", "real+synthetic"}
    assert s["meets_target"] == (s["arms"]["synthetic"]["mean_auroc_findings"] >= 0.8)


class _Const(torch.nn.Module):
    """Stand-in classifier: the same logits for every image."""

    input_res = 16

    def __init__(self, n_labels: int):
        super().__init__()
        self.logits = torch.linspace(-1, 1, n_labels)

    def forward(self, x):
        return self.logits.expand(len(x), -1)


def _clf(sec: dict):
    from synthcxr.classifier import ClassifierConfig

    return ClassifierConfig.from_section({"name": "t", "arch": "small_cnn", "device": "cpu", "input_res": 16, **sec})


@pytest.mark.parametrize("epochs", [None, 3])
def test_run_tstr_gives_every_arm_the_same_recipe_and_tstr_epochs(tmp_path, tiny_prepared, epochs):
    labels = list(PHANTOM_LABELS)
    seen = []

    def trainer(sec, source, prepared, run_dir, log_file):
        seen.append((sec.name, sec.epochs, sec.patience, sec.samples_per_epoch, sec.seed_offset))
        return {"n_train": 1, "steps": 10 * sec.epochs, "epochs_run": sec.epochs, "best_epoch": sec.epochs,
                "init_from": sec.init_from}

    clf = _clf({"labels": labels, "epochs": 7, "patience": 2, "batch_size": 8, "bootstrap": 20, "seed": 0, "checker": {"name": "x"}})
    out = run_tstr(clf, tmp_path / "arch", tiny_prepared, tmp_path / "runs", tmp_path / "t.json", tmp_path / "t.png",
                   seeds=2, epochs=epochs, trainer=trainer, loader=lambda path, device: _Const(len(labels)))
    want = 7 if epochs is None else epochs
    pre = (want + 1) // 2
    per_seed = ["synthetic-1", "pretrain-1", "real-1", "real+synthetic-1", "pretrain_finetune-1"]
    assert [s[0] for s in seen] == [f"tstr-{a}-seed{k}" for k in (0, 1) for a in per_seed]
    # every run: patience past its epochs (no early stop), one epoch = the real train split; the pretrain
    # and finetune halves add up to the epochs every other arm takes
    n_real = {s[3] for s in seen}
    assert {s[2] for s in seen} == {want + 1} and len(n_real) == 1
    assert [s[1] for s in seen] == [want, pre, want, want, want - pre] * 2
    assert [s[4] for s in seen] == [100] * 5 + [101] * 5
    js = json.loads((tmp_path / "t.json").read_text())
    assert js["epochs"] == want and js["seeds"] == 2 and js["steps_per_run"] == [10 * want]
    assert out["arms"]["synthetic"]["mean_auroc_findings"] == pytest.approx(0.5)  # constant scores
    assert set(out["difference_from_real"]) == {"synthetic", "real+synthetic", "pretrain_finetune"}


def test_run_tstr_refuses_zero_epochs(tmp_path, tiny_prepared):
    with pytest.raises(ValueError, match="validate.tstr_epochs"):
        run_tstr(_clf({"labels": ["No_Finding"]}), tmp_path, tiny_prepared, tmp_path, tmp_path / "t.json", tmp_path / "t.png", epochs=0)


def test_run_tstr_trains_every_arm_at_each_nested_fraction_with_equal_steps(tmp_path, tiny_prepared):
    labels = list(PHANTOM_LABELS)
    calls = []

    def trainer(sec, source, prepared, run_dir, log_file):
        calls.append({**sec.to_dict(), "source": source, "run_dir": run_dir})
        return {"n_train": 1, "steps": 10 * sec.epochs, "epochs_run": sec.epochs, "best_epoch": 1,
                "init_from": sec.init_from}

    clf = _clf({"labels": labels, "epochs": 4, "batch_size": 8, "bootstrap": 0, "seed": 3})
    out = run_tstr(clf, tmp_path / "arch", tiny_prepared, tmp_path / "runs", tmp_path / "t.json", tmp_path / "t.png",
                   seeds=1, trainer=trainer, loader=lambda path, device: _Const(len(labels)), real_fractions=[1.0, 0.1, 0.5],
                   synthetic_share=0.3, out_fractions_png=tmp_path / "f.png")
    by = {(c["name"]): c for c in calls}
    assert sorted(by) == sorted(["tstr-synthetic-1-seed0", "tstr-pretrain-1-seed0"]
                                + [f"tstr-{a}-{f}-seed0" for f in ("0.1", "0.5", "1") for a in ("real", "real+synthetic", "pretrain_finetune")])
    for f in ("0.1", "0.5", "1"):
        assert by[f"tstr-real-{f}-seed0"]["real_fraction"] == float(f)
        assert by[f"tstr-real+synthetic-{f}-seed0"]["synthetic_share"] == 0.3
        ft = by[f"tstr-pretrain_finetune-{f}-seed0"]
        assert ft["init_from"] == str(by["tstr-pretrain-1-seed0"]["run_dir"] / "model.pt") and ft["epochs"] == 2
    js = json.loads((tmp_path / "t.json").read_text())
    assert js["real_fractions"] == [0.1, 0.5, 1.0] and set(js["fractions"]) == {"0.1", "0.5", "1"}
    # equal optimisation steps in every arm and fraction, the pretrain half included
    assert js["steps_per_run"] == [40]
    assert all(r["steps"] == 40 for fr in js["fractions"].values() for rs in fr["runs"].values() for r in rs)
    # nested subsets by patient: the counts grow with the fraction, and the top level is the largest fraction's
    n_pat = [js["fractions"][f]["n_real_patients"] for f in ("0.1", "0.5", "1")]
    assert n_pat[0] < n_pat[1] < n_pat[2] and js["real_fraction"] == 1.0
    assert js["arms"] == js["fractions"]["1"]["arms"] and (tmp_path / "f.png").stat().st_size > 1000
    assert set(out["fractions"]["0.1"]["difference_from_real"]) == {"synthetic", "real+synthetic", "pretrain_finetune"}
    # the dataset card gets one row per fraction, not the whole table again for each
    from synthcxr.archive.card import _metric_table

    card = _metric_table(tmp_path / "t.json", "TSTR", skip=("fractions", "runs"))
    assert f"| 10 % ({n_pat[0]}) | 0.500 |" in card and "fractions." not in card


@pytest.mark.parametrize("kw, match", [
    ({"real_fractions": [0.0, 1.0]}, "tstr_real_fractions"),
    ({"real_fractions": [1.5]}, "tstr_real_fractions"),
    ({"arms": ["real", "bogus"]}, "tstr_arms"),
    ({"arms": ["synthetic"]}, "tstr_arms"),
])
def test_run_tstr_refuses_bad_fractions_and_arms(tmp_path, tiny_prepared, kw, match):
    with pytest.raises(ValueError, match=match):
        run_tstr(_clf({"labels": ["No_Finding"]}), tmp_path, tiny_prepared, tmp_path, tmp_path / "t.json", tmp_path / "t.png", **kw)


@pytest.mark.parametrize("key, value", [
    ("tstr_real_fractions", [0.0, 1.0]),
    ("tstr_real_fractions", [1.2]),
    ("tstr_arms", ["real", "bogus"]),
    ("tstr_arms", ["synthetic"]),
    ("tstr_synthetic_share", 1.0),
])
def test_bad_tstr_keys_are_schema_errors_naming_the_key(key, value):
    from synthcxr.config import ConfigError, load_config

    from dag import REPO

    with pytest.raises(ConfigError, match=key):
        load_config(REPO / "config" / "config.yaml", {"validate": {key: value}})
