"""Plain values that flow through the loop: measurements, findings, decisions.

Everything here is immutable data with no behaviour beyond ordering and
formatting, shared by the pure core and the parts that do I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Self

from rollbackd.core.evidence import Evidence


class Severity(StrEnum):
    """The playbook's severities, ordered from least to most urgent."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]

    @classmethod
    def highest(cls, severities: list[Severity]) -> Severity:
        return max(severities, key=lambda s: s.rank)


_SEVERITY_RANK = {Severity.LOW: 0, Severity.MEDIUM: 1, Severity.HIGH: 2, Severity.CRITICAL: 3}


class Trigger(StrEnum):
    """The playbook's "When to Rollback" triggers; each has a base severity."""

    DATA_LOSS = "data_loss"
    AUTH_FAILURE = "auth_failure"
    OUTAGE = "outage"
    SECURITY_BREACH = "security_breach"
    CRITICAL_BUSINESS_FUNCTION = "critical_business_function"
    HIGH_ERROR_RATE = "high_error_rate"
    PERFORMANCE_DEGRADATION = "performance_degradation"
    MAJOR_FEATURE_BROKEN = "major_feature_broken"
    DATA_INTEGRITY = "data_integrity"
    MINOR_FEATURE_BROKEN = "minor_feature_broken"
    UI_ISSUE = "ui_issue"
    NOTICEABLE_SLOWDOWN = "noticeable_slowdown"


class Action(StrEnum):
    """What the policy does about a service's findings."""

    ROLLBACK = "rollback"
    REQUEST_APPROVAL = "request_approval"
    ESCALATE = "escalate"
    RECORD = "record"

    @property
    def rolls_back(self) -> bool:
        """Whether this action ends in a rollback without a further human step."""
        return self in (Action.ROLLBACK, Action.REQUEST_APPROVAL)


class FindingState(StrEnum):
    """Where one rule stands for one service after an evaluation."""

    OK = "ok"
    PENDING = "pending"
    FIRING = "firing"
    INCONCLUSIVE = "inconclusive"


NO_SERIES = "no series for this service"
ALERT_RULE_PREFIX = "alert:"
"""An alert's finding is named ``alert:NAME``, like a rule, in decisions and the journal."""


@dataclass(frozen=True, slots=True)
class Measurement:
    """One value of one rule for one service, or the reason there is none.

    A value that is NaN or infinite is not a measurement: use
    :meth:`missing`. Missing data is inconclusive, never healthy, never failing.
    """

    value: float | None
    reason: str = ""

    @classmethod
    def of(cls, value: float) -> Self:
        """A value, or missing if it is not a finite number (NaN, ±Inf)."""
        if math.isnan(value):
            return cls(None, "the value is NaN (for a ratio: nothing to divide by)")
        if math.isinf(value):
            return cls(None, f"the value is {'+' if value > 0 else '-'}Inf")
        return cls(float(value))

    @classmethod
    def missing(cls, reason: str) -> Self:
        return cls(None, reason)

    @property
    def is_missing(self) -> bool:
        return self.value is None or not math.isfinite(self.value)


@dataclass(frozen=True, slots=True)
class Vector:
    """One query's values by service at one instant, or why the whole query failed.

    ``numbers`` holds the finite values; ``problems`` says why a service that
    the answer did mention has no usable value (NaN, two series, ...). A
    service in neither has no series.
    """

    numbers: dict[str, float] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    @classmethod
    def of(cls, measurements: Mapping[str, Measurement]) -> Vector:
        """A vector from one measurement per service (missing ones keep their reason)."""
        numbers: dict[str, float] = {}
        problems: dict[str, str] = {}
        for service, measurement in measurements.items():
            if measurement.value is not None and math.isfinite(measurement.value):
                numbers[service] = measurement.value
            else:
                problems[service] = measurement.reason or "no value"
        return cls(numbers, problems)

    def number(self, service: str) -> float | None:
        """The service's finite value, or None (then :meth:`get` says why)."""
        return self.numbers.get(service)

    def get(self, service: str) -> Measurement:
        if self.error is not None:
            return Measurement.missing(self.error)
        number = self.numbers.get(service)
        if number is not None:
            return Measurement(number)
        return Measurement.missing(self.problems.get(service, NO_SERIES))


@dataclass(frozen=True, slots=True)
class Matrix:
    """A range query's samples by service (unix milliseconds → value), or why it failed.

    Values are kept as Prometheus sent them, NaN and ±Inf included, for
    :meth:`Measurement.of` to explain; ``ambiguous`` names the services that
    had more than one series.
    """

    series: dict[str, dict[int, float]] = field(default_factory=dict)
    error: str | None = None
    ambiguous: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RuleState:
    """What the evaluation of one (rule, service) remembers between cycles.

    ``pending_since``: when the condition was first seen holding without a
    break; ``firing_since``: when it had held for the rule's ``for``;
    ``missing_since``: when the current run of missing data began;
    ``last_seen``: the time of the last evaluation that had data; ``evidence``:
    the counts since the deploy of a rule that weighs its traffic.
    """

    pending_since: datetime | None = None
    firing_since: datetime | None = None
    missing_since: datetime | None = None
    last_seen: datetime | None = None
    last_value: float | None = None
    evidence: Evidence | None = None


@dataclass(frozen=True)
class Finding:
    """The outcome of one rule for one service at one time, with its why.

    ``since`` is when the current state began (pending, firing, or missing
    data); ``started`` is when the condition first held, which is what the
    attribution guard compares to the deploy time; ``last_seen`` is the last
    evaluation that had a value (None: never, since rollbackd began looking).
    A rule that weighs its traffic says what stood behind its value: ``events``
    of ``volume`` since the deploy (or the test's restart), and ``bound``, the
    end of the confidence sequence nearest the threshold at ``confidence``.
    """

    rule: str
    service: str
    trigger: Trigger
    state: FindingState
    time: datetime
    value: float | None
    threshold: float | None
    baseline: float | None
    condition: str
    severity: Severity
    reason: str
    since: datetime | None = None
    started: datetime | None = None
    missing_for: timedelta | None = None
    impact: float | None = None
    severity_reason: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    last_seen: datetime | None = None
    baseline_basis: str = ""
    """How ``baseline`` was made when it is not the plain pre-deploy value (a seasonal one)."""
    events: float | None = None
    volume: float | None = None
    bound: float | None = None
    confidence: float | None = None
    no_series: bool = False
    """Its value is missing because the answer had no series for the service, rather than
    because the read failed (a source error) or the value was unusable."""

    @property
    def firing(self) -> bool:
        return self.state is FindingState.FIRING

    @property
    def active(self) -> bool:
        """Pending or firing: the condition holds."""
        return self.state in (FindingState.PENDING, FindingState.FIRING)

    @property
    def unmeasured(self) -> bool:
        """Never had a value since rollbackd began looking, for want of a series (a metric
        the service does not export): inconclusive, but nothing went missing; shown once,
        quietly. A read that fails (Prometheus down, refusing, garbled) is no such thing:
        it stays an inconclusive finding with its error, never a quiet "ok"."""
        return (
            self.state is FindingState.INCONCLUSIVE
            and self.no_series
            and self.last_seen is None
            and self.started is None
        )


@dataclass(frozen=True)
class Decision:
    """What the policy decided for one service, and every reason why.

    ``action`` is what will happen; ``proposed`` is what the severity policy
    asked for before the guards; ``guards`` names each guard that changed it.
    """

    service: str
    time: datetime
    severity: Severity
    action: Action
    proposed: Action
    rules: tuple[str, ...]
    reason: str
    approver: str | None = None
    deadline: datetime | None = None
    guards: tuple[str, ...] = ()
    value: float | None = None
    target: str | None = None
    scope: str = "all"
    """What a rollback undoes: ``all`` of the service, or only the ``canary`` (core.canary)."""
    canary_version: str | None = None
    """With scope ``canary``: the new version serving alongside ``target``, to take out."""
