"""The realism gate (``lco.realism_quantile``): a Gaussian over real scans' steering features, the distance a
released image may lie from it, and LCO held to it as well as to the labels' cuts.

The generator is the project's own (random weights, 16 px). The classifier reads the standardised mean
brightness of image quadrants, one per finding; its features are the four quadrant means and the image's
standard deviation, and the "real scans" are the generator's own prior draws, so a target that asks for
several quadrants far past their usual brightness can be met only outside the gate.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import quadrant_masks
from scipy.spatial.distance import mahalanobis
from sklearn.covariance import LedoitWolf

from synthcxr.lco.config import LCOConfig
from synthcxr.lco.optimize import optimise_latents
from synthcxr.lco.realism import RealismGate, fit_gate, load_gate, save_gate
from synthcxr.pggan.networks import Generator

pytestmark = pytest.mark.kernels  # compares floats across batch compositions

LABELS = ["Cardiomegaly", "Effusion", "Nodule", "No_Finding"]
THR = {n: 0.5 for n in LABELS}


class QuadrantFeatures(nn.Module):
    """features: the four quadrant means and the pixel std; logit_k = 3 * (standardised quadrant k) - 3.5 for
    the three findings, No_Finding = -max of those."""

    def __init__(self, G: nn.Module):
        super().__init__()
        self.label_names = list(LABELS)
        self.n_features = 5
        self.register_buffer("masks", quadrant_masks(G.resolution, 4))
        with torch.no_grad():
            f = self.features(G(prior(2048, G.latent_dim, 7)))
        self.register_buffer("mu", f[:, :3].mean(0))
        self.register_buffer("sd", f[:, :3].std(0))

    def features(self, x):
        return torch.cat([torch.einsum("nhw,khw->nk", x[:, 0], self.masks), x[:, 0].flatten(1).std(1, keepdim=True)], 1)

    def logits_and_features(self, x):
        f = self.features(x)
        lf = 3.0 * (f[:, :3] - self.mu) / self.sd - 3.5
        return torch.cat([lf, -lf.max(1, keepdim=True).values], 1), f

    def forward(self, x):
        return self.logits_and_features(x)[0]


def prior(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    G = Generator(16, latent_dim=8, fmap_base=64, fmap_max=16).eval()
    C = QuadrantFeatures(G).eval()
    with torch.no_grad():  # "real scans": prior draws the gate is fitted and calibrated on
        fit = C.features(G(prior(1500, 8, 11))).numpy()
        cal = C.features(G(prior(800, 8, 12))).numpy()
    return G, C, fit_gate(fit, cal, 0.5, 1.0)  # as typical as the median real scan


def _cfg(**kw) -> LCOConfig:
    base = dict(labels=LABELS, steps=60, lr=0.1, prior_weight=0.05, batch_size=16, retries=0, device="cpu",
                mode="per_sample", init_candidates=1, patience=None, margin=1.0)
    return LCOConfig.from_section({**base, **kw})


def _targets() -> np.ndarray:
    """Single findings (reachable inside the gate) and all three at once (far outside the prior's brightness)."""
    one = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]] * 4
    three = [[1, 1, 1, 0]] * 12
    return np.array(one + three, dtype=np.float32)


@torch.no_grad()
def _rendered(G, C, gate, z):
    logits, f = C.logits_and_features(G(torch.as_tensor(np.stack(z))))
    return torch.sigmoid(logits).numpy(), gate.distance(f).numpy()


def test_fit_gate_matches_scipy_mahalanobis_under_ledoit_wolf():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    fit = rng.normal(size=(400, 6)) @ a + 2.0
    cal = rng.normal(size=(150, 6)) @ a + 2.0
    gate = fit_gate(fit, cal, 0.8, 0.5)
    lw = LedoitWolf().fit(fit)
    want = np.array([mahalanobis(u, lw.location_, lw.precision_) for u in cal])
    got = gate.distance(torch.as_tensor(cal, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert gate.threshold == pytest.approx(float(np.quantile(want, 0.8)), rel=1e-6)
    assert (gate.n_fit, gate.n_cal, gate.quantile, gate.weight) == (400, 150, 0.8, 0.5)
    assert (gate.passes(got) == (want <= gate.threshold)).mean() > 0.99
    # the penalty: zero inside, weight * (d / threshold - 1) outside
    d = torch.tensor([0.5 * gate.threshold, gate.threshold, 3 * gate.threshold])
    np.testing.assert_allclose(gate.penalty(d).numpy(), [0.0, 0.0, 0.5 * 2.0], atol=1e-6)


@pytest.mark.parametrize("kw, match", [
    ({"quantile": 1.0}, "lco.realism_quantile"),
    ({"quantile": 0.0}, "lco.realism_quantile"),
    ({"weight": -1.0}, "lco.realism_weight"),
    ({"cal": np.zeros((5, 3))}, r"\[n, F\] with one F"),
])
def test_fit_gate_errors_name_the_key(kw, match):
    args = {"fit": np.random.default_rng(1).normal(size=(20, 4)), "cal": np.zeros((5, 4)), "quantile": 0.9, "weight": 1.0, **kw}
    with pytest.raises(ValueError, match=match):
        fit_gate(**args)


def test_save_and_load_round_trip_and_errors_name_the_rule(tmp_path, models):
    _, _, gate = models
    save_gate(gate, tmp_path / "realism.npz")
    back = load_gate(tmp_path / "realism.npz")
    assert isinstance(back, RealismGate) and back.threshold == gate.threshold and back.summary() == gate.summary()
    np.testing.assert_array_equal(back.whiten, gate.whiten)
    assert [p.name for p in tmp_path.iterdir()] == ["realism.npz"]  # written atomically: no temporaries left
    with pytest.raises(FileNotFoundError, match="run the lco_margins rule"):
        load_gate(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(ValueError, match=r"bad.npz: not a realism gate.*rerun the lco_margins rule"):
        load_gate(tmp_path / "bad.npz")
    np.savez(tmp_path / "shape.npz", mean=np.zeros(3), whiten=np.eye(2), threshold=1.0, quantile=0.9, weight=1.0, n_fit=2, n_cal=1)
    with pytest.raises(ValueError, match="shape.npz: realism gate arrays have shapes"):
        load_gate(tmp_path / "shape.npz")


def test_the_gate_holds_every_met_target_and_names_the_ones_it_stops(models):
    G, C, gate = models
    tgt = _targets()
    seeds = np.arange(len(tgt)) + 100
    free = optimise_latents(G, C, THR, tgt, seeds, _cfg())
    held = optimise_latents(G, C, THR, tgt, seeds, _cfg(), gate=gate)
    _, d_free = _rendered(G, C, gate, free["z"])
    probs, d_held = _rendered(G, C, gate, held["z"])
    ok_free, ok_held = free["success"].to_numpy(), held["success"].to_numpy()
    # without the gate LCO meets three-finding targets through images outside it
    assert (d_free[12:][ok_free[12:]] > gate.threshold).sum() >= 3
    # with it, every met target's image (re-rendered here) is inside the gate and past its cuts
    assert ok_held.any() and (d_held[ok_held] <= gate.threshold * (1 + 1e-5)).all()
    assert ok_held[12:].sum() < ok_free[12:].sum()
    cut = 1 / (1 + np.exp(-1.0))  # threshold 0.5, margin 1 logit
    for i in np.flatnonzero(ok_held):
        assert all(probs[i, j] >= cut - 1e-6 if tgt[i, j] else probs[i, j] <= 1 - cut + 1e-6 for j in range(3)), i
    assert ok_held[:12].mean() >= 0.75  # the single findings stay reachable


def test_the_gate_penalty_pulls_images_back_inside_and_stopped_targets_say_why(models):
    G, C, gate = models
    tgt = np.array([[1, 1, 0, 0]] * 16, dtype=np.float32)  # two findings at once: past the cuts early, outside the gate
    seeds = np.arange(16) + 300
    binary = optimise_latents(G, C, THR, tgt, seeds, _cfg(), gate=RealismGate(**{**gate.__dict__, "weight": 0.0}))
    pulled = optimise_latents(G, C, THR, tgt, seeds, _cfg(), gate=RealismGate(**{**gate.__dict__, "weight": 2.0}))
    assert pulled["success"].sum() >= binary["success"].sum() + 5
    # without the pull, targets end past every cut but outside the gate, and their reason says so, with the distance
    stopped = binary.loc[~binary["success"], "reason"]
    assert binary.attrs["unreal"] >= 5 and binary.attrs["unreal"] == int(stopped.str.contains("beyond the realism gate's").sum())
    assert stopped.str.contains(f"beyond the realism gate's {gate.threshold:.2f}").any()


def test_pool_accepts_only_members_inside_the_gate(models):
    G, C, gate = models
    tgt = np.array([[0, 0, 0, 1]] * 24 + [[1, 0, 0, 0]] * 8, dtype=np.float32)
    seeds = np.arange(len(tgt)) + 500
    cfg = _cfg(mode="pool", pool_block=32, pool_factor=4, steps=1)
    tight = RealismGate(**{**gate.__dict__, "threshold": float(np.quantile(gate.distance(C.features(G(prior(512, 8, 13)))).detach().numpy(), 0.3))})
    free = optimise_latents(G, C, THR, tgt, seeds, cfg, pool_seed=9)
    held = optimise_latents(G, C, THR, tgt, seeds, cfg, pool_seed=9, gate=tight)
    assert held.attrs["pool"].accepted < free.attrs["pool"].accepted
    _, d = _rendered(G, C, tight, held["z"])
    met = held["success"].to_numpy()
    assert met.any() and (d[met] <= tight.threshold * (1 + 1e-5)).all()


def test_run_margins_fits_the_gate_on_train_and_calibrates_it_on_val(tmp_path):
    from conftest import prepared_with_random_classifier

    from synthcxr.classifier import load_classifier
    from synthcxr.classifier.sources import prepared_split
    from synthcxr.data.store import PreparedDataset
    from synthcxr.lco.margins import run_margins
    from synthcxr.lco.realism import image_features

    folder, names = prepared_with_random_classifier(tmp_path)
    (tmp_path / "thresholds.json").write_text(json.dumps({n: 0.5 for n in names}))
    cfg = {"labels": names, "margin": 3.0, "margin_quantile": None, "device": "cpu", "realism_quantile": 0.9, "realism_weight": 2.0}
    out = run_margins(cfg, tmp_path / "model.pt", tmp_path / "thresholds.json", folder, tmp_path / "margins.json",
                      realism_path=tmp_path / "realism.npz")
    gate = load_gate(tmp_path / "realism.npz")
    assert out["realism"]["threshold"] == gate.threshold and json.loads((tmp_path / "margins.json").read_text())["realism"]["weight"] == 2.0
    # independent reference: the model's features on the train split (fit) and the val split (threshold)
    C = load_classifier(tmp_path / "model.pt", "cpu")
    ds = PreparedDataset(folder)
    fit = image_features(C, prepared_split(ds, "train", names, 16).dataset)
    cal = image_features(C, prepared_split(ds, "val", names, 16).dataset)
    assert (gate.n_fit, gate.n_cal) == (len(fit), len(cal)) == (len(ds.split("train")), 60)
    lw = LedoitWolf().fit(fit.astype(np.float64))
    want = np.array([mahalanobis(u, lw.location_, lw.precision_) for u in cal.astype(np.float64)])
    assert gate.threshold == pytest.approx(float(np.quantile(want, 0.9)), rel=1e-4)
    with pytest.raises(ValueError, match="realism_path"):
        run_margins(cfg, tmp_path / "model.pt", tmp_path / "thresholds.json", folder, tmp_path / "m2.json")


@pytest.mark.parametrize("arch", ["small_cnn", "densenet121"])
def test_classifier_logits_and_features_are_its_forward_and_features(arch):
    from synthcxr.classifier import Classifier
    from synthcxr.classifier.models import default_arch

    torch.manual_seed(0)
    a = {**default_arch(arch, 3, 32), **({"blocks": [1, 1, 1, 1], "growth": 4} if arch == "densenet121" else {"dropout": 0.5})}
    clf = Classifier(a, ["a", "b", "c"], 32).eval()
    x = torch.rand(4, 1, 48, 48) * 2 - 1
    with torch.no_grad():
        logits, feats = clf.logits_and_features(x)
        torch.testing.assert_close(logits, clf(x), rtol=0, atol=0)
        torch.testing.assert_close(feats, clf.features(x), rtol=0, atol=0)
    assert feats.shape == (4, clf.n_features)
