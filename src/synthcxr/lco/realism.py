"""The realism gate: how far an image lies from real scans in the steering classifier's own features.

LCO can meet a target through images no real scan resembles: with ``lco.feature_res`` the steering
classifier, the checker and the oracle all respond to stripe and block patterns that the checker's FID
shows plainly (docs/experiments.md). The GAN's critic does not see them. The steering classifier's
penultimate features do, since they are what the patterns move.

With ``lco.realism_quantile`` q the lco_margins rule fits a Gaussian to those features over real scans
(:func:`fit_gate`: Ledoit-Wolf shrinkage covariance over the train split, at most
``MAX_FIT`` scans drawn by patient) and sets the gate's threshold to the q-quantile of the Mahalanobis
distance of the real validation scans, which the fit never saw. LCO then accepts a latent only when its
image is within that distance as well as past every label's cut, and while it is not, the loss adds
``lco.realism_weight * relu(d / threshold - 1)``. So a sample is released only when it is as typical, to
the classifier that steered it, as all but the ``1 - q`` least typical real scans. The checker and the
FID features stay independent of it.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..utils.atomic import atomic_path

log = logging.getLogger("synthcxr")

MAX_FIT = 5000  # real train scans the Gaussian is fitted on (a patient subset beyond that)
_FIELDS = ("mean", "whiten", "threshold", "quantile", "weight", "n_fit", "n_cal")


@dataclass(frozen=True)
class RealismGate:
    """A Gaussian over real scans' features and the distance a sample may lie from it.

    ``whiten`` is ``[F, F]`` with ``whiten @ whiten.T`` the precision matrix, so the Mahalanobis distance of
    a feature row ``f`` is ``|(f - mean) @ whiten|``; ``threshold`` that distance's ``quantile`` over
    ``n_cal`` real validation scans; ``weight`` the loss term's weight.
    """

    mean: np.ndarray
    whiten: np.ndarray
    threshold: float
    quantile: float
    weight: float
    n_fit: int
    n_cal: int

    def distance(self, features: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance ``[N]`` of feature rows ``[N, F]`` (differentiable; float32 on their device)."""
        f = features.float()
        mu = torch.as_tensor(self.mean, dtype=torch.float32, device=f.device)
        w = torch.as_tensor(self.whiten, dtype=torch.float32, device=f.device)
        return ((f - mu) @ w).pow(2).sum(1).clamp_min(0).sqrt()

    def passes(self, distance: torch.Tensor | np.ndarray):
        """Per row: within the threshold (the gate's half of the acceptance rule)."""
        return distance <= self.threshold

    def penalty(self, distance: torch.Tensor) -> torch.Tensor:
        """``weight * relu(d / threshold - 1)`` per row: zero for a typical image, one weight at twice the threshold."""
        return self.weight * torch.relu(distance / self.threshold - 1.0)

    def judge(self, C: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, distance)`` of images ``x`` from one forward of classifier ``C``."""
        logits, feats = C.logits_and_features(x)
        return logits, self.distance(feats)

    def reason(self, distance: float, attempts: int, steps: int) -> str:
        """Why a target whose labels were all met was not: its image outside the gate."""
        return (f"every label past its cut, but the image lies {distance:.2f} from real scans in the steering classifier's features, "
                f"beyond the realism gate's {self.threshold:.2f} (the {self.quantile:g} quantile of real val scans), "
                f"after {attempts} attempt(s) of up to {steps} steps")

    def summary(self) -> dict[str, Any]:
        """JSON-able description (no arrays) for logs and latents metadata."""
        return {"quantile": self.quantile, "threshold": self.threshold, "weight": self.weight, "n_fit": self.n_fit,
                "n_cal": self.n_cal, "features": int(len(self.mean))}


def fit_gate(fit: np.ndarray, cal: np.ndarray, quantile: float, weight: float) -> RealismGate:
    """The gate from real feature rows: the Gaussian from ``fit`` ``[n, F]`` (Ledoit-Wolf shrinkage), the
    threshold the ``quantile`` of the Mahalanobis distances of ``cal`` ``[m, F]`` (scans the fit did not see)."""
    from sklearn.covariance import LedoitWolf

    if not 0.0 < quantile < 1.0:
        raise ValueError(f"lco.realism_quantile: need a number in (0, 1) or null, got {quantile}")
    if weight < 0 or not math.isfinite(weight):
        raise ValueError(f"lco.realism_weight: need a finite number >= 0, got {weight}")
    fit, cal = np.asarray(fit, dtype=np.float64), np.asarray(cal, dtype=np.float64)
    if fit.ndim != 2 or cal.ndim != 2 or fit.shape[1] != cal.shape[1]:
        raise ValueError(f"realism gate: feature rows must be [n, F] with one F; got {fit.shape} and {cal.shape}")
    if len(fit) < 2 or len(cal) < 1:
        raise ValueError(f"realism gate: needs at least 2 real scans to fit and 1 to calibrate; got {len(fit)} and {len(cal)}")
    lw = LedoitWolf().fit(fit)
    whiten = np.linalg.cholesky(lw.precision_)
    d = np.sqrt((((cal - lw.location_) @ whiten) ** 2).sum(1))
    return RealismGate(mean=lw.location_.astype(np.float32), whiten=whiten.astype(np.float32), threshold=float(np.quantile(d, quantile)),
                       quantile=float(quantile), weight=float(weight), n_fit=len(fit), n_cal=len(cal))


def save_gate(gate: RealismGate, path: str | os.PathLike) -> None:
    """Write the gate as ``.npz`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **{k: np.asarray(getattr(gate, k)) for k in _FIELDS})


def load_gate(path: str | os.PathLike) -> RealismGate:
    """A gate written by :func:`save_gate`; errors name the file and the rule that writes it."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} missing: run the lco_margins rule first (it fits the realism gate when lco.realism_quantile is set)")
    try:
        with np.load(p, allow_pickle=False) as z:
            vals = {k: z[k] for k in _FIELDS}
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{p}: not a realism gate ({exc!r}); rerun the lco_margins rule") from None
    mean, whiten = vals["mean"].astype(np.float32), vals["whiten"].astype(np.float32)
    if mean.ndim != 1 or whiten.shape != (len(mean), len(mean)) or not (np.isfinite(mean).all() and np.isfinite(whiten).all()):
        raise ValueError(f"{p}: realism gate arrays have shapes {mean.shape} and {whiten.shape} or are not finite; rerun the lco_margins rule")
    threshold = float(vals["threshold"])
    if not threshold > 0:
        raise ValueError(f"{p}: realism threshold {threshold} is not > 0; rerun the lco_margins rule")
    return RealismGate(mean=mean, whiten=whiten, threshold=threshold, quantile=float(vals["quantile"]), weight=float(vals["weight"]),
                       n_fit=int(vals["n_fit"]), n_cal=int(vals["n_cal"]))


@torch.no_grad()
def image_features(C: torch.nn.Module, dataset, batch_size: int = 256, device: torch.device | str = "cpu") -> np.ndarray:
    """The classifier's penultimate features ``[n, F]`` over an image set's ``{"image"}`` items."""
    C.eval()
    out = [C.features(b["image"].to(device)).float().cpu().numpy() for b in DataLoader(dataset, batch_size=batch_size, shuffle=False)]
    return np.concatenate(out) if out else np.zeros((0, int(C.n_features)), np.float32)


def calibrate_gate(C: torch.nn.Module, prepared: str | os.PathLike, quantile: float, weight: float, device: torch.device | str,
                   seed: int) -> RealismGate:
    """Fit the gate on a prepared dataset: the Gaussian on its train split (at most :data:`MAX_FIT` scans, a
    patient subset drawn with ``seed``), the threshold at ``quantile`` on its val split, the loss term at ``weight``."""
    from ..classifier.sources import pick_res, prepared_split
    from ..data.store import PreparedDataset

    ds = PreparedDataset(prepared)
    names = list(C.label_names)
    res = pick_res(ds.resolutions, C.input_res, os.fspath(prepared))
    n_train = len(ds.split("train"))
    fraction = min(1.0, MAX_FIT / max(n_train, 1))
    fit = image_features(C, prepared_split(ds, "train", names, res, fraction=fraction, fraction_seed=seed).dataset, device=device)
    cal = image_features(C, prepared_split(ds, "val", names, res).dataset, device=device)
    gate = fit_gate(fit, cal, float(quantile), float(weight))
    log.info("realism gate: Gaussian over %d real train scans' %d classifier features; threshold %.2f (the %.2f quantile over %d val scans)",
             gate.n_fit, len(gate.mean), gate.threshold, gate.quantile, gate.n_cal)
    return gate
