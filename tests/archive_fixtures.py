"""A small archive built through the real writers: faked lco outputs, real sample, finalize and seal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from synthcxr.archive.finalize import finalize_archive
from synthcxr.archive.sample import ArchiveConfig, sample_shard
from synthcxr.archive.seal import seal_release
from synthcxr.lco.latents import write_latents
from synthcxr.pggan import Generator
from synthcxr.pggan.checkpoint import save_generator
from synthcxr.utils.hashing import sha256_file

LABELS = ["Cardiomegaly", "Effusion", "Nodule", "No_Finding"]
RES, DIM, BATCH = 16, 16, 4
SHARD_SIZES = [11, 9, 7]  # 3 working shards; the first two have a partial last micro-batch
SHARD_MB = 6.0 / 1024  # ~6 KiB: a handful of release shards from ~16 released samples


def make_generator(seed: int = 0, resolution: int = RES) -> Generator:
    torch.manual_seed(seed)
    return Generator(resolution=resolution, latent_dim=DIM, fmap_base=64, fmap_max=16).eval()


def latents_frame(shard: int, n: int, rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    findings = (rng.random((n, 3)) < 0.4).astype(np.int8)
    nf = (findings.sum(1) == 0).astype(np.int8)
    df = pd.DataFrame({"sample_id": [f"syn-{shard:05d}-{i:04d}" for i in range(n)], "shard": shard, "index": np.arange(n),
                       "seed": 1000 * shard + np.arange(n), "attempts": 1})
    for j, name in enumerate(LABELS[:3]):
        df[f"target_{name}"] = findings[:, j]
    df["target_No_Finding"] = nf
    for name in LABELS:
        df[f"prob_{name}"] = rng.random(n).astype(np.float32)
    df["steps"] = 10
    df["g_evals"], df["grad_steps"] = 10.0, 5
    df["success"] = rng.random(n) > 0.2
    df["reason"] = np.where(df["success"], "", "target not met")
    df = df.sample(frac=1.0, random_state=shard).reset_index(drop=True)  # rows need not arrive in index order
    z = rng.standard_normal((n, DIM)).astype(np.float32)
    return df, z


def write_shard_latents(path: Path, df: pd.DataFrame, z: np.ndarray) -> None:
    """The lco stage's writer; ``z`` row k belongs to ``df`` row k."""
    write_latents(df.assign(z=list(z)), LABELS, path)


def write_raw_latents(path: Path, df: pd.DataFrame, z: np.ndarray, z_type: pa.DataType | None = None) -> None:
    """Whatever ``df`` holds, plus z, straight through pyarrow: for files the lco writer would refuse to write."""
    tbl = pa.Table.from_pandas(df, preserve_index=False).append_column("z", pa.array(list(z), z_type or pa.list_(pa.float32(), DIM)))
    pq.write_table(tbl, path)


def build_archive(root: Path, formats=("h5", "parquet"), compression="gzip", gate=True, seal=True, seed: int = 42,
                  resolution: int = RES, name: str | None = None, shard_mb: float = SHARD_MB, workers: int = 2,
                  png_level: int = 6) -> dict:
    """Fake the lco stage, run sample for every shard, finalise and seal; returns handy facts for tests.

    ``root`` plays ``results/archive/{name}``: ``root/work`` is the working area, ``root/release`` the release.
    """
    rng = np.random.default_rng(seed)
    G = make_generator(resolution=resolution)
    gen_path = root.parent / f"{root.name}-generator.pt"
    save_generator(gen_path, G, {"kimg": 0})
    clf_path = root.parent / f"{root.name}-model.pt"
    clf_path.write_bytes(b"classifier weights stand-in")
    cfg = ArchiveConfig.from_section(dict(labels=LABELS, formats=list(formats), compression=compression, batch_size=BATCH, name=name or root.name,
                        shard_mb=shard_mb, workers=workers, png_level=png_level))
    work, release = root / "work", root / "release"
    frames, zs, lat_paths = [], {}, []
    for shard, n in enumerate(SHARD_SIZES):
        df, z = latents_frame(shard, n, rng)
        lp = work / "latents" / f"shard-{shard:05d}.parquet"
        write_shard_latents(lp, df, z[df["index"].to_numpy()])  # z row k belongs to df row k
        lat_paths.append(lp)
        zs[shard] = z
        frames.append(df)
        sample_shard(lp, G, {f: work / "shards" / f"shard-{shard:05d}.{f}" for f in cfg.work_formats}, cfg, sha256_file(gen_path))
    allrows = pd.concat(frames, ignore_index=True)
    mem_path = None
    if gate:
        flagged = allrows["sample_id"].isin(["syn-00000-0001", "syn-00001-0004", "syn-00002-0000"])
        mem_path = root.parent / f"{root.name}-memorization.parquet"
        pd.DataFrame({"sample_id": allrows["sample_id"], "flagged": flagged, "distance": rng.random(len(allrows))}).to_parquet(mem_path)
    info = finalize_archive(work, release, cfg, lat_paths, gen_path, clf_path, mem_path,
                            full_config={"archive": {"name": root.name}}, shard_size=11)
    if seal:
        seal_release(release, memorization=mem_path)
    return {"root": root, "work": work, "release": release, "G": G, "gen": gen_path, "zs": zs, "rows": allrows, "info": info,
            "cfg": cfg, "mem": mem_path, "lats": lat_paths, "clf": clf_path}


def released_rows(arch: dict) -> pd.DataFrame:
    """Rows of the faked lco output that the release must hold: successful and not flagged, in render order."""
    rows = arch["rows"]
    flagged = set(pd.read_parquet(arch["mem"]).query("flagged")["sample_id"]) if arch["mem"] is not None else set()
    keep = rows[rows["success"] & ~rows["sample_id"].isin(flagged)]
    return keep.sort_values(["shard", "index"]).reset_index(drop=True)


def expected_images(G, z: np.ndarray) -> np.ndarray:
    """Reference: the same aligned micro-batches, computed by hand."""
    out = []
    with torch.no_grad():
        for s in range(0, len(z), BATCH):
            out.append(((G(torch.from_numpy(z[s : s + BATCH])) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)[:, 0].numpy())
    return np.concatenate(out)


def write_release(root: Path, images: np.ndarray, labels: np.ndarray, label_names, ids=None, sealed: bool = True) -> Path:
    """A one-shard HDF5 release of the given images written straight to the documented format (not via finalize).

    For tests of consumers (TSTR, FID, reader study) that need a release holding exactly these pixels.
    """
    import hashlib
    import json

    from synthcxr.archive.layout import FORMAT_VERSION
    from synthcxr.archive.seal import write_sums
    from synthcxr.archive.shard_h5 import H5ShardWriter

    root = Path(root)
    n, res = images.shape[0], images.shape[-1]
    names = list(label_names)
    ids = [f"s{i:07d}" for i in range(n)] if ids is None else [str(i) for i in ids]
    labels = np.asarray(labels, np.uint8)
    attrs = {"format_version": FORMAT_VERSION, "role": "release", "shard": 0, "generator_sha256": "0" * 64, "resolution": res}
    with H5ShardWriter(root / "h5" / "shard-00000.h5", n, res, names, "gzip", attrs) as w:
        w.write(0, images.astype(np.uint8), labels, np.zeros((n, len(names)), np.float32), ids)
    man = pd.DataFrame({"sample_id": ids, "shard": np.int32(0), "index": np.arange(n, dtype=np.int32), "h5_path": "h5/shard-00000.h5",
                        "render_shard": np.int32(0), "render_index": np.arange(n, dtype=np.int32), "seed": np.arange(n, dtype=np.int64)})
    for j, name in enumerate(names):
        man[name] = labels[:, j].astype(np.int8)
    for name in names:
        man[f"prob_{name}"] = np.float32(0)
    man["pixel_sha256"] = [hashlib.sha256(np.ascontiguousarray(im, np.uint8).tobytes()).hexdigest() for im in images]
    man.to_parquet(root / "manifest.parquet", index=False)
    pq.write_table(pa.table({"sample_id": ids, "render_shard": pa.array(np.zeros(n, np.int32)), "render_index": pa.array(np.arange(n, dtype=np.int32)),
                             "z": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(n * 2, np.float32)), 2)}), root / "latents.parquet")
    info = {"format_version": FORMAT_VERSION, "name": root.name, "label_names": names, "resolution": res, "formats": ["h5"],
            "shards": [{"shard": 0, "count": n, "files": {"h5": "h5/shard-00000.h5"}}], "n_shards": 1,
            "counts": {"n_released": n, "n_requested": n, "n_failed": 0, "n_flagged": 0, "per_finding": {}, "per_combination": {}},
            "generator": {"file": "generator.pt", "sha256": "0" * 64}, "render": {"batch_size": n, "shard_counts": {"0": n}}}
    (root / "archive.json").write_text(json.dumps(info))
    if sealed:
        write_sums(root, ["h5/shard-00000.h5", "manifest.parquet", "latents.parquet", "archive.json"])
    return root
