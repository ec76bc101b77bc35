"""The pure core stays pure: no I/O imports, no clock reads."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "daemon" / "rollbackd"
PURE_MODULES = [
    "model.py",
    "durations.py",
    "rules.py",
    "matrix.py",
    "policy.py",
    "validation.py",
    "deploys.py",
    "engine.py",
]
ALLOWED_IMPORTS = {
    "__future__",
    "collections.abc",
    "dataclasses",
    "datetime",
    "enum",
    "functools",
    "math",
    "operator",
    "re",
    "itertools",
    "tomllib",
    "typing",
    "pydantic",
    "rollbackd.deploys",
    "rollbackd.durations",
    "rollbackd.errors",
    "rollbackd.matrix",
    "rollbackd.model",
    "rollbackd.policy",
    "rollbackd.rules",
    "rollbackd.validation",
}
CLOCK_CALLS = {"now", "utcnow", "today", "time", "monotonic", "perf_counter", "open", "sleep"}


def _imports(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_modules_import_no_io(module: str) -> None:
    """Rule evaluation, the matrix and the policy import nothing that does I/O."""
    tree = ast.parse((PACKAGE / module).read_text())
    assert _imports(tree) <= ALLOWED_IMPORTS, _imports(tree) - ALLOWED_IMPORTS


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_modules_never_read_the_clock(module: str) -> None:
    """Time is passed in: no now(), time(), sleep() or open() in the pure core."""
    tree = ast.parse((PACKAGE / module).read_text())
    called = {
        node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
    }
    assert not called & CLOCK_CALLS, called & CLOCK_CALLS
