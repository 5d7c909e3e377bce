"""Where each finding shows on the phantom: the mean absolute change that drawing it makes to a study.

The renderer draws a finding onto a study without moving anything else (same patient, pose and noise), so
rendering a cohort row with the finding and without it, and averaging ``|with - without|`` over rows,
maps where that finding's pixels lie in the cohort. :func:`region` keeps the smallest set of pixels that
holds a given share of that change: the finding's region, against which an edit's pixel change is judged
(:mod:`synthcxr.validate.pairs`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .cohort import sample_cohort
from .config import FINDINGS, PhantomConfig
from .render import render


def _with(row: dict, present: Sequence[str]) -> dict:
    """``row`` drawing exactly the findings ``present`` (the drawn ``true_`` columns too, where the row has them)."""
    out = dict(row)
    for name in FINDINGS:
        v = int(name in present)
        out[name] = v
        if f"true_{name}" in out:
            out[f"true_{name}"] = v
    return out


def finding_atlas(cfg: PhantomConfig, findings: Sequence[str], res: int, n: int = 48, seed: int = 0) -> dict[str, np.ndarray]:
    """Per finding, float64 ``[res, res]`` summing to 1: the mean ``|with - without|`` over ``n`` studies of the
    cohort ``cfg`` drawn with ``seed``, each rendered with that finding alone and with no finding."""
    unknown = [f for f in findings if f not in FINDINGS]
    if unknown:
        raise KeyError(f"the phantom draws no finding {unknown}; it draws {list(FINDINGS)}")
    cohort = sample_cohort(cfg)
    rows = cohort.sample(min(n, len(cohort)), random_state=seed)
    acc = {f: np.zeros((res, res)) for f in findings}
    for row in rows.to_dict("records"):
        none = render(_with(row, ()), res).astype(np.float64)
        for f in findings:
            acc[f] += np.abs(render(_with(row, (f,)), res).astype(np.float64) - none)
    return {f: a / a.sum() if a.sum() > 0 else np.full_like(a, 1.0 / a.size) for f, a in acc.items()}


def region(atlas: np.ndarray, mass: float = 0.9) -> np.ndarray:
    """Boolean mask of the fewest pixels holding ``mass`` of the atlas (largest first; ties by position)."""
    if not 0 < mass <= 1:
        raise ValueError(f"region mass must be in (0, 1], got {mass}")
    flat = np.asarray(atlas, dtype=np.float64).ravel()
    order = np.argsort(-flat, kind="stable")
    k = int(np.searchsorted(np.cumsum(flat[order]), mass * flat.sum() - 1e-12)) + 1
    mask = np.zeros(flat.size, bool)
    mask[order[: min(k, flat.size)]] = True
    return mask.reshape(np.shape(atlas))
