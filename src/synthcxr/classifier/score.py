"""Score a trained classifier on any prepared dataset at its own operating points (``synthcxr score-classifier``).

``metrics.json`` scores a classifier on its own test split. A rare finding may have only a handful of
test scans there, so how often the classifier (the LCO checker above all) recognises it is barely
measured. This module scores a ``model.pt`` on another prepared dataset, e.g. a fresh phantom cohort or
a second site's scans: per-label sensitivity and false-positive rate, and the exact-match rate per label
combination (the rule LCO's checker applies to generated images).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data.store import PreparedDataset
from ..utils.atomic import write_json
from ..utils.runtime import resolve_device
from .evaluate import exact_match, load_thresholds, predict
from .sources import pick_res, prepared_split

SPLITS = ("train", "val", "test")


def score_prepared(
    model_path: str | os.PathLike,
    folder: str | os.PathLike,
    splits: Sequence[str] = ("test",),
    thresholds_path: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int = 128,
) -> dict[str, Any]:
    """``exact_match`` of the classifier in ``model_path`` over ``splits`` of the prepared dataset ``folder``.

    Thresholds come from ``thresholds_path`` (default: ``thresholds.json`` beside ``model.pt``). Every
    label of the classifier must be a column of the dataset; the error names the ones missing.
    """
    from . import load_classifier

    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise ValueError(f"unknown split(s) {bad}; choose from {list(SPLITS)}")
    dev = resolve_device(device)
    model = load_classifier(model_path, dev)
    names = list(model.label_names)
    thr_path = Path(thresholds_path) if thresholds_path is not None else Path(model_path).parent / "thresholds.json"
    thr = load_thresholds(thr_path, names)
    ds = PreparedDataset(folder)
    probs, ys, used = [], [], []
    for split in splits:
        if len(ds.split(split)) == 0:
            continue
        part = prepared_split(ds, split, names, pick_res(ds.resolutions, model.input_res, os.fspath(folder)))
        p, y = predict(model, part.dataset, batch_size=batch_size, device=dev)
        probs.append(p)
        ys.append(y)
        used.append(split)
    if not used:
        raise ValueError(f"{ds.labels_path}: splits {list(splits)} hold no images")
    out = exact_match(np.concatenate(ys), np.concatenate(probs), thr, names)
    return {
        "model": os.fspath(model_path),
        "dataset": os.fspath(folder),
        "splits": used,
        "thresholds": {n: float(t) for n, t in zip(names, thr)},
        **out,
    }


def format_report(result: dict[str, Any], min_n: int = 1) -> str:
    """Plain-text tables of ``score_prepared``'s result; combinations with fewer than ``min_n`` images are left out."""

    def pct(v: float | None) -> str:
        return "   n/a" if v is None else f"{100 * v:5.1f}%"

    lines = [
        f"{result['model']} on {result['dataset']} [{', '.join(result['splits'])}]: "
        f"{result['n']} images, exact match {pct(result['rate']).strip()}",
        "",
        f"{'label':<16}{'positives':>10}{'sensitivity':>13}{'negatives':>11}{'false pos.':>12}",
    ]
    for name, row in result["per_label"].items():
        lines.append(f"{name:<16}{row['n_pos']:>10}{pct(row['tpr']):>13}{row['n_neg']:>11}{pct(row['fpr']):>12}")
    combos = sorted(result["per_combination"].items(), key=lambda kv: (-kv[1]["n"], kv[0]))
    lines += ["", f"{'combination':<44}{'images':>8}{'exact match':>13}"]
    lines += [f"{k:<44}{v['n']:>8}{pct(v['rate']):>13}" for k, v in combos if v["n"] >= min_n]
    return "\n".join(lines)


def cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="synthcxr score-classifier", description=__doc__.splitlines()[0])
    ap.add_argument("model", help="model.pt written by the train_classifier stage")
    ap.add_argument("dataset", help="prepared dataset folder (images.h5 + labels.parquet)")
    ap.add_argument("--splits", default="test", help="comma-separated splits to score, or 'all' (default: test)")
    ap.add_argument("--thresholds", default=None, help="thresholds.json (default: the one beside model.pt)")
    ap.add_argument("--min-n", type=int, default=5, help="print combinations with at least this many images (default 5)")
    ap.add_argument("--json", default=None, help="also write the full result to this JSON file")
    ap.add_argument("--device", default="auto", help="auto (cuda when present) | cpu | cuda | cuda:N")
    args = ap.parse_args(argv)
    splits = list(SPLITS) if args.splits == "all" else [s.strip() for s in args.splits.split(",") if s.strip()]
    try:
        result = score_prepared(args.model, args.dataset, splits, args.thresholds, args.device)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"synthcxr score-classifier: {exc}", file=sys.stderr)
        return 2
    print(format_report(result, args.min_n))
    if args.json:
        write_json(args.json, result)
    return 0
