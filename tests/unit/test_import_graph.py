"""The package's modules import each other in one direction: no cycle at module level, TYPE_CHECKING
imports included (a lazy import inside a function is a deliberate, documented exception)."""

from __future__ import annotations

import ast
from pathlib import Path

import synthcxr

ROOT = Path(synthcxr.__file__).parent


def module_imports(root: Path) -> dict[str, set[str]]:
    """``{module: modules of the package it imports at module level}`` for every ``.py`` under ``root``."""
    mods = {}
    for f in root.rglob("*.py"):
        parts = f.relative_to(root.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, f in mods.items():
        pkg = name if f.name == "__init__.py" else name.rsplit(".", 1)[0]
        body = []
        for node in ast.parse(f.read_text()).body:
            body += node.body if isinstance(node, ast.If) else [node]  # `if TYPE_CHECKING:` blocks count
        for n in body:
            if isinstance(n, ast.ImportFrom):
                base = pkg.split(".")[: len(pkg.split(".")) - (n.level - 1)] if n.level else []
                target = ".".join(base + ([n.module] if n.module else [])) if n.level else (n.module or "")
                cands = [target] + [f"{target}.{a.name}" for a in n.names]
            elif isinstance(n, ast.Import):
                cands = [a.name for a in n.names]
            else:
                continue
            edges[name] |= {c for c in cands if c in mods and c != name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles between modules, ignoring a package's own ``__init__`` importing its children."""
    found, state = [], {}

    def visit(u: str, path: list[str]) -> None:
        state[u] = 1
        for v in sorted(edges[u]):
            if u.startswith(v + "."):  # a submodule importing its package's __init__ is not a cycle of modules
                continue
            if state.get(v) == 1:
                found.append(path[path.index(v):] + [v])
            elif v not in state:
                visit(v, path + [v])
        state[u] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    return found


def test_checker_finds_a_type_checking_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub.b import X\n")
    (pkg / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import Y\nX = 1\n")
    assert cycles(module_imports(pkg)) == [["pkg.a", "pkg.sub.b", "pkg.a"]]
    (pkg / "sub" / "b.py").write_text("X = 1\n")
    assert cycles(module_imports(pkg)) == []


def test_package_has_no_import_cycle():
    assert cycles(module_imports(ROOT)) == []


MAX_MODULE_LINES = 400


def test_every_module_fits_in_400_lines():
    """A module holds one job; past 400 lines it has usually grown a second one to split out."""
    long = {str(p.relative_to(ROOT)): n for p in sorted(ROOT.rglob("*.py")) if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}
