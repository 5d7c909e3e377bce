"""benchmarks/bench_archive.py runs every section at tiny scale and prints the numbers the docs quote."""

import importlib.util
import json
import re

from synthcxr.config import REPO_ROOT


def test_bench_archive_smoke(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SYNTHCXR_NO_PROGRESS", "1")
    spec = importlib.util.spec_from_file_location("bench_archive", REPO_ROOT / "benchmarks" / "bench_archive.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out_json = tmp_path / "bench.json"
    rc = mod.main(["--res", "32", "--quick", "--repeats", "2", "--sizes", "40", "80", "--json", str(out_json)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert re.search(r"^\[1\]\s+32 px generator \(config\.yaml", out, flags=re.M), out
    writers = re.findall(r"^\[2\]\s+32 px writer, (\d+) worker\(s\):\s+([\d.]+) img/s best,\s+([\d.]+) median; efficiency ([\d.]+)", out, flags=re.M)
    assert [w[0] for w in writers][:2] == ["1", "2"], out
    assert all(float(b) >= float(m) > 0 for _, b, m, _ in writers), out
    assert re.search(r"^\[3\]\s+32 px sample job on this CPU: bare G\(z\) [\d.]+ img/s, archive [\d.]+ img/s, ratio [\d.]+", out, flags=re.M), out
    for fmt in ("parquet", "webdataset", "h5"):
        assert re.search(rf"^\[4\]\s+32 px stream {fmt}\s*:\s+[\d.]+ img/s best", out, flags=re.M), out
    streams = re.findall(r"^\[5\] streaming\s+(\d+) samples .* manifest row groups read (\d+) of (\d+)", out, flags=re.M)
    assert [s[0] for s in streams] == ["40", "80"] and all(s[1] == s[2] for s in streams), out
    assert len(re.findall(r"^\[5\] sampling one shard of\s+\d+ samples", out, flags=re.M)) == 2, out
    log = json.loads(out_json.read_text())
    assert set(log["32"]) == {"generator", "writer", "end_to_end", "consumer"} and set(log["memory"]) == {"sample", "stream"}
