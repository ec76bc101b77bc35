"""The journal in PostgreSQL: the same stores as SQLite's, for a journal several machines share.

- :mod:`.database`: the two sessions (writing, reading), timeouts, reconnecting, whether
  PostgreSQL can be written, and the URL shown without its password;
- :mod:`.schema`: the tables, versioned in ``schema_version`` and migrated under an
  advisory lock;
- :mod:`.incidents`, :mod:`.alerts` (with its group-commit writer), :mod:`.deploys`: the
  SQL of each store;
- :mod:`.leadership`: the lease of a cluster of replicas, and its epoch;
- :mod:`.copy`: ``rollbackd journal migrate``, a SQLite journal copied in.

Opened by :func:`rollbackd.journal.open_journal` when ``[journal] url`` is set.
"""

from __future__ import annotations

from rollbackd.journal.postgresql import schema
from rollbackd.journal.postgresql.alerts import PostgresAlerts
from rollbackd.journal.postgresql.database import Database
from rollbackd.journal.postgresql.deploys import PostgresDeploys
from rollbackd.journal.postgresql.incidents import PostgresIncidents
from rollbackd.journal.postgresql.leadership import PostgresLeadership


class PostgresJournal(PostgresIncidents, PostgresAlerts, PostgresDeploys, PostgresLeadership):
    """The journal in a PostgreSQL database; safe to share between threads.

    ``url`` is a ``postgresql://`` URL; ``password`` (from ``password_file``) overrides the
    URL's; without either, libpq reads ``PGPASSFILE`` (or ``~/.pgpass``). ``timeout`` bounds
    connecting and every statement, in seconds. JournalError if it cannot be opened
    (unreachable, refused, a newer schema).
    """

    def __init__(self, url: str, *, password: str | None = None, timeout: float = 5.0) -> None:
        self.database = Database(url, schema.migrate, password=password, timeout=timeout)
        """The sessions and the write lock (tests reach into it, as into SQLite's)."""
        super().__init__(self.database)

    def problem(self) -> str | None:
        """Why the journal cannot be written now; None when it can (:meth:`Database.problem`)."""
        return self.database.problem()

    def close(self) -> None:
        """Write the deliveries already queued, then close; later calls are refused."""
        super().close()
        self.close_lease_session()
        self.database.close()


__all__ = ["Database", "PostgresJournal"]
