"""One source of configuration: the schema holds every default, and each stage's dataclass holds every key.

``synthcxr.config.build`` is the one way a stage reads its section; these tests walk each dataclass that
reads through it against the schema, so a key added to one and not the other, or a default written in
a dataclass, fails here.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from synthcxr.archive.sample import ArchiveConfig
from synthcxr.config import GLOBAL_KEYS, ConfigError, build, load_schema, section_schema
from synthcxr.lco.config import LCOConfig
from synthcxr.lco.plan import PlanConfig
from synthcxr.reader_study.kit import ReaderStudyConfig

SRC = Path(__file__).resolve().parents[2] / "src" / "synthcxr"
SCHEMA = load_schema()

# (dataclass, its section, keys of the section another class reads, fields filled from elsewhere)
BUILT = [
    (LCOConfig, "lco", set(LCOConfig.NESTED), set()),
    (PlanConfig, "lco.plan", set(), {"shard_size"}),
    (ArchiveConfig, "archive", set(), set()),
    (ReaderStudyConfig, "reader_study", set(), set()),
]
# packages whose config reads all go through build (no cfg.get(key, default), no Mapping | XConfig unions)
CONVERTED = ["lco", "reader_study"]


@pytest.mark.parametrize("cls, name, nested, outside", BUILT, ids=[b[0].__name__ for b in BUILT])
def test_dataclass_fields_are_the_sections_keys_and_hold_no_defaults(cls, name, nested, outside):
    fields = {f.name for f in dataclasses.fields(cls)}
    keys = set(section_schema(name, SCHEMA)["properties"])
    own = fields - (set(GLOBAL_KEYS) - keys) - outside  # a global key the section holds itself is the section's
    assert own == keys - nested, f"{cls.__name__}: only in the dataclass {sorted(own - keys)}; only in the schema {sorted(keys - nested - own)}"
    with_default = [f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING]
    assert with_default == [], f"{cls.__name__}: defaults belong in the schema, not the dataclass: {with_default}"


def test_build_fills_the_schemas_defaults_and_keeps_given_keys():
    lco = section_schema("lco", SCHEMA)["properties"]
    lc = build(LCOConfig, "lco", {"labels": ["Effusion", "No_Finding"], "steps": 7, "seed": 3})
    assert lc.steps == 7 and lc.seed == 3 and lc.labels == ["Effusion", "No_Finding"]
    for key, spec in lco.items():
        if key != "plan" and key != "steps":
            assert getattr(lc, key) == spec["default"], key
    assert lc.device == SCHEMA["properties"]["device"]["default"] == "auto"
    pc = PlanConfig.from_section({"plan": {"mode": "balanced", "n_samples": 5}, "shard_size": 2})
    assert (pc.n_samples, pc.shard_size, pc.quotas, pc.keep_rare) == (5, 2, {}, True)
    assert PlanConfig.from_section({"plan": {"mode": "balanced", "n_samples": 5}}).shard_size == lco["shard_size"]["default"]


def test_build_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"'lco\.objective': 'hinge' is not one of"):
        LCOConfig.from_section({"labels": ["Effusion", "No_Finding"], "objective": "hinge"})
    with pytest.raises(ConfigError, match=r"'lco\.steps': 0 is less than the minimum of 1"):
        LCOConfig.from_section({"labels": ["Effusion", "No_Finding"], "steps": 0})
    with pytest.raises(ConfigError, match=r"unknown key 'lco\.stepz'"):
        LCOConfig.from_section({"labels": ["Effusion", "No_Finding"], "stepz": 3})
    with pytest.raises(ConfigError, match=r"'lco\.plan\.n_samples': missing"):
        PlanConfig.from_section({"plan": {"mode": "balanced"}})


def _config_reads(path: Path) -> list[str]:
    """``x.get(key, default)`` on a variable named like a config section, and ``Mapping | XConfig`` annotations."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" and len(node.args) == 2
                and isinstance(node.func.value, ast.Name) and node.func.value.id in {"cfg", "sec", "section", "config", "lc"}):
            found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            text = ast.unparse(node)
            if "Config" in text and ("Mapping" in text or "dict" in text):
                found.append(f"{path.name}:{node.lineno} {text}")
    return found


@pytest.mark.parametrize("package", CONVERTED)
def test_converted_packages_read_config_only_through_their_dataclasses(package):
    found = [r for p in sorted((SRC / package).glob("*.py")) for r in _config_reads(p)]
    assert found == []
