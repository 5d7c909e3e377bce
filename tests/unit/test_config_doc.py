"""docs/configuration.md is generated from the config schema and fails the suite when the two drift apart."""

from __future__ import annotations

import copy

from synthcxr.config import load_schema
from synthcxr.config_doc import DOC_PATH, cli, iter_keys, render, undocumented


def test_every_schema_key_has_a_description():
    assert undocumented() == []


def test_committed_reference_matches_the_schema():
    assert DOC_PATH.read_text() == render(), "docs/configuration.md is stale: run `synthcxr config-doc`"
    assert cli(["--check"]) == 0


def test_every_key_and_its_default_appear_in_the_reference():
    text = render()
    for key, node in iter_keys(load_schema()):
        top_section = "." not in key and node.get("type") == "object"
        assert (f"## `{key}`" if top_section else f"| `{key}` |") in text, key
    assert "| `lco.margin` | number (0 ≤ x) | `0.0` | logits past each threshold" in text
    assert "| `archive.formats` | array of `h5`, `parquet`, `webdataset`, `dicom` | `[\"h5\", \"parquet\"]` |" in text


def test_drift_and_missing_descriptions_are_caught(tmp_path, capsys):
    schema = copy.deepcopy(load_schema())
    schema["properties"]["lco"]["properties"]["new_key"] = {"type": "integer", "default": 3}
    assert undocumented(schema) == ["lco.new_key"]
    stale = tmp_path / "configuration.md"
    stale.write_text(render().replace("logits past each threshold", "something else"))
    assert cli(["--check", "--out", str(stale)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert cli(["--out", str(stale)]) == 0 and stale.read_text() == render()
