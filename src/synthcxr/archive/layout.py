"""Where things live inside an archive folder and the constants every reader and writer agrees on.

Keeping the layout in one place means the writer, ``verify``, ``regenerate`` and the consumer API can
never drift apart about file names or format versions.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

#: Bumped whenever the on-disk layout of a shard or the manifest changes incompatibly.
FORMAT_VERSION = 1
#: zlib level for PNG bytes in Parquet shards. Fixed: regeneration compares PNG bytes exactly.
PNG_COMPRESS_LEVEL = 6
#: Formats a shard can be written in, mapped to their file extension.
FORMATS = {"h5": "h5", "parquet": "parquet"}
#: Schema-metadata key under which Parquet shards carry the same attributes as HDF5 shards.
PARQUET_META_KEY = b"synthcxr"

MANIFEST = "manifest.parquet"
SUMS = "SHA256SUMS"
ARCHIVE_JSON = "archive.json"
CARD = "DATASET_CARD.md"

_SHARD_RE = re.compile(r"shard-(\d+)\.(parquet|h5)$")


def shard_name(shard: int, fmt: str) -> str:
    """File name of shard ``shard`` in format ``fmt`` (``h5`` or ``parquet``)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown archive format {fmt!r}; expected one of {sorted(FORMATS)}")
    return f"shard-{shard:05d}.{FORMATS[fmt]}"


def shard_relpath(shard: int, fmt: str) -> str:
    """Path of a rendered shard relative to the archive folder."""
    return f"shards/{shard_name(shard, fmt)}"


def latents_relpath(shard: int) -> str:
    """Path of a shard's optimised latents (written by the lco stage) relative to the archive folder."""
    return f"latents/shard-{shard:05d}.parquet"


def shard_index_of(path: str | os.PathLike) -> int:
    """Shard number encoded in a file name like ``shard-00012.parquet``; raises naming the file otherwise."""
    m = _SHARD_RE.search(Path(path).name)
    if not m:
        raise ValueError(f"{path}: file name must look like shard-00000.parquet / shard-00000.h5")
    return int(m.group(1))
