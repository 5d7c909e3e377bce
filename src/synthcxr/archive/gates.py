"""The gates between rendering and release: which rendered samples the audits let through.

A sample is released when its label optimisation succeeded and neither the memorisation audit
(``validate.memorization.gate``) nor the re-identification audit (``validate.reid.gate``) marked it;
every successful sample must have been audited. Paired counterfactuals are released as whole groups
(:func:`pair_mask`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd


def read_audit(path: str | os.PathLike, column: str = "flagged", what: str = "memorisation audit",
               key: str = "validate.memorization.gate") -> pd.DataFrame:
    """``sample_id -> column`` (bool) from one of the validate stage's per-sample audits."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} missing: run the {what} (validate stage) or set {key}: false")
    df = pd.read_parquet(p)
    missing = [c for c in ("sample_id", column) if c not in df.columns]
    if missing:
        raise ValueError(f"{p}: missing column(s) {missing}; expected at least sample_id, {column}")
    return df[["sample_id", column]].astype({"sample_id": str, column: bool}).drop_duplicates("sample_id")


def _audit_mask(full: pd.DataFrame, failed: np.ndarray, path: str | os.PathLike, column: str, what: str, key: str) -> np.ndarray:
    """Successful samples that the audit in ``path`` marks in ``column``; every successful sample must be audited."""
    mark = read_audit(path, column, what, key).set_index("sample_id")[column]
    audited = full["sample_id"].isin(mark.index).to_numpy()
    unaudited = ~audited & ~failed
    if unaudited.any():
        raise ValueError(
            f"{path}: {int(unaudited.sum())} successful sample(s) were not audited "
            f"(e.g. {full.loc[unaudited, 'sample_id'].iloc[0]!r}); rerun the {what}"
        )
    return audited & full["sample_id"].map(mark).fillna(False).to_numpy(dtype=bool) & ~failed


def release_mask(
    full: pd.DataFrame, memorization_path: str | os.PathLike | None, reid_path: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(released, failed, flagged, matched)`` boolean masks over ``full``'s rows.

    ``flagged``: withheld by the memorisation audit; ``matched``: withheld by the re-identification audit
    (a sample can be both). Failed samples are never counted as flagged or matched.
    """
    failed = ~full["success"].to_numpy(dtype=bool)
    flagged = np.zeros(len(full), dtype=bool)
    matched = np.zeros(len(full), dtype=bool)
    if memorization_path is not None:
        flagged = _audit_mask(full, failed, memorization_path, "flagged", "memorisation audit", "validate.memorization.gate")
    if reid_path is not None:
        matched = _audit_mask(full, failed, reid_path, "matched", "re-identification audit", "validate.reid.gate")
    return ~failed & ~flagged & ~matched, failed, flagged, matched


def pair_mask(full: pd.DataFrame, released: np.ndarray) -> np.ndarray:
    """Rows withheld because of their pair: a group (``pair_id``: a base and its variants) is released whole.

    A variant whose optimisation failed was never made and leaves the group; any other member not released
    (the base failed, or a gate withheld a member) withholds the group, and so does a base left with no
    variant. Without a ``pair_id`` column nothing is withheld.
    """
    out = np.zeros(len(full), dtype=bool)
    if "pair_id" not in full.columns:
        return out
    gid = full["pair_id"].to_numpy(np.int64)
    variant = (full["edit"].astype(str) != "").to_numpy()
    failed = ~full["success"].to_numpy(dtype=bool)
    for g in np.unique(gid[gid >= 0]):
        rows = np.flatnonzero(gid == g)
        members = rows[~(variant[rows] & failed[rows])]  # failed variants were never made
        whole = released[members].all() and variant[members].any()
        if not whole:
            out[members[released[members]]] = True
    return out


def pair_counts(full: pd.DataFrame, released: np.ndarray, unpaired: np.ndarray) -> dict[str, int]:
    """Planned and released pairs (groups), released variants, and samples withheld with their pair."""
    gid = full["pair_id"].to_numpy(np.int64)
    variant = (full["edit"].astype(str) != "").to_numpy()
    return {
        "n_pairs_planned": int(len(np.unique(gid[gid >= 0]))),
        "n_pairs_released": int(len(np.unique(gid[(gid >= 0) & released]))),
        "n_variants_planned": int(variant.sum()),
        "n_variants_released": int((variant & released).sum()),
        "n_withheld_with_pair": int(unpaired.sum()),
    }
