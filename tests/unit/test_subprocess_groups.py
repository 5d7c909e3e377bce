"""Test subprocesses run in their own process group: a timed-out test leaves no orphan behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from dag import run_group

# A parent that starts a long-running grandchild (as snakemake starts a job script) and waits on it.
TREE = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(sys.argv[1], "w").write(str(child.pid))
child.wait()
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is dead for our purposes
        return fh.read().split(")")[-1].split()[0] != "Z"


def test_timeout_kills_the_whole_tree(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    with pytest.raises(subprocess.TimeoutExpired):
        run_group([sys.executable, "-c", TREE, str(pidfile)], timeout=5)
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(grandchild), "the grandchild outlived its timed-out test"


def test_normal_exit_returns_output_and_status(tmp_path):
    res = run_group([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"], timeout=60)
    assert (res.returncode, res.stdout.strip(), res.stderr.strip()) == (3, "out", "err")
