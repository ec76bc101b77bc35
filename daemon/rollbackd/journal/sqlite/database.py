"""The SQLite file under the journal's stores: connections, transactions, checkpoints, and
whether the file can be written at all.

SQLite in WAL mode with ``synchronous=FULL``: a row is on disk when a
transaction returns, so a crash loses nothing already journaled. One
connection writes (every write takes its turn on it, under :attr:`Database.lock`);
reads use a second one, so that a long read never holds up a write (WAL lets
both go on at once). A third copies the WAL into the database file
(checkpoints) in a thread of its own, shortly after writes: done by the
committing connection, as SQLite does by default, a checkpoint (a few MB and
an fsync) would hold up every request waiting for that commit.

A write is refused (:class:`JournalUnavailable`) while the disk is full or the
file is read-only, and while the path no longer names the file opened (removed
or replaced under the running process): then what was journaled is copied where
a person, or a restart, finds it.
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rollbackd.errors import JournalError, JournalUnavailable
from rollbackd.logs import get_logger

log = get_logger("rollbackd.journal")

CHECKPOINT_PAUSE = 0.2
"""Seconds between two checkpoints while writes go on."""
AUTOCHECKPOINT_PAGES = 10_000
"""The committing connection checkpoints only past this WAL size (40 MB): a safety net."""
PROBE_PAUSE = 1.0
"""While the last write failed, :meth:`Database.problem` tries a test write at most
this often (seconds)."""
PROBE_BYTES = 4096
"""What a test write writes, and deletes in the same transaction: a page, so that it
needs room in the file and in the write-ahead log as a real write does."""
PROBE_TIME = "1970-01-01T00:00:00.000+00:00"
"""The test write's time: its row is deleted in its own transaction and never read, so it
needs no clock."""
SALVAGE_PAUSE = 10.0
"""Seconds between two attempts at copying a journal that was removed or replaced."""
NOT_THE_DISK = (
    sqlite3.IntegrityError,
    sqlite3.ProgrammingError,
    sqlite3.InterfaceError,
    sqlite3.DataError,
)
"""SQLite errors that are about the write itself (a bad reference, a closed connection),
not about whether the journal can be written: trying again would fail the same way."""


class Database:
    """One SQLite journal file, open for reading and writing; safe to share between threads.

    ``migrate`` brings its schema up to date once it is open, before anything
    else reads it (:func:`rollbackd.journal.sqlite.schema.migrate`).
    """

    def __init__(self, path: Path, migrate: Callable[[Database], None]) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.connection = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=False, timeout=30
            )
            self.connection.execute("PRAGMA journal_mode=WAL")
            self.connection.execute("PRAGMA synchronous=FULL")
            self.connection.execute("PRAGMA foreign_keys=ON")
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"cannot open the journal {path}: {exc}") from None
        self.lock = threading.RLock()
        """Held by every write: one transaction at a time on :attr:`connection`."""
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
        migrate(self)
        self._reader, self._read_lock = self.connection, self.lock
        if not in_memory:
            try:
                self.connection.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
                self._reader = sqlite3.connect(
                    str(path), isolation_level=None, check_same_thread=False, timeout=30
                )
                self._reader.execute("PRAGMA query_only=ON")
            except sqlite3.Error as exc:
                self._stopping.set()
                self._wrote.set()  # a migration may have started the checkpoint thread
                self.connection.close()
                raise JournalError(f"cannot open the journal {path}: {exc}") from None
            self._read_lock = threading.RLock()
            # The migration, or setting WAL mode on an existing file, created the log.
            self._identity = _Identity.of(self._where)

    def close(self) -> None:
        """Stop checkpointing and close the connections (what writes is closed first)."""
        self._stopping.set()
        self._wrote.set()
        if self._checkpointer is not None:
            self._checkpointer.join()
        if self._displaced is not None:
            if not self._kept():
                # The last chance: once this process exits, what it journaled into a
                # file no longer at the path is gone.
                with self.lock:
                    try:
                        now = _Identity.of(self._where)
                    except OSError as exc:
                        self._salvage = f"no copy could be kept ({exc})"
                    else:
                        self._salvage = self._keep_copy(now)
            # SQLite's last close deletes the write-ahead log and its index *by name*:
            # at the path, they may now be another file's. The process's exit closes
            # these connections without touching any file.
            log.warning(
                "the journal's connections are left open",
                reason=self._displaced,
                salvage=self._salvage,
            )
            return
        with self._read_lock:
            self._reader.close()
        with self.lock:
            # The same connection again in memory: closing twice is harmless.
            self.connection.close()

    def committed(self) -> None:
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
    def read(self) -> Iterator[sqlite3.Connection]:
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
    def transaction(self, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
        """One transaction: written durably on exit, or not at all; errors as JournalError.

        Never into a file that is no longer at the journal's path (JournalUnavailable,
        before and after: a commit into a removed file is not one to acknowledge).
        """
        with self.lock:
            self.refuse_if_displaced()
            try:
                self.connection.execute(f"BEGIN {mode}")
                yield self.connection
                self.connection.execute("COMMIT")
            except BaseException as exc:
                if self.connection.in_transaction:
                    with suppress(sqlite3.Error):  # the error to report is the first one
                        self.connection.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self.write_failed(exc) from exc
                raise
            self.refuse_if_displaced()
            self.succeeded()
            self.committed()

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

    def write_failed(self, exc: sqlite3.Error) -> JournalError:
        """The error a failed write raises; one about the disk or file is remembered."""
        if isinstance(exc, NOT_THE_DISK):
            return JournalError(f"the journal {self.path}: {exc}")
        failure = f"the journal {self.path} cannot be written: {exc}"
        if self._failure is None:
            log.error("the journal cannot be written", path=str(self.path), error=str(exc))
        self._failure = failure
        return JournalUnavailable(failure)

    def _probe(self) -> None:
        """A write that leaves nothing behind, to learn whether writes work again."""
        if not self.lock.acquire(timeout=0.2):
            return  # a write is under way: its outcome will say
        try:
            self._probed = time.monotonic()
            with self.transaction() as db:
                cursor = db.execute(
                    "INSERT INTO deliveries (received_at, source, alerts, duplicates, body)"
                    " VALUES (?, 'rollbackd: test write', 0, 0, ?)",
                    (PROBE_TIME, "x" * PROBE_BYTES),
                )
                db.execute("DELETE FROM deliveries WHERE id = ?", (cursor.lastrowid,))
            log.info("the journal can be written again", path=str(self.path))
        except JournalError:
            pass  # still failing: _failure says why
        finally:
            self.lock.release()

    def succeeded(self) -> None:
        """A write went through: the journal can be written (see :meth:`problem`)."""
        self._failure = None

    def refuse_if_displaced(self) -> None:
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
        due = time.monotonic() - self._salvage_tried >= SALVAGE_PAUSE
        if not self._kept() and due and self.lock.acquire(timeout=0.2):
            try:
                self._salvage_tried = time.monotonic()
                self._salvage = self._keep_copy(now)
            finally:
                self.lock.release()
        return f"{self._displaced}; {self._salvage or 'no copy kept yet'}"

    def _kept(self) -> bool:
        """Whether a copy of a displaced journal was kept (or it was found complete where it is)."""
        return self._salvage is not None and not self._salvage.startswith("no copy")

    def _keep_copy(self, now: _Identity) -> str:
        """Copy everything journaled where a person, or a restart, will find it; what was done.

        First the write-ahead log is emptied into the file opened, so that a log
        left at the path is never replayed onto another file. If the file was
        removed, the copy goes back to the path (a restart finds everything); if
        it was replaced, beside it (the new file is left alone for a person to
        judge). If only the log went, the file at the path already has it all.
        """
        try:
            busy, _, _ = self.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
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
            self.connection.backup(target)
            target.execute("PRAGMA journal_mode=WAL")
        except BaseException:
            target.close()
            destination.unlink(missing_ok=True)  # a partial copy only takes room
            raise
        target.close()


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


class SqliteStore:
    """A store whose SQL runs on a :class:`Database`: the stores of one journal share it."""

    def __init__(self, database: Database) -> None:
        self._database = database

    @property
    def path(self) -> Path:
        """The journal file."""
        return self._database.path
