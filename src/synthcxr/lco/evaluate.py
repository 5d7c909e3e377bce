"""Does a second, independently trained classifier agree that LCO samples show their targets?

LCO optimises against one classifier, so its own success flag is optimistic (latents can exploit that
classifier's quirks). Re-rendering every latent and scoring it with a checker trained separately gives
an honest rate, overall and per label combination, next to the checker's exact-match rate on real test
scans of the same combination.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..classifier.evaluate import read_thresholds
from ..labels import combo_key
from .accept import LabelSpace, resolve_label_space, success_rule
from .cost import forward_equivalents
from .latents import latents_labels, read_latents, target_labels
from .starts import initial_latents, module_device


def _rate(mask: np.ndarray) -> float | None:
    return float(mask.mean()) if len(mask) else None


@torch.no_grad()
def checker_probs(
    generator: torch.nn.Module, checker: torch.nn.Module, space: LabelSpace, z: np.ndarray, batch_size: int = 64
) -> np.ndarray:
    """``checker`` probabilities on ``generator(z)`` for the labels ``space`` uses: ``[n, space.used.sum()]``."""
    gdev = module_device(generator, "cpu")
    cdev = module_device(checker, "cpu")
    idx = torch.as_tensor(np.asarray(space.clf_index)[space.used], dtype=torch.long, device=cdev)
    probs = np.empty((len(z), int(space.used.sum())), dtype=np.float32)
    for s in range(0, len(z), batch_size):
        x = generator(torch.as_tensor(z[s : s + batch_size], device=gdev)).to(cdev)
        probs[s : s + batch_size] = torch.sigmoid(checker(x).index_select(1, idx)).float().cpu().numpy()
    return probs


def checker_agrees(
    generator: torch.nn.Module, checker: torch.nn.Module, space: LabelSpace, z: np.ndarray, targets: np.ndarray, batch_size: int = 64
) -> np.ndarray:
    """Per latent, whether ``checker`` (with the thresholds in ``space``) sees exactly its target row.

    ``z`` is ``[n, d]``, ``targets`` ``[n, L]`` over ``space.labels``; returns ``[n]`` bool.
    """
    return agrees_with_target(checker_probs(generator, checker, space, z, batch_size), targets, space)


def agrees_with_target(probs: np.ndarray, targets: np.ndarray, space: LabelSpace) -> np.ndarray:
    """Per row of :func:`checker_probs`, whether the calls at ``space``'s thresholds are exactly the target row."""
    used = space.used
    return np.asarray(success_rule(probs, np.asarray(targets)[:, used], space.thresholds[used]), dtype=bool)


@torch.no_grad()
def agreement(
    latents_paths: Sequence[str | os.PathLike] | str | os.PathLike,
    generator: torch.nn.Module | str | os.PathLike,
    checker: torch.nn.Module | str | os.PathLike,
    thresholds: Mapping[str, float] | str | os.PathLike,
    batch_size: int = 64,
    device: str = "auto",
    checker_metrics: str | os.PathLike | None = None,
    prior_samples: int = 0,
    seed: int = 0,
    backward_ratio: float | None = None,
) -> dict[str, Any]:
    """Share of samples whose re-rendered image meets its target under ``checker`` and its thresholds.

    ``generator``/``checker`` may be loaded modules or paths to ``generator.pt``/``model.pt``;
    ``thresholds`` a mapping or a path to the checker's ``thresholds.json``. Labels come from the
    shards' ``target_*`` columns; a label the checker lacks is ignored only if it is No_Finding.
    Returns ``overall`` and ``n`` over all samples, ``overall_successful``/``n_successful`` over
    the samples LCO marked successful (those an archive keeps), and the same per combination key.

    With ``checker_metrics`` (the checker's ``metrics.json``) each combination also gets the checker's
    exact-match rate on *real* test scans of that combination (``real_test_exact_match``, ``real_test_n``;
    null where the test split has none): the reference for how often this checker reads a scan of the
    combination correctly at all. Each ``per_label`` row likewise gets ``real_test_tpr`` and
    ``real_test_n_pos``: how often the checker calls the finding on real test scans that carry it (null
    when the metrics predate this field or the test split has no such scan).

    ``per_label`` gives, for each label, the samples whose target includes it, the share of them LCO
    met (``lco_success``), the checker's agreement with their whole target (``agreement_successful``) and
    the share on which it calls the label itself (``seen_successful``: the same measure as its sensitivity
    on real scans); with ``checker_metrics`` also both over that sensitivity (``agreement_over_real_tpr``,
    ``seen_over_real_tpr``: the per-finding trust ratio); with ``prior_samples > 0`` also ``prior_rate``, the share of that many seeded random latents
    (un-optimised draws from N(0, I)) on which the checker sees the label, next to ``plan_rate``, its share
    of the targets. A finding the generator almost never draws can only be reached by perturbing latents
    until the steering classifier is fooled, and the checker's agreement on it is low.

    Cost, overall (``cost``) and per label: generator forwards and backward passes spent on the samples
    (failures included) per LCO-successful sample, and with ``backward_ratio`` r (an update's time over a
    forward's, :func:`synthcxr.lco.cost.backward_ratio`) forward-equivalents, ``forwards + (r - 1) x backwards``.
    """
    from ..utils.runtime import resolve_device

    if isinstance(latents_paths, (str, os.PathLike)):
        latents_paths = [latents_paths]
    if not latents_paths:
        raise ValueError("agreement: no latents shards given")
    dev = resolve_device(device)
    if not isinstance(generator, torch.nn.Module):
        from ..pggan import load_generator

        generator = load_generator(generator, dev)
    if not isinstance(checker, torch.nn.Module):
        from ..classifier import load_classifier

        checker = load_classifier(checker, dev)
    where = "thresholds"
    if not isinstance(thresholds, Mapping):
        where = os.fspath(thresholds)
        thresholds = read_thresholds(thresholds)
    generator.eval()
    checker.eval()

    labels = latents_labels(latents_paths[0])
    shards = []
    for p in latents_paths:
        lat = read_latents(p, labels)  # a shard lacking one of the first shard's labels fails here, naming p
        if target_labels(lat.table.columns) != labels:
            raise ValueError(f"{p}: its target columns differ from {latents_paths[0]}; shards come from different configs")
        shards.append(lat)
    targets = np.concatenate([s.targets.astype(np.float32) for s in shards])
    lco_ok = np.concatenate([s.table["success"].to_numpy(bool) for s in shards])
    z = np.concatenate([s.z for s in shards])

    def counts(col: str) -> np.ndarray:  # optional columns: shards of older versions lack them
        return np.concatenate([s.table[col].to_numpy(np.float64) if col in s.table else np.full(len(s.table), np.nan) for s in shards])

    fwd, bwd = counts("g_evals"), counts("grad_steps")

    def cost(sel: np.ndarray) -> dict[str, Any]:
        ok = int((sel & lco_ok).sum())
        f, b = float(fwd[sel].sum()), float(bwd[sel].sum())
        ok = 0 if np.isnan(f + b) else ok
        out = {"forwards_per_success": round(f / ok, 3) if ok else None, "backwards_per_success": round(b / ok, 3) if ok else None}
        if backward_ratio is not None:
            out["fe_per_success"] = round(forward_equivalents(fwd[sel], bwd[sel], backward_ratio) / ok, 3) if ok else None
        return out
    space = resolve_label_space(labels, checker.label_names, thresholds, where=where)
    probs = checker_probs(generator, checker, space, z, batch_size)
    agree = agrees_with_target(probs, targets, space)  # the whole target
    calls = probs >= space.thresholds[space.used].astype(probs.dtype)[None, :]  # each label on its own, as on real scans
    keys = np.array([combo_key(t, labels) for t in targets])
    per: dict[str, dict[str, Any]] = {}
    for k in sorted(set(keys)):
        sel = keys == k
        per[k] = {
            "n": int(sel.sum()),
            "agreement": _rate(agree[sel]),
            "n_successful": int((sel & lco_ok).sum()),
            "agreement_successful": _rate(agree[sel & lco_ok]),
        }
    used = np.flatnonzero(space.used)
    prior = None
    if prior_samples > 0:
        dim = int(getattr(generator, "latent_dim", z.shape[1]))  # random latents carry no feature offset
        z_prior = initial_latents([seed], dim, prior_samples).reshape(prior_samples, dim).numpy()
        pp = checker_probs(generator, checker, space, z_prior, batch_size)
        prior = pp >= space.thresholds[used].astype(pp.dtype)[None, :]
    per_label: dict[str, dict[str, Any]] = {}
    for col, j in enumerate(used):
        sel = targets[:, j] == 1
        row = {
            "n_target": int(sel.sum()),
            "plan_rate": _rate(sel),
            "lco_success": _rate(lco_ok[sel]),
            "agreement_successful": _rate(agree[sel & lco_ok]),
            "seen_successful": _rate(calls[sel & lco_ok, col]),
            **cost(sel),
        }
        if prior is not None:
            row["prior_rate"] = _rate(prior[:, col])
        per_label[labels[j]] = row
    real = real_exact_match(checker_metrics)
    if real is not None:
        for k, row in per.items():
            ref = real["per_combination"].get(k, {})
            row["real_test_n"] = int(ref.get("n", 0))
            row["real_test_exact_match"] = ref.get("rate")
        real_labels = real.get("per_label") or {}
        for name, row in per_label.items():
            ref = real_labels.get(name, {})
            row["real_test_n_pos"] = ref.get("n_pos")
            row["real_test_tpr"] = ref.get("tpr")
            # the trust goal: agreement on released samples relative to what this checker sees on real ones
            tpr, agr, seen = row["real_test_tpr"], row["agreement_successful"], row["seen_successful"]
            row["agreement_over_real_tpr"] = None if not tpr or agr is None else round(agr / tpr, 6)
            row["seen_over_real_tpr"] = None if not tpr or seen is None else round(seen / tpr, 6)
    return {
        "labels": labels,
        "n": int(len(agree)),
        "overall": _rate(agree),
        "n_successful": int(lco_ok.sum()),
        "overall_successful": _rate(agree[lco_ok]),
        "lco_success_rate": _rate(lco_ok),
        "real_test_exact_match": None if real is None else real["rate"],
        "real_test_n": None if real is None else real["n"],
        "prior_samples": int(prior_samples),
        "backward_ratio": backward_ratio,
        "cost": cost(np.ones(len(lco_ok), bool)),
        "per_label": per_label,
        "per_combination": per,
    }


def run_agreement(
    latents_paths: Sequence[str | os.PathLike],
    generator_path: str | os.PathLike,
    classifier_path: str | os.PathLike,
    checker_path: str | os.PathLike,
    thresholds_path: str | os.PathLike,
    checker_metrics: str | os.PathLike,
    out_path: str | os.PathLike,
    batch_size: int = 64,
    device: str = "auto",
    prior_samples: int = 0,
    seed: int = 0,
    log_file: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Rule validate_lco: :func:`agreement` priced with the steering classifier's measured update/forward
    ratio (:func:`synthcxr.lco.cost.measure_ratio`; the generator is loaded once for both), logged and written
    to ``lco_agreement.json``."""
    from ..pggan import load_generator
    from ..utils.atomic import write_json
    from ..utils.runtime import resolve_device, setup_logging
    from .cost import measure_ratio

    log = setup_logging(log_file)
    G = load_generator(generator_path, resolve_device(device))
    timing = measure_ratio(G, classifier_path, batch_size)
    result = agreement(latents_paths, G, checker_path, thresholds_path, batch_size=batch_size, device=device,
                       checker_metrics=checker_metrics, prior_samples=prior_samples, seed=seed, backward_ratio=timing["ratio"])
    result["backward_timing"] = timing
    log.info(
        "checker agreement: %.3f over %d samples; %s over the %d LCO-successful ones; "
        "the checker's exact match on %s real test scans: %s",
        result["overall"], result["n"], result.get("overall_successful"), result.get("n_successful", 0),
        result["real_test_n"], result["real_test_exact_match"],
    )
    log.info("an LCO update costs %.2f forwards; %s forward-equivalents per LCO-successful sample", timing["ratio"],
             result["cost"]["fe_per_success"])
    for name, row in result["per_label"].items():
        log.info(
            "%s: %d targets, checker agrees on %s of the successful and sees the label on %s (%s of its real sensitivity); "
            "plan share %.4f, random latents %s; %s FE per success",
            name, row["n_target"], row["agreement_successful"], row["seen_successful"], row.get("seen_over_real_tpr"),
            row["plan_rate"], row.get("prior_rate"), row.get("fe_per_success"),
        )
    write_json(out_path, result)
    return result


def real_exact_match(path: str | os.PathLike | None) -> dict[str, Any] | None:
    """``test.exact_match`` of a classifier's ``metrics.json`` (written by train_classifier)."""
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())["test"]["exact_match"]
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: checker metrics missing; run the train_classifier stage first") from None
    except KeyError:
        raise ValueError(
            f"{path}: no test.exact_match entry (written by an older synthcxr); retrain the checker "
            "(snakemake train_classifier --forcerun train_classifier)"
        ) from None
