"""The audit must flag planted copies of training images and leave distinct samples alone."""

import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import write_prepared  # noqa: E402

from synthcxr.archive.shard_h5 import H5ShardWriter  # noqa: E402
from synthcxr.data.store import PreparedDataset  # noqa: E402
from synthcxr.lco.latents import write_latents  # noqa: E402
from synthcxr.metrics.features import classifier_extractor  # noqa: E402
from synthcxr.validate.memorization import MemorizationConfig, NearestIndex, run_memorization  # noqa: E402

LABELS = ["Cardiomegaly", "Effusion", "No_Finding"]
RES = 32


def blob_images(n: int, rng: np.random.Generator) -> np.ndarray:
    """Distinct images: a few random Gaussian blobs each, so no two are alike."""
    yy, xx = np.mgrid[0:RES, 0:RES] / (RES - 1)
    out = np.full((n, RES, RES), 0.3)
    for i in range(n):
        for _ in range(4):
            cy, cx, r, a = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.25), rng.uniform(-0.3, 0.5)
            out[i] += a * np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2)))
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


class Feat(nn.Module):
    input_res = RES

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())

    def features(self, x):
        return nn.functional.adaptive_avg_pool2d(self.net(x), 4).flatten(1)


@pytest.fixture(scope="module")
def distinct_prepared(tmp_path_factory):
    folder = write_prepared(tmp_path_factory.mktemp("mem_prep"), n=120, max_res=RES, seed=1, names=LABELS)
    imgs = blob_images(120, np.random.default_rng(5)).astype(np.float64)
    with h5py.File(Path(folder) / "images.h5", "r+") as f:
        res, level = RES, imgs
        while res >= 4:
            f[f"images/{res}"][...] = np.round(level).astype(np.uint8)
            level = level.reshape(len(level), res // 2, 2, res // 2, 2).mean(axis=(2, 4))
            res //= 2
    return folder


def _write_archive(folder: Path, images: np.ndarray, ids: list[str]) -> tuple[Path, Path]:
    n = len(images)
    shard = folder / "shards" / "shard-00000.h5"
    with H5ShardWriter(shard, n, RES, LABELS, compression="gzip") as w:
        w.write(0, images, np.zeros((n, 3), np.uint8), np.zeros((n, 3), np.float32), ids)
    frame = pd.DataFrame({"sample_id": ids, "shard": 0, "index": np.arange(n), "seed": np.arange(n), "attempts": 1, "z": list(np.zeros((n, 4), np.float32))})
    for name in LABELS:
        frame[f"target_{name}"] = 0
        frame[f"prob_{name}"] = 0.1
    frame["steps"], frame["g_evals"], frame["grad_steps"], frame["success"], frame["reason"] = 1, 1.0, 1, True, ""
    lat = folder / "latents" / "shard-00000.parquet"
    write_latents(frame, LABELS, lat)
    return shard, lat


def test_audit_flags_planted_copies_only(tmp_path, distinct_prepared):
    prep = PreparedDataset(distinct_prepared)
    train_rows = prep.split("train")["row"].to_numpy()
    a, b = int(train_rows[3]), int(train_rows[40])
    real = prep.read_images(RES, np.array([a, b]))
    rng = np.random.default_rng(9)
    near = np.clip(real[1].astype(int) + rng.integers(-2, 3, real[1].shape), 0, 255).astype(np.uint8)
    fresh = blob_images(14, np.random.default_rng(123))
    images = np.concatenate([fresh[:5], real[:1], fresh[5:10], near[None], fresh[10:]])
    ids = [f"s{i:03d}" for i in range(len(images))]
    shard, lat = _write_archive(tmp_path / "archive", images, ids)

    torch.manual_seed(0)
    cfg = MemorizationConfig.from_section({"memorization": {"pixel_res": 16, "threshold": 0.97, "gallery": 4}, "device": "cpu"}, batch_size=7, chunk=13)
    out_pq, out_png, out_js = tmp_path / "val" / "memorization.parquet", tmp_path / "val" / "gallery.png", tmp_path / "val" / "mem.json"
    summary = run_memorization(cfg, [shard], [lat], distinct_prepared, None, out_pq, out_png, out_js, extractor=classifier_extractor(Feat()))

    df = pd.read_parquet(out_pq)
    assert list(df.columns) == ["sample_id", "nn_feature_row", "feature_sim", "nn_pixel_row", "pixel_sim", "flagged"]
    assert len(df) == len(images)
    flagged = set(df.loc[df["flagged"], "sample_id"])
    assert flagged == {"s005", "s011"}
    exact = df.set_index("sample_id").loc["s005"]
    assert exact["nn_pixel_row"] == a and exact["nn_feature_row"] == a
    assert exact["pixel_sim"] == pytest.approx(1.0, abs=1e-5) and exact["feature_sim"] == pytest.approx(1.0, abs=1e-5)
    assert df.set_index("sample_id").loc["s011", "nn_pixel_row"] == b
    assert summary["n_flagged"] == 2 and summary["heldout_reference"]["n"] > 0
    assert out_png.stat().st_size > 1000 and out_js.exists()


def test_nearest_index_chunked_equals_brute_force():
    rng = np.random.default_rng(0)
    ref = torch.tensor(rng.normal(size=(50, 6)), dtype=torch.float32)
    q = torch.tensor(rng.normal(size=(9, 6)), dtype=torch.float32)
    idx = NearestIndex(ref, np.arange(100, 150), torch.device("cpu"), chunk=7)
    sims, rows = idx.query(q)
    mu = ref.mean(0, keepdim=True)
    r = (ref - mu) / (ref - mu).norm(dim=1, keepdim=True)
    qq = (q - mu) / (q - mu).norm(dim=1, keepdim=True)
    full = (qq @ r.T).numpy()
    np.testing.assert_allclose(sims, full.max(1), rtol=1e-5)
    np.testing.assert_array_equal(rows, 100 + full.argmax(1))


def test_shards_and_latents_must_agree(tmp_path, distinct_prepared):
    images = blob_images(4, np.random.default_rng(1))
    shard, _ = _write_archive(tmp_path / "a", images, ["x0", "x1", "x2", "x3"])
    _, lat = _write_archive(tmp_path / "b", images, ["x0", "x1", "x2", "zz"])
    cfg = MemorizationConfig.from_section({"memorization": {"pixel_res": 16}, "device": "cpu"})
    with pytest.raises(ValueError, match="disagree"):
        run_memorization(cfg, [shard], [lat], distinct_prepared, None, tmp_path / "m.parquet", tmp_path / "g.png",
                         extractor=classifier_extractor(Feat()))
