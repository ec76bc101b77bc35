"""What the journal keeps: incidents with their decisions, steps and evidence, alerts,
deliveries; and which state of an incident may follow which.

Plain values, the same whichever store keeps them (SQLite, memory): the stores
take and give back these and nothing of their own, and refuse a state change
:data:`TRANSITIONS` does not allow (:func:`check_transition`). The table, as the
daemon moves incidents (a unit test holds it to this drawing)::

    opened as     open, awaiting_approval, rolling_back, escalated, recorded

    open              → resolved, superseded
    awaiting_approval → rolling_back, vetoed, resolved, superseded
    rolling_back      → recovering, recovered, escalated
    recovering        → recovering, recovered, not_recovered, escalated
    escalated         → resolved, expired, superseded
    vetoed            → resolved, expired, superseded
    recorded          → resolved, expired, superseded
    not_recovered     → resolved, expired, superseded
    recovered         → (none: finished)
    resolved          → (none: finished)
    expired           → (none: finished)
    superseded        → (none: finished)

An approval or the deadline starts the rollback (awaiting_approval →
rolling_back); a veto ends the request (→ vetoed). The checklist watches
recovery (→ recovering, again after a restart) and ends a rollback recovered,
not recovered, or escalated (a step failed, the outcome is unknown, recovery
was not proven). An incident that waits, on people or on an approval, ends
resolved (what fired is OK again) or superseded (a newer deploy); only one
waiting on people expires. Nothing leaves a finished state, and a rollback under
way is never ended from outside its checklist. (rolling_back → recovered is the
checklist resuming a recovery step journaled as proven before a restart.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from rollbackd.core.deploys import MigrationFact
from rollbackd.core.model import Action, Decision, Severity
from rollbackd.errors import InvalidTransition


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


_WAITING_ENDS = frozenset({IncidentState.RESOLVED, IncidentState.EXPIRED, IncidentState.SUPERSEDED})
TRANSITIONS: Mapping[IncidentState, frozenset[IncidentState]] = {
    IncidentState.OPEN: frozenset({IncidentState.RESOLVED, IncidentState.SUPERSEDED}),
    IncidentState.AWAITING_APPROVAL: frozenset(
        {
            IncidentState.ROLLING_BACK,
            IncidentState.VETOED,
            IncidentState.RESOLVED,
            IncidentState.SUPERSEDED,
        }
    ),
    IncidentState.ROLLING_BACK: frozenset(
        {IncidentState.RECOVERING, IncidentState.RECOVERED, IncidentState.ESCALATED}
    ),
    IncidentState.RECOVERING: frozenset(
        {
            IncidentState.RECOVERING,
            IncidentState.RECOVERED,
            IncidentState.NOT_RECOVERED,
            IncidentState.ESCALATED,
        }
    ),
    IncidentState.ESCALATED: _WAITING_ENDS,
    IncidentState.VETOED: _WAITING_ENDS,
    IncidentState.RECORDED: _WAITING_ENDS,
    IncidentState.NOT_RECOVERED: _WAITING_ENDS,
    IncidentState.RECOVERED: frozenset(),
    IncidentState.RESOLVED: frozenset(),
    IncidentState.EXPIRED: frozenset(),
    IncidentState.SUPERSEDED: frozenset(),
}
"""Which states may follow each state (see the module's drawing)."""
OPENED_AS = frozenset(
    {
        IncidentState.OPEN,
        IncidentState.AWAITING_APPROVAL,
        IncidentState.ROLLING_BACK,
        IncidentState.ESCALATED,
        IncidentState.RECORDED,
    }
)
"""The states the daemon opens incidents in (the stores open any: tests seed every state)."""


def allowed(old: IncidentState, new: IncidentState) -> bool:
    """Whether an incident in ``old`` may move to ``new``."""
    return new in TRANSITIONS[old]


def check_transition(incident: int, old: IncidentState, new: IncidentState) -> None:
    """:class:`InvalidTransition`, naming the incident and both states, unless allowed."""
    if not allowed(old, new):
        raise InvalidTransition(
            f"incident {incident}: {old.value} → {new.value} is not a state change "
            f"an incident makes (from {old.value}: "
            f"{', '.join(sorted(s.value for s in TRANSITIONS[old])) or 'none, it is finished'})"
        )


class EvidenceKind(StrEnum):
    """The kinds of evidence rollbackd journals (a store gives back any other kind as text)."""

    SNAPSHOT = "snapshot"
    """What was known when the incident opened: findings, deploys, firing alerts."""
    FOLDED = "folded"
    """A finding folded into the open incident instead of a decision of its own."""
    RECOVERY_CHECK = "recovery_check"
    """One check of the recovery watch: whether the criteria held, and which did not."""
    NOTIFICATION = "notification"
    """One notification's delivery, after its retries."""
    APPROVAL = "approval"
    """Read only: the approval deadline, in journals written before the decision kept it."""


def evidence_kind(text: str) -> EvidenceKind | str:
    """A journaled kind: its member when rollbackd writes it, else the text as it is."""
    try:
        return EvidenceKind(text)
    except ValueError:
        return text


def severity_of(text: str | None) -> Severity:
    """A journaled severity; one that is not (an old or edited journal) reads as critical.

    The most urgent, so that nothing about an unreadable incident is played down
    (when in doubt, escalate); it never starts a rollback by itself.
    """
    try:
        return Severity(text or "")
    except ValueError:
        return Severity.CRITICAL


def action_of(text: str | None) -> Action:
    """A journaled action; one that is not reads as escalate: a person looks, nothing runs."""
    try:
        return Action(text or "")
    except ValueError:
        return Action.ESCALATE


@dataclass(frozen=True)
class RollbackFacts:
    """What an incident keeps from its opening for the rollback and its report.

    ``baselines``: each relative rule's value before the deploy (the recovery
    watch's latency baseline); ``migrations``: what the deploy event said of its
    migrations (the gate's facts); ``deployed_at``: when the deploy being judged
    started; ``target_version``: the version the rollback goes back to, when the
    target is a ref. Kept as a JSON object (:meth:`to_json`, :meth:`from_json`).
    """

    baselines: Mapping[str, float] = field(default_factory=dict)
    migrations: tuple[MigrationFact, ...] = ()
    deployed_at: datetime | None = None
    target_version: str | None = None
    scope: str = "all"
    """``canary``: the rollback takes out only ``canary_version``, the new version serving
    beside ``target_version`` (a side-by-side decision, core.canary); ``all``: the service."""
    canary_version: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object journaled, keyed as journals always kept it."""
        return {
            "baselines": dict(self.baselines),
            "migrations": [
                {
                    "file": m.file,
                    "backwards_compatible": m.backwards_compatible,
                    "changes_data": m.changes_data,
                }
                for m in self.migrations
            ],
            "deployed_at": self.deployed_at.isoformat() if self.deployed_at else None,
            "target_version": self.target_version,
            "scope": self.scope,
            "canary_version": self.canary_version,
        }

    @classmethod
    def from_json(cls, value: object) -> RollbackFacts:
        """Facts from a journaled object; what is missing or unreadable is left out.

        Never raises: a journal written by another version, or edited, still
        loads (an unreadable ``deployed_at`` is None, a baseline that is not a
        finite number is dropped, a time without a zone is UTC). Keys it does not know
        are not kept.
        """
        if not isinstance(value, Mapping):
            return cls()
        baselines = value.get("baselines")
        migrations = value.get("migrations")
        target = value.get("target_version")
        scope = value.get("scope")
        canary = value.get("canary_version")
        return cls(
            baselines={
                str(rule): number
                for rule, number in (
                    (rule, _number(raw))
                    for rule, raw in (baselines.items() if isinstance(baselines, Mapping) else ())
                )
                if number is not None
            },
            migrations=tuple(
                MigrationFact(
                    m["file"],
                    _flag(m.get("backwards_compatible")),
                    _flag(m.get("changes_data")),
                )
                for m in (migrations if isinstance(migrations, list) else ())
                if isinstance(m, Mapping) and isinstance(m.get("file"), str)
            ),
            deployed_at=_time(value.get("deployed_at")),
            target_version=target if isinstance(target, str) and target else None,
            scope="canary" if scope == "canary" else "all",
            canary_version=canary if isinstance(canary, str) and canary else None,
        )


def _number(value: object) -> float | None:
    """A finite number, or None (text, a flag, NaN, an integer too large for a float)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _flag(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


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
    action: Action
    proposed: Action
    severity: Severity
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
    kind: EvidenceKind | str
    """An :class:`EvidenceKind`, or the text of a kind rollbackd does not write."""
    body: Any


@dataclass(frozen=True)
class IncidentRecord:
    """An incident and, when loaded whole, its decisions, steps and evidence."""

    id: int
    service: str
    opened_at: datetime
    closed_at: datetime | None
    state: IncidentState
    severity: Severity
    action: Action
    origin: str
    target: str | None
    current_version: str | None
    reason: str
    summary: str
    facts: RollbackFacts
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

    @property
    def approval_deadline(self) -> datetime | None:
        """When a rollback awaiting approval runs unless vetoed: its latest decision's
        deadline, else (journals written before the decision kept it) an "approval"
        evidence's. Needs the incident loaded whole."""
        for decision in reversed(self.decisions):
            if decision.deadline is not None:
                return decision.deadline
        for evidence in reversed(self.evidence):
            if evidence.kind == EvidenceKind.APPROVAL and isinstance(evidence.body, dict):
                return _time(evidence.body.get("deadline"))
        return None


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
    severity: Severity
    action: Action
    origin: str
    reason: str
    target: str | None = None
    current_version: str | None = None
    state: IncidentState = IncidentState.OPEN
    facts: RollbackFacts = field(default_factory=RollbackFacts)
    decision: Decision | None = None
    """The decision that opened it, if any (a rollback by hand with none has none)."""
    decided_by: str = "rollbackd"
    """Who made ``decision``: rollbackd, or the person who asked for the rollback."""
    evidence: Mapping[EvidenceKind, Any] = field(default_factory=dict)
    """Evidence kept from the start, by kind (``snapshot``), dated ``opened_at``."""
