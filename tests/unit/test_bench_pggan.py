"""benchmarks/bench_pggan.py runs on the default config (finding_floor on) and reports repeated blocks."""

import importlib.util
import re

from synthcxr.config import REPO_ROOT


def test_bench_pggan_smoke(capsys, monkeypatch):
    monkeypatch.setenv("SYNTHCXR_NO_PROGRESS", "1")
    spec = importlib.util.spec_from_file_location("bench_pggan", REPO_ROOT / "benchmarks" / "bench_pggan.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["--config", str(REPO_ROOT / "config" / "config.yaml"), "--max-res", "8", "--steps", "1",
              "--repeats", "2", "--device", "cpu"])
    out = capsys.readouterr().out
    rows = re.findall(r"^res\s+(\d+)\s+minibatch\s+\d+\s+img/s best\s+([\d.]+)\s+median\s+([\d.]+)", out, flags=re.M)
    assert [r[0] for r in rows] == ["4", "8"], out
    assert all(float(best) >= float(med) > 0 for _, best, med in rows), out
    assert "(2 x 1 steps)" in out and re.search(r"^schedule \d+ kimg -> about [\d.]+ min", out, flags=re.M), out
