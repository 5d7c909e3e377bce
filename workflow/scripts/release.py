"""Rule release: verify the finalised release, then write README.md (the dataset card) and SHA256SUMS."""

from pathlib import Path

from synthcxr.archive.seal import seal_release
from synthcxr.utils.runtime import setup_logging

sm = snakemake  # noqa: F821 (injected by Snakemake)
setup_logging(sm.log[0])
seal_release(
    Path(sm.output.sums).parent,
    fid=sm.input.fid,
    tstr=sm.input.tstr,
    memorization=sm.input.memorization,
    lco_agreement=sm.input.lco_agreement,
    jobs=sm.threads,
    reid=sm.input.reid[0] if sm.input.reid else None,
    oracle=sm.input.oracle[0] if sm.input.oracle else None,
    pairs=sm.input.pairs[0] if sm.input.pairs else None,
)
