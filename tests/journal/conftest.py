"""One journal suite, every store: each test taking ``journal`` runs against each backend.

As APScheduler 4's tests do for its data stores: the fixture is parametrized by
backend, so that a behaviour the :class:`~rollbackd.journal.Journal` protocol
promises is checked on each implementation (a PostgreSQL one joins the list).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rollbackd.journal import Journal, MemoryJournal, SqliteJournal, journal_path


@pytest.fixture(params=["memory", "sqlite"])
def journal(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Journal]:
    """A new, empty journal of each backend."""
    opened: Journal = (
        MemoryJournal() if request.param == "memory" else SqliteJournal(journal_path(tmp_path))
    )
    yield opened
    opened.close()
