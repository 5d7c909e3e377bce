"""Render the config schema as docs/configuration.md, the reference of every config key.

``synthcxr config-doc`` rewrites the file; ``synthcxr config-doc --check`` exits 1 when the committed
file no longer matches the schema (the test suite runs it), so the schema stays the single source of
every key's meaning.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .config import REPO_ROOT, load_schema

DOC_PATH = REPO_ROOT / "docs" / "configuration.md"


def _resolve(node: Mapping[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """``node`` with a local ``$ref`` merged in (the node's own keys win)."""
    ref = node.get("$ref")
    if not ref:
        return dict(node)
    target: Any = schema
    for part in ref.lstrip("#/").split("/"):
        target = target[part]
    return {**_resolve(target, schema), **{k: v for k, v in node.items() if k != "$ref"}}


def _type_text(node: Mapping[str, Any]) -> str:
    if "enum" in node:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in node["enum"])
    t = node.get("type", "any")
    types = t if isinstance(t, list) else [t]
    text = " or ".join("null" if x == "null" else x for x in types)
    if "integer" in types or "number" in types:
        lo = node.get("minimum", node.get("exclusiveMinimum"))
        hi = node.get("maximum", node.get("exclusiveMaximum"))
        if lo is not None or hi is not None:
            left = "" if lo is None else f"{lo} {'<' if 'exclusiveMinimum' in node else '≤'} "
            right = "" if hi is None else f" {'<' if 'exclusiveMaximum' in node else '≤'} {hi}"
            text += f" ({left}x{right})"
    if node.get("type") == "array" and isinstance(node.get("items"), Mapping) and "enum" in node["items"]:
        text += " of " + ", ".join(f"`{v}`" for v in node["items"]["enum"])
    return text


def _default_text(node: Mapping[str, Any]) -> str:
    if "default" not in node:
        return "required" if node.get("_required") else "—"
    return f"`{json.dumps(node['default'], separators=(', ', ': '))}`"


def iter_keys(schema: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(dotted key, resolved schema node)`` for every key, parents before children, in schema order."""

    def walk(node: Mapping[str, Any], prefix: str) -> Iterator[tuple[str, dict[str, Any]]]:
        required = set(node.get("required", []))
        for key, sub in (node.get("properties") or {}).items():
            full = f"{prefix}{key}"
            res = _resolve(sub, schema)
            res["_required"] = key in required
            yield full, res
            if res.get("type") == "object" and "properties" in res:
                yield from walk(res, f"{full}.")

    yield from walk(schema, "")


def undocumented(schema: Mapping[str, Any] | None = None) -> list[str]:
    """Dotted keys whose schema node has no ``description``."""
    schema = schema or load_schema()
    return [k for k, node in iter_keys(schema) if not str(node.get("description", "")).strip()]


def render(schema: Mapping[str, Any] | None = None) -> str:
    """The Markdown of docs/configuration.md."""
    schema = schema or load_schema()
    lines = [
        "# Configuration reference",
        "",
        "<!-- generated from config/schemas/config.schema.yaml by `synthcxr config-doc`; do not edit by hand -->",
        "",
        " ".join(str(schema.get("description", "")).split()),
        "",
        "Every key below is checked against the schema before any rule runs: an unknown key, a wrong type or an",
        "inconsistent value stops the workflow with a message that names the key. \"required\" keys have no",
        "default; `config/config.yaml` sets them for the phantom demo, and `config/examples/*.yaml` for real",
        "collections.",
        "",
    ]
    sections: list[tuple[str, list[tuple[str, dict[str, Any]]]]] = []
    for key, node in iter_keys(schema):
        top = key.split(".", 1)[0]
        if not sections or sections[-1][0] != top:
            sections.append((top, []))
        sections[-1][1].append((key, node))
    globals_ = [(k, n) for top, rows in sections for k, n in rows if "." not in k and n.get("type") != "object"]
    lines += ["## Global keys", "", "| key | type | default | what it does |", "|---|---|---|---|"]
    lines += [_row(k, n) for k, n in globals_]
    lines.append("")
    for top, rows in sections:
        head = rows[0][1]
        if head.get("type") != "object":
            continue
        lines += [f"## `{top}`", "", " ".join(str(head.get("description", "")).split()), "", "| key | type | default | what it does |", "|---|---|---|---|"]
        lines += [_row(k, n) for k, n in rows[1:]]
        lines.append("")
    return "\n".join(lines)


def _row(key: str, node: Mapping[str, Any]) -> str:
    desc = " ".join(str(node.get("description", "")).split()).replace("|", "\\|")
    kind = "object" if node.get("type") == "object" else _type_text(node)
    return f"| `{key}` | {kind} | {_default_text(node)} | {desc} |"


def cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="synthcxr config-doc", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(DOC_PATH), help="where to write (default: docs/configuration.md)")
    ap.add_argument("--check", action="store_true", help="exit 1 if the file differs from the schema instead of writing it")
    args = ap.parse_args(argv)
    missing = undocumented()
    if missing:
        print(f"config schema: key(s) without a description: {', '.join(missing)}", file=sys.stderr)
        return 1
    text = render()
    out = Path(args.out)
    if args.check:
        if not out.exists() or out.read_text() != text:
            print(f"{out} is out of date with config/schemas/config.schema.yaml; run 'synthcxr config-doc'", file=sys.stderr)
            return 1
        print(f"{out} matches the schema")
        return 0
    from .utils.atomic import write_text

    write_text(out, text)
    print(f"wrote {out}")
    return 0
