"""Intermediate-layer optimisation (``lco.feature_res``): a latent that carries an offset to one block's features.

The generator is the project's own (random weights, 16 px); the classifier reads the standardised mean
brightness of image quadrants, one per finding, so a target asks for bright and dark regions at once.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import quadrant_masks

from synthcxr.classifier.models import default_arch
from synthcxr.lco.config import LCOConfig
from synthcxr.lco.latents import read_latents
from synthcxr.lco.optimize import optimise_latents
from synthcxr.lco.plan import make_plan, write_plan
from synthcxr.lco.run import run_shard
from synthcxr.lco.starts import latent_length
from synthcxr.pggan.networks import Generator

pytestmark = pytest.mark.kernels  # compares floats across batch compositions

LABELS = ["Cardiomegaly", "Effusion", "Nodule", "No_Finding"]


class Quadrants(nn.Module):
    """logit_k = 3 * (standardised mean of quadrant k) - 3.5 for the three findings; No_Finding = -max of those."""

    def __init__(self, G: nn.Module):
        super().__init__()
        self.label_names = list(LABELS)
        masks = quadrant_masks(G.resolution, 3)
        self.register_buffer("masks", masks)
        with torch.no_grad():
            m = torch.einsum("nhw,khw->nk", G(torch.randn(2048, G.latent_dim, generator=torch.Generator().manual_seed(7)))[:, 0], masks)
        self.register_buffer("mu", m.mean(0))
        self.register_buffer("sd", m.std(0))

    def forward(self, x):
        lf = 3.0 * (torch.einsum("nhw,khw->nk", x[:, 0], self.masks) - self.mu) / self.sd - 3.5
        return torch.cat([lf, -lf.max(1, keepdim=True).values], 1)


@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    G = Generator(16, latent_dim=8, fmap_base=64, fmap_max=16).eval()
    return G, Quadrants(G).eval()


def _cfg(**kw) -> LCOConfig:
    base = dict(labels=LABELS, steps=40, lr=0.1, prior_weight=0.05, batch_size=16, retries=0, device="cpu",
                mode="per_sample", init_candidates=1, patience=None, margin=0.0)
    return LCOConfig.from_section({**base, **kw})


def test_a_zero_offset_renders_the_plain_latent_and_the_length_names_the_block(models):
    G, _ = models
    dims = G.offset_dims()
    assert sorted(dims) == [4, 8] and dims == {4: 16 * 16, 8: 16 * 64}  # C_r * r * r below the 16 px output
    z = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = G(z)
        for r, n in dims.items():
            assert G.offset_res(8 + n) == r
            assert torch.equal(G(torch.cat([z, torch.zeros(5, n)], 1)), plain)
        # an offset at 8 px is added to block 8's output, by hand through the blocks
        delta = torch.randn(5, dims[8], generator=torch.Generator().manual_seed(2))
        x = G.blocks[1](G.blocks[0](z)) + delta.view(5, 16, 8, 8)
        by_hand = G.to_rgb[2](G.blocks[2](x))
        torch.testing.assert_close(G(torch.cat([z, delta], 1)), by_hand, rtol=0, atol=1e-6)
    assert G.offset_res(8) is None
    with pytest.raises(ValueError, match=r"lengths \[8, 264, 1032\].*got 9"):
        G(torch.zeros(1, 9))
    assert latent_length(G, None) == 8 and latent_length(G, 8) == 8 + 1024
    with pytest.raises(ValueError, match=r"lco.feature_res: 16 .*\[4, 8\]"):
        latent_length(G, 16)


def test_the_feature_offset_reaches_targets_the_latent_alone_does_not(models):
    G, C = models
    targets = np.array([[1, 1, 1, 0]] * 8 + [[1, 0, 1, 0]] * 8, dtype=np.float32)
    seeds = np.arange(16) + 100
    thr = {n: 0.5 for n in LABELS}
    plain = optimise_latents(G, C, thr, targets, seeds, _cfg())
    feat = optimise_latents(G, C, thr, targets, seeds, _cfg(feature_res=8, feature_weight=0.1, feature_lr=0.05))
    z = np.stack(feat["z"])
    assert z.shape == (16, 8 + 1024) and np.stack(plain["z"]).shape == (16, 8)
    assert feat["success"].sum() > plain["success"].sum() + 4, (plain["success"].sum(), feat["success"].sum())
    # the image LCO judged is the one the latent renders, offset included
    with torch.no_grad():
        p = torch.sigmoid(C(G(torch.as_tensor(z)))).numpy()
    np.testing.assert_allclose(p, np.stack([feat[f"prob_{n}"] for n in LABELS], 1), atol=1e-5)
    # the offset's weight keeps it small: against a target no sample meets (every step runs), a heavier
    # weight leaves a smaller offset
    never = {n: 0.999 for n in LABELS}
    rms = [float(np.sqrt((np.stack(optimise_latents(G, C, never, targets[:4], seeds[:4], _cfg(feature_res=8, feature_weight=w, feature_lr=0.05))["z"])[:, 8:] ** 2).mean()))
           for w in (0.0, 1.0, 10.0)]
    assert rms[0] > rms[1] > rms[2] > 0, rms
    # feature_radius bounds every row's offset (root mean square) however long it runs
    bounded = np.stack(optimise_latents(G, C, never, targets[:4], seeds[:4], _cfg(feature_res=8, feature_weight=0.0, feature_lr=0.05,
                                                                                 feature_radius=0.05))["z"])[:, 8:]
    row_rms = np.sqrt((bounded**2).mean(1))
    assert rms[0] > 0.05 and np.all(row_rms <= 0.05 * (1 + 1e-5)) and np.all(row_rms > 0.04), row_rms
    # a row's result does not depend on the batch it ran in
    alone = optimise_latents(G, C, thr, targets[:3], seeds[:3], _cfg(feature_res=8, feature_weight=0.1, feature_lr=0.05, batch_size=2))
    np.testing.assert_allclose(np.stack(alone["z"]), z[:3], atol=1e-4)


def test_a_pair_variant_keeps_its_bases_feature_offset_and_edits_the_latent(models):
    """The proximity terms price latent moves only, so a free offset would carry the edit as a feature patch:
    a variant keeps its base's offset bit for bit and moves its latent; met variants meet their edited target."""
    from synthcxr.lco.accept import accept_rule, resolve_label_space
    from synthcxr.lco.pair_plan import variant_targets
    from synthcxr.lco.pairs import optimise_variants

    G, C = models
    thr = {n: 0.5 for n in LABELS}
    cfg = _cfg(feature_res=8, feature_weight=0.1, feature_lr=0.05)
    targets = np.array([[1, 0, 1, 0]] * 8, dtype=np.float32)
    bases = optimise_latents(G, C, thr, targets, np.arange(8) + 100, cfg)
    ok = bases["success"].to_numpy()
    zb = np.stack(bases["z"])[ok]
    assert ok.sum() >= 4 and np.abs(zb[:, 8:]).max() > 0  # the bases carry offsets
    space = resolve_label_space(LABELS, C.label_names, thr)
    var = optimise_variants(G, C, space, zb, variant_targets(targets[ok], LABELS, ["Effusion"]), cfg, 0.5)
    zv = np.stack(var["z"].to_numpy())
    base_of = var["base_row"].to_numpy()
    np.testing.assert_array_equal(zv[:, 8:], zb[base_of, 8:])
    met = var["success"].to_numpy()
    assert met.sum() >= 2 and (var["latent_dist"].to_numpy()[met] > 0).all()
    with torch.no_grad():
        p = torch.sigmoid(C(G(torch.as_tensor(zv[met])))).numpy()
    assert accept_rule(p, var[[f"target_{n}" for n in LABELS]].to_numpy()[met], [0.5] * len(LABELS), 0.0).all()


def test_pool_accepts_carry_a_zero_offset_and_the_shard_records_the_block(models, tmp_path, monkeypatch):
    G, C = models
    from synthcxr.classifier import Classifier
    from synthcxr.pggan.checkpoint import save_generator
    from synthcxr.utils.atomic import torch_save

    save_generator(tmp_path / "generator.pt", G, {})
    arch = default_arch("small_cnn", len(LABELS), 16, 4)
    torch_save({"arch": arch, "state_dict": Classifier(arch, LABELS, 16).state_dict(), "meta": {"label_names": LABELS, "input_res": 16}},
               tmp_path / "model.pt")
    monkeypatch.setattr("synthcxr.classifier.load_classifier", lambda path, device: C)  # the quadrant reader steers
    section = dict(labels=LABELS, device="cpu", seed=3, steps=20, lr=0.1, batch_size=8, retries=0, mode="pool", init_candidates=4,
                   margin=0.0, feature_res=4, feature_weight=0.5, feature_lr=0.05, shard_size=24,
                   plan={"mode": "balanced", "n_samples": 24})
    write_plan(make_plan(section, LABELS, None, seed=3), tmp_path / "plan.parquet")
    (tmp_path / "thresholds.json").write_text(json.dumps({n: 0.5 for n in LABELS}))
    out = tmp_path / "latents" / "shard-00000.parquet"
    res = run_shard(tmp_path / "plan.parquet", 0, tmp_path / "generator.pt", tmp_path / "model.pt", tmp_path / "thresholds.json", section, out)
    shard = read_latents(out, LABELS)
    assert shard.z.shape == (24, 8 + 256)
    drawn = (res["steps"] == 0) & res["success"]
    assert drawn.any() and (~drawn).any()
    assert not shard.z[drawn.to_numpy(), 8:].any()  # accepted as drawn: the plain latent, zero offset
    assert shard.z[(~drawn).to_numpy(), 8:].any()
    import pyarrow.parquet as pq

    meta = json.loads(pq.read_schema(out).metadata[b"synthcxr"])
    assert meta["features"] == {"res": 4, "weight": 0.5, "lr": 0.05, "radius": None} and meta["latent_dim"] == 8
