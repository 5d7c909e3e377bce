"""Quality-metric features that do not come from the steering classifier, their resize modes, and FID_inf."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from synthcxr.metrics.features import classifier_extractor, get_extractor, resize_for_features, torchscript_extractor
from synthcxr.metrics.fid import fid_from_features, fid_infinity, frechet_distance, sample_sizes


def test_steering_classifier_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="steering classifier that LCO optimised"):
        get_extractor("classifier")
    with pytest.raises(KeyError, match="checker, inception or torchscript"):
        get_extractor("densenet")


class _Pool(torch.nn.Module):
    def forward(self, x):
        return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


def test_torchscript_extractor_contract_and_sha256(tmp_path):
    path = tmp_path / "ext.pt"
    with pytest.warns(DeprecationWarning):
        torch.jit.script(_Pool()).save(str(path))
    ext = get_extractor(f"torchscript:{path}", feature_res=32)
    d = ext.describe()
    assert d["name"] == "torchscript:ext.pt" and d["dim"] == 3 and d["input_res"] == 32 and d["resize"] == "clean"
    assert d["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and d["weights"] == str(path)
    x = torch.rand(4, 1, 64, 64) * 2 - 1
    want = _Pool()(resize_for_features(x, 32, "clean"))
    torch.testing.assert_close(ext(x), want)
    # a torch.export program under the same name and contract
    ep = tmp_path / "ext.pt2"
    batch = torch.export.Dim("batch", min=1)
    torch.export.save(torch.export.export(_Pool(), (torch.zeros(2, 1, 32, 32),), dynamic_shapes={"x": {0: batch}}), str(ep))
    torch.testing.assert_close(get_extractor(f"torchscript:{ep}", feature_res=32)(x), want)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        torchscript_extractor(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not torchscript")
    with pytest.raises(ValueError, match="not a TorchScript file"):
        torchscript_extractor(tmp_path / "junk.pt")


def test_checker_features_record_the_weight_file(tmp_path):
    class Net(torch.nn.Module):
        input_res = 16

        def features(self, x):
            return x.mean(dim=(2, 3))

    w = tmp_path / "model.pt"
    w.write_bytes(b"weights")
    d = classifier_extractor(Net(), weights=w).describe()
    assert d["name"] == "checker" and d["sha256"] == hashlib.sha256(b"weights").hexdigest()


def test_clean_resize_matches_pil_and_does_not_alias():
    rng = np.random.default_rng(0)
    img = rng.uniform(-1, 1, (96, 96)).astype(np.float32)
    img = gaussian_filter(img, 1.0).astype(np.float32)
    ours = resize_for_features(torch.from_numpy(img)[None, None], 40, "clean")[0, 0].numpy()
    pil = np.asarray(Image.fromarray(img, mode="F").resize((40, 40), Image.BICUBIC))
    assert np.abs(ours - pil).max() < 0.03  # PIL's antialiased bicubic, the clean-fid resize
    # 1-pixel stripes at 1024 px are pure detail: an antialiased shrink to 299 px averages them to grey,
    # pytorch-fid's bilinear resize samples them and leaves strong false patterns
    stripes = torch.from_numpy(np.tile(np.array([1.0, -1.0], np.float32), 512))[None, None, None].expand(1, 1, 1024, 1024)
    clean = resize_for_features(stripes, 299, "clean")
    fid_style = resize_for_features(stripes, 299, "pytorch_fid")
    assert clean.std() < 0.05 and fid_style.std() > 0.3
    with pytest.raises(ValueError, match="validate.resize"):
        resize_for_features(stripes, 299, "nearest")


def test_fid_infinity_recovers_the_true_distance_of_two_gaussians():
    d = 16
    rng = np.random.default_rng(3)
    a = rng.normal(size=(d, d)) / np.sqrt(d)
    cov1, cov2 = np.eye(d), a @ a.T + 0.5 * np.eye(d)
    mu1, mu2 = np.zeros(d), np.full(d, 0.2)
    true = frechet_distance(mu1, cov1, mu2, cov2)
    ref = rng.multivariate_normal(mu1, cov1, 20000)
    x = rng.multivariate_normal(mu2, cov2, 2000)
    sizes = sample_sizes(len(x), 6)
    assert sizes[0] == 400 and sizes[-1] == 2000 and len(sizes) == 6
    inf, slope, pts = fid_infinity(x, ref, sizes, seed=1)
    assert [p["n"] for p in pts] == sizes and slope > 0  # FID_N falls with N: a positive 1/N term
    fid_small = pts[0]["fid"]
    assert abs(inf - true) < 0.5 * abs(fid_small - true)  # the extrapolation removes most of the bias
    assert abs(inf - true) / true < 0.05
    assert pts[-1]["fid"] == pytest.approx(fid_from_features(x, ref))  # the largest N is the whole set
    with pytest.raises(ValueError, match="at least two"):
        fid_infinity(x[:10], ref, [50, 100])


# --------------------------------------------------------------------------- patient-clustered bootstrap
def test_clustered_bootstrap_resamples_whole_patients():
    from synthcxr.metrics.bootstrap import bootstrap_ci, bootstrap_distribution, resample_indices

    ids = np.array(["b", "a", "b", "c", "a", "a"])
    idx = resample_indices(len(ids), 3, seed=4, clusters=ids)
    draws = np.random.default_rng(4).integers(0, 3, size=(3, 3))  # clusters a, b, c numbered in sorted order
    members = {0: [1, 4, 5], 1: [0, 2], 2: [3]}
    for got, d in zip(idx, draws):
        assert got.tolist() == [r for c in d for r in members[c]]
    # four identical follow-ups per patient: the clustered interval matches scipy's bootstrap over patients,
    # the image-level one is about half as wide (it counts each patient four times)
    import scipy.stats

    rng = np.random.default_rng(0)
    per_patient = rng.normal(size=200)
    values = np.repeat(per_patient, 4)
    patients = np.repeat(np.arange(200), 4)
    lo_c, hi_c = bootstrap_ci(np.mean, values, n=2000, seed=1, clusters=patients)
    lo_i, hi_i = bootstrap_ci(np.mean, values, n=2000, seed=1)
    ref = scipy.stats.bootstrap((per_patient,), np.mean, n_resamples=2000, method="percentile", random_state=2)
    ref_w = ref.confidence_interval.high - ref.confidence_interval.low
    assert abs((hi_c - lo_c) - ref_w) / ref_w < 0.15
    assert 1.6 < (hi_c - lo_c) / (hi_i - lo_i) < 2.5
    assert bootstrap_distribution(np.mean, values, n=5, seed=1, clusters=patients).shape == (5,)
    with pytest.raises(ValueError, match="one id per row"):
        resample_indices(4, 2, 0, clusters=[1, 2])


def test_split_metrics_report_patient_resampling():
    from synthcxr.classifier.evaluate import split_metrics

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, (120, 2)).astype(float)
    p = np.clip(y * 0.6 + rng.uniform(0, 0.5, y.shape), 0, 1)
    groups = np.repeat(np.arange(40), 3)
    m = split_metrics(y, p, ["Effusion", "No_Finding"], 200, 0, groups=groups)
    assert m["ci_resampling"].startswith("patients") and m["n_patients"] == 40
    assert m["per_label"]["Effusion"]["ci_low"] <= m["per_label"]["Effusion"]["auroc"] <= m["per_label"]["Effusion"]["ci_high"]
    assert split_metrics(y, p, ["Effusion", "No_Finding"], 50, 0)["ci_resampling"] == "images"
