"""What the journal keeps: incidents with their decisions, steps and evidence, alerts,
deliveries.

Plain values, the same whichever store keeps them (SQLite, memory): the stores
take and give back these and nothing of their own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from rollbackd.core.model import Decision


class IncidentState(StrEnum):
    """Where an incident stands.

    *Active* states have a rollback pending or under way (open, awaiting approval,
    rolling back, recovering). *Waiting* ones wait on people (escalated, vetoed,
    recorded, not recovered): the incident stays open until what fired is OK again
    or it expires. *Finished* ones are over: recovered, resolved, expired, or
    superseded (by a newer deploy, or by a decision at a higher severity).
    """

    OPEN = "open"
    AWAITING_APPROVAL = "awaiting_approval"
    ROLLING_BACK = "rolling_back"
    RECOVERING = "recovering"
    RECOVERED = "recovered"
    NOT_RECOVERED = "not_recovered"
    ESCALATED = "escalated"
    VETOED = "vetoed"
    RECORDED = "recorded"
    RESOLVED = "resolved"
    EXPIRED = "expired"
    SUPERSEDED = "superseded"

    @property
    def active(self) -> bool:
        """A rollback is pending or under way."""
        return self in ACTIVE_STATES

    @property
    def finished(self) -> bool:
        """Over: nothing more happens to it (``closed_at`` is set)."""
        return self in FINISHED_STATES


ACTIVE_STATES = {
    IncidentState.OPEN,
    IncidentState.AWAITING_APPROVAL,
    IncidentState.ROLLING_BACK,
    IncidentState.RECOVERING,
}
FINISHED_STATES = {
    IncidentState.RECOVERED,
    IncidentState.RESOLVED,
    IncidentState.EXPIRED,
    IncidentState.SUPERSEDED,
}


class Outcome(StrEnum):
    """How a step ended."""

    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class StepRecord:
    """One journaled checklist step."""

    id: int
    name: str
    started_at: datetime
    finished_at: datetime | None
    outcome: Outcome | None
    summary: str
    output: str
    data: dict[str, str]

    @property
    def interrupted(self) -> bool:
        return self.finished_at is None


@dataclass(frozen=True)
class DecisionRecord:
    """One journaled decision, by rollbackd or by a person."""

    time: datetime
    actor: str
    action: str
    proposed: str
    severity: str
    rules: list[str]
    reason: str
    approver: str | None
    deadline: datetime | None
    guards: list[str]
    value: float | None
    target: str | None


@dataclass(frozen=True)
class EvidenceRecord:
    """A snapshot kept with the incident: findings, deploys, alerts, checks."""

    time: datetime
    kind: str
    body: Any


@dataclass(frozen=True)
class IncidentRecord:
    """An incident and, when loaded whole, its decisions, steps and evidence."""

    id: int
    service: str
    opened_at: datetime
    closed_at: datetime | None
    state: IncidentState
    severity: str
    action: str
    origin: str
    target: str | None
    current_version: str | None
    reason: str
    summary: str
    facts: dict[str, Any]
    updated_at: datetime | None = None
    """When its state last changed (its opening, at first)."""
    decisions: tuple[DecisionRecord, ...] = ()
    steps: tuple[StepRecord, ...] = ()
    evidence: tuple[EvidenceRecord, ...] = ()
    samples: dict[str, list[tuple[datetime, float]]] = field(default_factory=dict)

    def step(self, name: str) -> StepRecord | None:
        """The latest journaled step of that name."""
        found = [s for s in self.steps if s.name == name]
        return found[-1] if found else None


@dataclass(frozen=True)
class AlertRecord:
    """One Alertmanager alert as journaled: its identity, its latest status, its labels."""

    fingerprint: str
    starts_at: datetime
    status: str
    ends_at: datetime | None
    service: str | None
    name: str | None
    labels: Mapping[str, str]
    annotations: Mapping[str, str]


@dataclass(frozen=True)
class Delivery:
    """One webhook delivery: where from, its group, and its alerts."""

    source: str
    group_key: str | None
    status: str | None
    alerts: Sequence[AlertRecord]


@dataclass(frozen=True)
class NewIncident:
    """What opening an incident records, all of it in one transaction.

    An incident that waits for a person (awaiting approval, escalated) is only
    complete with its decision: who may decide (``decision.approver``) and by
    when (``decision.deadline``, the one place the approval deadline is kept).
    Written apart, a crash in between left an incident with neither.
    """

    service: str
    opened_at: datetime
    severity: str
    action: str
    origin: str
    reason: str
    target: str | None = None
    current_version: str | None = None
    state: IncidentState = IncidentState.OPEN
    facts: Mapping[str, Any] = field(default_factory=dict)
    decision: Decision | None = None
    """The decision that opened it, if any (a rollback by hand with none has none)."""
    decided_by: str = "rollbackd"
    """Who made ``decision``: rollbackd, or the person who asked for the rollback."""
    evidence: Mapping[str, Any] = field(default_factory=dict)
    """Evidence kept from the start, by kind (``snapshot``...), dated ``opened_at``."""
