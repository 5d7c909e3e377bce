"""Training-loop behaviour: tiny end-to-end growth, exact resume, config guard, weights_only files, bf16."""

import json
import os
import shutil
import signal
import sys

import numpy as np
import pytest
from dag import run_group
import torch
from PIL import Image

import synthcxr.pggan.train as train_mod
from synthcxr.pggan.config import PGGANConfig
from synthcxr.data.store import PreparedDataset
from synthcxr.pggan import Generator, load_generator, train_pggan

TINY = dict(run="t", resolution=16, latent_dim=32, fmap_base=256, fmap_max=64, fade_kimg=0.4, stable_kimg=0.4,
            minibatch={"4": 16, "8": 16, "16": 16}, checkpoint_kimg=1.0, snapshot_kimg=1.0, log_kimg=0.2,
            ema_kimg=0.1, seed=5, device="cpu")


def _assert_same(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def tiny_run(tiny_prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("pggan")
    path = train_pggan(PGGANConfig.from_section(dict(TINY)), tiny_prepared, out)
    return out, path


def test_tiny_growth_to_16px_writes_all_outputs(tiny_run, tiny_prepared):
    out, path = tiny_run
    assert path == out / "generator.pt"
    raw = torch.load(path, weights_only=True)
    assert raw["arch"] == {"resolution": 16, "latent_dim": 32, "fmap_base": 256, "fmap_max": 64, "channels": 1}
    assert raw["meta"]["kimg"] == pytest.approx(2.0, abs=0.02) and raw["meta"]["res"] == 16
    assert raw["meta"]["config"]["fade_kimg"] == 0.4 and "version" in raw["meta"]

    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    for key in ("kimg", "phase", "res", "alpha", "loss_d", "loss_g", "gp", "drift", "img/s", "seconds"):
        assert key in lines[0]
    assert [r["res"] for r in lines] == sorted(r["res"] for r in lines) and lines[-1]["res"] == 16
    fades = [r for r in lines if r["phase"].startswith("fade")]
    assert fades and all(0 <= r["alpha"] < 1 for r in fades)
    assert all(np.isfinite(r["loss_d"]) and np.isfinite(r["loss_g"]) for r in lines)

    grids = sorted((out / "fakes").glob("fakes-*.png"))
    assert grids[0].name == "fakes-000000.png" and grids[-1].name == "fakes-000002.png"
    img = Image.open(grids[-1])
    assert img.mode == "L" and img.size == (8 * 32, 8 * 32)
    snaps = sorted((out / "snapshots").glob("generator-*.pt"))
    assert [p.name for p in snaps] == ["generator-000000.pt", "generator-000001.pt", "generator-000002.pt"]
    early = load_generator(snaps[0])
    assert early.meta["res"] == 4 and early.meta["kimg"] == 0

    # it learned something: the fakes' mean image is far closer to the real mean than at init
    G = load_generator(path)
    real = torch.stack([it["image"] for it in PreparedDataset(tiny_prepared).images("train", 16)])
    with torch.no_grad():
        fake = G(torch.randn(256, 32, generator=torch.Generator().manual_seed(0)))
        init = Generator(16, 32, 256, 64)(torch.randn(256, 32))
    err = (fake.mean(0) - real.mean(0)).abs().mean().item()
    err0 = (init.mean(0) - real.mean(0)).abs().mean().item()
    assert err < 0.5 * err0 and err < 0.15, (err, err0)


def test_load_generator_eval_full_res_and_differentiable(tiny_run):
    _, path = tiny_run
    G = load_generator(path)
    assert not G.training and G.resolution == 16 and G.latent_dim == 32
    assert all(p.requires_grad for p in G.parameters())
    z = torch.randn(2, 32, requires_grad=True)
    G(z).mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    with pytest.raises(FileNotFoundError, match="train_pggan"):
        load_generator(path.parent / "nope.pt")


def test_rerun_after_completion_only_rewrites_generator(tiny_run, tiny_prepared):
    out, path = tiny_run
    before = torch.load(path, weights_only=True)["state_dict"]
    path.unlink()
    train_pggan(PGGANConfig.from_section(dict(TINY)), tiny_prepared, out)
    _assert_same(before, torch.load(path, weights_only=True)["state_dict"])


@pytest.mark.kernels
def test_resume_after_kill_is_bit_exact(tiny_prepared, tmp_path, monkeypatch):
    cfg = dict(TINY, resolution=8, fade_kimg=0.1, stable_kimg=0.1, checkpoint_kimg=0.064, snapshot_kimg=0.5,
               log_kimg=0.032)  # log intervals align with checkpoints, so the log lines match too
    straight = tmp_path / "straight"
    train_pggan(PGGANConfig.from_section(dict(cfg)), tiny_prepared, straight)

    real_save = train_mod.save_checkpoint
    calls = []

    class Killed(RuntimeError):
        pass

    def save_then_die(path, state):
        real_save(path, state)
        calls.append(state["nimg"])
        if len(calls) == 2:  # nimg 128: mid fade-in, mid-epoch (168 train images)
            raise Killed("simulated kill right after a checkpoint")

    killed = tmp_path / "killed"
    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train_pggan(PGGANConfig.from_section(dict(cfg)), tiny_prepared, killed)
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    assert calls == [64, 128] and not (killed / "generator.pt").exists()
    mid = torch.load(killed / "checkpoint.pt", weights_only=True)
    assert mid["phase_name"] == "fade8" and 0 < mid["alpha"] < 1
    train_pggan(PGGANConfig.from_section(dict(cfg)), tiny_prepared, killed)

    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(killed / "checkpoint.pt", weights_only=True)
    for key in ("G", "D", "G_ema", "opt_G", "opt_D", "nimg", "step", "phase"):
        _assert_same(a[key], b[key], key)
    _assert_same(torch.load(straight / "generator.pt", weights_only=True)["state_dict"],
                 torch.load(killed / "generator.pt", weights_only=True)["state_dict"])
    la = [json.loads(x) for x in (straight / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (killed / "log.jsonl").read_text().splitlines()]
    assert [(r["kimg"], r["loss_d"], r["loss_g"]) for r in la] == [(r["kimg"], r["loss_d"], r["loss_g"]) for r in lb]

    # the same with a real SIGKILL of a separate process right after its third checkpoint
    sig = tmp_path / "sigkill"
    script = tmp_path / "die.py"
    script.write_text(KILL_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), SYNTHCXR_NO_PROGRESS="1")
    res = run_group([sys.executable, str(script), json.dumps(cfg), tiny_prepared, str(sig)], env=env, timeout=600)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    assert torch.load(sig / "checkpoint.pt", weights_only=True)["nimg"] == 192
    assert not (sig / "generator.pt").exists()
    train_pggan(PGGANConfig.from_section(dict(cfg)), tiny_prepared, sig)
    c = torch.load(sig / "checkpoint.pt", weights_only=True)
    for key in ("G", "D", "G_ema", "opt_G", "opt_D", "nimg", "step"):
        _assert_same(a[key], c[key], key)


KILL_SCRIPT = '''
import json, os, signal, sys
import synthcxr.pggan.train as T
real_save, n = T.save_checkpoint, []
def save(path, state):
    real_save(path, state)
    n.append(1)
    if len(n) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
T.save_checkpoint = save
T.train_pggan(T.PGGANConfig.from_section(json.loads(sys.argv[1])), sys.argv[2], sys.argv[3])
'''


def test_changed_config_keeps_old_checkpoint_and_retrains(tiny_run, tiny_prepared, tmp_path):
    out, _ = tiny_run
    work = tmp_path / "copy"
    shutil.copytree(out, work)
    old = torch.load(work / "checkpoint.pt", weights_only=True)
    # bookkeeping keys may change freely: the finished run is resumed, not retrained
    train_pggan(PGGANConfig.from_section(dict(TINY, snapshot_kimg=7.0, log_kimg=3.0)), tiny_prepared, work)
    assert not list(work.glob("checkpoint-*.pt"))
    train_pggan(PGGANConfig.from_section(dict(TINY, lr=0.002)), tiny_prepared, work, log_file=tmp_path / "rule.log")
    assert "pggan.lr: 0.001 -> 0.002" in (tmp_path / "rule.log").read_text()
    kept = work / f"checkpoint-{old['fingerprint'][:12]}.pt"
    kept_state = torch.load(kept, weights_only=True)
    assert all(torch.equal(old["G"][k], kept_state["G"][k]) for k in old["G"])
    assert (work / f"snapshots-{old['fingerprint'][:12]}").is_dir()
    new = torch.load(work / "checkpoint.pt", weights_only=True)
    assert new["fingerprint"] != old["fingerprint"] and new["config"]["lr"] == 0.002


def test_bf16_autocast_on_cpu_trains_finite(tiny_prepared, tmp_path):
    cfg = dict(TINY, resolution=8, fade_kimg=0.05, stable_kimg=0.05, amp=True, log_kimg=0.03)
    path = train_pggan(PGGANConfig.from_section(cfg), tiny_prepared, tmp_path / "amp")
    lines = [json.loads(x) for x in (tmp_path / "amp" / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite([r["loss_d"], r["loss_g"], r["gp"]]).all() for r in lines)
    G = load_generator(path)
    assert all(v.dtype == torch.float32 for v in G.state_dict().values())
    assert torch.isfinite(G(torch.randn(4, 32))).all()


def test_bad_inputs_name_the_problem(tiny_prepared, tmp_path):
    with pytest.raises(ValueError, match="no 64 px level"):
        train_pggan(PGGANConfig.from_section(dict(TINY, resolution=64, minibatch={"4": 4, "8": 4, "16": 4, "32": 4, "64": 4})),
                    tiny_prepared, tmp_path / "a")
    with pytest.raises(ValueError, match="minibatch"):
        train_pggan(PGGANConfig.from_section(dict(TINY, minibatch={"4": 16})), tiny_prepared, tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="prepare"):
        train_pggan(PGGANConfig.from_section(dict(TINY)), tmp_path / "missing", tmp_path / "c")
