"""Sharded synthetic archive: render latents into HDF5/Parquet shards, finalise, verify, regenerate, read.

``synthcxr.archive.open(path)`` is the consumer entry point for local random access and
``synthcxr.archive.stream(url)`` for streaming from any fsspec URL; the writer side lives in
:mod:`.sample` and :mod:`.finalize`, the command-line tools in :mod:`.verify` and :mod:`.regenerate`.
"""

from .reader import Archive, open_archive
from .reader import open_archive as open  # noqa: A001 - the documented consumer entry point


def __getattr__(name: str):
    """``stream`` and ``ReleaseStream`` import torch; load them on first use so plain readers stay light."""
    if name in ("stream", "ReleaseStream"):
        from . import streaming

        return getattr(streaming, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Archive", "ReleaseStream", "open", "open_archive", "stream"]
