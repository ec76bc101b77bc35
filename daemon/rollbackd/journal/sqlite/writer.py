"""Group commit of webhook deliveries: one writer thread, one transaction a batch.

Deliveries arrive many at a time, so each is queued to one writer thread,
which writes every delivery waiting at that moment in one transaction, commits
once, and only then answers each of them (their futures). Each delivery is
written inside a savepoint of its own, so that one SQLite refuses fails alone.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from rollbackd.core.incident import Delivery
from rollbackd.errors import JournalError, JournalUnavailable
from rollbackd.journal.sqlite.database import NOT_THE_DISK, Database
from rollbackd.logs import get_logger

log = get_logger("rollbackd.journal")

BATCH_DELIVERIES = 128
"""At most this many webhook deliveries are written in one transaction."""
BATCH_ALERTS = 5000
"""A batch stops growing once it holds this many alerts (one delivery may carry 1,000)."""


@dataclass(frozen=True)
class Queued:
    """A delivery waiting for the writer thread, and the future its request waits on."""

    received_at: datetime
    delivery: Delivery
    body: str
    future: Future[tuple[int, int]]


WriteDelivery = Callable[[sqlite3.Connection, Queued], tuple[int, int]]
"""Writes one delivery inside the batch's transaction; (new or changed alerts, duplicates)."""


class DeliveryWriter:
    """The writer thread of one journal's webhook deliveries, started at the first one."""

    def __init__(self, database: Database, write: WriteDelivery) -> None:
        self._database = database
        self._write = write
        self._queue: queue.SimpleQueue[Queued | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        self._closed = False

    @property
    def path(self) -> Path:
        return self._database.path

    def close(self) -> None:
        """Write the deliveries already queued, then stop; later ones are refused."""
        with self._writer_lock:
            self._closed = True
            writer = self._writer
            if writer is not None and writer.is_alive():
                self._queue.put(None)
        if writer is not None:
            writer.join()

    def submit(
        self, received_at: datetime, delivery: Delivery, body: str
    ) -> Future[tuple[int, int]]:
        """Queue a delivery for the writer; the future is done once it is committed.

        Its result is (new or changed alerts, duplicates). Alerts are keyed by
        (fingerprint, startsAt): a retried delivery changes nothing, and a
        resolved alert never goes back to firing through a late retry of an
        older delivery. Deliveries are journaled in the order they were
        queued, so two in one batch that carry the same alert count it once.
        A failed write fails the future with a :class:`JournalError`.
        """
        future: Future[tuple[int, int]] = Future()
        with self._writer_lock:
            if self._closed:
                raise JournalError(f"the journal {self.path} is closed")
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
                error = JournalError(f"the journal {self.path}: {type(exc).__name__}: {exc}")
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

        Each delivery is written inside its own savepoint: one that cannot be
        written fails alone. If the transaction cannot be committed, every
        delivery of the batch fails, and none of them is in the journal.
        """
        outcomes: list[tuple[int, int] | JournalError] = []
        with self._database.lock:
            db = self._database.connection
            try:
                self._database.refuse_if_displaced()
                db.execute("BEGIN IMMEDIATE")
                for item in batch:
                    db.execute("SAVEPOINT delivery")
                    try:
                        outcomes.append(self._write(db, item))
                    except Exception as exc:
                        if not db.in_transaction:  # SQLite rolled the whole transaction back
                            raise
                        db.execute("ROLLBACK TO delivery")
                        log.exception(
                            "a webhook delivery could not be journaled",
                            group_key=item.delivery.group_key,
                            alerts=len(item.delivery.alerts),
                        )
                        outcomes.append(
                            self._database.write_failed(exc)
                            if isinstance(exc, sqlite3.Error) and not isinstance(exc, NOT_THE_DISK)
                            else JournalError(
                                f"the journal {self.path} could not record this delivery: "
                                f"{type(exc).__name__}: {exc}"
                            )
                        )
                    db.execute("RELEASE delivery")
                db.execute("COMMIT")
                # Committed into a removed file: not acknowledged.
                self._database.refuse_if_displaced()
            except JournalUnavailable as exc:
                log.warning(
                    "webhook deliveries refused: the journal cannot be written",
                    deliveries=len(batch),
                    reason=str(exc),
                )
                outcomes = [exc] * len(batch)
            except Exception as exc:
                log.exception(
                    "the journal could not write a batch of webhook deliveries",
                    deliveries=len(batch),
                    error=f"{type(exc).__name__}: {exc}",
                )
                failed = (
                    self._database.write_failed(exc)
                    if isinstance(exc, sqlite3.Error)
                    else JournalError(f"the journal {self.path}: {exc}")
                )
                outcomes = [failed] * len(batch)
            else:
                if not any(isinstance(o, JournalUnavailable) for o in outcomes):
                    self._database.succeeded()
                self._database.committed()
            finally:
                if db.in_transaction:  # not committed: none of the batch is in the journal
                    with suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
        for item, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, JournalError):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)
