"""Score a reader study: can radiologists tell generated scans from real ones?

The question is answered per reader and pooled: accuracy with an exact (Clopper-Pearson) 95% CI
and an exact two-sided binomial test against chance (p = 0.5), an equivalence test (TOST, exact
binomial) against a margin around 0.5, the rating AUC with a bootstrap CI, sensitivity/specificity with
"fake" as the positive class, and the share of generated images called real (the headline number
for a generator: high means readers were fooled). Agreement between readers (Cohen's kappa per
pair, Fleiss' kappa across everyone on the images all readers answered) shows whether readers key
on the same cues or guess independently.

Input is the answer key written by :mod:`synthcxr.reader_study.kit` and the CSV files the reader
page exports, read and checked by :mod:`.answers`; the statistics live in :mod:`.stats`. This module
puts them together (:func:`score`), formats the summary and draws the figure.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..utils.atomic import atomic_path, write_json, write_text
from .answers import CLASSES, read_answers, read_key
from .stats import accuracy_stats, cohen_kappa, fleiss_kappa, rating_auc, rating_auc_ci, verdict

log = logging.getLogger("synthcxr")


def score(key: pd.DataFrame, answers: pd.DataFrame, margin: float = 0.1) -> dict[str, Any]:
    """Per-reader and pooled statistics plus inter-reader agreement, as a JSON-able dict.

    ``margin`` is the equivalence margin of the TOST (``reader_study.equivalence_margin``).
    """
    merged = answers.merge(key[["image", "truth"]], on="image", how="left", validate="many_to_one")
    readers = sorted(merged["reader"].unique())
    per_reader = {}
    for r in readers:
        sub = merged[merged["reader"] == r]
        st = accuracy_stats(sub["truth"], sub["answer"], margin)
        st["rating_auc"], st["n_rated"] = rating_auc(sub["truth"], sub["answer"], sub["confidence"])
        st["rating_auc_ci"] = list(rating_auc_ci(sub["truth"], sub["answer"], sub["confidence"]))
        st["verdict"] = verdict(st)
        st["coverage"] = len(sub) / len(key)
        st["mean_confidence"] = float(sub["confidence"].mean()) if sub["confidence"].notna().any() else float("nan")
        st["files"] = sorted(set(sub["file"]))
        per_reader[r] = st
    pooled = accuracy_stats(merged["truth"], merged["answer"], margin)
    pooled["rating_auc"], pooled["n_rated"] = rating_auc(merged["truth"], merged["answer"], merged["confidence"])
    pooled["rating_auc_ci"] = list(rating_auc_ci(merged["truth"], merged["answer"], merged["confidence"], merged["image"]))
    pooled["verdict"] = verdict(pooled)
    pooled["n_readers"] = len(readers)

    wide = merged.pivot(index="image", columns="reader", values="answer")
    pairs = []
    for r1, r2 in itertools.combinations(readers, 2):
        both = wide[[r1, r2]].dropna()
        pairs.append(
            {
                "readers": [r1, r2],
                "n_common": len(both),
                "agreement": float((both[r1] == both[r2]).mean()) if len(both) else float("nan"),
                "cohen_kappa": cohen_kappa(both[r1], both[r2]),
            }
        )
    fleiss: dict[str, Any] = {"n_images": 0, "n_readers": len(readers), "kappa": float("nan")}
    if len(readers) >= 2:
        full = wide.dropna()
        fleiss["n_images"] = len(full)
        if len(full):
            counts = np.stack([(full == c).sum(axis=1).to_numpy() for c in CLASSES], axis=1)
            fleiss["kappa"] = fleiss_kappa(counts)
    return {
        "equivalence_margin": margin,
        "n_images": len(key),
        "n_real": int((key["truth"] == "real").sum()),
        "n_fake": int((key["truth"] == "fake").sum()),
        "readers": per_reader,
        "pooled": pooled,
        "cohen_kappa": pairs,
        "fleiss_kappa": fleiss,
    }


# ----------------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------------


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _fmt_p(p: float) -> str:
    return "n/a" if math.isnan(p) else (f"{p:.2e}" if p < 1e-3 else f"{p:.3f}")


def format_summary(s: dict[str, Any]) -> str:
    """Plain-text summary for the study report (what a clinician reads first)."""
    lines = [
        f"Reader study: {s['n_images']} images ({s['n_real']} real, {s['n_fake']} generated), "
        f"{len(s['readers'])} reader(s). Positive class = fake.",
        "",
        f"{'reader':<14}{'n':>5}{'acc':>7}{'95% CI':>15}{'p(binom)':>10}{'sens':>7}{'spec':>7}{'fake->real':>11}"
        f"{'AUC':>7}",
    ]

    def row(name: str, st: dict[str, Any]) -> str:
        ci = f"[{_fmt(st['ci_low'], 2)}, {_fmt(st['ci_high'], 2)}]"
        return (
            f"{name:<14}{st['n']:>5}{_fmt(st['accuracy']):>7}{ci:>15}{_fmt_p(st['p_value']):>10}"
            f"{_fmt(st['sensitivity']):>7}{_fmt(st['specificity']):>7}{_fmt(st['fake_called_real']):>11}"
            f"{_fmt(st.get('rating_auc', float('nan'))):>7}"
        )

    for r, st in s["readers"].items():
        lines.append(row(str(r)[:13], st))
    lines.append(row("pooled", s["pooled"]))
    lines.append("")
    p = s["pooled"]
    if not math.isnan(p["p_value"]):
        eq = p["equivalence"]
        m = eq["margin"]
        said = {
            "different": "differs significantly from chance: readers told generated from real",
            "equivalent": f"is equivalent to chance within +-{m} (TOST p = {_fmt_p(eq['p_value'])})",
            "inconclusive": (f"is neither significantly different from chance nor shown equivalent within +-{m} "
                             f"(TOST p = {_fmt_p(eq['p_value'])}): the study cannot say; see the kit's design.json "
                             "for the readers it needs"),
        }[p["verdict"]]
        lines.append(
            f"Pooled accuracy {_fmt(p['accuracy'])} {said} (exact two-sided binomial test, p = {_fmt_p(p['p_value'])}); "
            f"{_fmt(p['fake_called_real'])} of answers on generated images called them real."
        )
        lo, hi = p.get("rating_auc_ci", [float("nan")] * 2)
        lines.append(f"Rating AUC {_fmt(p.get('rating_auc', float('nan')))} (95% CI {_fmt(lo)}-{_fmt(hi)}, images resampled).")
        lines.append("The pooled tests treat every answer as independent; per-reader tests are the conservative view.")
        lines.append("AUC: ROC area of the confidence-weighted rating (fake = +confidence, real = -confidence).")
    for pr in s["cohen_kappa"]:
        a, b = pr["readers"]
        lines.append(
            f"Cohen's kappa {a} vs {b}: {_fmt(pr['cohen_kappa'])} on {pr['n_common']} common images "
            f"(raw agreement {_fmt(pr['agreement'])})"
        )
    fk = s["fleiss_kappa"]
    if fk["n_readers"] >= 2:
        lines.append(
            f"Fleiss' kappa across {fk['n_readers']} readers: {_fmt(fk['kappa'])} on {fk['n_images']} images all answered"
        )
    return "\n".join(lines) + "\n"


def plot_accuracy(s: dict[str, Any], path: str | os.PathLike) -> None:
    """Bar chart of accuracy per reader (and pooled) with exact 95% CIs and the chance line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [str(r) for r in s["readers"]] + ["pooled"]
    stats = [*s["readers"].values(), s["pooled"]]
    acc = np.array([st["accuracy"] for st in stats], dtype=float)
    lo = np.array([st["ci_low"] for st in stats], dtype=float)
    hi = np.array([st["ci_high"] for st in stats], dtype=float)
    fig = Figure(figsize=(max(4.0, 0.8 * len(names) + 2), 3.6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(names))
    colors = ["#4c78a8"] * (len(names) - 1) + ["#f58518"]
    ax.bar(x, acc, color=colors, width=0.6)
    ax.errorbar(x, acc, yerr=np.vstack([acc - lo, hi - acc]), fmt="none", ecolor="black", capsize=4, lw=1)
    ax.axhline(0.5, color="grey", ls="--", lw=1, label="chance (0.5)")
    for xi, st in zip(x, stats):
        ax.text(xi, 0.02, f"n={st['n']}", ha="center", va="bottom", fontsize=8, color="white")
    ax.set_xticks(x, names, rotation=30 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (real vs generated)")
    ax.set_title("Reader accuracy with exact 95% CI")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    return obj


def score_files(
    key_path: str | os.PathLike,
    answer_paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    margin: float | None = None,
) -> dict[str, Any]:
    """Read the key and answer CSVs, score, and write summary.json/.txt, per_reader.csv, accuracy.png.

    ``margin`` defaults to the equivalence margin in the kit's ``design.json`` next to the key (0.1 without one).
    """
    key = read_key(key_path)
    answers = read_answers(answer_paths, key)
    if margin is None:
        design = Path(key_path).parent / "design.json"
        margin = float(json.loads(design.read_text()).get("equivalence_margin", 0.1)) if design.is_file() else 0.1
    s = score(key, answers, margin)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = format_summary(s)
    write_json(out / "summary.json", _jsonable(s))
    write_text(out / "summary.txt", text)
    table = pd.DataFrame([{"reader": r, **{k: v for k, v in st.items() if k != "files"}} for r, st in s["readers"].items()])
    write_text(out / "per_reader.csv", table.to_csv(index=False, lineterminator="\n"))
    plot_accuracy(s, out / "accuracy.png")
    log.info("scored %d answer(s) from %d reader(s) -> %s", len(answers), len(s["readers"]), out)
    return s
