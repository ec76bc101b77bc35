"""Bounded external reads: a total deadline per call, a size cap, and JSON parse limits.

Every HTTP client in rollbackd (Prometheus and Alertmanager's API through
requests, probes and notifiers through httpx) bounds each socket operation
with a timeout, but a server can answer one byte just before each timeout runs
out: headers trickled a byte a second keep a one-second timeout happy for
ever. Here a call gets one total deadline (:func:`within`): each socket the
call connects is registered with it (:func:`watch`, or :func:`watch_httpx` as
an httpx ``trace`` extension), and a single watchdog thread shuts those
sockets down when the deadline passes, which ends any blocked read at once,
whatever the server does. The client then sees a broken connection, which its
caller reports as a timeout because :attr:`Deadline.expired` says so.

Answers are read incrementally up to a cap (:func:`read_capped`), so an endless
or huge answer costs at most the cap in memory, never the whole answer.
Before JSON is parsed, :func:`json_problem` rejects what would make a parser
recurse too deep or build giant numbers, in one pass over the bytes at C speed.

A resolver that hangs is the one thing no deadline here can cut: the C library
resolves names without a timeout of ours. Literal addresses never resolve.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import re
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

MAX_JSON_DEPTH = 64
"""Nesting levels an answer may have; Prometheus' deepest (a range query) has 5."""
MAX_NUMBER_LENGTH = 100
"""Characters of one bare JSON number; Prometheus writes sample values as strings and
timestamps in about 15, and Python refuses to convert integers of over 4,300 digits."""


class Deadline:
    """One call's total deadline; sockets watched during the call are shut down once it passes.

    Shutting a socket down (not closing it: the client still owns the file
    descriptor) wakes a read blocked on it, so the client ends at once with a
    broken connection. Once the call has ended (:meth:`end`), nothing is cut:
    a connection handed back to a pool stays usable.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._expired = False
        self._ended = False

    @property
    def expired(self) -> bool:
        """Whether the deadline passed while the call was running (its sockets were cut)."""
        return self._expired

    @property
    def ended(self) -> bool:
        return self._ended

    def left(self) -> float:
        """Seconds until the deadline (0 once it has passed)."""
        return max(self.at - time.monotonic(), 0.0)

    def watch(self, sock: socket.socket) -> None:
        """Cut ``sock`` when the deadline passes (at once if it has)."""
        with self._lock:
            if self._ended:
                return
            if self._expired:
                _cut(sock)
                return
            self._sockets.append(sock)

    def expire(self) -> None:
        """The deadline passed: cut every socket of a call still running."""
        with self._lock:
            if self._ended:
                return
            self._expired = True
            for sock in self._sockets:
                _cut(sock)
            self._sockets.clear()

    def end(self) -> None:
        """The call is over: forget its sockets; a later expiry cuts nothing."""
        with self._lock:
            self._ended = True
            self._sockets.clear()


def _cut(sock: socket.socket) -> None:
    # The plain socket's shutdown, also for a TLS socket: ssl.SSLSocket.shutdown would
    # drop its SSL object under the reading thread, which then fails with a ValueError.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Watchdog:
    """One thread that expires deadlines in time order, started on first use."""

    def __init__(self) -> None:
        self._wake = threading.Condition()
        self._due: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, deadline: Deadline) -> None:
        with self._wake:
            heapq.heappush(self._due, (deadline.at, next(self._order), deadline))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="rollbackd-deadlines", daemon=True
                )
                self._thread.start()
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._due and self._due[0][2].ended:
                    heapq.heappop(self._due)
                if not self._due:
                    self._wake.wait()
                    continue
                wait = self._due[0][0] - time.monotonic()
                if wait > 0:
                    self._wake.wait(wait)
                    continue
                deadline = heapq.heappop(self._due)[2]
            deadline.expire()


_WATCHDOG = _Watchdog()
_current = threading.local()


@contextlib.contextmanager
def within(seconds: float) -> Iterator[Deadline]:
    """Run the body as one call of at most ``seconds``: sockets it watches are cut after."""
    deadline = Deadline(seconds)
    outer: Deadline | None = getattr(_current, "deadline", None)
    _current.deadline = deadline
    _WATCHDOG.add(deadline)
    try:
        yield deadline
    finally:
        deadline.end()
        _current.deadline = outer


def watch(sock: socket.socket) -> None:
    """Register ``sock`` with the deadline of the call running on this thread, if any."""
    deadline: Deadline | None = getattr(_current, "deadline", None)
    if deadline is not None:
        deadline.watch(sock)


_CONNECTED = ("connect_tcp.complete", "start_tls.complete")


def watch_httpx(event: str, info: dict[str, Any]) -> None:
    """An httpx ``trace`` extension that watches each connection the request opens.

    It sees new connections only: a client that uses it keeps no idle
    connections (``max_keepalive_connections=0``), so every request connects.
    """
    if event.endswith(_CONNECTED):
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            watch(sock)


class TooLargeError(Exception):
    """An answer longer than the cap; nothing of it is kept."""

    def __init__(self, limit: int, shared: bool = False) -> None:
        if shared:
            message = f"answered more than {format_size(limit)} with the answers read beside it"
        else:
            message = f"answered more than {format_size(limit)}"
        super().__init__(message)
        self.limit = limit


_held = 0
"""Bytes of answers being read right now, by every :func:`read_capped` together."""
_held_lock = threading.Lock()


def read_capped(chunks: Iterable[bytes], limit: int, length: str | None = None) -> bytes:
    """The whole answer from ``chunks``, or :class:`TooLargeError` once it passes ``limit`` bytes.

    ``limit`` bounds the answers being read at the same time too: the cycle reads
    several rules at once, and a cycle's reads that outlive its budget run beside
    the next cycle's, so one cap per answer would allow several caps in memory.
    ``length`` (a Content-Length header) refuses an announced oversize before a byte is read.
    """
    global _held  # noqa: PLW0603 -- one count for the whole process, under its lock
    if length is not None and length.strip().isdigit() and int(length) > limit:
        raise TooLargeError(limit)
    parts: list[bytes] = []
    size = 0
    try:
        for chunk in chunks:
            if size + len(chunk) > limit:
                parts.clear()
                raise TooLargeError(limit)
            with _held_lock:
                if _held + len(chunk) > limit:
                    parts.clear()
                    raise TooLargeError(limit, shared=True)
                _held += len(chunk)
            size += len(chunk)
            parts.append(chunk)
        return b"".join(parts)
    finally:
        with _held_lock:
            _held -= size


def format_size(size: int) -> str:
    """``64 MiB``, ``512 KiB``, ``300 bytes``: sizes in messages and docs."""
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} bytes"


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_STRUCTURE = b'"[]{}\\'
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in _STRUCTURE)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_NUMBER_RUNS = bytes(ord("0") if b in b"-+.0123456789eE" else ord(" ") for b in range(256))
"""A table for bytes.translate: what may be part of a number becomes 0, the rest a space."""


def json_problem(
    body: bytes, max_depth: int = MAX_JSON_DEPTH, max_number: int = MAX_NUMBER_LENGTH
) -> str | None:
    """Why ``body`` must not be parsed as JSON (too deep, a giant number), or None.

    Brackets and digits inside strings are text, so strings are set aside
    first. Most answers have no backslash and no bracket in a string: then
    dropping each pair of adjacent quotes from the quotes-and-brackets of the
    answer leaves exactly the brackets outside strings, at C speed (were a
    string to hold a bracket, a quote would be left over, and the strings
    are set aside one by one instead). Each round then removes the innermost
    pairs of brackets, so the rounds a document takes to vanish are its
    depth; brackets that never vanish do not match, and no parser is asked
    to try them.
    """
    outside: bytes | None = None
    structure = body.translate(None, _NOT_STRUCTURE)
    brackets = structure.replace(b'""', b"") if b"\\" not in structure else b'"'
    if b'"' in brackets:
        outside = _STRING.sub(b'""', body)
        brackets = outside.translate(None, _NOT_BRACKETS)
    if b"0" * (max_number + 1) in body.translate(_NUMBER_RUNS):  # perhaps inside a string
        outside = _STRING.sub(b'""', body) if outside is None else outside
        if b"0" * (max_number + 1) in outside.translate(_NUMBER_RUNS):
            return f"a number longer than {max_number} characters"
    for _ in range(max_depth):
        if not brackets:
            return None
        inner = brackets.replace(b"[]", b"x").replace(b"{}", b"x").replace(b"x", b"")
        if len(inner) == len(brackets):
            return "JSON whose brackets do not match"
        brackets = inner
    return None if not brackets else f"JSON nested more than {max_depth} levels deep"
