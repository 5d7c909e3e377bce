"""Analytic geometry of one phantom study: patient anatomy, study pose/exposure and finding parameters.

Everything is in resolution-free coordinates (x right, y down, the image spans [-1, 1]^2) so the
same study renders the same anatomy at any size. Patient anatomy comes from ``patient_seed`` alone
(stable across follow-ups); pose, exposure and acute findings from ``render_seed``. Every finding
draws its parameters from its own random stream whether or not it is present, so switching one label
off changes only that finding's pixels: tests use this to check that each finding is localised.

Patient coordinates use ``side`` = -1 for the patient's right (image left, radiological convention)
and +1 for the patient's left, where the heart bulges, the aortic knob and the gastric bubble sit.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import FINDINGS

#: Cardiothoracic ratio ranges (before AP magnification): normal hearts stay well below 0.5,
#: enlarged ones well above, so the label is unambiguous from the pixels.
CTR_NORMAL = (0.36, 0.44)
CTR_ENLARGED = (0.57, 0.67)
AP_HEART_MAGNIFICATION = 1.04

_REQUIRED = ("patient_seed", "render_seed", "view", "sex")
_FINDING_STREAM = {name: 100 + i for i, name in enumerate(FINDINGS)}


@dataclass(frozen=True)
class Anatomy:
    """Patient-level shape parameters (identical in every follow-up of a patient)."""

    tw: float  # thorax half-width at the inner rib margin: the CTR denominator is 2*tw
    ax: float  # lateral semi-axis of each hemithorax ellipse
    apex_y: float  # lung apex height
    dome_r: float  # right hemidiaphragm dome top (y grows downward)
    dome_l: float
    cp_drop: float  # costophrenic angle lies this far below the dome top
    dome_peak: float  # |x| of the dome tops
    bw: float  # body half-width (soft tissue outline)
    mw: float  # upper mediastinum half-width
    heart_u: float  # quantile of the heart within its CTR range
    heart_b: float  # heart vertical semi-axis
    heart_right: float  # fraction of the heart width right of the midline
    heart_tilt: float  # long axis angle (radians, apex down towards the patient's left)
    rib_y0: float  # first posterior rib height
    rib_step: float
    clav_y: float
    breast: float  # breast shadow strength (0 for M)
    vessels: np.ndarray  # [S, 5]: x0, y0, x1, y1, amplitude (patient coords, both lungs)


@dataclass(frozen=True)
class Pose:
    """Study-level acquisition: positioning, exposure, noise."""

    angle: float  # radians
    tx: float
    ty: float
    scale: float
    inspiration: float  # shifts both domes (deeper breath: lower domes)
    k: float  # attenuation-to-brightness gain
    gamma: float
    offset: float
    noise: float
    bubble: float  # gastric bubble size (0: none)


@dataclass(frozen=True)
class StudyGeometry:
    anatomy: Anatomy
    pose: Pose
    ctr: float  # ground-truth cardiothoracic ratio of the rendered image
    heart: tuple[float, float, float, float, float]  # cx, cy, a, b, tilt (patient coords)
    domes: dict[int, float]  # side -> dome top y (after inspiration and atelectasis)
    findings: dict[str, dict[str, Any]] = field(default_factory=dict)  # present findings only
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # every finding's parameters
    device: dict[str, Any] | None = None  # support device (chest drain and line) when drawn


class Knobs:
    """The pixel knobs of a cohort row (``knobs`` JSON column; absent: the built-in look, all ones)."""

    def __init__(self, text: str | None = None):
        d = json.loads(text) if text else {}
        sub, var = d.get("subtlety", {}), d.get("variation", {})
        self.contrast: dict[str, float] = sub.get("contrast", {})
        self.size: dict[str, float] = sub.get("size", {})
        self.position_spread: float = float(sub.get("position_spread", 1.0))
        self.anatomy = float(var.get("anatomy", 1.0))
        self.pose = float(var.get("pose", 1.0))
        self.exposure = float(var.get("exposure", 1.0))

    def c(self, name: str) -> float:
        return float(self.contrast.get(name, 1.0))

    def s(self, name: str) -> float:
        return float(self.size.get(name, 1.0))


@functools.lru_cache(maxsize=64)
def _knobs(text: str | None) -> Knobs:
    return Knobs(text)


def _widen(v: float, lo: float, hi: float, k: float) -> float:
    """``v`` drawn from [lo, hi], spread ``k`` times as wide about the centre (``k == 1``: ``v`` itself)."""
    if k == 1.0:
        return v
    mid = 0.5 * (lo + hi)
    return mid + k * (v - mid)


def _scaled(v: float, k: float) -> float:
    return v if k == 1.0 else v * k


def _get(row: Mapping | Any, key: str) -> Any:
    try:
        return row[key]
    except (KeyError, IndexError):
        raise KeyError(
            f"phantom row lacks column {key!r}; rows must come from synthcxr.data.phantom.sample_cohort "
            f"(needs {', '.join(_REQUIRED)} and the label columns)"
        ) from None


def _flag(row: Mapping | Any, name: str) -> bool:
    """Whether finding ``name`` is drawn: ``true_<name>`` when the row has it (noisy labels), else the label."""
    for key in (f"true_{name}", name):
        try:
            v = row[key]
        except (KeyError, IndexError):
            continue
        return bool(int(v)) if v == v else False  # NaN -> absent
    return False


def _opt(row: Mapping | Any, key: str) -> Any:
    try:
        v = row[key]
    except (KeyError, IndexError):
        return None
    return v if isinstance(v, str) or v == v else None


def _anatomy(patient_seed: int, sex: str, k: float = 1.0) -> Anatomy:
    r = np.random.default_rng([patient_seed, 0])
    male = sex == "M"
    u = lambda lo, hi: _widen(r.uniform(lo, hi), lo, hi, k)  # noqa: E731
    tw = u(0.53, 0.66) if male else u(0.49, 0.62)
    dome_r = u(0.30, 0.40)
    vessels = []
    rv = np.random.default_rng([patient_seed, 3])
    for side in (-1, 1):
        hx0, hy0 = side * rv.uniform(0.14, 0.17), rv.uniform(-0.02, 0.06)
        for phi in np.linspace(-1.9, 1.3, 12):
            phi = phi + rv.normal(0, 0.1)
            length = rv.uniform(0.25, 0.48)
            dx, dy = side * np.cos(phi), np.sin(phi)
            start = rv.uniform(0.02, 0.07)  # vessels leave the hilum from a small region, not one point
            hx, hy = hx0 + start * dx + rv.normal(0, 0.015), hy0 + start * dy + rv.normal(0, 0.02)
            x1, y1 = hx + length * dx, hy + length * dy
            vessels.append((hx, hy, x1, y1, 0.11))
            for turn in (-0.5, -0.2, 0.2, 0.5):
                if rv.random() < 0.5:
                    s0 = rv.uniform(0.35, 0.6)
                    bx, by = hx + s0 * length * dx, hy + s0 * length * dy
                    c, s = np.cos(turn), np.sin(turn)
                    ddx, ddy = c * dx - s * dy, s * dx + c * dy
                    bl = length * rv.uniform(0.35, 0.55)
                    vessels.append((bx, by, bx + bl * ddx, by + bl * ddy, 0.07))
    return Anatomy(
        tw=tw,
        ax=u(0.30, 0.35),
        apex_y=u(-0.64, -0.54),
        dome_r=dome_r,
        dome_l=dome_r + u(0.02, 0.06),
        cp_drop=u(0.13, 0.19),
        dome_peak=u(0.30, 0.38),
        bw=tw + u(0.09, 0.18),
        mw=u(0.075, 0.095),
        heart_u=float(np.clip(u(0.0, 1.0), 0.0, 1.0)),
        heart_b=u(0.22, 0.26),
        heart_right=u(0.30, 0.36),
        heart_tilt=u(0.35, 0.55),
        rib_y0=u(-0.68, -0.62),
        rib_step=u(0.088, 0.10),
        clav_y=u(-0.60, -0.52),
        breast=0.0 if male else max(0.0, u(0.08, 0.16)),
        vessels=np.asarray(vessels, dtype=np.float64),
    )


def _pose(render_seed: int, view: str, kn: Knobs | None = None) -> Pose:
    r = np.random.default_rng([render_seed, 1])
    ap = view == "AP"
    kn = kn or _knobs(None)
    p = lambda lo, hi: _widen(r.uniform(lo, hi), lo, hi, kn.pose)  # noqa: E731
    e = lambda lo, hi: _widen(r.uniform(lo, hi), lo, hi, kn.exposure)  # noqa: E731
    return Pose(
        angle=float(np.deg2rad(p(-3.0, 3.0))),
        tx=p(-0.03, 0.03),
        ty=p(-0.03, 0.04) + (0.03 if ap else 0.0),
        scale=p(0.985, 1.015),
        inspiration=p(-0.025, 0.025) - (0.03 if ap else 0.0),
        k=e(0.7, 1.0),
        gamma=e(0.8, 1.2),
        offset=max(0.0, e(0.02, 0.08)),
        noise=max(0.002, e(0.008, 0.022)),
        bubble=r.uniform(0.05, 0.09) if r.random() < 0.7 else 0.0,
    )


def _side(r: np.random.Generator, p_right: float = 0.5) -> int:
    return -1 if r.random() < p_right else 1


def _lung_point(
    r: np.random.Generator, a: Anatomy, side: int, y_lo: float, y_hi: float, spread: float = 1.0
) -> tuple[float, float]:
    """A point well inside one lung between heights y_lo..y_hi (rejection sampling on the lung shape).

    ``spread`` > 1 widens the region towards the chest wall, the heart and the domes, where a finding
    overlaps other shadows (1: the built-in region).
    """
    cx = a.tw - a.ax
    inner, limit = 0.18, 0.72
    if spread != 1.0:
        grow = 0.5 * (y_hi - y_lo) * (spread - 1.0)
        y_lo, y_hi = y_lo - grow, y_hi + grow
        inner, limit = max(0.04, 0.18 - 0.14 * (spread - 1.0)), min(0.98, 0.72 * spread)
    for _ in range(200):
        y = r.uniform(y_lo, y_hi)
        sx = r.uniform(inner, a.tw - 0.08)
        ey = min(y - a.dome_r, 0.0) / (a.dome_r - a.apex_y)
        if ((sx - cx) / a.ax) ** 2 + ey**2 < limit:
            return side * sx, y
    return side * cx, 0.5 * (y_lo + y_hi)


def _finding_params(name: str, a: Anatomy, seed: int, kn: Knobs | None = None) -> dict[str, Any]:
    """Parameters of one finding, from its own stream (drawn even when the finding is absent).

    ``kn`` scales contrast (amplitude, density) and size and widens the position spread; the default
    knobs leave every draw as the built-in phantom's.
    """
    r = np.random.default_rng([seed, _FINDING_STREAM[name]])
    kn = kn or _knobs(None)
    c, z, sp = kn.c(name), kn.s(name), kn.position_spread
    if name == "Effusion":
        u = r.random()
        sides = [-1] if u < 0.45 else [1] if u < 0.8 else [-1, 1]
        return {"sides": sides, "height": _scaled(r.uniform(0.24, 0.36), z), "meniscus": r.uniform(0.07, 0.11), "density": c}
    if name == "Pneumothorax":
        return {"side": _side(r), "size": _scaled(r.uniform(0.30, 0.45), z), "contrast": c}
    if name == "Nodule":
        side = _side(r)
        count = 1 + int(r.random() < 0.45) + int(r.random() < 0.2)
        spots = []
        for k in range(3):  # always draw three so the first nodule stays put whatever the count
            x, y = _lung_point(r, a, side if k == 0 else _side(r), a.apex_y + 0.18, a.dome_r - 0.2, sp)
            spots.append({"x": x, "y": y, "r": _scaled(r.uniform(0.055, 0.075), z), "amp": _scaled(r.uniform(0.6, 0.7), c)})
        return {**spots[0], "spots": spots[:count]}
    if name == "Mass":
        side = _side(r)
        x, y = _lung_point(r, a, side, a.apex_y + 0.25, a.dome_r - 0.25, sp)
        return {
            "x": x, "y": y, "r": _scaled(r.uniform(0.11, 0.15), z), "amp": _scaled(r.uniform(0.5, 0.6), c),
            "lobes": r.uniform(0.0, 2 * np.pi, size=2).tolist(),
        }
    if name == "Consolidation":
        side = _side(r, 0.55)
        x, y = _lung_point(r, a, side, a.dome_r - 0.45, a.dome_r - 0.08, sp)
        blobs = [(x + r.normal(0, 0.07), y + r.normal(0, 0.06), _scaled(r.uniform(0.05, 0.08), z)) for _ in range(6)]
        bron = [(x - side * 0.12, y + r.normal(0, 0.03), x + side * 0.12, y + r.normal(0, 0.05)) for _ in range(2)]
        return {"side": side, "blobs": blobs, "bronchi": bron, "amp": _scaled(r.uniform(0.5, 0.6), c)}
    if name == "Atelectasis":
        side = _side(r, 0.45)
        return {
            "side": side, "elevation": _scaled(r.uniform(0.11, 0.15), c), "band_x": r.uniform(0.28, 0.42),
            "band_up": r.uniform(0.10, 0.16), "band_len": _scaled(r.uniform(0.26, 0.36), z),
            "band_tilt": r.uniform(-0.2, 0.2), "band_w": r.uniform(0.022, 0.03), "amp": _scaled(r.uniform(0.45, 0.55), c),
        }
    if name == "Cardiomegaly":
        return {"contrast": c}
    raise KeyError(name)


def _device_params(a: Anatomy, render_seed: int, findings: Mapping[str, Any]) -> dict[str, Any]:
    """A chest drain (on the side of a pneumothorax or effusion when there is one) and a central line."""
    r = np.random.default_rng([render_seed, 200])
    side = _side(r)
    if "Pneumothorax" in findings:
        side = findings["Pneumothorax"]["side"]
    elif "Effusion" in findings:
        side = findings["Effusion"]["sides"][0]
    x0, y0 = side * (a.tw + 0.02), a.dome_r + r.uniform(-0.05, 0.05)  # enters at the lateral chest wall
    x1, y1 = side * r.uniform(0.20, 0.30), a.apex_y + r.uniform(0.10, 0.20)  # tip towards the apex
    mx, my = side * (a.tw - 0.12), 0.5 * (y0 + y1) + r.uniform(-0.05, 0.05)
    line_side = _side(r)
    return {
        "drain": [(x0, y0, mx, my), (mx, my, x1, y1)],
        "line": [(line_side * 0.35, a.clav_y - 0.02, line_side * 0.05, a.clav_y + 0.06),
                 (line_side * 0.05, a.clav_y + 0.06, 0.02 * line_side, a.clav_y + 0.30)],
        "amp": r.uniform(0.45, 0.6),
    }


def study_geometry(row: Mapping | Any) -> StudyGeometry:
    """All analytic parameters of one cohort row (pandas Series or dict)."""
    patient_seed = int(_get(row, "patient_seed"))
    render_seed = int(_get(row, "render_seed"))
    view, sex = str(_get(row, "view")), str(_get(row, "sex"))
    kn = _knobs(_opt(row, "knobs"))
    a = _anatomy(patient_seed, sex, kn.anatomy)
    pose = _pose(render_seed, view, kn)
    lo, hi = CTR_ENLARGED if _flag(row, "Cardiomegaly") else CTR_NORMAL
    if lo == CTR_ENLARGED[0] and kn.c("Cardiomegaly") != 1.0:  # lower contrast: enlarged hearts nearer normal
        shift = (1.0 - kn.c("Cardiomegaly")) * (CTR_ENLARGED[0] - CTR_NORMAL[1])
        lo, hi = lo - shift, hi - shift
    ctr = (lo + a.heart_u * (hi - lo)) * (AP_HEART_MAGNIFICATION if view == "AP" else 1.0)
    width = ctr * 2.0 * a.tw
    # Tilted ellipse whose horizontal extent is exactly ``width``: ext^2 = a^2 cos^2 + b^2 sin^2.
    b, t = a.heart_b, a.heart_tilt
    ext = 0.5 * width
    semi_a = float(np.sqrt(max(ext**2 - (b * np.sin(t)) ** 2, 1e-6)) / np.cos(t))
    # The apex (left-most point, lower than the centre by ``drop``) stays above both domes, with lung
    # lateral to it, as on a real film where the CTR is measured.
    drop = (semi_a**2 - b**2) * np.sin(t) * np.cos(t) / ext
    cy = min(a.dome_r - 0.05, a.dome_r - 0.04 - drop) + pose.inspiration
    heart = (width * (0.5 - a.heart_right), cy, semi_a, b, t)
    domes = {-1: a.dome_r + pose.inspiration, 1: a.dome_l + pose.inspiration}
    params, present = {}, {}
    for name in FINDINGS:
        chronic = name in ("Cardiomegaly", "Nodule", "Mass")
        params[name] = _finding_params(name, a, patient_seed if chronic else render_seed, kn)
        if _flag(row, name):
            present[name] = params[name]
    if "Atelectasis" in present:
        domes[present["Atelectasis"]["side"]] -= present["Atelectasis"]["elevation"]
    dev = _opt(row, "support_device")
    device = _device_params(a, render_seed, present) if dev is not None and int(dev) else None
    return StudyGeometry(
        anatomy=a, pose=pose, ctr=float(ctr), heart=heart, domes=domes, findings=present, params=params, device=device
    )


def measure_ctr(row: Mapping | Any) -> float:
    """Ground-truth cardiothoracic ratio (heart width / inner thorax width) of the rendered study."""
    return study_geometry(row).ctr
