"""The limits every external read is held to: JSON parse limits, the size cap, the deadline."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from rollbackd.bounded import (
    MAX_JSON_DEPTH,
    TooLargeError,
    format_size,
    json_problem,
    read_capped,
    watch,
    within,
)


def matrix(series: int, samples: int) -> bytes:
    """A Prometheus range answer, the deepest shape it sends (5 levels)."""
    result = [
        {
            "metric": {"__name__": "up", "service": f"svc-{i}", "le": "+Inf"},
            "values": [[1700000000 + 15 * j, f"{0.25 * j:g}"] for j in range(samples)],
        }
        for i in range(series)
    ]
    return json.dumps(
        {"status": "success", "data": {"resultType": "matrix", "result": result}}
    ).encode()


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_prometheus_answers_are_within_the_limits() -> None:
    """Every shape Prometheus sends passes, however many series and samples."""
    assert json_problem(matrix(50, 200)) is None
    assert json_problem(b'{"status":"error","errorType":"bad_data","error":"parse error"}') is None
    assert json_problem(nested(MAX_JSON_DEPTH)) is None


def test_json_nested_deeper_than_the_limit_is_refused_however_deep() -> None:
    """50,000 levels (which would make the parser raise RecursionError) is a clear reason."""
    for depth in (MAX_JSON_DEPTH + 1, 50_000):
        assert json_problem(nested(depth)) == f"JSON nested more than {MAX_JSON_DEPTH} levels deep"
    mixed = b'{"a": [{"b": [' * 40 + b"1" + b"]}]}" * 40
    assert json_problem(mixed) == f"JSON nested more than {MAX_JSON_DEPTH} levels deep"


def test_brackets_inside_strings_are_text() -> None:
    """Label values with brackets, braces, quotes and escapes neither deepen nor unbalance."""
    labels = {"query": 'sum(rate(x{job=~"a|b"}[5m]))' + "[" * 100, "path": 'C:\\\\x"]]]}}}'}
    body = json.dumps({"data": {"result": [{"metric": labels, "value": [1, "2"]}]}}).encode()
    assert json_problem(body) is None
    hidden_depth = b'["' + b"]" * 100 + b'", ' + nested(MAX_JSON_DEPTH + 1) + b"]"
    assert json_problem(hidden_depth) == f"JSON nested more than {MAX_JSON_DEPTH} levels deep"


def test_unmatched_brackets_are_refused_before_any_parser_sees_them() -> None:
    """An answer cut short after 50,000 opening brackets never reaches the parser."""
    assert json_problem(b"[" * 50_000) == "JSON whose brackets do not match"
    assert json_problem(b'{"a": [}]') == "JSON whose brackets do not match"


def test_a_giant_number_is_refused_but_a_long_string_of_digits_is_text() -> None:
    """A 5,000-digit number (Python refuses to convert it) is a reason; in a string it is text."""
    assert json_problem(b'{"value": ' + b"9" * 5000 + b"}") == "a number longer than 100 characters"
    assert json_problem(b'{"value": "' + b"9" * 5000 + b'"}') is None
    assert json_problem(b'{"id\\"": ' + b"1" * 101 + b"}") == "a number longer than 100 characters"
    assert json_problem(b'{"value": -1.7976931348623157e+308}') is None


def test_an_answer_over_the_cap_is_refused_with_nothing_kept() -> None:
    """Chunks are read until the cap; one byte more ends the read."""
    assert read_capped(iter([b"ab", b"cd"]), 4) == b"abcd"
    with pytest.raises(TooLargeError, match="answered more than 3 bytes"):
        read_capped(iter([b"ab", b"cd"]), 3)


def test_an_announced_oversize_is_refused_before_reading() -> None:
    """A Content-Length over the cap ends the read before the first chunk is asked for."""

    def chunks() -> Iterator[bytes]:
        raise AssertionError("the body was read")
        yield b""

    with pytest.raises(TooLargeError, match="answered more than 64 MiB"):
        read_capped(chunks(), 64 << 20, str(1_500_000_000))


def test_sizes_read_as_people_write_them() -> None:
    """Messages and docs name the cap as configured."""
    assert [format_size(n) for n in (64 << 20, 512 << 10, 4 << 30, 1000)] == [
        "64 MiB",
        "512 KiB",
        "4 GiB",
        "1000 bytes",
    ]


def test_a_read_blocked_past_the_deadline_ends_at_the_deadline() -> None:
    """A socket watched during a call is cut when the call's deadline passes, waking its read."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        started = time.monotonic()
        with within(0.2) as deadline:
            watch(ours)
            assert ours.recv(1) == b""  # woken by the cut, not by the peer
        assert deadline.expired
        assert 0.15 < time.monotonic() - started < 5


def test_a_call_that_ended_in_time_leaves_its_socket_alone() -> None:
    """A connection handed back to a pool after its call is never cut by that call's deadline."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        with within(0.05) as deadline:
            watch(ours)
        time.sleep(0.2)
        theirs.sendall(b"x")
        assert ours.recv(1) == b"x"
        assert not deadline.expired


def test_answers_read_at_once_share_the_cap() -> None:
    """Two answers of 600 bytes read at once under a 1,000-byte cap: the second is refused."""
    inner: list[str] = []

    def outer() -> Iterator[bytes]:
        yield b"x" * 600
        with pytest.raises(TooLargeError) as refused:
            read_capped(iter([b"y" * 600]), 1000)
        inner.append(str(refused.value))
        yield b"x" * 100

    assert read_capped(outer(), 1000) == b"x" * 700
    assert inner == ["answered more than 1000 bytes with the answers read beside it"]
    assert read_capped(iter([b"y" * 600]), 1000) == b"y" * 600  # released once read
