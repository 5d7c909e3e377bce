"""Write one archive shard as Parquet in the Hugging Face ``datasets`` Image convention.

The image column is a struct ``{bytes: PNG, path: "<sample_id>.png"}`` and the schema carries the
``huggingface`` features metadata, so ``datasets.load_dataset("parquet", ...)`` decodes images without
any code of ours. Each micro-batch becomes one row group through a streaming ``ParquetWriter``, so memory
stays bounded by the micro-batch. PNG bytes are deterministic (fixed zlib level, no metadata chunks),
which is what lets ``regenerate`` compare bytes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from ..utils.atomic import atomic_path, finish_rows
from .layout import PARQUET_META_KEY, PNG_COMPRESS_LEVEL

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def encode_png(image: np.ndarray, compress_level: int = PNG_COMPRESS_LEVEL) -> bytes:
    """8-bit grayscale PNG of ``image`` (uint8 ``[R, R]``); same pixels -> same bytes."""
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"encode_png expects uint8 [H, W], got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG", compress_level=compress_level, optimize=False)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """uint8 ``[H, W]`` from PNG bytes (raises on corrupt data)."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if im.mode != "L":
            im = im.convert("L")
        return np.asarray(im, dtype=np.uint8)


def hf_features(label_names: Sequence[str], pairs: bool = False) -> dict[str, Any]:
    """``datasets`` feature description of a shard, stored as Parquet schema metadata."""
    value = lambda dtype: {"dtype": dtype, "_type": "Value"}  # noqa: E731
    feats: dict[str, Any] = {"sample_id": value("string"), "image": {"_type": "Image"}, "index": value("int32"), "seed": value("int64")}
    feats.update({n: value("int8") for n in label_names})
    feats.update({f"prob_{n}": value("float32") for n in label_names})
    if pairs:
        feats.update({"pair_id": value("int64"), "base_sample_id": value("string"), "edit": value("string")})
    return feats


def shard_schema(label_names: Sequence[str], attrs: dict[str, Any] | None = None, pairs: bool = False) -> pa.Schema:
    fields = [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("image", IMAGE_TYPE),
        pa.field("index", pa.int32(), nullable=False),
        pa.field("seed", pa.int64()),
        *(pa.field(n, pa.int8()) for n in label_names),
        *(pa.field(f"prob_{n}", pa.float32()) for n in label_names),
        *((pa.field("pair_id", pa.int64()), pa.field("base_sample_id", pa.string()), pa.field("edit", pa.string())) if pairs else ()),
    ]
    meta = {
        b"huggingface": json.dumps({"info": {"features": hf_features(label_names, pairs)}}, sort_keys=True).encode(),
        PARQUET_META_KEY: json.dumps(dict(attrs or {}), sort_keys=True).encode(),
    }
    return pa.schema(fields, metadata=meta)


class ParquetShardWriter:
    """Context manager streaming micro-batches into row groups; renamed into place on clean exit."""

    def __init__(
        self,
        path: str | os.PathLike,
        n: int,
        label_names: Sequence[str],
        attrs: dict[str, Any] | None = None,
        row_group_rows: int | None = None,
        row_group_bytes: int | None = None,
        pairs: bool = False,
    ):
        """Row groups of ``row_group_rows`` rows, or of whole writes until ``row_group_bytes`` of PNG bytes
        (the writer does not know image sizes in advance), or one per write when neither is given.

        Buffered rows bound the writer's memory; larger groups mean fewer footer entries (about 1.6 KiB
        each) and fewer reads for whoever scans the shard.
        """
        if row_group_rows is not None and row_group_bytes is not None:
            raise ValueError("give row_group_rows or row_group_bytes, not both")
        self.path = Path(path)
        self.n = int(n)
        self.label_names = list(label_names)
        self.pairs = bool(pairs)
        self.schema = shard_schema(self.label_names, {**(attrs or {}), "count": self.n}, self.pairs)
        self.row_group_rows = None if row_group_rows is None else max(1, int(row_group_rows))
        self.row_group_bytes = None if row_group_bytes is None else max(1, int(row_group_bytes))
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._buffered_bytes = 0
        self._written = 0
        self._stack: contextlib.ExitStack | None = None
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> "ParquetShardWriter":
        stack = contextlib.ExitStack()
        tmp = stack.enter_context(atomic_path(self.path))
        # PNG payloads are already compressed; the small numeric columns gain little from more.
        self._writer = pq.ParquetWriter(tmp, self.schema, compression="none", write_statistics=["index", "sample_id"])
        self._stack = stack
        return self

    def write(
        self,
        start: int,
        png: Sequence[bytes],
        labels: np.ndarray,
        probs: np.ndarray,
        sample_ids: Sequence[str],
        seeds: Sequence[int],
        pairs: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Append rows ``[start, start + len(png))``; rows must arrive in index order."""
        if start != self._written:
            raise ValueError(f"{self.path}: rows must be written in order; expected start {self._written}, got {start}")
        b = len(png)
        if start + b > self.n:
            raise IndexError(f"{self.path}: rows [{start}, {start + b}) outside shard of {self.n}")
        ids = [str(s) for s in sample_ids]
        cols: list[pa.Array] = [
            pa.array(ids, pa.string()),
            pa.StructArray.from_arrays(
                [pa.array(list(png), pa.binary()), pa.array([f"{s}.png" for s in ids], pa.string())], fields=list(IMAGE_TYPE)
            ),
            pa.array(np.arange(start, start + b, dtype=np.int32)),
            pa.array(np.asarray(seeds, dtype=np.int64)),
            *(pa.array(np.asarray(labels[:, j], dtype=np.int8)) for j in range(len(self.label_names))),
            *(pa.array(np.asarray(probs[:, j], dtype=np.float32)) for j in range(len(self.label_names))),
        ]
        if self.pairs:
            cols += [pa.array(np.asarray(pairs["pair_id"], dtype=np.int64)), pa.array([str(x) for x in pairs["base_sample_id"]], pa.string()),
                     pa.array([str(x) for x in pairs["edit"]], pa.string())]
        table = pa.Table.from_arrays(cols, schema=self.schema)
        self._written += b
        if self.row_group_rows is None and self.row_group_bytes is None:
            self._writer.write_table(table)
            return
        self._buffer.append(table)
        self._buffered += b
        self._buffered_bytes += sum(len(p) for p in png)
        if self.row_group_rows is not None and self._buffered >= self.row_group_rows:
            self._flush(final=False)
        elif self.row_group_bytes is not None and self._buffered_bytes >= self.row_group_bytes:
            self._flush(final=True)

    def _flush(self, final: bool) -> None:
        """Write buffered rows as full row groups (and, when ``final``, the remainder)."""
        if not self._buffer:
            return
        table = pa.concat_tables(self._buffer)
        self._buffered_bytes = 0
        if self.row_group_rows is None:  # sized by bytes: everything buffered is one group
            self._writer.write_table(table, row_group_size=max(1, table.num_rows))
            self._buffer, self._buffered = [], 0
            return
        keep = 0 if final else table.num_rows % self.row_group_rows
        out, rest = table.slice(0, table.num_rows - keep), table.slice(table.num_rows - keep)
        if out.num_rows:
            self._writer.write_table(out, row_group_size=self.row_group_rows)
        self._buffer, self._buffered = ([rest] if keep else []), keep

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self._stack is not None and self._writer is not None
        err: BaseException | None = None
        try:
            if exc_type is None:
                self._flush(final=True)
        except BaseException as e:  # noqa: BLE001 - the temporary file must still be removed
            err = e
        self._writer.close()
        finish_rows(self._stack, self.path, self.n, self._written, (exc_type, exc, tb), err)
        return False


def read_parquet_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """The synthcxr attributes stored in a Parquet shard's schema metadata."""
    return read_parquet_attrs_from_schema(pq.read_schema(path), path)


def read_parquet_attrs_from_schema(schema: pa.Schema, name: str | os.PathLike) -> dict[str, Any]:
    """The synthcxr attributes in ``schema``'s metadata (of the shard called ``name`` in errors)."""
    meta = schema.metadata or {}
    if PARQUET_META_KEY not in meta:
        raise ValueError(f"{name}: no '{PARQUET_META_KEY.decode()}' schema metadata; not an archive shard")
    return json.loads(meta[PARQUET_META_KEY])
