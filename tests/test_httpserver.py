"""The HTTP server's connection cap: who is closed when the server is full."""

from __future__ import annotations

from typing import cast

from rollbackd.httpserver import ConnectionGuard, GuardedHttp, Limits, listen_backlog


class Transport:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


class Connection:
    """What the guard uses of a connection: its transport."""

    def __init__(self) -> None:
        self.transport = Transport()


def guard(max_connections: int, descriptors: int, dropped: list[str]) -> ConnectionGuard:
    limits = Limits(max_connections, idle_timeout=5, header_timeout=10, body_timeout=30)
    return ConnectionGuard(lambda: limits, descriptors, on_drop=dropped.append)


def connections(count: int) -> list[GuardedHttp]:
    return [cast("GuardedHttp", Connection()) for _ in range(count)]


def aborted(connection: GuardedHttp) -> bool:
    return cast("Connection", connection).transport.aborted


def test_the_cap_is_max_connections_and_never_more_than_half_the_descriptors() -> None:
    """A 1,024-file process keeps 512 connections at most, whatever max_connections says."""
    assert guard(1024, 1024, []).capacity() == 512
    assert guard(100, 65536, []).capacity() == 100
    assert listen_backlog(1024) < 1024 - 512  # one accepted burst fits in the other half


def test_a_newcomer_beyond_the_cap_closes_the_connection_waiting_longest() -> None:
    """Idle connections make room for a new one, oldest first; one serving a request is kept."""
    dropped: list[str] = []
    server = guard(3, 1024, dropped)
    first, second, third, fourth = connections(4)
    for connection in (first, second, third):
        assert server.admit(connection)
    server.serves(first)  # its request's headers arrived
    assert server.admit(fourth)
    assert [aborted(c) for c in (first, second, third, fourth)] == [False, True, False, False]
    assert server.open == {first, third, fourth}
    assert dropped == ["evicted"]


def test_a_connection_waiting_again_after_an_answer_goes_to_the_end_of_the_line() -> None:
    """Kept alive after its answer, a connection is evicted after those that waited before it."""
    server = guard(2, 1024, [])
    answered, idle, newcomer = connections(3)
    server.admit(answered)
    server.admit(idle)
    server.serves(answered)
    server.waits(answered)
    assert server.admit(newcomer)
    assert not aborted(answered) and aborted(idle)


def test_when_every_connection_is_serving_a_request_the_newcomer_is_refused() -> None:
    """No request under way is cut off for a new connection."""
    dropped: list[str] = []
    server = guard(2, 1024, dropped)
    busy = connections(2)
    for connection in busy:
        server.admit(connection)
        server.serves(connection)
    [newcomer] = connections(1)
    assert not server.admit(newcomer)
    assert not any(aborted(c) for c in busy)
    assert dropped == ["refused"]
    server.forget(busy[0])
    assert server.admit(newcomer)
