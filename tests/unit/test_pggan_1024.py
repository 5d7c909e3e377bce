"""The paper's full depth on CPU: growth from 4x4 to 1024x1024, one training step per phase (every fade-in
included), with channel widths cut to a few feature maps so it runs in seconds."""

import json

import numpy as np
import pytest
import torch
from conftest import write_prepared

from synthcxr.pggan.config import PGGANConfig
from synthcxr.pggan import load_generator, train_pggan
from synthcxr.pggan.networks import resolutions


@pytest.fixture(scope="module")
def prepared_1024(tmp_path_factory):
    return write_prepared(tmp_path_factory.mktemp("prep1024"), n=20, max_res=1024, seed=3)


def test_growth_to_1024_one_step_per_phase(prepared_1024, tmp_path):
    res = resolutions(1024)
    assert res == [4, 8, 16, 32, 64, 128, 256, 512, 1024]
    cfg = dict(run="r1024", resolution=1024, latent_dim=16, fmap_base=512, fmap_max=8,
               minibatch={str(r): 2 for r in res}, fade_kimg=0.002, stable_kimg=0.002,  # one minibatch each
               checkpoint_kimg=1, snapshot_kimg=1, log_kimg=0.002, ema_kimg=0.01, seed=1, device="cpu")
    path = train_pggan(PGGANConfig.from_section(cfg), prepared_1024, tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    # 4x4 stable, then a fade-in and a stable phase at every doubling up to 1024
    expected = ["stable4"] + [f"{kind}{r}" for r in res[1:] for kind in ("fade", "stable")]
    assert [r["phase"] for r in rows] == expected
    assert all(0 <= r["alpha"] < 1 for r in rows if r["phase"].startswith("fade"))
    assert all(np.isfinite(r["loss_d"]) and np.isfinite(r["loss_g"]) for r in rows)
    assert [r["kimg"] for r in rows] == pytest.approx([0.002 * (i + 1) for i in range(len(expected))])
    G = load_generator(path)
    assert G.meta["res"] == 1024
    with torch.no_grad():
        x = G(torch.randn(2, 16, generator=torch.Generator().manual_seed(0)))
    assert x.shape == (2, 1, 1024, 1024) and torch.isfinite(x).all()
    assert x.std() > 0  # not a constant image
