"""Atomic output: write to a temporary sibling, fsync, then rename over the target."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_UMASK = os.umask(0o022)  # read once at import (os.umask can only be read by setting it) ...
os.umask(_UMASK)  # ... and restored at once


#: Every temporary name ends in this, never in a real suffix, so ``glob("*.parquet")`` and readers that
#: sniff extensions never pick up a half-written file.
TMP_SUFFIX = ".partial"
TMP_PREFIX = ".tmp-"


def is_temporary(name: str) -> bool:
    """Whether a file name is one of :func:`atomic_path`'s temporary names."""
    return name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX)


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Temporary files that earlier (killed) writers of ``path`` left next to it."""
    target = Path(path)
    # mkstemp's random part is 8 characters without '-': a target "a" never claims the temporaries of "a-b"
    pattern = f"{TMP_PREFIX}{glob.escape(target.name)}-{'?' * 8}{TMP_SUFFIX}"
    if not target.parent.is_dir():
        return []
    return sorted(p for p in target.parent.glob(pattern) if "-" not in p.name[len(TMP_PREFIX) + len(target.name) + 1 : -len(TMP_SUFFIX)])


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    A killed or failing writer leaves at most a ``.tmp-<name>-XXXX.partial`` file, never a
    complete-looking target; the next successful write of the same target removes such leftovers.
    Writers that need a format hint must pass it explicitly (the temporary name has none).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{target.name}-", suffix=TMP_SUFFIX, dir=target.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; published files get normal permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            with open(tmp_path, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise
    # One job writes a given target at a time (Snakemake's contract), so every other temporary of
    # this target belongs to a writer that died.
    for stale in stale_temporaries(target):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def finish_rows(stack: contextlib.ExitStack, path: str | os.PathLike, n: int, written: int, exc_info: tuple,
                err: BaseException | None = None) -> None:
    """Leave a row writer's ``atomic_path`` block (held by ``stack``): publish the file when all ``n`` rows were
    written and nothing failed; otherwise remove the temporary and raise (``err``, or the missing-rows error).
    ``exc_info`` is the writer's ``__exit__`` arguments."""
    exc_type = exc_info[0]
    if err is None and exc_type is None and written != n:
        err = RuntimeError(f"{path}: {n - written} of {n} rows never written; shard not published")
    if err is not None:
        stack.__exit__(type(err), err, None)
        raise err
    stack.__exit__(*exc_info)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`atomic_path`, byte-reproducible.

    torch names the records inside its zip after the file it writes to; saving to a buffer first
    keeps that name fixed, so equal objects give equal bytes whatever the temporary name was.
    """
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())
