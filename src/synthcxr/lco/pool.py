"""The shard's prior pool: drawn and scored block by block, then matched to targets rarest first."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import expit

from .accept import LabelSpace, accept_rule, loss_cuts, target_loss
from .config import LCOConfig
from .realism import RealismGate
from .starts import module_device, pool_block_latents, score_with_distance


def _pool_losses(logits: np.ndarray, combos: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """:func:`~.accept.target_loss` ``[U, P]`` of each pool member's logits ``[P, Lu]`` against each combination ``[U, Lu]``."""
    shape = (len(combos), len(logits), logits.shape[1])
    lg = torch.as_tensor(logits, dtype=torch.float64)[None].expand(shape)
    y = torch.as_tensor(combos, dtype=torch.float64)[:, None].expand(shape)
    return target_loss(lg, y, cuts).numpy()


def match_pool(
    probs: np.ndarray,
    logits: np.ndarray,
    combos: np.ndarray,
    demand: np.ndarray,
    thresholds: np.ndarray,
    margin,
    fresh_k: int = 1,
    cuts: np.ndarray | None = None,
    realistic: np.ndarray | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Assign pool members to targets, rarest combination first; each member is used at most once.

    ``probs``/``logits`` are the pool's ``[P, Lu]``, ``combos`` the distinct targets ``[U, Lu]`` wanted
    ``demand[u]`` times; ``margin`` is a number or ``[2, Lu]`` logits (see :func:`~.accept.margin_thresholds`).
    ``realistic`` (``[P]`` bool, a realism gate's verdict) keeps the members outside the gate from being
    accepted as drawn; they may still start an optimisation. Returns, per combination, the members that
    clear it by ``margin`` (accepted
    as they are) and the lowest-loss members (:func:`~.accept.target_loss` from ``cuts``, default
    zeros: mean BCE) that will start an optimisation for the rest. Rarity is
    clearing members per requested sample (ties: the combination listed first), so a rare combination is
    not left with no clearing member because a common one took it.

    The third list marks, per start, whether it is *strong*: its loss is no worse than the pool's
    1/(k+1) quantile for that combination (k = ``fresh_k``), about what the best of k fresh prior draws
    reaches. A combination wanted many times starts most of its targets from the pool's middling
    members, and their failures say little about whether it can be met at all.
    """
    P, U = len(probs), len(combos)
    clear = np.stack([accept_rule(probs, np.broadcast_to(c, probs.shape), thresholds, margin) for c in combos]) if U else np.zeros((0, P), bool)
    if realistic is not None:
        clear &= np.asarray(realistic, dtype=bool)[None, :]
    loss = _pool_losses(logits, combos, np.zeros((2, combos.shape[1])) if cuts is None else cuts) if P else np.zeros((U, 0))
    used = np.zeros(P, dtype=bool)
    accepted: list[np.ndarray] = [np.empty(0, np.int64)] * U
    starts: list[np.ndarray] = [np.empty(0, np.int64)] * U
    strong: list[np.ndarray] = [np.empty(0, bool)] * U
    order = np.lexsort((np.arange(U), clear.sum(1) / np.maximum(demand, 1)))
    for u in order:
        cand = np.flatnonzero(clear[u] & ~used)
        take = cand[np.argsort(loss[u, cand], kind="stable")][: demand[u]]
        used[take] = True
        accepted[u] = take
    for u in order:
        need = int(demand[u]) - len(accepted[u])
        if need <= 0:
            continue
        cand = np.flatnonzero(~used)
        take = cand[np.argsort(loss[u, cand], kind="stable")][:need]
        used[take] = True
        starts[u] = take
        strong[u] = loss[u, take] <= np.quantile(loss[u], 1.0 / (fresh_k + 1))
    return accepted, starts, strong


@dataclass
class PoolDraw:
    """A scored pool and its final matching: members accepted as drawn and starts, per combination."""

    z: torch.Tensor  # [P, d] float32 on CPU
    probs: np.ndarray  # [P, Lu] float32
    accepted: list[np.ndarray]
    starts: list[np.ndarray]
    strong: list[np.ndarray]  # per start: as good as a best-of-init_candidates start
    distance: np.ndarray | None = None  # [P] float32: the realism gate's distance (None: no gate)


@dataclass
class PoolStats:
    """What a shard's prior pool cost and gave: members scored, accepted as drawn, optimisation starts
    (``strong``: those as good as a best-of-``init_candidates`` start, see :func:`match_pool`)."""

    size: int = 0
    accepted: int = 0
    started: int = 0
    strong: int = 0
    blocks: int = 0


def draw_pool(
    G: torch.nn.Module,
    C: torch.nn.Module,
    space: LabelSpace,
    combos: np.ndarray,
    demand: np.ndarray,
    seed: int,
    cfg: LCOConfig,
    score_chunk: int,
    gate: RealismGate | None = None,
) -> tuple[PoolDraw, PoolStats]:
    """Draw and score the shard's prior pool block by block, matching it to the targets after each block.

    ``combos`` are the distinct targets ``[U, Lu]`` over the used labels, wanted ``demand[u]`` times.
    Blocks of ``cfg.pool_block`` (at most the number of targets) are drawn until the pool holds at least
    one latent per target and every target has a member clearing it by the margin or the last block
    added no new clearing match, or until it holds ``cfg.pool_factor`` latents per target. With a realism
    ``gate`` a member clears a target only within the gate's distance too.
    """
    used = space.used
    idx = torch.as_tensor(np.asarray(space.clf_index)[used], dtype=torch.long, device=module_device(G, cfg.device))
    thr = space.thresholds[used]
    cuts = loss_cuts(space, cfg.objective)
    n = int(demand.sum())
    cap = cfg.pool_factor * n
    zs, logit_blocks, dist_blocks = [], [], []
    d = int(G.latent_dim)
    matched = 0
    stats = PoolStats()
    block = min(cfg.pool_block, n)  # a shard smaller than a block never pays for a whole one
    while stats.size < cap:
        size = min(block, cap - stats.size)
        zb = pool_block_latents(seed, stats.blocks, size, d)
        lb, db = score_with_distance(G, C, zb, idx, score_chunk, cfg.amp, gate)
        logit_blocks.append(lb.cpu().numpy())
        if db is not None:
            dist_blocks.append(db.cpu().numpy())
        zs.append(zb)
        stats.size += size
        stats.blocks += 1
        logits = np.concatenate(logit_blocks)
        probs = expit(logits.astype(np.float64)).astype(np.float32)
        dist = np.concatenate(dist_blocks) if gate is not None else None
        acc, st, sg = match_pool(probs, logits, combos, demand, thr, space.margins[:, used], fresh_k=cfg.init_candidates, cuts=cuts,
                                 realistic=None if dist is None else gate.passes(dist))
        now = sum(len(a) for a in acc)
        # at least one latent per target, so every target has a start of its own
        if stats.size >= n and (now == n or now == matched):
            break
        matched = now
    return PoolDraw(torch.cat(zs), probs, acc, st, sg, dist), stats
