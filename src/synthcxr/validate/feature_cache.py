"""Real-image features kept on disk under a hash of what they depend on (the prepared dataset, the
extractor and its options, the rows), so a second archive of one dataset, or a rerun, reuses them."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..utils.atomic import atomic_path
from ..utils.hashing import sha256_file

log = logging.getLogger("synthcxr")


def dataset_identity(prepared_dir: str | os.PathLike) -> dict[str, Any]:
    """What names one preparation of a dataset: its prepare.json and labels.parquet digests and the image
    file's size and modification time (a new prepare run writes a new file)."""
    d = Path(prepared_dir)
    st = (d / "images.h5").stat()
    return {"prepare_json": sha256_file(d / "prepare.json") if (d / "prepare.json").exists() else None,
            "labels_parquet": sha256_file(d / "labels.parquet"), "images_h5": [st.st_size, st.st_mtime_ns]}


def cache_key(**parts: Any) -> str:
    """The file-name digest of ``parts`` (JSON, keys sorted)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def cached_features(cache_dir: str | os.PathLike | None, key: Mapping[str, Any], compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``compute()``'s features, read from ``cache_dir/features-<digest of key>.npz`` when an earlier call
    stored them under the same ``key``; ``cache_dir`` None computes every time."""
    if cache_dir is None:
        return compute()
    text = json.dumps(dict(key), sort_keys=True, default=str)
    path = Path(cache_dir) / f"features-{cache_key(**key)}.npz"
    if path.exists():
        with np.load(path) as z:
            if str(z["key"]) == text:
                log.info("features from the cache: %s", path)
                return z["features"]
        log.warning("%s holds other features under the same digest; recomputing", path)
    feats = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, features=feats, key=np.array(text))
    return feats
