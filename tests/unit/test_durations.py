"""Prometheus-style durations as written in config and rule files (design §4)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollbackd.core.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("15s", timedelta(seconds=15)),
        ("2m", timedelta(minutes=2)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("500ms", timedelta(milliseconds=500)),
        ("1d", timedelta(days=1)),
        ("1w", timedelta(days=7)),
        ("1y", timedelta(days=365)),
        ("0s", timedelta(0)),
        ("1m30s500ms", timedelta(minutes=1, seconds=30, milliseconds=500)),
        ("1d2h3m4s5ms", timedelta(days=1, hours=2, minutes=3, seconds=4, milliseconds=5)),
        ("90m", timedelta(minutes=90)),
        (" 15s ", timedelta(seconds=15)),
    ],
)
def test_parse_duration_accepts_prometheus_durations(text: str, expected: timedelta) -> None:
    """Each Prometheus duration form parses to the span of time it names."""
    assert parse_duration(text) == expected


def test_minutes_and_milliseconds_are_not_confused() -> None:
    """'5m' is five minutes and '5ms' five milliseconds, whichever comes first in the text."""
    assert parse_duration("5m") == timedelta(minutes=5)
    assert parse_duration("5ms") == timedelta(milliseconds=5)
    assert parse_duration("5m5ms") == timedelta(minutes=5, milliseconds=5)


@pytest.mark.parametrize(
    "text",
    [
        "5",  # a bare number is ambiguous
        "",
        "   ",
        "1m1h",  # units must come largest first
        "30s1m",
        "500ms1s",
        "1h1h",  # each unit at most once
        "-1s",
        "abc",
        "1.5h",
        "15 s",
        "1h 30m",
        "15S",
        "s",
        "15sec",
    ],
)
def test_parse_duration_rejects_malformed_text_and_says_what_is_accepted(text: str) -> None:
    """A malformed duration is a ValueError quoting the input and showing the accepted form."""
    with pytest.raises(ValueError, match="expected a duration such as '15s'") as caught:
        parse_duration(text)
    assert repr(text) in str(caught.value)


def test_parse_duration_rejects_absurdly_long_durations() -> None:
    """More than 100 years is refused rather than overflowing later; 100 years is accepted."""
    assert parse_duration("100y") == timedelta(days=36500)
    with pytest.raises(ValueError, match="longer than 100 years"):
        parse_duration("101y")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (timedelta(0), "0s"),
        (timedelta(seconds=15), "15s"),
        (timedelta(minutes=2), "2m"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(milliseconds=500), "500ms"),
        (timedelta(days=1), "1d"),
        (timedelta(days=7), "7d"),
        (timedelta(minutes=90), "1h30m"),
        (timedelta(days=1, seconds=1, milliseconds=1), "1d1s1ms"),
        (timedelta(seconds=-90), "-1m30s"),
    ],
)
def test_format_duration_writes_durations_as_config_would(value: timedelta, expected: str) -> None:
    """A duration is shown the way a person would write it in config, largest unit first."""
    assert format_duration(value) == expected


@pytest.mark.parametrize("text", ["15s", "2m", "1h30m", "500ms", "1d", "1d12h", "2h0m5s"])
def test_format_then_parse_gives_back_the_same_duration(text: str) -> None:
    """What format_duration writes, parse_duration reads back to the same duration."""
    value = parse_duration(text)
    assert parse_duration(format_duration(value)) == value


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=100 * 365 * 24 * 3600 * 1000))
def test_round_trip_holds_for_any_millisecond_duration(milliseconds: int) -> None:
    """Every non-negative duration to the millisecond survives format then parse unchanged."""
    value = timedelta(milliseconds=milliseconds)
    assert parse_duration(format_duration(value)) == value
