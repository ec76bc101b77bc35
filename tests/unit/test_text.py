"""The text module's promises about text from outside: one line, visible, bounded."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rollbackd.text import (
    clip,
    elided,
    head_and_tail,
    one_line,
    printable,
    quoted,
    utf8_pieces,
    visible,
)

# Every code point, lone surrogates included: JSON's "\ud800" reaches rollbackd as one.
anything = st.text(st.characters(exclude_categories=()), max_size=300)
limits = st.integers(min_value=0, max_value=400)
BIDI = "\u202e\u2066\u200f"


@given(anything, limits)
def test_clip_never_exceeds_its_limit_and_says_when_it_cut(text: str, limit: int) -> None:
    """A clipped text fits its limit, is the text's own head, and ends in an ellipsis if cut."""
    clipped = clip(text, limit)
    assert len(clipped) <= limit
    if len(text) <= limit:
        assert clipped == text
    elif limit:
        assert clipped.endswith("…") and text.startswith(clipped[:-1])


@given(anything, st.integers(min_value=1, max_value=400))
def test_one_line_is_one_printable_bounded_line(text: str, limit: int) -> None:
    """Whatever comes in, one line of printable characters without padding comes out."""
    line = one_line(text, limit)
    assert len(line) <= limit
    assert line.isprintable()
    assert line == line.strip()
    assert "  " not in line
    line.encode("utf-8")  # no lone surrogate is left to break an encoder


def test_one_line_keeps_ordinary_text_and_flattens_the_rest() -> None:
    """Ordinary text passes unchanged; breaks, controls and bidi overrides become spaces."""
    assert one_line("error-rate is 0.12 (> 0.05), é ✓", 100) == "error-rate is 0.12 (> 0.05), é ✓"
    assert one_line("outage\nTo approve:\r\n\tcurl\x00 x", 100) == "outage To approve: curl x"
    assert one_line(f"abc{BIDI}def\u2028ghi", 100) == "abc def ghi"
    assert one_line(None, 10) == one_line("", 10) == ""
    assert one_line("x" * 300, 200) == "x" * 199 + "…"


@given(anything, st.integers(min_value=1, max_value=100))
def test_quoted_shows_where_a_value_starts_and_ends_and_every_control(
    text: str, limit: int
) -> None:
    """A string is shown as a literal of at most ``limit`` of its characters, controls escaped."""
    shown = quoted(text, limit)
    assert shown.isprintable()
    assert shown[0] == shown[-1] and shown[0] in "'\""
    assert "\n" not in shown


def test_quoted_clips_long_values_and_shows_other_types_by_repr() -> None:
    """A long name is cut with an ellipsis inside its quotes; a number or list by its repr."""
    assert quoted("web", 60) == "'web'"
    assert quoted("a" * 100, 10) == "'" + "a" * 9 + "…'"
    assert quoted("Evil\nrm", 60) == "'Evil\\nrm'"
    assert quoted(12, 60) == "12"
    assert quoted(list(range(100)), 10) == "[0, 1, 2,…"


def test_printable_names_are_shown_bare_and_others_as_literals() -> None:
    """A harmless name stays bare; one with a newline or a bidi override is quoted and escaped."""
    assert printable("HighErrorRate") == "HighErrorRate"
    assert printable("Evil\nrm -rf /") == "'Evil\\nrm -rf /'"
    assert printable("x\u202ey") == "'x\\u202ey'"


@given(anything)
def test_visible_keeps_lines_and_tabs_and_hides_no_control(text: str) -> None:
    """Only line feeds and tabs remain of the invisible characters that can mislead a reader."""
    shown = visible(text)
    for ch in shown:
        assert ch in "\n\t" or ch.isprintable() or not _misleading(ch), repr(ch)
    shown.encode("utf-8")


def _misleading(ch: str) -> bool:
    code = ord(ch)
    return (
        code < 0x20
        or 0x7F <= code <= 0x9F
        or ch in "\u061c\u200e\u200f\u2028\u2029"
        or 0x202A <= code <= 0x202E
        or 0x2066 <= code <= 0x2069
        or 0xD800 <= code <= 0xDFFF
    )


def test_visible_shows_escapes_for_controls() -> None:
    """A terminal escape and a right-to-left override show as escapes; lines become \\n."""
    assert visible("a\r\nb\rc\u2028d") == "a\nb\nc\nd"
    assert visible("\x1b[31mred\t\u202eevil") == "\\x1b[31mred\t\\u202eevil"


@given(st.text(max_size=2000), st.integers(min_value=4, max_value=1000))
def test_head_and_tail_keeps_both_ends_and_counts_what_was_cut(text: str, limit: int) -> None:
    """A long output keeps a quarter from its head and the rest from its tail, and says how
    many characters were cut between them."""
    bounded = head_and_tail(text, limit)
    if len(text) <= limit:
        assert bounded == text
        return
    head, tail = text[: limit // 4], text[len(text) - (limit - limit // 4) :]
    assert bounded == f"{head}\n… [{len(text) - limit} characters cut] …\n{tail}"


@pytest.mark.parametrize("unit", ["characters", "bytes of output"])
def test_elided_names_the_unit_of_what_was_cut(unit: str) -> None:
    """The line between head and tail says how much of what was left out."""
    assert elided("start", "end", 42, unit) == f"start\n… [42 {unit} cut] …\nend"


@given(
    st.text(st.characters(exclude_categories=["Cs"]), max_size=200),
    st.integers(min_value=0, max_value=800),
    st.integers(min_value=0, max_value=800),
)
def test_utf8_pieces_cut_on_characters_and_count_what_they_left_out(
    text: str, head_end: int, tail_start: int
) -> None:
    """Bytes cut anywhere out of UTF-8 text decode to the text's own ends, the split
    characters left out and counted, never shown as replacement characters."""
    data = text.encode()
    head_bytes, tail_bytes = data[:head_end], data[tail_start:]
    head, tail, left_out = utf8_pieces(head_bytes, tail_bytes)
    assert text.startswith(head) and text.endswith(tail)
    assert len(head.encode()) + len(tail.encode()) + left_out == len(head_bytes) + len(tail_bytes)
    assert left_out <= 6


def test_utf8_pieces_replace_bytes_that_are_not_utf8_inside_a_piece() -> None:
    """Bytes that are not UTF-8 in the middle of a piece show as U+FFFD and are not counted."""
    assert utf8_pieces(b"a\xffb\xc3", b"\xa9c\xfed") == ("a\ufffdb", "c\ufffdd", 2)
