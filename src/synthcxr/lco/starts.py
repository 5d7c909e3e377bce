"""Where an attempt starts: seeded prior draws, the shard pool's blocks, and the best of k candidates.

Every draw comes from a generator seeded by the sample (or pool block) alone, so a start never depends
on batch composition, chunk size or how many blocks were drawn.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..utils.amp import autocast
from ..utils.runtime import resolve_device
from .accept import target_loss
from .seeds import derive_seed


def latent_length(G: torch.nn.Module, feature_res: int | None) -> int:
    """Numbers per optimised latent: ``G.latent_dim``, plus the feature offset of block ``feature_res``
    (``lco.feature_res``; every start's offset is zero). Raises naming the key when G has no such block."""
    d = int(G.latent_dim)
    if feature_res is None:
        return d
    dims = G.offset_dims() if hasattr(G, "offset_dims") else {}
    if int(feature_res) not in dims:
        raise ValueError(f"lco.feature_res: {feature_res} is not a block below this generator's output resolution "
                         f"(offsets are possible at {sorted(dims)}); set one of those or null")
    return d + int(dims[int(feature_res)])


def initial_latents(seeds: Sequence[int], latent_dim: int, candidates: int = 1) -> torch.Tensor:
    """``[n, latent_dim]`` (or ``[n, candidates, latent_dim]`` when candidates > 1) float32 on CPU.

    Sample i's draws come from one generator seeded with seeds[i], so its first candidate is the
    latent it gets with ``candidates=1``.
    """
    out = torch.empty(len(seeds), candidates, latent_dim)
    for i, s in enumerate(seeds):
        out[i] = torch.randn(candidates, latent_dim, generator=torch.Generator().manual_seed(int(s)))
    return out[:, 0] if candidates == 1 else out


def pool_block_latents(seed: int, block: int, size: int, latent_dim: int) -> torch.Tensor:
    """Block ``block`` of a shard's prior pool: ``[size, latent_dim]`` float32 on CPU from its own seed.

    Each block has its own generator, so the pool's latents never depend on how many blocks are drawn
    or on the scoring chunk size.
    """
    g = torch.Generator().manual_seed(derive_seed(int(seed), int(block)))
    return torch.randn(size, latent_dim, generator=g)


@torch.no_grad()
def score_latents(
    G: torch.nn.Module, C: torch.nn.Module, z: torch.Tensor, idx: torch.Tensor, chunk: int, amp: str = "none"
) -> torch.Tensor:
    """Float32 logits ``[n, len(idx)]`` of ``C(G(z))`` on the generator's device, ``chunk`` latents at a time."""
    return score_with_distance(G, C, z, idx, chunk, amp)[0]


@torch.no_grad()
def score_with_distance(
    G: torch.nn.Module, C: torch.nn.Module, z: torch.Tensor, idx: torch.Tensor, chunk: int, amp: str = "none", gate=None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """As :func:`score_latents`, plus each image's distance ``[n]`` under a realism ``gate`` (:mod:`.realism`;
    None without one)."""
    device = module_device(G, "cpu")
    out = torch.empty(len(z), len(idx), device=device)
    dist = None if gate is None else torch.empty(len(z), device=device)
    for s in range(0, len(z), max(1, int(chunk))):
        with autocast(device, amp):
            x = G(z[s : s + chunk].to(device))
            logits, d = (C(x), None) if gate is None else gate.judge(C, x)
        out[s : s + chunk] = logits.float().index_select(1, idx)
        if dist is not None:
            dist[s : s + chunk] = d
    return out, dist


@torch.no_grad()
def best_of_candidates(
    G: torch.nn.Module,
    C: torch.nn.Module,
    cand: torch.Tensor,
    tgt: torch.Tensor,
    idx: torch.Tensor,
    chunk: int = 256,
    amp: str = "none",
    cuts: np.ndarray | torch.Tensor | None = None,
) -> torch.Tensor:
    """Per sample, the candidate latent whose image is closest to the target (lowest :func:`~.accept.target_loss`;
    ``cuts`` from :func:`~.accept.loss_cuts`, default zeros: mean BCE).

    ``cand`` is ``[b, k, d]``, ``tgt`` ``[b, L_used]``; returns ``[b, d]``. Starting the optimisation
    from a prior draw that already shows part of the target means shorter, smaller moves in latent
    space, which drift less towards images only the steering classifier believes. ``chunk`` is the most
    images one forward holds (size it with :func:`synthcxr.lco.memory.plan_chunks` at high resolution).
    """
    b, k, d = cand.shape
    logits = score_latents(G, C, cand.reshape(b * k, d), idx, chunk, amp)
    rep = tgt.to(logits.device).repeat_interleave(k, dim=0)
    losses = target_loss(logits, rep, np.zeros((2, logits.shape[1])) if cuts is None else cuts)
    best = losses.view(b, k).argmin(1).to(cand.device)
    return cand[torch.arange(b, device=cand.device), best]


def module_device(module: torch.nn.Module, fallback: str) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return resolve_device(fallback)
