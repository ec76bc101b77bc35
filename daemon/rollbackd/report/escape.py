"""Escaping: how untrusted text from the journal is made safe for Markdown and HTML.

Everything read from the journal is untrusted text (alert labels, reasons
typed by people, command output). It is first made visible by
:func:`rollbackd.text.visible` (line breaks normalised, control and bidi
characters shown as ``\\xNN``), then escaped for the format at the very last
moment, by the template engine itself (:mod:`rollbackd.report.render`):

* HTML: Jinja2 autoescaping, values are never placed in ``href``, ``src``,
  ``style`` or script, and a Content-Security-Policy forbids scripts anyway.
* Markdown: the environment's ``finalize`` hook (:func:`markdown_finalize`)
  escapes *every* ``{{ … }}`` value, so a forgotten filter cannot leak markup:
  Markdown punctuation (``\\ ` * _ [ ] < > | & ~ # @``) is backslash-escaped,
  ``://`` and ``www.`` are broken so no autolink forms, and line breaks become
  `` ↵ `` so a value never starts a line or leaves its table cell. The only
  values that bypass it are fenced blocks built by :func:`markdown_fence`,
  whose fence is longer than any backtick run in the text, so the text cannot
  close it.
"""

from __future__ import annotations

import re

from rollbackd.text import visible

_MD_SPECIAL = re.compile(r"[\\`*_\[\]<>|&~#@]")
_LINE_BREAK = re.compile(r"[ \t]*\n[ \t]*")
_WWW = re.compile(r"(?i)(www)\.")
_BACKTICKS = re.compile(r"`+")


class MarkdownBlock(str):
    """Markdown the report built itself (a fenced block): emitted without escaping."""

    __slots__ = ()


def markdown_text(value: object) -> str:
    """One line of Markdown that reads as ``value`` and renders as nothing but text."""
    text = _LINE_BREAK.sub(" ↵ ", visible(str(value)).strip("\n"))
    text = _MD_SPECIAL.sub(lambda m: "\\" + m.group(), text)
    text = text.replace("://", "\\://")
    return _WWW.sub(r"\1\\.", text)


def markdown_fence(text: str) -> MarkdownBlock:
    """A fenced code block holding ``text``, with a fence the text cannot close."""
    body = visible(text)
    longest = max((len(run) for run in _BACKTICKS.findall(body)), default=0)
    fence = "`" * max(3, longest + 1)
    if body and not body.endswith("\n"):
        body += "\n"
    return MarkdownBlock(f"{fence}text\n{body}{fence}")


def markdown_finalize(value: object) -> str:
    """Every ``{{ … }}`` value of a Markdown template, escaped unless the report built it."""
    if isinstance(value, MarkdownBlock):
        return value
    return markdown_text(value)
