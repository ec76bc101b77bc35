"""Prometheus-style durations: ``15s``, ``2m``, ``1h30m``, ``1d``, ``500ms``.

Pure parsing and formatting. Units must appear largest first, each at most
once, as Prometheus' own ``model.ParseDuration`` requires; a bare number is
refused because ``for = "5"`` is ambiguous.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

_UNITS: tuple[tuple[str, int], ...] = (
    ("y", 365 * 24 * 3600 * 1000),
    ("w", 7 * 24 * 3600 * 1000),
    ("d", 24 * 3600 * 1000),
    ("h", 3600 * 1000),
    ("m", 60 * 1000),
    ("s", 1000),
    ("ms", 1),
)
_PATTERN = re.compile(
    r"^(?:(?P<y>\d{1,18})y)?(?:(?P<w>\d{1,18})w)?(?:(?P<d>\d{1,18})d)?(?:(?P<h>\d{1,18})h)?"
    r"(?:(?P<m>\d{1,18})m(?!s))?(?:(?P<s>\d{1,18})s)?(?:(?P<ms>\d{1,18})ms)?$"
)
_MAX_MS = 100 * 365 * 24 * 3600 * 1000


def parse_duration(text: str) -> timedelta:
    """Parse a Prometheus duration; raise ValueError naming the accepted form."""
    raw = text.strip()
    match = _PATTERN.match(raw)
    if not raw or match is None or not any(match.groupdict().values()):
        raise ValueError(f"expected a duration such as '15s', '2m' or '1h30m', got {text!r}")
    total_ms = 0
    for unit, factor in _UNITS:
        part = match.group(unit)
        if part is not None:
            total_ms += int(part) * factor
    if total_ms > _MAX_MS:
        raise ValueError(f"duration {text!r} is longer than 100 years")
    return timedelta(milliseconds=total_ms)


@lru_cache(maxsize=4096)
def format_duration(value: timedelta) -> str:
    """Format a duration the way it would be written in config (``1h30m``, ``0s``).

    Remembered: every inconclusive (rule, service) says how long its data has been
    missing, each cycle, and those durations are a few multiples of the poll interval."""
    total_ms = round(value.total_seconds() * 1000)
    if total_ms == 0:
        return "0s"
    sign = "-" if total_ms < 0 else ""
    total_ms = abs(total_ms)
    parts: list[str] = []
    for unit, factor in _UNITS[2:]:  # days and smaller read best in reports
        count, total_ms = divmod(total_ms, factor)
        if count:
            parts.append(f"{count}{unit}")
    return sign + "".join(parts)


def _coerce(value: Any) -> Any:
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, timedelta):
        return value
    raise ValueError(f"expected a duration string such as '15s' or '2m', got {value!r}")


Duration = Annotated[
    timedelta,
    BeforeValidator(_coerce),
    PlainSerializer(format_duration, return_type=str),
]
"""A pydantic field type: written as a Prometheus duration, held as a timedelta."""


def format_instant(moment: datetime) -> str:
    """An instant as RFC 3339 UTC to the second (``2026-01-01T12:00:00Z``)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_instant(text: str, now: datetime) -> datetime:
    """``now``, a relative ``-6h``/``+30m``, RFC 3339 with a zone, or unix seconds."""
    raw = text.strip()
    if raw == "now":
        return now
    if raw[:1] in ("-", "+"):
        offset = parse_duration(raw[1:])
        return now - offset if raw[0] == "-" else now + offset
    if re.fullmatch(r"\d+(\.\d+)?", raw):
        return datetime.fromtimestamp(float(raw), tz=UTC)
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(
            f"expected an RFC 3339 time (2026-01-01T12:00:00Z), a relative time (-6h) "
            f"or 'now', got {text!r}"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone: add Z or an offset such as +01:00")
    return moment.astimezone(UTC)
