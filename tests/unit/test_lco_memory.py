"""LCO at 1024 px: chunks sized from measured bytes per latent keep peak memory inside the budget.

The generator has the real depth (4 -> 1024 px, nine blocks) and tiny widths (16 channels), the
classifier the project's small CNN; one 1024 px image then holds 64 MiB per activation, so the fixed
chunks of a 64 px demo (256 latents scored at once, an LCO batch of 64) would need tens of GB. The
job runs in a subprocess whose peak resident memory (VmHWM) is read after the run.
"""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch

from synthcxr.lco.memory import SAFETY, measure_footprint, plan_chunks
from synthcxr.utils.amp import autocast

from dag import run_group

BUDGET_MB = 1500

_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    from synthcxr.pggan.networks import Generator
    from synthcxr.classifier.models import Classifier, default_arch
    from synthcxr.lco.config import LCOConfig
    from synthcxr.lco.optimize import optimise_latents

    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024

    torch.set_num_threads(1)
    torch.manual_seed(0)
    labels = ["Cardiomegaly", "Effusion", "No_Finding"]
    G = Generator(1024, latent_dim=16, fmap_base=8192, fmap_max=16).eval()
    C = Classifier(default_arch("small_cnn", 3, 64, width=4), labels, 64).eval()
    memory_mb = None if sys.argv[1] == "none" else float(sys.argv[1])
    base = hwm()
    cfg = LCOConfig.from_section(dict(labels=labels, steps=1, retries=0, batch_size=4, mode="pool", pool_factor=1, pool_block=4, memory_mb=memory_mb, device="cpu"))
    res = optimise_latents(G, C, {n: 0.5 for n in labels}, np.tile([1, 0, 0], (4, 1)), np.arange(4), cfg, pool_seed=0)
    ch = res.attrs["chunks"]
    print(json.dumps({"peak_mb": hwm() - base, "score_chunk": ch.score_chunk, "step_batch": ch.step_batch,
                      "grad_steps": int(res["grad_steps"].sum()), "pool": res.attrs["pool"].size}))
    """
)


def _run(memory_mb) -> dict:
    proc = run_group([sys.executable, "-c", _SCRIPT, str(memory_mb)], timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def models_1024():
    from synthcxr.classifier.models import Classifier, default_arch
    from synthcxr.pggan.networks import Generator

    torch.manual_seed(0)
    G = Generator(1024, latent_dim=16, fmap_base=8192, fmap_max=16).eval()
    C = Classifier(default_arch("small_cnn", 3, 64, width=4), ["A", "B", "C"], 64).eval()
    return G, C


def test_footprint_matches_the_activation_sizes_by_hand(models_1024):
    G, C = models_1024
    fp = measure_footprint(G, C)
    act = 16 * 1024 * 1024 * 4  # one 16-channel fp32 activation at 1024 px
    # scoring: the largest op holds its input and output at 1024 px (2 activations), doubled for workspaces
    assert 3 * act <= fp.score_per_latent <= 6 * act
    # an LCO step keeps the 1024 px block's activations for the backward: several of them, far more than scoring
    assert fp.step_per_latent > 2 * fp.score_per_latent
    plan = plan_chunks(G, C, torch.device("cpu"), batch_size=64, memory_mb=BUDGET_MB)
    assert plan.score_chunk * fp.score_per_latent * SAFETY <= BUDGET_MB * 2**20
    assert plan.step_batch * fp.step_per_latent * SAFETY <= BUDGET_MB * 2**20
    assert plan.score_chunk & (plan.score_chunk - 1) == 0 and plan.step_batch & (plan.step_batch - 1) == 0


def test_lco_at_1024_px_stays_inside_its_memory_budget():
    bounded = _run(BUDGET_MB)
    assert bounded["pool"] == 4 and bounded["grad_steps"] >= 1  # it scored the pool and took a step
    assert bounded["score_chunk"] < 4 and bounded["step_batch"] < 4
    assert bounded["peak_mb"] <= BUDGET_MB, bounded
    # the same job with the 64 px demo's chunks (memory never binding) goes well past the budget
    unbounded = _run(1e9)
    assert unbounded["score_chunk"] == 256 and unbounded["step_batch"] == 4
    assert unbounded["peak_mb"] > 1.5 * BUDGET_MB, unbounded


def test_autocast_modes():
    assert autocast(torch.device("cpu"), "none").__class__.__name__ == "nullcontext"
    with autocast(torch.device("cpu"), "bf16"):
        y = torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3))
    assert y.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="fp16 autocast needs a CUDA device"):
        autocast(torch.device("cpu"), "fp16")
    with pytest.raises(ValueError, match="lco.amp"):
        autocast(torch.device("cpu"), "fp8")
