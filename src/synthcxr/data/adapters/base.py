"""What every dataset adapter provides: a metadata scan and a per-image loader.

Preparation runs in two passes so that memory never depends on dataset size: :meth:`Adapter.scan`
reads only label tables/headers and yields one :class:`Record` per usable image (quarantining bad
rows), then :meth:`Adapter.load` decodes one image at a time in worker processes. Adapters therefore
stay small and picklable: they hold configuration, never pixel data or whole tables.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ...config import ConfigError
from ..decode import SourceImage
from ..settings import UNCERTAIN_POLICIES, PrepareConfig, uncertain_policy  # noqa: F401 (re-exported)
from ..quarantine import Quarantine, QuarantineError

NAN = float("nan")


@dataclass
class Record:
    """One usable image found by the metadata scan.

    ``patient_id`` is the raw source id: it lives only in memory and is hashed before anything is
    written. ``ref`` is whatever :meth:`Adapter.load` needs (a path, or a phantom cohort row).
    ``other_finding`` is 1 when the source marks a finding that is not among the configured labels
    (0 when it marks none, NaN when it cannot say), so such an image is never taken for No_Finding.
    """

    source: str
    image_id: str
    patient_id: str
    view: str
    sex: str | None
    age: float
    labels: dict[str, float]
    official: str | None = None
    ref: Any = None
    other_finding: float = NAN


@dataclass
class LabelVocabulary:
    """How a source's label names map onto canonical names, with notes for prepare.json."""

    mapping: Mapping[str, str]
    unmapped_notes: Mapping[str, str] = field(default_factory=dict)

    def provides(self) -> set[str]:
        return set(self.mapping.values())


def parse_label_value(raw: object, column: str) -> float | None:
    """Source cell -> 1.0 / 0.0 / -1.0 (uncertain) / None (blank). Anything else is quarantined."""
    if raw is None:
        return None
    if isinstance(raw, float) and math.isnan(raw):
        return None
    s = str(raw).strip()
    if s == "" or s.lower() == "nan":
        return None
    try:
        v = float(s)
    except ValueError:
        raise QuarantineError("bad_label_value", f"column {column!r}: value {s!r} is not 1, 0, -1 or blank") from None
    if v not in (1.0, 0.0, -1.0):
        raise QuarantineError("bad_label_value", f"column {column!r}: value {s!r} is not 1, 0, -1 or blank")
    return v


def apply_uncertain(value: float | None, policy: str, blank: float) -> float:
    """Resolve one parsed value: -1 by ``policy`` (ones/zeros/ignore), blank -> ``blank``."""
    if value is None:
        return blank
    if value == -1.0:
        return {"ones": 1.0, "zeros": 0.0, "ignore": NAN}[policy]
    return value


class Adapter:
    """Base class; subclasses set :attr:`format` and implement :meth:`check`, :meth:`scan`, :meth:`load`."""

    format: ClassVar[str] = ""

    def __init__(self, cfg: "PrepareConfig", labels: Sequence[str]):
        self.cfg = cfg
        self.labels = list(labels)
        self.notes: list[str] = []
        self.warnings: list[str] = []
        self.filtered_views: Counter[str] = Counter()
        self.seen = 0
        self.uncertain = uncertain_policy(cfg.chexpert_uncertain)

    # ---- configuration -------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return Path(self.cfg.root) if self.cfg.root else Path()

    def require_root(self) -> Path:
        """Fail fast when dataset.root is missing or not a folder."""
        if not self.cfg.root:
            raise ConfigError(f"'dataset.root': required for dataset.format '{self.format}' (the dataset folder)")
        root = Path(self.cfg.root)
        if not root.is_dir():
            raise ConfigError(
                f"'dataset.root': folder {root} does not exist (dataset.format '{self.format}'); "
                "point it at the unpacked dataset"
            )
        return root

    def require_file(self, candidates: Sequence[Path], what: str, key: str = "dataset.root") -> Path:
        """First existing candidate, or a ConfigError naming the key and every path tried."""
        for c in candidates:
            if c.is_file():
                return c
        tried = ", ".join(str(c) for c in candidates)
        raise ConfigError(f"'{key}': {what} not found (looked for {tried})")

    def check(self) -> None:
        """Validate configuration and required files before any work (raise ConfigError)."""

    # ---- pass 1: metadata ----------------------------------------------------------------------
    def scan(self, quarantine: Quarantine) -> Iterator[Record]:
        raise NotImplementedError

    def accept_view(self, view: str) -> bool:
        """Apply dataset.views; filtered images are counted, not quarantined."""
        if view in self.cfg.views:
            return True
        self.filtered_views[view] += 1
        return False

    def vocabulary_labels(self, vocab: LabelVocabulary) -> None:
        """Record notes/warnings for configured labels this source cannot provide (NaN columns)."""
        provided = vocab.provides()
        for name in self.labels:
            if name not in provided:
                self.warnings.append(
                    f"label {name!r} is not in the {self.format} vocabulary: its column is NaN (unknown)"
                )
        for src, note in vocab.unmapped_notes.items():
            self.notes.append(f"{self.format} label {src!r} not mapped: {note}")
        for src, canon in vocab.mapping.items():
            if src != canon and canon in self.labels:
                self.notes.append(f"{self.format} label {src!r} -> {canon!r}")

    # ---- pass 2: pixels (runs in worker processes) ---------------------------------------------
    def load(self, ref: Any, res: int, source: str) -> "SourceImage":
        """One record's grayscale pixels at (or near) source size; raise QuarantineError for unusable inputs.

        ``res`` is the pyramid's max_res, which a decoder may use to decode at a reduced scale that stays
        at least twice as large; the caller crops, resizes and checks the source size.
        """
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        return {}


#: Rows of a label table parsed at a time (tables are streamed, never held whole).
CHUNK_ROWS = 16384


def iter_rows(csv: str | os.PathLike, columns: Sequence[str] | None = None) -> Iterator[dict[str, str]]:
    """A CSV's rows as dicts of raw strings (blank cells ``""``), parsed a chunk at a time."""
    import pandas as pd

    for chunk in pd.read_csv(csv, dtype=str, keep_default_na=False, usecols=columns, chunksize=CHUNK_ROWS):
        cols = list(chunk.columns)
        for values in chunk.itertuples(index=False, name=None):
            yield dict(zip(cols, values))


def index_files(folders: Sequence[Path], suffixes: Sequence[str]) -> dict[str, Path]:
    """File name -> path for the files directly inside ``folders`` (first folder wins on duplicates)."""
    out: dict[str, Path] = {}
    sfx = tuple(s.lower() for s in suffixes)
    for folder in folders:
        if not folder.is_dir():
            continue
        with os.scandir(folder) as it:
            for entry in sorted(it, key=lambda e: e.name):
                if entry.name.lower().endswith(sfx) and entry.name not in out:
                    out[entry.name] = Path(entry.path)
    return out
