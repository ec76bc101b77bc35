"""The PostgreSQL database under the journal's stores: connections, transactions, and whether
it can be written at all.

Two connections, each guarded by a lock, as the SQLite store has: one writes (every write
takes its turn on it, under :attr:`Database.lock`), one reads (read-only, repeatable-read
transactions, so that an incident and what is kept with it are read from one snapshot). Not
a pool: the daemon's writes are few and go one at a time anyway (the webhook deliveries are
group-committed by one thread), reads are short indexed lookups, and two sessions per daemon
keep PostgreSQL's connection count predictable with no other dependency.

Every call is bounded: ``connect_timeout``, ``statement_timeout``, ``lock_timeout`` and TCP
keepalives and ``tcp_user_timeout`` (a server that vanished from the network), and at last
by a deadline of the client's own (:class:`Watchdog`): a path that takes what is sent and
never answers (a hung server or proxy, a middlebox that acknowledges) defeats every timeout
of the server's and of TCP. A connection error or a timeout is :class:`JournalUnavailable`:
the connection is dropped, and the next call connects again. A transaction whose ``BEGIN``
fails on a connection that went stale while idle (PostgreSQL restarted) is tried once more
on a new connection: nothing was sent. A ``COMMIT`` cut off by a lost connection is
reported unavailable although PostgreSQL may have committed it: no client can know, and
the stores' writes are kept so that the retries that matter (webhook deliveries) change nothing.

The password (in the URL, from ``password_file``, or from ``PGPASSFILE`` by libpq) is never
in a message or a log: places are shown as ``postgresql://user@host:port/db``
(:func:`shown_url`) and every error text is scrubbed of it.
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg import pq
from psycopg.errors import error_from_result
from psycopg.types.string import StrDumper

from rollbackd.errors import JournalError, JournalUnavailable, NotLeader
from rollbackd.journal.codec import encode_json
from rollbackd.journal.pgurl import password_of, scrub, shown_url
from rollbackd.logs import get_logger

log = get_logger("rollbackd.journal")

PROBE_PAUSE = 1.0
"""While the last call failed, :meth:`Database.problem` tries the server at most this often."""
THE_WRITE_ITSELF = (
    psycopg.IntegrityError,
    psycopg.DataError,
    psycopg.ProgrammingError,
    psycopg.NotSupportedError,
)
"""Errors about the statement (a bad reference, a value PostgreSQL refuses), not about
whether the journal can be written: trying again would fail the same way."""

Connection = psycopg.Connection[tuple[Any, ...]]


class Watchdog:
    """Ends a call that outlives its deadline: shuts its session's socket down, so that the
    client's wait for an answer ends at once (psycopg raises OperationalError, and the
    session is dropped). One thread for every session of a journal, started at need."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._armed: dict[int, tuple[float, Connection]] = {}
        self._next = 0
        self._thread: threading.Thread | None = None
        self._sleeping_until = -math.inf
        """Until when the watching thread sleeps (-inf: it is awake, or not started)."""
        self.fired: set[int] = set()
        """Sessions (``id()``) whose call the watchdog ended."""

    @contextmanager
    def bounded(self, connection: Connection, seconds: float | None) -> Iterator[None]:
        """Within it, ``connection``'s calls end after ``seconds`` in total (None: no bound)."""
        if seconds is None:
            yield
            return
        with self._cond:
            self._next += 1
            token = self._next
            at = time.monotonic() + seconds
            self._armed[token] = (at, connection)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="journal-deadlines", daemon=True
                )
                self._thread.start()
            if at < self._sleeping_until:  # else it wakes in time: no switch per transaction
                self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._armed.pop(token, None)

    def _watch(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                due = [t for t, (at, _) in self._armed.items() if at <= now]
                late = [self._armed.pop(t)[1] for t in due]
                if not late:
                    self._sleeping_until = min(
                        (at for at, _ in self._armed.values()), default=now + 60
                    )
                    self._cond.wait(max(self._sleeping_until - now, 0.0) + 0.001)
                    self._sleeping_until = -math.inf
                    continue
            for connection in late:
                self.fired.add(id(connection))
                _cut(connection)


def _cut(connection: Connection) -> None:
    """Shut the session's socket down under whatever waits on it (nothing is closed here:
    its owner drops it when its call fails)."""
    with suppress(OSError, psycopg.Error):
        fd = connection.pgconn.socket
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()


def json_text(value: Any) -> str:
    """JSON as the other stores write it (:func:`~rollbackd.journal.codec.encode_json`), but
    valid: PostgreSQL refuses NaN and infinities, so a non-finite number is kept as the
    text JSON would spell it (``"NaN"``, ``"Infinity"``); ValueError for a circular value."""
    text = encode_json(value)
    if "NaN" not in text and "Infinity" not in text:
        return text
    return encode_json(_finite(value))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def kept_text(text: str) -> bytes:
    """Text as PostgreSQL keeps it: a NUL (which no text column takes, and a hostile label may
    hold) becomes U+FFFD, and a lone surrogate (which no encoder takes) "?"; anything else is
    sent as is. A webhook whose labels hold a NUL is journaled, not refused for ever."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    return text.encode("utf-8", "replace")


class _Text(StrDumper):
    """A text parameter, sent as :func:`kept_text` says."""

    def dump(self, obj: str) -> bytes:
        return kept_text(obj)


class Plain:
    """A transaction of the writing session spoken to libpq itself (:meth:`Database.plain`)."""

    def __init__(self, connection: Connection, prepared: set[bytes]) -> None:
        self._pgconn = connection.pgconn
        self._prepared = prepared
        """The statements already prepared in this session, by name."""

    def run(self, statements: bytes) -> pq.abc.PGresult:
        """Text of one or more statements, without parameters; the last one's result."""
        return _checked(self._pgconn.exec_(statements))

    def prepared(self, name: bytes, statement: bytes, *params: bytes) -> pq.abc.PGresult:
        """``statement`` (parameters ``$1``... given as text) under ``name``, prepared the
        first time this session runs it: PostgreSQL parses and plans it once."""
        if name not in self._prepared:
            _checked(self._pgconn.prepare(name, statement))
            self._prepared.add(name)
        return _checked(self._pgconn.exec_prepared(name, params))


def _checked(result: pq.abc.PGresult) -> pq.abc.PGresult:
    """The result of a statement that succeeded; the error psycopg would raise for another."""
    if result.status not in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK):
        raise error_from_result(result)
    return result


def _send(db: Connection, statement: str, *, plain: bool) -> None:
    """A statement without parameters, through psycopg or (``plain``) to libpq itself."""
    if plain:
        _checked(db.pgconn.exec_(statement.encode()))
    else:
        db.execute(statement)


class Database:
    """One PostgreSQL journal, open for reading and writing; safe to share between threads.

    ``migrate`` brings its schema up to date on the first connection, before anything reads
    it (:func:`rollbackd.journal.postgresql.schema.migrate`). ``timeout`` bounds connecting
    and each statement (seconds).
    """

    def __init__(
        self,
        url: str,
        migrate: Callable[[Connection], None],
        *,
        password: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        self._url = url
        self._password = password
        self._secrets = (password, password_of(url), urlsplit(url).password)
        self.timeout = timeout
        self.location = shown_url(url)
        """Where the journal is, without the password."""
        self.lock = threading.RLock()
        """Held by every write: one transaction at a time on the writing connection."""
        self._read_lock = threading.RLock()
        self._writer: Connection | None = None
        self._reader: Connection | None = None
        self._prepared: weakref.WeakKeyDictionary[Connection, set[bytes]] = (
            weakref.WeakKeyDictionary()
        )
        """The statements :class:`Plain` prepared in each session."""
        self._failure: str | None = None
        """Why the last call failed (unreachable, timed out); None once one succeeds."""
        self._probed = -math.inf
        self._closed = False
        self._fence = threading.local()
        """This thread's (cluster, epoch) while it writes as a leader (:meth:`fenced`)."""
        self.watchdog = Watchdog()
        self.bound: float | None = 2 * timeout
        """Seconds a transaction may take in all, from BEGIN to COMMIT (its statements are
        bounded by ``timeout`` each, on the server, which a frozen path never reaches)."""
        try:
            self._writer = self.connect()
            migrate(self._writer)
        except psycopg.Error as exc:
            if self._writer is not None:
                self._writer.close()
            reason = self.reason(exc)
            raise JournalError(f"cannot open the journal {self.location}: {reason}") from None
        except BaseException:
            if self._writer is not None:
                self._writer.close()
            raise

    def connect(self, *, statement_timeout: float | None = None) -> Connection:
        """A new session, every call in it bounded; autocommit: transactions are explicit."""
        ms = int((self.timeout if statement_timeout is None else statement_timeout) * 1000)
        extra: dict[str, Any] = {} if self._password is None else {"password": self._password}
        connection: Connection = psycopg.connect(
            self._url,
            autocommit=True,
            connect_timeout=max(1, math.ceil(self.timeout)),
            application_name="rollbackd",
            options=(
                f"-c statement_timeout={ms} -c lock_timeout={ms} "
                f"-c idle_in_transaction_session_timeout={max(ms, 1000) * 4} -c TimeZone=UTC"
            ),
            keepalives=1,
            keepalives_idle=max(1, math.ceil(self.timeout)),
            keepalives_interval=1,
            keepalives_count=3,
            tcp_user_timeout=max(ms, 1000) * 2,
            **extra,
        )
        connection.adapters.register_dumper(str, _Text)
        return connection

    def reason(self, exc: BaseException, connection: Connection | None = None) -> str:
        """What went wrong, in one line, without the password (``connection``: the session
        it happened on, to say when the watchdog ended its call)."""
        if connection is not None and id(connection) in self.watchdog.fired:
            self.watchdog.fired.discard(id(connection))
            return "no answer in time (the client's own deadline: the path or server hangs)"
        text = " ".join(str(exc).split()) or type(exc).__name__
        return scrub(text, *self._secrets)

    def close(self) -> None:
        """Close both sessions; later calls are refused."""
        self._closed = True
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        with self.lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    def refuse_if_closed(self) -> None:
        if self._closed:
            raise JournalError(f"the journal {self.location} is closed")

    @contextmanager
    def fenced(self, cluster: str, epoch: int) -> Iterator[None]:
        """Within it, every transaction of this thread first checks that ``epoch`` is the
        cluster's and its lease runs, and takes a share lock on the lease row: a takeover
        (an UPDATE of that row) waits for the transaction's commit, and one that committed
        first makes it fail with NotLeader. Nested: the innermost applies."""
        before = getattr(self._fence, "value", None)
        self._fence.value = (cluster, epoch)
        try:
            yield
        finally:
            self._fence.value = before

    @contextmanager
    def transaction(
        self, *, fenced: bool = True, bounded: bool = True, settings: str = ""
    ) -> Iterator[Connection]:
        """One transaction: committed on exit, or not at all; errors as JournalError.
        In :meth:`fenced` (unless ``fenced`` is False), only while this replica leads.
        It ends within :attr:`bound` seconds in all (unless ``bounded`` is False).
        ``settings`` (``SET LOCAL`` statements, the caller's own text) are sent with its
        ``BEGIN``, in the same round trip."""
        fence = getattr(self._fence, "value", None) if fenced else None
        with self._writing(settings, plain=False, bounded=bounded) as db:
            if fence is not None:
                _check_fence(db, *fence)
            yield db

    @contextmanager
    def plain(self, *, settings: str = "") -> Iterator[Plain]:
        """One transaction as :meth:`transaction`'s, but its statements sent to libpq itself:
        psycopg's Python costs some 50 µs of CPU per statement, most of what a batch of
        webhook deliveries costs the client. Never fenced: for what every replica writes."""
        with self._writing(settings, plain=True, bounded=True) as db:
            yield Plain(db, self._prepared.setdefault(db, set()))

    @contextmanager
    def _writing(self, settings: str, *, plain: bool, bounded: bool) -> Iterator[Connection]:
        """The writing session within a transaction begun (with ``settings``), committed on
        exit, rolled back on an error (which becomes JournalError)."""
        with self.lock:
            self.refuse_if_closed()
            db = self._begin(
                f"BEGIN; {settings}" if settings else "BEGIN", reading=False, plain=plain
            )
            try:
                with self.watchdog.bounded(db, self.bound if bounded else None):
                    yield db
                    _send(db, "COMMIT", plain=plain)
            except BaseException as exc:
                if not db.closed and id(db) not in self.watchdog.fired:
                    with suppress(psycopg.Error):  # the error to report is the first one
                        _send(db, "ROLLBACK", plain=plain)
                if isinstance(exc, psycopg.Error):
                    raise self.failed(exc, reading=False, connection=db) from exc
                raise
            self.succeeded()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """One read-only transaction on the reading session: a consistent snapshot."""
        with self._read_lock:
            self.refuse_if_closed()
            db = self._begin("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", reading=True)
            try:
                with self.watchdog.bounded(db, self.bound):
                    yield db
            except psycopg.Error as exc:
                raise self.failed(exc, reading=True, connection=db) from exc
            finally:
                if not db.closed:
                    with suppress(psycopg.Error):
                        db.execute("COMMIT")

    def _begin(self, statement: str, *, reading: bool, plain: bool = False) -> Connection:
        """A session with a transaction begun; a stale one is replaced once (nothing was sent)."""
        while True:
            stale = (self._reader if reading else self._writer) is not None
            try:
                db = self._session(reading)
                with self.watchdog.bounded(db, self.timeout):
                    _send(db, statement, plain=plain)
            except psycopg.Error as exc:
                if isinstance(exc, THE_WRITE_ITSELF):
                    raise self.failed(exc, reading=reading) from exc
                self._drop(reading)
                if not stale:  # a new session failed: the server, not the session
                    raise self.failed(exc, reading=reading) from exc
            else:
                return db

    def _session(self, reading: bool) -> Connection:
        current = self._reader if reading else self._writer
        if current is not None and not current.closed:
            return current
        fresh = self.connect()
        if reading:
            self._reader = fresh
        else:
            self._writer = fresh
        return fresh

    def _drop(self, reading: bool) -> None:
        current = self._reader if reading else self._writer
        if current is not None:
            with suppress(psycopg.Error):
                current.close()
        if reading:
            self._reader = None
        else:
            self._writer = None

    def failed(
        self, exc: psycopg.Error, *, reading: bool, connection: Connection | None = None
    ) -> JournalError:
        """The error a failed call raises; one about reaching the server is remembered."""
        reason = self.reason(exc, connection)
        if isinstance(exc, THE_WRITE_ITSELF):
            return JournalError(f"the journal {self.location}: {reason}")
        self._drop(reading)
        failure = f"the journal {self.location} cannot be reached: {reason}"
        if self._failure is None:
            log.error("the journal cannot be reached", journal=self.location, error=reason)
        self._failure = failure
        return JournalUnavailable(failure)

    def succeeded(self) -> None:
        """A write went through: the journal can be written (see :meth:`problem`)."""
        if self._failure is not None:
            log.info("the journal can be written again", journal=self.location)
        self._failure = None

    def problem(self) -> str | None:
        """Why the journal cannot be written now; None when it can, as far as is known.

        Once a call failed, the server is tried here (connect, and ask whether it takes
        writes: a standby does not) at most once per :data:`PROBE_PAUSE`, so that the
        answer turns when PostgreSQL is back even if nothing else writes.
        """
        if self._failure is not None and time.monotonic() - self._probed >= PROBE_PAUSE:
            self._probe()
        return self._failure

    def _probe(self) -> None:
        if not self.lock.acquire(timeout=0.2):
            return  # a write is under way: its outcome will say
        try:
            self._probed = time.monotonic()
            with self.transaction(fenced=False) as db:
                row = db.execute("SELECT pg_is_in_recovery()").fetchone()
            if row is not None and row[0]:
                self._failure = f"the journal {self.location} is a standby: it cannot be written"
        except JournalError:
            pass  # still failing: _failure says why
        finally:
            self.lock.release()


def _check_fence(db: Connection, cluster: str, epoch: int) -> None:
    """NotLeader unless ``epoch`` is the cluster's and its lease runs, by the server's clock;
    the row stays share-locked to the end of the transaction."""
    row = db.execute(
        "SELECT epoch, holder, expires_at > now() FROM leadership WHERE cluster = %s FOR SHARE",
        (cluster,),
    ).fetchone()
    if row is None or int(row[0]) != epoch or not row[2]:
        now = "nobody" if row is None else f"epoch {row[0]}, {row[1]}"
        state = "" if row is None or row[2] else ", lease ran out"
        raise NotLeader(
            f"cluster {cluster}: not the leader of epoch {epoch} any more "
            f"(the lease: {now}{state}); nothing was written"
        )
