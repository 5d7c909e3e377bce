"""Reading a reader study's answer key and the answer CSVs its page exports, checked line by line.

They come back by e-mail from people who did not write them by hand, so every problem is reported with
the file name, the column and what to do (:class:`ReaderStudyInputError`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

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
