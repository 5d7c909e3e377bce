"""The latents shard format: one writer, one checked reader.

``latents/shard-XXXXX.parquet`` is written by the lco stage (one file per shard) and read by rendering,
finalising, regenerating and the checker-agreement evaluation. The lco stage owns the format, so its
schema, its writer and its reader live here once: the writer enforces :func:`latents_schema`, the
reader checks a file against the contract (columns present, indices 0..n-1, shard number, one latent
length) and fails with the file name in the message.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

# layout.py is standard-library only: the shard file naming is shared with the rendered archive shards.
from ..archive.layout import shard_index_of
from ..utils.atomic import atomic_path

#: Parquet key-value metadata key under which the writer stores ``meta`` as JSON.
META_KEY = "synthcxr"
#: Columns the lco stage always writes; label-dependent columns are checked separately.
REQUIRED = ("sample_id", "index", "seed", "z", "success")
#: Columns carried into the manifest when present.
OPTIONAL = ("attempts", "steps", "g_evals", "grad_steps")

_MISSING = "{path} missing: run the lco stage first (snakemake lco)"


#: Columns of a shard whose plan holds paired counterfactuals (:mod:`synthcxr.lco.pair_plan`).
PAIR_COLUMNS = ("pair_id", "base_sample_id", "edit", "latent_dist", "embed_dist")


def latents_schema(labels: Sequence[str], latent_dim: int, pairs: bool = False) -> pa.Schema:
    """Arrow schema of a latents shard (z is a fixed-size list of float32); with ``pairs``, the pair columns:
    ``pair_id`` (-1: not in a pair), ``base_sample_id`` and ``edit`` ("" for a base or a single sample) and
    ``latent_dist`` (a variant's |z - z_base| / sqrt(d); NaN otherwise) and ``embed_dist`` (a variant's 1 - cos
    between its and its base's patient-verifier embeddings when LCO used that proximity term; NaN otherwise)."""
    fields = [
        pa.field("sample_id", pa.string()),
        pa.field("shard", pa.int64()),
        pa.field("index", pa.int64()),
        pa.field("seed", pa.int64()),
        pa.field("attempts", pa.int64()),
        pa.field("z", pa.list_(pa.float32(), int(latent_dim))),
    ]
    fields += [pa.field(f"target_{n}", pa.int8()) for n in labels]
    fields += [pa.field(f"prob_{n}", pa.float32()) for n in labels]
    fields += [
        pa.field("steps", pa.int64()),
        pa.field("g_evals", pa.float64()),
        pa.field("grad_steps", pa.int64()),
        pa.field("success", pa.bool_()),
        pa.field("reason", pa.string()),
    ]
    if pairs:
        fields += [pa.field("pair_id", pa.int64()), pa.field("base_sample_id", pa.string()), pa.field("edit", pa.string()),
                   pa.field("latent_dist", pa.float32()), pa.field("embed_dist", pa.float32())]
    return pa.schema(fields)


def write_latents(table: pd.DataFrame, labels: Sequence[str], path: str | os.PathLike, meta: Mapping[str, Any] | None = None) -> None:
    """Write a latents shard atomically; ``meta`` goes into the Parquet key-value metadata as JSON.

    ``table`` holds every column of :func:`latents_schema` for ``labels``, with ``z`` one float32 vector
    per row.
    """
    z = np.stack(table["z"].to_list()).astype(np.float32) if len(table) else np.zeros((0, 0), np.float32)
    d = z.shape[1] if len(table) else int((meta or {}).get("latent_dim", 0))
    schema = latents_schema(labels, d, pairs="pair_id" in table.columns)
    cols = []
    for f in schema:
        if f.name == "z":
            cols.append(pa.FixedSizeListArray.from_arrays(pa.array(z.reshape(-1), pa.float32()), d))
        else:
            cols.append(pa.array(table[f.name].to_numpy(), type=f.type))
    if meta:
        schema = schema.with_metadata({META_KEY: json.dumps(dict(meta), sort_keys=True)})
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_arrays(cols, schema=schema), tmp)


@dataclass
class ShardLatents:
    """A latents shard, rows ordered by ``index`` (the position of each sample inside its shard)."""

    path: Path
    shard: int
    table: pd.DataFrame  # every column except z, sorted by index
    z: np.ndarray  # float32 [n, latent_dim]
    targets: np.ndarray  # uint8 [n, L] in label order
    probs: np.ndarray  # float32 [n, L] in label order
    label_names: list[str]

    def __len__(self) -> int:
        return len(self.table)

    @property
    def sample_ids(self) -> list[str]:
        return self.table["sample_id"].astype(str).tolist()


def target_labels(columns: Sequence[str]) -> list[str]:
    """Label names from the ``target_<label>`` columns among ``columns``, in column order."""
    return [str(n)[len("target_"):] for n in columns if str(n).startswith("target_")]


def latents_labels(path: str | os.PathLike) -> list[str]:
    """Label names of a latents shard, from its ``target_<label>`` columns in file order (schema only)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(_MISSING.format(path=path))
    return target_labels(pq.read_schema(path).names)


def _z_matrix(col: pa.ChunkedArray, path: Path) -> np.ndarray:
    arr = col.combine_chunks()
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type)):
        raise ValueError(f"{path}: column 'z' must be list<float32>, found {arr.type}")
    n = len(arr)
    if n == 0:
        return np.zeros((0, 0), np.float32)
    if arr.null_count:
        raise ValueError(f"{path}: column 'z' has {arr.null_count} null latent(s); rerun the lco stage")
    lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
    if lengths.min() != lengths.max() or lengths.min() == 0:
        raise ValueError(f"{path}: latents in column 'z' have unequal lengths {sorted(set(lengths.tolist()))[:5]}")
    flat = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(n, int(lengths[0]))


def read_latents(path: str | os.PathLike, label_names: Sequence[str]) -> ShardLatents:
    """Load and check ``latents/shard-XXXXX.parquet`` for the configured ``label_names``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(_MISSING.format(path=path))
    shard = shard_index_of(path)
    tbl = pq.read_table(path)
    names = list(label_names)
    need = [*REQUIRED, *(f"target_{n}" for n in names), *(f"prob_{n}" for n in names)]
    missing = [c for c in need if c not in tbl.column_names]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; the latents file does not match the configured labels "
            f"{names} or was written by an older lco stage - rerun lco"
        )
    z = _z_matrix(tbl.column("z"), path)
    df = tbl.drop_columns(["z"]).to_pandas()
    order = np.argsort(df["index"].to_numpy(), kind="stable")
    df = df.iloc[order].reset_index(drop=True)
    z = z[order] if len(z) else z
    idx = df["index"].to_numpy()
    if not np.array_equal(idx, np.arange(len(df))):
        raise ValueError(f"{path}: column 'index' must hold 0..{len(df) - 1} exactly once each")
    if "shard" in df.columns and len(df) and not (df["shard"].to_numpy() == shard).all():
        raise ValueError(f"{path}: column 'shard' disagrees with the shard number {shard} in the file name")
    if df["sample_id"].duplicated().any():
        dup = df.loc[df["sample_id"].duplicated(), "sample_id"].iloc[0]
        raise ValueError(f"{path}: duplicate sample_id {dup!r}")
    targets = df[[f"target_{n}" for n in names]].to_numpy()
    if len(targets) and not np.isin(targets, (0, 1)).all():
        raise ValueError(f"{path}: target_<label> columns must hold 0/1")
    probs = df[[f"prob_{n}" for n in names]].to_numpy(dtype=np.float32)
    df["success"] = df["success"].astype(bool)
    return ShardLatents(
        path=path,
        shard=shard,
        table=df,
        z=np.ascontiguousarray(z, dtype=np.float32),
        targets=targets.astype(np.uint8),
        probs=probs,
        label_names=names,
    )
