"""Dataset adapters: one per source format, all producing :class:`~.base.Record` s and square images."""

from __future__ import annotations

from collections.abc import Sequence
from ...config import ConfigError
from ..settings import PrepareConfig
from .base import Adapter, Record
from .chexpert import CheXpertAdapter
from .dicom import DicomAdapter
from .mimic_jpg import MimicJpgAdapter
from .nih import NIHAdapter
from .phantom import PhantomAdapter

ADAPTERS: dict[str, type[Adapter]] = {
    a.format: a for a in (PhantomAdapter, NIHAdapter, CheXpertAdapter, MimicJpgAdapter, DicomAdapter)
}


def get_adapter(fmt: str) -> type[Adapter]:
    """Adapter class for ``dataset.format``; a ConfigError lists the known formats."""
    try:
        return ADAPTERS[fmt]
    except KeyError:
        raise ConfigError(f"'dataset.format': unknown format {fmt!r}; choose one of {sorted(ADAPTERS)}") from None


def make_adapter(cfg: "PrepareConfig", labels: Sequence[str]) -> Adapter:
    """Instantiate and check the adapter for ``cfg.format`` (fails fast on config errors)."""
    adapter = get_adapter(cfg.format)(cfg, labels)
    adapter.check()
    return adapter


__all__ = ["ADAPTERS", "Adapter", "Record", "get_adapter", "make_adapter"]
