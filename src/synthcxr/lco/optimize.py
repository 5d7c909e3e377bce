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
  ``success=False`` and a reason, and the archive stage decides what to do with it.
* ``g_evals`` counts generator forward evaluations per sample over all attempts (a step on a batch of b
  costs b), which is the unit the rejection-sampling baseline is compared in.
"""

from __future__ import annotations

import logging
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
from .plan import attempt_seed

log = logging.getLogger("synthcxr")

_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8


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
            device=str(cfg.get("device", cls.device)),
        )
        if out.steps < 0 or out.batch_size < 1 or out.retries < 0 or out.lr <= 0 or out.prior_weight < 0 or out.margin < 0 or out.init_candidates < 1:
            raise ValueError(f"lco config: need steps >= 0, batch_size >= 1, retries >= 0, lr > 0, prior_weight >= 0, margin >= 0, init_candidates >= 1; got {out}")
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


def initial_latents(seeds: Sequence[int], latent_dim: int, candidates: int = 1) -> torch.Tensor:
    """``[n, latent_dim]`` (or ``[n, candidates, latent_dim]`` when candidates > 1) float32 on CPU.

    Sample i's draws come from one generator seeded with seeds[i], so its first candidate is the
    latent it gets with ``candidates=1``.
    """
    out = torch.empty(len(seeds), candidates, latent_dim)
    for i, s in enumerate(seeds):
        out[i] = torch.randn(candidates, latent_dim, generator=torch.Generator().manual_seed(int(s)))
    return out[:, 0] if candidates == 1 else out


@torch.no_grad()
def best_of_candidates(
    G: torch.nn.Module, C: torch.nn.Module, cand: torch.Tensor, tgt: torch.Tensor, idx: torch.Tensor, chunk: int = 256
) -> torch.Tensor:
    """Per sample, the candidate latent whose image is closest to the target (lowest mean BCE).

    ``cand`` is ``[b, k, d]``, ``tgt`` ``[b, L_used]``; returns ``[b, d]``. Starting the optimisation
    from a prior draw that already shows part of the target means shorter, smaller moves in latent
    space, which drift less towards images only the steering classifier believes.
    """
    b, k, d = cand.shape
    flat = cand.reshape(b * k, d)
    losses = torch.empty(b * k, device=cand.device)
    rep = tgt.repeat_interleave(k, dim=0)
    for s in range(0, b * k, chunk):
        logits = C(G(flat[s : s + chunk])).index_select(1, idx)
        losses[s : s + chunk] = F.binary_cross_entropy_with_logits(logits, rep[s : s + chunk], reduction="none").mean(1)
    best = losses.view(b, k).argmin(1)
    return cand[torch.arange(b, device=cand.device), best]


def module_device(module: torch.nn.Module, fallback: str) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return resolve_device(fallback)


@dataclass
class _AttemptResult:
    z: np.ndarray  # [b, d] float32
    probs: np.ndarray  # [b, L] float32, NaN for unused labels
    steps: np.ndarray  # [b] int64: updates taken in this attempt
    g_evals: np.ndarray  # [b] int64: generator evaluations in this attempt
    success: np.ndarray  # [b] bool


def _optimise_attempt(
    G: torch.nn.Module, C: torch.nn.Module, space: LabelSpace, targets: np.ndarray, seeds: Sequence[int], cfg: LCOConfig, device: torch.device
) -> _AttemptResult:
    """One attempt for a batch: Adam on z with per-sample freezing once the stop rule holds.

    A sample stops once it clears every threshold by ``cfg.margin`` logits; its success is the plain
    :func:`success_rule` at the step where it stopped (or at the last step).
    """
    b, d = len(seeds), int(G.latent_dim)
    used = space.used
    idx = torch.as_tensor(np.asarray(space.clf_index)[used], dtype=torch.long, device=device)
    thr = space.thresholds[used]
    lo, hi = margin_thresholds(thr, cfg.margin)
    tgt = torch.as_tensor(targets[:, used], dtype=torch.float32, device=device)
    k = cfg.init_candidates
    if k == 1:
        z = initial_latents(seeds, d).to(device)
    else:
        z = best_of_candidates(G, C, initial_latents(seeds, d, k).to(device), tgt, idx)
    m = torch.zeros_like(z)
    v = torch.zeros_like(z)
    probs = np.full((b, len(space.labels)), np.nan, dtype=np.float32)
    steps = np.zeros(b, dtype=np.int64)
    evals = np.full(b, k if k > 1 else 0, dtype=np.int64)  # choosing the start costs k generator evaluations
    success = np.zeros(b, dtype=bool)
    active = np.arange(b)
    for t in range(cfg.steps + 1):
        if len(active) == 0:
            break
        ids = torch.as_tensor(active, device=device)
        zi = z.index_select(0, ids).requires_grad_(True)
        logits = C(G(zi)).index_select(1, idx)
        p = torch.sigmoid(logits)
        evals[active] += 1
        tgt_i = tgt.index_select(0, ids)
        met = success_rule(p.detach(), tgt_i, thr).cpu().numpy()
        # stop rule: past the margin cuts (the thresholds themselves when margin is 0)
        stop_cut = np.where((tgt_i >= 0.5).cpu().numpy(), hi, lo)
        ok = success_rule(p.detach(), tgt_i, stop_cut).cpu().numpy() & met
        probs[np.ix_(active, np.flatnonzero(used))] = p.detach().float().cpu().numpy()
        steps[active] = t
        success[active] = met
        if t == cfg.steps or ok.all():
            active = active[~ok]
            break
        per_sample = F.binary_cross_entropy_with_logits(logits, tgt.index_select(0, ids), reduction="none").mean(1)
        if cfg.prior_weight > 0:
            per_sample = per_sample + cfg.prior_weight * (zi.pow(2).sum(1) / d - 1.0).pow(2)
        keep = torch.as_tensor(~ok, device=device)
        (grad,) = torch.autograd.grad(per_sample[keep].sum(), zi)
        grad = grad[keep]
        moving = ids[keep]
        # Adam with per-sample moments; every still-active sample has taken exactly t updates so far.
        m_i = m.index_select(0, moving).mul_(_BETA1).add_(grad, alpha=1 - _BETA1)
        v_i = v.index_select(0, moving).mul_(_BETA2).addcmul_(grad, grad, value=1 - _BETA2)
        m.index_copy_(0, moving, m_i)
        v.index_copy_(0, moving, v_i)
        step = (m_i / (1 - _BETA1 ** (t + 1))) / ((v_i / (1 - _BETA2 ** (t + 1))).sqrt() + _EPS)
        z.index_copy_(0, moving, z.index_select(0, moving) - cfg.lr * step.detach())
        active = active[~ok]
    return _AttemptResult(z.detach().float().cpu().numpy(), probs, steps, evals, success)


def _reason(probs: np.ndarray, target: np.ndarray, space: LabelSpace, attempts: int, steps: int) -> str:
    unmet = []
    for j, name in enumerate(space.labels):
        t = space.thresholds[j]
        if np.isnan(t):
            continue
        if target[j] >= 0.5 and not probs[j] >= np.float32(t):
            unmet.append(f"{name} p={probs[j]:.4f}<{t:.4f}")
        elif target[j] < 0.5 and not probs[j] <= np.float32(t):
            unmet.append(f"{name} p={probs[j]:.4f}>{t:.4f}")
    return f"target not met after {attempts} attempt(s) of up to {steps} steps; unmet: {', '.join(unmet)}"


def optimise_latents(
    G: torch.nn.Module,
    C: torch.nn.Module,
    thresholds: Mapping[str, float] | LabelSpace,
    targets: np.ndarray | pd.DataFrame,
    seeds: Sequence[int],
    cfg: Mapping[str, Any] | LCOConfig,
    classifier_labels: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Optimise one latent per target row; returns one row per target, in order.

    ``targets`` is ``[N, L]`` 0/1 over ``cfg.labels`` (or a DataFrame holding those columns); ``seeds``
    the per-sample seeds from the plan. ``classifier_labels`` defaults to ``C.label_names``. Columns of
    the result: seed (of the last attempt), attempts, z (float32 array per row), target_<label>,
    prob_<label> (NaN for a label the classifier lacks), steps, g_evals, success, reason ('' on success).
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
    n, d = len(targets), int(G.latent_dim)
    z_out = np.zeros((n, d), dtype=np.float32)
    probs_out = np.full((n, len(labels)), np.nan, dtype=np.float32)
    steps_out = np.zeros(n, dtype=np.int64)
    evals_out = np.zeros(n, dtype=np.int64)
    attempts_out = np.zeros(n, dtype=np.int64)
    seed_out = seeds.copy()
    success_out = np.zeros(n, dtype=bool)
    bar = progress(total=n, desc="lco", unit="sample")
    for start in range(0, n, lc.batch_size):
        pending = np.arange(start, min(start + lc.batch_size, n))
        for attempt in range(lc.retries + 1):
            if len(pending) == 0:
                break
            seeds_a = [attempt_seed(int(seeds[i]), attempt) for i in pending]
            res = _optimise_attempt(G, C, space, targets[pending], seeds_a, lc, device)
            z_out[pending] = res.z
            probs_out[pending] = res.probs
            steps_out[pending] = res.steps
            evals_out[pending] += res.g_evals
            attempts_out[pending] = attempt + 1
            seed_out[pending] = seeds_a
            success_out[pending] = res.success
            pending = pending[~res.success]
        bar.update(min(start + lc.batch_size, n) - start)
        done = min(start + lc.batch_size, n)
        bar.set_postfix(success=f"{success_out[:done].mean():.3f}")
        log.info("lco: %d/%d samples, success %.3f", done, n, success_out[:done].mean())
    bar.close()
    reasons = [
        "" if success_out[i] else _reason(probs_out[i], targets[i], space, int(attempts_out[i]), lc.steps) for i in range(n)
    ]
    out = pd.DataFrame({"seed": seed_out, "attempts": attempts_out, "z": list(z_out)})
    for j, name in enumerate(labels):
        out[f"target_{name}"] = targets[:, j].astype(np.int8)
    for j, name in enumerate(labels):
        out[f"prob_{name}"] = probs_out[:, j]
    out["steps"] = steps_out
    out["g_evals"] = evals_out
    out["success"] = success_out
    out["reason"] = reasons
    return out
