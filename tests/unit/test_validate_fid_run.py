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
from synthcxr.validate.fid_run import FidConfig, real_sets, run_fid, snapshot_files  # noqa: E402

RES = 16


class Feat(nn.Module):
    input_res = RES

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())

    def features(self, x):
        return nn.functional.adaptive_avg_pool2d(self.net(x), 2).flatten(1)


def test_real_sets_are_train_and_heldout(tiny_prepared):
    t = PreparedDataset(tiny_prepared).table
    ref, held = real_sets(t, max_images=10_000, seed=0)
    by_row = t.set_index("row")
    assert set(by_row.loc[ref, "split"]) == {"train"} and set(by_row.loc[held, "split"]) == {"val", "test"}
    assert len(ref) == (t["split"] == "train").sum() and len(held) == t["split"].isin(["val", "test"]).sum()
    assert not set(by_row.loc[ref, "patient_key"]) & set(by_row.loc[held, "patient_key"])
    r2, h2 = real_sets(t, max_images=20, seed=0)
    assert len(r2) == 20 and len(h2) == min(20, len(held))


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
    cfg = FidConfig.from_section(dict(max_real=1000, kid_subsets=5, kid_subset_size=20, pr_k=3, seed=1, device="cpu"), batch_size=16)
    out = run_fid(cfg, prep_dir, arch, tmp_path / "v" / "fid.json", tmp_path / "v" / "fid_curve.png",
                  generator_path=run_dir / "generator.pt", out_curve_json=tmp_path / "v" / "fid_curve.json", extractor=ext)
    js = json.loads((tmp_path / "v" / "fid.json").read_text())
    assert js == json.loads(json.dumps(out))
    assert js["extractor"]["name"] == "checker" and js["resize"] == "clean"
    assert js["n_generated"] == n - 5 and js["n_generated_total"] == n - 5
    for part in ("generated_vs_train", "heldout_vs_train"):
        assert set(js[part]) >= {"fid", "fid_infinity", "fid_by_n", "kid_mean", "kid_std", "precision", "recall"}
        pts = js[part]["fid_by_n"]
        assert [p["n"] for p in pts] == sorted(p["n"] for p in pts) and pts[-1]["n"] == js["n_generated"]
        # FID_inf is the intercept of the least-squares line through (1/N, FID_N): numpy's polyfit agrees
        slope, intercept = np.polyfit([1 / p["n"] for p in pts], [p["fid"] for p in pts], 1)
        assert js[part]["fid_infinity"] == pytest.approx(intercept, rel=1e-6, abs=1e-9)
        assert js[part]["fid_slope"] == pytest.approx(slope, rel=1e-6, abs=1e-9)
    assert js["generated_vs_train"]["fid"] > 3 * js["heldout_vs_train"]["fid"] > 0
    assert js["generated_vs_train"]["kid_mean"] > js["heldout_vs_train"]["kid_mean"]
    assert js["heldout_vs_train"]["precision"] > js["generated_vs_train"]["precision"]
    assert js["baseline"]["split"] == "val+test" and js["reference"]["split"] == "train"
    assert [c["kimg"] for c in js["curve"]] == [10.0, 20.0]
    assert all(np.isfinite(c["fid"]) for c in js["curve"])
    assert (tmp_path / "v" / "fid_curve.png").stat().st_size > 1000

    # the reported number is the plain Frechet distance of the two feature sets it describes
    prep = PreparedDataset(prep_dir)
    ref_rows, _ = real_sets(prep.table, 1000, 1)
    from synthcxr.imaging import uint8_to_float

    ref = ext(uint8_to_float(prep.read_images(RES, ref_rows)).unsqueeze(1)).numpy()
    keep = pd.read_parquet(arch / "manifest.parquet")["sample_id"].tolist()
    gen = ext(uint8_to_float(noise[[ids.index(k) for k in keep]]).unsqueeze(1)).numpy()
    assert len(gen) == js["n_generated"] and js["reference"]["n"] == len(ref)  # all generated used
    assert js["generated_vs_train"]["fid"] == pytest.approx(fid_from_features(gen, ref), rel=1e-5)


def test_run_fid_missing_manifest_is_clear(tmp_path, tiny_prepared):
    with pytest.raises(FileNotFoundError, match="finalize_archive"):
        run_fid(FidConfig.from_section({"device": "cpu"}), tiny_prepared, tmp_path, tmp_path / "f.json", tmp_path / "f.png",
                extractor=classifier_extractor(Feat()))


def test_metrics_jsonl_and_the_feature_cache(tmp_path):
    """One JSONL line per evaluation; the real features are read back from the cache on the next run, and
    the numbers do not move; validate.metrics picks what is evaluated."""
    prep_dir = write_prepared(tmp_path / "prep", n=120, max_res=RES, seed=3)
    arch = tmp_path / "archive"
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (30, RES, RES), dtype=np.uint8)
    write_release(arch, imgs, np.zeros((30, len(PHANTOM_LABELS))), list(PHANTOM_LABELS), [f"s{i}" for i in range(30)], sealed=False)
    torch.manual_seed(0)
    net = Feat()
    calls = []

    class Counting(nn.Module):
        input_res = RES

        def features(self, x):
            calls.append(len(x))
            return net.features(x)

    ext = classifier_extractor(Counting())
    cfg = FidConfig.from_section(dict(max_real=1000, kid_subsets=3, kid_subset_size=10, seed=1, device="cpu",
                                      metrics=["fid", "kid"]), batch_size=16)
    runs = []
    for k in range(2):
        calls.clear()
        out = run_fid(cfg, prep_dir, arch, tmp_path / f"v{k}" / "fid.json", tmp_path / f"v{k}" / "c.png", extractor=ext,
                      out_jsonl=tmp_path / f"v{k}" / "metrics.jsonl", cache_dir=tmp_path / "cache")
        runs.append((out, sum(calls)))
    (a, seen_a), (b, seen_b) = runs
    assert seen_a == 30 + 120 and seen_b == 30  # the second run embeds the release only
    assert len(list((tmp_path / "cache").glob("features-*.npz"))) == 2  # train and held-out
    assert a["generated_vs_train"] == b["generated_vs_train"] and a["heldout_vs_train"] == b["heldout_vs_train"]
    assert set(a["generated_vs_train"]) == {"fid", "kid_mean", "kid_std"}  # only the configured metrics
    lines = [json.loads(x) for x in (tmp_path / "v0" / "metrics.jsonl").read_text().splitlines()]
    assert [(x["comparison"], x["metric"]) for x in lines] == [
        ("generated_vs_train", "fid"), ("generated_vs_train", "kid"), ("heldout_vs_train", "fid"), ("heldout_vs_train", "kid")]
    assert lines[0]["values"]["fid"] == a["generated_vs_train"]["fid"] and lines[0]["n"] == a["n_generated"]
    assert lines[0]["extractor"]["name"] == "checker" and lines[0]["seconds"] >= 0 and lines[0]["n_real"] == a["reference"]["n"]


def test_registry_adds_metrics_by_name_and_refuses_unknown_ones():
    from synthcxr.config import ConfigError
    from synthcxr.metrics import registry as reg

    assert {"fid", "kid", "prdc", "fid_infinity"} <= set(reg.metric_names())

    @reg.register_metric("mean_gap", "distance between the two feature means")
    def mean_gap(real, other, options):
        return {"mean_gap": float(np.linalg.norm(real.mean(0) - other.mean(0)))}

    try:
        rng = np.random.default_rng(0)
        real, other = rng.normal(size=(50, 4)), rng.normal(1.0, size=(40, 4))
        seen = []
        opts = reg.MetricOptions(seed=0, kid_subsets=2, kid_subset_size=20, pr_k=3, fid_n_points=1)
        out = reg.evaluate(["fid", "mean_gap"], real, other, opts, seen.append)
        assert out["fid"] == pytest.approx(fid_from_features(other, real)) and out["mean_gap"] == pytest.approx(np.linalg.norm(real.mean(0) - other.mean(0)))
        assert [s["metric"] for s in seen] == ["fid", "mean_gap"] and seen[1]["n"] == 40 and seen[1]["n_real"] == 50
        assert FidConfig.from_section({"metrics": ["fid", "mean_gap"]}).metrics == ["fid", "mean_gap"]
        with pytest.raises(ValueError, match="already registered"):
            reg.register_metric("mean_gap", "again")(lambda r, o, p: {})
    finally:
        reg._METRICS.pop("mean_gap", None)
    with pytest.raises(ConfigError, match=r"'validate\.metrics': unknown metric 'mean_gap'"):
        FidConfig.from_section({"metrics": ["fid", "mean_gap"]})
    with pytest.raises(ConfigError, match=r"validate\.metrics"):
        FidConfig.from_section({"metrics": ["kid"]})  # fid is always one
