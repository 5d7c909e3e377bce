"""Write and read one release shard as a WebDataset tar: per sample ``<sample_id>.png`` and ``<sample_id>.json``.

The tar is written with ``webdataset.TarWriter`` (the format's own writer) with a fixed modification time,
owner and mode, so the bytes are a function of the content and a rerun reproduces the same SHA-256. The
JSON member holds the sample's id, labels and steering probabilities by name, its seed and its place in
the release (``shard``, ``index``), which is what a consumer streaming the tar with ``webdataset`` or
``datasets`` needs and what lets the readers check that a tar is the shard the manifest describes.
"""

from __future__ import annotations

import contextlib
import json
import os
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..utils.atomic import atomic_path, finish_rows

#: Owner, group and mtime of every member: fixed so tar bytes never depend on who or when.
_OWNER, _MTIME = "synthcxr", 0


def sample_json(sample_id: str, label_names: Sequence[str], labels: np.ndarray, probs: np.ndarray, seed: int,
                shard: int, index: int, pair: dict[str, Any] | None = None) -> bytes:
    """The ``.json`` member of one sample (sorted keys, compact: same content, same bytes); ``pair`` adds
    pair_id, base_sample_id and edit."""
    obj = {
        "sample_id": str(sample_id),
        "labels": {n: int(v) for n, v in zip(label_names, labels)},
        "probs": {n: float(np.float32(p)) for n, p in zip(label_names, probs)},
        "seed": int(seed),
        "shard": int(shard),
        "index": int(index),
        **({"pair_id": int(pair["pair_id"]), "base_sample_id": str(pair["base_sample_id"]), "edit": str(pair["edit"])} if pair else {}),
    }
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


class WdsShardWriter:
    """Context manager appending samples in index order; the tar is renamed into place on clean exit."""

    def __init__(self, path: str | os.PathLike, n: int, label_names: Sequence[str], shard: int):
        self.path = Path(path)
        self.n = int(n)
        self.label_names = list(label_names)
        self.shard = int(shard)
        self._written = 0
        self._stack: contextlib.ExitStack | None = None
        self._tar = None

    def __enter__(self) -> "WdsShardWriter":
        import webdataset as wds

        stack = contextlib.ExitStack()
        tmp = stack.enter_context(atomic_path(self.path))
        fh = stack.enter_context(open(tmp, "wb"))
        self._tar = wds.TarWriter(fh, user=_OWNER, group=_OWNER, mode=0o444, encoder=False, mtime=_MTIME)
        self._stack = stack
        return self

    def write(self, start: int, png: Sequence[bytes], labels: np.ndarray, probs: np.ndarray,
              sample_ids: Sequence[str], seeds: Sequence[int], pairs: dict[str, np.ndarray] | None = None) -> None:
        """Append rows ``[start, start + len(png))``; rows must arrive in index order."""
        if start != self._written:
            raise ValueError(f"{self.path}: rows must be written in order; expected start {self._written}, got {start}")
        if start + len(png) > self.n:
            raise IndexError(f"{self.path}: rows [{start}, {start + len(png)}) outside shard of {self.n}")
        for k, (data, sid) in enumerate(zip(png, sample_ids)):
            sid = str(sid)
            if "." in sid or "/" in sid:
                raise ValueError(f"{self.path}: sample_id {sid!r} contains '.' or '/', which WebDataset keys cannot")
            pair = {c: pairs[c][k] for c in pairs} if pairs is not None else None
            meta = sample_json(sid, self.label_names, labels[k], probs[k], int(seeds[k]), self.shard, start + k, pair)
            self._tar.write({"__key__": sid, "png": bytes(data), "json": meta})
        self._written += len(png)

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self._stack is not None and self._tar is not None
        err: BaseException | None = None
        try:
            self._tar.close()  # closes the tar stream (end blocks); the file handle closes with the stack
        except BaseException as e:  # noqa: BLE001 - the temporary file must still be removed
            err = e
        finish_rows(self._stack, self.path, self.n, self._written, (exc_type, exc, tb), err)
        return False


def iter_tar_samples(fileobj: IO[bytes], name: str = "tar") -> Iterator[tuple[str, bytes, dict[str, Any]]]:
    """``(sample_id, PNG bytes, json dict)`` of a shard tar read as a stream (no seeking: works over any fsspec file).

    Raises ``ValueError`` naming ``name`` when members are not ``<id>.json`` + ``<id>.png`` pairs.
    """
    pending: dict[str, dict[str, bytes]] = {}
    with tarfile.open(fileobj=fileobj, mode="r|") as tf:
        for m in tf:
            if not m.isfile():
                continue
            key, dot, ext = m.name.rpartition("/")[2].partition(".")
            if not dot or ext not in ("png", "json"):
                raise ValueError(f"{name}: member {m.name!r} is not <sample_id>.png or <sample_id>.json")
            fh = tf.extractfile(m)
            parts = pending.setdefault(key, {})
            parts[ext] = fh.read() if fh is not None else b""
            if len(parts) == 2:
                del pending[key]
                yield key, parts["png"], json.loads(parts["json"])
    if pending:
        raise ValueError(f"{name}: sample(s) {sorted(pending)[:3]} lack a .png or .json member; the tar is truncated or not a synthcxr shard")


def read_tar_ids(path: str | os.PathLike) -> list[str]:
    """Sample ids of a local shard tar in stored order (headers only)."""
    ids: list[str] = []
    with tarfile.open(path, mode="r") as tf:
        for m in tf.getmembers():
            key, _, ext = m.name.rpartition("/")[2].partition(".")
            if ext == "png":
                ids.append(key)
    return ids
