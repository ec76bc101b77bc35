"""Shared fixtures: the repository's own files, and a runner for the real CLI.

Also the hooks that print the reliability suite's figures (rounds, kills,
cycles, requests …) at the end of a run. With pytest-xdist each worker gathers
the figures of the tests it ran and hands them to the controller as it
finishes; the controller prints them all once. (They are here, not in
``tests/reliability/conftest.py``: the xdist controller loads only this one.)
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.reliability import figures
from tests.support.cli import rollbackd
from tests.support.postgres import PostgresServer

WORKER_OUTPUT = "rollbackd_reliability_figures"
SHARED_SCOPES = ("class", "module", "package")
FIRST = ("tests/integration/", "tests/reliability/")
"""Where the long tests are (real Prometheus, apps, daemons, PostgreSQL): handed out first,
so that the short ones fill the workers' last minutes instead of one long file."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long tests first; and with ``--dist loadgroup``, the tests of a module that share a
    module-scoped process (a Prometheus, a daemon) stay on one worker, all others spread
    one by one."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        definitions = info.name2fixturedefs.values() if info is not None else ()
        if any(d.scope in SHARED_SCOPES for defs in definitions for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))

    def first(item: pytest.Item) -> bool:
        return not item.nodeid.startswith(FIRST)

    items.sort(key=first)


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
    """After a run, print what the reliability suite exercised (the controller prints it all)."""
    if hasattr(config, "workerinput") or not figures.FIGURES:
        return
    terminalreporter.write_sep("=", "rollbackd reliability suite: figures")
    for line in figures.lines():
        terminalreporter.write_line(line)


REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "tests" / "fixtures"
"""Webhook bodies captured from a real Alertmanager 0.25 (copied from shared/examples)."""


@pytest.fixture
def repo() -> Path:
    """The repository root (for config.example.toml and rules/)."""
    return REPO


RunCli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_cli(tmp_path: Path) -> RunCli:
    """Run ``rollbackd`` as a user would, in a fresh working directory."""

    def run(
        *args: str,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        return rollbackd(*args, cwd=cwd or tmp_path, env=env, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL for the session (per xdist worker): initdb once, not per test."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the session's PostgreSQL; its URL, password included."""
    if not postgres_server.running:  # a test stopped it and failed before starting it again
        postgres_server.start()
    return postgres_server.create_database()
