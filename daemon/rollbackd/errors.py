"""The exception tree of rollbackd, translated into messages at the boundary.

::

    RollbackdError                  anything rollbackd raises on purpose
    └── InvalidInput                bad config, rule file or argument: exit 2, never a traceback
        └── (carries Problem items, each naming file, location and what is wrong)

Code below the boundary raises these; the CLI and the HTTP API turn them into
exit codes and 4xx bodies. A :class:`Problem` names the unit of work at fault
(``config.toml: services[0].repo: ...``, ``rules/errors.toml: rule "error-rate":
condition: ...``) so a person can fix it without reading code.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input: where it is and what is wrong."""

    source: str
    location: str
    message: str

    def __str__(self) -> str:
        if self.location:
            return f"{self.source}: {self.location}: {self.message}"
        return f"{self.source}: {self.message}"


class RollbackdError(Exception):
    """Base of every error rollbackd raises on purpose."""


class InvalidInput(RollbackdError):  # noqa: N818 -- names the condition, like httpx's InvalidURL
    """One or more problems in config, rules or arguments; nothing was applied."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))
