"""Latent class optimisation: move GAN latents until the classifier sees the requested labels.

For each target label vector ``y`` a latent ``z`` starts as a seeded draw from N(0, I) and is moved by
Adam on

    mean_l BCE(sigmoid(C(G(z)))_l, y_l)  +  prior_weight * (|z|^2 / d - 1)^2

The second term is a soft typical-set penalty: a d-dimensional standard normal concentrates on the
shell |z| ~ sqrt(d), and latents far from it render images the generator never learned, which fool the
classifier without looking like X-rays. It is a penalty only (no re-projection onto the shell), so the
optimiser may trade a little prior mass for the target but is pulled back when it drifts.

Why the details are the way they are:

* Each sample's start is drawn from its own ``torch.Generator`` seeded by the sample's seed, and Adam's
  moments are kept per sample, so a sample's trajectory does not depend on which other samples share its
  batch (up to floating-point reduction order inside the networks).
* With ``init_candidates`` k > 1 an attempt starts from the best of k prior draws (lowest loss against
  the target, :func:`best_of_candidates`) instead of the first. A start that already shows part of the
  target needs smaller moves, and small moves in latent space are what keep the image one that a
  second classifier also reads as the target. The k evaluations are counted in ``g_evals``.
* A sample stops (is frozen and no longer forwarded) once every requested finding's probability is at
  least ``margin`` logits above its threshold and every absent one ``margin`` logits below (with margin 0:
  as soon as :func:`success_rule` holds). Stopping exactly on the threshold leaves samples on the
  steering classifier's decision boundary, where an independent classifier disagrees about half the
  time; pushing much further only drifts towards adversarial images. Success is always judged by
  :func:`success_rule` on the thresholds themselves.
* Samples that fail after ``steps`` updates are retried from a fresh seed derived from the sample seed and
  the attempt number, up to ``retries`` times; a sample that never succeeds is kept with
  ``success=False`` and a reason, and the archive stage decides what to do with it. With
  ``give_up_after`` k, a retry is skipped once k *strong* attempts of the sample's label combination
  have failed in the shard without a single success: a combination the generator and classifier cannot
  meet together would otherwise spend every retry of every one of its samples to the step limit. An
  attempt is strong when its start is as good as the best of ``init_candidates`` fresh draws: every
  retry and every per_sample attempt, and a pool start within the pool's 1/(k+1) loss quantile for its
  combination (:func:`match_pool`). A combination wanted many times starts most of its targets from the
  pool's middling members; their failures do not count, and each such target is owed one fresh retry.
* ``mode: pool`` (the default) amortises the start: the job draws one pool of prior latents for its
  whole shard, in blocks of ``pool_block`` from the shard's seed, and scores each latent once. Targets
  are matched to pool members rarest first (the combination with the fewest members clearing it per
  requested sample goes first); a member that already clears every threshold by ``margin`` is accepted
  with no optimisation step, and the remaining targets start from their lowest-loss unused member.
  The pool grows block by block until every target has a clearing member, a block adds none, or it
  holds ``pool_factor`` times the shard's rows. Retries (attempt 2 on) are per sample, as in
  ``mode: per_sample``, where every attempt starts from the best of ``init_candidates`` fresh draws.
* Success is the stop rule itself: every threshold cleared by ``margin`` logits (:func:`accept_rule`),
  the same rule rejection sampling is judged by, so a sample that ends between the threshold and the
  margin is retried rather than released on the classifier's decision boundary.
* ``g_evals`` counts generator forward evaluations per sample over all attempts (a step on a batch of b
  costs b), with each sample's equal share of its shard's pool, and ``grad_steps`` the backward passes
  (an LCO update costs a forward plus a backward; benchmarks cost the backward by a measured ratio).
* Scoring chunks and step batches are sized from the device's free memory (or ``memory_mb``) by
  :mod:`synthcxr.lco.memory`, and ``amp: bf16 | fp16`` runs both networks under autocast; the latents,
  their Adam state and every decision stay in float32.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.special import expit, logit

from ..labels import NO_FINDING, check_labels
from ..utils.runtime import progress, resolve_device
from .memory import AMP_MODES, autocast, plan_chunks
from .plan import _TAG_POOL, attempt_seed, derive_seed

log = logging.getLogger("synthcxr")

_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8

MODES = ("pool", "per_sample")


@dataclass
class LCOConfig:
    """The ``lco`` config section's optimisation keys plus the global ``labels`` and ``device``."""

    labels: list[str]
    steps: int = 200
    lr: float = 0.05
    prior_weight: float = 0.05
    batch_size: int = 64
    retries: int = 3
    margin: float = 0.0
    init_candidates: int = 1
    mode: str = "pool"
    pool_factor: int = 4
    pool_block: int = 32
    memory_mb: float | None = None
    amp: str = "none"
    patience: int | None = 20
    give_up_after: int | None = 1
    device: str = "auto"

    @classmethod
    def from_section(cls, cfg: Mapping[str, Any] | "LCOConfig") -> "LCOConfig":
        if isinstance(cfg, LCOConfig):
            return cfg
        if "labels" not in cfg:
            raise ValueError("lco config: missing 'labels' (pass synthcxr.config.section(config, 'lco'))")
        out = cls(
            labels=check_labels(cfg["labels"], where="labels"),
            steps=int(cfg.get("steps", cls.steps)),
            lr=float(cfg.get("lr", cls.lr)),
            prior_weight=float(cfg.get("prior_weight", cls.prior_weight)),
            batch_size=int(cfg.get("batch_size", cls.batch_size)),
            retries=int(cfg.get("retries", cls.retries)),
            margin=float(cfg.get("margin", cls.margin)),
            init_candidates=int(cfg.get("init_candidates", cls.init_candidates)),
            mode=str(cfg.get("mode", cls.mode)),
            pool_factor=int(cfg.get("pool_factor", cls.pool_factor)),
            pool_block=int(cfg.get("pool_block", cls.pool_block)),
            memory_mb=None if cfg.get("memory_mb") is None else float(cfg["memory_mb"]),
            amp=str(cfg.get("amp", cls.amp)),
            patience=None if cfg.get("patience", cls.patience) is None else int(cfg.get("patience", cls.patience)),
            give_up_after=None if cfg.get("give_up_after", cls.give_up_after) is None else int(cfg.get("give_up_after", cls.give_up_after)),
            device=str(cfg.get("device", cls.device)),
        )
        if out.steps < 0 or out.batch_size < 1 or out.retries < 0 or out.lr <= 0 or out.prior_weight < 0 or out.margin < 0 or out.init_candidates < 1:
            raise ValueError(f"lco config: need steps >= 0, batch_size >= 1, retries >= 0, lr > 0, prior_weight >= 0, margin >= 0, init_candidates >= 1; got {out}")
        if out.mode not in MODES:
            raise ValueError(f"lco.mode: {out.mode!r} is not one of {', '.join(MODES)}")
        if out.pool_factor < 1 or out.pool_block < 1 or (out.memory_mb is not None and out.memory_mb <= 0):
            raise ValueError(f"lco config: need pool_factor >= 1, pool_block >= 1 and memory_mb > 0 (or null); got {out}")
        if out.patience is not None and out.patience < 1:
            raise ValueError(f"lco.patience: need a positive step count or null, got {out.patience}")
        if out.give_up_after is not None and out.give_up_after < 1:
            raise ValueError(f"lco.give_up_after: need a positive attempt count or null, got {out.give_up_after}")
        if out.amp not in AMP_MODES:
            raise ValueError(f"lco.amp: {out.amp!r} is not one of {', '.join(AMP_MODES)}")
        return out


@dataclass(frozen=True)
class LabelSpace:
    """How the configured labels map onto the classifier's outputs and thresholds.

    ``clf_index[j]`` is the classifier output of label ``j`` (-1 when the classifier lacks it, which is
    allowed only for No_Finding: "no finding" is then implied by every finding being absent).
    ``thresholds[j]`` is NaN for such unused labels, which :func:`success_rule` ignores.
    """

    labels: tuple[str, ...]
    clf_index: tuple[int, ...]
    thresholds: np.ndarray = field(repr=False)

    @property
    def used(self) -> np.ndarray:
        return np.array([i >= 0 for i in self.clf_index])


def resolve_label_space(
    labels: Sequence[str], classifier_labels: Sequence[str], thresholds: Mapping[str, float], where: str = "thresholds.json"
) -> LabelSpace:
    """Check that the classifier and its thresholds cover the configured labels; build the mapping."""
    clf = [str(n) for n in classifier_labels]
    index, thr = [], []
    for name in labels:
        if name not in clf:
            if name == NO_FINDING:
                index.append(-1)
                thr.append(np.nan)
                continue
            raise ValueError(f"classifier has no output for label {name!r} (its labels: {clf}); retrain it with the configured labels")
        if name not in thresholds:
            raise ValueError(f"{where}: no threshold for label {name!r}; rerun the classifier stage to recompute thresholds")
        t = float(thresholds[name])
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"{where}: threshold of {name!r} is {t}, not a probability in [0, 1]")
        index.append(clf.index(name))
        thr.append(t)
    return LabelSpace(tuple(labels), tuple(index), np.array(thr, dtype=np.float64))


def success_rule(probs, target, thresholds):
    """Per-sample bool: each target-1 label has prob >= threshold and each target-0 label prob <= threshold.

    ``probs`` and ``target`` are ``[N, L]``, ``thresholds`` ``[L]``; labels whose threshold is NaN are
    ignored. Equality counts as met on both sides. Thresholds are cast to the dtype of ``probs`` first,
    so a float32 probability equal to the float32 rounding of a threshold passes. Accepts numpy arrays or
    torch tensors and returns the same kind.
    """
    if isinstance(probs, torch.Tensor):
        thr = torch.as_tensor(np.asarray(thresholds, dtype=np.float64), device=probs.device).to(probs.dtype)
        want = torch.as_tensor(np.asarray(target) if not isinstance(target, torch.Tensor) else target, device=probs.device) >= 0.5
        ok = torch.where(want, probs >= thr, probs <= thr) | torch.isnan(thr)
        return ok.all(dim=-1)
    p = np.asarray(probs)
    if not np.issubdtype(p.dtype, np.floating):
        p = p.astype(np.float64)
    thr = np.asarray(thresholds, dtype=np.float64).astype(p.dtype)
    want = np.asarray(target) >= 0.5
    with np.errstate(invalid="ignore"):
        ok = np.where(want, p >= thr, p <= thr) | np.isnan(thr)
    return ok.all(axis=-1)


def margin_thresholds(thresholds, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """``(lower, upper)`` probability cuts ``margin`` logits below and above each threshold.

    LCO keeps optimising a sample until each requested finding is above ``upper`` and each absent one
    below ``lower``, so that it does not stop on the classifier's decision boundary, where a second
    classifier is a coin flip. ``margin`` 0 returns the thresholds themselves; NaN stays NaN.
    """
    thr = np.asarray(thresholds, dtype=np.float64)
    if margin == 0:
        return thr.copy(), thr.copy()
    lt = logit(np.clip(thr, 1e-7, 1 - 1e-7))
    return expit(lt - margin), expit(lt + margin)


def accept_rule(probs, target, thresholds, margin: float = 0.0):
    """Per-sample bool: every threshold cleared by ``margin`` logits on the side the target asks for.

    The rule LCO stops and succeeds on and rejection sampling accepts on; ``margin`` 0 is
    :func:`success_rule`. Same array conventions as :func:`success_rule`.
    """
    if margin == 0:
        return success_rule(probs, target, thresholds)
    lo, hi = margin_thresholds(thresholds, margin)
    tgt = target.detach().cpu().numpy() if isinstance(target, torch.Tensor) else np.asarray(target)
    # per entry: the upper cut where the label is wanted, the lower one where it is not
    return success_rule(probs, target, np.where(tgt >= 0.5, hi, lo))


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
    device = module_device(G, "cpu")
    out = torch.empty(len(z), len(idx), device=device)
    for s in range(0, len(z), max(1, int(chunk))):
        with autocast(device, amp):
            logits = C(G(z[s : s + chunk].to(device)))
        out[s : s + chunk] = logits.float().index_select(1, idx)
    return out


@torch.no_grad()
def best_of_candidates(
    G: torch.nn.Module, C: torch.nn.Module, cand: torch.Tensor, tgt: torch.Tensor, idx: torch.Tensor, chunk: int = 256, amp: str = "none"
) -> torch.Tensor:
    """Per sample, the candidate latent whose image is closest to the target (lowest mean BCE).

    ``cand`` is ``[b, k, d]``, ``tgt`` ``[b, L_used]``; returns ``[b, d]``. Starting the optimisation
    from a prior draw that already shows part of the target means shorter, smaller moves in latent
    space, which drift less towards images only the steering classifier believes. ``chunk`` is the most
    images one forward holds (size it with :func:`synthcxr.lco.memory.plan_chunks` at high resolution).
    """
    b, k, d = cand.shape
    logits = score_latents(G, C, cand.reshape(b * k, d), idx, chunk, amp)
    rep = tgt.to(logits.device).repeat_interleave(k, dim=0)
    losses = F.binary_cross_entropy_with_logits(logits, rep, reduction="none").mean(1)
    best = losses.view(b, k).argmin(1).to(cand.device)
    return cand[torch.arange(b, device=cand.device), best]


def module_device(module: torch.nn.Module, fallback: str) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return resolve_device(fallback)


def _pool_losses(logits: np.ndarray, combos: np.ndarray) -> np.ndarray:
    """Mean BCE ``[U, P]`` of each pool member's logits ``[P, Lu]`` against each combination ``[U, Lu]``."""
    shape = (len(combos), len(logits), logits.shape[1])
    lg = torch.as_tensor(logits, dtype=torch.float64)[None].expand(shape)
    y = torch.as_tensor(combos, dtype=torch.float64)[:, None].expand(shape)
    return F.binary_cross_entropy_with_logits(lg, y, reduction="none").mean(-1).numpy()


def match_pool(
    probs: np.ndarray,
    logits: np.ndarray,
    combos: np.ndarray,
    demand: np.ndarray,
    thresholds: np.ndarray,
    margin: float,
    fresh_k: int = 1,
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Assign pool members to targets, rarest combination first; each member is used at most once.

    ``probs``/``logits`` are the pool's ``[P, Lu]``, ``combos`` the distinct targets ``[U, Lu]`` wanted
    ``demand[u]`` times. Returns, per combination, the members that clear it by ``margin`` (accepted
    as they are) and the lowest-loss members that will start an optimisation for the rest. Rarity is
    clearing members per requested sample (ties: the combination listed first), so a rare combination is
    not left with no clearing member because a common one took it.

    The third list marks, per start, whether it is *strong*: its loss is no worse than the pool's
    1/(k+1) quantile for that combination (k = ``fresh_k``), about what the best of k fresh prior draws
    reaches. A combination wanted many times starts most of its targets from the pool's middling
    members, and their failures say little about whether it can be met at all.
    """
    P, U = len(probs), len(combos)
    clear = np.stack([accept_rule(probs, np.broadcast_to(c, probs.shape), thresholds, margin) for c in combos]) if U else np.zeros((0, P), bool)
    loss = _pool_losses(logits, combos) if P else np.zeros((U, 0))
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
class _Results:
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


def _optimise_stream(
    G: torch.nn.Module,
    C: torch.nn.Module,
    space: LabelSpace,
    targets: np.ndarray,
    seeds: np.ndarray,
    cfg: LCOConfig,
    device: torch.device,
    work: list[tuple[int, int, torch.Tensor | None]],
    out: _Results,
    combo: np.ndarray,
    weak: np.ndarray,
    step_batch: int,
    score_chunk: int,
    bar=None,
) -> None:
    """Adam on z for every queued (row, attempt, start) with continuous batching.

    Up to ``step_batch`` attempts run side by side, each with its own Adam moments and step count, so a
    sample's trajectory does not depend on its neighbours (up to floating-point reduction order). When
    a sample clears the accept rule it leaves the batch; when it fails after ``cfg.steps`` updates its
    next attempt (a fresh seed, started from the best of ``cfg.init_candidates`` draws) joins the end of
    the queue while attempts remain. Freed slots are refilled from the queue at once, which keeps the
    batch full instead of letting a few slow samples run a nearly empty batch to the step limit.
    """
    d = int(G.latent_dim)
    used = space.used
    cols = np.flatnonzero(used)
    idx = torch.as_tensor(np.asarray(space.clf_index)[used], dtype=torch.long, device=device)
    thr = space.thresholds[used]
    tgt_all = torch.as_tensor(targets[:, used], dtype=torch.float32, device=device)
    k = cfg.init_candidates
    queue = deque(work)
    # per label combination (``combo``: each row's index): retries failed and samples met in this shard
    # (pool accepts included)
    fails = np.zeros(combo.max(initial=-1) + 1, dtype=np.int64)
    wins = np.bincount(combo[out.success], minlength=len(fails))
    rows = np.empty(0, dtype=np.int64)
    att = np.empty(0, dtype=np.int64)
    t = np.empty(0, dtype=np.int64)
    best = np.empty(0, dtype=np.float64)  # lowest target loss of the attempt so far
    stale = np.empty(0, dtype=np.int64)  # steps since it last fell by 1 %
    z = torch.empty(0, d, device=device)
    m = torch.empty(0, d, device=device)
    v = torch.empty(0, d, device=device)

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
        zs = torch.empty(len(new), d, device=device)
        fresh = [j for j, w in enumerate(new) if w[2] is None]
        for j, w in enumerate(new):
            if w[2] is not None:
                zs[j] = w[2].to(device=device, dtype=torch.float32)
        if fresh:
            fr = r[fresh]
            sd = [attempt_seed(int(seeds[i]), int(a[j])) for i, j in zip(fr, fresh)]
            out.seed[fr] = sd
            if k == 1:
                zs[fresh] = initial_latents(sd, d).to(device)
            else:
                zs[fresh] = best_of_candidates(G, C, initial_latents(sd, d, k).to(device), tgt_all[fr], idx, score_chunk, cfg.amp)
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
            break
        zi = z.detach().requires_grad_(True)
        with autocast(device, cfg.amp):
            logits = C(G(zi)).float().index_select(1, idx)
        p = torch.sigmoid(logits)
        tgt = tgt_all[torch.as_tensor(rows, device=device)]
        ok = accept_rule(p.detach(), tgt, thr, cfg.margin).cpu().numpy()
        out.g_evals[rows] += 1
        out.probs[np.ix_(rows, cols)] = p.detach().cpu().numpy()
        out.steps[rows] = t
        out.success[rows] = ok
        bce = F.binary_cross_entropy_with_logits(logits, tgt, reduction="none").mean(1)
        loss_now = bce.detach().cpu().numpy().astype(np.float64)
        better = loss_now < best * 0.99
        stale = np.where(better, 0, stale + 1)
        best = np.minimum(best, loss_now)
        failed = ~ok & (t >= cfg.steps)
        if cfg.patience is not None:  # an attempt whose loss stopped falling gives up early
            failed |= ~ok & (stale >= cfg.patience)
        cont = ~ok & ~failed
        if cont.any():
            per_sample = bce
            if cfg.prior_weight > 0:
                per_sample = per_sample + cfg.prior_weight * (zi.pow(2).sum(1) / d - 1.0).pow(2)
            keep_t = torch.as_tensor(cont, device=device)
            (grad,) = torch.autograd.grad(per_sample[keep_t].sum(), zi)
            out.grad_steps[rows] += 1  # the backward runs over the whole batch
            # Adam with per-sample moments and per-sample step counts
            g = grad[keep_t]
            mi = m[keep_t].mul_(_BETA1).add_(g, alpha=1 - _BETA1)
            vi = v[keep_t].mul_(_BETA2).addcmul_(g, g, value=1 - _BETA2)
            tt = torch.as_tensor(t[cont] + 1, dtype=torch.float32, device=device)[:, None]
            step = (mi / (1 - _BETA1**tt)) / ((vi / (1 - _BETA2**tt)).sqrt() + _EPS)
            zc = z[keep_t] - cfg.lr * step
        done = ~cont
        # a first attempt from a weak pool start failing says little about its combination
        np.add.at(fails, combo[rows[failed & ((att > 0) | ~weak[rows])]], 1)
        np.add.at(wins, combo[rows[ok]], 1)
        if done.any():
            out.z[rows[done]] = z[torch.as_tensor(done, device=device)].detach().float().cpu().numpy()
            for i, a in zip(rows[failed], att[failed]):
                if a < cfg.retries:
                    queue.append((int(i), int(a) + 1, None))
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


def _reason(
    probs: np.ndarray, target: np.ndarray, space: LabelSpace, attempts: int, steps: int, margin: float, gave_up: bool = False
) -> str:
    lo, hi = margin_thresholds(space.thresholds, margin)
    unmet = []
    for j, name in enumerate(space.labels):
        if np.isnan(space.thresholds[j]):
            continue
        if target[j] >= 0.5 and not probs[j] >= np.float32(hi[j]):
            unmet.append(f"{name} p={probs[j]:.4f}<{hi[j]:.4f}")
        elif target[j] < 0.5 and not probs[j] <= np.float32(lo[j]):
            unmet.append(f"{name} p={probs[j]:.4f}>{lo[j]:.4f}")
    past = f" by {margin:g} logits" if margin else ""
    skipped = "; further retries skipped: its label combination failed every strong attempt in the shard" if gave_up else ""
    return f"target not met{past} after {attempts} attempt(s) of up to {steps} steps; unmet: {', '.join(unmet)}{skipped}"


@dataclass
class PoolDraw:
    """A scored pool and its final matching: members accepted as drawn and starts, per combination."""

    z: torch.Tensor  # [P, d] float32 on CPU
    probs: np.ndarray  # [P, Lu] float32
    accepted: list[np.ndarray]
    starts: list[np.ndarray]
    strong: list[np.ndarray]  # per start: as good as a best-of-init_candidates start


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
) -> tuple[PoolDraw, PoolStats]:
    """Draw and score the shard's prior pool block by block, matching it to the targets after each block.

    ``combos`` are the distinct targets ``[U, Lu]`` over the used labels, wanted ``demand[u]`` times.
    Blocks of ``cfg.pool_block`` (at most the number of targets) are drawn until the pool holds at least
    one latent per target and every target has a member clearing it by the margin or the last block
    added no new clearing match, or until it holds ``cfg.pool_factor`` latents per target.
    """
    used = space.used
    idx = torch.as_tensor(np.asarray(space.clf_index)[used], dtype=torch.long, device=module_device(G, cfg.device))
    thr = space.thresholds[used]
    n = int(demand.sum())
    cap = cfg.pool_factor * n
    zs, logit_blocks = [], []
    d = int(G.latent_dim)
    matched = 0
    stats = PoolStats()
    block = min(cfg.pool_block, n)  # a shard smaller than a block never pays for a whole one
    while stats.size < cap:
        size = min(block, cap - stats.size)
        zb = pool_block_latents(seed, stats.blocks, size, d)
        logit_blocks.append(score_latents(G, C, zb, idx, score_chunk, cfg.amp).cpu().numpy())
        zs.append(zb)
        stats.size += size
        stats.blocks += 1
        logits = np.concatenate(logit_blocks)
        probs = expit(logits.astype(np.float64)).astype(np.float32)
        acc, st, sg = match_pool(probs, logits, combos, demand, thr, cfg.margin, fresh_k=cfg.init_candidates)
        now = sum(len(a) for a in acc)
        # at least one latent per target, so every target has a start of its own
        if stats.size >= n and (now == n or now == matched):
            break
        matched = now
    return PoolDraw(torch.cat(zs), probs, acc, st, sg), stats


def optimise_latents(
    G: torch.nn.Module,
    C: torch.nn.Module,
    thresholds: Mapping[str, float] | LabelSpace,
    targets: np.ndarray | pd.DataFrame,
    seeds: Sequence[int],
    cfg: Mapping[str, Any] | LCOConfig,
    classifier_labels: Sequence[str] | None = None,
    pool_seed: int | None = None,
) -> pd.DataFrame:
    """Optimise one latent per target row; returns one row per target, in order.

    ``targets`` is ``[N, L]`` 0/1 over ``cfg.labels`` (or a DataFrame holding those columns); ``seeds``
    the per-sample seeds from the plan; ``pool_seed`` the seed of the shard's prior pool in pool mode
    (default: derived from the first sample seed under the plan's pool tag). ``classifier_labels`` defaults to ``C.label_names``.
    Columns of the result: seed (of the last attempt), attempts, z (float32 array per row),
    target_<label>, prob_<label> (NaN for a label the classifier lacks), steps, g_evals (float: forward
    evaluations incl. the sample's share of the pool), grad_steps, success, reason ('' on success).
    ``result.attrs["pool"]`` holds the :class:`PoolStats` in pool mode and ``attrs["chunks"]`` the
    memory-derived chunk sizes.
    """
    lc = LCOConfig.from_section(cfg)
    labels = lc.labels
    if isinstance(targets, pd.DataFrame):
        missing = [n for n in labels if n not in targets.columns]
        if missing:
            raise ValueError(f"targets table lacks label column(s) {missing}")
        targets = targets[labels].to_numpy()
    targets = np.asarray(targets, dtype=np.float32)
    seeds = np.asarray(seeds, dtype=np.int64)
    if targets.ndim != 2 or targets.shape[1] != len(labels) or len(seeds) != len(targets):
        raise ValueError(f"optimise_latents: targets must be [N, {len(labels)}] and seeds [N]; got {targets.shape} and {seeds.shape}")
    if isinstance(thresholds, LabelSpace):
        space = thresholds
    else:
        names = classifier_labels if classifier_labels is not None else getattr(C, "label_names", None)
        if names is None:
            raise ValueError("optimise_latents: the classifier has no .label_names; pass classifier_labels")
        space = resolve_label_space(labels, names, thresholds)
    if not hasattr(G, "latent_dim"):
        raise ValueError("optimise_latents: the generator has no .latent_dim attribute")
    G.eval()
    C.eval()
    device = module_device(G, lc.device)
    chunks = plan_chunks(G, C, device, lc.batch_size, lc.memory_mb, lc.amp)
    n, d = len(targets), int(G.latent_dim)
    used = space.used
    res = _Results(
        z=np.zeros((n, d), dtype=np.float32),
        probs=np.full((n, len(labels)), np.nan, dtype=np.float32),
        steps=np.zeros(n, dtype=np.int64),
        g_evals=np.zeros(n, dtype=np.float64),
        grad_steps=np.zeros(n, dtype=np.int64),
        attempts=np.zeros(n, dtype=np.int64),
        seed=seeds.copy(),
        success=np.zeros(n, dtype=bool),
        gave_up=np.zeros(n, dtype=bool),
    )
    bar = progress(total=n, desc="lco", unit="sample")
    stats = None
    weak = np.zeros(n, dtype=bool)  # first attempt starts from a pool member worse than a fresh best-of-k start
    combos, inverse = np.unique(targets[:, used] >= 0.5, axis=0, return_inverse=True)  # each row's label combination
    inverse = np.asarray(inverse).reshape(-1)
    if lc.mode == "pool" and n:
        pseed = int(pool_seed) if pool_seed is not None else derive_seed(int(seeds[0]), _TAG_POOL)
        demand = np.bincount(inverse, minlength=len(combos))
        pool, stats = draw_pool(G, C, space, combos.astype(np.float32), demand, pseed, lc, chunks.score_chunk)
        pool_z, pool_p, acc, st = pool.z, pool.probs, pool.accepted, pool.starts
        res.g_evals += stats.size / n
        work = []
        for u in range(len(combos)):
            rows = np.flatnonzero(inverse == u)
            members = np.concatenate([acc[u], st[u]])
            for j, (i, mbr) in enumerate(zip(rows, members)):
                if j < len(acc[u]):
                    res.z[i] = pool_z[mbr].numpy()
                    res.probs[i, np.flatnonzero(used)] = pool_p[mbr]
                    res.success[i] = True
                    res.attempts[i] = 1
                else:
                    work.append((int(i), 0, pool_z[mbr]))
                    weak[i] = not pool.strong[u][j - len(acc[u])]
        work.sort(key=lambda w: w[0])
        stats.accepted = int(res.success.sum())
        stats.started = len(work)
        stats.strong = stats.started - int(weak.sum())
        assert stats.accepted + stats.started == n, "the pool holds at least one latent per target"
        bar.update(stats.accepted)
        log.info("lco pool: %d latents in %d block(s) scored; %d of %d targets accepted as drawn, %d start from their best match "
                 "(%d of them as good as a best-of-%d start)", stats.size, stats.blocks, stats.accepted, n, stats.started, stats.strong, lc.init_candidates)
    else:
        work = [(i, 0, None) for i in range(n)]
    _optimise_stream(G, C, space, targets, seeds, lc, device, work, res, inverse, weak, chunks.step_batch, chunks.score_chunk, bar)
    bar.close()
    log.info("lco: %d targets, success %.3f", n, res.success.mean() if n else float("nan"))
    z_out, probs_out, steps_out, evals_out, grads_out = res.z, res.probs, res.steps, res.g_evals, res.grad_steps
    attempts_out, seed_out, success_out = res.attempts, res.seed, res.success
    reasons = [
        "" if success_out[i] else _reason(probs_out[i], targets[i], space, int(attempts_out[i]), lc.steps, lc.margin, bool(res.gave_up[i]))
        for i in range(n)
    ]
    out = pd.DataFrame({"seed": seed_out, "attempts": attempts_out, "z": list(z_out)})
    for j, name in enumerate(labels):
        out[f"target_{name}"] = targets[:, j].astype(np.int8)
    for j, name in enumerate(labels):
        out[f"prob_{name}"] = probs_out[:, j]
    out["steps"] = steps_out
    out["g_evals"] = evals_out
    out["grad_steps"] = grads_out
    out["success"] = success_out
    out["reason"] = reasons
    out.attrs["pool"] = stats
    out.attrs["chunks"] = chunks
    return out

