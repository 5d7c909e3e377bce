"""The metadata scan's records, held column by column so that 10^5-10^6 images cost tens of MB, not GBs.

A list of :class:`~synthcxr.data.adapters.Record` objects costs about 1.5 KB per image in Python
objects (a dict of labels, eight strings); MIMIC-CXR-JPG's 377,110 images would hold over half a
gigabyte before a pixel is decoded. :class:`RecordTable` packs records as they arrive, in blocks:
strings into Arrow string arrays (bytes plus a 4-byte offset each), labels into a float32 matrix, age
and other_finding into float arrays, view/sex/official as small dictionary-encoded columns. Only
references that are not strings (the phantom's cohort rows) stay Python objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .adapters import Record

_STR = ("source", "image_id", "patient_id", "view", "sex", "official")
#: Arrow buffers come from the system allocator: Arrow's default mimalloc pool keeps freed pages, which
#: raised the metadata pass's peak RSS at MIMIC scale from 204 to 359 MiB (bench_prepare_memory.py).
POOL = pa.system_memory_pool()
#: Records packed per block.
BLOCK = 4096


class RecordTable:
    """Append-only columnar store of scan records; row ``i`` is the ``i``-th record appended."""

    def __init__(self, labels: Sequence[str]):
        self.labels = list(labels)
        self._pending: list[Record] = []
        self._str: dict[str, list[pa.Array]] = {k: [] for k in _STR}
        self._ref: list[pa.Array | list[Any]] = []
        self._age: list[np.ndarray] = []
        self._other: list[np.ndarray] = []
        self._lab: list[np.ndarray] = []
        self._n = 0

    @classmethod
    def collect(cls, records: Iterable[Record], labels: Sequence[str]) -> "RecordTable":
        table = cls(labels)
        for r in records:
            table.append(r)
        table.flush()
        return table

    def append(self, rec: Record) -> None:
        self._pending.append(rec)
        if len(self._pending) >= BLOCK:
            self.flush()

    def flush(self) -> None:
        """Pack the pending records into one block."""
        recs, self._pending = self._pending, []
        if not recs:
            return
        for k in _STR:
            col = pa.array([getattr(r, k) for r in recs], type=pa.string(), memory_pool=POOL)
            self._str[k].append(pc.dictionary_encode(col, memory_pool=POOL) if k in ("view", "sex", "official") else col)
        refs = [r.ref for r in recs]
        self._ref.append(
            pa.array(refs, type=pa.string(), memory_pool=POOL) if all(isinstance(x, str) for x in refs) else refs
        )
        self._age.append(np.array([r.age for r in recs], dtype=np.float64))
        self._other.append(np.array([r.other_finding for r in recs], dtype=np.float32))
        self._lab.append(np.array([[r.labels.get(n, np.nan) for n in self.labels] for r in recs], dtype=np.float32))
        self._n += len(recs)

    def __len__(self) -> int:
        return self._n + len(self._pending)

    # ---- column access (flushes first) ------------------------------------------------------------
    def strings(self, key: str) -> list[str | None]:
        """One string column as a Python list (callers take it for the rows they need)."""
        self.flush()
        return [x for block in self._str[key] for x in block.to_pylist()]

    def column(self, key: str) -> pa.ChunkedArray:
        self.flush()
        blocks = self._str[key]
        if blocks and any(b.type != blocks[0].type for b in blocks):  # dictionary blocks differ in index width
            blocks = [pc.cast(b, pa.string(), memory_pool=POOL) for b in blocks]
        return pa.chunked_array(blocks, type=blocks[0].type if blocks else pa.string())

    def codes(self, key: str, rows: np.ndarray | None = None) -> tuple[list[str | None], np.ndarray]:
        """Dictionary-encode one string column (over ``rows``, default all): (unique values, code per row).

        Unique values keep first-occurrence order; a null gets its own code. No per-row Python string is made.
        """
        col = self.column(key).combine_chunks(memory_pool=POOL)
        if isinstance(col, pa.DictionaryArray):
            col = pc.cast(col, pa.string(), memory_pool=POOL)
        if rows is not None:
            col = pc.take(col, pa.array(rows, type=pa.int64()), memory_pool=POOL)
        enc = pc.dictionary_encode(col, null_encoding="encode", memory_pool=POOL)
        return enc.dictionary.to_pylist(), enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)

    def first_occurrences(self, key: str) -> np.ndarray:
        """Indices of the rows holding the first occurrence of each value of a string column, in order."""
        _, codes = self.codes(key)
        _, first = np.unique(codes, return_index=True)
        return np.sort(first)

    def items(self) -> Iterator[tuple[str, Any]]:
        """(source, ref) per record, in order, one block at a time."""
        self.flush()
        for src, ref in zip(self._str["source"], self._ref):
            refs = ref.to_pylist() if isinstance(ref, pa.Array) else ref
            yield from zip(src.to_pylist(), refs)

    def age(self) -> np.ndarray:
        self.flush()
        return np.concatenate(self._age) if self._age else np.zeros(0)

    def other_finding(self) -> np.ndarray:
        self.flush()
        return np.concatenate(self._other) if self._other else np.zeros(0, np.float32)

    def label_matrix(self) -> np.ndarray:
        self.flush()
        return np.concatenate(self._lab) if self._lab else np.zeros((0, len(self.labels)), np.float32)

    def nbytes(self) -> int:
        """Bytes held by the packed columns (Python-object references counted as 8 bytes each)."""
        self.flush()
        n = sum(a.nbytes for blocks in self._str.values() for a in blocks)
        n += sum(r.nbytes if isinstance(r, pa.Array) else 8 * len(r) for r in self._ref)
        n += sum(a.nbytes for a in (*self._age, *self._other, *self._lab))
        return int(n)
