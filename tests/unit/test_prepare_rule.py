"""Rule ``prepare`` wired through Snakemake on a tiny phantom (outputs, log, params from config)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from synthcxr.data.store import PreparedDataset
from dag import run_group

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


@pytest.mark.skipif(not SNAKEMAKE.exists() and shutil.which("snakemake") is None, reason="snakemake not installed")
def test_rule_prepare_runs(tmp_path):
    (tmp_path / "Snakefile").write_text(
        f'configfile: "{REPO / "config" / "config.yaml"}"\n'
        f'include: "{REPO / "workflow" / "rules" / "common.smk"}"\n'
        f'include: "{REPO / "workflow" / "rules" / "prepare.smk"}"\n'
    )
    over = {"dataset": {"name": "ruletest", "format": "phantom", "max_res": 64, "workers": 1,
                        "phantom": {"n_patients": 5, "max_studies": 2, "seed": 3}}}
    (tmp_path / "over.yaml").write_text(yaml.safe_dump(over))
    exe = str(SNAKEMAKE) if SNAKEMAKE.exists() else "snakemake"
    env = {**os.environ, "SYNTHCXR_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    proc = run_group(
        [exe, "results/prepared/ruletest/prepare.json", "-s", "Snakefile", "--cores", "1",
         "--configfile", str(REPO / "config" / "config.yaml"), "over.yaml"],
        cwd=tmp_path, timeout=900, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "results" / "prepared" / "ruletest"
    assert sorted(p.name for p in out.iterdir()) == ["images.h5", "labels.parquet", "prepare.json", "quarantine.csv"]
    summary = json.loads((out / "prepare.json").read_text())
    assert summary["format"] == "phantom" and summary["resolutions"] == [4, 8, 16, 32, 64]
    ds = PreparedDataset(out)
    assert len(ds.table) == summary["counts"]["kept"] > 0
    log = tmp_path / "results" / "logs" / "prepare-ruletest.log"
    first = log.read_text()
    assert "prepared" in first and "ruletest" in first
    # a second dataset (e.g. a held-out cohort) gets its own folder and log; the first is left as it was
    over["dataset"].update(name="other", phantom={"n_patients": 4, "max_studies": 1, "seed": 4})
    (tmp_path / "over.yaml").write_text(yaml.safe_dump(over))
    proc = run_group(
        [exe, "results/prepared/other/prepare.json", "-s", "Snakefile", "--cores", "1",
         "--configfile", str(REPO / "config" / "config.yaml"), "over.yaml"],
        cwd=tmp_path, timeout=900, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert log.read_text() == first and "other" in (log.parent / "prepare-other.log").read_text()
    assert json.loads((out / "prepare.json").read_text()) == summary
