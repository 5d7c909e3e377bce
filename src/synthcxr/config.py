"""Load the workflow config and validate it against config/schemas/config.schema.yaml.

Validation happens before any rule runs (common.smk calls :func:`validate_config`), fills schema
defaults, and turns jsonschema's errors into one message per problem that names the dotted key.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, validators

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "config" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The configuration is invalid; the message names every offending key."""


def _with_defaults(base):
    validate_props = base.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_props(validator, properties, instance, schema)

    return validators.extend(base, {"properties": set_defaults})


_DefaultingValidator = _with_defaults(Draft202012Validator)


def load_schema(path: str | os.PathLike | None = None) -> dict:
    with open(path or SCHEMA_PATH) as fh:
        return yaml.safe_load(fh)


def _path_of(error, prefix: str = "") -> list[str]:
    return ([prefix] if prefix else []) + [str(p) for p in error.absolute_path]


def _key_of(error, prefix: str = "") -> str:
    parts = _path_of(error, prefix)
    return ".".join(parts) if parts else "<top level>"


def _describe(error, prefix: str = "") -> str:
    """One line per problem naming the dotted key; ``prefix`` is the section the instance was (``lco``)."""
    key = _key_of(error, prefix)
    if error.validator == "additionalProperties":
        allowed = sorted((error.schema.get("properties") or {}).keys())
        extra = sorted(set(error.instance) - set(allowed))
        where = f"'{key}'" if key != "<top level>" else "the top level"
        names = ", ".join(f"'{'.'.join([*_path_of(error, prefix), e])}'" for e in extra)
        return f"unknown key {names} in {where}; allowed keys: {', '.join(allowed)}"
    if error.validator == "required":
        return f"'{key}': {error.message}"
    return f"'{key}': {error.message}"


def validate_config(config: dict, schema: dict | None = None) -> dict:
    """Validate ``config`` in place (schema defaults are filled in) and return it.

    Raises :class:`ConfigError` listing each problem with its dotted key, e.g.
    ``'pggan.lr': 'fast' is not of type 'number'``.
    """
    schema = schema if schema is not None else load_schema()
    validator = _DefaultingValidator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if errors:
        lines = "\n".join(f"  - {_describe(e)}" for e in errors)
        raise ConfigError(f"invalid configuration ({len(errors)} problem(s)):\n{lines}")
    _cross_checks(config)
    return config


def _cross_checks(config: dict) -> None:
    """Rules jsonschema cannot express cleanly."""
    from .labels import check_labels

    try:
        check_labels(config["labels"], where="labels")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    ds = config["dataset"]
    if ds["format"] != "phantom" and not ds.get("root"):
        raise ConfigError(f"'dataset.root': required for dataset.format '{ds['format']}' (the folder holding the dataset)")
    res = ds["max_res"]
    if res & (res - 1):
        raise ConfigError(f"'dataset.max_res': {res} is not a power of two")
    split = ds["split"]
    total = split["train"] + split["val"] + split["test"]
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(f"'dataset.split': train+val+test must sum to 1, got {total:g}")
    pairs = config["archive"]["pairs"]
    findings = [n for n in config["labels"] if n != "No_Finding"]
    for f in pairs["findings"]:
        if f not in findings:
            raise ConfigError(f"'archive.pairs.findings': {f!r} is not one of the findings in labels ({', '.join(findings)})")
    if pairs["share"] > 0 and not pairs["findings"]:
        raise ConfigError("'archive.pairs.share': pairs need at least one finding to edit in 'archive.pairs.findings'")
    if pairs["share"] > 0 and pairs["embed_weight"] > 0 and not config["validate"]["reid"]["enabled"]:
        raise ConfigError("'archive.pairs.embed_weight': the embedding proximity is steered and graded with patient verifiers "
                          "trained from validate.reid; set validate.reid.enabled: true or archive.pairs.embed_weight: 0")
    if pairs["share"] > 0 and config["lco"]["shard_size"] < len(pairs["findings"]) + 1:
        raise ConfigError(f"'lco.shard_size': {config['lco']['shard_size']} cannot hold a base and its "
                          f"{len(pairs['findings'])} variant(s) (archive.pairs.findings); a pair never spans two shards")
    if config["lco"]["margin_real_pass"] is not None and config["lco"]["margin_quantile"] is None:
        raise ConfigError("'lco.margin_real_pass': it lowers lco.margin_quantile from its configured value; set margin_quantile "
                          "too (e.g. 0.5) or margin_real_pass: null")
    fres, gres = config["lco"]["feature_res"], config["pggan"]["resolution"]
    if fres is not None and (fres & (fres - 1) or fres >= gres):
        raise ConfigError(f"'lco.feature_res': {fres} is not a generator block below its output (powers of two from 4 "
                          f"to {gres // 2} at pggan.resolution {gres}); set one of those or null")
    if config["pggan"]["resolution"] > res:
        raise ConfigError(
            f"'pggan.resolution': {config['pggan']['resolution']} exceeds 'dataset.max_res' {res}; "
            "prepare a larger pyramid or lower the GAN resolution"
        )


def read_config_file(path: str | os.PathLike) -> dict:
    """The mapping in one YAML config file, not validated; a ConfigError names a missing or non-mapping file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    with open(p) as fh:
        cfg = yaml.safe_load(fh) or {}
    if not isinstance(cfg, dict):
        raise ConfigError(f"config file {p}: top level must be a mapping")
    return cfg


def load_config(path: str | os.PathLike, overrides: dict | None = None) -> dict:
    """Read a YAML config, apply ``overrides`` (deep-merged), validate and return it."""
    cfg = read_config_file(path)
    if overrides:
        cfg = deep_merge(cfg, overrides)
    return validate_config(cfg)


def deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


GLOBAL_KEYS = ("seed", "device", "labels")


def section_schema(name: str, schema: dict | None = None) -> dict:
    """The schema of section ``name`` (dotted for a nested one, e.g. ``lco.plan``), ``$defs`` attached."""
    schema = schema if schema is not None else _schema()
    sub = schema
    for part in name.split("."):
        try:
            sub = sub["properties"][part]
        except KeyError:
            raise KeyError(f"the config schema has no section {name!r}") from None
    return {**sub, "$defs": schema.get("$defs", {})}


def filled(name: str, values: Any, schema: dict | None = None) -> dict[str, Any]:
    """Section ``name`` of the config as a rule passes it (or part of it), checked against the schema, with
    the schema's defaults for the keys it leaves out; the global keys (seed, device, labels) it carries are
    kept, and those it lacks get their schema defaults where there are any. A ConfigError names ``name.key``."""
    schema = schema if schema is not None else _schema()
    sub = section_schema(name, schema)
    sec = copy.deepcopy(dict(values))
    glob = {k: sec.pop(k) for k in GLOBAL_KEYS if k in sec and k not in sub.get("properties", {})}
    loose = {k: v for k, v in sub.items() if k != "required"}  # a caller may pass part of a section
    errors = sorted(_DefaultingValidator(loose).iter_errors(sec), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if errors:
        lines = "\n".join(f"  - {_describe(e, name)}" for e in errors)
        raise ConfigError(f"invalid '{name}' section ({len(errors)} problem(s)):\n{lines}")
    top = schema.get("properties", {})
    for k in GLOBAL_KEYS:
        if k not in sec and k not in glob and "default" in top.get(k, {}):
            glob[k] = copy.deepcopy(top[k]["default"])
    return {**glob, **sec}


def build(cls: type, name: str, values: Any, schema: dict | None = None, **extra: Any):
    """An instance of the dataclass ``cls`` from section ``name`` of the config: the one way stages read config.

    ``values`` is the section as a rule passes it (:func:`section`: the global seed, device and labels
    merged in), filled and checked by :func:`filled`. Each field of ``cls`` takes the key of its name;
    ``extra`` sets fields the section does not hold. A field with no key, no schema default and no
    ``extra`` is an error naming it. Keys the class has no field for are left to the classes of their own
    sections (``lco.plan``).
    """
    sec = filled(name, values, schema)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in extra:
            out[f.name] = extra[f.name]
        elif f.name in sec:
            out[f.name] = sec[f.name]
        else:
            where = f"'{f.name}'" if f.name in GLOBAL_KEYS else f"'{name}.{f.name}'"
            raise ConfigError(f"{where}: missing, and the schema has no default for it (needed by {cls.__name__})")
    return cls(**out)


def keys_for(cls: type, name: str, schema: dict | None = None) -> list[str]:
    """The keys of section ``name`` that the dataclass ``cls`` has fields for: what a rule passes it as params,
    so a rule reruns when one of them changes, and only then."""
    props = section_schema(name, schema if schema is not None else _schema()).get("properties", {})
    return [f.name for f in dataclasses.fields(cls) if f.name in props]


_SCHEMA_CACHE: dict | None = None


def _schema() -> dict:
    global _SCHEMA_CACHE
    if _SCHEMA_CACHE is None:
        _SCHEMA_CACHE = load_schema()
    return _SCHEMA_CACHE


def section(config: dict, name: str, keys: Iterable[str] | None = None) -> dict[str, Any]:
    """Return a stage's config section merged with the global keys it needs (seed, device, labels).

    With ``keys``, only those keys of the section are kept (a missing one is a KeyError naming it), so a
    rule that reads part of a shared section (``validate``) is not rerun when another part changes.
    Keys are sorted recursively: Snakemake compares rule params by their text, so the order in
    which keys were written in a YAML file must not look like a change.
    """
    sec = dict(config[name])
    if keys is not None:
        keys = list(keys)
        missing = [k for k in keys if k not in sec]
        if missing:
            raise KeyError(f"config section '{name}' has no key(s) {missing}")
        sec = {k: sec[k] for k in keys}
    for k in ("seed", "device", "labels"):
        sec.setdefault(k, config[k])
    return _sorted_keys(sec)


def _sorted_keys(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _sorted_keys(obj[k]) for k in sorted(obj, key=str)}
    if isinstance(obj, list):
        return [_sorted_keys(v) for v in obj]
    return obj
