"""The reliability suite's figures: what each test did, printed at the end of the run.

Tests add to a module-level registry (:func:`count`, :func:`record`); the
``pytest_terminal_summary`` hook in this package's ``conftest.py`` prints it
once the session ends, whether the suite ran alone or inside ``make test``.
Sections and names keep the order in which they were first written.
"""

from __future__ import annotations

import threading

Value = int | float | str

FIGURES: dict[str, dict[str, Value]] = {}
"""section (usually the test file's topic) → figure name → value."""

_lock = threading.Lock()


def count(section: str, name: str, amount: int = 1) -> None:
    """Add ``amount`` to a counting figure (created at 0)."""
    with _lock:
        figures = FIGURES.setdefault(section, {})
        current = figures.get(name, 0)
        figures[name] = (current if isinstance(current, int) else 0) + amount


def record(section: str, name: str, value: Value) -> None:
    """Set a figure to ``value`` (a seed, a duration, a list of outcomes)."""
    with _lock:
        FIGURES.setdefault(section, {})[name] = value


def snapshot() -> dict[str, dict[str, Value]]:
    """A copy of every figure so far (what an xdist worker hands to the controller)."""
    with _lock:
        return {section: dict(values) for section, values in FIGURES.items()}


def merge(other: dict[str, dict[str, Value]]) -> None:
    """Take in another process's figures: counts add up, anything else is kept as it came."""
    with _lock:
        for section, values in other.items():
            mine = FIGURES.setdefault(section, {})
            for name, value in values.items():
                current = mine.get(name)
                both_counts = isinstance(current, int) and isinstance(value, int)
                mine[name] = current + value if both_counts else value  # type: ignore[operator]


def lines() -> list[str]:
    """The figures as aligned lines, one per figure, grouped by section."""
    with _lock:
        snapshot = {section: dict(values) for section, values in FIGURES.items()}
    if not snapshot:
        return ["no reliability test ran in this session"]
    width = max(len(name) for values in snapshot.values() for name in values)
    out: list[str] = []
    for section, values in snapshot.items():
        out.append(f"{section}:")
        for name, value in values.items():
            shown = f"{value:.3g}" if isinstance(value, float) else str(value)
            out.append(f"  {name.ljust(width)}  {shown}")
    return out
