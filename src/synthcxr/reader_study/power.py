"""What a real-vs-synthetic reader study can conclude: power of its binomial test, and equivalence (TOST).

A reader who cannot tell generated from real scans answers right half the time. The exact two-sided
binomial test asks "is accuracy different from 0.5?"; not rejecting it does not mean the images are
indistinguishable, only that the study could not tell. Two tools make that precise:

* **power**: the probability that the test rejects at level ``alpha`` when a reader's true accuracy is
  ``accuracy``; :func:`answers_needed` is the smallest number of answers reaching a target power (e.g.
  20 + 20 images give 40 answers a reader: 27 right are needed for p < 0.05, and a reader whose true
  accuracy is 60 % reaches it with probability 0.21; 80 % power at 60 % takes 199 answers);
* **equivalence** (two one-sided tests, Schuirmann 1987): "accuracy lies within 0.5 +- margin" is
  concluded when both exact one-sided binomial tests, against 0.5 - margin (greater) and 0.5 + margin
  (less), reject at ``alpha``; the TOST p-value is the larger of the two.

Pooling answers over readers treats them as independent (readers and images are both random effects),
so pooled figures are optimistic; per-reader figures are the conservative ones.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binom, binomtest


def rejection_counts(n: int, alpha: float = 0.05) -> np.ndarray:
    """Numbers of correct answers out of ``n`` for which the exact two-sided test vs 0.5 gives p < alpha.

    At p = 0.5 the binomial is symmetric, so scipy's two-sided p-value is ``min(1, 2 * P(X <= k))`` for
    ``k <= n / 2`` and its mirror above.
    """
    k = np.arange(n + 1)
    tail = np.minimum(binom.cdf(k, n, 0.5), binom.sf(k - 1, n, 0.5))
    p = np.minimum(1.0, 2.0 * tail)
    return k[p < alpha]


def power(n: int, accuracy: float, alpha: float = 0.05) -> float:
    """Probability that the exact two-sided binomial test (vs 0.5) rejects with ``n`` answers at true ``accuracy``."""
    if n < 1:
        return 0.0
    ks = rejection_counts(n, alpha)
    return float(binom.pmf(ks, n, accuracy).sum()) if len(ks) else 0.0


def _first_n(power_at, target: float, limit: int) -> int | None:
    """Smallest n with ``power_at(n) >= target``: doubling search, then a scan back over the last interval."""
    n = 1
    while n <= limit:
        if power_at(n) >= target:
            return next(m for m in range(max(1, n // 2), n + 1) if power_at(m) >= target)
        n *= 2
    return None


def answers_needed(accuracy: float, target: float = 0.8, alpha: float = 0.05, limit: int = 200_000) -> int | None:
    """Smallest number of answers whose power reaches ``target`` at true ``accuracy`` (None beyond ``limit``).

    Exact-test power saw-tooths with n, so the first n that reaches the target is returned.
    """
    if accuracy == 0.5:
        return None
    return _first_n(lambda n: power(n, accuracy, alpha), target, limit)


def tost(correct: int, n: int, margin: float, alpha: float = 0.05) -> dict:
    """Equivalence of accuracy to 0.5 within ``+- margin`` by two one-sided exact binomial tests."""
    if not 0 < margin < 0.5:
        raise ValueError(f"reader_study.equivalence_margin must be in (0, 0.5), got {margin}")
    if n < 1:
        return {"margin": margin, "p_lower": float("nan"), "p_upper": float("nan"), "p_value": float("nan"), "equivalent": False}
    p_lower = binomtest(correct, n, 0.5 - margin, alternative="greater").pvalue
    p_upper = binomtest(correct, n, 0.5 + margin, alternative="less").pvalue
    p = max(p_lower, p_upper)
    return {"margin": margin, "p_lower": float(p_lower), "p_upper": float(p_upper), "p_value": float(p),
            "equivalent": bool(p < alpha)}


def design(n_images: int, readers: int, accuracy: float, margin: float, alpha: float = 0.05, target: float = 0.8) -> dict:
    """The study's power statement: per reader, pooled over ``readers``, and the answers each needs."""
    per_reader = power(n_images, accuracy, alpha)
    pooled = power(n_images * readers, accuracy, alpha)
    need = answers_needed(accuracy, target, alpha)
    need_eq = equivalence_answers_needed(margin, target, alpha)
    rej = rejection_counts(n_images, alpha)
    upper = rej[rej > n_images / 2]
    return {
        "alpha": alpha,
        "detect_accuracy": accuracy,
        "images_per_reader": n_images,
        "readers": readers,
        "correct_needed_per_reader": int(upper.min()) if len(upper) else None,
        "power_per_reader": per_reader,
        "power_pooled": pooled,
        "target_power": target,
        "answers_needed": need,
        "readers_needed": None if need is None else int(-(-need // n_images)),
        "equivalence_margin": margin,
        "answers_needed_for_equivalence": need_eq,
        "readers_needed_for_equivalence": None if need_eq is None else int(-(-need_eq // n_images)),
        "note": "pooled figures treat every answer as independent; per-reader figures are the conservative ones",
    }


def equivalence_power(n: int, margin: float, alpha: float = 0.05, accuracy: float = 0.5) -> float:
    """Probability that TOST concludes equivalence within ``+- margin`` with ``n`` answers at true ``accuracy``."""
    k = np.arange(n + 1)
    lower = binom.sf(k - 1, n, 0.5 - margin) < alpha  # P(X >= k | 0.5 - margin)
    upper = binom.cdf(k, n, 0.5 + margin) < alpha  # P(X <= k | 0.5 + margin)
    ok = k[lower & upper]
    return float(binom.pmf(ok, n, accuracy).sum()) if len(ok) else 0.0


def equivalence_answers_needed(margin: float, target: float = 0.8, alpha: float = 0.05, limit: int = 200_000) -> int | None:
    """Smallest number of answers for which TOST reaches ``target`` power when readers truly guess (accuracy 0.5)."""
    return _first_n(lambda n: equivalence_power(n, margin, alpha), target, limit)
