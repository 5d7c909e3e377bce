"""DICOM pixel and header handling: the display pipeline a reading workstation applies, in order.

1. decode (native or compressed transfer syntaxes; JPEG/JPEG-LS/JPEG 2000 through pylibjpeg, RLE
   natively), honouring BitsStored (bits above it are masked off, e.g. embedded overlays);
2. first frame of multi-frame objects; colour objects reduced to luma;
3. modality LUT: RescaleSlope/RescaleIntercept or a Modality LUT Sequence;
4. VOI: a VOI LUT Sequence (first LUT) if present, else WindowCenter/WindowWidth (first window;
   LINEAR, LINEAR_EXACT or SIGMOID per PS3.3 C.11.2.1.2) mapped straight onto 0..255; with neither,
   a min..max stretch;
5. MONOCHROME1 inverted so that, as in every other format, bone is bright.

Only view, sex and age ever leave this module with the pixels; the raw PatientID is handed back solely
so the caller can hash it (see :func:`synthcxr.data.splits.patient_key`).
"""

from __future__ import annotations

import os
import re

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi

from .decode import stretch
from .quarantine import QuarantineError

_LATERAL = {"LL", "RL", "LAT", "LATERAL", "LLD", "RLD"}


def read_header(path: str | os.PathLike) -> pydicom.Dataset:
    """Read a DICOM header (no pixels), mapping failures to quarantine kinds."""
    if not os.path.exists(path):
        raise QuarantineError("missing_file", f"{path} does not exist")
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except PermissionError as exc:
        raise QuarantineError("unreadable", f"cannot open {path}: {exc.strerror or exc}") from None
    except IsADirectoryError:
        raise QuarantineError("unreadable", f"{path} is a directory") from None
    except InvalidDicomError:
        raise QuarantineError("not_an_image", f"{path} is not a DICOM file") from None
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise QuarantineError("corrupt_image", f"{path}: unreadable DICOM header ({exc})") from None


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
    """DICOM VOI windowing (PS3.3 C.11.2.1.2/3) mapped to float32 0..255."""
    x = np.asarray(arr, dtype=np.float64)
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
    return y.astype(np.float32)


def _first(value) -> float:
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return float(value[0])
    return float(value)


def dataset_to_gray(ds: pydicom.Dataset, source: str = "<dicom>") -> np.ndarray:
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
    if spp == 3:  # colour secondary capture: luma, no LUTs apply
        rgb = arr.astype(np.float32)
        return stretch(rgb @ np.array([0.299, 0.587, 0.114], np.float32), source)
    if arr.ndim != 2:
        raise QuarantineError("bad_image", f"{source}: unexpected pixel array shape {arr.shape}")
    bits_stored = int(ds.get("BitsStored", arr.dtype.itemsize * 8))
    if arr.dtype.kind == "u" and bits_stored < arr.dtype.itemsize * 8:
        arr = arr & np.asarray((1 << bits_stored) - 1, dtype=arr.dtype)
    elif arr.dtype.kind == "i" and bits_stored < arr.dtype.itemsize * 8:
        shift = arr.dtype.itemsize * 8 - bits_stored  # sign-extend from BitsStored
        arr = (arr << shift) >> shift
    try:
        arr = apply_modality_lut(arr, ds)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
        if ds.get("VOILUTSequence"):
            gray = stretch(apply_voi(arr, ds, index=0), source)
        elif "WindowCenter" in ds and "WindowWidth" in ds and ds.WindowCenter is not None and ds.WindowWidth is not None:
            gray = window_linear(
                arr, _first(ds.WindowCenter), _first(ds.WindowWidth), str(ds.get("VOILUTFunction", "LINEAR"))
            )
            if float(gray.max()) <= float(gray.min()):
                raise QuarantineError("bad_image", f"{source}: window leaves a constant image")
        else:
            gray = stretch(arr, source)
    except QuarantineError:
        raise
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        raise QuarantineError("corrupt_image", f"{source}: invalid LUT/window attributes ({exc})") from None
    if photometric == "MONOCHROME1":
        gray = np.float32(255.0) - gray
    return gray


def read_dicom_gray(path: str | os.PathLike) -> np.ndarray:
    """DICOM file -> float32 grayscale 0..255 (quarantine kinds on failure)."""
    if not os.path.exists(path):
        raise QuarantineError("missing_file", f"{path} does not exist")
    try:
        ds = pydicom.dcmread(path)
    except PermissionError as exc:
        raise QuarantineError("unreadable", f"cannot open {path}: {exc.strerror or exc}") from None
    except InvalidDicomError:
        raise QuarantineError("not_an_image", f"{path} is not a DICOM file") from None
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise QuarantineError("corrupt_image", f"{path}: unreadable DICOM ({exc})") from None
    return dataset_to_gray(ds, str(path))
