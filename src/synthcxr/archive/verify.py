"""``synthcxr verify PATH``: prove an archive folder is intact before anyone trains on it.

Checks, each reported per file as OK or FAILED with a reason: every SHA256SUMS entry; every shard opens
and decodes completely (HDF5 chunks decompress, every PNG decodes at the archive resolution); shard
counts and sample ids agree with archive.json and the manifest; HDF5 and Parquet copies of a shard
hold the same pixels. Exit code 1 on any failure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ..utils.hashing import sha256_file
from .layout import ARCHIVE_JSON, MANIFEST, SUMS
from .shard_parquet import decode_png


@dataclass
class Check:
    """Outcome for one file (or one aspect of the archive)."""

    path: str
    ok: bool
    reason: str = ""
    warning: bool = False  # not a failure, but worth a look (e.g. a stray file)

    def line(self) -> str:
        tag = "FAILED" if not self.ok else ("WARN  " if self.warning else "OK    ")
        return f"{tag} {self.path}" + (f": {self.reason}" if self.reason else "")


def check_sums(root: Path) -> list[Check]:
    """Every line of SHA256SUMS: file exists and its SHA-256 matches."""
    sums = root / SUMS
    if not sums.exists():
        return [Check(SUMS, False, "missing; the archive was never finalised (snakemake finalize_archive)")]
    out = []
    listed: set[str] = set()
    for no, raw in enumerate(sums.read_text().splitlines(), 1):
        if not raw.strip():
            continue
        digest, sep, rel = raw.partition("  ")
        if not sep or len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            out.append(Check(f"{SUMS}:{no}", False, f"malformed line {raw[:80]!r}"))
            continue
        p = root / rel
        listed.add(rel)
        if not p.is_file():
            out.append(Check(rel, False, "listed in SHA256SUMS but missing"))
            continue
        actual = sha256_file(p)
        out.append(Check(rel, actual == digest, "" if actual == digest else f"checksum mismatch (expected {digest[:12]}..., got {actual[:12]}...)"))
    for sub in ("shards", "latents"):
        for p in sorted((root / sub).glob("*")) if (root / sub).is_dir() else []:
            rel = f"{sub}/{p.name}"
            if rel not in listed:
                why = "temporary file of an interrupted writer; safe to delete" if p.name.startswith(".tmp-") else "not listed in SHA256SUMS; not part of the release"
                out.append(Check(rel, True, why, warning=True))
    return out


def _read_h5(path: Path, count: int, res: int, L: int) -> tuple[list[str], np.ndarray]:
    with h5py.File(path, "r") as f:
        for name, shape in (("images", (count, res, res)), ("labels", (count, L)), ("probs", (count, L)), ("sample_id", (count,))):
            if name not in f:
                raise ValueError(f"dataset /{name} missing")
            if f[name].shape != shape:
                raise ValueError(f"/{name} has shape {f[name].shape}, expected {shape}")
        if int(f.attrs.get("count", -1)) != count:
            raise ValueError(f"attr count={f.attrs.get('count')} but archive.json says {count}")
        ids = [s.decode() if isinstance(s, bytes) else str(s) for s in f["sample_id"][:]]
        digest = hashlib.sha256()
        imgs = f["images"]
        for s in range(0, count, 256):  # decompress every chunk; bounded memory
            digest.update(np.ascontiguousarray(imgs[s : s + 256]).tobytes())
        return ids, np.frombuffer(digest.digest(), np.uint8)


def _read_parquet(path: Path, count: int, res: int) -> tuple[list[str], np.ndarray]:
    pf = pq.ParquetFile(path)
    if pf.metadata.num_rows != count:
        raise ValueError(f"{pf.metadata.num_rows} rows but archive.json says {count}")
    ids: list[str] = []
    digest = hashlib.sha256()
    for rg in range(pf.num_row_groups):
        t = pf.read_row_group(rg, columns=["sample_id", "index", "image"])
        first = len(ids)
        ids += [str(s) for s in t.column("sample_id").to_pylist()]
        if t.column("index").to_pylist() != list(range(first, len(ids))):
            raise ValueError(f"row group {rg}: column 'index' is not the row position")
        pngs = t.column("image").combine_chunks().field("bytes").to_pylist()
        for k, b in enumerate(pngs):
            if b is None:
                raise ValueError(f"row {len(ids) - len(pngs) + k}: empty image")
            img = decode_png(b)
            if img.shape != (res, res):
                raise ValueError(f"row {len(ids) - len(pngs) + k}: image {img.shape}, expected {(res, res)}")
            digest.update(np.ascontiguousarray(img).tobytes())
    return ids, np.frombuffer(digest.digest(), np.uint8)


def check_shards(root: Path, info: dict, manifest: pd.DataFrame | None) -> list[Check]:
    """Open and fully decode every shard; compare counts and ids with archive.json and the manifest."""
    out = []
    res, L = int(info["resolution"]), len(info["label_names"])
    for sh in info["shards"]:
        count, shard = int(sh["count"]), int(sh["shard"])
        pixel_digests = {}
        ids_of: dict[str, list[str]] = {}
        for fmt, rel in sh["files"].items():
            p = root / rel
            try:
                if not p.is_file():
                    raise FileNotFoundError("missing")
                ids, dig = _read_h5(p, count, res, L) if fmt == "h5" else _read_parquet(p, count, res)
                ids_of[fmt], pixel_digests[fmt] = ids, dig
                if manifest is not None:
                    rows = manifest[manifest["shard"] == shard]
                    idx = rows["index"].to_numpy()
                    if len(idx) and (idx.min() < 0 or idx.max() >= count):
                        raise ValueError(f"manifest points at index {int(idx.max())} beyond {count} rows")
                    bad = [s for s, i in zip(rows["sample_id"], idx) if ids[int(i)] != s]
                    if bad:
                        raise ValueError(f"manifest sample_id {bad[0]!r} not at its stated index")
                out.append(Check(rel, True, f"{count} images decoded"))
            except Exception as exc:  # noqa: BLE001 - every failure is reported, not raised
                out.append(Check(rel, False, f"{type(exc).__name__}: {exc}"))
        if len(pixel_digests) == 2:
            same = bool(np.array_equal(*pixel_digests.values())) and ids_of["h5"] == ids_of["parquet"]
            out.append(Check(f"shard {shard:05d} h5 vs parquet", same, "" if same else "the two formats hold different images or ids"))
    return out


def verify_archive(path: str | os.PathLike) -> list[Check]:
    """All checks for the archive folder ``path``."""
    root = Path(path)
    if not root.is_dir():
        return [Check(str(root), False, "not a directory")]
    checks = check_sums(root)
    try:
        info = json.loads((root / ARCHIVE_JSON).read_text())
    except Exception as exc:  # noqa: BLE001
        return [*checks, Check(ARCHIVE_JSON, False, f"cannot read: {exc}")]
    manifest = None
    try:
        manifest = pd.read_parquet(root / MANIFEST)
        n_rel = int(info["counts"]["n_released"])
        ok = len(manifest) == n_rel and not manifest["sample_id"].duplicated().any()
        checks.append(Check(MANIFEST, ok, f"{len(manifest)} released samples" if ok else f"{len(manifest)} rows (unique?) but archive.json says {n_rel}"))
    except Exception as exc:  # noqa: BLE001
        checks.append(Check(MANIFEST, False, f"cannot read: {type(exc).__name__}: {exc}"))
    checks += check_shards(root, info, manifest)
    return checks


def cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="synthcxr verify", description=__doc__.splitlines()[0])
    ap.add_argument("path", help="archive folder (holds manifest.parquet, archive.json, SHA256SUMS, shards/)")
    ap.add_argument("-q", "--quiet", action="store_true", help="print failures and the summary only")
    args = ap.parse_args(argv)
    checks = verify_archive(args.path)
    for c in checks:
        if not (args.quiet and c.ok):
            print(c.line())
    n_bad = sum(not c.ok for c in checks)
    print(f"{args.path}: {len(checks) - n_bad} OK, {n_bad} FAILED", file=sys.stdout)
    return 1 if n_bad else 0
