"""The HTTP server's connections: capped below the descriptor limit, slow clients dropped.

uvicorn on its own keeps every connection a client opens for as long as the
client likes: one that sends nothing, its headers a byte a second (slowloris)
or half a body keeps its socket, and 1,100 of them exhaust a process limited to
1,024 descriptors. The daemon then cannot open a socket for its own probes, a
pipe for git or a file for its journal (a probe failing with EMFILE once looked
like the application being down, and a healthy deploy was reverted).
:func:`guarded_protocol` makes uvicorn's httptools protocol defend the process:

- A connection with no request under way (new, or kept alive after an answer)
  is closed after ``idle_timeout``, silently, as uvicorn's keep-alive does.
- A request's line and headers must arrive within ``header_timeout`` of its
  first byte, and its body within ``body_timeout`` of its headers; otherwise
  the client gets a 408 (if nothing was answered yet) and the connection is
  closed.
- At most :meth:`ConnectionGuard.capacity` connections are open: ``max_connections``,
  and never more than half the descriptor limit read at start, so the other half
  stays the daemon's own. A connection beyond it closes the one that has waited
  longest for a request, so idle connections can never shut out a client that
  sends its request at once; if every connection is serving a request, the new
  one is closed instead. A request is never answered 503 because of idle
  connections, which is what uvicorn's ``limit_concurrency`` (counting idle
  connections) would do.

uvicorn accepts every connection the kernel has queued before any of them is
seen here, so the listen backlog (:func:`listen_backlog`) is kept small enough
that one such burst cannot reach the descriptor limit either.

The limits are read from the running config at each connection, so a reload
applies them to the next one. What is dropped for protection is counted
(``rollbackd_http_connections_dropped_total``) and logged at most once a minute.
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from rollbackd.config import Config
from rollbackd.logs import get_logger

if TYPE_CHECKING:
    from rollbackd.state import State

log = get_logger("rollbackd.http")

Phase = Literal["idle", "headers", "body", "serving"]
"""Where a connection is: waiting for a request, receiving its headers or its body, or
being answered (the request fully received)."""

LOG_EVERY = 60.0
"""Seconds between two log lines about dropped connections (a flood would flood the log)."""
DEFAULT_DESCRIPTORS = 1024
"""What the descriptor limit is taken to be when the process has none (RLIM_INFINITY)."""


@dataclass(frozen=True)
class Limits:
    """The connection limits of ``[daemon]``, in seconds and connections."""

    max_connections: int
    idle_timeout: float
    header_timeout: float
    body_timeout: float


def connection_limits(config: Config) -> Limits:
    """The limits ``[daemon]`` sets now (a reload changes them for the next connection)."""
    daemon = config.daemon
    return Limits(
        max_connections=daemon.max_connections,
        idle_timeout=daemon.idle_timeout.total_seconds(),
        header_timeout=daemon.header_timeout.total_seconds(),
        body_timeout=daemon.body_timeout.total_seconds(),
    )


def descriptor_limit() -> int:
    """The process's soft limit on open files (RLIMIT_NOFILE): systemd's LimitNOFILE=."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return DEFAULT_DESCRIPTORS if soft == resource.RLIM_INFINITY else int(soft)


def listen_backlog(descriptors: int) -> int:
    """The listen backlog: uvicorn accepts all queued connections at once, so a burst
    of them must fit in the descriptors the connection cap leaves (an eighth of them)."""
    return max(16, min(2048, descriptors // 8))


class ConnectionGuard:
    """Every open connection of one server, and which of them wait for a request.

    Runs on the server's event loop only (uvicorn's protocols do), so it needs no lock.
    """

    def __init__(
        self,
        limits: Callable[[], Limits],
        descriptors: int,
        on_drop: Callable[[str], object] = lambda _reason: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.descriptors = descriptors
        self.on_drop = on_drop
        self.clock = clock
        self.open: set[GuardedHttp] = set()
        self.waiting: dict[GuardedHttp, None] = {}
        """Connections waiting for (the rest of) a request's headers, longest waiting first."""
        self._dropped: dict[str, int] = {}
        self._logged_at: float | None = None

    def capacity(self) -> int:
        """Open connections at most: ``max_connections``, and half the descriptor limit."""
        return max(1, min(self.limits().max_connections, self.descriptors // 2))

    def admit(self, connection: GuardedHttp) -> bool:
        """Take a new connection, closing the longest waiting one if the server is full;
        False if every open connection is serving a request (close the new one then)."""
        if len(self.open) >= self.capacity():
            longest = next(iter(self.waiting), None)
            if longest is None:
                self.dropped("refused")
                return False
            self.forget(longest)
            longest.transport.abort()
            self.dropped("evicted")
        self.open.add(connection)
        self.waits(connection)
        return True

    def waits(self, connection: GuardedHttp) -> None:
        """``connection`` waits for a request from now on (it goes to the end of the line)."""
        self.waiting.pop(connection, None)
        self.waiting[connection] = None

    def serves(self, connection: GuardedHttp) -> None:
        """``connection`` has a request's headers: it is no longer evicted for a newcomer."""
        self.waiting.pop(connection, None)

    def forget(self, connection: GuardedHttp) -> None:
        self.open.discard(connection)
        self.waiting.pop(connection, None)

    def dropped(self, reason: str) -> None:
        """Count a connection closed to protect the server, and say so at most once a minute."""
        self.on_drop(reason)
        self._dropped[reason] = self._dropped.get(reason, 0) + 1
        now = self.clock()
        if self._logged_at is None or now - self._logged_at >= LOG_EVERY:
            log.warning(
                "HTTP connections dropped to protect the daemon",
                dropped=dict(self._dropped),
                open=len(self.open),
                capacity=self.capacity(),
                descriptors=self.descriptors,
                since_seconds=None if self._logged_at is None else round(now - self._logged_at),
            )
            self._dropped.clear()
            self._logged_at = now


class GuardedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol with the deadlines and the cap of :class:`ConnectionGuard`.

    Subclasses are made by :func:`guarded_protocol`, which sets ``guard``.
    """

    guard: ConnectionGuard

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = self.guard.limits()
        self.timeout_keep_alive = self.limits.idle_timeout  # type: ignore[assignment]
        self.phase: Phase = "idle"
        self.deadline: asyncio.TimerHandle | None = None

    # -- the connection ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.guard.admit(self):
            transport.abort()
            return
        self._idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.forget(self)
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.phase == "idle" and data:
            # The first byte of a request: from now on its headers have a deadline. (Not
            # httptools' on_message_begin: it skips blank lines, which would have none.)
            self.phase = "headers"
            self._arm(self.limits.header_timeout, "header_timeout")
        super().data_received(data)

    # -- httptools' callbacks ------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self.guard.serves(self)
        self.phase = "body"
        self._arm(self.limits.body_timeout, "body_timeout")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self.phase = "serving"
        answered = self.cycle is not None and self.cycle.response_complete
        super().on_message_complete()
        if answered:  # answered before its body was read (401, 413): now it is all in
            self._idle()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self.phase == "body":
            # Answered before the body arrived: the body's deadline still runs, not the
            # keep-alive uvicorn just armed.
            self._unset_keepalive_if_required()
        elif self.phase == "serving" and self.timeout_keep_alive_task is not None:
            self._idle()  # else a pipelined request has started

    # -- deadlines -----------------------------------------------------------------------

    def _idle(self) -> None:
        """Wait for the next request, for ``idle_timeout`` at most (uvicorn's keep-alive)."""
        self._disarm()
        self.phase = "idle"
        self.guard.waits(self)
        self._unset_keepalive_if_required()
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def _arm(self, seconds: float, reason: str) -> None:
        self._disarm()
        self.deadline = self.loop.call_later(seconds, self._expired, reason)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _expired(self, reason: str) -> None:
        """The client was too slow: a 408 unless something was answered, then close."""
        self.deadline = None
        if self.transport.is_closing():
            return
        self.guard.dropped(reason)
        if self.phase == "body":
            answered = self.cycle.response_started
            self.cycle.disconnected = True  # the application's answer, if any, is not sent now
            self.cycle.message_event.set()  # and a request reading its body sees the disconnect
            if not answered:
                self.transport.write(_timed_out("body", self.limits.body_timeout))
        else:
            self.transport.write(_timed_out("request line and headers", self.limits.header_timeout))
        self.transport.close()


def _timed_out(part: str, seconds: float) -> bytes:
    """A 408 with the API's JSON error body, closing the connection."""
    body = json.dumps(
        {"error": f"the {part} did not arrive within {seconds:g}s", "field": "body"}
    ).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def server_options(state: State) -> dict[str, Any]:
    """The ``uvicorn.Config`` arguments that guard a daemon's server: the protocol and
    the backlog, sized from the descriptor limit the process has now."""
    descriptors = descriptor_limit()
    guard = ConnectionGuard(
        lambda: connection_limits(state.config),
        descriptors,
        on_drop=lambda reason: state.metrics.connections_dropped.labels(reason).inc(),
    )
    log.info(
        "connection limits",
        descriptors=descriptors,
        max_connections=guard.capacity(),
        backlog=listen_backlog(descriptors),
    )
    return {"http": guarded_protocol(guard), "backlog": listen_backlog(descriptors)}


def guarded_protocol(guard: ConnectionGuard) -> type[GuardedHttp]:
    """The protocol class to give ``uvicorn.Config(http=...)``: its connections share ``guard``."""
    return type("GuardedHttp", (GuardedHttp,), {"guard": guard})
