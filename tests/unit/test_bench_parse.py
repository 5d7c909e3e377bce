"""benchmarks/bench_dag_parse.py times `snakemake -n` of this checkout against a baseline worktree and says
whether the parse loaded torch (it must not: tests/e2e/test_lint.py)."""

import importlib.util
import re
import subprocess

import pytest

from synthcxr.config import REPO_ROOT


def test_bench_dag_parse_smoke(capsys):
    if subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout: no baseline worktree to compare against")
    spec = importlib.util.spec_from_file_location("bench_dag_parse", REPO_ROOT / "benchmarks" / "bench_dag_parse.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--baseline", "HEAD", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    rows = dict(re.findall(r"^\s+(baseline HEAD|this checkout)\s+[\d.]+\s+[\d.]+\s+(True|False)$", out, flags=re.M))
    assert rows == {"baseline HEAD": "False", "this checkout": "False"}, out
    assert re.search(r"^median ratio this checkout / baseline HEAD: [\d.]+$", out, flags=re.M), out
    worktrees = subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "list"], capture_output=True, text=True).stdout
    assert "bench-parse-" not in worktrees  # the baseline worktree is removed
