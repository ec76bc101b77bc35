"""The incident journal: everything that happens, written before it is acted on.

SQLite in WAL mode with ``synchronous=FULL``: a row is on disk when a call
returns, so a crash loses nothing already journaled. The schema is versioned
with ``PRAGMA user_version`` and migrated forward on open. Every checklist
step is written *before* it runs and its outcome after, which is how a
restart finds a step that was interrupted.

Webhook deliveries arrive many at a time, so they are group-committed: each
is queued to one writer thread, which writes every delivery waiting at that
moment in one transaction, commits once, and only then answers each of them.
One connection writes (the writer thread and every other write take turns on
it); reads use a second one, so that a long read never holds up a write (WAL
lets both go on at once). A third copies the WAL into the database file
(checkpoints) in a thread of its own, shortly after writes: done by the
committing connection, as SQLite does by default, a checkpoint (a few MB and
an fsync) would hold up every request waiting for that commit.

:class:`Journal` is the interface the rest of rollbackd uses;
:class:`SqliteJournal` is the one backend today (a PostgreSQL one, for
replicas, would implement the same methods).
"""

from __future__ import annotations

import json
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from rollbackd.deploys import Deploy, MigrationFact
from rollbackd.logs import get_logger
from rollbackd.model import Decision

log = get_logger("rollbackd.journal")

_V1 = [
    """
    CREATE TABLE incidents (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        service TEXT NOT NULL,
        opened_at TEXT NOT NULL,
        closed_at TEXT,
        state TEXT NOT NULL,
        severity TEXT NOT NULL,
        action TEXT NOT NULL,
        origin TEXT NOT NULL,
        target TEXT,
        current_version TEXT,
        reason TEXT NOT NULL,
        summary TEXT NOT NULL DEFAULT '',
        facts TEXT NOT NULL DEFAULT '{}'
    )
    """,
    "CREATE INDEX incidents_service ON incidents (service, state)",
    """
    CREATE TABLE decisions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        incident_id INTEGER NOT NULL REFERENCES incidents (id),
        time TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        proposed TEXT NOT NULL,
        severity TEXT NOT NULL,
        rules TEXT NOT NULL,
        reason TEXT NOT NULL,
        approver TEXT,
        deadline TEXT,
        guards TEXT NOT NULL,
        value REAL,
        target TEXT
    )
    """,
    """
    CREATE TABLE steps (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        incident_id INTEGER NOT NULL REFERENCES incidents (id),
        name TEXT NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        outcome TEXT,
        summary TEXT NOT NULL DEFAULT '',
        output TEXT NOT NULL DEFAULT '',
        data TEXT NOT NULL DEFAULT '{}'
    )
    """,
    "CREATE INDEX steps_incident ON steps (incident_id, id)",
    """
    CREATE TABLE evidence (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        incident_id INTEGER NOT NULL REFERENCES incidents (id),
        time TEXT NOT NULL,
        kind TEXT NOT NULL,
        body TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE samples (
        incident_id INTEGER NOT NULL REFERENCES incidents (id),
        time TEXT NOT NULL,
        series TEXT NOT NULL,
        value REAL NOT NULL
    )
    """,
    "CREATE INDEX samples_incident ON samples (incident_id, series, time)",
]
_V2 = [
    """
    CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        received_at TEXT NOT NULL,
        source TEXT NOT NULL,
        group_key TEXT,
        status TEXT,
        alerts INTEGER NOT NULL,
        duplicates INTEGER NOT NULL,
        body TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE alerts (
        fingerprint TEXT NOT NULL,
        starts_at TEXT NOT NULL,
        status TEXT NOT NULL,
        ends_at TEXT,
        service TEXT,
        name TEXT,
        labels TEXT NOT NULL,
        annotations TEXT NOT NULL,
        first_received TEXT NOT NULL,
        last_received TEXT NOT NULL,
        PRIMARY KEY (fingerprint, starts_at)
    )
    """,
    "CREATE INDEX alerts_status ON alerts (status)",
    """
    CREATE TABLE deploys (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        service TEXT NOT NULL,
        version TEXT NOT NULL,
        ref TEXT,
        time TEXT NOT NULL,
        migrations TEXT NOT NULL,
        received_at TEXT NOT NULL
    )
    """,
]
_V3 = [
    # The cycle asks for the firing alerts of the services it watches: an index of firing
    # alerts only, by service, instead of every alert by status (resolved ones are most).
    "DROP INDEX alerts_status",
    "CREATE INDEX alerts_firing ON alerts (service) WHERE status = 'firing'",
]
_V4 = [
    # An incident that waits on people (escalated, vetoed, recorded, not recovered) is open
    # until what fired is OK again or it expires: its last change dates the expiry.
    "ALTER TABLE incidents ADD COLUMN updated_at TEXT",
    "UPDATE incidents SET updated_at = COALESCE(closed_at, opened_at)",
    "CREATE INDEX incidents_unfinished ON incidents (service) WHERE closed_at IS NULL",
]
_MIGRATIONS = [_V1, _V2, _V3, _V4]
"""Statements taking the schema from version i to i + 1."""
SCHEMA_VERSION = len(_MIGRATIONS)


class IncidentState(StrEnum):
    """Where an incident stands.

    *Active* states have a rollback pending or under way (open, awaiting approval,
    rolling back, recovering). *Waiting* ones wait on people (escalated, vetoed,
    recorded, not recovered): the incident stays open until what fired is OK again
    or it expires. *Finished* ones are over: recovered, resolved, expired, or
    superseded (by a newer deploy, or by a decision at a higher severity).
    """

    OPEN = "open"
    AWAITING_APPROVAL = "awaiting_approval"
    ROLLING_BACK = "rolling_back"
    RECOVERING = "recovering"
    RECOVERED = "recovered"
    NOT_RECOVERED = "not_recovered"
    ESCALATED = "escalated"
    VETOED = "vetoed"
    RECORDED = "recorded"
    RESOLVED = "resolved"
    EXPIRED = "expired"
    SUPERSEDED = "superseded"

    @property
    def active(self) -> bool:
        """A rollback is pending or under way."""
        return self in _ACTIVE

    @property
    def finished(self) -> bool:
        """Over: nothing more happens to it (``closed_at`` is set)."""
        return self in _FINISHED


_ACTIVE = {
    IncidentState.OPEN,
    IncidentState.AWAITING_APPROVAL,
    IncidentState.ROLLING_BACK,
    IncidentState.RECOVERING,
}
_FINISHED = {
    IncidentState.RECOVERED,
    IncidentState.RESOLVED,
    IncidentState.EXPIRED,
    IncidentState.SUPERSEDED,
}


class Outcome(StrEnum):
    """How a step ended."""

    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class StepRecord:
    """One journaled checklist step."""

    id: int
    name: str
    started_at: datetime
    finished_at: datetime | None
    outcome: Outcome | None
    summary: str
    output: str
    data: dict[str, str]

    @property
    def interrupted(self) -> bool:
        return self.finished_at is None


@dataclass(frozen=True)
class DecisionRecord:
    """One journaled decision, by rollbackd or by a person."""

    time: datetime
    actor: str
    action: str
    proposed: str
    severity: str
    rules: list[str]
    reason: str
    approver: str | None
    deadline: datetime | None
    guards: list[str]
    value: float | None
    target: str | None


@dataclass(frozen=True)
class EvidenceRecord:
    """A snapshot kept with the incident: findings, deploys, alerts, checks."""

    time: datetime
    kind: str
    body: Any


@dataclass(frozen=True)
class IncidentRecord:
    """An incident and, when loaded whole, its decisions, steps and evidence."""

    id: int
    service: str
    opened_at: datetime
    closed_at: datetime | None
    state: IncidentState
    severity: str
    action: str
    origin: str
    target: str | None
    current_version: str | None
    reason: str
    summary: str
    facts: dict[str, Any]
    updated_at: datetime | None = None
    """When its state last changed (its opening, at first)."""
    decisions: tuple[DecisionRecord, ...] = ()
    steps: tuple[StepRecord, ...] = ()
    evidence: tuple[EvidenceRecord, ...] = ()
    samples: dict[str, list[tuple[datetime, float]]] = field(default_factory=dict)

    def step(self, name: str) -> StepRecord | None:
        """The latest journaled step of that name."""
        found = [s for s in self.steps if s.name == name]
        return found[-1] if found else None


@dataclass(frozen=True)
class AlertRecord:
    """One Alertmanager alert as journaled: its identity, its latest status, its labels."""

    fingerprint: str
    starts_at: datetime
    status: str
    ends_at: datetime | None
    service: str | None
    name: str | None
    labels: Mapping[str, str]
    annotations: Mapping[str, str]


@dataclass(frozen=True)
class Delivery:
    """One webhook delivery: where from, its group, and its alerts."""

    source: str
    group_key: str | None
    status: str | None
    alerts: Sequence[AlertRecord]


@dataclass(frozen=True)
class NewIncident:
    """What opening an incident records, all of it in one transaction.

    An incident that waits for a person (awaiting approval, escalated) is only
    complete with its decision: who may decide (``decision.approver``) and by
    when (``decision.deadline``, the one place the approval deadline is kept).
    Written apart, a crash in between left an incident with neither.
    """

    service: str
    opened_at: datetime
    severity: str
    action: str
    origin: str
    reason: str
    target: str | None = None
    current_version: str | None = None
    state: IncidentState = IncidentState.OPEN
    facts: Mapping[str, Any] = field(default_factory=dict)
    decision: Decision | None = None
    """The decision that opened it, if any (a rollback by hand with none has none)."""
    decided_by: str = "rollbackd"
    """Who made ``decision``: rollbackd, or the person who asked for the rollback."""
    evidence: Mapping[str, Any] = field(default_factory=dict)
    """Evidence kept from the start, by kind (``snapshot``...), dated ``opened_at``."""


class Journal(Protocol):
    """The incident journal's interface."""

    def open_incident(self, new: NewIncident) -> int: ...

    def set_state(
        self,
        incident: int,
        state: IncidentState,
        summary: str,
        at: datetime,
        expect: Collection[IncidentState] | None = None,
    ) -> bool: ...

    def add_decision(self, incident: int, decision: Decision, actor: str) -> None: ...

    def add_evidence(self, incident: int, at: datetime, kind: str, body: Any) -> None: ...

    def add_samples(self, incident: int, rows: Sequence[tuple[datetime, str, float]]) -> None: ...

    def step_started(
        self, incident: int, name: str, at: datetime, data: Mapping[str, str] | None = None
    ) -> int: ...

    def step_finished(
        self,
        step: int,
        at: datetime,
        outcome: Outcome,
        summary: str,
        output: str = "",
        data: Mapping[str, str] | None = None,
    ) -> None: ...

    def incident(self, incident: int) -> IncidentRecord | None: ...

    def incidents(
        self,
        limit: int | None = 50,
        service: str | None = None,
        active_only: bool = False,
        unfinished_only: bool = False,
    ) -> list[IncidentRecord]: ...

    def record_delivery(
        self, received_at: datetime, delivery: Delivery, body: str
    ) -> tuple[int, int]: ...

    def submit_delivery(
        self, received_at: datetime, delivery: Delivery, body: str
    ) -> Future[tuple[int, int]]: ...

    def firing_alerts(
        self,
        now: datetime,
        services: Collection[str] | None = None,
        received_after: datetime | None = None,
    ) -> list[AlertRecord]: ...

    def record_deploy(self, deploy: Deploy, received_at: datetime) -> None: ...

    def deploys(self) -> list[Deploy]: ...

    def rollbacks(self, service: str) -> list[datetime]: ...


def _json(value: Any) -> str:
    """JSON with datetimes as RFC 3339 UTC, like every other time in the journal."""

    def default(item: Any) -> Any:
        if isinstance(item, datetime):
            return _text(item)
        return str(item)

    return json.dumps(value, default=default)


def _text(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat(timespec="milliseconds")


def _time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _required_text(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def _required_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


class JournalError(Exception):
    """The journal cannot be opened or written (disk, permissions, a newer schema)."""


class JournalUnavailable(JournalError):  # noqa: N818 -- names the condition, as Refused does
    """The journal cannot be written now, and nothing was: the disk is full, the file is
    read-only, or it was removed or replaced under the running process.

    Unlike a bad request, this may pass: the same write can be tried again later
    (:meth:`SqliteJournal.problem` says whether it is worth it yet).
    """


CHECKPOINT_PAUSE = 0.2
"""Seconds between two checkpoints while writes go on."""
AUTOCHECKPOINT_PAGES = 10_000
"""The committing connection checkpoints only past this WAL size (40 MB): a safety net."""
BATCH_DELIVERIES = 128
"""At most this many webhook deliveries are written in one transaction."""
BATCH_ALERTS = 5000
"""A batch stops growing once it holds this many alerts (one delivery may carry 1,000)."""
PROBE_PAUSE = 1.0
"""While the last write failed, :meth:`SqliteJournal.problem` tries a test write at most
this often (seconds)."""
PROBE_BYTES = 4096
"""What a test write writes, and deletes in the same transaction: a page, so that it
needs room in the file and in the write-ahead log as a real write does."""
SALVAGE_PAUSE = 10.0
"""Seconds between two attempts at copying a journal that was removed or replaced."""
_NOT_THE_DISK = (
    sqlite3.IntegrityError,
    sqlite3.ProgrammingError,
    sqlite3.InterfaceError,
    sqlite3.DataError,
)
"""SQLite errors that are about the write itself (a bad reference, a closed connection),
not about whether the journal can be written: trying again would fail the same way."""


@dataclass(frozen=True)
class _Queued:
    """A delivery waiting for the writer thread, and the future its request waits on."""

    received_at: datetime
    delivery: Delivery
    body: str
    future: Future[tuple[int, int]]


class SqliteJournal:
    """The journal in one SQLite file; safe to share between threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=False, timeout=30
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"cannot open the journal {path}: {exc}") from None
        self._lock = threading.RLock()
        """Held by every write: one transaction at a time on ``_db``."""
        self._wrote, self._stopping = threading.Event(), threading.Event()
        self._checkpointer: threading.Thread | None = None
        self._where = path.absolute()
        self._identity: _Identity | None = None
        """(device, inode) of the file opened, and of its write-ahead log (None: not checked)."""
        self._displaced: str | None = None
        """Why the path no longer names the file opened (None: it does)."""
        self._salvage: str | None = None
        """Where what was journaled was copied once displaced, or why it could not be."""
        self._salvage_tried = -math.inf
        self._failure: str | None = None
        """Why the last write failed (disk full, read-only); None once one succeeds."""
        self._probed = -math.inf
        in_memory = str(path) == ":memory:"  # then each connection has its own database
        self._checkpoints_apart = not in_memory
        """Whether a thread of its own checkpoints the WAL (none in memory)."""
        self._migrate()
        self._reader, self._read_lock = self._db, self._lock
        if not in_memory:
            try:
                self._db.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
                self._reader = sqlite3.connect(
                    str(path), isolation_level=None, check_same_thread=False, timeout=30
                )
                self._reader.execute("PRAGMA query_only=ON")
            except sqlite3.Error as exc:
                self._stopping.set()
                self._wrote.set()  # a migration may have started the checkpoint thread
                self._db.close()
                raise JournalError(f"cannot open the journal {path}: {exc}") from None
            self._read_lock = threading.RLock()
            # The migration, or setting WAL mode on an existing file, created the log.
            self._identity = _Identity.of(self._where)
        self._queue: queue.SimpleQueue[_Queued | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        """Write the deliveries already queued, then close; later ones are refused."""
        with self._writer_lock:
            self._closed = True
            writer = self._writer
            if writer is not None and writer.is_alive():
                self._queue.put(None)
        if writer is not None:
            writer.join()
        self._stopping.set()
        self._wrote.set()
        if self._checkpointer is not None:
            self._checkpointer.join()
        if self._displaced is not None:
            # SQLite's last close deletes the write-ahead log and its index *by name*:
            # at the path, they may now be another file's. The process's exit closes
            # these connections without touching any file.
            log.warning("the journal's connections are left open", reason=self._displaced)
            return
        with self._read_lock:
            self._reader.close()
        with self._lock:
            self._db.close()  # the same connection again in memory: closing twice is harmless

    def _committed(self) -> None:
        """After a commit (the write lock held): wake the checkpoint thread, started at need.

        Never raises: what was committed is answered as committed.
        """
        if self._checkpointer is None and self._checkpoints_apart:
            self._checkpointer = threading.Thread(
                target=self._checkpoint_wal, name="journal-checkpoints", daemon=True
            )
            try:
                self._checkpointer.start()
            except RuntimeError as exc:  # no thread to be had: SQLite's own checkpoints remain
                log.error("the journal's checkpoint thread cannot start", error=str(exc))
                self._checkpoints_apart = False  # and do not try again at every commit
                self._checkpointer = None
        self._wrote.set()

    def _checkpoint_wal(self) -> None:
        """The checkpoint thread: after writes, copy the WAL into the database file.

        PASSIVE: it never waits for, nor holds up, a writer or a reader. A
        failure is logged and the next write tries again; the committing
        connection's own checkpoint past AUTOCHECKPOINT_PAGES is the net.
        """
        try:
            db = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
            db.execute("PRAGMA synchronous=FULL")  # the database file is synced before reuse
        except sqlite3.Error as exc:
            log.error("the journal's checkpoint thread cannot open it", error=str(exc))
            return
        try:
            while True:
                self._wrote.wait()
                self._wrote.clear()
                if self._stopping.is_set():
                    return
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:
                    log.warning(
                        "a journal checkpoint failed; the next write retries", error=str(exc)
                    )
                if self._stopping.wait(CHECKPOINT_PAUSE):
                    return
        finally:
            db.close()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction on the reading connection: a consistent snapshot."""
        with self._read_lock:
            try:
                self._reader.execute("BEGIN")
                yield self._reader
            except sqlite3.Error as exc:
                raise JournalError(f"the journal {self.path}: {exc}") from exc
            finally:
                if self._reader.in_transaction:
                    self._reader.execute("COMMIT")

    @contextmanager
    def _tx(self, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
        """One transaction: written durably on exit, or not at all; errors as JournalError.

        Never into a file that is no longer at the journal's path (JournalUnavailable,
        before and after: a commit into a removed file is not one to acknowledge).
        """
        with self._lock:
            self._refuse_if_displaced()
            try:
                self._db.execute(f"BEGIN {mode}")
                yield self._db
                self._db.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:
                    with suppress(sqlite3.Error):  # the error to report is the first one
                        self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._write_failed(exc) from exc
                raise
            self._refuse_if_displaced()
            self._failure = None
            self._committed()

    # -- whether the journal can be written -------------------------------------------

    def problem(self) -> str | None:
        """Why the journal cannot be written now; None when it can, as far as is known.

        Two causes. The path no longer names the file opened (removed or replaced
        under the running process): nothing is written until it does again, since
        what is written to a removed file is lost. Or the last write failed (disk
        full, read-only): then a test write is tried here, at most once per
        :data:`PROBE_PAUSE`, so that the answer turns when room is made even if
        nothing else writes.
        """
        displaced = self._check_place()
        if displaced is not None:
            return displaced
        if self._failure is not None and time.monotonic() - self._probed >= PROBE_PAUSE:
            self._probe()
        return self._failure

    def _write_failed(self, exc: sqlite3.Error) -> JournalError:
        """The error a failed write raises; one about the disk or file is remembered."""
        if isinstance(exc, _NOT_THE_DISK):
            return JournalError(f"the journal {self.path}: {exc}")
        failure = f"the journal {self.path} cannot be written: {exc}"
        if self._failure is None:
            log.error("the journal cannot be written", path=str(self.path), error=str(exc))
        self._failure = failure
        return JournalUnavailable(failure)

    def _probe(self) -> None:
        """A write that leaves nothing behind, to learn whether writes work again."""
        if not self._lock.acquire(timeout=0.2):
            return  # a write is under way: its outcome will say
        try:
            self._probed = time.monotonic()
            with self._tx() as db:
                cursor = db.execute(
                    "INSERT INTO deliveries (received_at, source, alerts, duplicates, body)"
                    " VALUES (?, 'rollbackd: test write', 0, 0, ?)",
                    (_text(datetime.now(UTC)), "x" * PROBE_BYTES),
                )
                db.execute("DELETE FROM deliveries WHERE id = ?", (cursor.lastrowid,))
            log.info("the journal can be written again", path=str(self.path))
        except JournalError:
            pass  # still failing: _failure says why
        finally:
            self._lock.release()

    def _refuse_if_displaced(self) -> None:
        displaced = self._check_place()
        if displaced is not None:
            raise JournalUnavailable(displaced)

    def _check_place(self) -> str | None:
        """Why the path no longer names the file opened (and what was kept), or None."""
        if self._identity is None:
            return None
        try:
            now = _Identity.of(self._where)
        except OSError as exc:
            return f"the journal {self.path} cannot be checked: {exc}"
        if self._identity.holds(now):
            if self._displaced is not None:
                log.warning("the journal file is back at its path", path=str(self.path))
                self._displaced, self._salvage = None, None
            return None
        if self._displaced is None:
            self._displaced = self._identity.change(now, self.path)
            log.error(
                "the journal was removed or replaced under rollbackd: nothing more is written",
                path=str(self.path),
                reason=self._displaced,
            )
        kept = self._salvage is not None and not self._salvage.startswith("no copy")
        due = time.monotonic() - self._salvage_tried >= SALVAGE_PAUSE
        if not kept and due and self._lock.acquire(timeout=0.2):
            try:
                self._salvage_tried = time.monotonic()
                self._salvage = self._keep_copy(now)
            finally:
                self._lock.release()
        return f"{self._displaced}; {self._salvage or 'no copy kept yet'}"

    def _keep_copy(self, now: _Identity) -> str:
        """Copy everything journaled where a person, or a restart, will find it; what was done.

        First the write-ahead log is emptied into the file opened, so that a log
        left at the path is never replayed onto another file. If the file was
        removed, the copy goes back to the path (a restart finds everything); if
        it was replaced, beside it (the new file is left alone for a person to
        judge). If only the log went, the file at the path already has it all.
        """
        try:
            busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy:
                raise sqlite3.OperationalError(
                    "its write-ahead log is in use, it cannot be emptied"
                )
            if self._identity is not None and now.main == self._identity.main:
                return f"everything journaled is in {self.path}: restart rollbackd to go on"
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
            if now.main is None:
                restoring = self._where.with_name(f"{self._where.name}.restoring-{stamp}")
                self._copy_to(restoring)
                try:
                    os.link(restoring, self._where)  # only if nothing took the path meanwhile
                except FileExistsError:
                    pass
                else:
                    restoring.unlink()
                    _sync_directory(self._where.parent)
                    return (
                        f"everything journaled was copied back to {self.path}: "
                        "restart rollbackd to go on"
                    )
                kept = restoring.with_name(f"{self._where.name}.kept-{stamp}")
                restoring.rename(kept)
            else:
                kept = self._where.with_name(f"{self._where.name}.kept-{stamp}")
                self._copy_to(kept)
            _sync_directory(self._where.parent)
        except (OSError, sqlite3.Error) as exc:
            log.error("no copy of the journal could be kept", path=str(self.path), error=str(exc))
            return (
                f"no copy could be kept ({exc}): what was journaled is only in this process; "
                "make room and do not restart it until a copy is kept"
            )
        log.error("a copy of the journal was kept", path=str(self.path), copy=str(kept))
        return (
            f"everything journaled was copied to {kept}: put it back in place, "
            "or restart rollbackd to use the new file"
        )

    def _copy_to(self, destination: Path) -> None:
        """A consistent copy of the whole journal, as this process sees it, in a new file."""
        if destination.exists():
            raise FileExistsError(f"{destination} exists")
        target = sqlite3.connect(str(destination), isolation_level=None)
        try:
            self._db.backup(target)
            target.execute("PRAGMA journal_mode=WAL")
        except BaseException:
            target.close()
            destination.unlink(missing_ok=True)  # a partial copy only takes room
            raise
        target.close()

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"the journal {self.path} has schema {version}, newer than this rollbackd "
                f"({SCHEMA_VERSION}): upgrade rollbackd"
            )
        for step in range(version, SCHEMA_VERSION):
            with self._tx() as db:
                for statement in _MIGRATIONS[step]:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {step + 1}")

    def open_incident(self, new: NewIncident) -> int:
        """Journal a new incident with its decision and first evidence, all or nothing."""
        with self._tx() as db:
            cursor = db.execute(
                "INSERT INTO incidents (service, opened_at, state, severity, action, origin,"
                " target, current_version, reason, facts, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    new.service,
                    _text(new.opened_at),
                    new.state.value,
                    new.severity,
                    new.action,
                    new.origin,
                    new.target,
                    new.current_version,
                    new.reason,
                    _json(dict(new.facts)),
                    _text(new.opened_at),
                ),
            )
            number = int(cursor.lastrowid or 0)
            if new.state.finished:
                db.execute("UPDATE incidents SET closed_at = opened_at WHERE id = ?", (number,))
            if new.decision is not None:
                _insert_decision(db, number, new.decision, new.decided_by)
            for kind, body in new.evidence.items():
                _insert_evidence(db, number, new.opened_at, kind, body)
            return number

    def set_state(
        self,
        incident: int,
        state: IncidentState,
        summary: str,
        at: datetime,
        expect: Collection[IncidentState] | None = None,
    ) -> bool:
        """Move an incident to ``state``; with ``expect``, only from one of those states.

        One statement, so two callers racing on one incident (an approval and a veto,
        a deadline and a resolution) cannot both win: False for the one that lost.
        """
        condition, params = "", []
        if expect is not None:
            condition = f" AND state IN ({','.join('?' * len(expect))})"
            params = [s.value for s in expect]
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE incidents SET state = ?, summary = ?, updated_at = ?,"  # noqa: S608 -- placeholders only
                " closed_at = CASE WHEN ? THEN ? ELSE NULL END WHERE id = ?" + condition,
                (state.value, summary, _text(at), state.finished, _text(at), incident, *params),
            )
            return cursor.rowcount == 1

    def add_decision(self, incident: int, decision: Decision, actor: str) -> None:
        with self._tx() as db:
            _insert_decision(db, incident, decision, actor)

    def add_evidence(self, incident: int, at: datetime, kind: str, body: Any) -> None:
        with self._tx() as db:
            _insert_evidence(db, incident, at, kind, body)

    def add_samples(self, incident: int, rows: Sequence[tuple[datetime, str, float]]) -> None:
        with self._tx() as db:
            db.executemany(
                "INSERT INTO samples (incident_id, time, series, value) VALUES (?,?,?,?)",
                [
                    (incident, _text(t), series, value)
                    for t, series, value in rows
                    if math.isfinite(value)
                ],
            )

    def step_started(
        self, incident: int, name: str, at: datetime, data: Mapping[str, str] | None = None
    ) -> int:
        with self._tx() as db:
            cursor = db.execute(
                "INSERT INTO steps (incident_id, name, started_at, data) VALUES (?,?,?,?)",
                (incident, name, _text(at), json.dumps(dict(data or {}))),
            )
            return int(cursor.lastrowid or 0)

    def step_finished(
        self,
        step: int,
        at: datetime,
        outcome: Outcome,
        summary: str,
        output: str = "",
        data: Mapping[str, str] | None = None,
    ) -> None:
        with self._tx() as db:
            row = db.execute("SELECT data FROM steps WHERE id = ?", (step,)).fetchone()
            if row is None:
                raise JournalError(f"the journal {self.path} has no step {step} to finish")
            merged = {**json.loads(row[0] if row else "{}"), **dict(data or {})}
            db.execute(
                "UPDATE steps SET finished_at = ?, outcome = ?, summary = ?, output = ?, data = ?"
                " WHERE id = ?",
                (_text(at), outcome.value, summary, output, json.dumps(merged), step),
            )

    def incident(self, incident: int) -> IncidentRecord | None:
        with self._read() as db:
            row = db.execute(_INCIDENT_COLUMNS + " WHERE id = ?", (incident,)).fetchone()
            if row is None:
                return None
            base = _incident(row)
            decisions = tuple(
                DecisionRecord(
                    time=_required_time(r[0]),
                    actor=r[1],
                    action=r[2],
                    proposed=r[3],
                    severity=r[4],
                    rules=json.loads(r[5]),
                    reason=r[6],
                    approver=r[7],
                    deadline=_time(r[8]),
                    guards=json.loads(r[9]),
                    value=r[10],
                    target=r[11],
                )
                for r in db.execute(
                    "SELECT time, actor, action, proposed, severity, rules, reason, approver,"
                    " deadline, guards, value, target FROM decisions WHERE incident_id = ?"
                    " ORDER BY id",
                    (incident,),
                )
            )
            steps = tuple(
                StepRecord(
                    id=r[0],
                    name=r[1],
                    started_at=_required_time(r[2]),
                    finished_at=_time(r[3]),
                    outcome=Outcome(r[4]) if r[4] else None,
                    summary=r[5],
                    output=r[6],
                    data=json.loads(r[7]),
                )
                for r in db.execute(
                    "SELECT id, name, started_at, finished_at, outcome, summary, output, data"
                    " FROM steps WHERE incident_id = ? ORDER BY id",
                    (incident,),
                )
            )
            evidence = tuple(
                EvidenceRecord(_required_time(r[0]), r[1], json.loads(r[2]))
                for r in db.execute(
                    "SELECT time, kind, body FROM evidence WHERE incident_id = ? ORDER BY id",
                    (incident,),
                )
            )
            samples: dict[str, list[tuple[datetime, float]]] = {}
            for r in db.execute(
                "SELECT series, time, value FROM samples WHERE incident_id = ? ORDER BY time",
                (incident,),
            ):
                samples.setdefault(r[0], []).append((_required_time(r[1]), r[2]))
        return replace(base, decisions=decisions, steps=steps, evidence=evidence, samples=samples)

    def incidents(
        self,
        limit: int | None = 50,
        service: str | None = None,
        active_only: bool = False,
        unfinished_only: bool = False,
    ) -> list[IncidentRecord]:
        """Incidents, newest first; ``limit`` None lists them all.

        ``active_only``: a rollback pending or under way; ``unfinished_only``: not over
        (active, or waiting on people).
        """
        clauses: list[str] = []
        params: list[object] = []
        if service is not None:
            clauses.append("service = ?")
            params.append(service)
        if active_only:
            clauses.append(f"state IN ({','.join('?' * len(_ACTIVE))})")
            params.extend(s.value for s in sorted(_ACTIVE))
        if unfinished_only:
            clauses.append("closed_at IS NULL")
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._read() as db:
            rows = db.execute(
                _INCIDENT_COLUMNS + where + " ORDER BY id DESC LIMIT ?",
                (*params, -1 if limit is None else limit),
            ).fetchall()
        return [_incident(r) for r in rows]

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
            self._queue.put(_Queued(received_at, delivery, body, future))
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

    def _next_batch(self) -> tuple[list[_Queued], bool]:
        """Wait for one delivery, then take every other one already waiting (up to a limit)."""
        batch: list[_Queued] = []
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

    def _write_batch(self, batch: Sequence[_Queued]) -> None:
        """One transaction, one commit; then each delivery's request is answered.

        Each delivery is written inside its own savepoint: one that cannot be
        written fails alone. If the transaction cannot be committed, every
        delivery of the batch fails, and none of them is in the journal.
        """
        outcomes: list[tuple[int, int] | JournalError] = []
        with self._lock:
            db = self._db
            try:
                self._refuse_if_displaced()
                db.execute("BEGIN IMMEDIATE")
                for item in batch:
                    db.execute("SAVEPOINT delivery")
                    try:
                        outcomes.append(self._write_delivery(db, item))
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
                            self._write_failed(exc)
                            if isinstance(exc, sqlite3.Error) and not isinstance(exc, _NOT_THE_DISK)
                            else JournalError(
                                f"the journal {self.path} could not record this delivery: "
                                f"{type(exc).__name__}: {exc}"
                            )
                        )
                    db.execute("RELEASE delivery")
                db.execute("COMMIT")
                self._refuse_if_displaced()  # committed into a removed file: not acknowledged
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
                    self._write_failed(exc)
                    if isinstance(exc, sqlite3.Error)
                    else JournalError(f"the journal {self.path}: {exc}")
                )
                outcomes = [failed] * len(batch)
            else:
                if not any(isinstance(o, JournalUnavailable) for o in outcomes):
                    self._failure = None
                self._committed()
            finally:
                if db.in_transaction:  # not committed: none of the batch is in the journal
                    with suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
        for item, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, JournalError):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)

    @staticmethod
    def _write_delivery(db: sqlite3.Connection, item: _Queued) -> tuple[int, int]:
        """A delivery's alerts and the delivery itself; (new or changed, duplicates)."""
        delivery, when = item.delivery, _text(item.received_at)
        keys = [(a.fingerprint, _required_text(a.starts_at)) for a in delivery.alerts]
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
            status, ends_at = alert.status, _text(alert.ends_at)
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
        at = _text(now)
        since = _text(received_after) if received_after is not None else ""
        with self._read() as db:
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
                starts_at=_required_time(r[1]),
                status=r[2],
                ends_at=_time(r[3]),
                service=r[4],
                name=r[5],
                labels=json.loads(r[6]),
                annotations=json.loads(r[7]),
            )
            for r in rows
        ]

    def deliveries(self) -> int:
        """How many webhook deliveries were journaled."""
        with self._read() as db:
            return int(db.execute("SELECT count(*) FROM deliveries").fetchone()[0])

    def record_deploy(self, deploy: Deploy, received_at: datetime) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO deploys (service, version, ref, time, migrations, received_at)"
                " VALUES (?,?,?,?,?,?)",
                (
                    deploy.service,
                    deploy.version,
                    deploy.ref,
                    _text(deploy.time),
                    _json([m.__dict__ for m in deploy.migrations]),
                    _text(received_at),
                ),
            )

    def deploys(self) -> list[Deploy]:
        """Every deploy event received, oldest first."""
        with self._read() as db:
            rows = db.execute(
                "SELECT service, version, ref, time, migrations FROM deploys ORDER BY id"
            ).fetchall()
        return [
            Deploy(
                service=r[0],
                version=r[1],
                time=_required_time(r[3]),
                source="event",
                ref=r[2],
                migrations=tuple(MigrationFact(**m) for m in json.loads(r[4])),
            )
            for r in rows
        ]

    def rollbacks(self, service: str) -> list[datetime]:
        """When rollbacks of ``service`` were executed (or may have been: outcome unknown)."""
        with self._read() as db:
            rows = db.execute(
                "SELECT s.started_at FROM steps s JOIN incidents i ON i.id = s.incident_id"
                " WHERE i.service = ? AND s.name = 'execute'"
                " AND (s.outcome IS NULL OR s.outcome IN ('ok', 'unknown')) ORDER BY s.id",
                (service,),
            ).fetchall()
        return [_required_time(r[0]) for r in rows]


def _insert_decision(db: sqlite3.Connection, incident: int, decision: Decision, actor: str) -> None:
    db.execute(
        "INSERT INTO decisions (incident_id, time, actor, action, proposed, severity,"
        " rules, reason, approver, deadline, guards, value, target)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            incident,
            _text(decision.time),
            actor,
            decision.action.value,
            decision.proposed.value,
            decision.severity.value,
            json.dumps(list(decision.rules)),
            decision.reason,
            decision.approver,
            _text(decision.deadline),
            json.dumps(list(decision.guards)),
            decision.value,
            decision.target,
        ),
    )


def _insert_evidence(
    db: sqlite3.Connection, incident: int, at: datetime, kind: str, body: Any
) -> None:
    db.execute(
        "INSERT INTO evidence (incident_id, time, kind, body) VALUES (?,?,?,?)",
        (incident, _text(at), kind, _json(body)),
    )


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

_INCIDENT_COLUMNS = (
    "SELECT id, service, opened_at, closed_at, state, severity, action, origin, target,"
    " current_version, reason, summary, facts, updated_at FROM incidents"
)


def _incident(row: Sequence[Any]) -> IncidentRecord:
    return IncidentRecord(
        id=row[0],
        service=row[1],
        opened_at=_required_time(row[2]),
        closed_at=_time(row[3]),
        state=IncidentState(row[4]),
        severity=row[5],
        action=row[6],
        origin=row[7],
        target=row[8],
        current_version=row[9],
        reason=row[10],
        summary=row[11],
        facts=json.loads(row[12]),
        updated_at=_time(row[13]) or _required_time(row[2]),
    )


@dataclass(frozen=True)
class _Identity:
    """(device, inode) of the journal file and of its write-ahead log; None: absent."""

    main: tuple[int, int] | None
    wal: tuple[int, int] | None

    @classmethod
    def of(cls, path: Path) -> _Identity:
        return cls(_inode(path), _inode(path.with_name(path.name + "-wal")))

    def holds(self, now: _Identity) -> bool:
        """Whether the files at the path are still these (a log absent at first is not checked)."""
        return now.main == self.main and (self.wal is None or now.wal == self.wal)

    def change(self, now: _Identity, path: Path) -> str:
        """What happened to the files at ``path`` since this identity was taken."""
        if now.main != self.main:
            what, gone = f"the journal file {path}", now.main is None
        else:
            what, gone = f"the journal's write-ahead log {path}-wal", now.wal is None
        return f"{what} was {'removed' if gone else 'replaced'} while rollbackd had it open"


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        found = path.stat()
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


def _sync_directory(directory: Path) -> None:
    """Make a new name in ``directory`` durable."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def journal_path(state_dir: Path) -> Path:
    """Where the journal lives in the daemon's state directory."""
    return state_dir / "journal.sqlite3"
