"""Acceptance margins per label and side, calibrated on how far the steering classifier puts real scans.

A fixed margin asks every finding to clear its threshold by the same number of logits. The classifier
does not score every finding that confidently: a subtle finding's real positives may sit one logit past
the threshold, so a margin of 3 asks a synthetic image to look more certain than almost any real scan
of the finding, and LCO fails or drifts to images only the steering classifier believes. On the absent
side, every label a target leaves out must fall the margin below its threshold at once.

With ``lco.margin_quantile`` q, each label gets its own pair of margins from the real validation scans
the steering classifier calls right (:func:`calibrate_margins`):

* above (the label requested): the q-quantile of ``logit(p) - logit(t)`` over val positives with
  ``p >= t``: as far past the threshold as the classifier puts a typical real positive it detects;
* below (the label absent): the q-quantile of ``logit(t) - logit(p)`` over val negatives with ``p < t``;

each capped at ``lco.margin``. A side with fewer than ``min_count`` such scans keeps the cap. With q null
every label and side gets ``lco.margin`` (the fixed rule). The checker's trust rule is not touched:
it still judges every sample at its own thresholds.

Each label's margins are quantiles of that label alone, but a target is met only when every label clears
its cut at once, so the rule can ask for more than any real scan shows: on a multi-label scan, each absent
label must also sit past the median of the scans that lack it. :func:`real_pass` measures that on the same
val scans: of the scans showing a label that the classifier calls right on every label, the share that
pass the whole rule with their own labels as the target. With ``lco.margin_real_pass`` P,
:func:`joint_quantile` lowers the common quantile from q until that share is at least P for every label
with ``min_count`` such scans (the largest such quantile, by bisection: the share only falls as the
quantile rises).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..utils.atomic import write_json
from .accept import accept_rule, prob_logit, success_rule
from .config import LCOConfig
from .realism import calibrate_gate, save_gate

log = logging.getLogger("synthcxr")

MIN_COUNT = 10  # real val scans a calibrated side needs; fewer keep the cap
RULE = (
    "above: q-quantile of logit(p) - logit(threshold) over real val positives the steering classifier calls; "
    "below: q-quantile of logit(threshold) - logit(p) over real val negatives it calls absent; each capped at lco.margin; "
    "a side with fewer than {min_count} such scans, or q null, keeps lco.margin"
)


def calibrate_margins(
    y: np.ndarray,
    probs: np.ndarray,
    thresholds: Sequence[float],
    labels: Sequence[str],
    cap: float,
    quantile: float | None,
    min_count: int = MIN_COUNT,
) -> dict[str, dict[str, Any]]:
    """Per label ``{"below", "above", "n_neg_called", "n_pos_called", "raw_below", "raw_above", "note"}``.

    ``y`` and ``probs`` are the real val scans' labels (NaN: unknown) and the steering classifier's
    probabilities ``[n, L]`` over ``labels``; ``thresholds`` its operating points. ``raw_*`` is the
    quantile before the cap (None when too few scans). With ``quantile`` None both sides are ``cap``.
    """
    if cap < 0:
        raise ValueError(f"lco.margin: need >= 0 logits, got {cap}")
    if quantile is not None and not 0.0 < quantile < 1.0:
        raise ValueError(f"lco.margin_quantile: need a number in (0, 1) or null, got {quantile}")
    out: dict[str, dict[str, Any]] = {}
    for j, name in enumerate(labels):
        row: dict[str, Any] = {"below": float(cap), "above": float(cap), "n_neg_called": 0, "n_pos_called": 0,
                               "raw_below": None, "raw_above": None, "note": "fixed margin (lco.margin_quantile null)"}
        if quantile is None:
            out[name] = row
            continue
        t = float(thresholds[j])
        lt, lp = float(prob_logit(t)), prob_logit(probs[:, j])
        yj = y[:, j]
        past_pos = (lp - lt)[(yj == 1) & (probs[:, j] >= t)]
        past_neg = (lt - lp)[(yj == 0) & (probs[:, j] < t)]
        notes = []
        for side, past, n_key in (("above", past_pos, "n_pos_called"), ("below", past_neg, "n_neg_called")):
            row[n_key] = int(len(past))
            if len(past) < min_count:
                notes.append(f"{side}: {len(past)} real val scans called right, fewer than {min_count}; keeps lco.margin")
                continue
            raw = float(np.quantile(past, quantile))
            row[f"raw_{side}"] = raw
            row[side] = float(min(cap, max(raw, 0.0)))
        row["note"] = "; ".join(notes) or "calibrated"
        out[name] = row
    return out


def real_pass(y: np.ndarray, probs: np.ndarray, thresholds: Sequence[float], labels: Sequence[str], margins,
              min_count: int = MIN_COUNT) -> dict[str, dict[str, Any]]:
    """Per label ``{"n", "share"}``: of the real val scans showing it (every label known) that the classifier calls
    right on every label at its thresholds, how many there are and the share passing :func:`accept_rule` with
    ``margins`` (a number or ``[2, L]``) and their own labels as the target; ``share`` is None below ``min_count``."""
    thr = np.asarray(thresholds, dtype=np.float64)
    known = ~np.isnan(y).any(axis=1)
    yk, pk = y[known], probs[known]
    right = success_rule(pk, yk, thr)
    passed = accept_rule(pk, yk, thr, margins)
    out = {}
    for j, name in enumerate(labels):
        mask = right & (yk[:, j] == 1)
        n = int(mask.sum())
        out[name] = {"n": n, "share": float(passed[mask].mean()) if n >= min_count else None}
    return out


def joint_quantile(
    y: np.ndarray, probs: np.ndarray, thresholds: Sequence[float], labels: Sequence[str], cap: float, quantile: float,
    share: float, min_count: int = MIN_COUNT, iters: int = 40,
) -> tuple[float, dict[str, dict[str, Any]]]:
    """The largest common quantile in (0, ``quantile``] at which :func:`real_pass` gives every label with ``min_count``
    scans a share >= ``share``; returns it and its margins table. When even the smallest quantile misses (a label
    whose side keeps the cap can block), returns that smallest one: the caller reports the shares reached."""
    if not 0.0 < share <= 1.0:
        raise ValueError(f"lco.margin_real_pass: need a share in (0, 1] or null, got {share}")

    def table_at(q: float) -> dict[str, dict[str, Any]]:
        return calibrate_margins(y, probs, thresholds, labels, cap, q, min_count)

    def ok(table: dict[str, dict[str, Any]]) -> bool:
        rows = real_pass(y, probs, thresholds, labels, margins_array(table, labels), min_count).values()
        return all(r["share"] is None or r["share"] >= share for r in rows)

    top = table_at(quantile)
    if ok(top):
        return float(quantile), top
    lo, hi = 0.0, float(quantile)  # the share falls as the quantile rises: keep lo feasible, hi not
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if ok(table_at(mid)):
            lo = mid
        else:
            hi = mid
    q = lo if lo > 0 else hi  # every quantile tried failed: the smallest (calibrate_margins takes none at 0)
    return q, table_at(q)


def margins_array(table: Mapping[str, Mapping[str, Any]], labels: Sequence[str], where: str = "margins.json") -> np.ndarray:
    """``[2, L]`` logits (row 0 below, row 1 above) over ``labels`` from a margins table."""
    missing = [n for n in labels if n not in table]
    if missing:
        raise ValueError(f"{where}: no margins for label(s) {missing}; rerun the lco_margins rule")
    m = np.array([[float(table[n]["below"]) for n in labels], [float(table[n]["above"]) for n in labels]])
    if not np.isfinite(m).all() or (m < 0).any():
        raise ValueError(f"{where}: margins must be finite and >= 0 logits; rerun the lco_margins rule")
    return m


def read_margins(path: str | os.PathLike, labels: Sequence[str]) -> np.ndarray:
    """``margins.json`` as a ``[2, L]`` array over ``labels``; errors name the file and the fix."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} missing: run the lco_margins rule first")
    try:
        data = json.loads(p.read_text())
        table = data["labels"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{p}: not a margins file ({exc!r}); rerun the lco_margins rule") from None
    return margins_array(table, labels, where=os.fspath(p))


def run_margins(
    cfg: Mapping[str, Any],
    classifier_path: str | os.PathLike,
    thresholds_path: str | os.PathLike,
    prepared: str | os.PathLike,
    out_path: str | os.PathLike,
    log_file: str | os.PathLike | None = None,
    realism_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Rule lco_margins: write ``margins.json`` for the steering classifier (scores real val scans when calibrating)
    and, with ``lco.realism_quantile``, the realism gate to ``realism_path`` (:mod:`.realism`).

    ``cfg`` holds ``margin``, ``margin_quantile``, ``margin_real_pass``, ``labels`` and ``device`` (the ``lco``
    section), and the ``realism_*`` keys when the gate is on.
    """
    from ..classifier import load_classifier
    from ..classifier.evaluate import load_thresholds, predict
    from ..classifier.sources import pick_res, prepared_split
    from ..data.store import PreparedDataset
    from ..utils.runtime import resolve_device, setup_logging

    if log_file is not None:
        setup_logging(log_file)
    lc = LCOConfig.from_section(cfg)
    labels, cap, q, joint = lc.labels, lc.margin, lc.margin_quantile, lc.margin_real_pass
    if joint is not None and q is None:  # the config check says so first; this guards direct callers
        raise ValueError("lco.margin_real_pass lowers lco.margin_quantile: set margin_quantile too (e.g. 0.5), or margin_real_pass: null")
    dev = resolve_device(lc.device)
    C = load_classifier(classifier_path, dev)
    names = list(C.label_names)
    thr = load_thresholds(thresholds_path, names)
    n_val, q_used, passing = 0, q, None
    if q is None:
        table = calibrate_margins(np.zeros((0, len(names))), np.zeros((0, len(names))), thr, names, cap, None)
    else:
        ds = PreparedDataset(prepared)
        part = prepared_split(ds, "val", names, pick_res(ds.resolutions, C.input_res, os.fspath(prepared)))
        probs, y = predict(C, part.dataset, 256, dev)
        n_val = len(y)
        if joint is None:
            table = calibrate_margins(y, probs, thr, names, cap, q)
        else:
            q_used, table = joint_quantile(y, probs, thr, names, cap, q, joint)
        passing = real_pass(y, probs, thr, names, margins_array(table, names))
    for name in labels:
        if name not in table:  # a label the classifier lacks (No_Finding implied): nothing to clear
            table[name] = {"below": 0.0, "above": 0.0, "n_neg_called": 0, "n_pos_called": 0, "raw_below": None, "raw_above": None,
                           "note": "no classifier output"}
    out = {
        "margin": cap,
        "quantile": q_used,
        "quantile_configured": q,
        "real_pass_target": joint,
        # of the real val scans showing each label, called right on every label: the share passing the whole rule
        "real_pass": passing,
        "min_count": MIN_COUNT,
        "split": "val",
        "n_val": n_val,
        "classifier": os.fspath(classifier_path),
        "rule": RULE.format(min_count=MIN_COUNT),
        "labels": {n: table[n] for n in labels},
    }
    if lc.realism_quantile is not None:
        if realism_path is None:
            raise ValueError("lco.realism_quantile is set: pass realism_path (the lco_margins rule's realism.npz output)")
        gate = calibrate_gate(C, prepared, lc.realism_quantile, lc.realism_weight, dev, lc.seed)
        save_gate(gate, realism_path)
        out["realism"] = {**gate.summary(), "file": os.fspath(realism_path)}
    write_json(out_path, out)
    passing = passing or {}
    for n in labels:
        r, pr = table[n], passing.get(n) or {}
        shown = f"; {pr['share']:.0%} of {pr['n']} real val scans with it, called right, pass" if pr.get("share") is not None else ""
        log.info("margin %-14s below %.2f above %.2f logits (%s%s)", n, r["below"], r["above"], r["note"], shown)
    if joint is not None:
        log.info("margin quantile %.4g (configured %g), the largest at which every label's real pass share is >= %g", q_used, q, joint)
        short = {n: r["share"] for n, r in passing.items() if r["share"] is not None and r["share"] < joint}
        if short:
            log.warning("lco.margin_real_pass %g not reached for %s even at the smallest quantile: a side with too few real val "
                        "scans keeps lco.margin; lower lco.margin", joint, short)
    return out
