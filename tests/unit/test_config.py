"""Config schema: the default validates; unknown keys, wrong types and bad values are errors naming the key."""

from __future__ import annotations

import copy

import pytest
import yaml

from synthcxr.config import REPO_ROOT, ConfigError, deep_merge, load_config, validate_config


@pytest.fixture()
def raw() -> dict:
    with open(REPO_ROOT / "config" / "config.yaml") as fh:
        return yaml.safe_load(fh)


def _error(cfg: dict) -> str:
    with pytest.raises(ConfigError) as exc:
        validate_config(cfg)
    return str(exc.value)


def test_default_config_is_valid():
    cfg = load_config(REPO_ROOT / "config" / "config.yaml")
    assert cfg["dataset"]["format"] == "phantom"
    assert cfg["pggan"]["resolution"] <= cfg["dataset"]["max_res"]


@pytest.mark.parametrize("example", sorted((REPO_ROOT / "config" / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_valid(example):
    # Snakemake merges --configfile over config/config.yaml; validate the same merge.
    with open(REPO_ROOT / "config" / "config.yaml") as fh:
        base = yaml.safe_load(fh)
    with open(example) as fh:
        cfg = validate_config(deep_merge(base, yaml.safe_load(fh)))
    assert cfg["pggan"]["resolution"] == 1024 and cfg["dataset"]["max_res"] == 1024
    assert cfg["dataset"]["format"] != "phantom" and cfg["dataset"]["root"]


def test_unknown_top_level_key(raw):
    raw["pgan"] = {}
    msg = _error(raw)
    assert "unknown key 'pgan'" in msg and "the top level" in msg


def test_unknown_nested_key_is_named_with_its_path(raw):
    raw["pggan"]["lrr"] = 0.1
    msg = _error(raw)
    assert "'pggan.lrr'" in msg
    assert "allowed keys" in msg and "lr" in msg


def test_wrong_type_names_the_key(raw):
    raw["pggan"]["lr"] = "fast"
    assert "'pggan.lr': 'fast' is not of type 'number'" in _error(raw)


def test_wrong_type_deep_key(raw):
    raw["classifier"]["augment"]["hflip"] = "no"
    assert "'classifier.augment.hflip'" in _error(raw)


@pytest.mark.parametrize("res", [12, 64, 128])
def test_feature_res_must_be_a_block_below_the_generator_output(raw, res):
    raw["pggan"]["resolution"] = 64
    raw["lco"]["feature_res"] = res
    msg = _error(raw)
    assert "'lco.feature_res'" in msg and f"{res} is not a generator block" in msg and "4 to 32" in msg


@pytest.mark.parametrize("key, value", [("realism_quantile", 1.0), ("realism_quantile", 0), ("realism_weight", -0.5),
                                        ("margin_real_pass", 0), ("margin_real_pass", 1.5)])
def test_realism_gate_and_margin_keys_are_checked_by_name(raw, key, value):
    raw["lco"][key] = value
    assert f"'lco.{key}'" in _error(raw)


def test_margin_real_pass_needs_a_margin_quantile_to_lower(raw):
    raw["lco"]["margin_real_pass"] = 0.5
    raw["lco"]["margin_quantile"] = None
    msg = _error(raw)
    assert "'lco.margin_real_pass'" in msg and "set margin_quantile too" in msg
    raw["lco"]["margin_quantile"] = 0.5
    validate_config(raw)


def test_enum_violation(raw):
    raw["dataset"]["format"] = "png-folder"
    msg = _error(raw)
    assert "'dataset.format'" in msg and "png-folder" in msg


def test_several_problems_all_reported(raw):
    raw["seed"] = -1
    raw["lco"]["steps"] = 0
    raw["archive"]["formats"] = ["zip"]
    msg = _error(raw)
    assert "3 problem(s)" in msg
    for key in ("'seed'", "'lco.steps'", "'archive.formats.0'"):
        assert key in msg


def test_missing_required_key(raw):
    del raw["dataset"]["format"]
    assert "'format' is a required property" in _error(raw)


def test_non_power_of_two_resolution(raw):
    raw["dataset"]["max_res"] = 48
    assert "'dataset.max_res'" in _error(raw)


def test_real_format_requires_root(raw):
    raw["dataset"]["format"] = "nih"
    raw["dataset"]["root"] = None
    msg = _error(raw)
    assert "'dataset.root'" in msg and "nih" in msg


def test_split_must_sum_to_one(raw):
    raw["dataset"]["split"] = {"train": 0.8, "val": 0.15, "test": 0.15, "seed": 0}
    assert "'dataset.split'" in _error(raw)


def test_unknown_label_name(raw):
    raw["labels"] = ["Cardiomegaly", "Pleural Effusion"]
    msg = _error(raw)
    assert "Pleural Effusion" in msg and "canonical" in msg


def test_gan_resolution_above_pyramid(raw):
    raw["pggan"]["resolution"] = 128
    assert "'pggan.resolution'" in _error(raw)


def test_defaults_are_filled(raw):
    del raw["validate"]["pr_k"]
    del raw["archive"]["compression"]
    cfg = validate_config(copy.deepcopy(raw))
    assert cfg["validate"]["pr_k"] == 3
    assert cfg["archive"]["compression"] == "gzip"


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_are_deep_merged(tmp_path):
    cfg = load_config(REPO_ROOT / "config" / "config.yaml", overrides={"pggan": {"lr": 0.002}})
    assert cfg["pggan"]["lr"] == 0.002 and cfg["pggan"]["run"] == "demo"
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}}


def test_section_is_independent_of_key_order(raw):
    from synthcxr.config import section

    a = validate_config(copy.deepcopy(raw))
    shuffled = {k: (dict(reversed(list(v.items()))) if isinstance(v, dict) else v) for k, v in reversed(list(raw.items()))}
    b = validate_config(shuffled)
    for name in ("dataset", "pggan", "classifier", "lco"):
        assert repr(section(a, name)) == repr(section(b, name))
        assert section(a, name)["seed"] == raw["seed"]



def test_section_keeps_only_the_keys_a_rule_reads(raw):
    from synthcxr.config import section

    cfg = validate_config(copy.deepcopy(raw))
    part = section(cfg, "validate", ["pr_k", "memorization"])
    assert set(part) == {"pr_k", "memorization", "seed", "device", "labels"}
    assert part["memorization"] == cfg["validate"]["memorization"] and part["labels"] == cfg["labels"]
    assert set(section(cfg, "validate", [])) == {"seed", "device", "labels"}
    # a key the rule needs but the section lacks fails loudly, naming it
    with pytest.raises(KeyError, match=r"config section 'validate' has no key\(s\) \['kid_subset'\]"):
        section(cfg, "validate", ["kid_subset"])
    # editing a key outside the subset leaves the params text unchanged
    edited = copy.deepcopy(cfg)
    edited["validate"]["lco_prior_samples"] += 1
    assert repr(section(edited, "validate", ["pr_k", "memorization"])) == repr(part)
