"""Sharded synthetic archive: render latents into HDF5/Parquet shards, finalise, verify, regenerate, read.

``synthcxr.archive.open(path)`` is the consumer entry point; the writer side lives in
:mod:`.sample` and :mod:`.finalize`, the command-line tools in :mod:`.verify` and :mod:`.regenerate`.
"""

from .reader import Archive, open_archive
from .reader import open_archive as open  # noqa: A001 - the documented consumer entry point

__all__ = ["Archive", "open", "open_archive"]
