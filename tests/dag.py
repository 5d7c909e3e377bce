"""Running the repo's Snakefile from tests: the tiny config, a snakemake() helper, and run_group().

Every subprocess a test starts runs in its own process group (session), so a test that times out
kills the whole tree it started (snakemake and its job scripts), not only the direct child: an
orphaned ``train_pggan`` must never keep running after its test gave up on it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "e2e" / "tiny.yaml"
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
SYNTHCXR = str(Path(sys.executable).with_name("synthcxr"))


def kill_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group of ``proc``, then SIGKILL whatever is left after ``grace`` seconds."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)  # any member of the group still alive?
            except ProcessLookupError:
                return
            proc.poll()  # reap the leader so it does not linger as a zombie member
            time.sleep(0.1)


def run_group(
    cmd: Sequence[str], *, timeout: float, env: dict | None = None, cwd: str | os.PathLike | None = None, text: bool = True
) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True)`` in a new session; on timeout the whole group dies.

    Raises ``subprocess.TimeoutExpired`` (with what was printed so far) after killing the group.
    """
    proc = subprocess.Popen(
        list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=text, env=env, cwd=cwd, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(list(cmd), timeout, output=out, stderr=err) from None
    except BaseException:
        kill_group(proc)
        raise
    finally:
        # a job script that outlived a finished leader (it should not) goes with the group too
        if proc.returncode is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    return subprocess.CompletedProcess(list(cmd), proc.returncode, out, err)


def snakemake(workdir: Path, *args: str, env: dict | None = None, timeout: int = 1200,
              config: Path | Sequence[Path] = TINY, launcher: Sequence[str] = (SNAKEMAKE,)) -> subprocess.CompletedProcess:
    """Run the repo's Snakefile in ``workdir`` with ``config`` (default: the tiny one; several are merged in order)
    over the default. ``launcher`` is the command that takes snakemake's arguments (default: ``snakemake``).

    The command runs from the repo root, as users type it (``--profile slurm`` resolves there).
    """
    configs = [config] if isinstance(config, (str, os.PathLike)) else list(config)
    cmd = [*launcher, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--configfile", *map(str, configs), *args]
    run_env = dict(os.environ, SYNTHCXR_NO_PROGRESS="1", OMP_NUM_THREADS="1", **(env or {}))
    return run_group(cmd, timeout=timeout, env=run_env, cwd=REPO)
