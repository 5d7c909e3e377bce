"""``synthcxr verify RELEASE``: prove a release is intact, and exactly what its manifest says, before anyone trains on it.

Checks, each reported as OK or FAILED with a reason that names the file, the row and what differs:
- SHA256SUMS: every entry exists and matches, and every file in the release is listed (a temporary
  file of an interrupted writer or any stray file fails);
- archive.json parses and has this package's format version; the manifest has one row per released
  sample, and every shard position exactly once;
- every shard (in parallel with ``--jobs``): attributes (format version, role, shard number, count,
  resolution, generator sha256, label names), sample ids, labels, probabilities and seeds equal the
  manifest's, and every image decodes at the release resolution to the pixels whose SHA-256 the
  manifest records (so the HDF5 and Parquet copies hold the same pixels);
- latents.parquet holds the latent of every released sample and nothing else.
Exit code 1 on any failure. The ``release`` rule runs the same checks (without the checksums it is
about to write) before it seals a release.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ..utils.atomic import is_temporary
from ..utils.hashing import sha256_files
from .contract import path_column_problems, shard_file_problems
from .layout import (
    ARCHIVE_JSON,
    FORMAT_VERSION,
    MANIFEST,
    RELEASE,
    RELEASE_FILES,
    RELEASE_LATENTS,
    SUMS,
    dicom_sidecar,
)
from .shard_checks import Check, check_shard


def read_info(root: Path) -> dict[str, Any]:
    """archive.json of a release, with errors that name the file and say what to do."""
    p = root / ARCHIVE_JSON
    if not p.exists():
        hint = f"; the release is {root / RELEASE}" if (root / RELEASE / ARCHIVE_JSON).exists() else ""
        raise FileNotFoundError(f"{p} missing: not a release folder (run snakemake finalize_archive){hint}")
    try:
        info = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{p}: not valid JSON ({exc}); the file is corrupt: re-run finalize_archive or restore it from the release") from None
    if not isinstance(info, dict) or int(info.get("format_version", -1)) != FORMAT_VERSION:
        got = info.get("format_version") if isinstance(info, dict) else None
        raise ValueError(f"{p}: format_version {got!r}; this synthcxr reads releases of format {FORMAT_VERSION}")
    missing = [k for k in ("label_names", "resolution", "formats", "shards", "counts", "generator") if k not in info]
    if missing:
        raise ValueError(f"{p}: missing key(s) {missing}; the file is not a synthcxr archive.json")
    bad = shard_file_problems(info)
    if bad:
        raise ValueError(f"{p}: {bad[0]}{f' (and {len(bad) - 1} more)' if len(bad) > 1 else ''}. Refusing to open files it "
                         "names; the release was altered: restore it from its source")
    return info


def expected_files(info: Mapping[str, Any], root: Path | None = None) -> set[str]:
    """Every file a release described by ``info`` consists of (relative paths), SHA256SUMS included; with
    ``root``, also each sample's DICOM file and sidecar the manifest names (releases exporting DICOM)."""
    files = set(RELEASE_FILES)
    for sh in info["shards"]:
        files.update(sh["files"].values())
    if root is not None and "dicom" in info.get("formats", []):
        with contextlib.suppress(Exception):  # an unreadable manifest is reported by read_manifest
            for rel in pq.read_table(root / MANIFEST, columns=["dicom_path"]).column("dicom_path").to_pylist():
                files.update({str(rel), dicom_sidecar(str(rel))})
    return files


def _all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def check_files(root: Path, info: Mapping[str, Any] | None, sealed: bool = True, jobs: int = 1) -> list[Check]:
    """SHA256SUMS entries match (files hashed on ``jobs`` threads); every file present belongs to the release;
    no temporary leftovers."""
    out: list[Check] = []
    listed: set[str] = set()
    sums = root / SUMS
    if sealed and not sums.exists():
        out.append(Check(SUMS, False, "missing: the release was never sealed (run snakemake, which ends with the release rule)"))
    elif sealed:
        to_hash: list[tuple[str, str]] = []
        for no, raw in enumerate(sums.read_text().splitlines(), 1):
            if not raw.strip():
                continue
            digest, sep, rel = raw.partition("  ")
            if not sep or len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
                out.append(Check(f"{SUMS}:{no}", False, f"malformed line {raw[:80]!r}"))
                continue
            listed.add(rel)
            if not (root / rel).is_file():
                out.append(Check(rel, False, "listed in SHA256SUMS but missing"))
                continue
            to_hash.append((rel, digest))
        actual = sha256_files([root / rel for rel, _ in to_hash], jobs)
        for (rel, digest), got in zip(to_hash, actual):
            ok = got == digest
            out.append(Check(rel, ok, "checksum OK" if ok else f"checksum mismatch (SHA256SUMS {digest[:12]}..., file {got[:12]}...)"))
    known = expected_files(info, root) if info is not None else set(RELEASE_FILES)
    for rel in _all_files(root):
        name = rel.rsplit("/", 1)[-1]
        if is_temporary(name) or name.startswith(".tmp-"):
            out.append(Check(rel, False, "temporary file of an interrupted writer: delete it (the next successful run removes it)"))
        elif rel == SUMS:
            continue
        elif rel not in known:
            out.append(Check(rel, False, "not part of this release (archive.json does not list it): remove it or re-finalise"))
        elif sealed and sums.exists() and rel not in listed:
            out.append(Check(rel, False, "part of the release but not covered by SHA256SUMS"))
    return out


def read_manifest(root: Path, info: Mapping[str, Any]) -> pd.DataFrame:
    """The manifest, checked for the columns every reader relies on."""
    p = root / MANIFEST
    if not p.exists():
        raise FileNotFoundError(f"{p} missing: the release is incomplete (run snakemake finalize_archive)")
    man = pd.read_parquet(p)
    need = ["sample_id", "shard", "index", "seed", "render_shard", "render_index", "pixel_sha256", *info["label_names"]]
    need += [f"prob_{n}" for n in info["label_names"]]
    missing = [c for c in need if c not in man.columns]
    if missing:
        raise ValueError(f"{p}: missing column(s) {missing}")
    bad = path_column_problems(man, info["formats"])
    if bad:
        raise ValueError(f"{p}: {'; '.join(bad)}. Refusing to follow path columns that leave the release or name "
                         "another file; the manifest was altered: restore the release from its source")
    return man


def check_manifest(man: pd.DataFrame, info: Mapping[str, Any]) -> list[Check]:
    """One row per released sample, and every position of every shard exactly once."""
    problems = []
    n_rel = int(info["counts"]["n_released"])
    if len(man) != n_rel:
        problems.append(f"{len(man)} rows but archive.json counts {n_rel} released samples")
    if man["sample_id"].duplicated().any():
        problems.append(f"sample_id {man.loc[man['sample_id'].duplicated(), 'sample_id'].iloc[0]!r} appears twice")
    counts = {int(sh["shard"]): int(sh["count"]) for sh in info["shards"]}
    for shard, rows in man.groupby("shard"):
        idx = np.sort(rows["index"].to_numpy())
        want = counts.get(int(shard))
        if want is None:
            problems.append(f"rows point at shard {int(shard)}, which archive.json does not list")
        elif not np.array_equal(idx, np.arange(want)):
            problems.append(f"shard {int(shard)}: indices are not 0..{want - 1} exactly once each")
    absent = sorted(set(counts) - set(man["shard"].astype(int)))
    if absent:
        problems.append(f"archive.json lists shard(s) {absent} that no manifest row uses")
    labels = man[list(info["label_names"])].to_numpy()
    if len(labels) and not np.isin(labels, (0, 1)).all():
        problems.append("label columns must hold 0/1")
    if "pair_id" in man.columns:
        problems += pair_problems(man)
    if problems:
        return [Check(MANIFEST, False, "; ".join(problems))]
    return [Check(MANIFEST, True, f"{len(man)} released samples")]


def pair_problems(man: pd.DataFrame) -> list[str]:
    """Released pairs are whole: each group has one base (no edit) and at least one variant, and every
    variant names its group's base."""
    out = []
    for g, rows in man[man["pair_id"] >= 0].groupby("pair_id"):
        base = rows.loc[rows["edit"] == "", "sample_id"].tolist()
        variants = rows[rows["edit"] != ""]
        if len(base) != 1 or variants.empty:
            out.append(f"pair {int(g)} is not whole: {len(base)} base(s) and {len(variants)} variant(s) released")
        elif (variants["base_sample_id"] != base[0]).any():
            out.append(f"pair {int(g)}: a variant names base {variants['base_sample_id'].iloc[0]!r}, the pair's base is {base[0]!r}")
    stray = man[(man["pair_id"] < 0) & ((man["edit"] != "") | (man["base_sample_id"] != ""))]
    if len(stray):
        out.append(f"{stray['sample_id'].iloc[0]!r} has an edit or a base but no pair_id")
    return out[:5]


def check_latents(root: Path, man: pd.DataFrame) -> list[Check]:
    """latents.parquet: exactly the released samples, rendered where the manifest says, one latent length."""
    p = root / RELEASE_LATENTS
    try:
        t = pq.read_table(p)
        got = t.select(["sample_id", "render_shard", "render_index"]).to_pandas()
        merged = man[["sample_id", "render_shard", "render_index"]].merge(got, on="sample_id", how="outer", suffixes=("", "_lat"), indicator=True)
        problems = []
        if (merged["_merge"] != "both").any():
            bad = merged.loc[merged["_merge"] != "both", "sample_id"].iloc[0]
            problems.append(f"sample {bad!r} is in only one of latents.parquet and the manifest")
        both = merged[merged["_merge"] == "both"]
        if (both["render_shard"].to_numpy() != both["render_shard_lat"].to_numpy()).any() or (
            both["render_index"].to_numpy() != both["render_index_lat"].to_numpy()
        ).any():
            problems.append("render_shard/render_index disagree with the manifest")
        if t.num_rows and t.schema.field("z").type.list_size <= 0:
            problems.append("column z is not a fixed-size latent")
        return [Check(RELEASE_LATENTS, not problems, "; ".join(problems) if problems else f"{t.num_rows} latents")]
    except Exception as exc:  # noqa: BLE001
        return [Check(RELEASE_LATENTS, False, f"{type(exc).__name__}: {exc}")]


def verify_release(path: str | os.PathLike, jobs: int = 1, sealed: bool = True) -> list[Check]:
    """All checks for the release folder ``path``; ``sealed=False`` skips SHA256SUMS and the card (before sealing)."""
    root = Path(path)
    if not root.is_dir():
        return [Check(str(root), False, "not a directory")]
    try:
        info = read_info(root)
    except (OSError, ValueError) as exc:
        return [*check_files(root, None, sealed, jobs), Check(ARCHIVE_JSON, False, str(exc))]
    checks = check_files(root, info, sealed, jobs)
    try:
        man = read_manifest(root, info)
    except Exception as exc:  # noqa: BLE001
        return [*checks, Check(MANIFEST, False, f"{type(exc).__name__}: {exc}")]
    checks += check_manifest(man, info)
    groups = {int(k): g.sort_values("index").reset_index(drop=True) for k, g in man.groupby("shard")}
    empty = man.iloc[0:0]
    tasks = [(str(root), info, sh, groups.get(int(sh["shard"]), empty)) for sh in info["shards"]]
    if jobs > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=min(jobs, len(tasks))) as pool:
            for res in pool.map(check_shard, *zip(*tasks)):
                checks += res
    else:
        for t in tasks:
            checks += check_shard(*t)
    checks += check_latents(root, man)
    return checks


def cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="synthcxr verify", description=__doc__.splitlines()[0])
    ap.add_argument("path", help="release folder (holds manifest.parquet, archive.json, SHA256SUMS, h5/, parquet/)")
    ap.add_argument("-q", "--quiet", action="store_true", help="print failures and the summary only")
    ap.add_argument("-j", "--jobs", type=int, default=1, help="shards checked in parallel (processes)")
    args = ap.parse_args(argv)
    checks = verify_release(args.path, jobs=max(1, args.jobs))
    for c in checks:
        if not (args.quiet and c.ok):
            print(c.line())
    n_bad = sum(not c.ok for c in checks)
    print(f"{args.path}: {len(checks) - n_bad} OK, {n_bad} FAILED", file=sys.stdout)
    return 1 if n_bad else 0
