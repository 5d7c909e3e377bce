"""Multi-label pathology classifier: trains on a prepared dataset or a synthetic archive.

The trained model scores real test images (``metrics.json``), sets per-label operating points
(``thresholds.json``), steers latent class optimisation (it is differentiable in its input at any
resolution) and serves as the domain feature extractor of the distribution metrics.
"""

from __future__ import annotations

import importlib
from typing import Any

# Where each public name lives; a name is imported on first use (PEP 562), so ``synthcxr.classifier.runs``
# (the workflow reads it while it builds the DAG) does not load torch.
_WHERE = {
    "Classifier": "models",
    "DenseNet121": "models",
    "SmallCNN": "models",
    "ClassifierConfig": "train",
    "load_classifier": "train",
    "train_classifier": "train",
    "load_thresholds": "evaluate",
    "read_thresholds": "evaluate",
    "run_settings": "runs",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
