"""The pure core stays pure: no I/O imports, no clock reads."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "daemon" / "rollbackd"
CORE = sorted(p.relative_to(PACKAGE).as_posix() for p in (PACKAGE / "core").glob("*.py"))
SUPPORT = ["text.py", "errors.py"]
"""Plain modules the core may lean on: they are held to the same rules."""
PURE_MODULES = [*CORE, *SUPPORT]
ALLOWED_IMPORTS = {
    "__future__",
    "collections.abc",
    "dataclasses",
    "datetime",
    "enum",
    "fnmatch",
    "functools",
    "itertools",
    "math",
    "operator",
    "re",
    "tomllib",
    "typing",
    "pydantic",
    "rollbackd.errors",
    "rollbackd.text",
    *(f"rollbackd.core.{Path(m).stem}" for m in CORE if m != "core/__init__.py"),
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


def test_the_core_is_every_module_of_the_core_package() -> None:
    """The purity checks below read every module of ``rollbackd.core``, the engine included."""
    assert {"core/engine.py", "core/incident.py", "core/recovery.py", "core/migrations.py"} <= set(
        CORE
    )


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
