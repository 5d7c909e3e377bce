"""DICOM pixel and header handling: the display pipeline a reading workstation applies, in order.

1. decode (native or compressed transfer syntaxes; JPEG/JPEG-LS/JPEG 2000 through pylibjpeg, RLE
   natively), honouring BitsStored (bits above it are masked off, e.g. embedded overlays);
2. first frame of multi-frame objects; 8-bit colour objects reduced to luma (display values, no LUTs);
3. modality LUT: RescaleSlope/RescaleIntercept or a Modality LUT Sequence;
4. VOI: a VOI LUT Sequence (first LUT) if present, else WindowCenter/WindowWidth (first window;
   LINEAR, LINEAR_EXACT or SIGMOID per PS3.3 C.11.2.1.2) mapped straight onto 0..255; with neither,
   the percentile window of :func:`synthcxr.data.decode.intensity_window` (robust to burned-in markers);
5. MONOCHROME1 inverted so that, as in every other format, bone is bright;
6. padding: stored values equal to PixelPaddingValue (or in its range up to PixelPaddingRangeLimit) are
   left out of every statistic and written as 0 (black), whatever the photometric interpretation.

Files without the 128-byte preamble and file meta group (older modalities, some PACS exports) are read
too: when pydicom rejects a file, it is re-read with ``force=True`` and kept if it parses as a data set
that holds an image (Rows, Columns and a pixel data element), whatever element it starts with; its
transfer syntax is taken from the encoding pydicom detected. Anything else stays quarantined as not a
DICOM file.

Only view, sex and age ever leave this module with the pixels; the raw PatientID is handed back solely
so the caller can hash it (see :func:`synthcxr.data.splits.patient_key`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi

from .decode import PERCENTILES, intensity_window
from .quarantine import QuarantineError

_LATERAL = {"LL", "RL", "LAT", "LATERAL", "LLD", "RLD"}


#: Pixel data elements: a forced read counts as an image only when one of them is present.
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _forced_read(path: str | os.PathLike, stop_before_pixels: bool) -> pydicom.Dataset:
    """A file without the preamble and DICM marker, read as a bare data set when it parses and holds an image.

    pydicom's forced read guesses the encoding from the first element. Anything that does not come out
    as a data set with positive Rows and Columns and a pixel data element (read deferred, so a header
    read does not load the pixels) is not a DICOM image and raises ``InvalidDicomError``.
    """
    try:
        ds = pydicom.dcmread(path, force=True, defer_size=256 if stop_before_pixels else None)
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        has_pixels = any(t in ds for t in _PIXEL_TAGS)
    except Exception as exc:  # noqa: BLE001 - a forced parse of arbitrary bytes fails in many ways
        raise InvalidDicomError(f"not a data set ({type(exc).__name__})") from None
    if rows <= 0 or cols <= 0 or not has_pixels:
        raise InvalidDicomError("no image in the data set")
    _set_transfer_syntax(ds)
    return ds


def _read(path: str | os.PathLike, stop_before_pixels: bool) -> pydicom.Dataset:
    """dcmread with quarantine kinds, falling back to a forced read for preamble-less files."""
    if not os.path.exists(path):
        raise QuarantineError("missing_file", f"{path} does not exist")
    what = "header" if stop_before_pixels else "file"
    try:
        try:
            return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
        except InvalidDicomError:
            return _forced_read(path, stop_before_pixels)
    except PermissionError as exc:
        raise QuarantineError("unreadable", f"cannot open {path}: {exc.strerror or exc}") from None
    except IsADirectoryError:
        raise QuarantineError("unreadable", f"{path} is a directory") from None
    except InvalidDicomError as exc:
        raise QuarantineError("not_an_image", f"{path} is not a DICOM file ({exc})") from None
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise QuarantineError("corrupt_image", f"{path}: unreadable DICOM {what} ({exc})") from None


def _set_transfer_syntax(ds: pydicom.Dataset) -> None:
    """Give a meta-less data set the transfer syntax its encoding implies (needed to decode pixels)."""
    if "TransferSyntaxUID" in getattr(ds, "file_meta", {}):
        return
    implicit, little = ds.original_encoding
    if not little:
        uid = pydicom.uid.ExplicitVRBigEndian
    else:
        uid = pydicom.uid.ImplicitVRLittleEndian if implicit else pydicom.uid.ExplicitVRLittleEndian
    if not hasattr(ds, "file_meta") or ds.file_meta is None:
        ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid


def read_header(path: str | os.PathLike) -> pydicom.Dataset:
    """Read a DICOM header (no pixels), mapping failures to quarantine kinds."""
    return _read(path, stop_before_pixels=True)


def normalise_view(value: object) -> str:
    """ViewPosition-like strings -> PA / AP / LL / LATERAL / UNKNOWN, else the cleaned raw value.

    Only exact PA/AP count as frontal: decubitus and axial variants ("AP AXIAL", "PA LLD") are kept
    under their own names, so the default view filter drops them and prepare.json counts them.
    """
    v = " ".join(str(value or "").strip().upper().split())
    if not v:
        return "UNKNOWN"
    if v in ("PA", "AP", "LL"):
        return v
    if v in _LATERAL:
        return "LATERAL"
    return v


def normalise_sex(value: object) -> str | None:
    v = str(value or "").strip().upper()
    if v in ("M", "MALE"):
        return "M"
    if v in ("F", "FEMALE"):
        return "F"
    return None


_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$")


def parse_age(value: object) -> float:
    """DICOM AS (``045Y``, ``006M``, ``010W``, ``003D``) or plain numbers -> years; NaN if unknown."""
    if value is None:
        return float("nan")
    if isinstance(value, (int, float, np.integer, np.floating)):
        v = float(value)
    else:
        m = _AGE.match(str(value))
        if not m:
            return float("nan")
        n, unit = float(m.group(1)), m.group(2) or "Y"
        v = n / {"Y": 1.0, "M": 12.0, "W": 52.1775, "D": 365.25}[unit]
    return v if 0.0 <= v <= 120.0 else float("nan")


def header_meta(ds: pydicom.Dataset) -> dict[str, object]:
    """view, sex, age and the raw patient id (to be hashed, never written) from a header."""
    return {
        "view": normalise_view(ds.get("ViewPosition", "")),
        "sex": normalise_sex(ds.get("PatientSex", "")),
        "age": parse_age(ds.get("PatientAge", None)),
        "patient_id": str(ds.get("PatientID", "") or "").strip() or None,
    }


def window_linear(arr: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """DICOM VOI windowing (PS3.3 C.11.2.1.2/3) mapped to float32 0..255 (float32 throughout, for memory)."""
    x = np.asarray(arr, dtype=np.float32)
    f = (function or "LINEAR").upper()
    if f == "SIGMOID":
        if width <= 0:
            raise ValueError(f"window width {width} must be > 0 for SIGMOID")
        y = 255.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    elif f == "LINEAR_EXACT":
        if width <= 0:
            raise ValueError(f"window width {width} must be > 0 for LINEAR_EXACT")
        y = np.clip((x - center) / width + 0.5, 0.0, 1.0) * 255.0
    else:
        if width < 1:
            raise ValueError(f"window width {width} must be >= 1 for LINEAR")
        c, w = center - 0.5, width - 1.0
        if w == 0:
            y = np.where(x <= c, 0.0, 255.0)
        else:
            y = np.clip((x - c) / w + 0.5, 0.0, 1.0) * 255.0
    return y.astype(np.float32, copy=False)


def modality_lut(arr: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Stored values -> modality values: a Modality LUT Sequence through pydicom, a rescale in float32.

    pydicom's rescale returns float64 (8 bytes a pixel: 109 MB for a 4096x3328 film); float32 holds
    any 16-bit value times a slope exactly enough for display and halves that.
    """
    if "ModalityLUTSequence" in ds:
        return apply_modality_lut(arr, ds)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    if slope == 1.0 and intercept == 0.0:
        return arr
    out = arr.astype(np.float32)
    out *= np.float32(slope)
    out += np.float32(intercept)
    return out


def padding_mask(stored: np.ndarray, ds: pydicom.Dataset) -> np.ndarray | None:
    """True where a stored value is PixelPaddingValue (or within PixelPaddingRangeLimit); None if no padding."""
    pv = ds.get("PixelPaddingValue")
    if pv is None:
        return None
    pv = _first(pv)
    limit = ds.get("PixelPaddingRangeLimit")
    if limit is None:
        mask = stored == pv
    else:
        lo, hi = sorted((pv, _first(limit)))
        mask = (stored >= lo) & (stored <= hi)
    return mask if mask.any() else None


def _first(value) -> float:
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return float(value[0])
    return float(value)


def dataset_to_gray(
    ds: pydicom.Dataset, source: str = "<dicom>", percentiles: Sequence[float] = PERCENTILES
) -> np.ndarray:
    """Decoded DICOM dataset -> float32 grayscale 0..255, bone bright (see module docstring)."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise QuarantineError("no_pixel_data", f"{source}: DICOM object has no pixel data")
    try:
        arr = ds.pixel_array
    except (ValueError, RuntimeError, NotImplementedError, AttributeError, TypeError, KeyError, OSError) as exc:
        raise QuarantineError("corrupt_image", f"{source}: cannot decode pixel data ({exc})") from None
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if nframes > 1:
        arr = arr[0]
    if spp == 3:  # colour secondary capture: already display values (like an RGB PNG), luma as is
        if arr.dtype != np.uint8:
            raise QuarantineError("bad_image", f"{source}: {arr.dtype} colour pixels (only 8-bit RGB is supported)")
        luma = arr.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        if float(luma.max()) <= float(luma.min()):
            raise QuarantineError("bad_image", f"{source}: constant image")
        return luma
    if arr.ndim != 2:
        raise QuarantineError("bad_image", f"{source}: unexpected pixel array shape {arr.shape}")
    bits_stored = int(ds.get("BitsStored", arr.dtype.itemsize * 8))
    if arr.dtype.kind == "u" and bits_stored < arr.dtype.itemsize * 8:
        arr = arr & np.asarray((1 << bits_stored) - 1, dtype=arr.dtype)
    elif arr.dtype.kind == "i" and bits_stored < arr.dtype.itemsize * 8:
        shift = arr.dtype.itemsize * 8 - bits_stored  # sign-extend from BitsStored
        arr = (arr << shift) >> shift
    try:
        pad = padding_mask(arr, ds)
        valid = None if pad is None else ~pad
        if valid is not None and not valid.any():
            raise QuarantineError("bad_image", f"{source}: every pixel is padding (PixelPaddingValue)")
        arr = modality_lut(arr, ds)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
        if ds.get("VOILUTSequence"):
            gray = intensity_window(apply_voi(arr, ds, index=0), (0.0, 100.0), valid, source)
        elif "WindowCenter" in ds and "WindowWidth" in ds and ds.WindowCenter is not None and ds.WindowWidth is not None:
            gray = window_linear(
                arr, _first(ds.WindowCenter), _first(ds.WindowWidth), str(ds.get("VOILUTFunction", "LINEAR"))
            )
            del arr
            g = gray if valid is None else gray[valid]
            if float(g.max()) <= float(g.min()):
                raise QuarantineError("bad_image", f"{source}: window leaves a constant image")
        else:
            gray = intensity_window(arr, percentiles, valid, source)
    except QuarantineError:
        raise
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        raise QuarantineError("corrupt_image", f"{source}: invalid LUT/window attributes ({exc})") from None
    if photometric == "MONOCHROME1":
        np.subtract(np.float32(255.0), gray, out=gray)
    if pad is not None:
        gray[pad] = 0.0
    return gray


def read_dicom_gray(path: str | os.PathLike, percentiles: Sequence[float] = PERCENTILES) -> np.ndarray:
    """DICOM file -> float32 grayscale 0..255 (quarantine kinds on failure)."""
    return dataset_to_gray(_read(path, stop_before_pixels=False), str(path), percentiles)
