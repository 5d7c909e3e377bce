"""Train on synthetic, test on real (TSTR), beside real-trained, real + synthetic (augmentation) and
synthetic-pretrain -> real-finetune arms, each at several shares of the real training patients.

The question a user asks is whether the archive helps a classifier that has few real positives, so every
arm but the synthetic one is trained at each of ``validate.tstr_real_fractions``: nested subsets of the
real training patients (:func:`synthcxr.classifier.sources.patient_subset`), the same for every arm and
seed, so differences from the real arm at one fraction are paired.

If the archive carries the label information of the real data, a classifier trained only on it should
score real images nearly as well as one trained on real images; how users will mostly use the archive
is augmentation, so real + synthetic is measured too. All three arms are trained fresh here with the
``classifier`` section's recipe (architecture, epochs, optimiser, augmentation), ``validate.tstr_seeds``
seeds each (the same seeds across arms, so comparisons are paired), early stopping off, and the same
number of optimisation steps: every arm draws as many images per epoch as the real train split holds
(sampling with replacement from a set of another size). Every run is scored on the same real test split
by the same code; per finding the result gives the mean and standard deviation over seeds, the AUROC of
the seed ensemble (mean probability) with a patient-clustered bootstrap CI, and the paired difference of
each arm's ensemble from the real arm's, with a CI that resamples test patients.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..classifier.evaluate import predict
from ..classifier.sources import patient_subset
from ..classifier.train import ClassifierConfig
from ..data.store import PreparedDataset
from ..labels import NO_FINDING
from ..metrics.auroc import auroc, mean_auroc
from ..metrics.bootstrap import bootstrap_ci
from ..utils.atomic import write_json
from ..utils.runtime import resolve_device, setup_logging
from . import figures

log = logging.getLogger("synthcxr")


def _num(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


@torch.no_grad()
def predict_split(
    model: torch.nn.Module, prep: PreparedDataset, split: str, labels: list[str], batch_size: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """``(labels [n, L], probabilities [n, L])`` of ``model`` on a prepared split (model's input res)."""
    res = int(getattr(model, "input_res"))
    level = res if res in prep.resolutions else max(prep.resolutions)
    ds = prep.images(split, level, labels)
    p, y = predict(model, ds, batch_size, device)
    return y.astype(np.float64), p


#: Key of the mean-over-findings entry in each arm's ``difference_from_real``.
MEAN_FINDINGS = "mean_findings"


def paired_difference(
    y: np.ndarray,
    p_real: np.ndarray,
    p_syn: np.ndarray,
    labels: list[str],
    n_boot: int,
    seed: int,
    groups: np.ndarray | None = None,
    mean_over: list[int] | None = None,
) -> dict[str, dict]:
    """Per-label AUROC(synthetic) - AUROC(real) with a paired percentile bootstrap CI over test patients
    (``groups``: patient key per image; None resamples images). With ``mean_over`` (label columns, e.g. the
    findings) the result also holds ``mean_findings``: the difference of the mean AUROC over those columns,
    its interval from the same resamples."""

    def stat(yy, a, b):
        per = np.array([auroc(yy[:, j], b[:, j]) - auroc(yy[:, j], a[:, j]) for j in range(yy.shape[1])])
        return per if mean_over is None else np.r_[per, mean_auroc(per[mean_over])]

    point = stat(y, p_real, p_syn)
    if n_boot > 0:
        lo, hi = bootstrap_ci(stat, y, p_real, p_syn, n=n_boot, seed=seed, clusters=groups)
    else:
        lo = hi = np.full_like(point, np.nan)
    names = list(labels) + ([MEAN_FINDINGS] if mean_over is not None else [])
    return {n: {"delta": _num(point[j]), "ci_low": _num(lo[j]), "ci_high": _num(hi[j])} for j, n in enumerate(names)}


ARMS = ("real", "synthetic", "real+synthetic", "pretrain_finetune")


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    v = np.array([np.nan if x is None else x for x in values], dtype=np.float64)
    v = v[~np.isnan(v)]
    if not len(v):
        return None, None
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else 0.0)


def summarise_arms(
    y: np.ndarray,
    probs: dict[str, list[np.ndarray]],
    labels: list[str],
    groups: np.ndarray | None,
    n_boot: int,
    seed: int,
    target: float = 0.80,
) -> dict:
    """tstr.json content from each arm's per-seed test probabilities (see the module docstring)."""
    findings = [n for n in labels if n != NO_FINDING]
    fcols = [labels.index(n) for n in findings]
    arms: dict[str, dict] = {}
    ensembles = {arm: np.mean(np.stack(ps), axis=0) for arm, ps in probs.items()}
    for arm, ps in probs.items():
        per_seed = np.array([[auroc(y[:, j], p[:, j]) for j in range(len(labels))] for p in ps])
        ens = ensembles[arm]

        def stat(yy, pp):
            per = np.array([auroc(yy[:, j], pp[:, j]) for j in range(yy.shape[1])])
            return np.r_[per, mean_auroc(per[fcols])]

        point = stat(y, ens)
        lo, hi = bootstrap_ci(stat, y, ens, n=n_boot, seed=seed, clusters=groups) if n_boot > 0 else (
            np.full_like(point, np.nan), np.full_like(point, np.nan))
        per_label = {}
        for j, n in enumerate(labels):
            mean, sd = _mean_sd(list(per_seed[:, j]))
            per_label[n] = {
                "auroc_mean": mean, "auroc_sd": sd, "auroc_per_seed": [_num(v) for v in per_seed[:, j]],
                "ensemble_auroc": _num(point[j]), "ci_low": _num(lo[j]), "ci_high": _num(hi[j]),
            }
        seed_means = [mean_auroc(row[fcols]) for row in per_seed]
        mean, sd = _mean_sd(seed_means)
        arms[arm] = {
            "per_label": per_label,
            "mean_auroc_findings": mean,
            "mean_auroc_findings_sd": sd,
            "mean_auroc_findings_per_seed": [_num(v) for v in seed_means],
            "ensemble_mean_auroc_findings": _num(point[-1]),
            "ensemble_mean_auroc_findings_ci": [_num(lo[-1]), _num(hi[-1])],
        }
    diffs = {
        arm: paired_difference(y, ensembles["real"], ensembles[arm], labels, n_boot, seed + 1, groups, mean_over=fcols)
        for arm in probs if arm != "real" and "real" in probs
    }
    syn = arms.get("synthetic", {}).get("mean_auroc_findings")
    return {
        "labels": labels,
        "findings": findings,
        "split": "test",
        "ci": {"n_boot": n_boot, "resampling": "test patients" if groups is not None else "test images"},
        "arms": arms,
        "difference_from_real": diffs,
        "mean_auroc_findings": {arm: a["mean_auroc_findings"] for arm, a in arms.items()},
        "target_mean_auroc": target,
        "meets_target": bool(syn is not None and syn >= target),
    }


def _frac_key(f: float) -> str:
    return f"{float(f):g}"


def run_tstr(
    clf: ClassifierConfig,
    archive_dir: str | os.PathLike,
    prepared_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    out_json: str | os.PathLike,
    out_png: str | os.PathLike,
    seeds: int = 3,
    log_file: str | os.PathLike | None = None,
    epochs: int | None = None,
    trainer: Callable[..., dict] | None = None,
    loader: Callable[..., torch.nn.Module] | None = None,
    real_fractions: Sequence[float] = (1.0,),
    arms: Sequence[str] = ARMS,
    synthetic_share: float | None = None,
    out_fractions_png: str | os.PathLike | None = None,
) -> dict:
    """Stage entry point: trains every arm x real fraction x seed under ``out_dir``; writes tstr.json + figures.

    ``epochs`` (``validate.tstr_epochs``) overrides the recipe's epoch count for every arm alike; ``None``
    keeps the classifier's own. ``real_fractions`` are nested shares of the real training patients
    (``validate.tstr_real_fractions``); the synthetic arm does not depend on them and is trained once
    per seed. ``synthetic_share`` (``validate.tstr_synthetic_share``) fixes the share of synthetic images
    in each real + synthetic epoch (None: as many as the two sets hold). The synthetic-pretrain ->
    real-finetune arm trains ceil(epochs / 2) epochs on the archive (once per seed) and the rest on the
    real fraction from those weights, so it takes the same steps as every other arm. The top-level
    ``arms`` / ``difference_from_real`` of tstr.json are those of the largest fraction; ``fractions``
    holds every fraction's. ``trainer``/``loader`` default to
    :func:`synthcxr.classifier.train_classifier` / ``load_classifier``.
    """
    setup_logging(log_file)
    if seeds < 1:
        raise ValueError(f"validate.tstr_seeds: must be at least 1, got {seeds}")
    if epochs is not None and epochs < 1:
        raise ValueError(f"validate.tstr_epochs: must be at least 1 (or null for the classifier's own), got {epochs}")
    fractions = sorted({float(f) for f in real_fractions})
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ValueError(f"validate.tstr_real_fractions: each must be in (0, 1], got {list(real_fractions)}")
    unknown = [a for a in arms if a not in ARMS]
    if unknown or "real" not in arms:
        raise ValueError(f"validate.tstr_arms: {list(arms)} must include 'real' and hold only {list(ARMS)}")
    arms = [a for a in ARMS if a in arms]
    if trainer is None or loader is None:
        from ..classifier import load_classifier, train_classifier

        trainer = trainer or train_classifier
        loader = loader or load_classifier
    base = dataclasses.replace(clf, epochs=int(epochs if epochs is not None else clf.epochs))
    if "pretrain_finetune" in arms and base.epochs < 2:
        raise ValueError("validate.tstr_arms: pretrain_finetune needs at least 2 epochs (validate.tstr_epochs)")
    labels = list(base.labels)
    prep = PreparedDataset(prepared_dir)
    n_real = int((prep.table["split"] == "train").sum())  # images per epoch in every run: equal steps
    real, syn = str(prepared_dir), str(archive_dir)
    device = resolve_device(base.device)
    bs = base.batch_size * 2
    probs: dict[str, dict[str, list[np.ndarray]]] = {_frac_key(f): {a: [] for a in arms} for f in fractions}
    runs: dict[str, dict[str, list[dict]]] = {_frac_key(f): {a: [] for a in arms} for f in fractions}
    y_ref = None

    def train(arm: str, frac: float, k: int, source, run_dir: Path, **extra) -> tuple[dict, np.ndarray]:
        nonlocal y_ref
        sec = dataclasses.replace(base, name=f"tstr-{arm}-{_frac_key(frac)}-seed{k}", seed_offset=100 + k, samples_per_epoch=n_real,
                                  patience=base.epochs + 1, bootstrap=0, real_fraction=frac, **extra)
        log.info("TSTR: arm %s, real fraction %g, seed %d/%d: %d images per epoch, %d epochs",
                 arm, frac, k + 1, seeds, n_real, sec.epochs)
        m = trainer(sec, source, prepared_dir, run_dir, log_file)
        setup_logging(log_file)  # the trainer may have reconfigured logging
        y, p = predict_split(loader(run_dir / "model.pt", device), prep, "test", labels, bs, device)
        if y_ref is None:
            y_ref = y
        elif not np.array_equal(np.nan_to_num(y, nan=-1), np.nan_to_num(y_ref, nan=-1)):
            raise RuntimeError("test labels differ between runs; the prepared dataset changed mid-run")
        return {"seed_offset": 100 + k, "real_fraction": frac, "n_train": m.get("n_train"), "steps": m.get("steps"),
                "epochs_run": m.get("epochs_run"), "best_epoch": m.get("best_epoch"), "init_from": m.get("init_from")}, p

    out = Path(out_dir)
    e_pre = (base.epochs + 1) // 2
    for k in range(seeds):
        shared: dict[str, tuple[dict, np.ndarray]] = {}
        if "synthetic" in arms:
            shared["synthetic"] = train("synthetic", 1.0, k, syn, out / "synthetic" / f"seed{k}")
        pre_dir = out / "pretrain" / f"seed{k}"
        if "pretrain_finetune" in arms:
            info, _ = train("pretrain", 1.0, k, syn, pre_dir, epochs=e_pre)
        for f in fractions:
            key = _frac_key(f)
            tag = f"frac{key}"
            for arm in arms:
                if arm == "synthetic":
                    r, p = shared["synthetic"]
                elif arm == "real":
                    r, p = train(arm, f, k, real, out / tag / "real" / f"seed{k}")
                elif arm == "real+synthetic":
                    r, p = train(arm, f, k, [real, syn], out / tag / "real_synthetic" / f"seed{k}", synthetic_share=synthetic_share)
                else:
                    r, p = train(arm, f, k, real, out / tag / "pretrain_finetune" / f"seed{k}",
                                 epochs=base.epochs - e_pre, init_from=str(pre_dir / "model.pt"))
                    r = {**r, "steps": (r["steps"] or 0) + (info["steps"] or 0), "pretrain_steps": info["steps"]}
                probs[key][arm].append(p)
                runs[key][arm].append(r)
    test_rows = prep.split("test")
    groups = test_rows["patient_key"].to_numpy() if "patient_key" in test_rows.columns else None
    n_boot, bseed = clf.bootstrap, clf.seed + 5
    per_fraction = {key: summarise_arms(y_ref, probs[key], labels, groups, n_boot, bseed) for key in probs}
    keys = prep.split("train")["patient_key"].to_numpy()
    top = _frac_key(fractions[-1])
    result = dict(per_fraction[top])
    result["real_fraction"] = fractions[-1]
    result["fractions"] = {
        key: {**per_fraction[key], "runs": runs[key],
              "n_real_patients": len(np.unique(keys[patient_subset(keys, float(key), base.seed)]))}
        for key in per_fraction
    }
    result["real_fractions"] = fractions
    result["arms_run"] = arms
    result["synthetic_share"] = synthetic_share
    result["pretrain_epochs"] = e_pre if "pretrain_finetune" in arms else None
    result["seeds"] = seeds
    result["epochs"] = base.epochs
    result["runs"] = runs[top]
    result["steps_per_run"] = sorted({r["steps"] for rf in runs.values() for rs in rf.values() for r in rs if r["steps"] is not None})
    write_json(out_json, result)
    findings = result["findings"]
    bars = {
        f"{arm}-trained": {n: {"auroc": a["per_label"][n]["ensemble_auroc"], "ci_low": a["per_label"][n]["ci_low"],
                               "ci_high": a["per_label"][n]["ci_high"]} for n in findings}
        for arm, a in result["arms"].items()
    }
    figures.auroc_bars(findings, bars, out_png, title=f"Per-finding AUROC on the real test split ({seeds}-seed ensembles)")
    if out_fractions_png is not None:
        figures.auroc_vs_fraction(findings, {float(k): v["arms"] for k, v in per_fraction.items()}, out_fractions_png)
    fmt = lambda v: "nan" if v is None else f"{v:.3f}"  # noqa: E731
    for key in per_fraction:
        parts = [f"{arm} {fmt(a['mean_auroc_findings'])} +- {fmt(a['mean_auroc_findings_sd'])}" for arm, a in per_fraction[key]["arms"].items()]
        msg = (f"TSTR at {key} of the real patients: mean AUROC over findings on real test ({seeds} seeds, "
               f"{result['steps_per_run']} steps each): " + "; ".join(parts))
        log.info(msg)
        print(msg)
    log.info("TSTR: synthetic target >= %.2f: %s", result["target_mean_auroc"], "met" if result["meets_target"] else "NOT met")
    return result
