"""A throw-away SLURM cluster on loopback (munged + slurmctld + one slurmd per node) for tests.

Everything lives under one folder; the daemons are started in the foreground-less daemon mode with
pid files there and stopped by PID in :meth:`SlurmCluster.stop`. Accounting is disabled, so job
status comes from ``squeue`` (MinJobAge keeps finished jobs visible long enough). With ``nodes > 1``
the nodes ``n1``, ``n2``, ... are slurmd daemons on this machine, each on its own port (SLURM's
multiple-slurmd mode), so multi-node jobs and ``srun`` across nodes run for real.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
#: snakemake's command with the SLURM executor's status checks at the pace the command line asks (polling.py)
POLLING = (sys.executable, str(Path(__file__).with_name("polling.py")))
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol")


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


def _which(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SystemConfigPresent(RuntimeError):
    """A real slurm.conf is installed; the throw-away cluster will not replace it."""


class SlurmCluster:
    def __init__(self, root: Path, cpus: int | None = None, mem_mb: int | None = None, nodes: int = 1):
        self.root = Path(root)
        self.cpus = cpus or os.cpu_count() or 1
        self.mem_mb = mem_mb or 4000
        self.node = socket.gethostname().split(".")[0]
        self.nodes = [self.node] if nodes == 1 else [f"n{i}" for i in range(1, nodes + 1)]
        self.conf = self.root / "slurm.conf"
        self.pids: dict[str, int] = {}
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self._linked_system_conf = False

    # -- set-up ---------------------------------------------------------------------------
    def _write_conf(self) -> None:
        for sub in ("state", "spool", "log", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        r = self.root
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=synthcxrtest",
                    f"SlurmctldHost={self.node}(127.0.0.1)",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    f"SlurmctldPort={_free_port()}",
                    "AuthType=auth/munge",
                    f"AuthInfo=socket={r / 'munge' / 'munge.socket'}",
                    f"StateSaveLocation={r / 'state'}",
                    f"SlurmdSpoolDir={r / 'spool' / '%n'}",
                    f"SlurmctldPidFile={r / 'slurmctld.pid'}",
                    f"SlurmdPidFile={r / 'slurmd-%n.pid'}",
                    f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={r / 'log' / 'slurmd-%n.log'}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "MpiDefault=none",
                    "SchedulerType=sched/backfill",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core_Memory",
                    "ReturnToService=2",
                    "MinJobAge=600",
                    "AccountingStorageType=accounting_storage/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "JobCompType=jobcomp/none",
                    "SlurmctldTimeout=30",
                    # The node may advertise more CPUs/memory than the machine has, so the profile's
                    # cluster-sized requests schedule on a laptop-sized test node.
                    "SlurmdParameters=config_overrides",
                    "SlurmdTimeout=30",
                    *(f"NodeName={n} NodeHostname={self.node} NodeAddr=127.0.0.1 Port={_free_port()} "
                      f"CPUs={self.cpus} RealMemory={self.mem_mb} State=UNKNOWN" for n in self.nodes),
                    "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )

    def _start_munge(self) -> None:
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o600)
        pidfile = self.root / "munge" / "munged.pid"
        subprocess.run(
            [
                _which("munged"),
                "--force",
                f"--key-file={key}",
                f"--socket={self.root / 'munge' / 'munge.socket'}",
                f"--pid-file={pidfile}",
                f"--log-file={self.root / 'log' / 'munged.log'}",
                f"--seed-file={self.root / 'munge' / 'munged.seed'}",
            ],
            check=True,
            capture_output=True,
        )
        self.pids["munged"] = self._wait_pid(pidfile)

    def _wait_pid(self, pidfile: Path, timeout: float = 20.0) -> int:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if pidfile.exists() and pidfile.read_text().strip():
                return int(pidfile.read_text().split()[0])
            time.sleep(0.2)
        raise RuntimeError(f"daemon did not write {pidfile}; see logs in {self.root / 'log'}")

    def _link_system_conf(self) -> None:
        """Job steps must find the config without SLURM_CONF (the Snakemake job-step executor drops
        SLURM_* variables before its nested srun), so point the default path at ours while we run."""
        if SYSTEM_CONF.is_symlink() and not SYSTEM_CONF.exists():
            SYSTEM_CONF.unlink()  # left by an earlier run that was killed
        if SYSTEM_CONF.exists() or SYSTEM_CONF.is_symlink():
            raise SystemConfigPresent(f"{SYSTEM_CONF} exists; not replacing a real cluster's configuration")
        SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SYSTEM_CONF.symlink_to(self.conf)
        self._linked_system_conf = True

    def start(self, timeout: float = 60.0) -> "SlurmCluster":
        self._write_conf()
        self._link_system_conf()
        try:
            self._start_daemons(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_daemons(self, timeout: float) -> None:
        self._start_munge()
        subprocess.run([_which("slurmctld"), "-f", str(self.conf), "-i"], check=True, env=self.env, capture_output=True)
        self.pids["slurmctld"] = self._wait_pid(self.root / "slurmctld.pid")
        for n in self.nodes:
            (self.root / "spool" / n).mkdir(parents=True, exist_ok=True)
            subprocess.run([_which("slurmd"), "-f", str(self.conf), "-N", n], check=True, env=self.env, capture_output=True)
            self.pids[f"slurmd-{n}"] = self._wait_pid(self.root / f"slurmd-{n}.pid")
        deadline = time.time() + timeout
        states: list[str] = []
        while time.time() < deadline:
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], env=self.env, capture_output=True, text=True)
            states = out.stdout.split()
            if len(states) == len(self.nodes) and all(s.startswith(("idle", "mix")) for s in states):
                return
            time.sleep(1.0)
        raise RuntimeError(f"SLURM nodes never became idle (sinfo says {states!r}); logs in {self.root / 'log'}")

    def cancel_jobs(self, timeout: float = 30.0) -> None:
        """scancel every job and wait until the queue is empty: job steps must not outlive the daemons."""
        if "slurmctld" not in self.pids:
            return
        subprocess.run(["scancel", "--full", "--user", "root"], env=self.env, capture_output=True, timeout=60)
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = subprocess.run(["squeue", "-h", "-t", "PD,R,CG,S", "-o", "%i"], env=self.env, capture_output=True, text=True, timeout=60)
            if out.returncode != 0 or not out.stdout.strip():
                return
            time.sleep(0.5)

    def stop(self) -> None:
        try:
            self.cancel_jobs()
        except (OSError, subprocess.SubprocessError):
            pass  # a daemon already gone: nothing left to cancel through it
        if self._linked_system_conf and SYSTEM_CONF.is_symlink():
            SYSTEM_CONF.unlink()
            self._linked_system_conf = False
        for name in [*(k for k in self.pids if k.startswith("slurmd")), "slurmctld", "munged"]:
            pid = self.pids.pop(name, None)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(50):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                try:  # it may exit between the last poll and now
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def start_or_skip(root: Path, **kwargs) -> SlurmCluster:
    """A started cluster for a test fixture; skips where none can run (fails in CI if SLURM is missing)."""
    import pytest

    missing = missing_binaries()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"SLURM binaries missing in CI: {missing} (tools/sysdeps.sh installs slurm-wlm and munge)")
        pytest.skip(f"SLURM not installed ({', '.join(missing)}); run tools/sysdeps.sh as root")
    if os.geteuid() != 0:
        pytest.skip("the test cluster runs its daemons as root")
    c = SlurmCluster(root, **kwargs)
    try:
        c.start()
    except SystemConfigPresent as exc:
        pytest.skip(str(exc))
    return c
