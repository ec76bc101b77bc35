"""The journal in one SQLite file: the stores' SQL on one :class:`Database`.

- :mod:`.database`: connections, transactions, checkpoints, whether the file can be written;
- :mod:`.schema`: the tables, versioned and migrated forward on open;
- :mod:`.writer`: group commit of webhook deliveries (one writer thread);
- :mod:`.incidents`, :mod:`.alerts`, :mod:`.deploys`: the SQL of each store.
"""

from __future__ import annotations

from pathlib import Path

from rollbackd.journal.sole import SoleLeadership
from rollbackd.journal.sqlite import schema
from rollbackd.journal.sqlite.alerts import SqliteAlerts
from rollbackd.journal.sqlite.database import Database
from rollbackd.journal.sqlite.deploys import SqliteDeploys
from rollbackd.journal.sqlite.incidents import SqliteIncidents


class SqliteJournal(SqliteIncidents, SqliteAlerts, SqliteDeploys, SoleLeadership):
    """The journal in one SQLite file (``:memory:``: a database of its own); safe to share
    between threads."""

    def __init__(self, path: Path) -> None:
        self.database = Database(path, schema.migrate)
        """The file, its connections and its write lock (SQLite's own tests reach into it)."""
        super().__init__(self.database)

    @property
    def location(self) -> str:
        return str(self.path)

    def problem(self) -> str | None:
        """Why the journal cannot be written now; None when it can (:meth:`Database.problem`)."""
        return self.database.problem()

    def close(self) -> None:
        """Write the deliveries already queued, then close; later ones are refused."""
        super().close()
        self.database.close()


def journal_path(state_dir: Path) -> Path:
    """Where the journal lives in the daemon's state directory."""
    return state_dir / "journal.sqlite3"


__all__ = ["Database", "SqliteJournal", "journal_path"]
