"""``synthcxr regenerate RELEASE SAMPLE_ID --generator G.pt``: re-render one released sample and compare.

Everything needed is in the release and the generator file whose sha256 archive.json records: the
sample's latent (``latents.parquet``), where it was rendered (``render_shard``, ``render_index``) and the
render micro-batch size and thread count. A backend may pick its kernels by batch shape, so the sample is
re-rendered at its own position inside a micro-batch of the original size (see render.py). Batch-mates
that were not released are not in the release; their slots are filled with zeros. The generator has no
operation that mixes samples of a batch (pixel norm and convolutions act per sample), so a sample's
output depends on its position and the batch shape, not on its batch-mates' values; the tests check this.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch import nn

from ..utils.atomic import write_bytes
from ..utils.hashing import sha256_file
from ..utils.runtime import fixed_threads
from .layout import MANIFEST, RELEASE_LATENTS
from .render import render_batch
from .shard_parquet import encode_png
from .verify import read_info

log = logging.getLogger("synthcxr")


@dataclass
class Regenerated:
    """A re-rendered sample and whether it matches each stored copy (format -> bool)."""

    sample_id: str
    shard: int
    index: int
    image: np.ndarray
    png: bytes
    matches: dict[str, bool] = field(default_factory=dict)

    @property
    def identical(self) -> bool:
        return bool(self.matches) and all(self.matches.values())


def locate(root: Path, sample_id: str) -> pd.Series:
    """The manifest row of a released sample; raises ``KeyError`` naming the release otherwise."""
    man = pd.read_parquet(root / MANIFEST, columns=["sample_id", "shard", "index", "render_shard", "render_index"])
    hit = man[man["sample_id"].astype(str) == sample_id]
    if not len(hit):
        raise KeyError(f"sample {sample_id!r} is not in {root / MANIFEST}; only released samples can be regenerated from a release")
    return hit.iloc[0]


def render_batch_latents(root: Path, info: dict, render_shard: int, render_index: int) -> tuple[np.ndarray, int]:
    """``(z [b, D], position)``: the sample's original micro-batch, released batch-mates in place, zeros elsewhere."""
    render = info["render"]
    b = int(render["batch_size"])
    count = int(render["shard_counts"][str(render_shard)])
    start = (render_index // b) * b
    stop = min(start + b, count)
    t = pq.read_table(
        root / RELEASE_LATENTS,
        filters=(pc.field("render_shard") == render_shard) & (pc.field("render_index") >= start) & (pc.field("render_index") < stop),
    )
    if t.num_rows == 0:
        raise KeyError(f"{root / RELEASE_LATENTS}: no latent rendered at shard {render_shard} index {render_index}")
    z_all = np.stack(t.column("z").to_pylist()).astype(np.float32)
    z = np.zeros((stop - start, z_all.shape[1]), np.float32)
    z[t.column("render_index").to_numpy() - start] = z_all
    return z, render_index - start


def stored_copies(root: Path, info: dict, shard: int, index: int, sample_id: str) -> dict[str, np.ndarray | bytes]:
    """The released h5 pixels and/or Parquet and WebDataset PNG bytes of one sample."""
    entry = next(sh for sh in info["shards"] if int(sh["shard"]) == shard)
    out: dict[str, np.ndarray | bytes] = {}
    if "h5" in entry["files"]:
        with h5py.File(root / entry["files"]["h5"], "r") as f:
            out["h5"] = f["images"][index]
    if "parquet" in entry["files"]:
        t = pq.read_table(root / entry["files"]["parquet"], columns=["index", "image"], filters=[("index", "==", index)])
        out["parquet"] = t.column("image").combine_chunks().field("bytes")[0].as_py()
    if "webdataset" in entry["files"]:
        with tarfile.open(root / entry["files"]["webdataset"], "r") as tf:
            fh = tf.extractfile(f"{sample_id}.png")
            out["webdataset"] = fh.read() if fh is not None else b""
    return out


def regenerate_sample(release_dir: str | os.PathLike, sample_id: str, G: nn.Module) -> Regenerated:
    """Re-render ``sample_id`` of the release with generator ``G`` and compare with the stored copies."""
    root = Path(release_dir)
    info = read_info(root)
    row = locate(root, sample_id)
    z, pos = render_batch_latents(root, info, int(row["render_shard"]), int(row["render_index"]))
    img = render_batch(G, z)[pos]
    png = encode_png(img, int(info.get("png_compress_level", 6)))
    res = Regenerated(sample_id, int(row["shard"]), int(row["index"]), img, png)
    for fmt, stored in stored_copies(root, info, res.shard, res.index, sample_id).items():
        res.matches[fmt] = bool(np.array_equal(stored, img)) if fmt == "h5" else stored == png
    return res


def cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="synthcxr regenerate", description=__doc__.splitlines()[0])
    ap.add_argument("path", help="release folder")
    ap.add_argument("sample_id", nargs="+", help="one or more released sample ids (one process loads the generator once)")
    ap.add_argument("--generator", required=True, help="generator.pt whose sha256 archive.json records (generator.sha256)")
    ap.add_argument("--out", help="write the re-rendered sample here as PNG (one sample_id only)")
    ap.add_argument("--device", help="torch device (default: the device the release was rendered on, if present)")
    args = ap.parse_args(argv)
    if args.out and len(args.sample_id) > 1:
        ap.error(f"--out writes one PNG: give one sample_id, not {len(args.sample_id)}")
    from .sample import load_generator_file

    root = Path(args.path)
    try:
        info = read_info(root)
    except (OSError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 1
    gen = Path(args.generator)
    want = info["generator"]["sha256"]
    if not gen.exists():
        print(f"generator {gen} not found; this release needs the generator file with sha256 {want}", file=sys.stderr)
        return 1
    if sha256_file(gen) != want:
        print(f"{gen} is not the generator that rendered this release: its sha256 differs from archive.json's {want}", file=sys.stderr)
        return 1
    threads = (info.get("render") or {}).get("threads")
    if threads:
        fixed_threads(int(threads))
    device = args.device or _recorded_device(info)
    G, _ = load_generator_file(gen, device)
    identical = True
    for sid in args.sample_id:
        try:
            r = regenerate_sample(root, sid, G)
        except KeyError as exc:
            print(exc.args[0], file=sys.stderr)
            return 1
        if args.out:
            write_bytes(args.out, r.png)
            print(f"wrote {args.out}")
        print(f"{r.sample_id}: shard {r.shard:05d} index {r.index}")
        for fmt, ok in r.matches.items():
            print(f"  {fmt}: {'byte-identical to the stored copy' if ok else 'DIFFERS from the stored copy'}")
        identical &= r.identical
    return 0 if identical else 1


def _recorded_device(info: dict) -> str:
    """Device type the release was rendered on, falling back to cpu when it is absent here."""
    dev = str((info.get("render") or {}).get("device", "cpu"))
    if dev.startswith("cuda") and not torch.cuda.is_available():
        log.warning("release was rendered on cuda; re-rendering on cpu may differ in the last bit")
        return "cpu"
    return dev if dev in ("cpu", "cuda") or dev.startswith("cuda:") else "cpu"
