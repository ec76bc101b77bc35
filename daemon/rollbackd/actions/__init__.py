"""Actions: what rollbackd does to a service, each behind one small interface.

An :class:`Executor` rolls a service back (git, a script, or a command); the
checklist (:mod:`rollbackd.actions.checklist`) runs it between the playbook's
other steps and journals each step before and after it runs. Every input that
came from outside (an alert label, a request's ref or reason) reaches an
executor only as validated data: refs pass ``valid_ref`` and go to git after
``--end-of-options``; reasons travel as environment variables, never as
command-line text, and no shell is ever involved.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol

OUTPUT_LIMIT = 64 * 1024
"""Captured output kept per step: a short head and a longer tail, so the journal stays small."""


@dataclass(frozen=True)
class IncidentFacts:
    """What an executor knows about the rollback it performs.

    ``target`` is the ref or version to go back to, already checked with
    :func:`rollbackd.sources.deploys.valid_ref`; ``reason`` is free text from a
    person or an alert and is only ever passed as data.
    """

    incident: int
    service: str
    target: str
    current_version: str | None = None
    reason: str = ""
    severity: str = ""
    scope: str = "all"
    """``canary``: only ``canary_version`` is to be taken out (a side-by-side decision)."""
    canary_version: str | None = None


@dataclass(frozen=True)
class StepResult:
    """The outcome of one step: ok or not, a one-line summary, output and facts."""

    ok: bool
    summary: str
    output: str = ""
    data: Mapping[str, str] = field(default_factory=dict)


class Interrupted(Exception):  # noqa: N818 -- names the event, like KeyboardInterrupt
    """The daemon is stopping: the step in progress ends unjournaled and resumes on restart."""


class Progress(StrEnum):
    """Where an interrupted execution stands, judged from the real state."""

    NOT_STARTED = "not_started"
    DONE = "done"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ExecutionState:
    """An executor's judgement of an execution that was interrupted, and why."""

    progress: Progress
    reason: str


class Executor(Protocol):
    """Rolls one service back. Each method returns a result; none raises for failures."""

    def verify_target(self, facts: IncidentFacts) -> StepResult:
        """The target exists and is reachable; ``data`` holds what execute will need."""
        ...

    def backup(self, facts: IncidentFacts, now: datetime) -> StepResult:
        """Keep the current state recoverable (e.g. a pushed backup branch)."""
        ...

    def execute(self, facts: IncidentFacts) -> StepResult:
        """Roll back to the target."""
        ...

    def state(self, facts: IncidentFacts, before: Mapping[str, str]) -> ExecutionState:
        """After a crash mid-execution: done, not started, or unknown (``before`` is
        the ``data`` that verify_target returned)."""
        ...
