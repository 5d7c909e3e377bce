"""Rasterise a phantom study: analytic shapes evaluated on a pixel grid with numpy.

The image is built as an attenuation map (soft tissue, lungs, heart and mediastinum, bones, findings)
and converted to brightness like a radiograph: more attenuation, brighter pixel. Edges are linear
ramps at least one pixel wide (anti-aliasing without supersampling) and thin structures keep their
integrated density when widened, so a 256 px render area-averaged to 64 px matches the 64 px render.
Below :data:`BASE_RES` the study is rendered at BASE_RES and area-averaged, exactly like the
pyramid the prepare stage builds.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd

from .anatomy import StudyGeometry, study_geometry

BASE_RES = 64
MAX_RES = 1024
_EDGE = 0.012  # edge softness in image half-widths at high resolution (the "blur" of every shape)
_LINE = 0.014  # width of thin lines (vessels, pleural line) at high resolution
_F = np.float32


def _ramp(d: np.ndarray, w: float) -> np.ndarray:
    """Soft inside-indicator of a signed distance ``d`` (positive inside), ``w`` wide."""
    return np.clip(0.5 + d * (0.5 / w), 0.0, 1.0)


def _check_res(res: int) -> int:
    if isinstance(res, bool) or not isinstance(res, (int, np.integer)):
        raise TypeError(f"res must be an int power of two, got {res!r}")
    res = int(res)
    if res < 1 or res & (res - 1) or res > MAX_RES:
        raise ValueError(f"res must be a power of two between 1 and {MAX_RES}, got {res}")
    return res


def _segments(px: np.ndarray, py: np.ndarray, seg: np.ndarray, width: float, line: float) -> np.ndarray:
    """Sum of Gaussian line profiles along segments ``seg[S, 5]`` (x0, y0, x1, y1, amplitude).

    Amplitude fades along each segment (vessels taper towards the periphery). Processed in chunks so
    a 1024 px render stays within a few tens of MB.
    """
    out = np.zeros(px.shape, dtype=_F)
    if len(seg) == 0:
        return out
    gain = line / width  # keep integrated density when the line is widened for a coarse grid
    step = max(1, (1 << 21) // px.size)
    for i in range(0, len(seg), step):
        s = seg[i : i + step].astype(_F)
        x0, y0, x1, y1, amp = (s[:, j, None, None] for j in range(5))
        dx, dy = x1 - x0, y1 - y0
        ll = dx * dx + dy * dy + _F(1e-9)
        t = np.clip(((px - x0) * dx + (py - y0) * dy) / ll, 0.0, 1.0)
        d2 = (px - x0 - t * dx) ** 2 + (py - y0 - t * dy) ** 2
        out += (amp * gain * (1.0 - 0.6 * t) * np.exp(-d2 / (width * width))).sum(axis=0)
    return out


def _bands(coord: np.ndarray, centres: np.ndarray, half: np.ndarray, w: float) -> np.ndarray:
    """Sum over bands ``|coord - centre_k| < half_k`` with brighter edges (bone cortex). centres: [K,H,W]."""
    out = np.zeros(coord.shape, dtype=_F)
    step = max(1, (1 << 21) // coord.size)
    for i in range(0, len(centres), step):
        c, h = centres[i : i + step], half[i : i + step, None, None]
        d = np.abs(coord[None] - c)
        out += (_ramp(h - d, w) * (0.7 + 0.3 * np.minimum(d / h, 1.0) ** 2)).sum(axis=0)
    return out


class _Scene:
    """Per-render scratch: pixel grid in patient coordinates and the masks later steps reuse."""

    def __init__(self, g: StudyGeometry, res: int):
        self.g, self.a, self.res = g, g.anatomy, res
        pix = 2.0 / res
        self.w = max(_EDGE, 0.75 * pix)
        self.lw = max(_LINE, 0.75 * pix)
        c = ((np.arange(res, dtype=_F) + 0.5) * _F(pix) - 1.0).astype(_F)
        xx, yy = np.meshgrid(c, c)
        p = g.pose
        dx, dy = (xx - p.tx) / p.scale, (yy - p.ty) / p.scale
        ca, sa = np.cos(p.angle), np.sin(p.angle)
        self.px = (ca * dx + sa * dy).astype(_F)
        self.py = (-sa * dx + ca * dy).astype(_F)

    def dome(self, side: int, sx: np.ndarray) -> np.ndarray:
        a = self.a
        top = self.g.domes[side]
        lat = np.clip((sx - a.dome_peak) / (a.tw - a.dome_peak), 0.0, None)
        med = np.clip((a.dome_peak - sx) / a.dome_peak, 0.0, None)
        return top + a.cp_drop * lat * lat + 0.6 * a.cp_drop * med * med

    def hemi_rho(self, side: int) -> tuple[np.ndarray, np.ndarray]:
        """Normalised radius in the hemithorax ellipse (1 on the chest wall) and the mirrored x."""
        a = self.a
        sx = side * self.px
        cy = self.g.domes[side]
        ey = np.minimum(self.py - cy, 0.0) / (cy - a.apex_y)
        ex = (sx - (a.tw - a.ax)) / a.ax
        return np.sqrt(ex * ex + ey * ey), sx


def _soft_tissue(s: _Scene) -> tuple[np.ndarray, np.ndarray]:
    a = s.a
    hw = a.bw * (1.0 + 0.07 * np.clip(-(s.py + 0.3) / 0.7, 0.0, 1.0))
    body = _ramp(hw - np.abs(s.px), max(s.w, 0.02))
    thick = np.sqrt(np.clip(1.0 - (s.px / hw) ** 2, 0.0, 1.0))
    return body, body * (0.42 + 0.48 * thick)


def _cardiac(s: _Scene) -> np.ndarray:
    """Mediastinum, aortic knob and heart as one soft mask."""
    a, (hx, hy, ha, hb, tilt) = s.a, s.g.heart
    med = _ramp(a.mw - np.abs(s.px), s.w)
    kx, ky = a.mw + 0.005, hy - 0.36
    knob = _ramp(0.06 - np.sqrt((s.px - kx) ** 2 + (s.py - ky) ** 2), s.w)
    c, sn = np.cos(tilt), np.sin(tilt)
    u = (s.px - hx) * c + (s.py - hy) * sn
    v = -(s.px - hx) * sn + (s.py - hy) * c
    rho = np.sqrt((u / ha) ** 2 + (v / hb) ** 2)
    heart = _ramp((1.0 - rho) * min(ha, hb), s.w)
    return np.maximum(np.maximum(med, knob), heart)


def _bones(s: _Scene) -> np.ndarray:
    a, w = s.a, s.w
    out = np.zeros_like(s.px)
    n_post, n_ant = 11, 5
    y0 = a.rib_y0 + a.rib_step * np.arange(n_post)
    half_post = 0.020 + 0.010 * np.arange(n_post) / (n_post - 1)
    for side in (-1, 1):
        sx = side * s.px
        u = np.clip((sx - 0.05) / a.tw, 0.0, 1.2)
        extent = _ramp(a.tw + 0.07 - sx, w) * _ramp(sx - 0.05, w)
        post = y0[:, None, None] + (-0.06 * u + 0.40 * u * u)[None]
        out += 0.13 * extent * _bands(s.py, post.astype(_F), half_post, w)
        ya = y0[1 : n_ant + 1] + 0.30
        ant = ya[:, None, None] + (0.30 * (1.0 - np.clip(u, 0.25, 1.0)) ** 1.3)[None]
        a_ext = extent * _ramp(u - 0.3, 0.08)
        out += 0.07 * a_ext * _bands(s.py, ant.astype(_F), np.full(n_ant, 0.026), w)
        v = (sx - 0.06) / 0.58
        yc = a.clav_y - 0.10 * v + 0.035 * np.sin(np.pi * np.clip(v, 0.0, 1.0))
        clav = _ramp(0.028 - np.abs(s.py - yc), w) * _ramp(v, 0.03) * _ramp(1.0 - v, 0.08)
        out += 0.22 * clav
        hum = np.sqrt((sx - (a.bw + 0.04)) ** 2 + (s.py + 0.88) ** 2)
        out += 0.16 * _ramp(0.13 - hum, 0.02)
    spine = _ramp(0.062 - np.abs(s.px), w) * (0.85 + 0.15 * np.cos(2 * np.pi * (s.py - a.rib_y0) / a.rib_step))
    return out + 0.07 * spine


def _render_density(g: StudyGeometry, res: int) -> tuple[np.ndarray, _Scene]:
    s = _Scene(g, res)
    a, f, w = s.a, g.findings, s.w
    body, dens = _soft_tissue(s)
    card = _cardiac(s)
    hy = g.heart[1]
    below = np.maximum(*(_ramp(s.py - s.dome(side, side * s.px), w) for side in (-1, 1)))
    dens = dens + 0.20 * np.maximum(card, below) * body  # heart silhouettes with the diaphragm
    # Lungs: air lowers attenuation; fluid, collapse and pneumothorax change how much air and tissue.
    air = np.zeros_like(s.px)
    tissue = np.zeros_like(s.px)
    extra = np.zeros_like(s.px)
    for side in (-1, 1):
        rho, sx = s.hemi_rho(side)
        outer = (1.0 - rho) * a.ax * 0.8
        dome = s.dome(side, sx)
        hemi = _ramp(np.minimum(outer, dome - s.py), w) * (1.0 - card)
        lung_air = hemi.copy()
        lung_tissue = hemi.copy()
        eff = f.get("Effusion")
        if eff and side in eff["sides"]:
            lat = np.clip((sx - 0.1) / (a.tw - 0.1), 0.0, 1.0)
            top = s.g.domes[side] + a.cp_drop - eff["height"] - eff["meniscus"] * lat * lat
            fluid = _ramp(s.py - top, 0.03) * _ramp(outer, w)
            if eff["density"] != 1.0:  # subtler fluid: less air displaced, less added density
                fluid = fluid * _F(eff["density"])
            lung_air *= 1.0 - fluid
            extra += 0.08 * fluid * (1.0 - card)
        ptx = f.get("Pneumothorax")
        if ptx and ptx["side"] == side:
            k = ptx["size"]
            cx = (a.tw - a.ax) - a.ax * k * 0.85
            ay = s.g.domes[side] - a.apex_y
            ax2, ay2 = a.ax * (1.0 - k), ay * (1.0 - 0.55 * k)
            cy2 = a.apex_y + ay * 0.55 * k + ay2 + 0.02
            rho2 = np.sqrt(((sx - cx) / ax2) ** 2 + (np.minimum(s.py - cy2, 0.0) / ay2) ** 2)
            gap = _ramp((rho2 - 1.0) * ax2, w) * hemi
            if ptx["contrast"] != 1.0:  # subtler: lung markings partly kept, fainter pleural line
                gap = gap * _F(ptx["contrast"])
            lung_tissue *= 1.0 - gap
            extra -= 0.10 * gap
            lw = s.lw
            line = np.exp(-(((rho2 - 1.0) * ax2) / lw) ** 2) * (_LINE / lw)
            extra += 0.30 * ptx["contrast"] * line * hemi
        air += lung_air
        tissue += lung_tissue
    dens = dens - 0.70 * air
    marks = _segments(s.px, s.py, a.vessels, s.lw, _LINE)
    for side in (-1, 1):
        hxs, hys = a.vessels[np.argmax(np.sign(a.vessels[:, 0]) == side), :2]  # hilum: first vessel origin
        marks += 0.08 * np.exp(-((s.px - hxs) ** 2 + (s.py - hys) ** 2) / (2 * 0.045**2))
    dens += marks * tissue + extra
    # Trachea (air column ending at the carina) and gastric bubble under the left dome.
    dens -= 0.22 * _ramp(0.032 - np.abs(s.px), w) * _ramp(hy - 0.30 - s.py, 0.04) * body
    if g.pose.bubble > 0:
        bx, by = a.dome_peak, g.domes[1] + 0.07 + g.pose.bubble * 0.6
        rb = np.sqrt(((s.px - bx) / (1.6 * g.pose.bubble)) ** 2 + ((s.py - by) / g.pose.bubble) ** 2)
        dens -= 0.30 * _ramp((1.0 - rb) * g.pose.bubble, w) * _ramp(s.py - s.dome(1, s.px), w)
    if a.breast > 0:
        for side in (-1, 1):
            rb = np.sqrt(((side * s.px - 0.45) / 0.32) ** 2 + ((s.py - g.domes[side] - 0.08) / 0.24) ** 2)
            dens += a.breast * _ramp((1.0 - rb) * 0.25, 0.06)
    dens += _bones(s)
    dens += _findings_density(s, tissue + air)
    if g.device is not None:
        dev = np.array([[*seg, g.device["amp"]] for seg in g.device["drain"] + g.device["line"]])
        dens += _segments(s.px, s.py, dev, max(0.012, s.lw), 0.012) * body
    return dens, s


def _findings_density(s: _Scene, lung: np.ndarray) -> np.ndarray:
    f, w = s.g.findings, s.w
    lung = np.clip(lung, 0.0, 1.0)
    out = np.zeros_like(s.px)
    blobs = [("Nodule", q) for q in f["Nodule"]["spots"]] if "Nodule" in f else []
    blobs += [("Mass", f["Mass"])] if "Mass" in f else []
    for name, p in blobs:
        dx, dy = s.px - p["x"], s.py - p["y"]
        r = p["r"]
        if name == "Mass":
            th = np.arctan2(dy, dx)
            r = r * (1.0 + 0.10 * np.cos(3 * th + p["lobes"][0]) + 0.06 * np.cos(5 * th + p["lobes"][1]))
        d = np.sqrt(dx * dx + dy * dy)
        ww = max(w, 0.012)
        dome = np.sqrt(np.clip(1.0 - (d / r) ** 2, 0.0, 1.0))
        out += p["amp"] * (0.6 * _ramp(r - d, ww) + 0.4 * dome)
    p = f.get("Consolidation")
    if p:
        acc = np.zeros_like(s.px)
        for bx, by, sig in p["blobs"]:
            acc += np.exp(-((s.px - bx) ** 2 + (s.py - by) ** 2) / (2 * sig * sig))
        opac = 1.0 - np.exp(-1.8 * acc)
        bron = _segments(s.px, s.py, np.array([[*b, 1.0] for b in p["bronchi"]]), max(0.014, s.lw), 0.014)
        out += p["amp"] * opac * lung * (1.0 - 0.45 * np.clip(bron, 0.0, 1.0))
    p = f.get("Atelectasis")
    if p:
        side = p["side"]
        x0 = side * p["band_x"]
        y0 = s.g.domes[side] - p["band_up"]
        half = 0.5 * p["band_len"]
        dx, dy = np.cos(p["band_tilt"]), np.sin(p["band_tilt"])
        u = (s.px - x0) * dx + (s.py - y0) * dy
        v = -(s.px - x0) * dy + (s.py - y0) * dx
        band = _ramp(p["band_w"] - np.abs(v), max(w, 0.01)) * _ramp(half - np.abs(u), 0.05)
        out += p["amp"] * band * lung
    return out


def geometry_density(row: Mapping | Any, res: int) -> np.ndarray:
    """Attenuation map (float32, before exposure, noise and quantisation) at ``res``; for tests/diagnostics."""
    res = _check_res(res)
    dens, _ = _render_density(study_geometry(row), max(res, BASE_RES))
    return _area_down(dens, res)


def _area_down(x: np.ndarray, res: int) -> np.ndarray:
    n = x.shape[0]
    if n == res:
        return x
    k = n // res
    return x.reshape(res, k, res, k).mean(axis=(1, 3), dtype=np.float64).astype(_F)


def render(row: Mapping | Any, res: int) -> np.ndarray:
    """uint8 ``[res, res]`` radiograph of one cohort row (pandas Series or dict).

    Deterministic in (patient_seed, render_seed, labels, view, sex, res). Any power of two up to 1024.
    """
    res = _check_res(res)
    g = study_geometry(row)
    dens, _ = _render_density(g, max(res, BASE_RES))
    p = g.pose
    k = _F(p.k)
    img = (1.0 - np.exp(-k * np.maximum(dens, 0.0))) / (1.0 - np.exp(-k * 1.5))
    img = np.clip(img, 0.0, 1.0) ** _F(p.gamma)
    img = _area_down(img.astype(_F), res)
    rng = np.random.default_rng([int(row["render_seed"]), res, 2])
    img = p.offset + (1.0 - p.offset) * img + rng.standard_normal((res, res), dtype=_F) * _F(p.noise)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def _render_item(args: tuple[dict, int]) -> tuple[str, np.ndarray]:
    row, res = args
    return str(row["image_id"]), render(row, res)


def iter_images(cohort: pd.DataFrame, res: int, workers: int = 1) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(image_id, uint8 [res, res])`` in cohort order; ``workers > 1`` renders in processes."""
    res = _check_res(res)
    if "image_id" not in cohort.columns:
        raise KeyError("iter_images: cohort lacks an 'image_id' column; build it with sample_cohort")
    rows = cohort.to_dict("records")
    if workers <= 1 or len(rows) < 2 * workers:
        for row in rows:
            yield str(row["image_id"]), render(row, res)
        return
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(workers) as pool:
        yield from pool.imap(_render_item, ((r, res) for r in rows), chunksize=16)
