"""Text from outside, made safe to show: one line, visible controls, bounded length.

Alert labels, webhook and API bodies, people's reasons, git's and commands'
output and exception messages all end up in notifications, logs, error
answers and systemd's status line. Each function here makes one promise about
such text, so every place that shows it keeps the same one:

- :func:`clip`: at most ``limit`` characters; a cut one ends in ``…``.
- :func:`one_line`: one line of printable characters, clipped: it cannot add a
  line that looks like rollbackd's own, inject a protocol field, nor reorder
  what a reader sees (bidi overrides).
- :func:`quoted`: a value in an error message, as a bounded Python literal
  whose quotes show where it starts and ends.
- :func:`printable`: a name shown bare when harmless, else as a literal.
- :func:`visible`: several lines kept, every other invisible control shown as
  an escape (``\\x1b``, ``\\u202e``).
- :func:`head_and_tail`: a long output bounded to its head and its tail, with a
  line saying how much was cut between (:func:`elided` writes that line);
  :func:`utf8_pieces` decodes a head and a tail cut out of UTF-8 bytes on
  character boundaries, for bounds counted in bytes.

Nothing here escapes for a format (Slack's ``&<>``, HTML, Markdown): that is
the job of the format that knows its own rules.
"""

from __future__ import annotations

import re

ELLIPSIS = "…"
"""Ends text that was cut."""

_INVISIBLE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
"""What :func:`visible` escapes: C0 and C1 controls but tab and line feed, DEL, bidi marks,
embeddings, overrides and isolates, and lone surrogates (which no encoder takes)."""


def clip(text: str, limit: int) -> str:
    """``text`` if it has at most ``limit`` characters, else its head and ``…``.

    The result never has more than ``limit`` characters (none for a ``limit``
    below one), and an ellipsis at its end says that something was cut.
    """
    if len(text) <= limit:
        return text
    if limit < 1:
        return ""
    return text[: limit - 1] + ELLIPSIS


def one_line(text: str | None, limit: int) -> str:
    """``text`` as one line of printable characters, at most ``limit`` long.

    Every character that is not printable (line breaks and separators, control
    characters, bidi overrides and other format characters, lone surrogates)
    becomes a space; runs of white space fold to one space and the ends are
    stripped; then the line is clipped (:func:`clip`). ``None`` and ``""``
    give ``""``.
    """
    if not text:
        return ""
    flat = "".join(ch if ch.isprintable() else " " for ch in text)
    return clip(" ".join(flat.split()), limit)


def quoted(value: object, limit: int) -> str:
    """``value`` from outside as shown in an error: a Python literal of bounded length.

    A string is clipped to ``limit`` characters first and then quoted, so its
    quotes show where it starts and ends and every unprintable character
    shows as an escape (``'a\\nb'``); anything else is shown by its ``repr``,
    clipped to ``limit`` characters.
    """
    if isinstance(value, str):
        return repr(clip(value, limit))
    return clip(repr(value), limit)


def printable(text: str) -> str:
    """``text`` as is when every character is printable, else as a quoted literal.

    For names from outside (alert names, file names) shown bare in a sentence:
    one with a newline, a control character or a bidi override shows as
    ``'Evil\\nrm -rf /'`` and cannot pass for anything else.
    """
    return text if text.isprintable() else repr(text)


def visible(text: str) -> str:
    """``text`` with its lines kept and every other invisible control made visible.

    Line breaks become ``\\n`` (``\\r\\n``, ``\\r``, U+2028 and U+2029 too); tabs
    stay; C0 and C1 control characters, bidi marks, embeddings, overrides and
    isolates and lone surrogates become escapes such as ``\\x1b`` or
    ``\\u202e``: the text can neither drive a terminal nor reorder what a
    reader sees, and a person can still tell what was there.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\u2028", "\n").replace("\u2029", "\n")
    return _INVISIBLE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def head_and_tail(text: str, limit: int) -> str:
    """``text`` if it has at most ``limit`` characters, else a quarter of ``limit`` from
    its head and the rest from its tail, joined by a line saying how many were cut.

    The end is what a person needs (the failing command, the last lines of a
    build); the head says what ran. What is kept has ``limit`` characters; the
    line between adds a few dozen.
    """
    if len(text) <= limit:
        return text
    head = max(limit // 4, 0)
    tail = max(limit - head, 0)
    return elided(text[:head], text[len(text) - tail :], len(text) - limit, "characters")


def elided(head: str, tail: str, dropped: int, unit: str) -> str:
    """``head`` and ``tail`` joined by a line saying that ``dropped`` ``unit`` were cut
    between them (``… [1200 characters cut] …``)."""
    return f"{head}\n{ELLIPSIS} [{dropped} {unit} cut] {ELLIPSIS}\n{tail}"


def utf8_pieces(head: bytes, tail: bytes) -> tuple[str, str, int]:
    """``head`` and ``tail``, the two ends of UTF-8 bytes cut out of a longer text, decoded
    on character boundaries, and how many of their bytes were left out to get there.

    A character the cut split is left out whole: the incomplete sequence at the
    end of ``head`` and the continuation bytes at the start of ``tail`` (at most
    three). Neither piece then starts or ends with a replacement character the
    text did not have; bytes that are not UTF-8 elsewhere become U+FFFD.
    """
    skipped_head = _unfinished(head)
    head_text = head[: len(head) - skipped_head].decode("utf-8", errors="replace")
    skipped_tail = 0
    while skipped_tail < min(len(tail), 3) and 0x80 <= tail[skipped_tail] <= 0xBF:
        skipped_tail += 1
    tail_text = tail[skipped_tail:].decode("utf-8", errors="replace")
    return head_text, tail_text, skipped_head + skipped_tail


def _unfinished(data: bytes) -> int:
    """How many bytes at the end of ``data`` begin a UTF-8 character they do not finish."""
    for back in range(1, min(len(data), 4) + 1):
        byte = data[-back]
        if byte < 0x80:  # ASCII: complete
            return 0
        if byte >= 0xC0:  # the lead byte says how long its character is
            length = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return back if back < length else 0
    return 0
