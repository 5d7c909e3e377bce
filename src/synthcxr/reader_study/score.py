"""Score a reader study: can radiologists tell generated scans from real ones?

The question is answered per reader and pooled: accuracy with an exact (Clopper-Pearson) 95% CI
and an exact two-sided binomial test against chance (p = 0.5), an equivalence test (TOST, exact
binomial) against a margin around 0.5, the rating AUC with a bootstrap CI, sensitivity/specificity with
"fake" as the positive class, and the share of generated images called real (the headline number
for a generator: high means readers were fooled). Agreement between readers (Cohen's kappa per
pair, Fleiss' kappa across everyone on the images all readers answered) shows whether readers key
on the same cues or guess independently.

Input is the answer key written by :mod:`synthcxr.reader_study.kit` and the CSV files the reader
page exports. Every problem in those files is reported with the file name, the column and what to
do, because they come back by e-mail from people who did not write them by hand.
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
from scipy.stats import binomtest

from ..metrics.auroc import auroc
from ..metrics.bootstrap import bootstrap_ci
from .power import tost
from ..utils.atomic import atomic_path, write_json, write_text

log = logging.getLogger("synthcxr")

ANSWER_COLUMNS = ("reader", "image", "answer", "confidence")
OPTIONAL_COLUMNS = ("findings", "timestamp")
KEY_COLUMNS = ("image", "truth", "source")
CLASSES = ("real", "fake")


class ReaderStudyInputError(ValueError):
    """An answer key or answers CSV is malformed; the message names the file and column."""


# ----------------------------------------------------------------------------------------------
# Reading and checking files
# ----------------------------------------------------------------------------------------------


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ReaderStudyInputError(f"{path}: empty file; expected a CSV {what} with a header row") from None
    except pd.errors.ParserError as exc:
        raise ReaderStudyInputError(f"{path}: not a readable CSV ({exc})") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df.apply(lambda col: col.str.strip())


def _require(df: pd.DataFrame, path: Path, cols: Sequence[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ReaderStudyInputError(
            f"{path}: missing column(s) {missing}; a {what} needs columns {list(cols)}, found {list(df.columns)}"
        )


def read_key(path: str | os.PathLike) -> pd.DataFrame:
    """The answer key (``image, truth, source``); truth must be ``real`` or ``fake``, images unique."""
    p = Path(path)
    key = _read_csv(p, "answer key")
    _require(key, p, KEY_COLUMNS, "answer key")
    key["truth"] = key["truth"].str.lower()
    bad = key.loc[~key["truth"].isin(CLASSES)]
    if len(bad):
        raise ReaderStudyInputError(
            f"{p}: column 'truth' must be 'real' or 'fake'; row(s) {list(bad.index + 2)[:5]} hold "
            f"{sorted(set(bad['truth']))[:5]}"
        )
    dup = key.loc[key["image"].duplicated(), "image"]
    if len(dup):
        raise ReaderStudyInputError(f"{p}: column 'image' repeats {sorted(set(dup))[:5]}; each image must appear once")
    if key.empty:
        raise ReaderStudyInputError(f"{p}: the answer key lists no images")
    return key.reset_index(drop=True)


def read_answers(paths: Sequence[str | os.PathLike], key: pd.DataFrame) -> pd.DataFrame:
    """All answer CSVs as one table (``reader, image, answer, confidence, findings, timestamp, file``).

    Rejects unknown image names, answers other than real/fake, confidences outside 1-5, and any
    (reader, image) answered twice, within one file or across files, since silently keeping one of
    two answers would change the score.
    """
    if not paths:
        raise ReaderStudyInputError("no answer files given; pass the CSV files exported from the reader page")
    known = set(key["image"])
    frames = []
    for path in paths:
        p = Path(path)
        df = _read_csv(p, "answers file")
        _require(df, p, ANSWER_COLUMNS, "answers file")
        if df.empty:
            raise ReaderStudyInputError(f"{p}: no answers (header only); was the CSV exported before answering?")
        rows = df.index + 2  # 1-based line numbers including the header
        for col in ("reader", "image"):
            blank = rows[df[col] == ""]
            if len(blank):
                raise ReaderStudyInputError(f"{p}: column '{col}' is empty on line(s) {list(blank)[:5]}")
        unknown = sorted(set(df["image"]) - known)
        if unknown:
            raise ReaderStudyInputError(
                f"{p}: column 'image' names {len(unknown)} image(s) not in the answer key, e.g. {unknown[:5]}; "
                "was this file exported from a different study?"
            )
        ans = df["answer"].str.lower()
        bad = rows[~ans.isin(CLASSES)]
        if len(bad):
            raise ReaderStudyInputError(
                f"{p}: column 'answer' must be 'real' or 'fake'; line(s) {list(bad)[:5]} hold "
                f"{sorted(set(df.loc[~ans.isin(CLASSES), 'answer']))[:5]}"
            )
        conf = pd.to_numeric(df["confidence"].replace("", np.nan), errors="coerce")
        bad_conf = (df["confidence"] != "") & (conf.isna() | ~conf.isin([1, 2, 3, 4, 5]))
        if bad_conf.any():
            raise ReaderStudyInputError(
                f"{p}: column 'confidence' must be an integer 1-5 or empty; line(s) {list(rows[bad_conf])[:5]} hold "
                f"{sorted(set(df.loc[bad_conf, 'confidence']))[:5]}"
            )
        dup = df.duplicated(["reader", "image"], keep=False)
        if dup.any():
            pairs = df.loc[dup, ["reader", "image"]].drop_duplicates().head(5).itertuples(index=False)
            raise ReaderStudyInputError(
                f"{p}: duplicate answers for (reader, image) {[tuple(x) for x in pairs]} on line(s) "
                f"{list(rows[dup])[:10]}; keep one answer per reader and image"
            )
        out = pd.DataFrame(
            {
                "reader": df["reader"],
                "image": df["image"],
                "answer": ans,
                "confidence": conf,
                "findings": df["findings"] if "findings" in df.columns else "",
                "timestamp": df["timestamp"] if "timestamp" in df.columns else "",
                "file": str(p),
            }
        )
        frames.append(out)
    answers = pd.concat(frames, ignore_index=True)
    dup = answers.duplicated(["reader", "image"], keep=False)
    if dup.any():
        clash = answers.loc[dup]
        reader = clash["reader"].iloc[0]
        files = sorted(set(clash.loc[clash["reader"] == reader, "file"]))
        raise ReaderStudyInputError(
            f"reader {reader!r} answered the same image(s) in several files {files}; pass each reader's "
            "answers once (export again from the page, it holds all of a reader's answers)"
        )
    return answers


# ----------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------


def _ratio(num: int, den: int) -> float:
    return num / den if den else float("nan")


def accuracy_stats(truth: Sequence[str], answer: Sequence[str], margin: float = 0.1) -> dict[str, Any]:
    """Accuracy (+ exact CI, binomial test vs 0.5, TOST within +-margin), sensitivity/specificity (fake = positive)."""
    t = np.asarray(truth, dtype=object)
    a = np.asarray(answer, dtype=object)
    n = len(t)
    tp = int(np.sum((t == "fake") & (a == "fake")))
    fn = int(np.sum((t == "fake") & (a == "real")))
    tn = int(np.sum((t == "real") & (a == "real")))
    fp = int(np.sum((t == "real") & (a == "fake")))
    correct = tp + tn
    out: dict[str, Any] = {
        "n": n,
        "n_fake": tp + fn,
        "n_real": tn + fp,
        "tp": tp,
        "fn": fn,
        "tn": tn,
        "fp": fp,
        "correct": correct,
        "accuracy": _ratio(correct, n),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "fake_called_real": _ratio(fn, tp + fn),
        "real_called_fake": _ratio(fp, tn + fp),
    }
    if n:
        test = binomtest(correct, n, p=0.5, alternative="two-sided")
        ci = test.proportion_ci(confidence_level=0.95, method="exact")
        out.update(p_value=float(test.pvalue), ci_low=float(ci.low), ci_high=float(ci.high))
    else:
        out.update(p_value=float("nan"), ci_low=float("nan"), ci_high=float("nan"))
    out["equivalence"] = tost(correct, n, margin)
    return out


def verdict(st: dict[str, Any], alpha: float = 0.05) -> str:
    """``different`` (told apart), ``equivalent`` (within the margin of chance) or ``inconclusive``."""
    if st["n"] == 0 or math.isnan(st["p_value"]):
        return "inconclusive"
    if st["p_value"] < alpha:
        return "different"
    return "equivalent" if st["equivalence"]["equivalent"] else "inconclusive"


def rating_auc_ci(
    truth: Sequence[str], answer: Sequence[str], confidence: Sequence[float], images: Sequence[str] | None = None,
    n_boot: int = 2000, seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of :func:`rating_auc`, resampling images (all of an image's answers together)."""
    t = np.asarray(truth, dtype=object)
    a = np.asarray(answer, dtype=object)
    c = np.asarray(confidence, dtype=np.float64)
    keep = ~np.isnan(c)
    if keep.sum() < 2 or len(set(t[keep])) < 2:
        return float("nan"), float("nan")
    clusters = None if images is None else np.asarray(images, dtype=object)[keep]
    y = (t[keep] == "fake").astype(np.float64)
    rating = np.where(a[keep] == "fake", c[keep], -c[keep])
    return bootstrap_ci(auroc, y, rating, n=n_boot, seed=seed, clusters=clusters)


def rating_auc(truth: Sequence[str], answer: Sequence[str], confidence: Sequence[float]) -> tuple[float, int]:
    """ROC AUC of the 10-point "how fake" rating (fake x confidence = +c, real x confidence = -c).

    A reader at chance accuracy can still rank images well when confident answers are right, so this
    separates "cannot tell" from "can tell but hedges". Rows without a confidence are left out; returns
    (AUC, rows used), AUC NaN when a class is missing.
    """
    t = np.asarray(truth, dtype=object)
    a = np.asarray(answer, dtype=object)
    c = np.asarray(confidence, dtype=np.float64)
    keep = ~np.isnan(c)
    if not keep.any():
        return float("nan"), 0
    rating = np.where(a[keep] == "fake", c[keep], -c[keep])
    return auroc((t[keep] == "fake").astype(np.float64), rating), int(keep.sum())


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float:
    """Cohen's kappa of two raters on the same items; NaN when chance agreement is 1 (no variation)."""
    a = np.asarray(a, dtype=object)
    b = np.asarray(b, dtype=object)
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa: rater lengths differ ({len(a)} vs {len(b)})")
    if len(a) == 0:
        return float("nan")
    cats = sorted(set(a) | set(b))
    po = float(np.mean(a == b))
    pe = float(sum(np.mean(a == c) * np.mean(b == c) for c in cats))
    return (po - pe) / (1.0 - pe) if pe < 1.0 else float("nan")


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa (Fleiss 1971) from an ``[items, categories]`` table of rater counts per item.

    Every item must have the same number of ratings ``m >= 2``. NaN when expected agreement is 1.
    """
    x = np.asarray(counts, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"fleiss_kappa: need a non-empty [items, categories] table, got shape {list(x.shape)}")
    m = x.sum(axis=1)
    if not np.all(m == m[0]) or m[0] < 2:
        raise ValueError("fleiss_kappa: every item needs the same number (>= 2) of ratings")
    m = m[0]
    p_j = x.sum(axis=0) / (x.shape[0] * m)
    p_i = (np.sum(x * x, axis=1) - m) / (m * (m - 1))
    p_bar, pe_bar = float(p_i.mean()), float(np.sum(p_j**2))
    return (p_bar - pe_bar) / (1.0 - pe_bar) if pe_bar < 1.0 else float("nan")


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
