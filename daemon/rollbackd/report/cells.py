"""Small formatters that turn journaled values into the text of one field or table cell."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta

from rollbackd.core.durations import format_duration
from rollbackd.text import utf8_pieces, visible

OUTPUT_LIMIT = 4096
"""Bytes of one step's output (or one evidence body) shown in the report; the journal keeps all."""


def offset(moment: datetime, origin: datetime) -> str:
    """``T+1m30s``: whole seconds since ``origin``, truncated like :func:`format_instant`."""
    seconds = math.floor(moment.timestamp()) - math.floor(origin.timestamp())
    return f"T{'+' if seconds >= 0 else ''}{format_duration(timedelta(seconds=seconds))}"


def or_missing(value: object, missing: str = "—") -> str:
    """The text of ``value`` made visible (:func:`rollbackd.text.visible`), or ``missing``
    when nothing was journaled."""
    return missing if value is None or value == "" else visible(str(value))


def number_text(value: object) -> str:
    """A journaled number as a reader wants it: yes/no, an integer, six significant digits."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return or_missing(value)


def json_text(value: object) -> str:
    """Compact JSON, keys sorted: how evidence the report does not understand is shown."""
    return visible(
        json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    )


def compact(value: object) -> str:
    """A table cell: a string as itself, anything else as compact JSON."""
    return visible(value) if isinstance(value, str) else json_text(value)


def size_text(count: int) -> str:
    """A byte count in bytes, KB or MB."""
    if count < 1024:
        return f"{count} bytes"
    if count < 1024 * 1024:
        return f"{count / 1024:.1f} KB"
    return f"{count / (1024 * 1024):.1f} MB"


def clip(text: str, where: str) -> tuple[str, str]:
    """At most about :data:`OUTPUT_LIMIT` bytes of ``text`` (its head and tail), and a note."""
    raw = text.encode()
    if len(raw) <= OUTPUT_LIMIT:
        return text, ""
    head_bytes = OUTPUT_LIMIT // 4
    head, tail, split = utf8_pieces(raw[:head_bytes], raw[len(raw) - (OUTPUT_LIMIT - head_bytes) :])
    omitted = len(raw) - OUTPUT_LIMIT + split
    shown = f"{head}\n[… {size_text(omitted)} omitted …]\n{tail}"
    note = (
        f"{size_text(len(raw))} in all; the report shows the first {size_text(len(head.encode()))} "
        f"and the last {size_text(len(tail.encode()))}. The journal holds all of it ({where})."
    )
    return shown, note
