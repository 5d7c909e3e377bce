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
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import build
from ..imagesets import ImageSet
from ..labels import check_labels
from ..utils.atomic import write_json, write_text
from ..utils.runtime import progress
from .page import README_TEXT, encode_png, render_page, study_id
from .sources import archive_source, pick_real, png_folder_source, study_rngs

log = logging.getLogger("synthcxr")

KEY_COLUMNS = ("image", "truth", "source")
#: Fixed modification time (2000-01-01 UTC) given to every kit file so file times carry no order.
FIXED_MTIME = 946684800
#: Above this the inlined page gets slow to open; the builder logs a warning with the remedy.
PAGE_WARN_BYTES = 200_000_000


@dataclass
class ReaderStudyConfig:
    """The ``reader_study`` config section (plus the global ``labels`` shown as findings boxes); defaults
    live in the schema (:func:`synthcxr.config.build`)."""

    n_real: int
    n_fake: int
    seed: int
    labels: list[str]
    png_compress_level: int
    title: str
    readers: int
    detect_accuracy: float
    equivalence_margin: float

    def __post_init__(self) -> None:
        self.labels = check_labels(self.labels, where="labels") if self.labels else []

    @classmethod
    def from_section(cls, sec: Mapping[str, Any]) -> "ReaderStudyConfig":
        """From ``synthcxr.config.section(config, "reader_study")`` (or part of it: the schema fills the rest)."""
        return build(cls, "reader_study", sec)


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

    _, _, shuffle_rng = study_rngs(cfg.seed)
    truth = ["real"] * len(real) + ["fake"] * len(fake)
    sources = [str(s) for s in real_ids] + [str(s) for s in fake_ids]
    images = np.concatenate([real, fake])
    order = shuffle_rng.permutation(len(images))
    width = max(4, len(str(len(images))))
    names = [f"img_{i + 1:0{width}d}.png" for i in range(len(images))]
    pngs = [encode_png(images[j], cfg.png_compress_level) for j in progress(order, desc="encode", unit="img")]
    sid = study_id(cfg.seed, names, pngs)
    res = int(images.shape[-1])

    study = {
        "study_id": sid,
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
            README_TEXT.format(title=title, underline="=" * len(title), study_id=sid, n=len(names), res=res),
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
    write_json(key.parent / DESIGN_NAME, {"study_id": sid, **plan})
    log.info("reader study %s: %d real + %d generated images (%d px) -> %s; key -> %s",
             sid, len(real), len(fake), res, kit, key)
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
    generated: ImageSet | str | os.PathLike,
    kit_dir: str | os.PathLike,
    key_path: str | os.PathLike,
    cfg: ReaderStudyConfig,
) -> pd.DataFrame:
    """Pick ``n_real`` test-split scans and ``n_fake`` generated ones with ``cfg.seed`` and build the kit.

    ``generated`` is an :class:`~synthcxr.imagesets.ImageSet`, an archive folder (holding ``manifest.parquet``) or a
    folder of PNGs. Real scans come from the top pyramid level and are area-resized to the generated
    resolution so both groups look alike apart from what the study measures.
    """
    from ..data.store import PreparedDataset

    PreparedDataset(prepared)  # fail on a missing prepared dataset before reading any generated image
    if not isinstance(generated, ImageSet):
        p = Path(generated)
        generated = archive_source(p) if (p / "manifest.parquet").exists() or p.name == "manifest.parquet" else png_folder_source(p)
    real_rng, fake_rng, _ = study_rngs(cfg.seed)
    if len(generated.ids) < cfg.n_fake:
        raise ValueError(
            f"{generated.origin}: only {len(generated.ids)} generated images but reader_study.n_fake is {cfg.n_fake}"
        )
    pick = np.sort(fake_rng.choice(len(generated.ids), size=cfg.n_fake, replace=False))
    fake_ids = [generated.ids[i] for i in pick]
    fake = generated.select_ids(fake_ids).at(None).read()
    if fake.ndim != 3 or fake.shape[1] != fake.shape[2]:
        raise ValueError(f"{generated.origin}: generated images must be square 2-D arrays, got shape {list(fake.shape[1:])}")
    real, real_ids = pick_real(prepared, cfg.n_real, int(fake.shape[-1]), real_rng)
    return build_kit(real, real_ids, fake, fake_ids, kit_dir, key_path, cfg)
