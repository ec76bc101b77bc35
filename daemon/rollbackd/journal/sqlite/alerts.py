"""The SQL of the alert store: webhook deliveries and the alerts they carry.

Alerts are keyed by (fingerprint, startsAt): a retried delivery changes
nothing, and a resolved alert never goes back to firing through a late retry
of an older delivery. Deliveries are written by the group-commit writer
(:mod:`rollbackd.journal.sqlite.writer`); this module is what it writes.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection
from concurrent.futures import Future
from datetime import datetime

from rollbackd.core.incident import AlertRecord, Delivery
from rollbackd.journal.codec import (
    decode_optional_time,
    decode_time,
    encode_optional_time,
    encode_time,
)
from rollbackd.journal.sqlite.database import Database, SqliteStore
from rollbackd.journal.sqlite.writer import DeliveryWriter, Queued


class SqliteAlerts(SqliteStore):
    """:class:`~rollbackd.journal.stores.AlertStore` in SQLite."""

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self._writer = DeliveryWriter(database, self._write_delivery)

    def close(self) -> None:
        """Write the deliveries already queued; later ones are refused."""
        self._writer.close()

    def record_delivery(
        self, received_at: datetime, delivery: Delivery, body: str
    ) -> tuple[int, int]:
        """Journal one webhook delivery and its alerts at once; (new or changed, duplicates).

        Returns once the delivery is committed (see :meth:`submit_delivery`).
        """
        return self.submit_delivery(received_at, delivery, body).result()

    def submit_delivery(
        self, received_at: datetime, delivery: Delivery, body: str
    ) -> Future[tuple[int, int]]:
        """Queue a delivery for the writer thread; the future is done once it is committed.

        Deliveries are journaled in the order they were queued, so two in one
        batch that carry the same alert count it once (:mod:`.writer`).
        """
        return self._writer.submit(received_at, delivery, body)

    @staticmethod
    def _write_delivery(db: sqlite3.Connection, item: Queued) -> tuple[int, int]:
        """A delivery's alerts and the delivery itself; (new or changed, duplicates)."""
        delivery, when = item.delivery, encode_optional_time(item.received_at)
        keys = [(a.fingerprint, encode_time(a.starts_at)) for a in delivery.alerts]
        known: dict[tuple[str, str], tuple[str, str | None]] = {}
        fingerprints = sorted({fingerprint for fingerprint, _ in keys})
        for start in range(0, len(fingerprints), 500):
            chunk = fingerprints[start : start + 500]
            for fingerprint, starts_at, status, ends_at in db.execute(
                "SELECT fingerprint, starts_at, status, ends_at FROM alerts"  # noqa: S608 -- placeholders only
                f" WHERE fingerprint IN ({','.join('?' * len(chunk))})",
                chunk,
            ):
                known[(fingerprint, starts_at)] = (status, ends_at)
        upserts: list[tuple[str | None, ...]] = []
        touched: list[tuple[str | None, str, str]] = []
        for alert, key in zip(delivery.alerts, keys, strict=True):
            status, ends_at = alert.status, encode_optional_time(alert.ends_at)
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
        if upserts:
            db.executemany(
                "INSERT INTO alerts (fingerprint, starts_at, status, ends_at, service, name,"
                " labels, annotations, first_received, last_received)"
                " VALUES (?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (fingerprint, starts_at) DO UPDATE SET status = excluded.status,"
                " ends_at = excluded.ends_at, labels = excluded.labels,"
                " annotations = excluded.annotations, last_received = excluded.last_received",
                upserts,
            )
        if touched:
            db.executemany(
                "UPDATE alerts SET last_received = ? WHERE fingerprint = ? AND starts_at = ?",
                touched,
            )
        changed = len(upserts)
        duplicates = len(delivery.alerts) - changed
        db.execute(
            "INSERT INTO deliveries (received_at, source, group_key, status, alerts,"
            " duplicates, body) VALUES (?,?,?,?,?,?,?)",
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

    def firing_alerts(
        self,
        now: datetime,
        services: Collection[str] | None = None,
        received_after: datetime | None = None,
    ) -> list[AlertRecord]:
        """The alerts firing at ``now``, oldest first.

        Firing: the latest word on the alert is "firing" and its endsAt, if it
        has one, is after ``now`` (an alert no longer re-sent expires).
        Alertmanager sends firing alerts without an endsAt; they fire until
        resolved, or, with ``received_after``, until they were last received
        before it (the resolved notification was lost). With ``services``: only
        the alerts of those services, plus one firing alert of any other
        service or of none, so that the caller can still say that some alert
        cannot be placed without loading every alert nobody watches.
        """
        at = encode_optional_time(now)
        since = encode_optional_time(received_after) if received_after is not None else ""
        with self._database.read() as db:
            if services is None:
                rows = db.execute(_FIRING + " ORDER BY starts_at", (at, since)).fetchall()
            else:
                names = json.dumps(sorted(services))
                rows = db.execute(_FIRING_OF_SERVICES, (at, since, names)).fetchall()
                rows += db.execute(_ONE_FIRING_ELSEWHERE, (at, since, names)).fetchall()
                rows.sort(key=lambda r: str(r[1]))
        return [
            AlertRecord(
                fingerprint=r[0],
                starts_at=decode_time(r[1]),
                status=r[2],
                ends_at=decode_optional_time(r[3]),
                service=r[4],
                name=r[5],
                labels=json.loads(r[6]),
                annotations=json.loads(r[7]),
            )
            for r in rows
        ]

    def deliveries(self) -> int:
        """How many webhook deliveries were journaled."""
        with self._database.read() as db:
            return int(db.execute("SELECT count(*) FROM deliveries").fetchone()[0])


_FIRING = (
    "SELECT fingerprint, starts_at, status, ends_at, service, name, labels, annotations"
    " FROM alerts WHERE status = 'firing' AND (ends_at IS NULL OR ends_at > ?)"
    " AND last_received > ?"
)
_FIRING_OF_SERVICES = (
    "SELECT fingerprint, starts_at, status, ends_at, service, name, labels, annotations"
    " FROM alerts WHERE status = 'firing' AND (ends_at IS NULL OR ends_at > ?)"
    " AND last_received > ? AND service IN (SELECT value FROM json_each(?)) ORDER BY starts_at"
)
_ONE_FIRING_ELSEWHERE = (
    "SELECT fingerprint, starts_at, status, ends_at, service, name, labels, annotations"
    " FROM alerts WHERE status = 'firing' AND (ends_at IS NULL OR ends_at > ?)"
    " AND last_received > ?"
    " AND (service IS NULL OR service NOT IN (SELECT value FROM json_each(?))) LIMIT 1"
)
