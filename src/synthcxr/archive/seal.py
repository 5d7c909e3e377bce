"""Seal a release: check its content, write its dataset card and Croissant metadata, then the SHA256SUMS
that mark it complete.

``finalize_archive`` writes the release's data; validation reads it; sealing comes last, so the card can
quote the validation numbers and the checksums cover the card too. A release without SHA256SUMS is
unsealed: ``synthcxr.archive.open`` and ``verify`` refuse it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from ..utils.atomic import stale_temporaries, write_json, write_text
from ..utils.hashing import sha256_files
from .card import render_card
from .croissant import croissant_metadata
from .delivery import summary_line
from .layout import CARD, CROISSANT, SUMS
from .verify import expected_files, read_info, verify_release

log = logging.getLogger("synthcxr")


def write_sums(root: Path, rel_paths: list[str], jobs: int = 1) -> str:
    """Write ``SHA256SUMS`` (``sha256sum -c`` format, sorted relative paths, hashed on ``jobs`` threads); returns its text."""
    rels = sorted(set(rel_paths))
    text = "".join(f"{digest}  {r}\n" for r, digest in zip(rels, sha256_files([root / r for r in rels], jobs)))
    write_text(root / SUMS, text)
    return text


def seal_release(
    release_dir: str | os.PathLike,
    fid: str | os.PathLike | None = None,
    tstr: str | os.PathLike | None = None,
    memorization: str | os.PathLike | None = None,
    lco_agreement: str | os.PathLike | None = None,
    jobs: int = 1,
    reid: str | os.PathLike | None = None,
    oracle: str | os.PathLike | None = None,
    pairs: str | os.PathLike | None = None,
) -> str:
    """Verify the unsealed release, write README.md and SHA256SUMS; returns the card text.

    Raises ``ValueError`` listing every failed check instead of sealing a release that disagrees with itself.
    """
    root = Path(release_dir)
    for name in (SUMS, CARD, CROISSANT):  # an earlier, interrupted seal and its writers' temporaries
        for p in [root / name, *stale_temporaries(root / name)]:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    bad = [c for c in verify_release(root, jobs=jobs, sealed=False) if not c.ok]
    if bad:
        raise ValueError(f"{root}: refusing to seal a release that fails its checks:\n" + "\n".join(c.line() for c in bad))
    info = read_info(root)
    opt = lambda q: Path(q) if q is not None and Path(q).exists() else None  # noqa: E731
    text = render_card(info, opt(fid), opt(tstr), opt(memorization), opt(lco_agreement), opt(reid), opt(oracle), opt(pairs))
    write_text(root / CARD, text)
    write_json(root / CROISSANT, croissant_metadata(info, root))
    write_sums(root, sorted(expected_files(info, root) - {SUMS}), jobs)
    log.info("sealed release %s: %d samples in %d shard(s)", root, info["counts"]["n_released"], info["n_shards"])
    if info.get("delivery"):
        for line in info["delivery"].get("short", []):
            log.warning("DELIVERY SHORT: %s", line)
        log.info("%s: %s", root, summary_line(info["delivery"]))
    return text
