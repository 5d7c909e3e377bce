import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from synthcxr.labels import PHANTOM_LABELS
from synthcxr.validate.diversity import cooccurrence, prevalence, run_diversity, sample_rows
from synthcxr.validate.tstr import paired_difference, summarise


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

    def metrics(p):
        return {"n_train": 10, "test": {"per_label": {n: {"auroc": roc_auc_score(y[:, j], p[:, j]), "ci_low": 0.0, "ci_high": 1.0}
                                                      for j, n in enumerate(names)}}}

    s = summarise(metrics(p_real), metrics(p_syn), d, names, target=0.8)
    assert s["findings"] == ["Effusion", "Nodule"]
    want = np.mean([roc_auc_score(y[:, j], p_syn[:, j]) for j in range(2)])
    assert s["mean_auroc_findings"]["synthetic_trained"] == pytest.approx(want)
    assert s["meets_target"] == (want >= 0.8)
