"""Notifications: telling people what was found, decided and done.

A :class:`Notifier` has one method. Formats (generic webhook, Slack,
PagerDuty) and retries come with the daemon; until then the checklist uses
:class:`JournalOnly`, which says plainly that nobody was notified.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from rollbackd.actions import StepResult


@dataclass(frozen=True)
class Message:
    """One notification: what happened, how bad, and what is asked of people."""

    incident: int
    service: str
    severity: str
    title: str
    text: str
    role: str | None = None


class Notifier(Protocol):
    """Delivers a message; never raises, says what happened in the result."""

    def notify(self, message: Message) -> StepResult: ...


class JournalOnly:
    """No notifier configured: the message stays in the journal only."""

    def notify(self, message: Message) -> StepResult:
        return StepResult(False, "no notifier is configured: nobody was told", message.text)
