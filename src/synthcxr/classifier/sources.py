"""Where training and evaluation images come from: a prepared dataset or a synthetic archive.

The classifier trains the same way on real and on synthetic data (train-on-synthetic/test-on-real is
the validation stage's utility measure), so the two kinds of folders are told apart here, once:

- a *prepared* dataset (``labels.parquet`` + ``images.h5``) supplies its own train/val/test splits;
- an *archive* (``manifest.parquet``) supplies training images only; validation and test then come
  from the real ``eval_source``'s val and test splits, so model selection never sees synthetic data.

Every split is an :class:`~synthcxr.imagesets.ImageSet` of ``{"sample_id", "image": float [-1, 1] [1, R, R],
"labels": float32 over the requested labels, NaN = unknown}`` items, with its label matrix (for
prevalence/pos_weight) and patient keys.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.store import PreparedDataset
from ..imagesets import ImageSet, merge

log = logging.getLogger("synthcxr")

PREPARED = "prepared"
ARCHIVE = "archive"
#: prepared splits smaller than this are read into memory once (uint8) instead of per item from HDF5
IN_MEMORY_BYTES = 1 << 30


def source_kind(path: str | os.PathLike) -> str:
    """``"prepared"`` or ``"archive"`` for a folder; raises naming the files that identify each."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"data source {p} is not a folder (expected a prepared dataset or an archive)")
    if (p / "labels.parquet").exists() and (p / "images.h5").exists():
        return PREPARED
    if (p / "manifest.parquet").exists():
        return ARCHIVE
    raise FileNotFoundError(
        f"{p}: neither a prepared dataset (labels.parquet + images.h5: run the prepare stage) "
        "nor a release (manifest.parquet: run snakemake finalize_archive)"
    )


@dataclass
class SplitData:
    """One split: its images, their ``[n, L]`` label matrix (NaN unknown), patient keys and where they came from."""

    dataset: ImageSet

    @property
    def labels(self) -> np.ndarray:
        return self.dataset.labels

    @property
    def origin(self) -> str:
        return self.dataset.origin

    @property
    def groups(self) -> np.ndarray | None:
        """The patient key of each image (prepared splits), for patient-level intervals."""
        return self.dataset.groups

    def __len__(self) -> int:
        return len(self.dataset)


@dataclass
class Sources:
    train: SplitData
    val: SplitData
    test: SplitData
    train_kind: str
    label_names: list[str]
    res: int
    #: (kind, images) of each training source, in the order the training set concatenates them
    train_parts: list[tuple[str, int]] | None = None


def pick_res(available: Sequence[int], res: int, where: str) -> int:
    """``res`` when the pyramid has that level, else its largest level (with a warning naming ``where``)."""
    if res in available:
        return res
    best = max(available)
    log.warning("%s has no %d px level (have %s); using %d px, the classifier resizes internally", where, res, list(available), best)
    return best


def patient_subset(groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the images of the first ``ceil(fraction * P)`` of P patients in a seeded order.

    The order depends only on the set of patient keys and ``seed``, so for one seed the subsets are
    nested: every patient in the 1 % subset is in the 10 % one. Whole patients only, at least one.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"real fraction must be in (0, 1], got {fraction}")
    keys = np.asarray(groups).astype(str)
    patients = np.unique(keys)
    order = patients[np.random.default_rng(seed).permutation(len(patients))]
    keep = order[: max(1, math.ceil(fraction * len(patients) - 1e-9))]
    return np.isin(keys, keep)


def prepared_split(ds: PreparedDataset, split: str, labels: Sequence[str], res: int, fraction: float = 1.0,
                   fraction_seed: int = 0) -> SplitData:
    """A split of a prepared dataset (``fraction`` < 1: a nested subset of its patients, see
    :func:`patient_subset`); small splits are read into memory once for fast epochs."""
    rows = ds.split(split)
    if len(rows) == 0:
        raise ValueError(f"{ds.labels_path}: split '{split}' is empty; check dataset.split fractions")
    if fraction < 1:
        if "patient_key" not in rows.columns:
            raise ValueError(f"{ds.labels_path}: no patient_key column; a real fraction is drawn by patient")
        rows = rows[patient_subset(rows["patient_key"].to_numpy(), fraction, fraction_seed)]
    images = ds.images(split, res, labels, rows=rows)
    if fraction < 1:
        images.origin = f"{ds.folder} [{split}, {fraction:g} of patients]"
    return SplitData(images.in_memory() if len(rows) * res * res <= IN_MEMORY_BYTES else images)


def archive_split(path: str | os.PathLike, labels: Sequence[str], res: int) -> SplitData:
    """All images of an archive, through ``synthcxr.archive.open(path).torch_dataset``."""
    try:
        from .. import archive as archive_mod

        open_archive = archive_mod.open
    except (ImportError, AttributeError) as exc:
        raise RuntimeError(f"{path} is an archive but synthcxr.archive.open is unavailable ({exc})") from exc
    arc = open_archive(path, sealed=False)  # TSTR trains on the release before it is sealed
    names = [str(n) for n in arc.label_names]
    missing = [n for n in labels if n not in names]
    if missing:
        raise KeyError(f"{Path(path) / 'manifest.parquet'}: archive lacks label(s) {missing}; it has {names}")
    images = arc.torch_dataset(res=res).relabel(labels)
    images.origin = f"{path} [archive]"
    return SplitData(images)


def resolve_sources(
    train_source: str | os.PathLike | Sequence[str | os.PathLike],
    eval_source: str | os.PathLike | None,
    labels: Sequence[str],
    res: int,
    real_fraction: float = 1.0,
    fraction_seed: int = 0,
) -> Sources:
    """Train/val/test splits for a training run (see the module docstring for the rules).

    ``train_source`` may list several folders (e.g. a prepared dataset and an archive: real + synthetic
    training); their training images are concatenated and ``eval_source`` is then required.
    ``real_fraction`` < 1 keeps that share of each prepared source's training patients (nested across
    fractions for one ``fraction_seed``); archives and the val/test splits are never subset.
    """
    labels = list(labels)
    many = isinstance(train_source, (list, tuple))
    sources = list(train_source) if many else [train_source]
    if not sources:
        raise ValueError("no training source given")
    if eval_source is None:
        if many:
            raise ValueError("several training sources need an eval_source (the prepared real dataset)")
        eval_source = train_source
    kinds = [source_kind(p) for p in sources]
    if source_kind(eval_source) != PREPARED:
        raise ValueError(f"eval_source {eval_source} must be a prepared (real) dataset: val/test are always real images")
    ev = PreparedDataset(eval_source)
    res_eval = pick_res(ev.resolutions, res, str(ev.h5_path))
    parts = []
    for path, kind in zip(sources, kinds):
        if kind == PREPARED:
            tr_ds = ev if Path(path).resolve() == Path(eval_source).resolve() else PreparedDataset(path)
            parts.append(prepared_split(tr_ds, "train", labels, pick_res(tr_ds.resolutions, res, str(tr_ds.h5_path)),
                                        real_fraction, fraction_seed))
        else:
            parts.append(archive_split(path, labels, res))
    if len(parts) == 1:
        train = parts[0]
    else:
        train = SplitData(merge(*(p.dataset for p in parts)))
    train_kind = kinds[0] if len(set(kinds)) == 1 else "+".join(kinds)
    val = prepared_split(ev, "val", labels, res_eval)
    test = prepared_split(ev, "test", labels, res_eval)
    log.info("train: %d images from %s; val: %d; test: %d (from %s)", len(train), train.origin, len(val), len(test), eval_source)
    return Sources(train, val, test, train_kind, labels, res_eval, [(k, len(p)) for k, p in zip(kinds, parts)])


def mix_weights(parts: Sequence[tuple[str, int]], synthetic_share: float) -> np.ndarray:
    """Per-image sampling weights over concatenated sources so that archives (synthetic images) make up
    ``synthetic_share`` of the draws and prepared (real) sources the rest, uniformly within each kind."""
    if not 0 < synthetic_share < 1:
        raise ValueError(f"synthetic share must be in (0, 1), got {synthetic_share}")
    n_kind = {PREPARED: sum(n for k, n in parts if k == PREPARED), ARCHIVE: sum(n for k, n in parts if k == ARCHIVE)}
    if not n_kind[PREPARED] or not n_kind[ARCHIVE]:
        raise ValueError(f"a synthetic share needs real and synthetic training sources, got {list(parts)}")
    share = {PREPARED: 1.0 - synthetic_share, ARCHIVE: synthetic_share}
    return np.concatenate([np.full(n, share[k] / n_kind[k]) for k, n in parts])
