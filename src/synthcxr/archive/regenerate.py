"""``synthcxr regenerate PATH SAMPLE_ID``: re-render one sample from its latent and the generator.

The archive keeps the optimised latents (``latents/``) and the render micro-batch size, so the
sample's whole micro-batch is re-rendered exactly as the sample rule grouped it (see render.py) and
the result is compared with the stored HDF5 pixels and Parquet PNG bytes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from torch import nn

from ..lco.latents import read_latents
from ..utils.atomic import write_bytes
from ..utils.hashing import sha256_file
from .layout import ARCHIVE_JSON, MANIFEST, latents_relpath, shard_relpath
from .render import render_one
from .shard_parquet import encode_png

log = logging.getLogger("synthcxr")


@dataclass
class Regenerated:
    """A re-rendered sample and whether it matches each stored copy (format -> bool)."""

    sample_id: str
    shard: int
    index: int
    image: np.ndarray
    png: bytes
    released: bool
    matches: dict[str, bool] = field(default_factory=dict)

    @property
    def identical(self) -> bool:
        return bool(self.matches) and all(self.matches.values())


def locate(root: Path, sample_id: str, info: dict) -> tuple[int, int, bool]:
    """``(shard, index, released)`` of a sample: the manifest first, then the latents of withheld ones."""
    man = pd.read_parquet(root / MANIFEST, columns=["sample_id", "shard", "index"])
    hit = man[man["sample_id"] == sample_id]
    if len(hit):
        return int(hit["shard"].iloc[0]), int(hit["index"].iloc[0]), True
    for sh in info["shards"]:
        ids = pq.read_table(root / sh["latents"], columns=["sample_id", "index"]).to_pandas()
        m = ids[ids["sample_id"].astype(str) == sample_id]
        if len(m):
            return int(sh["shard"]), int(m["index"].iloc[0]), False
    raise KeyError(f"sample {sample_id!r} is in neither {root / MANIFEST} nor any latents shard of {root}")


def stored_copies(root: Path, info: dict, shard: int, index: int) -> dict[str, np.ndarray | bytes]:
    """The archived h5 pixels and/or Parquet PNG bytes of one sample."""
    out: dict[str, np.ndarray | bytes] = {}
    if "h5" in info["formats"]:
        with h5py.File(root / shard_relpath(shard, "h5"), "r") as f:
            out["h5"] = f["images"][index]
    if "parquet" in info["formats"]:
        t = pq.read_table(root / shard_relpath(shard, "parquet"), columns=["index", "image"], filters=[("index", "==", index)])
        out["parquet"] = t.column("image").combine_chunks().field("bytes")[0].as_py()
    return out


def regenerate_sample(archive_dir: str | os.PathLike, sample_id: str, G: nn.Module) -> Regenerated:
    """Re-render ``sample_id`` of the archive with generator ``G`` and compare with the stored copies."""
    root = Path(archive_dir)
    info = json.loads((root / ARCHIVE_JSON).read_text())
    shard, index, released = locate(root, sample_id, info)
    lat_path = next((root / s["latents"] for s in info["shards"] if int(s["shard"]) == shard), root / latents_relpath(shard))
    lat = read_latents(lat_path, info["label_names"])
    img = render_one(G, lat.z, index, int(info["batch_size"]))
    png = encode_png(img, int(info.get("png_compress_level", 6)))
    res = Regenerated(sample_id, shard, index, img, png, released)
    for fmt, stored in stored_copies(root, info, shard, index).items():
        res.matches[fmt] = bool(np.array_equal(stored, img)) if fmt == "h5" else stored == png
    return res


def cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="synthcxr regenerate", description=__doc__.splitlines()[0])
    ap.add_argument("path", help="archive folder")
    ap.add_argument("sample_id")
    ap.add_argument("--generator", help="generator.pt (default: the path recorded in archive.json)")
    ap.add_argument("--out", help="write the re-rendered sample here as PNG")
    ap.add_argument("--device", help="torch device (default: the device the archive was rendered on, if present)")
    args = ap.parse_args(argv)
    from .sample import load_generator_file

    root = Path(args.path)
    try:
        info = json.loads((root / ARCHIVE_JSON).read_text())
    except FileNotFoundError:
        print(f"{root / ARCHIVE_JSON} missing: not a finalised archive", file=sys.stderr)
        return 1
    gen = Path(args.generator or info["generator"]["path"])
    if not gen.exists():
        print(f"generator {gen} not found; pass --generator path/to/generator.pt", file=sys.stderr)
        return 1
    if sha256_file(gen) != info["generator"]["sha256"]:
        print(f"{gen} is not the generator that rendered this archive (sha256 differs from archive.json)", file=sys.stderr)
        return 1
    device = args.device or _recorded_device(root, info)
    G, _ = load_generator_file(gen, device)
    try:
        r = regenerate_sample(root, args.sample_id, G)
    except KeyError as exc:
        print(exc.args[0], file=sys.stderr)
        return 1
    if args.out:
        write_bytes(args.out, r.png)
        print(f"wrote {args.out}")
    status = "released" if r.released else "withheld from the manifest"
    print(f"{r.sample_id}: shard {r.shard:05d} index {r.index} ({status})")
    for fmt, ok in r.matches.items():
        print(f"  {fmt}: {'byte-identical to the stored copy' if ok else 'DIFFERS from the stored copy'}")
    return 0 if r.identical else 1


def _recorded_device(root: Path, info: dict) -> str:
    """Device type the shards were rendered on, falling back to cpu when it is absent here."""
    from .shard_h5 import read_h5_attrs
    from .shard_parquet import read_parquet_attrs

    sh = info["shards"][0]
    fmt, rel = next(iter(sh["files"].items()))
    attrs = read_h5_attrs(root / rel) if fmt == "h5" else read_parquet_attrs(root / rel)
    dev = str(attrs.get("render_device", "cpu"))
    if dev == "cuda" and not torch.cuda.is_available():
        log.warning("archive was rendered on cuda; re-rendering on cpu may differ in the last bit")
        return "cpu"
    return dev
