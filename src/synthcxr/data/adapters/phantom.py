"""The built-in procedural dataset: cohort rows from ``sample_cohort``, pixels from ``render``.

No files are read; each image is rendered directly at ``max_res`` inside the worker processes, so the
phantom goes through exactly the same pyramid/split/label code as a real dataset. Configured labels
the phantom does not draw (anything outside ``PHANTOM_LABELS``) are NaN.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np

from ...config import ConfigError
from ...labels import NO_FINDING, PHANTOM_LABELS
from ..decode import SourceImage
from ..quarantine import Quarantine, QuarantineError
from .base import NAN, Adapter, LabelVocabulary, Record


def phantom_api() -> tuple[Any, Any, Any]:
    """(PhantomConfig, sample_cohort, render) from :mod:`synthcxr.data.phantom`."""
    try:
        mod = importlib.import_module("synthcxr.data.phantom")
        cfg_cls, sample = mod.PhantomConfig, mod.sample_cohort
        render = getattr(mod, "render", None)
        if render is None or isinstance(render, ModuleType):
            render = importlib.import_module("synthcxr.data.phantom.render").render
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"'dataset.format': phantom generator unavailable ({exc})") from None
    return cfg_cls, sample, render


class PhantomAdapter(Adapter):
    format = "phantom"

    def check(self) -> None:
        cfg_cls, _, _ = phantom_api()
        try:
            self.phantom_cfg = cfg_cls.from_section(self.cfg.phantom)
        except ConfigError:
            raise
        except ValueError as exc:
            raise ConfigError(f"'dataset.phantom': {exc}") from None

    def scan(self, quarantine: Quarantine) -> Iterator[Record]:
        _, sample, _ = phantom_api()
        self.vocabulary_labels(LabelVocabulary({n: n for n in PHANTOM_LABELS}))
        cohort = sample(self.phantom_cfg)
        cols = list(cohort.columns)
        for values in cohort.itertuples(index=False):
            row = {c: (v.item() if isinstance(v, np.generic) else v) for c, v in zip(cols, values)}
            self.seen += 1
            view = str(row["view"])
            if not self.accept_view(view):
                continue
            yield Record(
                source=str(row["image_id"]),
                image_id=str(row["image_id"]),
                patient_id=str(row["patient_id"]),
                view=view,
                sex=row.get("sex"),
                age=float(row["age"]),
                labels={n: (float(row[n]) if n in PHANTOM_LABELS else NAN) for n in self.labels},
                official=None,
                ref=row,
                other_finding=float(any(row[n] for n in PHANTOM_LABELS if n not in self.labels and n != NO_FINDING)),
            )

    def load(self, ref: Any, res: int, source: str) -> SourceImage:
        _, _, render = phantom_api()
        img = np.asarray(render(ref, res))
        if img.shape != (res, res) or img.dtype != np.uint8:
            raise QuarantineError("bad_image", f"{source}: renderer returned {img.dtype} {img.shape}")
        return SourceImage.of(img)
