"""Turn one source image file of any size, mode or aspect into a square uint8 grayscale image.

Conventions (shared by every adapter so all datasets look alike to the GAN):

* **Grayscale**: colour images use PIL's ITU-R 601 luma; alpha is dropped. 8-bit images keep their values.
* **16-bit and float images** have no fixed white point (12-bit detectors store into 16-bit containers),
  so they get a per-image window (:func:`intensity_window`): values above the image's effective bit depth
  (the smallest of 10/12/14/16 bits holding 99 % of its pixels) are clipped as burned-in overlays, then
  the ``dataset.intensity_percentiles`` (default 0.5 and 99.5) of the remaining pixels map to 0 and 255,
  so one bright marker or dark border no longer squeezes the body into a few grey levels. Padding pixels
  (DICOM PixelPaddingValue) are excluded from the statistics and written as 0.
* **Square**: centre **crop** to the short side. Padding would add artificial borders that the GAN
  would learn as anatomy; chest films are close to square, so cropping loses only lateral margins.
* **Resize**: PIL LANCZOS on float32 pixels (antialiased when shrinking), rounded half-to-even and
  clipped to uint8. JPEGs are first decoded at a reduced DCT scale that keeps at least twice the target
  size, which is much faster for 3000 px films and invisible after the antialiased resize.

Failures raise :class:`~synthcxr.data.quarantine.QuarantineError` with a reason kind, so the caller
quarantines the file instead of stopping the run.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from .quarantine import QuarantineError

#: Images whose short side is below this are rejected as unusable (thumbnails, icons, broken headers).
MIN_SIDE = 8
#: Default ``dataset.intensity_percentiles``: the share of darkest / brightest pixels clipped by the window.
PERCENTILES = (0.5, 99.5)
#: Percentile statistics use at most this many pixels (an even stride over the image): exact enough and fast.
_STAT_PIXELS = 1 << 20


@dataclass(frozen=True)
class SourceImage:
    """Decoded grayscale pixels (float32 or uint8, 0..255) and the source file's own size in pixels.

    ``width``/``height`` are the stored image's size even when the decoder used a reduced scale
    (JPEG draft), so the caller can tell enlarged sources from shrunk ones.
    """

    pixels: np.ndarray
    width: int
    height: int

    @property
    def short_side(self) -> int:
        return min(self.width, self.height)

    @classmethod
    def of(cls, pixels: np.ndarray) -> "SourceImage":
        """Pixels decoded at the source's own size."""
        pixels = np.asarray(pixels)
        h, w = pixels.shape[:2] if pixels.ndim >= 2 else (0, 0)
        return cls(pixels, int(w), int(h))


def _open_checked(path: str | os.PathLike):
    """Open a file, mapping OS errors to quarantine kinds."""
    if not os.path.exists(path):
        raise QuarantineError("missing_file", f"{path} does not exist")
    try:
        return open(path, "rb")
    except OSError as exc:  # permissions, directories, I/O errors
        raise QuarantineError("unreadable", f"cannot open {path}: {exc.strerror or exc}") from None


def read_image_file(
    path: str | os.PathLike, target: int | None = None, percentiles: Sequence[float] = PERCENTILES
) -> SourceImage:
    """Decode an image file to 2-D grayscale in [0, 255] with the file's own size.

    ``target`` lets JPEG decoding use a reduced DCT scale whose short side stays >= 2 * target.
    """
    fh = _open_checked(path)
    with fh:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(fh)
                width, height = img.size
                if target and img.format == "JPEG":
                    img.draft("L", (2 * target, 2 * target))
                img.load()
        except UnidentifiedImageError:
            raise QuarantineError("not_an_image", f"{path} is not a recognised image file") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise QuarantineError("bad_image", f"{path}: {exc}") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise QuarantineError("corrupt_image", f"{path}: {exc}") from None
        return SourceImage(image_to_gray(img, str(path), percentiles), int(width), int(height))


def image_to_gray(img: Image.Image, source: str = "<image>", percentiles: Sequence[float] = PERCENTILES) -> np.ndarray:
    """PIL image (any mode) -> grayscale in [0, 255]: uint8 as stored, 16-bit/float windowed."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img)
        if arr.dtype.kind in "ui":
            arr = clip_to_bit_depth(arr)
        return intensity_window(arr, percentiles, source=source)
    if img.mode != "L":
        img = img.convert("L")
    return np.asarray(img)


def _sample(arr: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """Pixels the statistics use: the valid ones, thinned by an even stride to at most _STAT_PIXELS."""
    flat = arr.ravel() if valid is None else arr[valid]
    step = max(1, flat.size // _STAT_PIXELS)
    return flat[::step]


def clip_to_bit_depth(arr: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Integer pixels clipped to the effective bit depth (10/12/14/16: the smallest holding 99 % of them).

    A 12-bit image in a 16-bit container with a burned-in marker at 65535 gets the marker clipped to
    4095, so it cannot stretch the window. Returns float32.
    """
    x = np.asarray(arr)
    vals = _sample(x, valid)
    if vals.size == 0:
        return x.astype(np.float32)
    q = float(np.percentile(vals, 99.0))
    for bits in (10, 12, 14, 16):
        top = float((1 << bits) - 1)
        if q <= top:
            break
    else:
        top = float(vals.max())
    return np.minimum(x.astype(np.float32), np.float32(top))


def intensity_window(
    arr: np.ndarray,
    percentiles: Sequence[float] = PERCENTILES,
    valid: np.ndarray | None = None,
    source: str = "<image>",
) -> np.ndarray:
    """Percentile window -> float32 0..255: the ``percentiles`` of the valid pixels map to 0 and 255.

    ``valid`` (bool, same shape) excludes padding from the statistics; excluded pixels come out 0.
    ``(0, 100)`` is a plain min..max stretch. When the percentiles coincide (a mostly flat image) the
    window widens to the valid pixels' min..max; a constant image is rejected.
    """
    x = np.asarray(arr, dtype=np.float32)
    if x.ndim != 2:
        raise QuarantineError("bad_image", f"{source}: expected a 2-D image, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise QuarantineError("bad_image", f"{source}: non-finite pixel values")
    vals = _sample(x, valid)
    if vals.size == 0:
        raise QuarantineError("bad_image", f"{source}: every pixel is padding (PixelPaddingValue)")
    p_lo, p_hi = float(percentiles[0]), float(percentiles[1])
    lo, hi = (float(v) for v in np.percentile(vals, [p_lo, p_hi]))
    if hi <= lo:
        full = x if valid is None else x[valid]
        lo, hi = float(full.min()), float(full.max())
    if hi <= lo:
        raise QuarantineError("bad_image", f"{source}: constant image (all pixels {lo:g})")
    out = np.subtract(x, np.float32(lo), dtype=np.float32)
    out *= np.float32(255.0 / (hi - lo))
    np.clip(out, 0.0, 255.0, out=out)
    if valid is not None:
        out[~valid] = 0.0
    return out


def stretch(arr: np.ndarray, source: str = "<image>") -> np.ndarray:
    """Linear min..max -> 0..255 stretch; rejects constant and non-finite images."""
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim != 2:
        raise QuarantineError("bad_image", f"{source}: expected a 2-D image, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise QuarantineError("bad_image", f"{source}: non-finite pixel values")
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        raise QuarantineError("bad_image", f"{source}: constant image (all pixels {lo:g})")
    return (arr - lo) * np.float32(255.0 / (hi - lo))


def center_square(arr: np.ndarray) -> np.ndarray:
    """Centre crop to the short side (odd margins put the extra pixel at the end)."""
    h, w = arr.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return arr[top : top + s, left : left + s]


def to_square_uint8(gray: np.ndarray, res: int, source: str = "<image>") -> np.ndarray:
    """float/uint8 grayscale of any shape -> uint8 ``[res, res]`` (crop to square, LANCZOS resize)."""
    gray = np.asarray(gray)
    if gray.ndim != 2:
        raise QuarantineError("bad_image", f"{source}: expected a 2-D image, got shape {gray.shape}")
    if min(gray.shape) < MIN_SIDE:
        raise QuarantineError("bad_image", f"{source}: image {gray.shape[1]}x{gray.shape[0]} is too small")
    sq = center_square(gray.astype(np.float32, copy=False))
    if float(sq.max()) <= float(sq.min()):
        raise QuarantineError("bad_image", f"{source}: constant image (all pixels {float(sq.min()):g})")
    if sq.shape[0] != res:
        sq = np.asarray(Image.fromarray(np.ascontiguousarray(sq), mode="F").resize((res, res), Image.LANCZOS))
    return np.clip(np.rint(sq), 0, 255).astype(np.uint8)


def load_square(path: str | os.PathLike, res: int) -> np.ndarray:
    """Image file -> uint8 ``[res, res]`` following the module conventions."""
    return to_square_uint8(read_image_file(path, target=res).pixels, res, str(path))
