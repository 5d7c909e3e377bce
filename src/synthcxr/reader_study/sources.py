"""Where a reader study's images come from: generated ones (arrays, a PNG folder, a released archive) and
real scans drawn from a prepared dataset, all as square uint8 greyscale at one resolution."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..imagesets import ArrayImages, ImageSet
from ..imaging import resize_uint8


def array_source(images: np.ndarray, ids: Sequence[str] | None = None, where: str = "<arrays>") -> ImageSet:
    """Generated images given directly as uint8 ``[N, R, R]`` (tests, notebooks)."""
    return ArrayImages(np.asarray(images), ids=ids, origin=where)


class PngFolder(ImageSet):
    """Every ``*.png`` in a folder (sorted), read as 8-bit greyscale; the file stem is the sample id."""

    def __init__(self, folder: str | os.PathLike):
        root = Path(folder)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: not a folder of generated PNG images")
        self.files = sorted(root.glob("*.png"))
        if not self.files:
            raise FileNotFoundError(f"{root}: no *.png files found; point --pngs at a folder of generated images")
        super().__init__([p.stem for p in self.files], None, [], origin=str(root))

    def native(self, positions: np.ndarray) -> np.ndarray:
        pos = [int(i) for i in positions]
        return _stack_square([_read_gray_png(self.files[i]) for i in pos], [self.ids[i] for i in pos], self.origin)


def png_folder_source(folder: str | os.PathLike) -> ImageSet:
    """Every ``*.png`` in ``folder`` (sorted); the file stem is the source id in the answer key."""
    return PngFolder(folder)


def archive_source(path: str | os.PathLike) -> ImageSet:
    """Samples of a synthetic archive (folder holding ``manifest.parquet``), read by ``synthcxr.archive``."""
    root = Path(path)
    if root.name == "manifest.parquet":
        root = root.parent
    if not (root / "manifest.parquet").exists():
        raise FileNotFoundError(f"{root / 'manifest.parquet'} missing: not a release folder (run snakemake finalize_archive)")
    from ..archive import open_archive

    return open_archive(root, sealed=False).torch_dataset()  # the kit is built before the release is sealed


def _read_gray_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        if im.mode == "L":
            return np.asarray(im, dtype=np.uint8).copy()
        if im.mode in ("RGB", "RGBA"):
            rgb = np.asarray(im.convert("RGB"))
            if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])):
                raise ValueError(f"{path}: colour image; the reader study needs grayscale (mode L) images")
            return rgb[..., 0].copy()
        raise ValueError(f"{path}: PNG mode {im.mode!r} unsupported; save generated images as 8-bit grayscale")


def _stack_square(imgs: list[np.ndarray], ids: list[str], where: str) -> np.ndarray:
    shapes = {tuple(a.shape) for a in imgs}
    if len(shapes) != 1:
        raise ValueError(f"{where}: generated images differ in size {sorted(shapes)}; all must share one resolution")
    (shape,) = shapes
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"{where}: generated images must be square 2-D arrays, got shape {list(shape)}")
    bad = [i for i, a in zip(ids, imgs) if a.dtype != np.uint8]
    if bad:
        raise ValueError(f"{where}: images {bad[:5]} are not uint8")
    return np.stack(imgs)


def study_rngs(seed: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """Independent streams for picking reals, picking fakes and shuffling (changing n_real keeps fakes)."""
    a, b, c = np.random.SeedSequence(int(seed)).spawn(3)
    return np.random.default_rng(a), np.random.default_rng(b), np.random.default_rng(c)


def pick_real(prepared: str | os.PathLike, n: int, res: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """``n`` random test-split scans at the top pyramid level, resized to ``res``; returns (images, image_ids)."""
    from ..data.store import PreparedDataset

    ds = PreparedDataset(prepared)
    test = ds.split("test")
    if len(test) < n:
        raise ValueError(
            f"{ds.labels_path}: test split has {len(test)} images but reader_study.n_real is {n}; lower n_real"
        )
    top = max(ds.resolutions)
    if top < res:
        raise ValueError(
            f"{ds.h5_path}: top pyramid level {top} px is below the generated resolution {res} px; upsampled real "
            "scans would look blurrier than generated ones and unblind the study. Prepare with dataset.max_res >= "
            f"{res}"
        )
    chosen = np.sort(rng.choice(len(test), size=n, replace=False))
    rows = test.iloc[chosen]
    return resize_uint8(ds.read_images(top, rows["row"].to_numpy()), res), [str(s) for s in rows["image_id"].tolist()]

