"""Evaluation metrics, each in its own module so callers import only what they use.

``auroc`` (rank-based AUROC and ROC curves) and ``bootstrap`` (percentile confidence intervals) serve
the classifier stage; the distribution metrics (Frechet distance, KID, precision/recall) live in their
own modules and are imported by name, so a missing optional dependency of one never breaks another.
"""

from .auroc import auroc, mean_auroc, per_label_auroc, roc_curve, youden_threshold
from .bootstrap import bootstrap_ci, bootstrap_distribution, percentile_interval

__all__ = [
    "auroc",
    "bootstrap_ci",
    "bootstrap_distribution",
    "mean_auroc",
    "per_label_auroc",
    "percentile_interval",
    "roc_curve",
    "youden_threshold",
]
