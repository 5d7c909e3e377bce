"""What the tiny DAG produced, as one comparable record: the release's SHA256SUMS and every number in
results/validate/{archive}/*.json. A refactoring must leave it unchanged (tests/e2e/test_behaviour.py).

Bytes are only reproducible on one platform (torch's CPU kernels differ in the last bits between
instruction sets), so the record names the platform it was made on.
"""

from __future__ import annotations

import json
import math
import platform
import re
from pathlib import Path
from typing import Any

#: keys whose numbers measure the run, not its result: wall times, dates, and LCO's measured cost of a
#: backward pass against a forward one (backward_ratio) with the forward-equivalents derived from it
UNSTABLE = re.compile(r"(^|_)(seconds|secs|time|times|elapsed|wall|duration|created|date|s)$|_per_s(_|$)"
                      r"|^backward_ratio$|^backward_timing$|^fe_per_success$")


#: release files that quote when the release was made: archive.json is compared by its numbers instead, the
#: card and croissant.json (rendered from it and the validation files) not at all
STAMPED = ("archive.json", "README.md", "croissant.json")


def platform_key() -> dict[str, str]:
    import numpy
    import torch

    return {"machine": platform.machine(), "torch": torch.__version__, "numpy": numpy.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def _numbers(obj: Any, prefix: str, out: dict[str, float | None]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not UNSTABLE.search(str(k)):
                _numbers(v, f"{prefix}.{k}", out)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _numbers(v, f"{prefix}[{i}]", out)
    elif isinstance(obj, bool):
        out[prefix] = float(obj)
    elif isinstance(obj, (int, float)):
        out[prefix] = None if isinstance(obj, float) and math.isnan(obj) else float(obj)


def record(work: Path, archive: str) -> dict[str, Any]:
    """The release's checksums (SHA256SUMS) and the validation numbers of ``archive`` in run folder ``work``."""
    rel = work / "results" / "archive" / archive / "release"
    sums = {}
    for line in (rel / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        if name.lstrip("*") not in STAMPED:
            sums[name.lstrip("*")] = digest
    numbers: dict[str, float | None] = {}
    info = json.loads((rel / "archive.json").read_text())
    info.pop("config", None)  # the config the run was given (a new schema default is not a new result)
    _numbers(info, "release/archive.json", numbers)
    for f in sorted((work / "results" / "validate" / archive).glob("*.json")):
        _numbers(json.loads(f.read_text()), f.name, numbers)
    return {"platform": platform_key(), "sha256sums": sums, "numbers": numbers}


def differences(old: dict[str, Any], new: dict[str, Any], limit: int = 20) -> list[str]:
    """What differs between two records, one line each (at most ``limit``)."""
    out = []
    for part in ("sha256sums", "numbers"):
        a, b = old[part], new[part]
        for k in sorted(set(a) | set(b)):
            if a.get(k, "<absent>") != b.get(k, "<absent>"):
                out.append(f"{part}: {k}: {a.get(k, '<absent>')} -> {b.get(k, '<absent>')}")
    return out[:limit] + ([f"... and {len(out) - limit} more"] if len(out) > limit else [])
