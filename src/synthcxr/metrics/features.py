"""Feature extractors for FID/KID/precision-recall and the memorisation audit, chosen by name.

Metrics are only as meaningful as the features they are computed on, and they must not come from the
network the archive was fitted to. Names (``validate.features``):

``checker``
    Penultimate layer of the independently trained checker classifier (``classifier.checker``): works
    offline, sees what matters for chest X-ray labels, and LCO never optimised against it.
``inception``
    The standard FID InceptionV3 (``pt_inception-2015-12-05``), for numbers comparable with the literature;
    needs its weight file in ``resources/`` (nothing is downloaded).
``torchscript:PATH``
    Any frozen extractor a user brings, e.g. an exported torchxrayvision DenseNet. Contract: the module
    takes float ``[N, 1, R, R]`` images in [-1, 1] (R = ``validate.feature_res``) and returns ``[N, F]``
    (or ``[N, F, 1, 1]``); it wraps whatever normalisation its network expects. A ``.pt2`` file saved by
    ``torch.export.save`` is accepted under the same name and contract (export it with a dynamic batch
    dimension).

The steering classifier (``classifier.name``, formerly ``features: classifier``) is refused: LCO moved
every latent until that network saw the requested findings, so distances in its feature space measure the
fit to it, not realism. Every extractor reports its name, weight file and sha256 (:meth:`FeatureExtractor.describe`),
which each metric file records.

Resizing to the extractor's input (``validate.resize``): ``clean`` is antialiased bicubic (what
clean-fid and PIL do), correct when a 1024 px image shrinks to 299 px; ``pytorch_fid`` is the bilinear,
non-antialiased resize of pytorch-fid, for numbers comparable with papers that used it (it aliases).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..imaging import uint8_to_float
from ..utils.hashing import sha256_file
from ..utils.runtime import progress

log = logging.getLogger("synthcxr")

RESIZE_MODES = ("clean", "pytorch_fid")
STEERING = "classifier"


def resize_for_features(x: torch.Tensor, res: int, mode: str = "clean") -> torch.Tensor:
    """``[N, C, H, W]`` -> ``[N, C, res, res]``: antialiased bicubic (``clean``) or plain bilinear (``pytorch_fid``)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"validate.resize: {mode!r} is not one of {', '.join(RESIZE_MODES)}")
    if x.shape[-2:] == (res, res):
        return x
    if mode == "clean":
        return F.interpolate(x, size=(res, res), mode="bicubic", align_corners=False, antialias=True)
    return F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False)


@dataclass
class FeatureExtractor:
    """A named image -> feature map. ``fn`` takes float ``[N, 1, input_res, input_res]`` in [-1, 1]."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    input_res: int
    dim: int | None
    device: torch.device
    resize: str = "clean"
    weights: str | None = None
    sha256: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"validate.resize: {self.resize!r} is not one of {', '.join(RESIZE_MODES)}")

    def describe(self) -> dict:
        """What every metric file records about the features it used."""
        return {
            "name": self.name,
            "weights": self.weights,
            "sha256": self.sha256,
            "input_res": int(self.input_res),
            "resize": self.resize,
            "dim": self.dim,
            **self.extra,
        }

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``[N, F]`` (float32, on CPU) of images ``[N, 1, H, W]`` at any resolution."""
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"{self.name} features: expected [N, 1, H, W] images, got shape {tuple(x.shape)}")
        x = resize_for_features(x.to(self.device, torch.float32), int(self.input_res), self.resize)
        return self.fn(x).float().flatten(1).cpu()

    def from_uint8(self, images: np.ndarray, batch_size: int = 64, desc: str | None = None) -> np.ndarray:
        """Features of uint8 ``[N, H, W]`` images, batched; ``[N, F]`` float32."""
        images = np.asarray(images)
        if images.ndim != 3:
            raise ValueError(f"expected uint8 images [N, H, W], got shape {images.shape}")
        return self.from_batches(
            (uint8_to_float(images[s : s + batch_size]).unsqueeze(1) for s in range(0, len(images), batch_size)),
            total=-(-len(images) // batch_size),
            desc=desc,
        )

    def from_batches(self, batches: Iterable[torch.Tensor], total: int | None = None, desc: str | None = None) -> np.ndarray:
        """Features of an iterable of float ``[n, 1, H, W]`` batches, concatenated."""
        out = [self(b).numpy() for b in progress(batches, total=total, desc=desc or f"{self.name} features", leave=False)]
        if not out:
            return np.zeros((0, self.dim or 0), np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)


def classifier_extractor(
    model: torch.nn.Module,
    device: torch.device | str = "cpu",
    name: str = "checker",
    resize: str = "clean",
    weights: str | os.PathLike | None = None,
) -> FeatureExtractor:
    """Penultimate-layer features of a classifier exposing ``.features(x)`` and ``.input_res``."""
    if not hasattr(model, "features") or not hasattr(model, "input_res"):
        raise TypeError("the classifier must expose .features(x) and .input_res (see synthcxr.classifier)")
    device = torch.device(device)
    model = model.to(device).eval()
    w = None if weights is None else str(weights)
    return FeatureExtractor(name, model.features, int(model.input_res), None, device, resize, w,
                            sha256_file(w) if w else None)


def get_extractor(
    name: str,
    *,
    checker_path: str | os.PathLike | None = None,
    inception_weights: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    resize: str = "clean",
    feature_res: int = 224,
) -> FeatureExtractor:
    """Build the extractor ``validate.features`` names (see the module docstring)."""
    device = torch.device(device)
    if name == STEERING:
        raise ValueError(
            "validate.features: 'classifier' is the steering classifier that LCO optimised every latent against, "
            "so distances in its feature space measure the fit to that network, not realism. Use 'checker' "
            "(the independently trained classifier), 'inception' or 'torchscript:PATH'"
        )
    if name == "checker":
        if checker_path is None:
            raise ValueError("validate.features 'checker' needs the checker classifier's model.pt (classifier.checker)")
        from ..classifier import load_classifier

        return classifier_extractor(load_classifier(checker_path, device), device, "checker", resize, checker_path)
    if name == "inception":
        from .inception import FEATURE_DIM, INPUT_RES, find_weights, load_fid_inception

        path = find_weights(inception_weights)
        net = load_fid_inception(path, device)
        return FeatureExtractor("inception", net, INPUT_RES, FEATURE_DIM, device, resize, str(path), sha256_file(path))
    if name.startswith("torchscript:"):
        return torchscript_extractor(name.split(":", 1)[1], device, resize, feature_res)
    raise KeyError(f"unknown feature extractor {name!r} (validate.features); use checker, inception or torchscript:PATH")


def torchscript_extractor(
    path: str | os.PathLike, device: torch.device | str = "cpu", resize: str = "clean", feature_res: int = 224
) -> FeatureExtractor:
    """A user's frozen TorchScript extractor (contract in the module docstring), checked on a probe batch."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"validate.features 'torchscript:{path}': {p} does not exist")
    device = torch.device(device)
    try:
        if p.suffix == ".pt2":  # a torch.export program (TorchScript's successor), same contract
            module = torch.export.load(str(p)).module().to(device)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load still loads every such file
                module = torch.jit.load(str(p), map_location=device).eval()
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"validate.features 'torchscript:{path}': not a TorchScript file ({exc})") from None
    with torch.no_grad():
        probe = module(torch.zeros(2, 1, feature_res, feature_res, device=device))
    if not isinstance(probe, torch.Tensor) or probe.shape[0] != 2 or probe[0].numel() < 1:
        raise ValueError(
            f"validate.features 'torchscript:{path}': expected [N, F] features for [N, 1, {feature_res}, "
            f"{feature_res}] input, got {type(probe).__name__} {tuple(getattr(probe, 'shape', ()))}"
        )
    dim = int(probe[0].numel())
    return FeatureExtractor(f"torchscript:{p.name}", module, int(feature_res), dim, device, resize, str(p), sha256_file(p))
