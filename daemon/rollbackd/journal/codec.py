"""How the journal writes times and JSON, and so what every store gives back.

The SQLite store keeps times as RFC 3339 UTC text to the millisecond and
facts, evidence and step data as JSON; the memory store passes what it is
given through the same coding (:func:`kept_time`, :func:`kept_json`), so that a
test on one store says what the others do.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any


def encode_json(value: Any) -> str:
    """JSON with datetimes as RFC 3339 UTC, like every other time in the journal."""

    def default(item: Any) -> Any:
        if isinstance(item, datetime):
            return encode_time(item)
        return str(item)

    return json.dumps(value, default=default)


def encode_time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def encode_optional_time(moment: datetime | None) -> str | None:
    return None if moment is None else encode_time(moment)


def decode_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def decode_optional_time(text: str | None) -> datetime | None:
    return None if text is None else decode_time(text)


def kept_time(moment: datetime) -> datetime:
    """The time a store gives back for ``moment``: UTC, to the millisecond (what
    ``decode_time(encode_time(moment))`` gives, without the text in between)."""
    utc = moment.astimezone(UTC)
    return utc.replace(microsecond=utc.microsecond - utc.microsecond % 1000)


def kept_optional_time(moment: datetime | None) -> datetime | None:
    return None if moment is None else kept_time(moment)


def kept_json(value: Any) -> Any:
    """What a store gives back for ``value``: as JSON would (lists, text times); a new copy."""
    return json.loads(encode_json(value))
