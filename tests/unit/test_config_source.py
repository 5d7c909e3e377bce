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

from jsonschema import Draft202012Validator

from synthcxr.archive.sample import ArchiveConfig
from synthcxr.classifier.augment import AugmentConfig
from synthcxr.classifier.train import RUN_KEYS, ClassifierConfig
from synthcxr.config import GLOBAL_KEYS, ConfigError, build, load_schema, section_schema
from synthcxr.data.phantom import PhantomConfig
from synthcxr.data.settings import PrepareConfig, SplitConfig
from synthcxr.lco.config import LCOConfig
from synthcxr.lco.pair_plan import PairsConfig
from synthcxr.lco.plan import PlanConfig
from synthcxr.pggan.config import PGGANConfig
from synthcxr.reader_study.kit import ReaderStudyConfig
from synthcxr.validate.fid_run import FID_TUNING, FidConfig
from synthcxr.validate.memorization import MEMORIZATION_TUNING, MemorizationConfig
from synthcxr.validate.reid import REID_TUNING, ReidConfig
from synthcxr.validate.verifier import VerifierConfig

SRC = Path(__file__).resolve().parents[2] / "src" / "synthcxr"
SCHEMA = load_schema()

# (dataclass, its section, keys of the section another class reads, fields filled from elsewhere)
BUILT = [
    (LCOConfig, "lco", set(LCOConfig.NESTED), set()),
    (PlanConfig, "lco.plan", set(), {"shard_size"}),
    (ArchiveConfig, "archive", set(ArchiveConfig.NESTED), set()),
    (PairsConfig, "archive.pairs", set(), set()),
    (ReaderStudyConfig, "reader_study", set(), set()),
    (PGGANConfig, "pggan", set(), set()),
    (PrepareConfig, "dataset", set(), set()),
    (SplitConfig, "dataset.split", set(), set()),
    (PhantomConfig, "dataset.phantom", set(), set()),
    (ClassifierConfig, "classifier", {"checker"}, set(RUN_KEYS)),
    (AugmentConfig, "classifier.augment", set(), set()),
    # validate: FID reads the top-level keys; the audits their own sections; TSTR and validate_lco read
    # their keys as rule params
    (FidConfig, "validate", {"memorization", "reid", "oracle", "lco_prior_samples", "tstr_seeds", "tstr_epochs",
                             "tstr_real_fractions", "tstr_arms", "tstr_synthetic_share"}, set(FID_TUNING)),
    (MemorizationConfig, "validate.memorization", set(), set(MemorizationConfig.FROM_VALIDATE) | set(MEMORIZATION_TUNING)),
    (VerifierConfig, "validate.reid", {"enabled", "false_match_rate", "gate", "gallery"}, set()),
    (ReidConfig, "validate.reid", {"enabled", "res", "width", "embed_dim", "steps", "patients_per_batch", "lr", "weight_decay",
                                   "align", "batch_size", "max_heldout", "augment"}, {"verifier"} | set(REID_TUNING)),
]
# every package reads its config through build (no cfg.get(key, default), no Mapping | XConfig unions)
CONVERTED = sorted(p.name for p in SRC.iterdir() if p.is_dir() and not p.name.startswith("_"))


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


def _defaults(node, path=""):
    """(dotted key, its subschema) for every schema node that has a default."""
    if isinstance(node, dict):
        if "default" in node and path:
            yield path, node
        for k, sub in (node.get("properties") or {}).items():
            yield from _defaults(sub, f"{path}.{k}" if path else k)


def test_every_schema_default_is_valid_under_its_own_key():
    """A default is filled in before validation: one its own key refuses would fail every config that leaves it out."""
    defs = {"$defs": SCHEMA.get("$defs", {})}
    bad = [f"{key}: {node['default']!r}" for key, node in _defaults(SCHEMA)
           if not Draft202012Validator({**node, **defs}).is_valid(node["default"])]
    assert bad == []


def test_the_codes_choices_are_the_schemas():
    """Where code branches on a key's value, its list of values is the schema's enum."""
    from synthcxr.classifier.evaluate import THRESHOLD_METHODS
    from synthcxr.classifier.models import ARCHS
    from synthcxr.classifier.train import SELECTION
    from synthcxr.utils.amp import AMP_MODES

    clf = section_schema("classifier", SCHEMA)["properties"]
    assert set(ARCHS) == set(clf["arch"]["enum"]) == set(clf["checker"]["properties"]["arch"]["enum"])
    assert set(SELECTION) == set(clf["select_on"]["enum"])
    assert set(THRESHOLD_METHODS) == set(clf["threshold_method"]["enum"])
    assert set(AMP_MODES) == set(clf["amp"]["enum"]) == set(section_schema("lco", SCHEMA)["properties"]["amp"]["enum"])


def test_validate_dataclasses_take_the_schemas_defaults_from_part_of_the_section():
    mem = MemorizationConfig.from_section({"memorization": {"pixel_res": 16}, "device": "cpu"})
    spec = section_schema("validate.memorization", SCHEMA)["properties"]
    assert (mem.pixel_res, mem.threshold, mem.gate, mem.gallery) == (16, spec["threshold"]["default"], True, 16)
    assert mem.features == "checker" and mem.seed == 0 and mem.batch_size == MEMORIZATION_TUNING["batch_size"]
    reid = ReidConfig.from_section({"reid": {"steps": 7, "augment": {"noise": 0.0}}, "seed": 4, "labels": ["Effusion", "No_Finding"]})
    assert reid.verifier.steps == 7 and reid.verifier.seed == 4 and reid.verifier.res == 64 and reid.device == "auto"
    assert reid.verifier.augment == {"rotate_deg": 4.0, "scale": 0.04, "intensity": 0.15, "hflip": False, "shift": 0.04, "noise": 0.0}
    fid = FidConfig.from_section({"kid_subsets": 3}, batch_size=8)
    assert (fid.kid_subsets, fid.kid_subset_size, fid.batch_size, fid.max_real) == (3, 1000, 8, 10000)
    with pytest.raises(ConfigError, match=r"'validate\.reid\.steps': 0 is less than the minimum of 1"):
        ReidConfig.from_section({"reid": {"steps": 0}})
    with pytest.raises(ConfigError, match=r"unknown key 'validate\.memorization\.pixels'"):
        MemorizationConfig.from_section({"memorization": {"pixels": 16}})
