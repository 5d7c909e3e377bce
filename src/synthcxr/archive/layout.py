"""Where things live in an archive's working area and in its release, and the constants every reader
and writer agrees on.

An archive folder ``results/archive/{name}/`` holds the plan, a working area ``work/`` (every LCO
latent and every rendered sample, released or not: the operator's) and the release ``release/`` (only
released samples: what is handed to consumers). Keeping both layouts in one place means the writers,
``verify``, ``regenerate`` and the consumer API can never drift apart about file names or versions.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

#: Bumped whenever the on-disk layout of a release (shards, manifest, archive.json) changes
#: incompatibly. 2: the release holds only released samples, in per-format folders.
FORMAT_VERSION = 2
#: zlib level for PNG bytes in Parquet shards. Fixed: regeneration compares PNG bytes exactly.
PNG_COMPRESS_LEVEL = 6
#: Formats a release shard can be written in, mapped to their file extension (and folder name).
FORMATS = {"h5": "h5", "parquet": "parquet", "webdataset": "tar"}
#: Per-sample exports a release can add to its shards: one DICOM file (and JSON label sidecar) per sample.
EXPORTS = ("dicom",)
#: Formats of the working shards the sample rule renders; WebDataset tars are built from the Parquet PNGs.
WORK_FORMATS = ("h5", "parquet")
#: PNG MiB per row group of a working Parquet shard (whole micro-batches; the release's row groups are
#: ``archive.row_group_mb`` instead): few row groups at small resolutions, a bounded buffer at any.
WORK_ROW_GROUP_MB = 2
#: Schema-metadata key under which Parquet shards carry the same attributes as HDF5 shards.
PARQUET_META_KEY = b"synthcxr"

# -- the release (results/archive/{name}/release/) -------------------------------------------------
MANIFEST = "manifest.parquet"
SUMS = "SHA256SUMS"
ARCHIVE_JSON = "archive.json"
#: The dataset card; README.md with YAML front matter is what ``datasets.load_dataset`` reads.
CARD = "README.md"
#: Latent of every released sample and where it was rendered, for ``synthcxr regenerate``.
RELEASE_LATENTS = "latents.parquet"
#: The release described in Croissant 1.0 (archive/croissant.py), for catalogues and loaders.
CROISSANT = "croissant.json"
#: Files the release holds besides its shards.
RELEASE_FILES = (MANIFEST, ARCHIVE_JSON, RELEASE_LATENTS, CARD, CROISSANT, SUMS)

# -- the working area (results/archive/{name}/work/) -----------------------------------------------
WORK = "work"
RELEASE = "release"
#: Planned against released (archive/delivery.py), kept in the working area even when no release is made.
DELIVERY_JSON = "delivery.json"

_SHARD_RE = re.compile(r"shard-(\d+)\.(parquet|h5|tar)$")


def canonical_formats(formats) -> list[str]:
    """``archive.formats`` checked and in one canonical order (h5, parquet, webdataset, then dicom)."""
    formats = list(formats)
    bad = [f for f in formats if f not in FORMATS and f not in EXPORTS]
    if bad or not shard_formats(formats):
        raise ValueError(f"archive.formats: {formats} must hold at least one of {sorted(FORMATS)}, plus optionally {sorted(EXPORTS)}")
    return [f for f in (*FORMATS, *EXPORTS) if f in formats]


def shard_formats(formats) -> list[str]:
    """The shard formats among ``formats`` (the per-sample DICOM export is not one)."""
    return [f for f in FORMATS if f in formats]


def dicom_folder(shard: int) -> str:
    """Folder of one release shard's DICOM files, relative to the release folder."""
    return f"dicom/shard-{int(shard):05d}"


def dicom_relpath(shard: int, sample_id: str) -> str:
    """Path of a sample's DICOM file relative to the release folder; its JSON sidecar has the same stem."""
    return f"{dicom_folder(shard)}/{sample_id}.dcm"


def dicom_sidecar(rel: str) -> str:
    """The JSON label sidecar beside the DICOM file ``rel`` (same folder and stem)."""
    return str(rel)[: -len(".dcm")] + ".json"


def dicom_path_problem(rel: object, shard: int, sample_id: str) -> str | None:
    """Why ``rel`` may not be followed as the DICOM file of ``sample_id`` in ``shard``, or None when canonical."""
    want = dicom_relpath(shard, sample_id)
    return None if str(rel) == want else f"{str(rel)!r} is not the sample's DICOM path {want!r}"


def stream_format(formats) -> str:
    """The format a reader of whole files prefers among ``formats``: Parquet, else WebDataset, else HDF5
    (the card's ``train`` split and ``stream``'s default)."""
    return next(f for f in ("parquet", "webdataset", "h5") if f in formats)


def work_formats(formats) -> list[str]:
    """Working shard formats the release ``formats`` need: HDF5 for h5, Parquet (PNG bytes) for parquet and webdataset."""
    formats = canonical_formats(formats)
    return [f for f in WORK_FORMATS if f in formats or (f == "parquet" and "webdataset" in formats)]


def shard_name(shard: int, fmt: str) -> str:
    """File name of shard ``shard`` in format ``fmt`` (``h5``, ``parquet`` or ``webdataset``)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown archive format {fmt!r}; expected one of {sorted(FORMATS)}")
    return f"shard-{shard:05d}.{FORMATS[fmt]}"


def release_shard_relpath(shard: int, fmt: str) -> str:
    """Path of a release shard relative to the release folder: one folder per format."""
    return f"{fmt}/{shard_name(shard, fmt)}"


def shard_path_problem(rel: object, shard: int, fmt: str) -> str | None:
    """Why ``rel`` may not be followed as release shard ``shard`` in ``fmt``, or None when it is the canonical path.

    A consumer opens the file a path column names, so a path is accepted only when it is exactly the one
    the layout gives: never absolute, never through ``..``, never another shard's file.
    """
    want = release_shard_relpath(shard, fmt)
    text = str(rel)
    if text == want:
        return None
    if os.path.isabs(text) or text.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", text):
        why = "is absolute"
    elif ".." in re.split(r"[/\\]", text):
        why = "leaves the release through '..'"
    else:
        why = "is not the shard's canonical path"
    return f"{text!r} {why}; shard {shard} in {fmt} is {want!r}"


def work_shard_relpath(shard: int, fmt: str) -> str:
    """Path of a rendered (working) shard relative to the working area."""
    return f"shards/{shard_name(shard, fmt)}"


def latents_relpath(shard: int) -> str:
    """Path of a shard's optimised latents (written by the lco stage) relative to the working area."""
    return f"latents/shard-{shard:05d}.parquet"


def shard_index_of(path: str | os.PathLike) -> int:
    """Shard number encoded in a file name like ``shard-00012.parquet``; raises naming the file otherwise."""
    m = _SHARD_RE.search(Path(path).name)
    if not m:
        raise ValueError(f"{path}: file name must look like shard-00000.parquet / shard-00000.h5 / shard-00000.tar")
    return int(m.group(1))


#: Per-sample columns of a release whose plan holds paired counterfactuals, in every shard format and the
#: manifest: the group (-1: not in a pair), the variant's base ("" for a base) and its edit ("+Effusion").
PAIR_FIELDS = ("pair_id", "base_sample_id", "edit")
