"""croissant.json: mlcroissant loads the release's metadata and its records are the manifest's rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from archive_fixtures import write_release
from synthcxr.archive.croissant import croissant_metadata
from synthcxr.utils.hashing import sha256_file

LABELS = ["Effusion", "Mass", "No_Finding"]


def test_records_equal_the_manifest(tmp_path):
    mlc = pytest.importorskip("mlcroissant")
    rng = np.random.default_rng(0)
    labels = (rng.random((9, 3)) < 0.4).astype(np.uint8)
    root = write_release(tmp_path / "rel", rng.integers(0, 256, (9, 8, 8), dtype=np.uint8), labels, LABELS, sealed=False)
    info = json.loads((root / "archive.json").read_text()) | {"created": "2026-12-06T10:00:00+00:00"}
    meta = croissant_metadata(info, root)
    assert meta["distribution"][0]["sha256"] == sha256_file(root / "manifest.parquet")
    assert [d["@id"] for d in meta["distribution"]] == ["manifest", "h5-shards"] and meta["conformsTo"] == "http://mlcommons.org/croissant/1.0"
    (root / "croissant.json").write_text(json.dumps(meta))
    ds = mlc.Dataset(jsonld=str(root / "croissant.json"))
    assert not ds.metadata.ctx.issues.errors and not ds.metadata.ctx.issues.warnings, ds.metadata.ctx.issues.report()
    recs = list(ds.records("samples"))
    man = pd.read_parquet(root / "manifest.parquet")
    assert len(recs) == len(man)
    for rec, (_, row) in zip(recs, man.iterrows()):
        got = {k.split("/", 1)[1]: (v.decode() if isinstance(v, bytes) else v) for k, v in rec.items()}
        assert set(got) == set(man.columns)
        for col in man.columns:
            want = row[col]
            assert got[col] == pytest.approx(want) if isinstance(want, float) else got[col] == want, col
    # a label column says what it means
    eff = next(f for f in meta["recordSet"][0]["field"] if f["name"] == "Effusion")
    assert eff["dataType"] == "sc:Integer" and "Effusion" in eff["description"]
