"""The acceptance rule: which classifier outputs count as a latent showing its target, and why one does not.

LCO stops and succeeds on it, rejection sampling accepts on it, and every benchmark judges both by it,
so the rule lives in one place: each requested finding's probability at least ``margin`` logits above
its threshold and each absent one ``margin`` logits below (:func:`accept_rule`; margin 0 is
:func:`success_rule`). A margin is one number for every label and side, or a ``[2, L]`` array of logits
per label: row 0 below the threshold (absent labels), row 1 above it (requested ones), as
:mod:`synthcxr.lco.margins` calibrates them on real validation scans.

The loss LCO descends lives here too (:func:`target_loss`), since one of its forms is measured from
the rule's own cuts: ``objective: bce`` is the mean binary cross-entropy of each label's logit against
the target 0/1 (the seed paper's loss); ``objective: cut`` is the same cross-entropy of each logit's
distance past its acceptance cut (``logit(threshold) + above`` for a requested label,
``logit(threshold) - below`` for an absent one). Under ``cut`` a label already past its cut by a few
logits stops pulling, so the gradient goes to the labels the rule still waits for, and every label's
pull is measured from its own threshold rather than from p = 0.5.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import expit, logit

from ..labels import NO_FINDING

OBJECTIVES = ("bce", "cut")


@dataclass(frozen=True)
class LabelSpace:
    """How the configured labels map onto the classifier's outputs and thresholds.

    ``clf_index[j]`` is the classifier output of label ``j`` (-1 when the classifier lacks it, which is
    allowed only for No_Finding: "no finding" is then implied by every finding being absent).
    ``thresholds[j]`` is NaN for such unused labels, which :func:`success_rule` ignores.
    ``margins`` is ``[2, L]``: the logits a sample must clear below (row 0) and above (row 1) each
    threshold for LCO to accept it.
    """

    labels: tuple[str, ...]
    clf_index: tuple[int, ...]
    thresholds: np.ndarray = field(repr=False)
    margins: np.ndarray = field(default=None, repr=False)

    def __post_init__(self):
        if self.margins is None:
            object.__setattr__(self, "margins", np.zeros((2, len(self.labels)), dtype=np.float64))

    @property
    def used(self) -> np.ndarray:
        return np.array([i >= 0 for i in self.clf_index])

    def with_margins(self, margins) -> "LabelSpace":
        """The same space with ``margins``: a number, or a ``[2, L]`` array (below, above) over ``labels``."""
        m = np.broadcast_to(np.asarray(margins, dtype=np.float64), (2, len(self.labels))).copy()
        if np.any(m[:, self.used] < 0) or not np.isfinite(m[:, self.used]).all():
            raise ValueError(f"acceptance margins must be finite and >= 0 logits; got {m.tolist()}")
        return LabelSpace(self.labels, self.clf_index, self.thresholds, m)


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


def prob_logit(p) -> np.ndarray:
    """``logit(p)`` of probabilities clipped to [1e-7, 1 - 1e-7], so a threshold or score of 0 or 1 stays finite."""
    return logit(np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7))


def _sides(margin, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(below, above)`` logit margins ``[n]`` from a number or a ``[2, n]`` array."""
    m = np.broadcast_to(np.asarray(margin, dtype=np.float64), (2, n))
    return m[0], m[1]


def margin_thresholds(thresholds, margin) -> tuple[np.ndarray, np.ndarray]:
    """``(lower, upper)`` probability cuts the margin below and above each threshold.

    LCO keeps optimising a sample until each requested finding is above ``upper`` and each absent one
    below ``lower``, so that it does not stop on the classifier's decision boundary, where a second
    classifier is a coin flip. ``margin`` is a number of logits (both sides of every label) or a
    ``[2, L]`` array (row 0 below, row 1 above); a zero margin returns the threshold itself; NaN stays NaN.
    """
    thr = np.asarray(thresholds, dtype=np.float64)
    below, above = _sides(margin, thr.shape[-1] if thr.ndim else 1)
    lt = prob_logit(thr)
    lo = np.where(below == 0, thr, expit(lt - below))
    hi = np.where(above == 0, thr, expit(lt + above))
    return lo, hi


def accept_rule(probs, target, thresholds, margin=0.0):
    """Per-sample bool: every threshold cleared by its margin on the side the target asks for.

    The rule LCO stops and succeeds on and rejection sampling accepts on; ``margin`` (a number, or
    ``[2, L]`` logits below/above per label, see :func:`margin_thresholds`) all 0 is
    :func:`success_rule`. Same array conventions as :func:`success_rule`.
    """
    if not np.any(np.asarray(margin)):
        return success_rule(probs, target, thresholds)
    lo, hi = margin_thresholds(thresholds, margin)
    tgt = target.detach().cpu().numpy() if isinstance(target, torch.Tensor) else np.asarray(target)
    # per entry: the upper cut where the label is wanted, the lower one where it is not
    return success_rule(probs, target, np.where(tgt >= 0.5, hi, lo))


def unmet_reason(probs: np.ndarray, target: np.ndarray, space: LabelSpace, attempts: int, steps: int, gave_up: bool = False) -> str:
    """Why a target was not met: each label short of its cut, with its probability and the cut."""
    lo, hi = margin_thresholds(space.thresholds, space.margins)
    unmet = []
    for j, name in enumerate(space.labels):
        if np.isnan(space.thresholds[j]):
            continue
        if target[j] >= 0.5 and not probs[j] >= np.float32(hi[j]):
            unmet.append(f"{name} p={probs[j]:.4f}<{hi[j]:.4f}")
        elif target[j] < 0.5 and not probs[j] <= np.float32(lo[j]):
            unmet.append(f"{name} p={probs[j]:.4f}>{lo[j]:.4f}")
    m = space.margins[:, space.used]
    past = "" if not m.size or not m.any() else f" by {m.max():g} logits" if np.all(m == m.flat[0]) else " by the calibrated margins"
    skipped = "; further retries skipped: its label combination failed every strong attempt in the shard" if gave_up else ""
    return f"target not met{past} after {attempts} attempt(s) of up to {steps} steps; unmet: {', '.join(unmet)}{skipped}"


def loss_cuts(space: LabelSpace, objective: str) -> np.ndarray:
    """``[2, Lu]`` logits over the used labels the loss measures from: (below, above) each label's
    acceptance cut under ``cut``, zeros under ``bce`` (plain cross-entropy against 0/1)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"lco.objective: {objective!r} is not one of {', '.join(OBJECTIVES)}")
    used = space.used
    if objective == "bce":
        return np.zeros((2, int(used.sum())), dtype=np.float64)
    lt = prob_logit(space.thresholds[used])
    m = space.margins[:, used]
    return np.stack([lt - m[0], lt + m[1]])


def target_loss(logits, target, cuts) -> torch.Tensor:
    """Per-sample mean over labels of ``BCE(logit - cut, target)``: ``[..., Lu]`` logits and 0/1 targets
    (broadcast), ``cuts`` from :func:`loss_cuts`, as an array or a tensor already on the logits' device
    (the cut of a label's requested side is used)."""
    logits = torch.as_tensor(logits)
    tgt = torch.as_tensor(target, device=logits.device).to(logits.dtype)
    c = torch.as_tensor(cuts, device=logits.device, dtype=logits.dtype)
    shift = torch.where(tgt >= 0.5, c[1], c[0])
    return F.binary_cross_entropy_with_logits(logits - shift, tgt.expand_as(logits), reduction="none").mean(-1)
