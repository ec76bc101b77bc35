"""Turning pydantic's validation errors into :class:`Problem` lines people can act on."""

from __future__ import annotations

from collections.abc import Collection, Iterable

from pydantic import ValidationError

from rollbackd.errors import Problem

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
"""Names of rules, services, probes and tokens: safe in logs, URLs, metrics and git refs."""

_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
}


def location(parts: Iterable[int | str]) -> str:
    """``('services', 0, 'repo')`` → ``services[0].repo``."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def problems_from(
    error: ValidationError, source: str, prefix: str = "", hidden: Collection[str] = ()
) -> list[Problem]:
    """One Problem per pydantic error, located by key path and worded for people.

    The value at fault is shown (``got 'x'``) unless a key of its path is in
    ``hidden``: the tables that hold secrets, whose values may be one.
    """
    problems = []
    for item in error.errors(include_url=False):
        where = location(p for p in item["loc"] if not _is_union_tag(p))
        if prefix:
            where = f"{prefix}: {where}" if where else prefix
        message = _MESSAGES.get(item["type"], item["msg"])
        if message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        elif message.startswith("Assertion failed, "):
            message = message.removeprefix("Assertion failed, ")
        shown_input = not any(part in hidden for part in item["loc"])
        if (
            shown_input
            and item["type"] not in _MESSAGES
            and item["type"] != "value_error"
            and "input" in item
        ):
            shown = repr(item["input"])
            if len(shown) <= 80 and not isinstance(item["input"], dict | list):
                message = f"{message}, got {shown}"
        problems.append(Problem(source, where, message))
    return problems


def _is_union_tag(part: int | str) -> bool:
    """Pydantic adds the member type name of a union to error locations; people don't need it."""
    return isinstance(part, str) and (part.startswith("function-") or part in {"str", "float"})
