"""benchmarks/bench_lco_vs_rejection.py runs end to end on tiny project models and prints every section."""

import importlib.util
import json
import re

import numpy as np
import torch

from synthcxr.config import REPO_ROOT, load_config
from synthcxr.lco.plan import make_plan, write_plan


def test_bench_lco_smoke(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SYNTHCXR_NO_PROGRESS", "1")
    from synthcxr.classifier import Classifier
    from synthcxr.classifier.models import default_arch
    from synthcxr.pggan import Generator
    from synthcxr.pggan.checkpoint import save_generator
    from synthcxr.utils.atomic import torch_save

    labels = load_config(REPO_ROOT / "config" / "config.yaml")["labels"]
    torch.manual_seed(0)
    save_generator(tmp_path / "generator.pt", Generator(16, 16, 64, 16), {})
    for name in ("real", "check"):
        arch = default_arch("small_cnn", len(labels), 16, 4)
        C = Classifier(arch, labels, 16)
        (tmp_path / name).mkdir()
        torch_save({"arch": arch, "state_dict": C.state_dict(), "meta": {"label_names": labels, "input_res": 16}}, tmp_path / name / "model.pt")
        # thresholds every image meets for No_Finding alone: rejection and LCO both accept at once
        thr = {n: (0.0 if n == "No_Finding" else 1.0) for n in labels}
        (tmp_path / name / "thresholds.json").write_text(json.dumps(thr))
    overlay = tmp_path / "fast.yaml"
    overlay.write_text("lco: {plan: {mode: quotas, n_samples: 6, quotas: {No_Finding: 4, Effusion: 2}}, shard_size: 3, steps: 2, retries: 0, margin: 0.0}\n")
    cfg = load_config(REPO_ROOT / "config" / "config.yaml", {"lco": {"plan": {"mode": "quotas", "n_samples": 6, "quotas": {"No_Finding": 4, "Effusion": 2}}, "shard_size": 3}})
    write_plan(make_plan(cfg["lco"], labels, None, seed=1), tmp_path / "plan.parquet")
    spec = importlib.util.spec_from_file_location("bench_lco", REPO_ROOT / "benchmarks" / "bench_lco_vs_rejection.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rc = mod.main(["--configfile", str(overlay), "--generator", str(tmp_path / "generator.pt"), "--classifier", str(tmp_path / "real" / "model.pt"),
                   "--checker", str(tmp_path / "check" / "model.pt"), "--plan", str(tmp_path / "plan.parquet"), "--n", "4", "--prior", "64",
                   "--max-draws", "64", "--repeats", "2", "--device", "cpu", "--ultra", "1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    r = float(re.search(r"^r = step / forward = ([\d.]+)", out, flags=re.M).group(1))
    assert r > 0, out  # measured (timing on a loaded 2-core machine: no bound on its size here)
    nf = re.search(r"^No_Finding\s+([\d.]+)%\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", out, flags=re.M)
    assert nf and float(nf.group(1)) == 100.0 and float(nf.group(2)) == 1.0, out
    # every draw is accepted: rejection costs exactly 1 forward per sample; LCO's pool the same
    assert float(nf.group(4)) == 1.0 and float(nf.group(3)) == 1.0, out
    # the plan's other combination: a threshold of 1 cannot be met, so LCO reaches none; its spend in
    # parentheses and no ratio
    eff = re.search(r"^Effusion\s+\S+\s+([\d.]+)\s+(\S+)\s+(\S+)\s+(\S+)", out, flags=re.M)
    assert eff and float(eff.group(1)) == 0.0, out
    assert re.fullmatch(r"\(\d+\)", eff.group(2)) and eff.group(4) == "-", out
    # agreement counts with Wilson intervals (scipy's binomtest, by hand for 4 of 4: [0.510, 1])
    agree = re.search(r"^No_Finding\s+4/4 \(100.0%, 51.0%-100.0%\)\s+4/4 \(100.0%, 51.0%-100.0%\)\s+-$", out, flags=re.M)
    assert agree, out
    rows = dict(re.findall(r"^(per_sample|pool)\s+([\d.]+)", out, flags=re.M))
    assert set(rows) == {"per_sample", "pool"}, out
    assert "pool vs per_sample:" in out
    assert np.isfinite(float(rows["pool"]))
