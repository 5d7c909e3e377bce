"""What a release shard promises: the attributes and sample ids that archive.json and the manifest expect,
and the only paths at which its files may be named.

The reader checks these whenever it opens a shard and ``verify`` checks them (with every label, probability
and pixel) for every shard, so a swapped, foreign or stale shard is refused instead of streamed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import pandas as pd
import pyarrow.parquet as pq

from .layout import FORMAT_VERSION, dicom_path_problem, shard_path_problem
from .shard_h5 import read_h5_attrs
from .shard_parquet import read_parquet_attrs
from .shard_wds import read_tar_ids

#: Value of the ``role`` attribute: working shards hold every rendered sample, release shards only released ones.
ROLE_WORK = "work"
ROLE_RELEASE = "release"


def read_shard_attrs(path: str | os.PathLike, fmt: str) -> dict[str, Any] | None:
    """Root attributes of an HDF5 shard, the ``synthcxr`` schema metadata of a Parquet shard; None for a
    WebDataset tar, which carries its identity per sample (id, shard and index in each JSON member)."""
    if fmt == "webdataset":
        return None
    return read_h5_attrs(path) if fmt == "h5" else read_parquet_attrs(path)


def read_shard_ids(path: str | os.PathLike, fmt: str) -> list[str]:
    """Sample ids of a shard in stored (index) order."""
    if fmt == "webdataset":
        return read_tar_ids(path)
    if fmt == "h5":
        with h5py.File(path, "r") as f:
            if "sample_id" not in f:
                raise ValueError(f"{path}: dataset /sample_id missing; not an archive shard")
            return [v.decode() if isinstance(v, bytes) else str(v) for v in f["sample_id"][:]]
    return [str(v) for v in pq.read_table(path, columns=["sample_id"]).column("sample_id").to_pylist()]


def expected_attrs(info: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes a release shard listed as ``entry`` in ``info["shards"]`` must carry."""
    return {
        "format_version": int(info["format_version"]),
        "role": ROLE_RELEASE,
        "shard": int(entry["shard"]),
        "count": int(entry["count"]),
        "resolution": int(info["resolution"]),
        "generator_sha256": str(info["generator"]["sha256"]),
        "label_names": list(info["label_names"]),
    }


def attr_problems(attrs: Mapping[str, Any] | None, info: Mapping[str, Any], entry: Mapping[str, Any]) -> list[str]:
    """One sentence per attribute that differs from what archive.json promises for this shard (none for a tar)."""
    out: list[str] = []
    if attrs is None:
        return out
    for key, want in expected_attrs(info, entry).items():
        have = attrs.get(key)
        if isinstance(want, list):
            have = list(have) if isinstance(have, (list, tuple)) else have
        if have != want:
            out.append(f"attribute {key!r} is {have!r} but archive.json says {want!r}")
    return out


def id_problems(ids: Sequence[str], expected: Sequence[str]) -> list[str]:
    """Where a shard's stored sample ids differ from the manifest's ids for it (index order)."""
    if list(ids) == list(expected):
        return []
    if len(ids) != len(expected):
        return [f"holds {len(ids)} sample ids but the manifest lists {len(expected)} for it"]
    k = next(i for i, (a, b) in enumerate(zip(ids, expected)) if a != b)
    n_bad = sum(a != b for a, b in zip(ids, expected))
    return [f"sample_id at index {k} is {ids[k]!r} but the manifest says {expected[k]!r} ({n_bad} position(s) differ)"]


def check_identity(path: Path, fmt: str, info: Mapping[str, Any], entry: Mapping[str, Any], expected_ids: Sequence[str]) -> None:
    """Raise ``ValueError`` naming ``path`` and every problem when the shard is not the one promised."""
    if int(info.get("format_version", -1)) != FORMAT_VERSION:
        raise ValueError(f"{path}: archive.json has format_version {info.get('format_version')}; this synthcxr reads {FORMAT_VERSION}")
    problems = attr_problems(read_shard_attrs(path, fmt), info, entry) + id_problems(read_shard_ids(path, fmt), expected_ids)
    if problems:
        raise ValueError(
            f"{path}: not the shard this release's manifest describes: " + "; ".join(problems)
            + ". Refusing to read it; run 'synthcxr verify' on the release."
        )


def shard_file_problems(info: Mapping[str, Any]) -> list[str]:
    """Shard file entries of archive.json that are not the canonical release paths (each names shard and format)."""
    out = []
    for sh in info["shards"]:
        for fmt, rel in dict(sh.get("files", {})).items():
            why = shard_path_problem(rel, int(sh["shard"]), fmt) if fmt in info["formats"] else f"format {fmt!r} is not in formats"
            if why:
                out.append(f"shards[{sh['shard']}].files.{fmt}: {why}")
    return out


def path_column_problems(man: pd.DataFrame, formats: Sequence[str]) -> list[str]:
    """Rows whose ``{fmt}_path`` column is not their shard's canonical release path (first per column)."""
    out = []
    for fmt in formats:
        col = f"{fmt}_path"
        if col not in man.columns:
            continue
        if fmt == "dicom":  # one file per sample
            whys = [dicom_path_problem(rel, int(shard), str(sid)) for rel, shard, sid in zip(man[col], man["shard"], man["sample_id"])]
        else:
            whys = [shard_path_problem(rel, int(shard), fmt) for rel, shard in zip(man[col], man["shard"])]
        bad = [r for r, why in enumerate(whys) if why]
        if bad:
            r = bad[0]
            more = f" (and {len(bad) - 1} more rows)" if len(bad) > 1 else ""
            out.append(f"column {col} row {r} (sample {man['sample_id'].iloc[r]}): {whys[r]}{more}")
    return out
