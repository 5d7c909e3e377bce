"""What LCO costs, in forward-equivalents: one LCO update (a forward with the graph and a backward to z)
timed against a no-grad forward of the same networks, and the latents shards' counts priced with it.

A shard counts generator forwards (``g_evals``: pool share, best-of-k starts and every step) and backward
passes (``grad_steps``) per sample. An update costs ``r`` forwards, where ``r`` is measured here on the
device that runs LCO, so a cost in forward-equivalents is ``forwards + (r - 1) x backwards``.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..utils.runtime import synchronize


def backward_ratio(G: torch.nn.Module, C: torch.nn.Module, idx: torch.Tensor, batch: int, device: torch.device,
                   repeats: int = 5) -> dict[str, float]:
    """Interleaved timings of a no-grad forward of ``C(G(z))`` and an LCO update at ``batch``.

    Returns ``{"ratio", "forward_min_s", "forward_median_s", "update_min_s", "update_median_s", "repeats", "batch"}``
    with ``ratio`` = median update / median forward (the first round warms up and is not counted).
    """
    if repeats < 1 or batch < 1:
        raise ValueError(f"backward_ratio: need repeats >= 1 and batch >= 1, got {repeats}, {batch}")
    d = int(G.latent_dim)
    z = torch.randn(batch, d, generator=torch.Generator().manual_seed(0)).to(device)
    tgt = torch.zeros(batch, len(idx), device=device)
    fwd, step = [], []
    for i in range(repeats + 1):
        synchronize(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            C(G(z)).index_select(1, idx)
        synchronize(device)
        t1 = time.perf_counter()
        zi = z.clone().requires_grad_(True)
        loss = F.binary_cross_entropy_with_logits(C(G(zi)).index_select(1, idx), tgt)
        torch.autograd.grad(loss, zi)
        synchronize(device)
        t2 = time.perf_counter()
        if i:
            fwd.append(t1 - t0)
            step.append(t2 - t1)
    mf, ms = statistics.median(fwd), statistics.median(step)
    return {"ratio": ms / mf, "forward_min_s": min(fwd), "forward_median_s": mf, "update_min_s": min(step),
            "update_median_s": ms, "repeats": int(repeats), "batch": int(batch)}


def forward_equivalents(g_evals: np.ndarray, grad_steps: np.ndarray, ratio: float) -> float:
    """Total cost of the given samples: forwards plus ``ratio - 1`` forwards per backward pass."""
    return float(np.sum(g_evals) + (ratio - 1.0) * np.sum(grad_steps))


def measure_ratio(G: torch.nn.Module, classifier_path, batch: int, repeats: int = 5) -> dict[str, float]:
    """:func:`backward_ratio` of a loaded generator and the steering classifier saved at ``classifier_path``,
    on the generator's device."""
    from ..classifier import load_classifier

    dev = next(G.parameters()).device
    C = load_classifier(classifier_path, dev).eval()
    return backward_ratio(G.eval(), C, torch.arange(len(C.label_names), device=dev), batch, dev, repeats)
