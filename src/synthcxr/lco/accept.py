"""The acceptance rule: which classifier outputs count as a latent showing its target, and why one does not.

LCO stops and succeeds on it, rejection sampling accepts on it, and every benchmark judges both by it,
so the rule lives in one place: each requested finding's probability at least ``margin`` logits above
its threshold and each absent one ``margin`` logits below (:func:`accept_rule`; margin 0 is
:func:`success_rule`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.special import expit, logit

from ..labels import NO_FINDING


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


def unmet_reason(
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
