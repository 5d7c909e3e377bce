"""Collect inputs that cannot be used, with a reason, instead of stopping the run.

A real collection always holds some broken files; one bad JPEG in 100,000 must not cost a day of
cluster time. Every rejected input lands in ``quarantine.csv`` (source path, reason) and is counted by
*kind* in ``prepare.json`` so a user can see at a glance whether 3 or 30,000 files were lost and why.
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from dataclasses import dataclass, field

from ..utils.atomic import write_text

#: Reason kinds used across adapters; ``prepare.json`` counts quarantined inputs per kind.
REASONS: dict[str, str] = {
    "missing_file": "the label row points at a file that does not exist",
    "unreadable": "the file exists but cannot be opened (permissions or I/O error)",
    "not_an_image": "the file is not a recognised image or DICOM file",
    "corrupt_image": "the image data is truncated or corrupt",
    "no_pixel_data": "the DICOM file holds no pixel data",
    "bad_image": "the image has an unusable shape or constant/empty pixels",
    "unknown_label": "a label outside the source vocabulary",
    "bad_label_value": "a label value that is not 1, 0, -1 or blank",
    "missing_metadata": "a required metadata field (e.g. patient id) is missing",
    "no_label_row": "the image has no matching label row",
    "duplicate": "the same image is listed more than once (first listing kept)",
    "decode_error": "an unexpected error or crash while decoding the image",
    "too_small": "the source image's short side is below dataset.min_source_size",
}


class QuarantineError(Exception):
    """Raised inside adapters for one unusable input; ``kind`` is a key of :data:`REASONS`."""

    def __init__(self, kind: str, detail: str):
        if kind not in REASONS:
            raise ValueError(f"unknown quarantine kind {kind!r}; use one of {sorted(REASONS)}")
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass
class Quarantine:
    """Accumulates (source, kind, detail) entries in the order they were found."""

    entries: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, source: str, kind: str, detail: str) -> None:
        if kind not in REASONS:
            raise ValueError(f"unknown quarantine kind {kind!r}; use one of {sorted(REASONS)}")
        self.entries.append((str(source), kind, str(detail)))

    def add_error(self, source: str, err: QuarantineError) -> None:
        self.add(source, err.kind, err.detail)

    def __len__(self) -> int:
        return len(self.entries)

    def counts(self) -> dict[str, int]:
        """Number of quarantined inputs per reason kind (kinds with zero omitted), sorted by kind."""
        return dict(sorted(Counter(kind for _, kind, _ in self.entries).items()))

    def to_csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["source", "reason", "detail"])
        for source, kind, detail in self.entries:
            w.writerow([source, kind, detail])
        return buf.getvalue()

    def write(self, path: str | os.PathLike) -> None:
        """Write ``quarantine.csv`` atomically (header only when nothing was quarantined)."""
        write_text(path, self.to_csv_text())
