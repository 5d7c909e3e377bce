"""Distribution metrics by name: each registers a function of (real features, other features, options)
that returns its values, and the validation rule evaluates the configured list (``validate.metrics``).

As in stylegan2-ada-pytorch's ``metric_main``: ``@register_metric("name")`` adds one, ``evaluate(names,
...)`` runs a list and hands one record per metric (name, values, N, seconds) to a callback, which the
validation stage writes as one JSONL line each. A new metric is a decorated function here (or in any
module imported before the stage runs); no new rule.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .fid import fid_from_features, fid_infinity, sample_sizes
from .kid import kid
from .prdc import precision_recall


@dataclass(frozen=True)
class MetricOptions:
    """What the metrics may need beyond the two feature sets (``validate`` keys)."""

    seed: int
    kid_subsets: int
    kid_subset_size: int
    pr_k: int
    fid_n_points: int


MetricFn = Callable[[np.ndarray, np.ndarray, MetricOptions], dict[str, Any]]


@dataclass(frozen=True)
class Metric:
    name: str
    fn: MetricFn
    description: str


_METRICS: dict[str, Metric] = {}


def register_metric(name: str, description: str) -> Callable[[MetricFn], MetricFn]:
    """Decorator: ``fn(real, other, options) -> {value name: value}`` becomes metric ``name``."""
    def add(fn: MetricFn) -> MetricFn:
        if name in _METRICS and _METRICS[name].fn is not fn:
            raise ValueError(f"metric {name!r} is already registered (by {_METRICS[name].fn.__module__})")
        _METRICS[name] = Metric(name, fn, description)
        return fn

    return add


def metric_names() -> list[str]:
    return sorted(_METRICS)


def get_metric(name: str) -> Metric:
    try:
        return _METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r} (validate.metrics); registered: {', '.join(metric_names())}") from None


def evaluate(names: Iterable[str], real: np.ndarray, other: np.ndarray, options: MetricOptions,
             record: Callable[[Mapping[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every metric of ``names`` on ``other`` against ``real``: their values merged into one dict; each
    evaluation is also handed to ``record`` as ``{"metric", "values", "n", "n_real", "seconds"}``."""
    out: dict[str, Any] = {}
    for name in names:
        metric = get_metric(name)
        t0 = time.perf_counter()
        values = metric.fn(real, other, options)
        if record is not None:
            record({"metric": name, "values": values, "n": int(len(other)), "n_real": int(len(real)),
                    "seconds": round(time.perf_counter() - t0, 4)})
        out.update(values)
    return out


@register_metric("fid", "Frechet distance between Gaussian fits of the two feature sets (Heusel et al. 2017)")
def _fid(real: np.ndarray, other: np.ndarray, o: MetricOptions) -> dict[str, Any]:
    return {"fid": fid_from_features(other, real)}


@register_metric("kid", "kernel inception distance: unbiased MMD^2, cubic kernel, mean and sd over subsets (Binkowski et al. 2018)")
def _kid(real: np.ndarray, other: np.ndarray, o: MetricOptions) -> dict[str, Any]:
    mean, std = kid(real, other, o.kid_subsets, o.kid_subset_size, o.seed)
    return {"kid_mean": mean, "kid_std": std}


@register_metric("prdc", "precision, recall (Kynkaanniemi et al. 2019), density and coverage (Naeem et al. 2020) at k neighbours")
def _prdc(real: np.ndarray, other: np.ndarray, o: MetricOptions) -> dict[str, Any]:
    return precision_recall(real, other, k=min(o.pr_k, len(real) - 1, len(other) - 1))


@register_metric("fid_infinity", "FID extrapolated to infinitely many samples from FID at fid_n_points sample sizes (Chong & Forsyth 2020)")
def _fid_inf(real: np.ndarray, other: np.ndarray, o: MetricOptions) -> dict[str, Any]:
    sizes = sample_sizes(len(other), o.fid_n_points)
    if len(sizes) < 2:
        return {}
    inf, slope, pts = fid_infinity(other, real, sizes, o.seed)
    return {"fid_infinity": inf, "fid_slope": slope, "fid_by_n": pts}
