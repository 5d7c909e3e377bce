"""Turn one source image file of any size, mode or aspect into a square uint8 grayscale image.

Conventions (shared by every adapter so all datasets look alike to the GAN):

* **Grayscale**: colour images use PIL's ITU-R 601 luma; alpha is dropped. 16-bit/float images are
  stretched linearly from their own min..max to 0..255 (12-bit data stored in 16-bit containers has
  no fixed white point, so a per-image stretch is the only portable choice).
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

import numpy as np
from PIL import Image, UnidentifiedImageError

from .quarantine import QuarantineError

#: Images whose short side is below this are rejected as unusable (thumbnails, icons, broken headers).
MIN_SIDE = 8


def _open_checked(path: str | os.PathLike):
    """Open a file, mapping OS errors to quarantine kinds."""
    if not os.path.exists(path):
        raise QuarantineError("missing_file", f"{path} does not exist")
    try:
        return open(path, "rb")
    except OSError as exc:  # permissions, directories, I/O errors
        raise QuarantineError("unreadable", f"cannot open {path}: {exc.strerror or exc}") from None


def read_image_file(path: str | os.PathLike, target: int | None = None) -> np.ndarray:
    """Decode an image file to a 2-D float32 grayscale array in [0, 255].

    ``target`` lets JPEG decoding use a reduced DCT scale whose short side stays >= 2 * target.
    """
    fh = _open_checked(path)
    with fh:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(fh)
                if target and img.format == "JPEG":
                    img.draft("L", (2 * target, 2 * target))
                img.load()
        except UnidentifiedImageError:
            raise QuarantineError("not_an_image", f"{path} is not a recognised image file") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise QuarantineError("bad_image", f"{path}: {exc}") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise QuarantineError("corrupt_image", f"{path}: {exc}") from None
        return image_to_gray(img, str(path))


def image_to_gray(img: Image.Image, source: str = "<image>") -> np.ndarray:
    """PIL image (any mode) -> float32 grayscale in [0, 255] (see module docstring)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img).astype(np.float32)
        return stretch(arr, source)
    if img.mode != "L":
        img = img.convert("L")
    return np.asarray(img, dtype=np.float32)


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
    return to_square_uint8(read_image_file(path, target=res), res, str(path))
