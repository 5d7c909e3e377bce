import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from archive_fixtures import write_release  # noqa: E402
from conftest import write_prepared  # noqa: E402

from synthcxr.data.store import PreparedDataset  # noqa: E402
from synthcxr.labels import PHANTOM_LABELS  # noqa: E402
from synthcxr.metrics.features import classifier_extractor  # noqa: E402
from synthcxr.metrics.fid import fid_from_features  # noqa: E402
from synthcxr.pggan.checkpoint import save_generator  # noqa: E402
from synthcxr.pggan.networks import Generator  # noqa: E402
from synthcxr.validate.fid_run import FidConfig, patient_halves, run_fid, snapshot_files  # noqa: E402

RES = 16


class Feat(nn.Module):
    input_res = RES

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())

    def features(self, x):
        return nn.functional.adaptive_avg_pool2d(self.net(x), 2).flatten(1)


def test_patient_halves_are_disjoint_and_balanced(tiny_prepared):
    t = PreparedDataset(tiny_prepared).split("train")
    a, b = patient_halves(t, max_images=10_000, seed=0)
    pa = set(t.set_index("row").loc[a, "patient_key"])
    pb = set(t.set_index("row").loc[b, "patient_key"])
    assert not pa & pb and len(a) + len(b) == len(t) and abs(len(a) - len(b)) <= 2
    a2, b2 = patient_halves(t, max_images=40, seed=0)
    assert len(a2) == 20 and len(b2) == 20


def test_run_fid_writes_baseline_curve_and_orders_generators(tmp_path):
    prep_dir = write_prepared(tmp_path / "prep", n=200, max_res=RES, seed=2)
    arch = tmp_path / "archive"
    rng = np.random.default_rng(0)
    n = 40
    noise = rng.integers(0, 256, (n, RES, RES), dtype=np.uint8)  # a poor "generator": far from real
    ids = [f"g{i:03d}" for i in range(n)]
    write_release(arch, noise[:-5], np.zeros((n - 5, len(PHANTOM_LABELS))), list(PHANTOM_LABELS), ids[:-5], sealed=False)

    run_dir = tmp_path / "pggan"
    torch.manual_seed(0)
    for kimg, res in ((10, 8), (20, 16)):
        G = Generator(resolution=RES, latent_dim=8, fmap_base=32, fmap_max=16)
        save_generator(run_dir / "snapshots" / f"generator-{kimg:06d}.pt", G, {"kimg": kimg, "res": res, "alpha": 1.0})
    save_generator(run_dir / "generator.pt", G, {"kimg": 20})
    assert [k for k, _ in snapshot_files(run_dir / "snapshots")] == [10.0, 20.0]

    torch.manual_seed(0)
    ext = classifier_extractor(Feat())
    cfg = FidConfig(max_real=1000, kid_subsets=5, kid_subset_size=20, pr_k=3, seed=1, device="cpu", batch_size=16)
    out = run_fid(cfg, prep_dir, arch, tmp_path / "v" / "fid.json", tmp_path / "v" / "fid_curve.png",
                  generator_path=run_dir / "generator.pt", out_curve_json=tmp_path / "v" / "fid_curve.json", extractor=ext)
    js = json.loads((tmp_path / "v" / "fid.json").read_text())
    assert js == json.loads(json.dumps(out))
    assert js["extractor"] == "classifier" and js["n_generated"] == n - 5 and js["n_generated_total"] == n - 5
    for part in ("generated_vs_real", "real_vs_real"):
        assert set(js[part]) >= {"fid", "kid_mean", "kid_std", "precision", "recall"}
    assert js["generated_vs_real"]["fid"] > 3 * js["real_vs_real"]["fid"] > 0
    assert js["generated_vs_real"]["kid_mean"] > js["real_vs_real"]["kid_mean"]
    assert js["real_vs_real"]["precision"] > js["generated_vs_real"]["precision"]
    assert [c["kimg"] for c in js["curve"]] == [10.0, 20.0]
    assert all(np.isfinite(c["fid"]) for c in js["curve"])
    assert (tmp_path / "v" / "fid_curve.png").stat().st_size > 1000

    # the reported number is the plain Frechet distance of the two feature sets it describes
    prep = PreparedDataset(prep_dir)
    _, b = patient_halves(prep.split("train"), 1000, 1)
    from synthcxr.imaging import uint8_to_float

    real_b = ext(uint8_to_float(prep.read_images(RES, b)).unsqueeze(1)).numpy()
    keep = pd.read_parquet(arch / "manifest.parquet")["sample_id"].tolist()
    gen = ext(uint8_to_float(noise[[ids.index(k) for k in keep]]).unsqueeze(1)).numpy()
    assert len(gen) == js["n_generated"] < js["n_real"] == len(real_b)  # all generated used, none subsampled
    assert js["generated_vs_real"]["fid"] == pytest.approx(fid_from_features(gen, real_b), rel=1e-5)


def test_run_fid_missing_manifest_is_clear(tmp_path, tiny_prepared):
    with pytest.raises(FileNotFoundError, match="finalize_archive"):
        run_fid(FidConfig(device="cpu"), tiny_prepared, tmp_path, tmp_path / "f.json", tmp_path / "f.png",
                extractor=classifier_extractor(Feat()))
