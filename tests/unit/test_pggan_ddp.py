"""Two-process DistributedDataParallel training on CPU (Gloo), launched with torchrun."""

import json
import os
import sys
import textwrap

import pytest
import torch

from synthcxr.pggan.config import PGGANConfig
from synthcxr.pggan import Generator
from dag import run_group
from pggan_logs import assert_same_losses

pytestmark = pytest.mark.kernels  # compares floats across batch compositions and processes

HELPER = textwrap.dedent(
    """
    import sys, torch
    import synthcxr.pggan.train as T
    import synthcxr.pggan.worker as W

    dump = sys.argv.pop(1)
    orig = T._Trainer.run

    def run(self, max_steps=None):
        out = orig(self, max_steps)
        torch.save({"G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
                    "world": self.info.world_size, "nimg": self.nimg},
                   f"{dump}/rank{self.info.rank}.pt")
        return out

    T._Trainer.run = run
    W.main()
    """
)


def test_two_rank_gloo_training_keeps_ranks_identical(tiny_prepared, tmp_path):
    cfg = dict(run="ddp", resolution=8, latent_dim=16, fmap_base=128, fmap_max=32, fade_kimg=0.048,
               stable_kimg=0.048, minibatch={"4": 16, "8": 16}, checkpoint_kimg=1, snapshot_kimg=1,
               log_kimg=0.032, ema_kimg=0.1, seed=9, device="cpu")
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    (tmp_path / "helper.py").write_text(HELPER)
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", SYNTHCXR_NO_PROGRESS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(tmp_path / "helper.py"), str(tmp_path), "--config-json", str(tmp_path / "cfg.json"),
           "--data", tiny_prepared, "--out", str(out)]
    res = run_group(cmd, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["world"] == r1["world"] == 2 and r0["nimg"] == 144
    # ranks saw different images and latents; only synchronised gradients keep them identical
    for net in ("G", "D", "G_ema"):
        for k in r0[net]:
            assert torch.equal(r0[net][k], r1[net][k]), f"{net}.{k} differs between ranks"
    torch.manual_seed(9)
    init = Generator(8, 16, 128, 32).state_dict()
    assert any(not torch.equal(init[k], r0["G"][k]) for k in init)
    assert (out / "generator.pt").exists() and (out / "checkpoint.pt").exists()
    lines = (out / "log.jsonl").read_text().splitlines()
    assert len(lines) == len({json.loads(x)["kimg"] for x in lines}) >= 4  # one writer, no duplicates
    # One process on the same global minibatch trains the same network: same latents, same critic
    # groups, gradients averaged instead of summed in one batch (equal up to float reassociation).
    single = tmp_path / "single"
    res = run_group([sys.executable, "-m", "synthcxr.pggan.worker", "--config-json", str(tmp_path / "cfg.json"),
                     "--data", tiny_prepared, "--out", str(single)], env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    one = [json.loads(x) for x in (single / "log.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in lines]
    assert_same_losses(one, two)
    g1 = torch.load(single / "generator.pt", weights_only=True)["state_dict"]
    g2 = torch.load(out / "generator.pt", weights_only=True)["state_dict"]
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], rtol=1e-3, atol=1e-4, msg=k)


LAUNCH = textwrap.dedent(
    """
    import json, sys
    from synthcxr.pggan.config import PGGANConfig
    from synthcxr.pggan.launch import train_maybe_distributed
    from synthcxr.pggan.preempt import PREEMPTED_EXIT, Preempted
    try:
        train_maybe_distributed(PGGANConfig.from_section(json.loads(open(sys.argv[1]).read())), sys.argv[2], sys.argv[3])
    except Preempted as exc:
        print(exc, file=sys.stderr)
        sys.exit(PREEMPTED_EXIT)
    """
)


def test_two_ranks_stop_together_on_a_signal_and_resume_exactly(tiny_prepared, tmp_path):
    """SIGTERM to the launcher reaches both ranks (through torchrun), rank 0 checkpoints, the rerun finishes the schedule."""
    import signal
    import subprocess
    import time

    from synthcxr.pggan.launch import launch_torchrun

    cfg = dict(run="ddp", resolution=8, latent_dim=16, fmap_base=128, fmap_max=32, fade_kimg=0.8, stable_kimg=0.8,
               minibatch={"4": 16, "8": 16}, checkpoint_kimg=10, snapshot_kimg=10, log_kimg=0.064, ema_kimg=0.1,
               seed=9, device="cpu", gpus=2)
    env = dict(os.environ, OMP_NUM_THREADS="1", SYNTHCXR_NO_PROGRESS="1")
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    os.environ.update(OMP_NUM_THREADS="1")
    launch_torchrun(PGGANConfig.from_section(cfg), tiny_prepared, straight, None, 2)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    (tmp_path / "launch.py").write_text(LAUNCH)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "launch.py"), str(tmp_path / "cfg.json"), tiny_prepared, str(stopped)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (stopped / "log.jsonl").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # training has begun: the first log line is written
        proc.send_signal(signal.SIGTERM)  # to the launcher only, as `kill PID` would
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 75, err[-3000:]
    ck = torch.load(stopped / "checkpoint.pt", weights_only=True)
    assert 0 < ck["nimg"] < 2400
    # torchrun signals the ranks one after another: rank 0 either got it itself or stopped with the other
    assert json.loads((stopped / "preempted.json").read_text())["reason"] in ("received SIGTERM", "another rank was asked to stop")
    launch_torchrun(PGGANConfig.from_section(cfg), tiny_prepared, stopped, None, 2)  # the resubmitted job
    a = torch.load(straight / "generator.pt", weights_only=True)["state_dict"]
    b = torch.load(stopped / "generator.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    la = [json.loads(x) for x in (straight / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (stopped / "log.jsonl").read_text().splitlines()]
    assert [r["kimg"] for r in la] == [r["kimg"] for r in lb]
    for ra, rb in zip(la, lb):  # rank means restored as their mean: equal up to float rounding
        assert rb["loss_d"] == pytest.approx(ra["loss_d"], rel=1e-5, abs=1e-6) and rb["loss_g"] == pytest.approx(ra["loss_g"], rel=1e-5, abs=1e-6)
