"""The alert store in PostgreSQL: webhook deliveries and the alerts they carry, group-committed.

As in SQLite (:mod:`rollbackd.journal.sqlite.writer`): each delivery is queued to one
writer thread, which writes every delivery waiting at that moment in one transaction, each
inside a savepoint of its own, commits once, and only then answers each of them. The
webhook handler never waits on the network in the event loop, and one round trip to
PostgreSQL is paid per batch, not per delivery. Alerts are keyed by (fingerprint, startsAt):
a retried delivery changes nothing, and a resolved alert never goes back to firing.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Collection, Sequence
from concurrent.futures import Future
from datetime import datetime

from rollbackd.core.incident import AlertRecord, Delivery
from rollbackd.errors import JournalError, JournalUnavailable
from rollbackd.journal.codec import kept_optional_time, kept_time
from rollbackd.journal.postgresql.database import THE_WRITE_ITSELF, Connection, Database
from rollbackd.journal.postgresql.incidents import PostgresStore, _optional_utc, _utc
from rollbackd.journal.sqlite.writer import BATCH_ALERTS, BATCH_DELIVERIES, Queued
from rollbackd.logs import get_logger

log = get_logger("rollbackd.journal")


class PostgresAlerts(PostgresStore):
    """:class:`~rollbackd.journal.stores.AlertStore` in PostgreSQL."""

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self._queue: queue.SimpleQueue[Queued | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        """Write the deliveries already queued, then stop; later ones are refused."""
        with self._writer_lock:
            self._closed = True
            writer = self._writer
            if writer is not None and writer.is_alive():
                self._queue.put(None)
        if writer is not None:
            writer.join()

    def record_delivery(
        self, received_at: datetime, delivery: Delivery, body: str
    ) -> tuple[int, int]:
        """Journal one webhook delivery and its alerts at once; (new or changed, duplicates)."""
        return self.submit_delivery(received_at, delivery, body).result()

    def submit_delivery(
        self, received_at: datetime, delivery: Delivery, body: str
    ) -> Future[tuple[int, int]]:
        """Queue a delivery for the writer thread; the future is done once it is committed."""
        future: Future[tuple[int, int]] = Future()
        with self._writer_lock:
            if self._closed:
                raise JournalError(f"the journal {self.location} is closed")
            if self._writer is None or not self._writer.is_alive():
                if self._writer is not None:
                    log.error("the journal writer had stopped; starting it again")
                self._writer = threading.Thread(
                    target=self._write_deliveries, name="journal-writer", daemon=True
                )
                self._writer.start()
            self._queue.put(Queued(received_at, delivery, body, future))
        return future

    def _write_deliveries(self) -> None:
        """The writer thread: every delivery waiting, in one transaction, until closed."""
        while True:
            batch, stop = self._next_batch()
            try:
                if batch:
                    self._write_batch(batch)
            except BaseException as exc:  # never die silently: say it, fail the batch, go on
                log.exception("the journal writer failed a batch", deliveries=len(batch))
                error = JournalError(f"the journal {self.location}: {type(exc).__name__}")
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(error)
            if stop:
                return

    def _next_batch(self) -> tuple[list[Queued], bool]:
        """Wait for one delivery, then take every other one already waiting (up to a limit)."""
        batch: list[Queued] = []
        alerts = 0
        item = self._queue.get()
        while item is not None:
            if item.future.set_running_or_notify_cancel():  # a cancelled one is never written
                batch.append(item)
                alerts += len(item.delivery.alerts)
            if len(batch) >= BATCH_DELIVERIES or alerts >= BATCH_ALERTS:
                return batch, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, False
        return batch, True  # None: the journal is closing

    def _write_batch(self, batch: Sequence[Queued]) -> None:
        """One transaction, one commit; then each delivery's request is answered.

        A delivery PostgreSQL refuses for what it holds fails alone (its savepoint is
        rolled back); if the transaction cannot be committed, every delivery of the batch
        fails, and none of them is in the journal.
        """
        outcomes: list[tuple[int, int] | JournalError] = []
        try:
            with self._database.transaction() as db:
                for item in batch:
                    try:
                        with db.transaction():  # a savepoint
                            outcomes.append(_write_delivery(db, item))
                    except THE_WRITE_ITSELF as exc:
                        log.exception(
                            "a webhook delivery could not be journaled",
                            group_key=item.delivery.group_key,
                            alerts=len(item.delivery.alerts),
                        )
                        outcomes.append(
                            JournalError(
                                f"the journal {self.location} could not record this delivery: "
                                f"{self._database.reason(exc)}"
                            )
                        )
        except JournalUnavailable as exc:
            log.warning(
                "webhook deliveries refused: the journal cannot be written",
                deliveries=len(batch),
                reason=str(exc),
            )
            outcomes = [exc] * len(batch)
        except JournalError as exc:
            outcomes = [exc] * len(batch)
        for item, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, JournalError):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)

    def firing_alerts(
        self,
        now: datetime,
        services: Collection[str] | None = None,
        received_after: datetime | None = None,
    ) -> list[AlertRecord]:
        """The alerts firing at ``now``, oldest first (see the SQLite store's)."""
        at = kept_time(now)
        since = kept_optional_time(received_after)
        with self._database.read() as db:
            if services is None:
                rows = db.execute(_FIRING + " ORDER BY starts_at", (at, since, since)).fetchall()
            else:
                names = sorted(services)
                rows = db.execute(_FIRING_OF_SERVICES, (at, since, since, names)).fetchall()
                rows += db.execute(_ONE_FIRING_ELSEWHERE, (at, since, since, names)).fetchall()
                rows.sort(key=lambda r: r[1])
        return [
            AlertRecord(
                fingerprint=r[0],
                starts_at=_utc(r[1]),
                status=r[2],
                ends_at=_optional_utc(r[3]),
                service=r[4],
                name=r[5],
                labels=r[6],
                annotations=r[7],
            )
            for r in rows
        ]

    def deliveries(self) -> int:
        """How many webhook deliveries were journaled."""
        with self._database.read() as db:
            row = db.execute("SELECT count(*) FROM deliveries").fetchone()
        return int(row[0]) if row else 0


def _write_delivery(db: Connection, item: Queued) -> tuple[int, int]:
    """A delivery's alerts and the delivery itself; (new or changed, duplicates)."""
    delivery, when = item.delivery, kept_time(item.received_at)
    keys = [(a.fingerprint, kept_time(a.starts_at)) for a in delivery.alerts]
    known: dict[tuple[str, datetime], tuple[str, datetime | None]] = {}
    fingerprints = sorted({fingerprint for fingerprint, _ in keys})
    if fingerprints:
        for fingerprint, starts_at, status, ends_at in db.execute(
            "SELECT fingerprint, starts_at, status, ends_at FROM alerts"
            " WHERE fingerprint = ANY(%s) FOR UPDATE",
            (fingerprints,),
        ):
            known[(fingerprint, _utc(starts_at))] = (status, _optional_utc(ends_at))
    upserts: list[tuple[object, ...]] = []
    touched: list[tuple[object, ...]] = []
    for alert, key in zip(delivery.alerts, keys, strict=True):
        status, ends_at = alert.status, kept_optional_time(alert.ends_at)
        before = known.get(key)
        if before is not None and before[0] == "resolved":
            status, ends_at = "resolved", before[1] or ends_at  # never back to firing
        if before == (status, ends_at):
            touched.append((when, *key))
            continue
        known[key] = (status, ends_at)  # the same alert again in this delivery: a duplicate
        upserts.append(
            (
                *key,
                status,
                ends_at,
                alert.service,
                alert.name,
                json.dumps(dict(alert.labels)),
                json.dumps(dict(alert.annotations)),
                when,
                when,
            )
        )
    with db.cursor() as cursor:
        if upserts:
            cursor.executemany(
                "INSERT INTO alerts (fingerprint, starts_at, status, ends_at, service, name,"
                " labels, annotations, first_received, last_received)"
                " VALUES (%s,%s,%s,%s,%s,%s,%s::json,%s::json,%s,%s)"
                " ON CONFLICT (fingerprint, starts_at) DO UPDATE SET status = excluded.status,"
                " ends_at = excluded.ends_at, labels = excluded.labels,"
                " annotations = excluded.annotations, last_received = excluded.last_received",
                upserts,
            )
        if touched:
            cursor.executemany(
                "UPDATE alerts SET last_received = %s WHERE fingerprint = %s AND starts_at = %s",
                touched,
            )
    changed = len(upserts)
    duplicates = len(delivery.alerts) - changed
    db.execute(
        "INSERT INTO deliveries (received_at, source, group_key, status, alerts,"
        " duplicates, body) VALUES (%s,%s,%s,%s,%s,%s,%s)",
        (
            when,
            delivery.source,
            delivery.group_key,
            delivery.status,
            len(delivery.alerts),
            duplicates,
            item.body,
        ),
    )
    return changed, duplicates


_FIRING = (
    "SELECT fingerprint, starts_at, status, ends_at, service, name, labels, annotations"
    " FROM alerts WHERE status = 'firing' AND (ends_at IS NULL OR ends_at > %s)"
    " AND (%s::timestamptz IS NULL OR last_received > %s)"
)
_FIRING_OF_SERVICES = _FIRING + " AND service = ANY(%s) ORDER BY starts_at"
_ONE_FIRING_ELSEWHERE = _FIRING + " AND (service IS NULL OR NOT service = ANY(%s)) LIMIT 1"
