"""The demo DAG (tiny config) through `snakemake --profile slurm`, typed from the repo root, on a real single-node cluster.

The cluster (munged + slurmctld + slurmd on loopback) is started by the test and stopped by PID.
Jobs must go through sbatch, and the outputs must equal those of the local run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from cluster import POLLING, SlurmCluster, start_or_skip
from dag import TINY, snakemake

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = start_or_skip(tmp_path_factory.mktemp("slurm"), cpus=8, mem_mb=128000)
    yield c
    c.stop()
    for name, pid in c.pids.items():
        pytest.fail(f"{name} (pid {pid}) still registered after stop")


def _tables_equal(a: Path, b: Path) -> None:
    pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(b))


def test_dag_runs_through_sbatch_and_matches_local(cluster: SlurmCluster, tiny_run: Path, tmp_path: Path):
    env = {
        "SLURM_CONF": str(cluster.conf),
        "SYNTHCXR_SLURM_GPUS": "0",  # the test node has no GPUs: GPU rules run on its CPUs
        "SYNTHCXR_SLURM_PARTITION": "debug",
    }
    # train_pggan stops at a ~1 s time budget and is resubmitted until its schedule is done
    budget = tmp_path / "budget.yaml"
    budget.write_text("pggan: {job_minutes: 0.02, allocations: 30}\n")
    proc = snakemake(
        tmp_path,
        "--profile", "slurm",  # as users type it: resolves to the repo root's slurm/ (-> profiles/slurm)
        "--jobs", "2",
        # Same thread counts as the local --cores 2 run, so floating-point results are comparable.
        "--max-threads", "2",
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "1",
        "--seconds-between-status-checks", "1",  # job turnaround, not the jobs, dominated this test at the default 10 s
        env=env,
        launcher=POLLING,  # ... and so did the plugin's back-off between status checks (polling.py)
        timeout=2400,
        config=[TINY, budget],
    )
    out = proc.stdout + proc.stderr
    (tmp_path / "snakemake.out").write_text(out)  # the whole run, for a failed assertion's reader
    assert proc.returncode == 0, out[-8000:]
    # Every job was submitted with sbatch and got a SLURM job id.
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", out)
    local = re.findall(r"^localrule (\w+):", out, flags=re.M)
    assert not [r for r in local if r != "all"], f"rules ran outside SLURM: {local}"
    assert len(submitted) >= 15, out[-4000:]
    # the GAN took several allocations (each stopped early with exit 75 and was resubmitted) ...
    gan_jobs = re.findall(r"submitted with SLURM jobid \d+ \(log: (\S*rule_train_pggan\S*)\)", out)
    assert len(gan_jobs) >= 2, out[-4000:]
    assert "resuming at" in (tmp_path / "results/logs/train_pggan-tiny.log").read_text()
    # ... and still trained one continuous schedule: the same log lines as the uninterrupted local run
    def log_lines(root: Path) -> list[tuple]:
        rows = [json.loads(x) for x in (root / "results/pggan/tiny/log.jsonl").read_text().splitlines()]
        return [(r["kimg"], r["loss_d"], r["loss_g"], r["phase"]) for r in rows]

    assert log_lines(tmp_path) == log_lines(tiny_run)
    # Identical results: prepared data, trained models, the archive's manifest and shard pixels.
    a, b = tiny_run / "results", tmp_path / "results"
    with h5py.File(a / "prepared/tiny/images.h5") as fa, h5py.File(b / "prepared/tiny/images.h5") as fb:
        assert np.array_equal(fa["images/16"][:], fb["images/16"][:])
    _tables_equal(a / "prepared/tiny/labels.parquet", b / "prepared/tiny/labels.parquet")
    # the GAN trained across allocations is the same file, byte for byte, as the one trained in one go
    assert (a / "pggan/tiny/generator.pt").read_bytes() == (b / "pggan/tiny/generator.pt").read_bytes()
    for model in ("pggan/tiny/generator.pt", "classifier/real/model.pt"):
        sa = torch.load(a / model, weights_only=True)["state_dict"]
        sb = torch.load(b / model, weights_only=True)["state_dict"]
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), model
    _tables_equal(a / "archive/tiny/release/manifest.parquet", b / "archive/tiny/release/manifest.parquet")
    # Checksums agree for every file but archive.json, which records its creation time, and the card and
    # croissant.json (datePublished), which quote it.
    def sums(root: Path) -> set[str]:
        lines = (root / "archive/tiny/release/SHA256SUMS").read_text().splitlines()
        return {line for line in lines if not line.endswith(("archive.json", "README.md", "croissant.json"))}

    assert sums(a) == sums(b)
