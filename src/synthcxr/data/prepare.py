"""Stage 1: a source dataset -> ``images.h5`` pyramid, ``labels.parquet``, ``quarantine.csv``, ``prepare.json``.

Two passes keep memory small: the adapter's metadata scan first (label tables, headers; bad rows
quarantined), packed column by column into a :class:`~synthcxr.data.records.RecordTable` (tens of bytes
per image), then pixels decoded in ``dataset.workers`` processes (fewer when the job's memory cannot hold
that many decoders, see :func:`decode_workers`), in bounded order-preserving chunks, and written image by
image into pre-sized HDF5 datasets. Every source is cropped and resized here, not in the adapters, so
sources smaller than ``max_res`` are counted (and quarantined below ``dataset.min_source_size``). Splits are decided
per patient after decoding, so a patient whose every image was quarantined never skews the fractions.
All four outputs go to temporary names and are renamed only when everything succeeded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .. import __version__
from ..config import ConfigError
from ..labels import check_labels, findings_of
from ..utils.atomic import atomic_path, write_json
from ..utils.runtime import progress, setup_logging
from .adapters import Adapter, make_adapter
from .decode import to_square_uint8
from .parallel import chunked, ordered_map
from .pyramid import PyramidWriter, build_pyramid, pyramid_levels, string_attr
from .quarantine import Quarantine, QuarantineError
from .records import POOL, RecordTable
from .settings import PrepareConfig
from .splits import SPLITS, assign_splits, patient_key, pseudonym, split_summary

OUTPUTS = ("images.h5", "labels.parquet", "quarantine.csv", "prepare.json")
CHUNK = 8


def decode_one(adapter: Adapter, ref: Any, source: str, max_res: int, min_source_size: int = 0) -> tuple[dict, int]:
    """One source -> (pyramid, source short side); QuarantineError for unusable or too small sources."""
    img = adapter.load(ref, max_res, source)
    if min_source_size and img.short_side < min_source_size:
        raise QuarantineError(
            "too_small",
            f"{source}: {img.width}x{img.height} source, short side below dataset.min_source_size={min_source_size}",
        )
    return build_pyramid(to_square_uint8(img.pixels, max_res, source)), img.short_side


def _decode_chunk(args: tuple[Adapter, int, list[tuple[str, Any]]]) -> list[tuple[str, Any]]:
    """Worker: ``("ok", (pyramid, short side))`` or ``("q", (kind, detail))`` per item, in order."""
    adapter, max_res, items = args
    out: list[tuple[str, Any]] = []
    for source, ref in items:
        try:
            out.append(("ok", decode_one(adapter, ref, source, max_res, int(adapter.cfg.min_source_size))))
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


def check_source(section: Mapping[str, Any], labels: Sequence[str]) -> None:
    """Fail fast, as the DAG is built: ``dataset.root`` and the format's label tables exist and read.

    Reads table headers only. Raises :class:`~synthcxr.config.ConfigError` naming the key and the path.
    """
    make_adapter(PrepareConfig.from_section(section), labels)


def prepare(
    cfg: PrepareConfig,
    labels: Sequence[str],
    out_dir: str | os.PathLike,
    log: str | os.PathLike | None = None,
    mem_mb: int | None = None,
) -> dict[str, Any]:
    """Prepare one dataset into ``out_dir``; returns the ``prepare.json`` content.

    ``cfg`` is the ``dataset`` config section (:meth:`PrepareConfig.from_section`); ``labels`` is the
    ordered canonical label list. Configuration errors raise :class:`~synthcxr.config.ConfigError` before any
    output is touched; bad individual inputs are quarantined instead. ``mem_mb`` is the job's memory
    (:func:`synthcxr.utils.runtime.job_memory_mb`: SLURM's allocation or the cgroup limit); it caps the
    decoder processes (:func:`decode_workers`).
    """
    logger = setup_logging(log) if log is not None else logging.getLogger("synthcxr")
    try:
        labels = check_labels(labels, where="labels")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    pcfg = cfg
    out = Path(out_dir)
    t0 = time.perf_counter()
    adapter = make_adapter(pcfg, labels)
    quarantine = Quarantine()

    # pass 1: metadata, packed as it arrives
    records, candidates = scan_metadata(adapter, labels, quarantine)
    n_scan_q = len(quarantine)
    logger.info(
        "prepare %s (%s): %d rows seen, %d candidate images, %d quarantined, %d filtered by view",
        pcfg.name, pcfg.format, adapter.seen, len(candidates), n_scan_q, sum(adapter.filtered_views.values()),
    )
    workers = decode_workers(pcfg, mem_mb, logger)

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
    kept: list[int] = []
    short_sides: list[int] = []
    with contextlib.ExitStack() as stack:
        tmp = {name: stack.enter_context(atomic_path(out / name)) for name in OUTPUTS}
        with PyramidWriter(tmp["images.h5"], len(candidates), pcfg.max_res, attrs) as writer:
            bar = progress(total=len(candidates), desc=f"decode {pcfg.name}", unit="img")
            wanted = set(candidates.tolist()) if len(candidates) != len(records) else None
            items = (it for i, it in enumerate(records.items()) if wanted is None or i in wanted)
            results = ordered_map(_Task(adapter, pcfg.max_res), chunked(items, CHUNK), workers, on_crash=_crashed)
            sources = None
            pos = iter(candidates.tolist())
            for chunk in results:
                for status, payload in chunk:
                    i = next(pos)
                    if status == "ok":
                        pyramid, short = payload
                        writer.append(pyramid)
                        kept.append(i)
                        short_sides.append(int(short))
                    else:
                        if sources is None:
                            sources = records.strings("source")
                        quarantine.add(sources[i], *payload)
                bar.update(len(chunk))
            bar.close()
            if not kept:
                raise ConfigError(
                    f"'dataset': no usable image in {pcfg.format} dataset {pcfg.root or pcfg.name!r} "
                    f"({adapter.seen} rows seen; quarantined {quarantine.counts()}; filtered by view "
                    f"{dict(adapter.filtered_views)}); check dataset.root, dataset.views, dataset.min_source_size and the images"
                )
        sizes = _source_sizes(np.asarray(short_sides, dtype=np.int64), pcfg, adapter)
        for warning in adapter.warnings:
            logger.warning("%s", warning)
        table = _label_table(records, np.asarray(kept, dtype=np.int64), labels, pcfg)
        for split, n in table["split"].value_counts().reindex(list(SPLITS), fill_value=0).items():
            if n == 0 and pcfg.split.fractions()[split] > 0:
                adapter.warnings.append(f"split {split!r} is empty: too few patients for dataset.split")
                logger.warning("split %r is empty: too few patients for dataset.split", split)
        table.to_parquet(tmp["labels.parquet"], index=False)
        quarantine.write(tmp["quarantine.csv"])
        summary = _summary(pcfg, labels, adapter, quarantine, table, levels, sizes)
        write_json(tmp["prepare.json"], summary)
    logger.info(
        "prepared %d images (%s) into %s in %.1f s; quarantined %d",
        len(table), ", ".join(f"{s} {summary['splits'][s]['n_images']}" for s in SPLITS), out,
        time.perf_counter() - t0, len(quarantine),
    )
    if len(quarantine):
        logger.warning("quarantined inputs by reason: %s (see %s)", quarantine.counts(), out / "quarantine.csv")
    return summary


def scan_metadata(adapter: Adapter, labels: Sequence[str], quarantine: Quarantine) -> tuple[RecordTable, np.ndarray]:
    """Pass 1: the adapter's scan packed into a RecordTable, and the indices left after removing duplicates."""
    records = RecordTable.collect(progress(adapter.scan(quarantine), desc=f"scan {adapter.format}", unit="row"), labels)
    return records, _drop_duplicates(records, quarantine)


def decode_workers(cfg: PrepareConfig, mem_mb: int | None, logger: logging.Logger | None = None) -> int:
    """``dataset.workers``, lowered so that the decoders fit the job's memory.

    Each decoder may hold one full-size source at a time: ``dataset.decode_mem_mb`` (default 600 MB; a
    fresh process decoding a 4096x3328 windowed DICOM peaks at 344 MiB, see docs/datasets.md). A quarter of
    ``mem_mb`` is kept for the main process (records, HDF5 writer, result queue).
    """
    want = int(cfg.workers)
    if not mem_mb or want <= 1:
        return want
    fit = max(1, int(0.75 * float(mem_mb)) // int(cfg.decode_mem_mb))
    if fit < want:
        msg = (
            f"dataset.workers={want} decoders need ~{want * int(cfg.decode_mem_mb)} MB "
            f"(dataset.decode_mem_mb={cfg.decode_mem_mb} each) but the job has mem_mb={mem_mb}: using {fit}"
        )
        (logger or logging.getLogger("synthcxr")).warning("%s", msg)
        return fit
    return want


def _drop_duplicates(records: RecordTable, quarantine: Quarantine) -> np.ndarray:
    """Indices of the first listing of each source image; later ones are quarantined (before decoding)."""
    first = records.first_occurrences("image_id")
    if len(first) < len(records):
        dup = np.ones(len(records), dtype=bool)
        dup[first] = False
        sources = records.strings("source")
        for i in np.flatnonzero(dup):
            quarantine.add(sources[i], "duplicate", f"image {sources[i]} is listed more than once")
    return first


def _source_sizes(short: np.ndarray, cfg: PrepareConfig, adapter: Adapter) -> dict[str, Any]:
    """prepare.json's source-size block; warns when sources were enlarged to max_res."""
    enlarged = int((short < cfg.max_res).sum())
    out = {
        "short_side_min": int(short.min()),
        "short_side_median": float(np.median(short)),
        "short_side_max": int(short.max()),
        "enlarged": enlarged,
        "enlarged_fraction": round(enlarged / len(short), 6),
    }
    if enlarged:
        adapter.warnings.append(
            f"{enlarged} of {len(short)} kept images ({100.0 * enlarged / len(short):.1f}%) have a short side below "
            f"dataset.max_res={cfg.max_res} (median short side {out['short_side_median']:g} px) and were enlarged; "
            "lower dataset.max_res, or set dataset.min_source_size to quarantine them"
        )
    return out


def _label_table(records: RecordTable, kept: np.ndarray, labels: Sequence[str], cfg: PrepareConfig) -> pd.DataFrame:
    """labels.parquet content for the kept records (row i is images.h5 row i).

    Patient keys are hashed once per patient and every small-vocabulary column is built from its
    dictionary, so the table holds one Python string per image (its pseudonym), not six.
    """

    def decoded(key: str) -> np.ndarray:
        values, codes = records.codes(key, kept)
        return np.asarray(values, dtype=object)[codes]

    patients, pcodes = records.codes("patient_id", kept)
    keys = np.asarray([patient_key(p, cfg.patient_salt) for p in patients], dtype=object)[pcodes]
    split = assign_splits(keys, cfg.split.fractions(), cfg.split.seed, decoded("official"))
    image_ids = pc.take(records.column("image_id"), pa.array(kept, type=pa.int64()), memory_pool=POOL)
    pseudo = [pseudonym(i, cfg.patient_salt) for chunk in image_ids.chunks for i in chunk.to_pylist()]
    table = pd.DataFrame(
        {
            "row": np.arange(len(kept), dtype=np.int64),
            "image_id": pd.Series(pseudo, dtype=object),
            "patient_key": pd.Series(keys, dtype=object),
            "split": pd.Series(split, dtype=object),
            "view": pd.Series(decoded("view"), dtype=object),
            "sex": pd.Series(decoded("sex"), dtype=object),
            "age": records.age()[kept],
        }
    )
    mat = records.label_matrix()[kept]
    for j, name in enumerate(labels):
        table[name] = mat[:, j].astype(np.float64)
    table["other_finding"] = records.other_finding()[kept].astype(np.float64)
    return table


def _summary(
    cfg: PrepareConfig,
    labels: Sequence[str],
    adapter: Adapter,
    quarantine: Quarantine,
    table: pd.DataFrame,
    levels: Sequence[int],
    sizes: Mapping[str, Any],
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
            "enlarged": sizes["enlarged"],
            "other_finding_only": int(((table["other_finding"] == 1) & (table[list(findings_of(labels))].fillna(0) < 0.5).all(axis=1)).sum()),
        },
        "source_size": dict(sizes),
        "splits": split_summary(table, labels),
        "label_notes": list(adapter.notes),
        "warnings": list(adapter.warnings),
        "config": cfg_dict,
    }
