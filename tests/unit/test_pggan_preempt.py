"""Stopping early at a time budget or on SIGTERM/SIGUSR1: checkpoint, exit 75, and resume exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from dag import run_group

from synthcxr.pggan.config import PGGANConfig
from synthcxr.pggan import train_pggan
from synthcxr.pggan.preempt import MARKER, PREEMPTED_EXIT, Preempted, StopRequest, parse_slurm_time, slurm_time_left_s, time_budget_s

CFG = dict(run="p", resolution=8, latent_dim=16, fmap_base=128, fmap_max=32, fade_kimg=0.1, stable_kimg=0.1,
           minibatch={"4": 16, "8": 16}, checkpoint_kimg=1.0, snapshot_kimg=1.0, log_kimg=0.064, ema_kimg=0.1,
           seed=3, device="cpu")


@pytest.fixture(scope="module")
def straight(tiny_prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    train_pggan(PGGANConfig.from_section(dict(CFG)), tiny_prepared, out)
    return out


def _log(folder):
    return [(r["kimg"], r["loss_d"], r["loss_g"], r["phase"]) for r in map(json.loads, (folder / "log.jsonl").read_text().splitlines())]


def _same_generator(a, b) -> bool:
    sa = torch.load(a / "generator.pt", weights_only=True)["state_dict"]
    sb = torch.load(b / "generator.pt", weights_only=True)["state_dict"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_slurm_durations_and_budgets():
    assert parse_slurm_time("1-02:03:04") == 93784 and parse_slurm_time("02:03:04") == 7384
    assert parse_slurm_time("03:04") == 184 and parse_slurm_time("UNLIMITED") is None and parse_slurm_time("") is None
    assert time_budget_s(None, 15, None) is None
    assert time_budget_s(60, 15, None) == 3600
    assert time_budget_s(None, 15, 7200) == 6300 and time_budget_s(60, 15, 7200) == 3600
    assert time_budget_s(None, 15, 600) == 0  # less left than the margin: stop at once

    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "1:02:03\n", "")

    assert slurm_time_left_s({}, fake_run) is None and not calls  # outside SLURM nothing is asked
    assert slurm_time_left_s({"SLURM_JOB_ID": "42"}, fake_run) == 3723
    assert calls == [["squeue", "-h", "-j", "42", "-o", "%L"]]
    assert slurm_time_left_s({"SLURM_JOB_ID": "42"}, lambda *a, **k: (_ for _ in ()).throw(FileNotFoundError())) is None


def test_stop_request_on_signal_and_on_budget():
    now = [0.0]
    with StopRequest(10.0, clock=lambda: now[0]) as stop:
        assert stop.reason() is None
        now[0] = 9.9
        assert stop.reason() is None
        now[0] = 10.0
        assert stop.reason() == "time budget of 10 s used"
    before = signal.getsignal(signal.SIGUSR1)
    with StopRequest(None) as stop:
        os.kill(os.getpid(), signal.SIGUSR1)  # would kill the process without the handler
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.reason() in ("received SIGUSR1", "received SIGTERM")
    assert signal.getsignal(signal.SIGUSR1) is before


SIGNAL_SCRIPT = """
import json, os, signal, sys
import synthcxr.pggan.train as T
import synthcxr.pggan.worker as W
real_step, n = T._Trainer.train_step, []
def step(self, *a, **k):
    out = real_step(self, *a, **k)
    n.append(1)
    if len(n) == 5:  # mid log interval (4 steps each): the running means must survive the restart
        os.kill(os.getpid(), signal.SIG{sig})
    return out
T._Trainer.train_step = step
W.main(["--config-json", sys.argv[1], "--data", sys.argv[2], "--out", sys.argv[3]])
"""


@pytest.mark.kernels
@pytest.mark.parametrize("sig", ["USR1", "TERM"])
def test_signal_checkpoints_exits_75_and_the_rerun_continues_exactly(sig, straight, tiny_prepared, tmp_path):
    out = tmp_path / "run"
    (tmp_path / "cfg.json").write_text(json.dumps(CFG))
    (tmp_path / "s.py").write_text(SIGNAL_SCRIPT.format(sig=sig))
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), SYNTHCXR_NO_PROGRESS="1")
    res = run_group([sys.executable, str(tmp_path / "s.py"), str(tmp_path / "cfg.json"), tiny_prepared, str(out)], env=env, timeout=600)
    assert res.returncode == PREEMPTED_EXIT, res.stderr[-3000:]
    assert not (out / "generator.pt").exists()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["nimg"] == 5 * 16  # the step boundary after the signal
    assert json.loads((out / MARKER).read_text())["reason"] == f"received SIG{sig}"
    train_pggan(PGGANConfig.from_section(dict(CFG)), tiny_prepared, out)  # the resubmitted job
    assert not (out / MARKER).exists()
    assert _same_generator(out, straight)
    assert _log(out) == _log(straight)  # one continuous schedule: same kimg marks, same running means


@pytest.mark.kernels
def test_time_budget_splits_training_into_allocations_with_the_same_result(straight, tiny_prepared, tmp_path):
    out = tmp_path / "run"
    cfg = dict(CFG, job_minutes=0.0005)  # ~30 ms of training per "job": a few steps each
    stops = []
    for _ in range(200):
        try:
            train_pggan(PGGANConfig.from_section(dict(cfg)), tiny_prepared, out)
            break
        except Preempted as exc:
            stops.append(exc.nimg)
    assert len(stops) >= 2 and stops == sorted(set(stops)), stops  # progress every time, never repeated
    assert _same_generator(out, straight) and _log(out) == _log(straight)
    # how the run was split into jobs is not part of the generator: the very same bytes
    assert (out / "generator.pt").read_bytes() == (straight / "generator.pt").read_bytes()
