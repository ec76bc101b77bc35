"""The alert store in PostgreSQL: webhook deliveries and the alerts they carry, group-committed.

As in SQLite (:mod:`rollbackd.journal.sqlite.writer`): each delivery is queued to one
writer thread, which writes every delivery waiting at that moment in one transaction,
commits once, and only then answers each of them. The webhook handler never waits on the
network in the event loop, and a few round trips to PostgreSQL are paid per batch, not per
delivery (see :meth:`PostgresAlerts._write_batch`). Alerts are keyed by (fingerprint, startsAt):
a retried delivery changes nothing, and a resolved alert never goes back to firing.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

import orjson

from rollbackd.core.incident import AlertRecord, Delivery
from rollbackd.errors import JournalError, JournalUnavailable
from rollbackd.journal.codec import encode_time, kept_optional_time, kept_time
from rollbackd.journal.postgresql.database import (
    THE_WRITE_ITSELF,
    Database,
    Plain,
    kept_text,
)
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

        The whole batch is written by two prepared statements besides BEGIN and COMMIT (its
        alerts read and locked; then its alerts and deliveries written), whatever its size,
        spoken to libpq itself (:meth:`Database.plain`): PostgreSQL is a round trip away, one
        per delivery would cap the journal far below what Alertmanager can send, and on two
        cores shared with PostgreSQL the client's CPU per round trip counts as much.
        If PostgreSQL refuses the batch for what it holds, it is written again one delivery
        at a time, each in a savepoint, so that the delivery at fault fails alone.
        If the transaction cannot be committed, every delivery of the batch fails, and none
        of them is in the journal.
        """
        try:
            try:
                with self._database.plain(settings=_LOOKUP_BY_INDEX) as db:
                    outcomes: list[tuple[int, int] | JournalError] = list(
                        _write_deliveries(db, batch)
                    )
            except JournalError as exc:
                if len(batch) == 1 or not isinstance(exc.__cause__, THE_WRITE_ITSELF):
                    raise
                outcomes = self._write_one_by_one(batch)
        except JournalUnavailable as exc:
            log.warning(
                "webhook deliveries refused: the journal cannot be written",
                deliveries=len(batch),
                reason=str(exc),
            )
            outcomes = [exc] * len(batch)
        except JournalError as exc:
            if len(batch) == 1 and isinstance(exc.__cause__, THE_WRITE_ITSELF):
                exc = self._refused(batch[0], exc.__cause__)
            outcomes = [exc] * len(batch)
        for item, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, JournalError):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)

    def _write_one_by_one(self, batch: Sequence[Queued]) -> list[tuple[int, int] | JournalError]:
        """The batch again, each delivery in a savepoint of its own (one was refused)."""
        outcomes: list[tuple[int, int] | JournalError] = []
        with self._database.plain(settings=_LOOKUP_BY_INDEX) as db:
            for item in batch:
                db.run(b"SAVEPOINT one")
                try:
                    outcomes.extend(_write_deliveries(db, [item]))
                except THE_WRITE_ITSELF as exc:
                    db.run(b"ROLLBACK TO SAVEPOINT one; RELEASE SAVEPOINT one")
                    outcomes.append(self._refused(item, exc))
                else:
                    db.run(b"RELEASE SAVEPOINT one")
        return outcomes

    def _refused(self, item: Queued, exc: BaseException) -> JournalError:
        """The error of a delivery PostgreSQL refused for what it holds; said in the log."""
        reason = self._database.reason(exc)
        log.error(
            "a webhook delivery could not be journaled",
            group_key=item.delivery.group_key,
            alerts=len(item.delivery.alerts),
            reason=reason,
        )
        return JournalError(f"the journal {self.location} could not record this delivery: {reason}")

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


def _write_deliveries(db: Plain, batch: Sequence[Queued]) -> list[tuple[int, int]]:
    """Deliveries' alerts and the deliveries themselves, in the order they came; for each,
    (new or changed alerts, duplicates). Each delivery sees what those before it wrote."""
    kept = _KeptTimes()
    keyed = [[(a.fingerprint, kept(a.starts_at)) for a in item.delivery.alerts] for item in batch]
    known: dict[tuple[str, datetime], tuple[str, datetime | None]] = {}
    fingerprints = sorted({fingerprint for keys in keyed for fingerprint, _ in keys})
    if fingerprints:
        locked = db.prepared(b"rollbackd_lock_alerts", _LOCK_ALERTS, _text_array(fingerprints))
        for fingerprint, starts_at, status, ends_at in orjson.loads(
            locked.get_value(0, 0) or b"[]"
        ):
            known[(fingerprint, _time(starts_at))] = (
                status,
                None if ends_at is None else _time(ends_at),
            )
    upserts: dict[tuple[str, datetime], list[object]] = {}
    """The row each alert written ends with (first_received: the first delivery's)."""
    touched: dict[tuple[str, datetime], datetime] = {}
    """Alerts received again unchanged, and when last."""
    counts: list[tuple[int, int]] = []
    for item, keys in zip(batch, keyed, strict=True):
        when = kept(item.received_at)
        changed = 0
        for alert, key in zip(item.delivery.alerts, keys, strict=True):
            status, ends_at = alert.status, None if alert.ends_at is None else kept(alert.ends_at)
            before = known.get(key)
            if before is not None and before[0] == "resolved":
                status, ends_at = "resolved", before[1] or ends_at  # never back to firing
            if before == (status, ends_at):
                if key in upserts:
                    upserts[key][-1] = when
                else:
                    touched[key] = when
                continue
            known[key] = (status, ends_at)  # the same alert again in this batch: a duplicate
            changed += 1
            first = upserts[key][-2] if key in upserts else when
            touched.pop(key, None)
            upserts[key] = [
                status,
                ends_at,
                alert.service,
                alert.name,
                _json_text(alert.labels),
                _json_text(alert.annotations),
                first,
                when,
            ]
        counts.append((changed, len(keys) - changed))
    document: list[list[list[Any]]] = [
        [[*key, *row] for key, row in upserts.items()],
        [[*key, when] for key, when in touched.items()],
        [
            [
                kept(item.received_at),
                item.delivery.source,
                item.delivery.group_key,
                item.delivery.status,
                len(item.delivery.alerts),
                duplicates,
                item.body,
            ]
            for item, (_, duplicates) in zip(batch, counts, strict=True)
        ],
    ]
    db.prepared(b"rollbackd_write_batch", _WRITE_BATCH, _batch_json(document))
    return counts


_LOOKUP_BY_INDEX = "SET LOCAL enable_seqscan = off"
"""The alerts table grows faster than autovacuum re-analyses it: with stale statistics the
planner scans it all for a batch's few fingerprints, and ingest slows as the journal grows."""


def _text_array(texts: list[str]) -> bytes:
    """PostgreSQL's text of an array of texts (each quoted, so NULL is a text), as kept."""
    if any('"' in text or "\\" in text for text in texts):
        texts = [text.replace("\\", "\\\\").replace('"', '\\"') for text in texts]
    return kept_text('{"' + '","'.join(texts) + '"}')


def _time(text: str) -> datetime:
    """A time of the JSON PostgreSQL wrote (in UTC: the session's time zone)."""
    return datetime.fromisoformat(text).astimezone(UTC)


_LOCK_ALERTS = b"""
SELECT coalesce(json_agg(json_build_array(fingerprint, starts_at, status, ends_at)), '[]')
FROM (SELECT fingerprint, starts_at, status, ends_at FROM alerts
      WHERE fingerprint = ANY($1::text[]) ORDER BY fingerprint, starts_at FOR UPDATE) AS locked
"""
"""The batch's alerts already journaled, locked in one order (two replicas never wait on
each other in a circle), as one JSON document: decoded in C, not value by value."""


_WRITE_BATCH = b"""
WITH batch AS (SELECT $1::jsonb AS doc),
written AS (
    INSERT INTO alerts (fingerprint, starts_at, status, ends_at, service, name, labels,
                        annotations, first_received, last_received)
    SELECT x->>0, (x->>1)::timestamptz, x->>2, (x->>3)::timestamptz, x->>4, x->>5,
           (x->>6)::json, (x->>7)::json, (x->>8)::timestamptz, (x->>9)::timestamptz
    FROM batch, jsonb_array_elements(doc->0) AS x
    ON CONFLICT (fingerprint, starts_at) DO UPDATE SET
        status = CASE WHEN alerts.status = 'resolved' THEN 'resolved' ELSE excluded.status END,
        ends_at = CASE WHEN alerts.status = 'resolved'
                       THEN coalesce(alerts.ends_at, excluded.ends_at) ELSE excluded.ends_at END,
        labels = excluded.labels, annotations = excluded.annotations,
        last_received = excluded.last_received
),
seen AS (
    UPDATE alerts SET last_received = (x->>2)::timestamptz
    FROM batch, jsonb_array_elements(doc->1) AS x
    WHERE fingerprint = x->>0 AND starts_at = (x->>1)::timestamptz
)
INSERT INTO deliveries (received_at, source, group_key, status, alerts, duplicates, body)
SELECT (x->>0)::timestamptz, x->>1, x->>2, x->>3, (x->>4)::integer, (x->>5)::integer, x->>6
FROM batch, jsonb_array_elements(doc->2) WITH ORDINALITY AS e(x, o)
ORDER BY o
"""
"""A batch in one statement, from one JSON document: its alerts written (inserted, or
changed in place), those received again unchanged touched, and its deliveries in order.
The two sets of alerts never share a row (one statement cannot change a row twice).
A resolved alert stays resolved here too, not only in the lookup before: another replica
may insert it resolved after that lookup, and a late firing retry then meets it here."""

_TEXT_FIELDS = ((0, (0, 2, 4, 5)), (1, (0,)), (2, (1, 2, 3, 6)))
"""The fields of the batch document that become text: in its alerts, touched alerts and
deliveries. Labels and annotations are JSON text in the document, kept as they came."""


class _KeptTimes(dict[datetime, datetime]):
    """:func:`kept_time` of each time, worked out once: a delivery's alerts mostly share
    their times, and a batch's deliveries often do."""

    def __call__(self, moment: datetime) -> datetime:
        kept = self.get(moment)
        if kept is None:
            kept = self[moment] = kept_time(moment)
        return kept


def _json_text(value: Mapping[str, str]) -> str:
    """Labels as JSON text; a lone surrogate (which orjson refuses) escaped, as JSON allows."""
    try:
        return orjson.dumps(value if type(value) is dict else dict(value)).decode()
    except orjson.JSONEncodeError:
        return json.dumps(dict(value))


def _batch_json(document: list[list[list[Any]]]) -> bytes:
    """The batch document as JSON text, encoded in C: one parameter for the whole batch,
    with nothing per value in Python.

    PostgreSQL unescapes every string of the document as it reads it, and its text refuses
    a NUL (``\\u0000``), which a hostile label may carry; orjson refuses a lone surrogate.
    Either way the text fields are cleaned as every text parameter is (:func:`kept_text`)
    and the document encoded again. Labels with a NUL are JSON text here, so escaped once
    more: they are kept with their NUL.
    """
    try:
        encoded = orjson.dumps(document)
    except orjson.JSONEncodeError:
        encoded = None
    if encoded is not None and b"\\u0000" not in encoded:
        return encoded
    for part, fields in _TEXT_FIELDS:
        for row in document[part]:
            for field in fields:
                if isinstance(row[field], str):
                    row[field] = kept_text(row[field]).decode()
    return json.dumps(document, default=encode_time).encode()


_FIRING = (
    "SELECT fingerprint, starts_at, status, ends_at, service, name, labels, annotations"
    " FROM alerts WHERE status = 'firing' AND (ends_at IS NULL OR ends_at > %s)"
    " AND (%s::timestamptz IS NULL OR last_received > %s)"
)
_FIRING_OF_SERVICES = _FIRING + " AND service = ANY(%s) ORDER BY starts_at"
_ONE_FIRING_ELSEWHERE = _FIRING + " AND (service IS NULL OR NOT service = ANY(%s)) LIMIT 1"
