"""The demo DAG (tiny config) through `snakemake --profile slurm`, typed from the repo root, on a real single-node cluster.

The cluster (munged + slurmctld + slurmd on loopback) is started by the test and stopped by PID.
Jobs must go through sbatch, and the outputs must equal those of the local run.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from cluster import SlurmCluster, SystemConfigPresent, missing_binaries
from dag import snakemake

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = missing_binaries()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"SLURM binaries missing in CI: {missing} (tools/sysdeps.sh installs slurm-wlm and munge)")
        pytest.skip(f"SLURM not installed ({', '.join(missing)}); run tools/sysdeps.sh as root")
    if os.geteuid() != 0:
        pytest.skip("the test cluster runs its daemons as root")
    c = SlurmCluster(tmp_path_factory.mktemp("slurm"), cpus=8, mem_mb=128000)
    try:
        c.start()
    except SystemConfigPresent as exc:
        pytest.skip(str(exc))
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
    proc = snakemake(
        tmp_path,
        "--profile", "slurm",  # as users type it: resolves to the repo root's slurm/ (-> profiles/slurm)
        "--jobs", "2",
        # Same thread counts as the local --cores 2 run, so floating-point results are comparable.
        "--max-threads", "2",
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "2",
        "--seconds-between-status-checks", "1",  # job turnaround, not the jobs, dominated this test at the default 10 s
        env=env,
        timeout=2400,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    # Every job was submitted with sbatch and got a SLURM job id.
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", out)
    local = re.findall(r"^localrule (\w+):", out, flags=re.M)
    assert not [r for r in local if r != "all"], f"rules ran outside SLURM: {local}"
    assert len(submitted) >= 15, out[-4000:]
    # Identical results: prepared data, trained models, the archive's manifest and shard pixels.
    a, b = tiny_run / "results", tmp_path / "results"
    with h5py.File(a / "prepared/tiny/images.h5") as fa, h5py.File(b / "prepared/tiny/images.h5") as fb:
        assert np.array_equal(fa["images/16"][:], fb["images/16"][:])
    _tables_equal(a / "prepared/tiny/labels.parquet", b / "prepared/tiny/labels.parquet")
    for model in ("pggan/tiny/generator.pt", "classifier/real/model.pt"):
        sa = torch.load(a / model, weights_only=True)["state_dict"]
        sb = torch.load(b / model, weights_only=True)["state_dict"]
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), model
    _tables_equal(a / "archive/tiny/release/manifest.parquet", b / "archive/tiny/release/manifest.parquet")
    # Checksums agree for every file but archive.json, which records its creation time, and the card, which
    # quotes it.
    def sums(root: Path) -> set[str]:
        lines = (root / "archive/tiny/release/SHA256SUMS").read_text().splitlines()
        return {line for line in lines if not line.endswith(("archive.json", "README.md"))}

    assert sums(a) == sums(b)
