"""The batched optimiser: Adam on every queued attempt's latent with continuous batching and retries."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..utils.amp import autocast
from .accept import LabelSpace, accept_rule, loss_cuts, target_loss, unmet_reason
from .config import LCOConfig
from .realism import RealismGate
from .seeds import attempt_seed
from .starts import best_of_candidates, initial_latents

_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8
log = logging.getLogger("synthcxr")


@dataclass
class Results:
    """Per-row outputs of the optimisation, filled as rows finish."""

    z: np.ndarray  # [n, d] float32
    probs: np.ndarray  # [n, L] float32, NaN for unused labels
    steps: np.ndarray  # [n] int64: updates in the last attempt
    g_evals: np.ndarray  # [n] float64: forward evaluations over all attempts (+ pool share)
    grad_steps: np.ndarray  # [n] int64: backward passes over all attempts
    attempts: np.ndarray  # [n] int64
    seed: np.ndarray  # [n] int64: seed of the last attempt
    success: np.ndarray  # [n] bool
    gave_up: np.ndarray  # [n] bool: retries skipped, give_up_after strong attempts of its combination having failed
    distance: np.ndarray  # [n] float32: the realism gate's distance at the last evaluation (NaN: no gate)
    unreal: np.ndarray  # [n] bool: the last evaluation met every label's cut but not the realism gate

    def reason(self, i: int, target: np.ndarray, space: LabelSpace, steps: int, gate: RealismGate | None = None) -> str:
        """Why row ``i`` was not met ('' when it was): outside the realism gate, or its labels short of their cuts."""
        if self.success[i]:
            return ""
        if self.unreal[i]:
            return gate.reason(float(self.distance[i]), int(self.attempts[i]), steps)
        return unmet_reason(self.probs[i], target, space, int(self.attempts[i]), steps, bool(self.gave_up[i]))

    @classmethod
    def empty(cls, seeds: np.ndarray, latent_dim: int, n_labels: int) -> "Results":
        """Nothing done yet for ``len(seeds)`` rows: zeros, NaN probabilities, each row's plan seed."""
        n = len(seeds)
        return cls(z=np.zeros((n, latent_dim), dtype=np.float32), probs=np.full((n, n_labels), np.nan, dtype=np.float32),
                   steps=np.zeros(n, dtype=np.int64), g_evals=np.zeros(n, dtype=np.float64), grad_steps=np.zeros(n, dtype=np.int64),
                   attempts=np.zeros(n, dtype=np.int64), seed=np.array(seeds, dtype=np.int64), success=np.zeros(n, dtype=bool),
                   gave_up=np.zeros(n, dtype=bool), distance=np.full(n, np.nan, dtype=np.float32), unreal=np.zeros(n, dtype=bool))


@dataclass
class Anchor:
    """What each row's latent is kept near while it is optimised (a paired counterfactual's base): the
    loss adds ``latent_weight * |z - z_base|^2 / d`` and, with an embedding, ``embed_weight * (1 - cos)``
    between the embeddings of the image and of the base image (``embed_base``, unit rows)."""

    z: torch.Tensor  # [n, d] (or [n, d + offset]): the base latent of every row
    latent_weight: float
    embed: Callable[[torch.Tensor], torch.Tensor] | None = None  # images -> unit embeddings
    embed_base: torch.Tensor | None = None  # [n, e]
    embed_weight: float = 0.0

    def penalty(self, zi: torch.Tensor, x: torch.Tensor, rows: torch.Tensor, d: int) -> torch.Tensor:
        """The per-row proximity term of latents ``zi`` rendering images ``x``, for rows ``rows``; the latent
        distance is over the first ``d`` numbers (a feature offset after them has its own term)."""
        out = self.latent_weight * (zi[:, :d] - self.z.index_select(0, rows)[:, :d]).pow(2).sum(1) / d
        if self.embed is not None and self.embed_weight > 0:
            e = self.embed(x.float())
            out = out + self.embed_weight * (1.0 - (e * self.embed_base.index_select(0, rows)).sum(1))
        return out


def optimise_stream(
    G: torch.nn.Module,
    C: torch.nn.Module,
    space: LabelSpace,
    targets: np.ndarray,
    seeds: np.ndarray,
    cfg: LCOConfig,
    device: torch.device,
    work: list[tuple[int, int, torch.Tensor | None]],
    out: Results,
    combo: np.ndarray,
    weak: np.ndarray,
    step_batch: int,
    score_chunk: int,
    bar=None,
    anchor: Anchor | None = None,
    gate: RealismGate | None = None,
) -> None:
    """Adam on z for every queued (row, attempt, start) with continuous batching.

    ``out.z``'s width says what is optimised: ``G.latent_dim`` numbers, or those followed by a feature
    offset (``lco.feature_res``) that starts at zero, has its own learning rate (``feature_lr``) and is
    pulled towards zero by ``feature_weight`` times its mean square; with ``feature_radius`` each update is
    projected back onto the ball of that root mean square (intermediate-layer optimisation's range constraint).

    Up to ``step_batch`` attempts run side by side, each with its own Adam moments and step count, so a
    sample's trajectory does not depend on its neighbours (up to floating-point reduction order). When
    a sample clears the accept rule it leaves the batch; when it fails after ``cfg.steps`` updates its
    next attempt (a fresh seed, started from the best of ``cfg.init_candidates`` draws) joins the end of
    the queue while attempts remain. Freed slots are refilled from the queue at once, which keeps the
    batch full instead of letting a few slow samples run a nearly empty batch to the step limit.
    With an ``anchor`` each row's update also pulls it towards its base (:class:`Anchor`); the accept
    rule and the patience rule read the target loss alone. With a realism ``gate`` (:mod:`.realism`) an
    attempt is met only when its image also lies within the gate's distance, and the gate's penalty joins
    the target loss, which the patience rule then reads.
    """
    d = int(G.latent_dim)
    width = out.z.shape[1]  # d, or d + a feature offset
    lr = torch.full((width,), float(cfg.lr), device=device)
    lr[d:] = float(cfg.feature_lr)
    used = space.used
    cols = np.flatnonzero(used)
    idx = torch.as_tensor(np.asarray(space.clf_index)[used], dtype=torch.long, device=device)
    thr = space.thresholds[used]
    margins = space.margins[:, used]
    cuts = torch.as_tensor(loss_cuts(space, cfg.objective), dtype=torch.float32, device=device)  # once, not per step
    tgt_all = torch.as_tensor(targets[:, used], dtype=torch.float32, device=device)
    k = cfg.init_candidates
    queue = deque(work)
    # per label combination (``combo``: each row's index): retries failed and samples met in this shard
    # (pool accepts included)
    fails = np.zeros(combo.max(initial=-1) + 1, dtype=np.int64)
    wins = np.bincount(combo[out.success], minlength=len(fails))
    # top-up: attempts that met targets left unused (a pool accept used one of retries + 1), per combination,
    # and the targets that failed every attempt they had, in the order they failed
    spare = wins * cfg.retries
    waiting: list[int] = []
    rounds = 0
    rows = np.empty(0, dtype=np.int64)
    att = np.empty(0, dtype=np.int64)
    t = np.empty(0, dtype=np.int64)
    best = np.empty(0, dtype=np.float64)  # lowest target loss of the attempt so far
    stale = np.empty(0, dtype=np.int64)  # steps since it last fell by 1 %
    z = torch.empty(0, width, device=device)
    m = torch.empty(0, width, device=device)
    v = torch.empty(0, width, device=device)

    def fill():
        nonlocal rows, att, t, best, stale, z, m, v
        new = []
        while queue and len(rows) + len(new) < step_batch:
            w = queue.popleft()
            c = combo[w[0]]
            # a target whose only attempt so far started weak always gets one strong (fresh) attempt
            had_strong = w[1] > 1 or not weak[w[0]]
            if w[1] > 0 and had_strong and cfg.give_up_after is not None and wins[c] == 0 and fails[c] >= cfg.give_up_after:
                out.gave_up[w[0]] = True  # its last attempt's z and probs stand
                if bar is not None:
                    bar.update(1)
                continue
            new.append(w)
        if not new:
            return
        r = np.array([w[0] for w in new], dtype=np.int64)
        a = np.array([w[1] for w in new], dtype=np.int64)
        zs = torch.zeros(len(new), width, device=device)  # a feature offset starts at zero
        fresh = [j for j, w in enumerate(new) if w[2] is None]
        for j, w in enumerate(new):
            if w[2] is not None:
                zs[j, : len(w[2])] = w[2].to(device=device, dtype=torch.float32)
        if fresh:
            fr = r[fresh]
            sd = [attempt_seed(int(seeds[i]), int(a[j])) for i, j in zip(fr, fresh)]
            out.seed[fr] = sd
            if k == 1:
                zs[fresh, :d] = initial_latents(sd, d).to(device)
            else:
                zs[fresh, :d] = best_of_candidates(G, C, initial_latents(sd, d, k).to(device), tgt_all[fr], idx, score_chunk, cfg.amp, cuts)
                out.g_evals[fr] += k  # choosing the start costs k generator evaluations
        out.attempts[r] = a + 1
        rows, att, t = np.concatenate([rows, r]), np.concatenate([att, a]), np.concatenate([t, np.zeros(len(r), np.int64)])
        best, stale = np.concatenate([best, np.full(len(r), np.inf)]), np.concatenate([stale, np.zeros(len(r), np.int64)])
        z = torch.cat([z, zs])
        m = torch.cat([m, torch.zeros_like(zs)])
        v = torch.cat([v, torch.zeros_like(zs)])

    while True:
        fill()
        if len(rows) == 0:
            again = []
            if rounds < cfg.topup_rounds:
                for i in waiting:  # one fresh attempt each, while the combination has met a target and has attempts left
                    c = combo[i]
                    if wins[c] > 0 and spare[c] > 0:
                        spare[c] -= 1
                        again.append(i)
            if not again:
                break
            rounds += 1
            taken = set(again)
            waiting = [i for i in waiting if i not in taken]
            queue.extend((i, int(out.attempts[i]), None) for i in again)
            log.info("lco top-up round %d: %d failed target(s) of %d combination(s) get a fresh attempt; %d stay failed",
                     rounds, len(again), len({int(combo[i]) for i in again}), len(waiting))
            continue
        zi = z.detach().requires_grad_(True)
        with autocast(device, cfg.amp):
            x = G(zi)
            lg, dist = (C(x), None) if gate is None else gate.judge(C, x)
            logits = lg.float().index_select(1, idx)
        p = torch.sigmoid(logits)
        tgt = tgt_all[torch.as_tensor(rows, device=device)]
        ok = accept_rule(p.detach(), tgt, thr, margins).cpu().numpy()
        if gate is not None:  # the labels' cuts and the gate, both
            real = gate.passes(dist.detach()).cpu().numpy()
            out.distance[rows] = dist.detach().cpu().numpy()
            out.unreal[rows] = ok & ~real
            ok = ok & real
        out.g_evals[rows] += 1
        out.probs[np.ix_(rows, cols)] = p.detach().cpu().numpy()
        out.steps[rows] = t
        out.success[rows] = ok
        target = target_loss(logits, tgt, cuts)
        if gate is not None:
            target = target + gate.penalty(dist)
        loss_now = target.detach().cpu().numpy().astype(np.float64)
        better = loss_now < best * 0.99
        stale = np.where(better, 0, stale + 1)
        best = np.minimum(best, loss_now)
        failed = ~ok & (t >= cfg.steps)
        if cfg.patience is not None:  # an attempt whose loss stopped falling gives up early
            failed |= ~ok & (stale >= cfg.patience)
        cont = ~ok & ~failed
        if cont.any():
            per_sample = target
            if cfg.prior_weight > 0:
                per_sample = per_sample + cfg.prior_weight * (zi[:, :d].pow(2).sum(1) / d - 1.0).pow(2)
            if width > d and cfg.feature_weight > 0:
                per_sample = per_sample + cfg.feature_weight * zi[:, d:].pow(2).mean(1)
            if anchor is not None:
                per_sample = per_sample + anchor.penalty(zi, x, torch.as_tensor(rows, device=device), d)
            keep_t = torch.as_tensor(cont, device=device)
            (grad,) = torch.autograd.grad(per_sample[keep_t].sum(), zi)
            out.grad_steps[rows] += 1  # the backward runs over the whole batch
            # Adam with per-sample moments and per-sample step counts
            g = grad[keep_t]
            mi = m[keep_t].mul_(_BETA1).add_(g, alpha=1 - _BETA1)
            vi = v[keep_t].mul_(_BETA2).addcmul_(g, g, value=1 - _BETA2)
            tt = torch.as_tensor(t[cont] + 1, dtype=torch.float32, device=device)[:, None]
            step = (mi / (1 - _BETA1**tt)) / ((vi / (1 - _BETA2**tt)).sqrt() + _EPS)
            zc = z[keep_t] - lr * step
            if width > d and cfg.feature_radius is not None:  # project the offset back inside its ball
                rms = zc[:, d:].pow(2).mean(1, keepdim=True).sqrt()
                zc[:, d:] *= (cfg.feature_radius / rms.clamp_min(1e-12)).clamp(max=1.0)
        done = ~cont
        # a first attempt from a weak pool start failing says little about its combination
        np.add.at(fails, combo[rows[failed & ((att > 0) | ~weak[rows])]], 1)
        np.add.at(wins, combo[rows[ok]], 1)
        np.add.at(spare, combo[rows[ok]], np.maximum(cfg.retries - att[ok], 0))
        if done.any():
            out.z[rows[done]] = z[torch.as_tensor(done, device=device)].detach().float().cpu().numpy()
            for i, a in zip(rows[failed], att[failed]):
                if a < cfg.retries:
                    queue.append((int(i), int(a) + 1, None))
                elif cfg.topup_rounds:
                    waiting.append(int(i))
                elif bar is not None:
                    bar.update(1)
            if bar is not None and ok.any():
                bar.update(int(ok.sum()))
        if cont.any():
            rows, att, t = rows[cont], att[cont], t[cont] + 1
            best, stale = best[cont], stale[cont]
            z, m, v = zc.detach(), mi, vi
        else:
            rows, att, t = rows[:0], att[:0], t[:0]
            best, stale = best[:0], stale[:0]
            z, m, v = z[:0].detach(), m[:0], v[:0]
    if bar is not None and waiting:
        bar.update(len(waiting))
