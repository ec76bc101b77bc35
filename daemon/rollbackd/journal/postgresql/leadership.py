"""The lease of a cluster of replicas in PostgreSQL: one row per cluster in ``leadership``.

Taken and renewed by one compare and set (``INSERT ... ON CONFLICT DO UPDATE ... WHERE``):
the row changes only for its holder, or once its lease ran out, by the server's clock
(``now()``), never a replica's. The epoch grows each time the lease is taken rather than
renewed, by another replica or by the same one after it ran out: each term of a leader
has its own, and the writes of a term are fenced by it (:meth:`Database.fenced`).

Not an advisory lock: a session lock is freed when PostgreSQL ends the session (a backend
killed, a TCP connection timed out) while the replica that held it still believes it
leads, and it carries no epoch that a late write could be checked against.

The lease has a session of its own, so that a renewal never waits behind the journal's
writes (a burst of webhooks), and each claim is bounded by a third of the lease, by the
server (``statement_timeout``) and by the client's own deadline (the journal's watchdog: a
frozen path is never answered, and the server never sees the statement to time it out).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from datetime import timedelta
from typing import Any

import psycopg

from rollbackd.errors import JournalError, JournalUnavailable
from rollbackd.journal.postgresql.database import THE_WRITE_ITSELF, Connection, Database
from rollbackd.journal.postgresql.incidents import PostgresStore, _utc
from rollbackd.journal.stores import Lease

CLAIM = """
INSERT INTO leadership AS l (cluster, holder, epoch, expires_at, acquired_at, renewed_at)
VALUES (%(cluster)s, %(replica)s, 1, now() + %(lease)s, now(), now())
ON CONFLICT (cluster) DO UPDATE SET
    holder = excluded.holder,
    epoch = CASE WHEN l.holder = excluded.holder AND l.expires_at > now()
                 THEN l.epoch ELSE l.epoch + 1 END,
    acquired_at = CASE WHEN l.holder = excluded.holder AND l.expires_at > now()
                       THEN l.acquired_at ELSE now() END,
    expires_at = excluded.expires_at,
    renewed_at = now()
WHERE l.holder = excluded.holder OR l.expires_at <= now()
RETURNING holder, epoch, expires_at, greatest(expires_at - now(), interval '0')
"""
"""Take the lease (free, or run out) or renew it (held by the claimant and not run out: the
same epoch); no row comes back when another replica holds it."""
CURRENT = (
    "SELECT holder, epoch, expires_at, greatest(expires_at - now(), interval '0')"
    " FROM leadership WHERE cluster = %s"
)


class PostgresLeadership(PostgresStore):
    """:class:`~rollbackd.journal.stores.Leadership` in PostgreSQL."""

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self._lease_lock = threading.Lock()
        self._lease_session: Connection | None = None

    def claim(self, cluster: str, replica: str, lease: timedelta) -> Lease:
        params = {"cluster": cluster, "replica": replica, "lease": lease}
        bound = lease / 3
        with (
            self._session(bound) as db,
            self._database.watchdog.bounded(db, bound.total_seconds()),
            db.transaction(),
        ):
            row = db.execute(CLAIM, params).fetchone()
            if row is None:
                row = db.execute(CURRENT, (cluster,)).fetchone()
        assert row is not None  # noqa: S101 -- the row exists once INSERT ... ON CONFLICT ran
        return _lease(row)

    def lease(self, cluster: str) -> Lease | None:
        with self._database.read() as db:
            row = db.execute(CURRENT, (cluster,)).fetchone()
        if row is None:
            return None
        return _lease(row)

    def release(self, cluster: str, replica: str) -> None:
        bound = timedelta(seconds=self._database.timeout)
        with self._session(bound) as db, self._database.watchdog.bounded(db, bound.total_seconds()):
            db.execute(
                "UPDATE leadership SET expires_at = now(), renewed_at = now()"
                " WHERE cluster = %s AND holder = %s AND expires_at > now()",
                (cluster, replica),
            )

    def fenced(self, cluster: str, epoch: int) -> AbstractContextManager[None]:
        return self._database.fenced(cluster, epoch)

    @contextmanager
    def _session(self, bound: timedelta) -> Iterator[Connection]:
        """The lease's own session (opened at need, dropped on any failure); errors as
        JournalUnavailable (JournalError for a statement refused), without the password.
        Not counted in :meth:`Database.problem`: that is about the journal's writes."""
        with self._lease_lock:
            self._database.refuse_if_closed()
            try:
                if self._lease_session is None or self._lease_session.closed:
                    seconds = min(max(bound.total_seconds(), 0.2), self._database.timeout)
                    self._lease_session = self._database.connect(statement_timeout=seconds)
                yield self._lease_session
            except psycopg.Error as exc:
                session, self._lease_session = self._lease_session, None
                where = f"the journal {self._database.location}"
                reason = self._database.reason(exc, session)
                if session is not None:
                    with suppress(psycopg.Error):
                        session.close()
                if isinstance(exc, THE_WRITE_ITSELF):
                    raise JournalError(f"{where}: the lease: {reason}") from None
                raise JournalUnavailable(f"{where} cannot be reached: {reason}") from None

    def _close_lease_session(self) -> None:
        if self._lease_session is not None:
            with suppress(psycopg.Error):
                self._lease_session.close()
            self._lease_session = None

    def close_lease_session(self) -> None:
        """Close the lease's session (the journal's close does)."""
        with self._lease_lock:
            self._close_lease_session()


def _lease(row: tuple[Any, ...]) -> Lease:
    return Lease(holder=row[0], epoch=int(row[1]), expires_at=_utc(row[2]), remaining=row[3])
