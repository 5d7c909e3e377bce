"""Feature extractors for FID/KID/precision-recall, selected by name from a registry.

Metrics are only as meaningful as the features they are computed on. ``classifier`` uses the
penultimate layer of the project's own chest X-ray classifier: it works offline and measures the
differences that matter for labels. ``inception`` is the standard FID InceptionV3, for numbers
comparable with the literature, and needs its weight file. New extractors register a factory with
:func:`register_extractor`; stages pick one through ``validate.features``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from ..imaging import resize_batch, uint8_to_float
from ..utils.runtime import progress

log = logging.getLogger("synthcxr")


@dataclass
class FeatureExtractor:
    """A named image -> feature map. ``fn`` takes float ``[N, 1, input_res, input_res]`` in [-1, 1];
    ``input_res`` None means ``fn`` accepts any size and resizes by itself (Inception: bilinear to 299)."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    input_res: int | None
    dim: int | None
    device: torch.device

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``[N, F]`` (float32, on CPU) of images ``[N, 1, H, W]`` at any resolution."""
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"{self.name} features: expected [N, 1, H, W] images, got shape {tuple(x.shape)}")
        x = x.to(self.device, torch.float32)
        if self.input_res is not None:
            x = resize_batch(x, self.input_res)
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


#: name -> factory(classifier_path=..., inception_weights=..., device=...) -> FeatureExtractor
_REGISTRY: dict[str, Callable[..., FeatureExtractor]] = {}


def register_extractor(name: str) -> Callable:
    """Decorator registering a factory under ``name`` (a later registration replaces an earlier one)."""

    def deco(factory: Callable[..., FeatureExtractor]) -> Callable[..., FeatureExtractor]:
        _REGISTRY[name] = factory
        return factory

    return deco


def available_extractors() -> list[str]:
    return sorted(_REGISTRY)


def get_extractor(
    name: str,
    *,
    classifier_path: str | os.PathLike | None = None,
    inception_weights: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    classifier: torch.nn.Module | None = None,
) -> FeatureExtractor:
    """Build the extractor registered as ``name`` (``validate.features``)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown feature extractor {name!r} (validate.features); available: {available_extractors()}")
    return _REGISTRY[name](
        classifier_path=classifier_path, inception_weights=inception_weights, device=torch.device(device), classifier=classifier
    )


def classifier_extractor(model: torch.nn.Module, device: torch.device | str = "cpu") -> FeatureExtractor:
    """Penultimate-layer features of a classifier exposing ``.features(x)`` and ``.input_res``."""
    if not hasattr(model, "features") or not hasattr(model, "input_res"):
        raise TypeError("the classifier must expose .features(x) and .input_res (see synthcxr.classifier)")
    device = torch.device(device)
    model = model.to(device).eval()
    return FeatureExtractor("classifier", model.features, int(model.input_res), None, device)


@register_extractor("classifier")
def _make_classifier(*, classifier_path=None, inception_weights=None, device="cpu", classifier=None) -> FeatureExtractor:
    if classifier is None:
        if classifier_path is None:
            raise ValueError("validate.features 'classifier' needs the trained classifier's model.pt")
        from ..classifier import load_classifier

        classifier = load_classifier(classifier_path, device)
    return classifier_extractor(classifier, device)


@register_extractor("inception")
def _make_inception(*, classifier_path=None, inception_weights=None, device="cpu", classifier=None) -> FeatureExtractor:
    from .inception import FEATURE_DIM, load_fid_inception

    net = load_fid_inception(inception_weights, device)
    # The network resizes to INPUT_RES (299) bilinearly itself, as the reference pipeline does.
    return FeatureExtractor("inception", net, None, FEATURE_DIM, torch.device(device))
