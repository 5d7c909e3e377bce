"""benchmarks/gpu_suite.py --smoke: every part runs on CPU at tiny sizes and leaves JSON and markdown;
a part that fails is recorded and the rest still run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dag import REPO, run_group


def test_smoke_runs_every_part_and_records_a_failing_one(tmp_path):
    out = tmp_path / "gs"
    proc = run_group([sys.executable, str(REPO / "benchmarks" / "gpu_suite.py"), str(out), "--smoke", "--peer", str(tmp_path / "no-peer")],
                     timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "gpu_suite.json").read_text())
    assert res["smoke"] and res["cuda_paths"]["device"] == "cpu" and res["cuda_paths"]["ddp_backend"] == "gloo"
    parts = res["parts"]
    assert list(parts) == ["pggan", "lco", "sample", "classifier", "fid"] and all(p["status"] == "ok" for p in parts.values())
    pg = parts["pggan"]["result"]["16"]
    assert pg["fp32"]["best"] >= pg["fp32"]["median"] > 0 and pg["amp"]["autocast"] == "torch.bfloat16"
    assert pg["fp32"]["predicted_mib"] > 0 and pg["fp32"]["peak_mib"] is None  # CUDA peak only on a GPU
    assert parts["pggan"]["result"]["peer"]["returncode"] != 0  # the peer checkout is missing: kept, not fatal
    lco = parts["lco"]["result"]
    assert lco["fe_per_s"]["median"] > 0 and lco["update_over_forward"]["ratio"] > 0 and lco["plan"]["step_batch"] >= 1
    s = parts["sample"]["result"]
    assert s["workers_1"]["over_bare_median"] == s["workers_1"]["median"] / s["bare_g"]["median"]
    assert parts["classifier"]["result"]["amp_over_fp32"] > 0 and parts["fid"]["result"]["median"] > 0
    md = (out / "gpu_suite.md").read_text()
    assert md.startswith("# gpu_suite on cpu (smoke") and "## fid (ok" in md


def test_unknown_part_is_refused():
    proc = run_group([sys.executable, str(REPO / "benchmarks" / "gpu_suite.py"), "/tmp/x", "--smoke", "--parts", "pggan,warp"],
                     timeout=300, cwd=REPO)
    assert proc.returncode == 2 and "unknown part(s) ['warp']" in proc.stderr


def test_failed_part_is_recorded_and_the_rest_run(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import gpu_suite

    def boom(*a, **k):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setitem(gpu_suite.PARTS, "classifier", boom)
    rc = gpu_suite.main([str(tmp_path), "--smoke", "--parts", "classifier,fid"])
    res = json.loads(Path(tmp_path / "gpu_suite.json").read_text())
    assert rc == 1 and res["parts"]["classifier"]["status"] == "failed" and "simulated" in res["parts"]["classifier"]["error"]
    assert res["parts"]["fid"]["status"] == "ok"
