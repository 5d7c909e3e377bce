"""Training-step memory counted on fake tensors: the counter against hand counts and real tensors."""

import pytest
import torch

from synthcxr.pggan.config import PGGANConfig
from synthcxr.pggan.memory import GIB, LiveBytes, ResolutionBudget, budget, markdown, memory_table, step_memory
from synthcxr.pggan.networks import Discriminator, Generator

CFG = PGGANConfig.from_section(dict(run="m", resolution=16, latent_dim=16, fmap_base=64, fmap_max=32, minibatch={"4": 8, "8": 8, "16": 8}))


def test_live_bytes_follows_allocations_and_frees_by_hand():
    x = torch.ones(1024, 256)  # 1 MiB, added by hand like a parameter
    live = LiveBytes()
    live.add(x)
    with live:
        y = x * 2  # +1 MiB
        z = y + 1  # +1 MiB: 3 MiB alive
        v = z.view(-1)  # a view allocates nothing
        del y  # -1 MiB
        w = z.sum()  # +4 bytes
    assert live.peak == 3 * 2**20 and live.now == 2 * 2**20 + 4
    del v, w, z


def test_parameters_counted_exactly_and_fake_count_equals_real_tensors():
    n_g = sum(p.numel() for p in Generator(16, 16, 64, 32).parameters())
    n_d = sum(p.numel() for p in Discriminator(16, 64, 32).parameters())
    fake = step_memory(CFG, 16, 4)
    assert fake.params == 4 * (2 * n_g + n_d)  # G, its EMA copy, D in float32
    # Adam: two float32 moments per trained parameter (at most every parameter) and a step counter each
    assert 0 < fake.optimizer <= 8 * (n_g + n_d) + 4 * 200
    real = step_memory(CFG, 16, 4, fake=False)
    assert (real.params, real.optimizer, real.peak) == (fake.params, fake.optimizer, fake.peak)
    assert fake.transient > 0


def test_memory_grows_linearly_with_the_batch_and_with_resolution():
    a, b, c = (step_memory(CFG, 16, n).peak for n in (2, 4, 8))
    assert (c - b) == pytest.approx(2 * (b - a), rel=0.05)
    per = [budget(CFG, r).per_image for r in (4, 8, 16)]
    assert per[0] < per[1] < per[2]
    amp = budget(CFG, 16, amp=True)
    assert amp.per_image < per[2]  # half-precision activations


def test_fits_and_table_by_hand():
    bud = ResolutionBudget(res=1024, params=0, optimizer=0, fixed=GIB, per_image=3 * GIB)
    assert bud.bytes_at(4) == 13 * GIB
    assert bud.fits(40) == 11  # (36 - 1) / 3
    assert bud.fits(80, headroom=0.5) == 13  # (40 - 1) / 3
    rows = memory_table(CFG, (40, 80))
    assert [r["res"] for r in rows] == [4, 8, 16] and all(r["minibatch_per_gpu"] == 8 for r in rows)
    text = markdown(rows, (40, 80))
    assert text.count("\n") == 4 and "most per 80 GB GPU" in text


def test_cli_prints_one_row_per_resolution_of_a_config(capsys):
    from dag import TINY

    from synthcxr.cli import main

    assert main(["pggan-memory", "--configfile", str(TINY), "--gpu-gib", "24"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| res |") and "most per 24 GB GPU" in out[0]
    assert [line.split("|")[1].strip() for line in out[2:]] == ["4", "8", "16"]
