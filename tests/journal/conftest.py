"""One journal suite, every store: each test taking ``journal`` runs against each backend.

As APScheduler 4's tests do for its data stores: the fixture is parametrized by
backend, so that a behaviour the :class:`~rollbackd.journal.Journal` protocol
promises is checked on each implementation: in memory, in SQLite, and in a real
PostgreSQL (a fresh database of the session's server for each test).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rollbackd.journal import Journal, MemoryJournal, SqliteJournal, journal_path
from rollbackd.journal.postgresql import PostgresJournal
from tests.support.postgres import PostgresServer


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def journal(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Journal]:
    """A new, empty journal of each backend."""
    opened: Journal
    if request.param == "memory":
        opened = MemoryJournal()
    elif request.param == "sqlite":
        opened = SqliteJournal(journal_path(tmp_path))
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        opened = PostgresJournal(server.create_database())
    yield opened
    opened.close()
