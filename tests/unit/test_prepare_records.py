"""RecordTable: the packed metadata-scan store returns exactly what was appended, across blocks."""

from __future__ import annotations

import math

import numpy as np

import synthcxr.data.records as records_mod
from synthcxr.data.adapters import Record
from synthcxr.data.records import RecordTable


def _rec(i: int, ref=None) -> Record:
    return Record(
        source=f"files/p{i % 7}/img{i}.jpg",
        image_id=f"id{i % 450}",  # ids repeat after 450 rows: duplicates to find
        patient_id=f"P{i % 37}",
        view=("PA", "AP")[i % 2],
        sex=(None, "F", "M")[i % 3],
        age=float("nan") if i % 5 == 0 else float(i % 90),
        labels={"Effusion": float(i % 2), "Nodule": math.nan if i % 4 == 0 else 1.0},
        official=None if i % 3 else "test",
        ref=ref if ref is not None else f"/data/files/p{i % 7}/img{i}.jpg",
        other_finding=float(i % 6 == 0),
    )


def test_round_trip_across_blocks_and_duplicates(monkeypatch):
    monkeypatch.setattr(records_mod, "BLOCK", 64)  # many blocks, and a partial last one
    labels = ["Effusion", "Nodule", "Hernia"]
    recs = [_rec(i) for i in range(500)]
    t = RecordTable.collect(recs, labels)
    assert len(t) == 500
    assert t.strings("source") == [r.source for r in recs]
    assert t.strings("sex") == [r.sex for r in recs] and t.strings("official") == [r.official for r in recs]
    assert list(t.items()) == [(r.source, r.ref) for r in recs]
    np.testing.assert_array_equal(t.age(), [r.age for r in recs])
    np.testing.assert_array_equal(t.other_finding(), [r.other_finding for r in recs])
    want = np.array([[r.labels.get(n, np.nan) for n in labels] for r in recs], dtype=np.float32)
    np.testing.assert_array_equal(t.label_matrix(), want)
    # first occurrences of image_id, in order: rows 0..449
    np.testing.assert_array_equal(t.first_occurrences("image_id"), np.arange(450))
    rows = np.array([5, 3, 499, 3])
    values, codes = t.codes("patient_id", rows)
    assert [values[c] for c in codes] == [recs[i].patient_id for i in rows]
    values, codes = t.codes("sex", rows)
    assert [values[c] for c in codes] == [recs[i].sex for i in rows]
    # ~ tens of bytes per record, not the ~1.5 KB a Record object costs
    assert t.nbytes() < 200 * len(recs)


def test_non_string_refs_are_kept_as_objects():
    recs = [_rec(i, ref={"row": i}) for i in range(10)]
    t = RecordTable.collect(recs, ["Effusion"])
    assert [ref for _, ref in t.items()] == [{"row": i} for i in range(10)]
