"""Policy: from a service's firing findings to one decision, through the guards.

The severity policy maps the highest severity among a service's firing
findings to an action (design §1.4 defaults below, all overridable):

==========  ==================  ========  ==============
severity    action              deadline  approver
==========  ==================  ========  ==============
critical    rollback            now       admin
high        request_approval    15m       senior_admin
medium      escalate            2h        team
low         record              —         —
==========  ==================  ========  ==============

Guards then stand between the policy and the action, each adding its reason:
a maintenance silence records instead of acting; a rollback is turned into an
escalation when there is no deploy to blame, nothing to roll back to, the
finding is not attributable to the deploy, the service is cooling down after
a rollback, the rollback limit per window is reached, or the migration gate
blocked it (then the database role is asked); dry-run records what would have
happened. Everything here is pure: the time and every fact are passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from rollbackd.core.durations import format_duration, format_instant
from rollbackd.core.model import Action, Decision, Finding, Severity


@dataclass(frozen=True)
class PolicyEntry:
    """What to do at one severity, how long people have, and who may approve."""

    action: Action
    deadline: timedelta | None = None
    approver: str | None = None


DEFAULT_POLICY: dict[Severity, PolicyEntry] = {
    Severity.CRITICAL: PolicyEntry(Action.ROLLBACK, None, "admin"),
    Severity.HIGH: PolicyEntry(Action.REQUEST_APPROVAL, timedelta(minutes=15), "senior_admin"),
    Severity.MEDIUM: PolicyEntry(Action.ESCALATE, timedelta(hours=2), "team"),
    Severity.LOW: PolicyEntry(Action.RECORD, None, None),
}


@dataclass(frozen=True)
class Silence:
    """A maintenance silence: no action for ``service`` (``*``: all) in [start, end)."""

    service: str
    start: datetime
    end: datetime
    reason: str = ""

    def covers(self, service: str, now: datetime) -> bool:
        return self.service in ("*", service) and self.start <= now < self.end


@dataclass(frozen=True)
class Guards:
    """The guard settings; the defaults are the daemon's defaults."""

    dry_run: bool = False
    cooldown: timedelta = timedelta(minutes=30)
    max_rollbacks: int = 2
    rollback_window: timedelta = timedelta(hours=24)
    attribution_window: timedelta = timedelta(hours=2)
    silences: tuple[Silence, ...] = ()


class GateVerdict(StrEnum):
    """The migration gate's verdict on rolling back past a deploy's migrations."""

    PROCEED = "proceed"
    BLOCKED = "blocked"


@dataclass(frozen=True)
class MigrationGate:
    """The gate's verdict and why (the migrations it found, their facts)."""

    verdict: GateVerdict
    reason: str


@dataclass(frozen=True)
class ServiceFacts:
    """What the guards need to know about a service at decision time.

    ``rollbacks``: times of earlier rollbacks of this service; ``migrations``:
    the migration gate's verdict, None while it has not looked yet.
    """

    current_version: str | None = None
    deployed_at: datetime | None = None
    last_good_version: str | None = None
    rollbacks: tuple[datetime, ...] = ()
    migrations: MigrationGate | None = None


@dataclass(frozen=True)
class _Blocked:
    guard: str
    reason: str
    approver: str | None = None


@dataclass
class _Trail:
    guards: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


def decide(
    service: str,
    findings: Iterable[Finding],
    facts: ServiceFacts,
    now: datetime,
    policy: Mapping[Severity, PolicyEntry] = DEFAULT_POLICY,
    guards: Guards = Guards(),
) -> Decision | None:
    """Decide for one service from its findings at ``now``; None when nothing fires.

    Only firing findings count: pending and inconclusive ones never lead to
    an action. The decision's reason names the rules, their values and
    thresholds, the severity and why, the policy, and every guard that acted.
    """
    firing = [f for f in findings if f.firing and f.service == service]
    if not firing:
        return None
    severity = Severity.highest([f.severity for f in firing])
    driving = sorted((f for f in firing if f.severity is severity), key=lambda f: f.rule)
    entry = policy.get(severity, DEFAULT_POLICY[severity])
    proposed = _effective_action(entry)
    trail = _Trail()
    trail.reasons.append("; ".join(_describe(f) for f in driving))
    trail.reasons.append(
        f"severity {severity.value} ({driving[0].severity_reason}); policy for {severity.value}: "
        f"{_describe_entry(entry)}"
    )
    action = proposed
    approver = entry.approver or ("admin" if proposed is not Action.RECORD else None)
    deadline = now + entry.deadline if entry.deadline and proposed.rolls_back else None
    if proposed is Action.ESCALATE and entry.deadline:
        deadline = now + entry.deadline

    silence = next((s for s in guards.silences if s.covers(service, now)), None)
    if silence is not None and proposed is not Action.RECORD:
        trail.guards.append("silence")
        why = f": {silence.reason}" if silence.reason else ""
        trail.reasons.append(
            f"maintenance silence for {silence.service} until {format_instant(silence.end)}{why}; "
            f"recorded instead of {proposed.value}"
        )
        action, deadline = Action.RECORD, None
    elif proposed.rolls_back:
        blocked = list(_rollback_guards(driving, facts, guards, now))
        if blocked:
            action, deadline = Action.ESCALATE, None
            for item in blocked:
                trail.guards.append(item.guard)
                trail.reasons.append(item.reason)
                if item.approver is not None:
                    approver = item.approver
            trail.reasons.append(f"escalated to {approver} instead of {proposed.value}")
        elif guards.dry_run:
            trail.guards.append("dry_run")
            trail.reasons.append(
                f"dry run: would {proposed.value.replace('_', ' ')}; recorded only"
            )
            action, deadline = Action.RECORD, None

    target = facts.last_good_version if action.rolls_back else None
    if action.rolls_back and target:
        trail.reasons.append(
            f"roll back {facts.current_version or 'the current version'} to {target}"
        )
    return Decision(
        service=service,
        time=now,
        severity=severity,
        action=action,
        proposed=proposed,
        rules=tuple(f.rule for f in driving),
        reason="; ".join(trail.reasons),
        approver=approver if action is not Action.RECORD else None,
        deadline=deadline,
        guards=tuple(trail.guards),
        value=driving[0].value,
        target=target,
    )


def _effective_action(entry: PolicyEntry) -> Action:
    """``rollback`` with a deadline means: roll back at the deadline unless vetoed."""
    if entry.action is Action.ROLLBACK and entry.deadline:
        return Action.REQUEST_APPROVAL
    return entry.action


def _rollback_guards(
    driving: Sequence[Finding], facts: ServiceFacts, guards: Guards, now: datetime
) -> Iterable[_Blocked]:
    """Every reason not to roll back automatically, in the order a person would check."""
    if facts.current_version is None or facts.deployed_at is None:
        yield _Blocked("no_deploy", "no deploy is known for this service, so none can be blamed")
    else:
        started = min((f.started or f.since or now) for f in driving)
        if started < facts.deployed_at:
            yield _Blocked(
                "attribution",
                f"the finding started at {format_instant(started)}, before the deploy of "
                f"{facts.current_version} at {format_instant(facts.deployed_at)}: not caused by it",
            )
        elif started - facts.deployed_at > guards.attribution_window:
            yield _Blocked(
                "attribution",
                f"the finding started {format_duration(started - facts.deployed_at)} after the "
                f"deploy of {facts.current_version}, outside the attribution window of "
                f"{format_duration(guards.attribution_window)}",
            )
    if facts.last_good_version is None:
        yield _Blocked("nothing_to_roll_back", "no last known good version to roll back to")
    elif facts.last_good_version == facts.current_version:
        yield _Blocked(
            "nothing_to_roll_back",
            f"the current version {facts.current_version} is already the last known good",
        )
    recent = sorted(t for t in facts.rollbacks if t <= now)
    if recent and now - recent[-1] < guards.cooldown:
        yield _Blocked(
            "cooldown",
            f"cooling down: the last rollback was {format_duration(now - recent[-1])} ago, "
            f"within the cooldown of {format_duration(guards.cooldown)}",
        )
    in_window = [t for t in recent if now - t < guards.rollback_window]
    if len(in_window) >= guards.max_rollbacks:
        yield _Blocked(
            "rollback_limit",
            f"{len(in_window)} rollbacks in the last {format_duration(guards.rollback_window)} "
            f"reach the limit of {guards.max_rollbacks}: no rollback loops",
        )
    if facts.migrations is not None and facts.migrations.verdict is GateVerdict.BLOCKED:
        yield _Blocked("migration_gate", f"migration gate: {facts.migrations.reason}", "database")


def _describe(finding: Finding) -> str:
    value = "no value" if finding.value is None else f"{finding.value:.6g}"
    text = f"rule {finding.rule} ({finding.trigger.value}) firing: {value} {finding.condition}"
    if finding.baseline is not None and finding.threshold is not None:
        basis = f" = {finding.baseline_basis}" if finding.baseline_basis else ""
        text += f" (threshold {finding.threshold:.6g}, baseline {finding.baseline:.6g}{basis})"
    if finding.volume is not None and finding.bound is not None:
        text += (
            f" (evidence: {finding.events:.6g} events in a volume of {finding.volume:.6g}, "
            f"bound {finding.bound:.4g} at confidence {finding.confidence:g})"
        )
    return text


def _describe_entry(entry: PolicyEntry) -> str:
    parts = [_effective_action(entry).value]
    if entry.deadline:
        parts.append(f"deadline {format_duration(entry.deadline)}")
    if entry.approver:
        parts.append(f"approver {entry.approver}")
    return ", ".join(parts)
