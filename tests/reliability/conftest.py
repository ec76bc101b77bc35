"""The reliability suite prints its figures (rounds, kills, cycles, requests …) at the end."""

from __future__ import annotations

import pytest

from tests.reliability import figures


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    """After every run that collected this package, print what the suite exercised."""
    terminalreporter.write_sep("=", "rollbackd reliability suite: figures")
    for line in figures.lines():
        terminalreporter.write_line(line)
