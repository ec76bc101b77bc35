"""The reliability suite prints its figures (rounds, kills, cycles, requests …) at the end.

With pytest-xdist each worker gathers the figures of the tests it ran and hands
them to the controller as it finishes; the controller prints them all once.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.reliability import figures

WORKER_OUTPUT = "rollbackd_reliability_figures"


def pytest_sessionfinish(session: pytest.Session) -> None:
    """On an xdist worker: hand this worker's figures to the controller."""
    output: dict[str, Any] | None = getattr(session.config, "workeroutput", None)
    if output is not None:
        output[WORKER_OUTPUT] = json.dumps(figures.snapshot())


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """On the xdist controller: take in the figures of a worker that finished."""
    sent = getattr(node, "workeroutput", {}).get(WORKER_OUTPUT)
    if sent:
        figures.merge(json.loads(sent))


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    """After every run that collected this package, print what the suite exercised."""
    if hasattr(config, "workerinput"):
        return  # a worker: the controller prints everything
    terminalreporter.write_sep("=", "rollbackd reliability suite: figures")
    for line in figures.lines():
        terminalreporter.write_line(line)
