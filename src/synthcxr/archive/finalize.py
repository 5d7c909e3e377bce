"""Close an archive: manifest of released samples, archive.json with provenance and counts, SHA256SUMS.

Release policy (documented in archive.json and the dataset card): shard files keep every rendered
sample so shard indices stay stable and regeneration stays simple; the manifest lists only samples
whose label optimisation succeeded (``success``) and that the memorisation audit did not flag (when
``validate.memorization.gate`` is on). Consumers go through the manifest, so withheld rows are never
served. The manifest holds no timestamps, so rerunning on the same inputs gives the same bytes; the
creation time lives only in archive.json.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .. import __version__
from ..labels import combo_key, findings_of
from ..lco.latents import OPTIONAL, read_latents
from ..utils.atomic import atomic_path, write_json, write_text
from ..utils.hashing import sha256_file
from .layout import ARCHIVE_JSON, FORMAT_VERSION, MANIFEST, PNG_COMPRESS_LEVEL, SUMS, shard_relpath
from .sample import ArchiveConfig
from .shard_h5 import read_h5_attrs
from .shard_parquet import read_parquet_attrs

log = logging.getLogger("synthcxr")


def _rel(path: str | os.PathLike, root: Path) -> str:
    rel = os.path.relpath(Path(path).resolve(), root.resolve())
    if rel.startswith(".."):
        raise ValueError(f"{path} lies outside the archive folder {root}; the archive must be self-contained")
    return Path(rel).as_posix()


def _shard_attrs(path: Path, fmt: str) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run the sample rule for this shard (snakemake {path})")
    return read_h5_attrs(path) if fmt == "h5" else read_parquet_attrs(path)


def _shard_ids(path: Path, fmt: str) -> list[str]:
    if fmt == "h5":
        with h5py.File(path, "r") as f:
            return [v.decode() if isinstance(v, bytes) else str(v) for v in f["sample_id"][:]]
    return [str(v) for v in pq.read_table(path, columns=["sample_id"]).column("sample_id").to_pylist()]


def read_memorization(path: str | os.PathLike) -> pd.DataFrame:
    """``sample_id -> flagged`` from the validate stage's memorisation audit."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} missing: run the memorisation audit (validate stage) or set validate.memorization.gate: false")
    df = pd.read_parquet(p)
    missing = [c for c in ("sample_id", "flagged") if c not in df.columns]
    if missing:
        raise ValueError(f"{p}: missing column(s) {missing}; expected at least sample_id, flagged")
    return df[["sample_id", "flagged"]].astype({"sample_id": str, "flagged": bool}).drop_duplicates("sample_id")


def build_frame(lat, rel_paths: Mapping[str, str], label_names: Sequence[str]) -> pd.DataFrame:
    """One row per rendered sample of a shard, in manifest column order."""
    t = lat.table
    cols: dict[str, Any] = {
        "sample_id": t["sample_id"].astype(str).to_numpy(),
        "shard": np.full(len(t), lat.shard, dtype=np.int32),
        "index": t["index"].to_numpy(dtype=np.int32),
    }
    for fmt, rel in rel_paths.items():
        cols[f"{fmt}_path"] = np.full(len(t), rel, dtype=object)
    for j, n in enumerate(label_names):
        cols[n] = lat.targets[:, j].astype(np.int8)
    for j, n in enumerate(label_names):
        cols[f"prob_{n}"] = lat.probs[:, j].astype(np.float32)
    cols["combination"] = [combo_key(v, label_names) for v in lat.targets]
    cols["seed"] = t["seed"].to_numpy(dtype=np.int64)
    for c in OPTIONAL:
        if c in t.columns:
            cols[c] = t[c].to_numpy()
    cols["success"] = t["success"].to_numpy(dtype=bool)
    return pd.DataFrame(cols)


def write_sums(root: Path, rel_paths: Sequence[str]) -> str:
    """Write ``SHA256SUMS`` (``sha256sum -c`` format, sorted relative paths); returns its text."""
    lines = [f"{sha256_file(root / r)}  {r}\n" for r in sorted(set(rel_paths))]
    text = "".join(lines)
    write_text(root / SUMS, text)
    return text


def finalize_archive(
    archive_dir: str | os.PathLike,
    cfg: ArchiveConfig,
    latents_paths: Sequence[str | os.PathLike],
    generator_path: str | os.PathLike,
    classifier_path: str | os.PathLike | None = None,
    memorization_path: str | os.PathLike | None = None,
    full_config: Mapping[str, Any] | None = None,
    shard_size: int | None = None,
) -> dict[str, Any]:
    """Write ``manifest.parquet``, ``archive.json`` and ``SHA256SUMS`` into ``archive_dir``; return archive.json."""
    root = Path(archive_dir)
    names = list(cfg.labels)
    gen_sha = sha256_file(generator_path)
    frames, shards_info, res_seen, bs_seen, covered = [], [], set(), set(), []
    for lp in sorted(latents_paths, key=lambda p: Path(p).name):
        lat = read_latents(lp, names)
        covered.append(_rel(lp, root))
        rels = {}
        for fmt in cfg.formats:
            sp = root / shard_relpath(lat.shard, fmt)
            attrs = _shard_attrs(sp, fmt)
            if int(attrs.get("count", -1)) != len(lat):
                raise ValueError(f"{sp}: holds {attrs.get('count')} samples but {lp} has {len(lat)}; delete the shard and rerun sample")
            if _shard_ids(sp, fmt) != lat.sample_ids:
                raise ValueError(f"{sp}: sample ids differ from {lp} (latents changed after rendering); delete the shard and rerun sample")
            if attrs.get("generator_sha256") != gen_sha:
                raise ValueError(f"{sp}: rendered by a different generator than {generator_path}; delete the shard and rerun sample")
            res_seen.add(int(attrs["resolution"]))
            bs_seen.add(int(attrs["batch_size"]))
            rels[fmt] = shard_relpath(lat.shard, fmt)
            covered.append(rels[fmt])
        frames.append(build_frame(lat, rels, names))
        shards_info.append({"shard": lat.shard, "count": len(lat), "files": rels, "latents": _rel(lp, root)})
    if not frames:
        raise ValueError("finalize_archive: no latents shards given")
    if len(res_seen) > 1 or len(bs_seen) > 1:
        raise ValueError(f"{root}: shards disagree on resolution {sorted(res_seen)} or batch_size {sorted(bs_seen)}; rerun sample for all shards")
    full = pd.concat(frames, ignore_index=True)
    if full["sample_id"].duplicated().any():
        raise ValueError(f"{root}: sample_id {full.loc[full['sample_id'].duplicated(), 'sample_id'].iloc[0]!r} appears in two shards")

    failed = ~full["success"].to_numpy()
    flagged = np.zeros(len(full), dtype=bool)
    if memorization_path is not None:
        mem = read_memorization(memorization_path).set_index("sample_id")["flagged"]
        audited = full["sample_id"].isin(mem.index).to_numpy()
        unaudited = ~audited & ~failed
        if unaudited.any():
            raise ValueError(
                f"{memorization_path}: {int(unaudited.sum())} successful sample(s) were not audited "
                f"(e.g. {full.loc[unaudited, 'sample_id'].iloc[0]!r}); rerun the memorisation audit"
            )
        flagged = audited & full["sample_id"].map(mem).fillna(False).to_numpy(dtype=bool) & ~failed
    released = ~failed & ~flagged
    manifest = full[released].reset_index(drop=True)
    with atomic_path(root / MANIFEST) as tmp:
        pq.write_table(pa.Table.from_pandas(manifest, preserve_index=False), tmp)

    findings = findings_of(names)
    per_finding = {n: int(manifest[n].sum()) for n in names}
    per_combo = {k: int(v) for k, v in sorted(manifest["combination"].value_counts().items())}
    info: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "name": cfg.name,
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "package_version": __version__,
        "label_names": names,
        "findings": findings,
        "resolution": res_seen.pop(),
        "formats": list(cfg.formats),
        "compression": cfg.compression,
        "batch_size": bs_seen.pop(),
        "png_compress_level": PNG_COMPRESS_LEVEL,
        "shard_size": shard_size,
        "n_shards": len(shards_info),
        "shards": shards_info,
        "counts": {
            "n_requested": int(len(full)),
            "n_released": int(released.sum()),
            "n_failed": int(failed.sum()),
            "n_flagged": int(flagged.sum()),
            "per_finding": per_finding,
            "per_combination": per_combo,
        },
        "release_policy": (
            "shards hold every rendered sample; manifest.parquet lists only samples with success=True "
            "and not flagged by the memorisation audit (when gated)"
        ),
        "memorization_gate": memorization_path is not None,
        "generator": {"path": str(generator_path), "sha256": gen_sha},
        "classifier": {"path": str(classifier_path), "sha256": sha256_file(classifier_path)} if classifier_path else None,
        "memorization": {"path": str(memorization_path), "sha256": sha256_file(memorization_path)} if memorization_path else None,
        "platform": {"python": platform.python_version(), "machine": platform.machine(), "torch": _torch_version()},
        "config": dict(full_config) if full_config is not None else None,
    }
    write_json(root / ARCHIVE_JSON, info)
    write_sums(root, [*covered, MANIFEST, ARCHIVE_JSON])
    log.info(
        "archive %s: %d requested, %d released, %d failed, %d flagged, %d shard(s)",
        root, len(full), info["counts"]["n_released"], info["counts"]["n_failed"], info["counts"]["n_flagged"], len(shards_info),
    )
    return info


def _torch_version() -> str:
    import torch

    return str(torch.__version__)
