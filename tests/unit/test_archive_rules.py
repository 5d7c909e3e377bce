"""The sample / finalize_archive / release rules run through Snakemake on a tiny fake archive.

Everything upstream (generator, classifier, latents, validation outputs) is faked on disk in the
stage contracts, so only this stage's rules and scripts execute.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from synthcxr.archive.verify import verify_release
from synthcxr.lco.latents import write_latents
from synthcxr.pggan import Generator
from synthcxr.pggan.checkpoint import save_generator
from dag import run_group

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
LABELS = ["Atelectasis", "Cardiomegaly", "Effusion", "Nodule", "Mass", "Pneumothorax", "Consolidation", "No_Finding"]


def _fake_upstream(root: Path) -> list[str]:
    torch.manual_seed(0)
    save_generator(root / "results/pggan/demo/generator.pt", Generator(resolution=16, latent_dim=8, fmap_base=32, fmap_max=8), {})
    (root / "results/classifier/real").mkdir(parents=True)
    (root / "results/classifier/real/model.pt").write_bytes(b"stand-in")
    rng = np.random.default_rng(0)
    ids = []
    for shard, n in enumerate([5, 5, 2]):
        df = pd.DataFrame({"sample_id": [f"r{shard}-{i}" for i in range(n)], "shard": shard, "index": np.arange(n), "seed": np.arange(n), "attempts": 1})
        t = (rng.random((n, len(LABELS))) < 0.3).astype(np.int8)
        for j, name in enumerate(LABELS):
            df[f"target_{name}"] = t[:, j]
            df[f"prob_{name}"] = rng.random(n).astype(np.float32)
        df["steps"], df["g_evals"], df["grad_steps"], df["success"] = 3, 3.0, 3, [True] * (n - 1) + [False]
        df["reason"] = [""] * (n - 1) + ["target not met"]
        df["z"] = list(rng.standard_normal((n, 8)).astype(np.float32))
        write_latents(df, LABELS, root / f"results/archive/demo/work/latents/shard-{shard:05d}.parquet")
        ids += list(df["sample_id"])
    val = root / "results/validate/demo"
    val.mkdir(parents=True)
    pd.DataFrame({"sample_id": ids, "flagged": [s == "r0-1" for s in ids]}).to_parquet(val / "memorization.parquet")
    pd.DataFrame({"sample_id": ids, "matched": [s == "r1-2" for s in ids]}).to_parquet(val / "reid.parquet")
    (val / "reid.json").write_text(json.dumps({
        "verification": {"auc": 0.991, "n_same_pairs": 300, "n_different_pairs": 90000},
        "audit": {"threshold": 0.95, "false_match_rate": 0.01, "heldout_check": {"n": 400, "n_matched": 3, "match_rate": 0.0075},
                  "followup_reid": {"n": 80, "rate": 0.4}},
        "samples": {"n": 12, "n_matched": 1, "match_rate": 1 / 12, "per_combination": {"Effusion": {"n": 2, "n_matched": 1, "match_rate": 0.5}}},
    }))
    (val / "fid.json").write_text(json.dumps({"fid": {"fid": 42.5}}))
    (val / "tstr.json").write_text(json.dumps({"macro_auroc": {"synthetic": 0.71}}))
    (val / "lco_agreement.json").write_text(json.dumps({
        "overall_successful": 0.9, "n_successful": 10,
        "per_label": {"Effusion": {"n_target": 4, "plan_rate": 0.33, "agreement_successful": 0.75, "seen_successful": 1.0, "prior_rate": 0.1}},
    }))
    rate = lambda k, n: {"k": k, "n": n, "rate": k / n, "ci95": [0.0, 1.0]}  # noqa: E731
    (val / "oracle.json").write_text(json.dumps({  # the phantom's ground-truth oracle (validate_oracle)
        "fooled_rule": "checker agreement - oracle agreement > 0.1",
        "released": {"n": 7, "per_finding": {"Effusion": {
            "n_requested": 2, "oracle": rate(1, 2), "checker": rate(2, 2), "checker_minus_oracle": 0.5, "checker_fooled": True,
            "unrequested": {"oracle": rate(0, 5), "checker": rate(0, 5)}}}},
        "synthetic_labels": {"share_true": 0.9, "samples_all_true": rate(6, 7), "per_label": {}},
        "oracle": {"real_test": {"per_finding": {"Effusion": {"auroc": 0.99, "sensitivity": rate(9, 10), "specificity": rate(9, 10)}}}},
    }))
    return ids


def _snakemake(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SYNTHCXR_NO_PROGRESS": "1"}
    return run_group([str(SNAKEMAKE), "-c1", "--configfile", "over.yaml", *args], cwd=root, env=env, timeout=900)


@pytest.mark.skipif(not SNAKEMAKE.exists(), reason="snakemake not installed in this environment")
def test_rules_build_verify_and_rerun_only_missing_shard(tmp_path):
    root = tmp_path
    (root / "Snakefile").write_text(
        f'configfile: "{REPO}/config/config.yaml"\n'
        f'include: "{REPO}/workflow/rules/common.smk"\n'
        f'include: "{REPO}/workflow/rules/sample.smk"\n'
        f'include: "{REPO}/workflow/rules/finalize.smk"\n'
        f'include: "{REPO}/workflow/rules/release.smk"\n'
        'rule all:\n    input: f"{REL}/SHA256SUMS", f"{REL}/README.md"\n'
    )
    (root / "over.yaml").write_text("lco:\n  plan: {mode: match_real, n_samples: 12}\n  shard_size: 5\narchive: {name: demo, batch_size: 2}\n")
    ids = _fake_upstream(root)
    res = _snakemake(root)
    assert res.returncode == 0, res.stderr[-3000:]
    arch = root / "results/archive/demo"
    rel = arch / "release"
    assert all(c.ok for c in verify_release(rel))
    info = json.loads((rel / "archive.json").read_text())
    assert info["counts"] == {**info["counts"], "n_requested": 12, "n_failed": 3, "n_flagged": 1, "n_reid_matched": 1, "n_released": 7}
    assert info["reid_gate"] and info["reid"]["file"] == "reid.parquet"
    assert info["render"]["batch_size"] == 2 and info["config"]["lco"]["shard_size"] == 5 and info["render"]["lco_shard_size"] == 5
    assert sorted(pd.read_parquet(rel / "manifest.parquet")["sample_id"]) == sorted(
        s for s in ids if s not in {"r0-1", "r0-4", "r1-2", "r1-4", "r2-1"})  # failed (last of each shard), flagged, matched
    card = (rel / "README.md").read_text()
    assert "Every image in this archive is synthetic" in card and "| fid.fid | 42.5 |" in card
    assert "| Effusion | 4 | 75.0% | 100.0% | n/a | 10.0% |" in card and "labelled Effusion." in card
    assert "matched to a training patient by re-identification audit (gate on) | 1 |" in card
    assert "ROC AUC 0.9910" in card and "| synthetic samples (gate on) | 12 | 1 (8.3%) |" in card
    assert "ROC AUC 0.9910" in card and "| Effusion | 2 | 1 (50.0%) |" in card
    assert "### Ground-truth oracle" in card and "| Effusion | 2 | 50.0 % [0, 100] | 100.0 % [0, 100] | checker fooled |" in card
    assert (root / "results/logs/archive-demo/sample/shard-00001.log").exists()
    assert (root / "results/logs/archive-demo/release.log").exists()
    # as after a killed sampling and finalising run: a working shard missing and the release cleared (finalize
    # removes the old release first) -> only that shard is re-rendered, then the release rebuilt and sealed
    (arch / "work/shards/shard-00001.parquet").unlink()
    for name in ("SHA256SUMS", "README.md", "manifest.parquet", "archive.json", "latents.parquet"):
        (rel / name).unlink()
    dry = _snakemake(root, "-n", "--quiet", "rules")
    assert dry.returncode == 0, dry.stderr[-3000:]
    table = dry.stdout + dry.stderr
    counts = {line.split()[0]: int(line.split()[1]) for line in table.splitlines() if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts.get("sample") == 1 and counts.get("finalize_archive") == 1 and counts.get("release") == 1, table
    res = _snakemake(root)
    assert res.returncode == 0, res.stderr[-3000:]
    # the release carries its own latents: losing working files (a failed `--forcerun lco` deletes the job's
    # output) leaves a release that still verifies and regenerates, so "nothing to be done" is the truth
    (arch / "work/latents/shard-00002.parquet").unlink()
    dry = _snakemake(root, "-n")
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr
    assert all(c.ok for c in verify_release(rel))
