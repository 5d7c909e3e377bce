"""benchmarks/bench_reid.py runs on tiny sizes and prints its table, growth exponents and headline."""

import importlib.util
import re

from synthcxr.config import REPO_ROOT


def test_bench_reid_smoke(capsys, monkeypatch):
    monkeypatch.setenv("SYNTHCXR_NO_PROGRESS", "1")
    spec = importlib.util.spec_from_file_location("bench_reid", REPO_ROOT / "benchmarks" / "bench_reid.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rc = mod.main(["--samples", "40", "80", "--train", "50", "100", "--res", "16", "--width", "4", "--embed-dim", "8",
                   "--batch", "32", "--chunk", "30", "--repeats", "2", "--threads", "1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)%", out, flags=re.M)
    assert {(int(r[0]), int(r[1])) for r in rows} == {(40, 50), (80, 50), (40, 100), (80, 100)}, out
    for r in rows:
        total_min, total_med, gallery, embed, search = map(float, r[2:7])
        assert 0 < total_min <= total_med and abs(gallery + embed + search - total_med) <= 0.02 + 0.5 * total_med
    assert "(9 views)" in out and "search ~ samples^" in out and "search ~ train^" in out
    assert re.search(r"^audit of 80 samples against 100 training images: [\d.]+ s median", out, flags=re.M)


def test_slope_is_the_loglog_exponent():
    spec = importlib.util.spec_from_file_location("bench_reid2", REPO_ROOT / "benchmarks" / "bench_reid.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert abs(mod.slope([1, 2, 4, 8], [3, 12, 48, 192]) - 2.0) < 1e-9
