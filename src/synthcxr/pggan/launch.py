"""Launching data-parallel PGGAN training: ``torchrun`` on one node, or one agent per node of a SLURM
allocation via ``srun``, with preemption signals passed on to every rank; the train_pggan rule enters here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from .config import PGGANConfig


def _scontrol(*args: str) -> str:
    import subprocess

    try:
        out = subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=60)
    except FileNotFoundError as exc:
        raise RuntimeError("pggan.nodes > 1 needs SLURM's scontrol on PATH (run inside a SLURM allocation)") from exc
    if out.returncode != 0:
        raise RuntimeError(f"scontrol {' '.join(args)} failed: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout


def _field(record: str, key: str) -> str:
    """``Key=value`` from one line of ``scontrol show ... -o`` output."""
    import re

    m = re.search(rf"(?:^|\s){key}=(\S+)", record)
    if m is None:
        raise RuntimeError(f"scontrol output has no {key}=: {record.strip()[:200]}")
    return m.group(1)


def slurm_nodes(job_id: str) -> list[tuple[str, str]]:
    """``(node name, address)`` of every node of SLURM job ``job_id``, in allocation order."""
    nodelist = _field(_scontrol("show", "job", "-o", job_id), "NodeList")
    names = _scontrol("show", "hostnames", nodelist).split()
    return [(n, _field(_scontrol("show", "node", "-o", n), "NodeAddr")) for n in names]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def torchrun_command(cfg_path: os.PathLike, data_folder: os.PathLike, out_dir: os.PathLike,
                     log_file: os.PathLike | None, nproc: int, nodes: int = 1,
                     env: Mapping[str, str] | None = None, threads: int | None = None) -> list[str]:
    """The command that starts ``nodes x nproc`` training processes.

    One node: ``torchrun --standalone``. Several: ``srun`` starts one torchrun agent per node of the
    current SLURM allocation (``SLURM_JOB_ID``) and the agents meet at a c10d rendezvous hosted on the
    allocation's first node, so the world is ``nodes x nproc`` ranks with one global minibatch.
    """
    import sys

    env = os.environ if env is None else env
    train = ["-m", "synthcxr.pggan.worker", "--config-json", str(cfg_path), "--data", str(data_folder), "--out", str(out_dir)]
    if log_file is not None:
        train += ["--log-file", str(log_file)]
    run = [sys.executable, "-m", "torch.distributed.run"]
    if nodes <= 1:
        return [*run, "--standalone", f"--nproc-per-node={nproc}", *train]
    job = env.get("SLURM_JOB_ID")
    if not job:
        raise RuntimeError(f"pggan.nodes is {nodes}, which needs a SLURM allocation of {nodes} nodes "
                           "(snakemake --profile slurm); outside SLURM set pggan.nodes: 1")
    hosts = slurm_nodes(job)
    if len(hosts) < nodes:
        raise RuntimeError(f"pggan.nodes is {nodes} but SLURM job {job} holds {len(hosts)} node(s): "
                           f"{', '.join(h for h, _ in hosts)}")
    head_name, head_addr = hosts[0]
    # the launcher runs on the allocation's first node, where a free port can be checked; elsewhere a
    # port derived from the job id keeps concurrent jobs apart
    here = env.get("SLURMD_NODENAME")
    port = _free_port() if here in (None, head_name) else 29400 + int(job) % 20000
    srun = ["srun", "--overlap", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1",
            "--kill-on-bad-exit=1", f"--job-name=train_pggan-{nodes}x{nproc}"]
    if threads:
        srun.append(f"--cpus-per-task={int(threads)}")
    return [*srun, *run, f"--nnodes={nodes}", f"--nproc-per-node={nproc}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={head_addr}:{port}", f"--rdzv-id=synthcxr-{job}", *train]


def _step_env() -> dict[str, str]:
    """The environment for a nested srun: the allocation's identity only (a job step's own task and CPU
    settings, inherited, would override what the training step asks for)."""
    keep = {"SLURM_JOB_ID", "SLURM_JOBID", "SLURM_CONF", "SLURM_CLUSTER_NAME"}
    return {k: v for k, v in os.environ.items()
            if not (k.startswith(("SLURM_", "SRUN_", "SBATCH_")) and k not in keep)}


def launch_torchrun(cfg: PGGANConfig, data_folder: str | os.PathLike, out_dir: str | os.PathLike,
                    log_file: str | os.PathLike | None, nproc: int, nodes: int = 1,
                    threads: int | None = None) -> None:
    """Run ``train_pggan`` in ``nodes x nproc`` processes (torchrun; srun across nodes when ``nodes > 1``).

    The config travels as a JSON file in the run folder (on a filesystem every node sees), so every
    rank trains the same thing. A SIGTERM or SIGUSR1 to this process is passed on as SIGTERM (torchrun,
    or srun, which hands it to each node's torchrun), which reaches every rank (each in a session of its
    own); the ranks checkpoint and stop together, and this raises :class:`~.preempt.Preempted`.
    torchrun itself ignores SIGUSR1, which would kill it.
    """
    import json
    import signal
    import subprocess
    from pathlib import Path

    from ..utils.atomic import write_json
    from .preempt import MARKER, Preempted

    out = Path(out_dir)
    cfg_path = out / "launch-config.json"
    write_json(cfg_path, cfg.to_dict())
    (out / MARKER).unlink(missing_ok=True)
    env = _step_env() if nodes > 1 else dict(os.environ)
    cmd = torchrun_command(cfg_path, data_folder, out, log_file, nproc, nodes, threads=threads)
    old_usr1 = signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # inherited by torchrun; the ranks install their own
    try:
        proc = subprocess.Popen(cmd, env=env)
    finally:
        signal.signal(signal.SIGUSR1, old_usr1)

    def forward(signum, frame):  # noqa: ARG001 - signal handler signature
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass

    handlers = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        rc = proc.wait()
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    marker = out / MARKER
    if marker.exists():
        info = json.loads(marker.read_text())
        raise Preempted(int(round(float(info["kimg"]) * 1000)), str(info["reason"]))
    if rc != 0:
        where = f"{nodes} nodes x {nproc}" if nodes > 1 else str(nproc)
        raise RuntimeError(f"torchrun with {where} processes failed (exit {rc}); see {log_file or 'stderr'}")


def train_maybe_distributed(cfg: PGGANConfig, data_folder: str | os.PathLike, out_dir: str | os.PathLike,
                            log_file: str | os.PathLike | None = None, threads: int | None = None):
    """Rule entry: ``pggan.nodes > 1`` or ``pggan.gpus > 1`` launches torchrun (one process per GPU,
    on every node of the allocation), else trains in-process."""
    from pathlib import Path

    from .train import train_pggan

    if threads:
        torch.set_num_threads(max(1, int(threads)))
    gpus, nodes = cfg.gpus, cfg.nodes
    if (gpus > 1 or nodes > 1) and "WORLD_SIZE" not in os.environ:
        if nodes == 1 and torch.cuda.is_available() and torch.cuda.device_count() < gpus:
            raise RuntimeError(f"pggan.gpus is {gpus} but only {torch.cuda.device_count()} GPU(s) are visible")
        launch_torchrun(cfg, data_folder, out_dir, log_file, gpus, nodes, threads=threads)
        return Path(out_dir) / "generator.pt"
    return train_pggan(cfg, data_folder, out_dir, log_file=log_file)
