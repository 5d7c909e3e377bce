"""The reader page: PNG bytes encoded identically for every image, the offline HTML page that embeds them,
the readers' README and the study id."""

from __future__ import annotations

import hashlib
import io
import json
from importlib import resources
from typing import Any

import numpy as np
from PIL import Image


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


def study_id(seed: int, names: list[str], pngs: list[bytes]) -> str:
    h = hashlib.sha256(f"synthcxr-reader-study:{seed}".encode())
    for name, data in zip(names, pngs):
        h.update(name.encode())
        h.update(hashlib.sha256(data).digest())
