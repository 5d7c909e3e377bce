"""A refactoring changes no output: the tiny DAG's release checksums and validation numbers equal the
record committed in tests/e2e/behaviour.json.

A change that is meant to change outputs re-records it in the same commit
(``SYNTHCXR_RECORD_BEHAVIOUR=1 pytest tests/e2e/test_behaviour.py``), so the diff shows what moved. The
record holds for the platform it was made on (CPU instruction set, torch and numpy versions): elsewhere
the bytes differ in the last bits by design (docs/archive-format.md), and the test says so and skips.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from behaviour import differences, platform_key, record

pytestmark = pytest.mark.slow

RECORD = Path(__file__).with_name("behaviour.json")


def test_outputs_match_the_committed_record(tiny_run: Path):
    now = record(tiny_run, "tiny")
    assert now["sha256sums"] and now["numbers"], "the tiny DAG left no release checksums or validation numbers"
    if os.environ.get("SYNTHCXR_RECORD_BEHAVIOUR") == "1":
        RECORD.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"recorded {RECORD}")
    old = json.loads(RECORD.read_text())
    if old["platform"] != platform_key():
        pytest.skip(f"the record was made on {old['platform']}, this is {platform_key()}")
    assert differences(old, now) == []


def test_differences_name_what_moved():
    a = {"sha256sums": {"x.h5": "1"}, "numbers": {"fid.json.fid": 2.0, "lco.json.n": 3.0}}
    b = {"sha256sums": {"x.h5": "9"}, "numbers": {"fid.json.fid": 2.5, "lco.json.n": 3.0, "new.json.k": 1.0}}
    assert differences(a, b) == ["sha256sums: x.h5: 1 -> 9", "numbers: fid.json.fid: 2.0 -> 2.5", "numbers: new.json.k: <absent> -> 1.0"]
    assert differences(a, a) == []
