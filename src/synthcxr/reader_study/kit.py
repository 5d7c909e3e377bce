"""Build a blinded reader-study kit: a shuffled, anonymised mix of real and generated scans.

The kit has two parts that must never travel together:

* ``reader_kit/`` goes to the radiologists: ``index.html`` (a self-contained offline page),
  ``images/img_0001.png ...`` and ``README.txt``;
* ``answer_key/key.csv`` (``image, truth, source``) stays with the study organiser.

Blinding is the whole point of the study, so the builder removes every channel through which
origin could leak: names are sequential in the shuffled order, real scans are resized to the
archive resolution (area averaging, never upsampling), every PNG is encoded by the same encoder with
the same settings and no metadata chunks, and with the default ``png_compress_level: 0`` every file
has exactly the same byte size (compressibility would otherwise hint at origin). File times are set
to one fixed value. The page embeds the very same PNG bytes as data URIs, because browsers refuse
canvas pixel access to images loaded from ``file://`` and window/level needs those pixels.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..imaging import float_to_uint8, resize_batch, uint8_to_float
from ..labels import check_labels
from ..utils.atomic import write_json, write_text
from ..utils.runtime import progress

log = logging.getLogger("synthcxr")

KEY_COLUMNS = ("image", "truth", "source")
#: Fixed modification time (2000-01-01 UTC) given to every kit file so file times carry no order.
FIXED_MTIME = 946684800
#: Above this the inlined page gets slow to open; the builder logs a warning with the remedy.
PAGE_WARN_BYTES = 200_000_000


@dataclass
class ReaderStudyConfig:
    """The ``reader_study`` config section (plus the global ``labels`` shown as findings boxes)."""

    n_real: int = 50
    n_fake: int = 50
    seed: int = 0
    labels: list[str] = field(default_factory=list)
    png_compress_level: int = 0
    title: str = "Chest X-ray reader study"
    readers: int = 3
    detect_accuracy: float = 0.6
    equivalence_margin: float = 0.1

    def __post_init__(self) -> None:
        if int(self.readers) < 1:
            raise ValueError(f"reader_study.readers: must be at least 1, got {self.readers}")
        if not 0.5 < float(self.detect_accuracy) < 1.0:
            raise ValueError(f"reader_study.detect_accuracy: must be in (0.5, 1), got {self.detect_accuracy}")
        if not 0.0 < float(self.equivalence_margin) < 0.5:
            raise ValueError(f"reader_study.equivalence_margin: must be in (0, 0.5), got {self.equivalence_margin}")
        for name in ("n_real", "n_fake"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"reader_study.{name}: must be at least 1, got {getattr(self, name)}")
        if not 0 <= int(self.png_compress_level) <= 9:
            raise ValueError(f"reader_study.png_compress_level: must be 0..9, got {self.png_compress_level}")
        self.labels = check_labels(self.labels, where="labels") if self.labels else []

    @classmethod
    def from_section(cls, sec: dict[str, Any]) -> "ReaderStudyConfig":
        """From ``synthcxr.config.section(config, "reader_study")``; unknown keys are ignored (seed/device)."""
        keys = ("n_real", "n_fake", "seed", "labels", "png_compress_level", "title", "readers", "detect_accuracy",
                "equivalence_margin")
        return cls(**{k: sec[k] for k in keys if k in sec})


# ----------------------------------------------------------------------------------------------
# Image sources
# ----------------------------------------------------------------------------------------------


@dataclass
class ImageSource:
    """Anything that lists image ids and reads one as uint8 ``[R, R]``: archive, PNG folder, arrays."""

    ids: list[str]
    read: Callable[[str], np.ndarray]
    where: str

    def read_many(self, ids: Sequence[str]) -> np.ndarray:
        imgs = [np.asarray(self.read(i)) for i in progress(ids, desc="read generated", unit="img")]
        return _stack_square(imgs, list(ids), self.where)


def array_source(images: np.ndarray, ids: Sequence[str] | None = None, where: str = "<arrays>") -> ImageSource:
    """Generated images given directly as uint8 ``[N, R, R]`` (tests, notebooks)."""
    arr = np.asarray(images)
    if arr.ndim != 3 or arr.dtype != np.uint8:
        raise ValueError(f"{where}: expected uint8 [N, R, R] images, got {arr.dtype} {list(arr.shape)}")
    names = [f"gen_{i:06d}" for i in range(len(arr))] if ids is None else [str(i) for i in ids]
    if len(names) != len(arr) or len(set(names)) != len(names):
        raise ValueError(f"{where}: need {len(arr)} distinct ids, got {len(names)} ({len(set(names))} distinct)")
    index = {n: i for i, n in enumerate(names)}
    return ImageSource(names, lambda sid: arr[index[sid]], where)


def png_folder_source(folder: str | os.PathLike) -> ImageSource:
    """Every ``*.png`` in ``folder`` (sorted); the file stem is the source id in the answer key."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder of generated PNG images")
    files = sorted(root.glob("*.png"))
    if not files:
        raise FileNotFoundError(f"{root}: no *.png files found; point --pngs at a folder of generated images")
    by_id = {p.stem: p for p in files}
    return ImageSource(list(by_id), lambda sid: _read_gray_png(by_id[sid]), str(root))


def archive_source(path: str | os.PathLike) -> ImageSource:
    """Samples of a synthetic archive (folder holding ``manifest.parquet``), read by ``synthcxr.archive``."""
    root = Path(path)
    if root.name == "manifest.parquet":
        root = root.parent
    if not (root / "manifest.parquet").exists():
        raise FileNotFoundError(f"{root / 'manifest.parquet'} missing: not a release folder (run snakemake finalize_archive)")
    from .. import archive as archive_mod

    opener = getattr(archive_mod, "open", None)
    if opener is None:
        raise ImportError("synthcxr.archive.open is not available; build the kit from a PNG folder (--pngs) instead")
    arc = opener(root, sealed=False)  # the kit is built before the release is sealed
    manifest = arc.manifest
    if "sample_id" not in manifest.columns:
        raise KeyError(f"{root / 'manifest.parquet'}: no 'sample_id' column")
    ids = [str(s) for s in manifest["sample_id"].tolist()]
    return ImageSource(ids, lambda sid: np.asarray(arc.read(sid)), str(root))


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


# ----------------------------------------------------------------------------------------------
# Selection, resizing, encoding
# ----------------------------------------------------------------------------------------------


def _rngs(seed: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
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
    imgs = ds.read_images(top, rows["row"].to_numpy())
    return resize_uint8(imgs, res), [str(s) for s in rows["image_id"].tolist()]


def resize_uint8(imgs: np.ndarray, res: int) -> np.ndarray:
    """uint8 ``[N, H, H]`` -> ``[N, res, res]`` with area averaging (the project's pixel conventions)."""
    if imgs.shape[-1] == res:
        return imgs
    out = np.empty((len(imgs), res, res), dtype=np.uint8)
    for s in range(0, len(imgs), 64):
        x = uint8_to_float(imgs[s : s + 64]).unsqueeze(1)
        with torch.no_grad():
            out[s : s + 64] = float_to_uint8(resize_batch(x, res))[:, 0].numpy()
    return out


def encode_png(img: np.ndarray, compress_level: int = 0) -> bytes:
    """One encoder, one setting, no text/time/gamma chunks: the bytes depend only on the pixels."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8), mode="L").save(
        buf, format="PNG", compress_level=int(compress_level), optimize=False
    )
    return buf.getvalue()


def page_template() -> str:
    """The packaged ``page.html`` (package data, so it works from an installed wheel too)."""
    return resources.files("synthcxr.reader_study").joinpath("page.html").read_text(encoding="utf-8")


def render_page(study: dict[str, Any]) -> str:
    """Insert the study manifest into the page as inline JSON (escaped so it cannot close the script)."""
    payload = json.dumps(study, separators=(",", ":"), sort_keys=True)
    payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    marker = "/*__STUDY_JSON__*/null"
    tpl = page_template()
    if tpl.count(marker) != 1:
        raise RuntimeError("page.html: study manifest marker missing or repeated; the package is damaged")
    return tpl.replace(marker, payload)


README_TEXT = """\
{title}
{underline}

Study id: {study_id}

This folder holds {n} chest X-ray images ({res} x {res} pixels). Some are real scans and some were
produced by a generative model; the proportion is not disclosed. For each image decide whether it
is REAL or FAKE (generated) and how confident you are (1 = guessing, 5 = certain). Ticking visible
findings is optional.

How to take part
1. Open index.html in Chrome, Edge or Firefox (double-click; no internet or server needed).
2. Enter your reader id (the one the study organiser gave you) and press Start.
3. Keyboard: R = real, F = fake, 1-5 = confidence, Left/Right arrows = previous/next image.
   Window/level: use the sliders or drag on the image (left-right = width, up-down = level);
   double-click the image or press W to reset.
4. Your answers are saved in this browser as you go; reloading the page and entering the same
   reader id resumes where you stopped.
5. When finished, press "Export CSV" and send the downloaded file to the study organiser.

Do not rename the files or look for other information about the images; judge the pixels only.
"""


def _study_id(seed: int, names: list[str], pngs: list[bytes]) -> str:
    h = hashlib.sha256(f"synthcxr-reader-study:{seed}".encode())
    for name, data in zip(names, pngs):
        h.update(name.encode())
        h.update(hashlib.sha256(data).digest())
    return h.hexdigest()[:12]


# ----------------------------------------------------------------------------------------------
# Kit writer
# ----------------------------------------------------------------------------------------------


def build_kit(
    real: np.ndarray,
    real_ids: Sequence[str],
    fake: np.ndarray,
    fake_ids: Sequence[str],
    kit_dir: str | os.PathLike,
    key_path: str | os.PathLike,
    cfg: ReaderStudyConfig,
) -> pd.DataFrame:
    """Shuffle, anonymise and write the kit and the answer key; returns the key table.

    ``real`` and ``fake`` are uint8 ``[N, R, R]`` at the same resolution (see :func:`build_study`
    for the version that picks and resizes them). The kit folder is written to a temporary sibling
    and renamed into place, so a killed job never leaves a half-written kit.
    """
    real, fake = np.asarray(real), np.asarray(fake)
    for name, arr, ids in (("real", real, real_ids), ("generated", fake, fake_ids)):
        if arr.ndim != 3 or arr.dtype != np.uint8 or arr.shape[1] != arr.shape[2]:
            raise ValueError(f"{name} images: expected uint8 [N, R, R], got {arr.dtype} {list(arr.shape)}")
        if len(ids) != len(arr):
            raise ValueError(f"{name} images: {len(arr)} images but {len(ids)} source ids")
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(
            f"real images are {real.shape[1]} px but generated ones {fake.shape[1]} px; resize to one resolution"
        )
    kit = Path(kit_dir).resolve()
    key = Path(key_path).resolve()
    if key.is_relative_to(kit):
        raise ValueError(f"answer key {key} lies inside the reader kit {kit}; keep it in a separate folder")

    _, _, shuffle_rng = _rngs(cfg.seed)
    truth = ["real"] * len(real) + ["fake"] * len(fake)
    sources = [str(s) for s in real_ids] + [str(s) for s in fake_ids]
    images = np.concatenate([real, fake])
    order = shuffle_rng.permutation(len(images))
    width = max(4, len(str(len(images))))
    names = [f"img_{i + 1:0{width}d}.png" for i in range(len(images))]
    pngs = [encode_png(images[j], cfg.png_compress_level) for j in progress(order, desc="encode", unit="img")]
    study_id = _study_id(cfg.seed, names, pngs)
    res = int(images.shape[-1])

    study = {
        "study_id": study_id,
        "title": cfg.title,
        "resolution": res,
        "labels": list(cfg.labels),
        "images": [
            {"name": n, "src": "data:image/png;base64," + base64.b64encode(p).decode("ascii")}
            for n, p in zip(names, pngs)
        ],
    }
    kit.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{kit.name}-", dir=kit.parent))
    try:
        (tmp / "images").mkdir()
        for n, p in zip(names, pngs):
            (tmp / "images" / n).write_bytes(p)
        page = render_page(study)
        if len(page) > PAGE_WARN_BYTES:
            log.warning(
                "reader page is %.0f MB (images are inlined so window/level works offline); browsers may be slow. "
                "Set reader_study.png_compress_level (e.g. 6) to shrink it at the cost of unequal file sizes",
                len(page) / 1e6,
            )
        (tmp / "index.html").write_text(page, encoding="utf-8")
        title = cfg.title
        (tmp / "README.txt").write_text(
            README_TEXT.format(title=title, underline="=" * len(title), study_id=study_id, n=len(names), res=res),
            encoding="utf-8",
        )
        for p in [*sorted((tmp / "images").iterdir()), tmp / "index.html", tmp / "README.txt", tmp / "images"]:
            os.utime(p, (FIXED_MTIME, FIXED_MTIME))
        _replace_dir(tmp, kit)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    table = pd.DataFrame(
        {"image": names, "truth": [truth[j] for j in order], "source": [sources[j] for j in order]},
        columns=list(KEY_COLUMNS),
    )
    write_text(key, table.to_csv(index=False, lineterminator="\n"))
    plan = study_design(len(names), cfg)
    write_json(key.parent / DESIGN_NAME, {"study_id": study_id, **plan})
    log.info("reader study %s: %d real + %d generated images (%d px) -> %s; key -> %s",
             study_id, len(real), len(fake), res, kit, key)
    log.info("%s", design_text(plan))
    return table


DESIGN_NAME = "design.json"


def study_design(n_images: int, cfg: ReaderStudyConfig) -> dict[str, Any]:
    """The kit's power statement (see :mod:`synthcxr.reader_study.power`), written next to the key."""
    from .power import design

    return design(n_images, int(cfg.readers), float(cfg.detect_accuracy), float(cfg.equivalence_margin))


def design_text(d: dict[str, Any]) -> str:
    """One paragraph an organiser reads before recruiting readers."""
    need = "more than 200,000" if d["answers_needed"] is None else f"{d['answers_needed']}"
    return (
        f"power: with {d['images_per_reader']} images a reader needs {d['correct_needed_per_reader']} right for p < "
        f"{d['alpha']}; a reader whose true accuracy is {d['detect_accuracy']:.2f} is detected with probability "
        f"{d['power_per_reader']:.2f} ({d['power_pooled']:.2f} pooled over {d['readers']} readers). "
        f"{d['target_power']:.0%} power needs {need} answers ({d['readers_needed']} readers of this kit); showing "
        f"equivalence to chance within +-{d['equivalence_margin']} needs {d['answers_needed_for_equivalence']} "
        f"({d['readers_needed_for_equivalence']} readers)."
    )


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename ``src`` onto ``dst``; an existing ``dst`` is moved aside first and removed afterwards."""
    old = None
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".old-{dst.name}-", dir=dst.parent))
        old.rmdir()
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        with contextlib.suppress(OSError):
            shutil.rmtree(old)


def build_study(
    prepared: str | os.PathLike,
    generated: ImageSource | str | os.PathLike,
    kit_dir: str | os.PathLike,
    key_path: str | os.PathLike,
    cfg: ReaderStudyConfig,
) -> pd.DataFrame:
    """Pick ``n_real`` test-split scans and ``n_fake`` generated ones with ``cfg.seed`` and build the kit.

    ``generated`` is an :class:`ImageSource`, an archive folder (holding ``manifest.parquet``) or a
    folder of PNGs. Real scans come from the top pyramid level and are area-resized to the generated
    resolution so both groups look alike apart from what the study measures.
    """
    from ..data.store import PreparedDataset

    PreparedDataset(prepared)  # fail on a missing prepared dataset before reading any generated image
    if not isinstance(generated, ImageSource):
        p = Path(generated)
        generated = archive_source(p) if (p / "manifest.parquet").exists() or p.name == "manifest.parquet" else png_folder_source(p)
    real_rng, fake_rng, _ = _rngs(cfg.seed)
    if len(generated.ids) < cfg.n_fake:
        raise ValueError(
            f"{generated.where}: only {len(generated.ids)} generated images but reader_study.n_fake is {cfg.n_fake}"
        )
    pick = np.sort(fake_rng.choice(len(generated.ids), size=cfg.n_fake, replace=False))
    fake_ids = [generated.ids[i] for i in pick]
    fake = generated.read_many(fake_ids)
    real, real_ids = pick_real(prepared, cfg.n_real, int(fake.shape[-1]), real_rng)
    return build_kit(real, real_ids, fake, fake_ids, kit_dir, key_path, cfg)
