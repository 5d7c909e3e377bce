"""Check one release shard, in every format it was written in, against its manifest rows and archive.json."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ..utils.hashing import pixel_sha256
from .contract import attr_problems, id_problems, read_shard_attrs
from .dicom_export import check_dicom_shard
from .layout import dicom_folder
from .shard_parquet import decode_png
from .shard_wds import iter_tar_samples


@dataclass
class Check:
    """Outcome for one file (or one aspect of the release)."""

    path: str
    ok: bool
    reason: str = ""

    def line(self) -> str:
        return f"{'OK    ' if self.ok else 'FAILED'} {self.path}" + (f": {self.reason}" if self.reason else "")


def _first_diff(name: str, got: np.ndarray, want: np.ndarray, ids: Sequence[str], labels: Sequence[str] | None = None) -> str | None:
    """'labels row 3 (sample s0000007) Effusion: 1, manifest 0' for the first differing entry, else None."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return f"{name} has shape {got.shape}, manifest implies {want.shape}"
    diff = got != want
    if not diff.any():
        return None
    r = int(np.argwhere(diff)[0][0])
    where = f"{name} row {r} (sample {ids[r]})"
    if got.ndim == 2 and labels is not None:
        c = int(np.argwhere(diff[r])[0][0])
        where += f" {labels[c]}: {got[r, c]}, manifest {want[r, c]}"
    else:
        where += f": {got[r]}, manifest {want[r]}"
    return f"{where} ({int(diff.any(axis=tuple(range(1, diff.ndim))).sum()) if diff.ndim > 1 else int(diff.sum())} row(s) differ)"


def _check_h5(path: Path, rows: pd.DataFrame, info: Mapping[str, Any]) -> list[str]:
    names, res = list(info["label_names"]), int(info["resolution"])
    ids = rows["sample_id"].tolist()
    n, L = len(rows), len(names)
    problems: list[str] = []
    with h5py.File(path, "r") as f:
        for ds, shape in (("images", (n, res, res)), ("labels", (n, L)), ("probs", (n, L)), ("sample_id", (n,))):
            if ds not in f:
                return [f"dataset /{ds} missing"]
            if f[ds].shape != shape:
                problems.append(f"/{ds} has shape {f[ds].shape}, expected {shape}")
        if problems:
            return problems
        stored = [s.decode() if isinstance(s, bytes) else str(s) for s in f["sample_id"][:]]
        problems += id_problems(stored, ids)
        for ds, want in (("labels", rows[names].to_numpy(np.uint8)), ("probs", rows[[f"prob_{x}" for x in names]].to_numpy(np.float32))):
            d = _first_diff(f"/{ds}", f[ds][:], want, ids, names)
            if d:
                problems.append(d)
        hashes: list[str] = []
        for s in range(0, n, 256):  # decompress every chunk; bounded memory
            hashes += [pixel_sha256(im) for im in f["images"][s : s + 256]]
    d = _first_diff("/images pixels (sha256)", np.array(hashes, dtype=object), rows["pixel_sha256"].to_numpy(object), ids)
    return problems + ([d] if d else [])


def _check_parquet(path: Path, rows: pd.DataFrame, info: Mapping[str, Any]) -> list[str]:
    names, res = list(info["label_names"]), int(info["resolution"])
    ids = rows["sample_id"].tolist()
    pf = pq.ParquetFile(path)
    cols = ["sample_id", "index", "seed", "image", *names, *(f"prob_{x}" for x in names)]
    missing = [c for c in cols if c not in pf.schema_arrow.names]
    if missing:
        return [f"column(s) {missing} missing"]
    if pf.metadata.num_rows != len(rows):
        return [f"{pf.metadata.num_rows} rows but archive.json and the manifest say {len(rows)}"]
    scalar = pf.read(columns=[c for c in cols if c != "image"]).to_pandas()
    problems = id_problems(scalar["sample_id"].astype(str).tolist(), ids)
    checks = (
        ("column index", scalar["index"].to_numpy(np.int64), np.arange(len(rows))),
        ("column seed", scalar["seed"].to_numpy(np.int64), rows["seed"].to_numpy(np.int64)),
        ("label columns", scalar[names].to_numpy(np.int64), rows[names].to_numpy(np.int64)),
        ("prob columns", scalar[[f"prob_{x}" for x in names]].to_numpy(np.float32), rows[[f"prob_{x}" for x in names]].to_numpy(np.float32)),
    )
    for what, got, want in checks:
        d = _first_diff(what, got, want, ids, names if got.ndim == 2 else None)
        if d:
            problems.append(d)
    hashes: list[str] = []
    for rb in pf.iter_batches(batch_size=256, columns=["image"]):
        for k, b in enumerate(rb.column("image").field("bytes").to_pylist()):
            r = len(hashes)
            if b is None:
                return problems + [f"row {r} (sample {ids[r] if r < len(ids) else '?'}): empty image"]
            img = decode_png(b)
            if img.shape != (res, res):
                return problems + [f"row {r}: image {img.shape}, expected {(res, res)}"]
            hashes.append(pixel_sha256(img))
    d = _first_diff("image pixels (sha256)", np.array(hashes, dtype=object), rows["pixel_sha256"].to_numpy(object), ids)
    return problems + ([d] if d else [])


def _check_wds(path: Path, rows: pd.DataFrame, info: Mapping[str, Any], shard: int) -> list[str]:
    names, res = list(info["label_names"]), int(info["resolution"])
    ids = rows["sample_id"].tolist()
    labels = rows[names].to_numpy(np.int64)
    probs = rows[[f"prob_{x}" for x in names]].to_numpy(np.float32)
    seeds = rows["seed"].to_numpy(np.int64)
    got_ids: list[str] = []
    hashes: list[str] = []
    problems: list[str] = []
    with open(path, "rb") as fh:
        for r, (key, png, meta) in enumerate(iter_tar_samples(fh, str(path))):
            got_ids.append(key)
            if r >= len(ids):
                continue
            where = f"sample {r} ({key})"
            if meta.get("sample_id") != key or meta.get("shard") != shard or meta.get("index") != r:
                problems.append(f"{where}: json says sample_id {meta.get('sample_id')!r}, shard {meta.get('shard')}, index {meta.get('index')}")
            lab = meta.get("labels") or {}
            if [lab.get(n) for n in names] != labels[r].tolist():
                bad = next(n for j, n in enumerate(names) if lab.get(n) != labels[r, j])
                problems.append(f"{where} label {bad}: {lab.get(bad)}, manifest {labels[r, names.index(bad)]}")
            pr = meta.get("probs") or {}
            if not np.array_equal(np.asarray([pr.get(n, np.nan) for n in names], np.float32), probs[r]):
                problems.append(f"{where}: probs differ from the manifest")
            if meta.get("seed") != int(seeds[r]):
                problems.append(f"{where}: seed {meta.get('seed')}, manifest {int(seeds[r])}")
            img = decode_png(png)
            if img.shape != (res, res):
                return problems + [f"{where}: image {img.shape}, expected {(res, res)}"]
            hashes.append(pixel_sha256(img))
            if len(problems) > 5:
                break
    problems = id_problems(got_ids, ids) + problems
    if not problems:
        d = _first_diff("image pixels (sha256)", np.array(hashes, dtype=object), rows["pixel_sha256"].to_numpy(object), ids)
        problems += [d] if d else []
    return problems


def check_shard(root: str, info: Mapping[str, Any], entry: Mapping[str, Any], rows: pd.DataFrame) -> list[Check]:
    """Every format of one release shard against its manifest rows (sorted by index) and archive.json."""
    out = []
    for fmt, rel in entry["files"].items():
        p = Path(root) / rel
        try:
            if not p.is_file():
                raise FileNotFoundError("missing")
            problems = attr_problems(read_shard_attrs(p, fmt), info, entry)
            if fmt == "h5":
                problems += _check_h5(p, rows, info)
            elif fmt == "parquet":
                problems += _check_parquet(p, rows, info)
            else:
                problems += _check_wds(p, rows, info, int(entry["shard"]))
            out.append(Check(rel, not problems, "; ".join(problems) if problems else f"{len(rows)} samples match the manifest"))
        except Exception as exc:  # noqa: BLE001 - every failure is reported, not raised
            out.append(Check(rel, False, f"{type(exc).__name__}: {exc}"))
    if "dicom" in info["formats"]:
        rel = dicom_folder(int(entry["shard"]))
        try:
            problems = check_dicom_shard(Path(root), rows, info["label_names"], int(info["resolution"]))
            out.append(Check(rel, not problems, "; ".join(problems) if problems else f"{len(rows)} DICOM files match the manifest"))
        except Exception as exc:  # noqa: BLE001
            out.append(Check(rel, False, f"{type(exc).__name__}: {exc}"))
    return out
