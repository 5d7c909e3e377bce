"""WGAN-GP loss, EMA and the growth schedule against hand computations."""

import math

import pytest
import torch

from synthcxr.pggan.config import PGGANConfig
from synthcxr.pggan.loss import critic_loss, generator_loss, gradient_penalty
from synthcxr.pggan.schedule import Schedule
from synthcxr.pggan.steps import blend_reals, ema_beta, update_ema


def test_gradient_penalty_linear_critic_known_gradient():
    # D(x) = <w, x> + b has gradient w everywhere: penalty = (||w|| - 1)^2 for every sample
    w = torch.zeros(1, 1, 2, 2)
    w.view(-1)[:] = torch.tensor([1.0, 2.0, 2.0, 0.0])  # ||w|| = 3
    w.requires_grad_(True)
    critic = lambda x: (x * w).flatten(1).sum(1, keepdim=True) + 0.5  # noqa: E731
    real, fake = torch.randn(5, 1, 2, 2), torch.randn(5, 1, 2, 2)
    gp = gradient_penalty(critic, real, fake, mix=torch.rand(5))
    assert torch.allclose(gp, torch.full((5,), 4.0))
    # second order: d/dw mean((||w|| - 1)^2) = 2 (||w|| - 1) w / ||w||
    (gw,) = torch.autograd.grad(gp.mean(), w)
    assert torch.allclose(gw, 2 * (3 - 1) * w.detach() / 3, atol=1e-6)


def test_gradient_penalty_quadratic_critic_checks_interpolation():
    # D(x) = 0.5 ||x||^2 -> grad = x_hat = real + mix * (fake - real)
    real, fake = torch.randn(4, 1, 3, 3), torch.randn(4, 1, 3, 3)
    mix = torch.tensor([0.0, 0.25, 0.5, 1.0])
    gp = gradient_penalty(lambda x: 0.5 * x.pow(2).flatten(1).sum(1), real, fake, mix=mix)
    x_hat = real + mix.view(4, 1, 1, 1) * (fake - real)
    expect = (x_hat.flatten(1).norm(dim=1) - 1.0) ** 2
    assert torch.allclose(gp, expect, atol=1e-5)


def test_gradient_penalty_runs_in_fp32_under_autocast():
    lin = torch.nn.Linear(4, 1)
    real, fake = torch.randn(3, 4), torch.randn(3, 4)
    seen = []

    def critic(x):
        seen.append(x.dtype)
        out = lin(x)
        seen.append(out.dtype)
        return out

    with torch.autocast("cpu", dtype=torch.bfloat16):
        gp = gradient_penalty(critic, real.bfloat16(), fake.bfloat16(), mix=torch.rand(3))
    assert seen == [torch.float32, torch.float32] and gp.dtype == torch.float32
    norm = lin.weight.detach().norm()
    assert torch.allclose(gp, (norm - 1) ** 2 * torch.ones(3), atol=1e-6)


def test_critic_and_generator_loss_hand_values():
    d_real = torch.tensor([[1.0], [3.0]])
    d_fake = torch.tensor([[-1.0], [0.0]])
    gp = torch.tensor([0.5, 1.5])
    out = critic_loss(d_real, d_fake, gp, gp_weight=10.0, drift_weight=0.001)
    # mean fake - mean real + 10 * mean gp + 0.001 * mean real^2 = -0.5 - 2 + 10 + 0.005
    assert out.total.item() == pytest.approx(7.505)
    assert out.wdist.item() == pytest.approx(2.5) and out.drift.item() == pytest.approx(5.0)
    assert generator_loss(d_fake).item() == pytest.approx(0.5)


def test_ema_half_life():
    beta = ema_beta(16, 2.0)
    assert beta == pytest.approx(0.5 ** (16 / 2000))
    assert ema_beta(16, 0.0) == 0.0
    ema, model = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    e0 = [p.detach().clone() for p in ema.parameters()]
    for _ in range(125):  # 125 * 16 = 2000 images = one half-life
        update_ema(ema, model, beta)
    for pe, p, p0 in zip(ema.parameters(), model.parameters(), e0):
        assert torch.allclose(pe, 0.5 * p0 + 0.5 * p.detach(), atol=1e-5)


def test_schedule_phases_alpha_and_batches():
    s = Schedule(16, stable_kimg=1.0, fade_kimg=2.0, minibatch={4: 8, 8: 4, 16: 2})
    assert [(p.name, p.start_nimg, p.end_nimg) for p in s.phases] == [
        ("stable4", 0, 1000), ("fade8", 1000, 3000), ("stable8", 3000, 4000),
        ("fade16", 4000, 6000), ("stable16", 6000, 7000)]
    assert s.total_nimg == 7000
    p = s.at(1500)
    assert (p.res, p.alpha, p.batch) == (8, 0.25, 4)
    assert s.at(999).res == 4 and s.at(1000).alpha == 0.0 and s.at(3000).alpha == 1.0
    assert s.at(10**9).phase.name == "stable16"
    ext = Schedule(16, 1.0, 2.0, {4: 8, 8: 4, 16: 2}, total_kimg=9.5)
    assert ext.total_nimg == 9500 and ext.phases[-1].end_nimg == 9500
    with pytest.raises(ValueError, match="total_kimg"):
        Schedule(16, 1.0, 2.0, {4: 8, 8: 4, 16: 2}, total_kimg=5)
    with pytest.raises(ValueError, match="minibatch"):
        Schedule(16, 1.0, 2.0, {4: 8, 8: 4})


def test_config_rejects_unknown_key_and_names_missing_batch():
    with pytest.raises(ValueError, match="pggan.lrate"):
        PGGANConfig.from_section({"lrate": 0.1})
    with pytest.raises(ValueError, match='"32"'):
        PGGANConfig.from_section({"run": "x", "resolution": 64, "minibatch": {"4": 2}}).batch_for(32)


def test_blend_reals_fade():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    low = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(x, 2), scale_factor=2)
    assert torch.equal(blend_reals(x, 1.0), x)
    assert torch.allclose(blend_reals(x, 0.0), low)
    assert torch.allclose(blend_reals(x, 0.4), 0.6 * low + 0.4 * x)
    assert math.isclose(low[0, 0, 0, 0].item(), (0 + 1 + 4 + 5) / 4)
