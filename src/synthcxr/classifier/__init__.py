"""Multi-label pathology classifier: trains on a prepared dataset or a synthetic archive.

The trained model scores real test images (``metrics.json``), sets per-label operating points
(``thresholds.json``), steers latent class optimisation (it is differentiable in its input at any
resolution) and serves as the domain feature extractor of the distribution metrics.
"""

from .evaluate import load_thresholds, read_thresholds
from .models import Classifier, DenseNet121, SmallCNN
from .train import ClassifierConfig, load_classifier, run_settings, train_classifier

__all__ = [
    "Classifier",
    "ClassifierConfig",
    "DenseNet121",
    "SmallCNN",
    "load_classifier",
    "load_thresholds",
    "read_thresholds",
    "run_settings",
    "train_classifier",
]
