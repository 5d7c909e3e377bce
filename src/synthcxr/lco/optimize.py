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
* With ``topup_rounds`` R > 0, targets that failed every attempt get up to R further rounds after
  the retries, one fresh attempt each per round, while their label combination has met at least one
  target in the shard (a measured yield above zero) and its met targets left attempts unused: a target
  met on attempt a leaves ``retries - a`` of its own, pooled per combination. A combination's budget stays
  what the plan gave it (``retries + 1`` attempts per target) but goes where it pays, so a combination the
  GAN reaches one time in three is not cut short while its easy targets hand back attempts they never used.
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

This module runs one shard's targets through the pieces, each a module of its own: ``config`` (the
checked ``lco`` section), ``accept`` (the acceptance rule and why a target was not met), ``starts``
(seeded draws, pool blocks, best of k), ``pool`` (the scored prior pool and its rarest-first matching)
and ``stream`` (the batched Adam optimiser with retries and ``give_up_after``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..utils.runtime import progress
from .accept import LabelSpace, resolve_label_space
from .config import LCOConfig
from .memory import plan_chunks
from .pool import draw_pool
from .realism import RealismGate
from .seeds import _TAG_POOL, derive_seed
from .starts import latent_length, module_device
from .stream import Results, optimise_stream

log = logging.getLogger("synthcxr")


def optimise_latents(
    G: torch.nn.Module,
    C: torch.nn.Module,
    thresholds: Mapping[str, float] | LabelSpace,
    targets: np.ndarray | pd.DataFrame,
    seeds: Sequence[int],
    cfg: LCOConfig,
    classifier_labels: Sequence[str] | None = None,
    pool_seed: int | None = None,
    gate: RealismGate | None = None,
) -> pd.DataFrame:
    """Optimise one latent per target row; returns one row per target, in order.

    ``thresholds`` is a ``{label: threshold}`` mapping (accepted at ``cfg.margin`` logits on both sides
    of every label) or a :class:`LabelSpace` carrying its own margins (:mod:`synthcxr.lco.margins`).
    ``targets`` is ``[N, L]`` 0/1 over ``cfg.labels`` (or a DataFrame holding those columns); ``seeds``
    the per-sample seeds from the plan; ``pool_seed`` the seed of the shard's prior pool in pool mode
    (default: derived from the first sample seed under the plan's pool tag). ``classifier_labels`` defaults to ``C.label_names``.
    With a realism ``gate`` (:mod:`.realism`) a target is met only by an image within the gate's distance too.
    Columns of the result: seed (of the last attempt), attempts, z (float32 array per row: the latent, followed
    by its feature offset with ``cfg.feature_res``),
    target_<label>, prob_<label> (NaN for a label the classifier lacks), steps, g_evals (float: forward
    evaluations incl. the sample's share of the pool), grad_steps, success, reason ('' on success).
    ``result.attrs["pool"]`` holds the :class:`PoolStats` in pool mode and ``attrs["chunks"]`` the
    memory-derived chunk sizes.
    """
    lc = cfg
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
        space = resolve_label_space(labels, names, thresholds).with_margins(lc.margin)
    if not hasattr(G, "latent_dim"):
        raise ValueError("optimise_latents: the generator has no .latent_dim attribute")
    G.eval()
    C.eval()
    device = module_device(G, lc.device)
    chunks = plan_chunks(G, C, device, lc.batch_size, lc.memory_mb, lc.amp)
    n, d = len(targets), int(G.latent_dim)
    used = space.used
    res = Results.empty(seeds, latent_length(G, lc.feature_res), len(labels))
    bar = progress(total=n, desc="lco", unit="sample")
    stats = None
    weak = np.zeros(n, dtype=bool)  # first attempt starts from a pool member worse than a fresh best-of-k start
    combos, inverse = np.unique(targets[:, used] >= 0.5, axis=0, return_inverse=True)  # each row's label combination
    inverse = np.asarray(inverse).reshape(-1)
    if lc.mode == "pool" and n:
        pseed = int(pool_seed) if pool_seed is not None else derive_seed(int(seeds[0]), _TAG_POOL)
        demand = np.bincount(inverse, minlength=len(combos))
        pool, stats = draw_pool(G, C, space, combos.astype(np.float32), demand, pseed, lc, chunks.score_chunk, gate)
        pool_z, pool_p, acc, st = pool.z, pool.probs, pool.accepted, pool.starts
        res.g_evals += stats.size / n
        work = []
        for u in range(len(combos)):
            rows = np.flatnonzero(inverse == u)
            members = np.concatenate([acc[u], st[u]])
            for j, (i, mbr) in enumerate(zip(rows, members)):
                if j < len(acc[u]):
                    res.z[i, :d] = pool_z[mbr].numpy()  # accepted as drawn: no feature offset
                    res.probs[i, np.flatnonzero(used)] = pool_p[mbr]
                    res.success[i] = True
                    res.attempts[i] = 1
                    if pool.distance is not None:
                        res.distance[i] = pool.distance[mbr]
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
    optimise_stream(G, C, space, targets, seeds, lc, device, work, res, inverse, weak, chunks.step_batch, chunks.score_chunk, bar, gate=gate)
    bar.close()
    log.info("lco: %d targets, success %.3f", n, res.success.mean() if n else float("nan"))
    z_out, probs_out, steps_out, evals_out, grads_out = res.z, res.probs, res.steps, res.g_evals, res.grad_steps
    attempts_out, seed_out, success_out = res.attempts, res.seed, res.success
    reasons = [res.reason(i, targets[i], space, lc.steps, gate) for i in range(n)]
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
    out.attrs["unreal"] = int((res.unreal & ~success_out).sum())
    out.attrs["chunks"] = chunks
    return out
