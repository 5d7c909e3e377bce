"""The settings of each named classifier run (the steering classifier, the checker) from the config section,
importable without torch so the workflow builds its DAG without loading it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def run_settings(section: Mapping[str, Any], run: str) -> dict:
    """Settings of one named classifier run: ``classifier.name`` or the checker ``classifier.checker.name``.

    The checker is an independently trained second classifier (own seed, width and architecture) that
    latent class optimisation is verified against, so its success is not judged by the model it fooled.
    ``section`` is the validated section (the schema has filled the checker's keys).
    """
    base = {k: v for k, v in section.items() if k != "checker"}
    checker = section["checker"]
    if checker["name"] == base["name"]:
        raise ValueError(f"classifier.checker.name must differ from classifier.name (both {base['name']!r})")
    if run == base["name"]:
        return {**base, "seed_offset": 0}
    if run == checker["name"]:
        return {**base, "name": checker["name"], "arch": checker["arch"], "width": checker["width"],
                "seed_offset": checker["seed_offset"]}
    raise ValueError(f"classifier run {run!r} is neither classifier.name nor classifier.checker.name ({[base['name'], checker['name']]})")
