"""Stage 1: a source dataset -> ``images.h5`` pyramid, ``labels.parquet``, ``quarantine.csv``, ``prepare.json``.

Two passes keep memory independent of dataset size: the adapter's metadata scan first (label tables,
headers; bad rows quarantined), then pixels decoded in ``dataset.workers`` processes, in bounded
order-preserving chunks, and written image by image into pre-sized HDF5 datasets. Splits are decided
per patient after decoding, so a patient whose every image was quarantined never skews the fractions.
All four outputs go to temporary names and are renamed only when everything succeeded.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import __version__
from ..config import ConfigError
from ..labels import check_labels
from ..utils.atomic import atomic_path, write_json
from ..utils.runtime import progress, setup_logging
from .adapters import Adapter, Record, make_adapter
from .parallel import chunked, ordered_map
from .pyramid import PyramidWriter, build_pyramid, pyramid_levels, string_attr
from .quarantine import Quarantine, QuarantineError
from .splits import SPLITS, assign_splits, patient_key, pseudonym, split_summary

OUTPUTS = ("images.h5", "labels.parquet", "quarantine.csv", "prepare.json")
_GLOBAL_KEYS = {"seed", "device", "labels"}
CHUNK = 8


@dataclass
class SplitConfig:
    """Patient-level split fractions (must sum to 1) and the seed of the patient permutation."""

    train: float = 0.7
    val: float = 0.15
    test: float = 0.15
    seed: int = 0

    def fractions(self) -> dict[str, float]:
        return {"train": self.train, "val": self.val, "test": self.test}


@dataclass
class PrepareConfig:
    """The ``dataset`` config section (see config/schemas/config.schema.yaml)."""

    name: str = "dataset"
    format: str = "phantom"
    root: str | None = None
    max_res: int = 64
    views: tuple[str, ...] = ("PA", "AP")
    split: SplitConfig = field(default_factory=SplitConfig)
    patient_salt: str = "synthcxr-change-this-salt"
    workers: int = 2
    chexpert_uncertain: str = "ones"
    label_csv: str | None = None
    phantom: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.split, Mapping):
            unknown = sorted(set(self.split) - {"train", "val", "test", "seed"})
            if unknown:
                raise ConfigError(f"'dataset.split': unknown key(s) {unknown}")
            self.split = SplitConfig(**self.split)
        self.views = tuple(self.views)
        try:
            pyramid_levels(int(self.max_res))
        except ValueError as exc:
            raise ConfigError(f"'dataset.max_res': {exc}") from None
        fr = self.split.fractions()
        if any(v < 0 for v in fr.values()) or abs(sum(fr.values()) - 1.0) > 1e-6:
            raise ConfigError(f"'dataset.split': fractions must be >= 0 and sum to 1, got {fr}")
        if self.chexpert_uncertain not in ("ones", "zeros", "ignore"):
            raise ConfigError(f"'dataset.chexpert_uncertain': {self.chexpert_uncertain!r} is not ones, zeros or ignore")
        if not self.patient_salt or len(self.patient_salt) < 8:
            raise ConfigError("'dataset.patient_salt': use a secret string of at least 8 characters")
        if int(self.workers) < 0:
            raise ConfigError(f"'dataset.workers': must be >= 0, got {self.workers}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PrepareConfig":
        """From the ``dataset`` section (global keys seed/device/labels are ignored; others must be known)."""
        d = {k: v for k, v in dict(d).items() if k not in _GLOBAL_KEYS}
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"'dataset': unknown key(s) {unknown}; allowed: {sorted(known)}")
        return cls(**d)


def _decode_chunk(args: tuple[Adapter, int, list[tuple[str, Any]]]) -> list[tuple[str, Any]]:
    """Worker: ``("ok", pyramid)`` or ``("q", (kind, detail))`` per item, in order."""
    adapter, max_res, items = args
    out: list[tuple[str, Any]] = []
    for source, ref in items:
        try:
            out.append(("ok", build_pyramid(adapter.load(ref, max_res, source))))
        except QuarantineError as err:
            out.append(("q", (err.kind, err.detail)))
        except Exception as exc:  # a decoder bug on one odd file must not stop a day-long run
            out.append(("q", ("decode_error", f"{source}: {type(exc).__name__}: {exc}")))
    return out


class _Task:
    """Picklable per-chunk callable carrying the adapter (small: config only)."""

    def __init__(self, adapter: Adapter, max_res: int):
        self.adapter, self.max_res = adapter, max_res

    def __call__(self, items: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
        return _decode_chunk((self.adapter, self.max_res, list(items)))


def _crashed(item: tuple[str, Any]) -> tuple[str, Any]:
    return ("q", ("decode_error", f"{item[0]}: decoder process crashed"))


def check_source(cfg: Mapping[str, Any], labels: Sequence[str]) -> None:
    """Fail fast, as the DAG is built: ``dataset.root`` and the format's label tables exist and read.

    Reads table headers only. Raises :class:`~synthcxr.config.ConfigError` naming the key and the path.
    """
    make_adapter(PrepareConfig.from_dict(cfg), labels)


def prepare(
    cfg: Mapping[str, Any] | PrepareConfig,
    labels: Sequence[str] | None,
    out_dir: str | os.PathLike,
    log: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Prepare one dataset into ``out_dir``; returns the ``prepare.json`` content.

    ``cfg`` is the ``dataset`` config section (a mapping, possibly with the global ``labels``) or a
    :class:`PrepareConfig`; ``labels`` is the ordered canonical label list (``None``: take
    ``cfg['labels']``). Configuration errors raise :class:`~synthcxr.config.ConfigError` before any
    output is touched; bad individual inputs are quarantined instead.
    """
    logger = setup_logging(log) if log is not None else logging.getLogger("synthcxr")
    if labels is None:
        if isinstance(cfg, Mapping) and "labels" in cfg:
            labels = cfg["labels"]
        else:
            raise ConfigError("'labels': no label list given to prepare()")
    try:
        labels = check_labels(labels, where="labels")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    pcfg = cfg if isinstance(cfg, PrepareConfig) else PrepareConfig.from_dict(cfg)
    out = Path(out_dir)
    t0 = time.perf_counter()
    adapter = make_adapter(pcfg, labels)
    quarantine = Quarantine()

    # pass 1: metadata
    records = _drop_duplicates(
        list(progress(adapter.scan(quarantine), desc=f"scan {pcfg.format}", unit="row")), quarantine
    )
    n_scan_q = len(quarantine)
    logger.info(
        "prepare %s (%s): %d rows seen, %d candidate images, %d quarantined, %d filtered by view",
        pcfg.name, pcfg.format, adapter.seen, len(records), n_scan_q, sum(adapter.filtered_views.values()),
    )
    for warning in adapter.warnings:
        logger.warning("%s", warning)

    # pass 2: pixels, then tables; every output under a temporary name until all succeeded
    levels = pyramid_levels(pcfg.max_res)
    attrs = {
        "label_names": string_attr(labels),
        "max_res": pcfg.max_res,
        "resolutions": np.asarray(levels, dtype=np.int64),
        "source_format": pcfg.format,
        "synthcxr_version": __version__,
        "downsampling": "exact box mean of the max_res image per level, rounded half-to-even",
    }
    kept: list[Record] = []
    with contextlib.ExitStack() as stack:
        tmp = {name: stack.enter_context(atomic_path(out / name)) for name in OUTPUTS}
        with PyramidWriter(tmp["images.h5"], len(records), pcfg.max_res, attrs) as writer:
            bar = progress(total=len(records), desc=f"decode {pcfg.name}", unit="img")
            items = ((r.source, r.ref) for r in records)
            results = ordered_map(
                _Task(adapter, pcfg.max_res), chunked(items, CHUNK), int(pcfg.workers), on_crash=_crashed
            )
            rec_iter = iter(records)
            for chunk in results:
                for status, payload in chunk:
                    rec = next(rec_iter)
                    if status == "ok":
                        writer.append(payload)
                        kept.append(rec)
                    else:
                        quarantine.add(rec.source, *payload)
                bar.update(len(chunk))
            bar.close()
            if not kept:
                raise ConfigError(
                    f"'dataset': no usable image in {pcfg.format} dataset {pcfg.root or pcfg.name!r} "
                    f"({adapter.seen} rows seen; quarantined {quarantine.counts()}; filtered by view "
                    f"{dict(adapter.filtered_views)}); check dataset.root, dataset.views and the images"
                )
        table = _label_table(kept, labels, pcfg)
        for split, n in table["split"].value_counts().reindex(list(SPLITS), fill_value=0).items():
            if n == 0 and pcfg.split.fractions()[split] > 0:
                adapter.warnings.append(f"split {split!r} is empty: too few patients for dataset.split")
                logger.warning("split %r is empty: too few patients for dataset.split", split)
        table.to_parquet(tmp["labels.parquet"], index=False)
        quarantine.write(tmp["quarantine.csv"])
        summary = _summary(pcfg, labels, adapter, quarantine, table, levels)
        write_json(tmp["prepare.json"], summary)
    logger.info(
        "prepared %d images (%s) into %s in %.1f s; quarantined %d",
        len(table), ", ".join(f"{s} {summary['splits'][s]['n_images']}" for s in SPLITS), out,
        time.perf_counter() - t0, len(quarantine),
    )
    if len(quarantine):
        logger.warning("quarantined inputs by reason: %s (see %s)", quarantine.counts(), out / "quarantine.csv")
    return summary


def _drop_duplicates(records: list[Record], quarantine: Quarantine) -> list[Record]:
    """Keep the first listing of each source image; later ones are quarantined (found before decoding)."""
    seen: set[str] = set()
    out: list[Record] = []
    for r in records:
        if r.image_id in seen:
            quarantine.add(r.source, "duplicate", f"image {r.source} is listed more than once")
            continue
        seen.add(r.image_id)
        out.append(r)
    return out


def _label_table(kept: Sequence[Record], labels: Sequence[str], cfg: PrepareConfig) -> pd.DataFrame:
    """labels.parquet content for the kept records (row i is images.h5 row i)."""
    keys = [patient_key(r.patient_id, cfg.patient_salt) for r in kept]
    split = assign_splits(keys, cfg.split.fractions(), cfg.split.seed, [r.official for r in kept])
    table = pd.DataFrame(
        {
            "row": np.arange(len(kept), dtype=np.int64),
            "image_id": pd.Series([pseudonym(r.image_id, cfg.patient_salt) for r in kept], dtype=object),
            "patient_key": pd.Series(keys, dtype=object),
            "split": pd.Series(split, dtype=object),
            "view": pd.Series([r.view for r in kept], dtype=object),
            "sex": pd.Series([r.sex for r in kept], dtype=object),
            "age": np.array([r.age for r in kept], dtype=np.float64),
        }
    )
    for name in labels:
        table[name] = np.array([r.labels.get(name, math.nan) for r in kept], dtype=np.float64)
    return table


def _summary(
    cfg: PrepareConfig,
    labels: Sequence[str],
    adapter: Adapter,
    quarantine: Quarantine,
    table: pd.DataFrame,
    levels: Sequence[int],
) -> dict[str, Any]:
    """prepare.json content. No timings or paths of temporary files: same inputs give the same bytes."""
    cfg_dict = asdict(cfg)
    cfg_dict.pop("patient_salt")  # the salt is a secret: never written next to the keys it protects
    return {
        "dataset": cfg.name,
        "format": cfg.format,
        "synthcxr_version": __version__,
        "max_res": cfg.max_res,
        "resolutions": list(levels),
        "labels": list(labels),
        "counts": {
            "seen": int(adapter.seen),
            "kept": int(len(table)),
            "quarantined": int(len(quarantine)),
            "quarantined_by_reason": quarantine.counts(),
            "filtered_by_view": dict(sorted(adapter.filtered_views.items())),
        },
        "splits": split_summary(table, labels),
        "label_notes": list(adapter.notes),
        "warnings": list(adapter.warnings),
        "config": cfg_dict,
    }
