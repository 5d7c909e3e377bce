"""Ground-truth oracle of the phantom: what the released images really show, judged by a classifier of true findings.

No real collection knows which findings an image truly holds; the phantom does. The oracle is a classifier
trained on a separate phantom cohort rendered with the same look as the dataset but with clean labels,
findings drawn independently of each other and support devices independent of findings, so that it
cannot lean on label noise, co-occurrence or the device shortcut. It scores every released sample (does
the image show what its label says?) beside the checker, and the real test scans against their drawn
findings (how far the oracle itself can be trusted). A finding whose checker agreement exceeds the
oracle's by more than :data:`FOOLED_GAP` is flagged "checker fooled": both classifiers accept images that
do not show the finding.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data.phantom import CHEXNET_AUROC, FINDINGS, PhantomConfig, sample_cohort, true_labels
from ..data.splits import pseudonym
from ..metrics.auroc import auroc

log = logging.getLogger("synthcxr")

#: checker agreement minus oracle agreement above which a finding is flagged "checker fooled"
FOOLED_GAP = 0.10
#: defaults of config section validate.oracle
ORACLE_DEFAULTS: dict[str, Any] = {"n_patients": 3000, "prevalence": 0.2, "epochs": None, "width": 32, "seed_offset": 1000}


def oracle_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """validate.oracle with its defaults filled in."""
    return {**ORACLE_DEFAULTS, **dict((config.get("validate") or {}).get("oracle") or {})}


def has_oracle(config: Mapping[str, Any]) -> bool:
    """Only the phantom knows what it drew: every other format has no oracle."""
    return (config.get("dataset") or {}).get("format") == "phantom"


def oracle_cohort(phantom: Mapping[str, Any] | None, settings: Mapping[str, Any]) -> PhantomConfig:
    """The oracle's training cohort: the dataset's look, clean labels, independent findings and devices.

    Devices keep the dataset's overall rate (so the oracle has seen them) but are drawn whatever the findings.
    """
    main = PhantomConfig.from_section(phantom)
    rate = float(sample_cohort(main)["support_device"].mean()) if main.devices else 0.0
    return main.oracle(int(settings["n_patients"]), float(settings["prevalence"]), rate, int(settings["seed_offset"]))


def oracle_dataset_section(dataset: Mapping[str, Any], settings: Mapping[str, Any], res: int) -> dict[str, Any]:
    """The prepare stage's settings for the oracle cohort (rendered at the archive's resolution ``res``).

    ``dataset`` is the dataset stage section (with the global seed, device and labels), ``settings`` the
    filled-in validate.oracle (:func:`oracle_settings`). Samples the dataset's cohort for its device rate,
    so the prepare_oracle job calls it, not the Snakefile at parse time.
    """
    ds = dict(dataset)
    split = dict(ds.get("split") or {})
    return {
        **ds,
        "name": f"{ds['name']}-oracle",
        "max_res": int(res),
        "views": ["PA", "AP"],
        "split": {"train": 0.8, "val": 0.1, "test": 0.1, "seed": int(split.get("seed", 0))},
        "phantom": oracle_cohort(ds.get("phantom"), settings).as_dict(),
    }


def oracle_run_settings(classifier: Mapping[str, Any], config: Mapping[str, Any], res: int) -> dict[str, Any]:
    """The classifier recipe for the oracle: the dataset's recipe at ``res``, its own width, epochs and seed."""
    settings = oracle_settings(config)
    run = {k: v for k, v in classifier.items() if k != "checker"}
    run.update(
        name="oracle",
        input_res=int(res),
        width=int(settings["width"]),
        epochs=int(settings["epochs"] or run["epochs"]),
        patience=int(settings["epochs"] or run["epochs"]),
        threshold_method="fixed",
        select_on="bce",
        seed_offset=7,
    )
    return run


def drawn_findings(phantom: Mapping[str, Any] | None, salt: str) -> pd.DataFrame:
    """The drawn findings of every study of the phantom cohort, indexed by the prepared ``image_id``
    (the salted pseudonym prepare gives each source id, ``dataset.patient_salt``)."""
    truth = true_labels(sample_cohort(PhantomConfig.from_section(phantom)))
    truth.index = [pseudonym(i, salt) for i in truth.index]
    return truth


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """Wilson score 95 % interval of the proportion ``k / n`` (None when ``n`` is 0)."""
    if n <= 0:
        return None
    p = k / n
    den = 1.0 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, min(p, mid - half)), min(1.0, max(p, mid + half))  # holds p despite rounding (k = 0 or n)


def _rate(k: int, n: int) -> dict[str, Any]:
    ci = wilson(k, n)
    return {"k": int(k), "n": int(n), "rate": (k / n) if n else None, "ci95": list(ci) if ci else None}


def released_agreement(
    labels: np.ndarray, oracle_calls: np.ndarray, checker_calls: np.ndarray, names: Sequence[str], gap: float = FOOLED_GAP
) -> dict[str, Any]:
    """Per finding, over the released samples labelled with it: how many the oracle and the checker confirm;
    over those labelled without it (``unrequested``): how many the oracle and the checker still call it on.

    ``labels``/``*_calls``: ``[n, F]`` 0/1 over the findings ``names``.
    """
    out: dict[str, Any] = {}
    for j, name in enumerate(names):
        pos = labels[:, j] >= 0.5
        neg = ~pos
        n = int(pos.sum())
        o, c = _rate(int(oracle_calls[pos, j].sum()), n), _rate(int(checker_calls[pos, j].sum()), n)
        diff = (c["rate"] - o["rate"]) if n else None
        out[name] = {
            "n_requested": n,
            "oracle": o,
            "checker": c,
            "checker_minus_oracle": diff,
            "checker_fooled": bool(diff is not None and diff > gap),
            "unrequested": {
                "oracle": _rate(int(oracle_calls[neg, j].sum()), int(neg.sum())),
                "checker": _rate(int(checker_calls[neg, j].sum()), int(neg.sum())),
            },
        }
    return out


def label_truth(labels: np.ndarray, oracle_calls: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Share of the released (TSTR's synthetic) labels the oracle finds true: per finding, overall, whole samples."""
    agree = (labels >= 0.5) == (oracle_calls >= 0.5)
    n = len(labels)
    return {
        "n_samples": int(n),
        "share_true": float(agree.mean()) if n else None,
        "samples_all_true": _rate(int(agree.all(axis=1).sum()), n),
        "per_label": {name: _rate(int(agree[:, j].sum()), n) for j, name in enumerate(names)},
    }


def real_test_scores(truth: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """AUROC, sensitivity and specificity of ``probs`` against the drawn findings ``truth`` (``[n, F]``)."""
    out = {}
    for j, name in enumerate(names):
        y, p = truth[:, j].astype(int), probs[:, j]
        call = p >= thresholds[j]
        n_pos, n_neg = int(y.sum()), int((1 - y).sum())
        out[name] = {
            "n_positive": n_pos,
            "auroc": auroc(y, p) if 0 < n_pos < len(y) else None,
            "sensitivity": _rate(int((call & (y == 1)).sum()), n_pos),
            "specificity": _rate(int((~call & (y == 0)).sum()), n_neg),
        }
    return out


def load_for_labels(model_path: str | os.PathLike, names: Sequence[str], device):
    """A saved classifier, checked to have an output for every label in ``names``."""
    from ..classifier import load_classifier

    model = load_classifier(model_path, device)
    missing = [n for n in names if n not in model.label_names]
    if missing:
        raise KeyError(f"{model_path}: classifier lacks label(s) {missing}; it has {list(model.label_names)}")
    return model


def model_probs(model, images: np.ndarray, names: Sequence[str], device, batch_size: int) -> np.ndarray:
    """Probabilities ``[n, F]`` of a loaded classifier over ``names``, for uint8 images at any resolution."""
    from ..classifier.evaluate import predict
    from ..imagesets import ArrayImages

    have = list(model.label_names)
    if not len(images):
        return np.zeros((0, len(names)))
    probs, _ = predict(model, ArrayImages(images), batch_size=batch_size, device=device)
    return probs[:, [have.index(n) for n in names]]


def _release_images(release: str | os.PathLike, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """All released images (uint8 ``[n, R, R]``) and their labels over ``names``, in the same order."""
    from .. import archive

    arc = archive.open(release, sealed=False)  # validation runs before the release is sealed
    missing = [n for n in names if n not in arc.label_names]
    if missing:
        raise KeyError(f"{Path(release) / 'manifest.parquet'}: archive lacks label(s) {missing}")
    by_id = arc.manifest.set_index(arc.manifest["sample_id"].astype(str))
    ids, images = [], []
    for batch_ids, batch in arc.iter_batches():
        ids += batch_ids
        images.append(batch)
    if not ids:
        return np.zeros((0, arc.resolution, arc.resolution), np.uint8), np.zeros((0, len(names)), np.float32)
    return np.concatenate(images), by_id.loc[ids, list(names)].to_numpy(dtype=np.float32)


def oracle_report(
    release: str | os.PathLike,
    prepared: str | os.PathLike,
    phantom: Mapping[str, Any] | None,
    oracle_model: str | os.PathLike,
    checker_model: str | os.PathLike,
    checker_thresholds: str | os.PathLike,
    steering_model: str | os.PathLike,
    labels: Sequence[str],
    salt: str,
    device: str = "cpu",
    batch_size: int = 128,
    oracle_metrics: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """``oracle.json``: released samples judged by the oracle and the checker, the oracle's own test record,
    the share of synthetic labels that are true, and the steering classifier against reported and drawn labels."""
    from ..classifier.evaluate import load_thresholds
    from ..utils.runtime import resolve_device
    from .common import real_images  # torch: imported by the rule's job, not by the card or the Snakefile

    dev = resolve_device(device)
    names = [n for n in labels if n in FINDINGS]
    oracle_thr = load_thresholds(Path(oracle_model).parent / "thresholds.json", names)
    checker_thr = load_thresholds(checker_thresholds, names)
    oracle = load_for_labels(oracle_model, names, dev)

    images, lab = _release_images(release, names)
    res = int(images.shape[-1])
    o_probs = model_probs(oracle, images, names, dev, batch_size)
    c_probs = model_probs(load_for_labels(checker_model, names, dev), images, names, dev, batch_size)
    o_calls, c_calls = (o_probs >= oracle_thr).astype(int), (c_probs >= checker_thr).astype(int)
    released = released_agreement(lab, o_calls, c_calls, names)

    from ..data.store import PreparedDataset  # loads torch: not while the workflow builds the DAG

    ds = PreparedDataset(prepared)
    rows = ds.split("test")
    truth_all = drawn_findings(phantom, salt)
    ids = rows["image_id"].astype(str).to_numpy()
    unknown = [i for i in ids if i not in truth_all.index]
    if unknown:
        raise KeyError(
            f"{ds.labels_path}: {len(unknown)} test image(s) (e.g. {unknown[0]!r}) are not in the phantom cohort of "
            "dataset.phantom; rerun prepare after changing the cohort"
        )
    truth = truth_all.loc[ids, names].to_numpy()
    reported = ds.label_matrix(rows, names)
    real = real_images(ds, rows["row"].to_numpy(), res).read()
    o_real = model_probs(oracle, real, names, dev, batch_size)
    s_real = model_probs(load_for_labels(steering_model, names, dev), real, names, dev, batch_size)
    steering = {}
    for j, name in enumerate(names):
        y_rep, y_true = reported[:, j], truth[:, j]
        ok = ~np.isnan(y_rep)
        rep_auc = auroc(y_rep[ok].astype(int), s_real[ok, j]) if 0 < np.nansum(y_rep) < ok.sum() else None
        steering[name] = {
            "auroc_reported_labels": rep_auc,
            "auroc_drawn_findings": auroc(y_true.astype(int), s_real[:, j]) if 0 < y_true.sum() < len(y_true) else None,
            "reported_labels_true": float((y_rep[ok] == y_true[ok]).mean()) if ok.any() else None,
            "chexnet_auroc": CHEXNET_AUROC.get(name),
            "minus_chexnet": None if rep_auc is None or name not in CHEXNET_AUROC else rep_auc - CHEXNET_AUROC[name],
        }
    clean = None
    if oracle_metrics and Path(oracle_metrics).exists():
        m = json.loads(Path(oracle_metrics).read_text())
        clean = {n: ((m.get("test") or {}).get("per_label") or {}).get(n, {}).get("auroc") for n in names}
    fooled = [n for n, r in released.items() if r["checker_fooled"]]
    return {
        "what": "released samples judged by a classifier of the phantom's drawn findings (the oracle) beside the checker",
        "fooled_rule": f"checker agreement - oracle agreement > {FOOLED_GAP:g}",
        "findings": names,
        "resolution": int(res),
        "released": {"n": int(len(images)), "per_finding": released},
        "checker_fooled": fooled,
        "synthetic_labels": label_truth(lab, o_calls, names),
        "oracle": {
            "model": str(oracle_model),
            "clean_test_auroc": clean,
            "real_test": {"n": int(len(rows)), "per_finding": real_test_scores(truth, o_real, oracle_thr, names)},
        },
        "steering_real_test": steering,
        "steering_vs_chexnet": calibration(steering),
    }


def calibration(steering: Mapping[str, Mapping[str, Any]], tolerance: float = 0.05, mean_tolerance: float = 0.03) -> dict[str, Any]:
    """The steering classifier's test AUROC (reported labels) against CheXNet's, per finding and on average:
    the realistic preset's calibration goal (each within ``tolerance``, the mean within ``mean_tolerance``)."""
    rows = {n: r for n, r in steering.items() if r.get("minus_chexnet") is not None}
    if not rows:
        return {"n_findings": 0}
    mean_diff = float(np.mean([r["auroc_reported_labels"] for r in rows.values()]) - np.mean([r["chexnet_auroc"] for r in rows.values()]))
    return {
        "n_findings": len(rows),
        "mean_steering": float(np.mean([r["auroc_reported_labels"] for r in rows.values()])),
        "mean_chexnet": float(np.mean([r["chexnet_auroc"] for r in rows.values()])),
        "mean_minus_chexnet": mean_diff,
        "outside_tolerance": [n for n, r in rows.items() if abs(r["minus_chexnet"]) > tolerance],
        "within_goal": bool(all(abs(r["minus_chexnet"]) <= tolerance for r in rows.values()) and abs(mean_diff) <= mean_tolerance),
        "tolerance": tolerance,
        "mean_tolerance": mean_tolerance,
    }


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f} %"


def summary_lines(result: Mapping[str, Any]) -> list[str]:
    """One log line per finding and one for the synthetic labels, from an ``oracle_report`` result."""
    lines = []
    real = result["oracle"]["real_test"]["per_finding"]
    for name, r in result["released"]["per_finding"].items():
        o, c = r["oracle"], r["checker"]
        lines.append(
            f"{name}: {r['n_requested']} released; oracle confirms {_pct(o['rate'])}, checker {_pct(c['rate'])}"
            + (" -> CHECKER FOOLED" if r["checker_fooled"] else "")
            + f"; called on {_pct(r['unrequested']['oracle']['rate'])} (oracle) / {_pct(r['unrequested']['checker']['rate'])} (checker) "
            "of the samples labelled without it"
            + f"; oracle on real test: AUROC {real[name]['auroc'] if real[name]['auroc'] is None else round(real[name]['auroc'], 3)}, "
            f"sensitivity {_pct(real[name]['sensitivity']['rate'])}, specificity {_pct(real[name]['specificity']['rate'])}"
        )
    cal = result.get("steering_vs_chexnet") or {}
    if cal.get("n_findings"):
        lines.append(
            f"steering classifier vs CheXNet: mean test AUROC {cal['mean_steering']:.3f} vs {cal['mean_chexnet']:.3f}; "
            f"outside +-{cal['tolerance']:g}: {cal['outside_tolerance'] or 'none'}"
        )
    lab = result["synthetic_labels"]
    lines.append(
        f"synthetic labels true (oracle): {_pct(lab['share_true'])} of label entries, "
        f"{_pct(lab['samples_all_true']['rate'])} of samples entirely"
    )
    return lines


def card_section(result: Mapping[str, Any] | None, fmt: str) -> list[str]:
    """The dataset card's oracle section: the table, or why there is none (every format but the phantom)."""
    if fmt != "phantom":
        return [
            "### Ground-truth oracle", "",
            f"No oracle exists for this archive: its source (format `{fmt}`) records what readers reported, not what "
            "each image truly shows, so no classifier of true findings can judge the samples. Only the built-in "
            "phantom, which knows what it drew, has one.", "",
        ]
    if result is None:
        return []
    real = result["oracle"]["real_test"]["per_finding"]
    lab = result["synthetic_labels"]
    rows = [
        "### Ground-truth oracle", "",
        "A classifier of the phantom's drawn findings (trained on a separate cohort with clean labels and with "
        "findings and devices drawn independently) judged every released sample. Shares of the samples labelled "
        f"with each finding that it and the checker confirm (Wilson 95 % intervals); {result['fooled_rule']} flags "
        "the checker as fooled.", "",
        "| finding | released | oracle confirms | checker confirms | flag | seen where not labelled (oracle / checker) | oracle AUROC on real test (drawn findings) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in result["released"]["per_finding"].items():
        o, c = r["oracle"], r["checker"]
        ci = lambda d: "" if d["ci95"] is None else f" [{100 * d['ci95'][0]:.0f}, {100 * d['ci95'][1]:.0f}]"  # noqa: E731
        auc = real[name]["auroc"]
        rows.append(
            f"| {name} | {r['n_requested']} | {_pct(o['rate'])}{ci(o)} | {_pct(c['rate'])}{ci(c)} | "
            f"{'checker fooled' if r['checker_fooled'] else ''} | "
            f"{_pct(r['unrequested']['oracle']['rate'])} / {_pct(r['unrequested']['checker']['rate'])} | "
            f"{'n/a' if auc is None else f'{auc:.3f}'} |"
        )
    rows += [
        "",
        f"The oracle finds {_pct(lab['share_true'])} of the released label entries true, and every label of "
        f"{_pct(lab['samples_all_true']['rate'])} of the samples. The oracle's sensitivity and specificity are "
        "measured on real scans; on generated images it may read artefacts as findings, so a finding it sees where "
        "neither label nor checker does is a question for readers, not a verdict.", "",
    ]
    return rows
