"""Rules: parsing rule files and evaluating them, with no I/O.

A rule compares one value per service to an absolute threshold (``> 0.05``)
or to the service's baseline (``> +50%``), and fires once the condition has
held at every evaluation for its ``for`` duration. Missing data is
*inconclusive*: it never fires a rule, never counts as healthy, and never
turns a pending or firing rule back into "fine". A gap in the data shorter
than ``for`` is bridged; after one as long as ``for`` or longer the clock of
a pending rule restarts, because the evidence before the gap is stale. A rule
that was firing before a gap fires on when the data returns still holding:
its incident is already open, and the gap is no evidence of recovery.

``parse_rules(text, source)`` reads one rule file's text; :func:`evaluate`
steps one (rule, service) state machine; :func:`evaluate_cycle` runs a whole
cycle. Time is always passed in.
"""

from __future__ import annotations

import math
import operator
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import cache, cached_property
from itertools import compress, repeat
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rollbackd.core.durations import Duration, format_duration, format_instant, parse_duration
from rollbackd.core.evidence import (
    Evidence,
    Verdict,
    accumulate,
    carry,
    judge,
    restart_if_healthy,
    side,
    spent,
)
from rollbackd.core.matrix import assess_severity
from rollbackd.core.model import (
    NO_SERIES,
    Finding,
    FindingState,
    Measurement,
    RuleState,
    Severity,
    Trigger,
    Vector,
)
from rollbackd.core.seasonal import DEFAULT_SEASONALITY
from rollbackd.core.validation import NAME_PATTERN, problems_from
from rollbackd.errors import InvalidInput, Problem

_CONDITION = re.compile(
    r"^\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<sign>[+-])?\s*"
    r"(?P<num>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<pct>%)?\s*$"
)
_CONDITION_HELP = "expected '> 0.05' or '> +50%'"
_LOOKBACKS = re.compile(r"\[\s*([0-9][0-9a-zA-Z]*)\s*[:\]]|\boffset\s+([0-9][0-9a-zA-Z]*)")
"""Durations a PromQL query reads back: ``[5m]``, ``[30m:1m]``, ``offset 5m``."""
_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


@dataclass(frozen=True)
class Condition:
    """``op`` against a number, or against the baseline changed by a percentage.

    For a relative condition ``amount`` is the fraction (``+50%`` is 0.5,
    ``-30%`` is -0.3) and the threshold is ``baseline * (1 + amount)``.
    """

    op: str
    amount: float
    relative: bool
    text: str

    def threshold(self, baseline: float | None) -> float:
        if not self.relative:
            return self.amount
        if baseline is None:
            raise ValueError("a relative condition needs a baseline")
        return baseline * (1.0 + self.amount)

    def holds(self, value: float, threshold: float) -> bool:
        return self.compare(value, threshold)

    @property
    def compare(self) -> Callable[[float, float], bool]:
        """The comparison itself, e.g. ``operator.gt`` for ``>``."""
        return _OPERATORS[self.op]

    def __str__(self) -> str:
        return self.text


def parse_condition(text: str) -> Condition:
    """Parse ``> 0.05``, ``<= 3``, ``> +50%`` or ``< -30%``; ValueError says what is accepted."""
    match = _CONDITION.match(text)
    if match is None:
        raise ValueError(f"{_CONDITION_HELP}, got {text!r}")
    op, sign, num, pct = match.group("op", "sign", "num", "pct")
    number = float(num)
    if not math.isfinite(number):
        raise ValueError(f"{_CONDITION_HELP}, got {text!r}")
    if pct is None:
        value = -number if sign == "-" else number
        return Condition(op, value, relative=False, text=f"{op} {value:.15g}")
    if sign is None:
        raise ValueError(
            f"a relative condition needs a sign: '{op} +{num}%' (above the baseline) "
            f"or '{op} -{num}%' (below it), got {text!r}"
        )
    if op in ("==", "!="):
        raise ValueError(f"a relative condition takes > >= < <=, not {op!r}, got {text!r}")
    if sign == "-" and number >= 100:
        raise ValueError(f"a value cannot fall by 100% or more below its baseline, got {text!r}")
    fraction = (number if sign == "+" else -number) / 100.0
    return Condition(op, fraction, relative=True, text=f"{op} {sign}{num}%")


class Rule(BaseModel):
    """One ``[[rules]]`` table of a rule file, validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(pattern=NAME_PATTERN, max_length=100)
    trigger: Trigger
    query: str | None = Field(default=None, min_length=1)
    probe: str | None = Field(default=None, pattern=NAME_PATTERN)
    condition: Condition
    for_: Duration = Field(default=timedelta(0), alias="for")
    baseline: Literal["before_deploy", "seasonal"] | None = None
    baseline_window: Duration = timedelta(minutes=30)
    seasonality: tuple[Duration, ...] = DEFAULT_SEASONALITY
    min_change: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    severity: Severity | None = None
    impact_query: str | None = Field(default=None, min_length=1)
    labels: dict[str, str] = Field(default_factory=dict)
    description: str = ""
    events: str | None = Field(default=None, min_length=1)
    volume: str | None = Field(default=None, min_length=1)
    confidence: float = Field(default=0.99, gt=0.5, lt=1, allow_inf_nan=False)
    min_volume: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    sustain: Duration = timedelta(0)
    """An evidence rule: once its test restarted on the healthy side (the version
    showed itself healthy), later trouble fires only after its ratio held this long."""

    @field_validator("condition", mode="before")
    @classmethod
    def _parse_condition(cls, value: Any) -> Condition:
        if isinstance(value, Condition):
            return value
        if not isinstance(value, str):
            raise ValueError(f"{_CONDITION_HELP}, got {value!r}")
        return parse_condition(value)

    @model_validator(mode="after")
    def _consistent(self) -> Rule:
        if (self.query is None) == (self.probe is None):
            raise ValueError(
                "a rule takes exactly one of 'query' (PromQL) or 'probe' (a probe name)"
            )
        if self.condition.relative:
            if self.probe is not None:
                raise ValueError("a probe rule compares to a number, not a baseline")
            if self.baseline is None:
                object.__setattr__(self, "baseline", "before_deploy")
        else:
            if self.baseline is not None:
                raise ValueError(
                    f"baseline is used only by relative conditions ('> +50%'), "
                    f"and condition is {self.condition.text!r}"
                )
            if "baseline_window" in self.model_fields_set:
                raise ValueError("baseline_window is used only by relative conditions ('> +50%')")
            if self.min_change is not None:
                raise ValueError("min_change is used only by relative conditions ('> +50%')")
        if "seasonality" in self.model_fields_set and self.baseline != "seasonal":
            raise ValueError('seasonality is used only by baseline = "seasonal"')
        if self.baseline == "seasonal":
            _check_seasonality(self.seasonality)
        if self.baseline_window <= timedelta(0):
            raise ValueError("baseline_window must be longer than 0s")
        _check_evidence(self)
        return self

    @property
    def weighs_evidence(self) -> bool:
        """Whether the rule judges its ratio on the traffic behind it (``events``/``volume``)."""
        return self.events is not None

    @cached_property
    def evidence_window(self) -> timedelta:
        """The window ``events`` and ``volume`` count over (0: not an evidence rule)."""
        return _longest_range(self.events) if self.events is not None else timedelta(0)

    @property
    def relative(self) -> bool:
        return self.condition.relative

    @property
    def seasonal(self) -> bool:
        """Whether the baseline allows for the daily and weekly rhythm (core.seasonal)."""
        return self.baseline == "seasonal"

    @property
    def fires_on_rise(self) -> bool:
        """Whether the condition fires on high values (``>``, ``>=``), not low ones."""
        return self.condition.op in (">", ">=")

    @cached_property
    def lookback(self) -> timedelta:
        """How far back the query reads: its longest range, subquery or offset (0: a probe).

        After a deploy, the query can show the previous version for this long.
        """
        if self.query is None:
            return timedelta(0)
        return _longest_range(self.query)

    @property
    def settles_after(self) -> timedelta:
        """How long after a deploy a finding that held before it still speaks of the old
        version: its ``for``, or its query's look back if that is longer."""
        return max(self.for_, self.lookback)


MAX_SEASONALITY = 4
"""Earlier days a seasonal rule may look at: each costs a query per cycle."""


def _check_seasonality(offsets: tuple[timedelta, ...]) -> None:
    if not offsets:
        raise ValueError('seasonality needs at least one offset, e.g. ["1d", "7d"]')
    if len(offsets) > MAX_SEASONALITY:
        raise ValueError(f"seasonality takes at most {MAX_SEASONALITY} offsets")
    if len(set(offsets)) != len(offsets):
        raise ValueError("seasonality lists an offset twice")
    for offset in offsets:
        if offset < timedelta(hours=1):
            raise ValueError(
                f"seasonality offsets are earlier days ('1d', '7d'), not {format_duration(offset)}"
            )


def _longest_range(query: str) -> timedelta:
    """The longest range, subquery or offset ``query`` reads back (0: none)."""
    longest = timedelta(0)
    for match in _LOOKBACKS.finditer(query):
        try:
            longest = max(longest, parse_duration(match.group(1) or match.group(2)))
        except ValueError:
            continue
    return longest


_EVIDENCE_KEYS = ("confidence", "min_volume", "sustain")


def _check_evidence(rule: Rule) -> None:
    """An evidence rule: events and volume together, on a proportion, over one window."""
    if (rule.events is None) != (rule.volume is None):
        raise ValueError(
            "'events' and 'volume' go together: the count of bad events and the count "
            "of all, per service, over the same window"
        )
    if rule.events is None or rule.volume is None:
        extra = [key for key in _EVIDENCE_KEYS if key in rule.model_fields_set]
        if extra:
            raise ValueError(f"{', '.join(extra)} is used only with 'events' and 'volume'")
        return
    if rule.query is None:
        raise ValueError("'events' and 'volume' need 'query' (the ratio they stand behind)")
    condition = rule.condition
    if condition.relative or condition.op not in (">", ">=", "<", "<="):
        raise ValueError(
            "'events' and 'volume' weigh a proportion against a number: the condition must be "
            f"'> 0.05' or '< 0.05' (> >= < <=), not {condition.text!r}"
        )
    if not 0 < condition.amount < 1:
        raise ValueError(
            f"'events' and 'volume' weigh a proportion: the threshold must be between 0 and 1, "
            f"not {condition.amount:.10g}"
        )
    if rule.for_ > timedelta(0):
        raise ValueError(
            "'for' does not apply to a rule with 'events' and 'volume': it fires once the "
            "evidence holds at its 'confidence' over every look (raise 'confidence' or "
            "'min_volume' to ask for more)"
        )
    windows = {
        key: _longest_range(query)
        for key, query in (("events", rule.events), ("volume", rule.volume))
    }
    for key, window in windows.items():
        if window <= timedelta(0):
            raise ValueError(
                f"{key}: count over a window, e.g. 'sum by (service) (increase(x[1m]))'"
            )
    if windows["events"] != windows["volume"]:
        raise ValueError(
            f"'events' and 'volume' must count over the same window, not "
            f"{format_duration(windows['events'])} and {format_duration(windows['volume'])}"
        )


def parse_rules(text: str, source: str) -> list[Rule]:
    """Parse one rule file's text; raise InvalidInput naming file, rule and key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput([Problem(source, "", f"not valid TOML: {exc}")]) from None
    problems: list[Problem] = []
    for key in data:
        if key != "rules":
            problems.append(
                Problem(source, key, "unknown key (a rule file holds [[rules]] tables)")
            )
    tables = data.get("rules", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        problems.append(Problem(source, "rules", "expected [[rules]] tables"))
        raise InvalidInput(problems)
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, table in enumerate(tables):
        name = table.get("name")
        where = f'rule "{name}"' if isinstance(name, str) else f"rules[{index}]"
        if isinstance(name, str) and name in seen:
            problems.append(Problem(source, where, "name: another rule in this file has this name"))
            continue
        if isinstance(name, str):
            seen.add(name)
        try:
            rules.append(Rule.model_validate(table))
        except ValidationError as exc:
            problems.extend(problems_from(exc, source, prefix=where))
    if problems:
        raise InvalidInput(problems)
    return rules


Key = tuple[str, str]
"""(rule name, service name)."""


@dataclass(frozen=True)
class Previously:
    """The evaluation before this one: when it was, and which rules and services it covered.

    A (rule, service) it covered that has no remembered state was quiet then: OK, with
    a value. So data missing now was last seen then, not never.
    """

    time: datetime
    rules: frozenset[str]
    services: frozenset[str]

    def seen(self, key: Key) -> RuleState | None:
        """What a pair without remembered state had at that evaluation, if it was covered."""
        rule, service = key
        if rule in self.rules and service in self.services:
            return RuleState(last_seen=self.time)
        return None


@dataclass(frozen=True)
class Cycle:
    """The outcome of one evaluation cycle: the states to keep and the findings.

    ``states`` holds only the (rule, service) pairs with something to
    remember (pending, firing, missing data); an absent pair is quiet.
    ``notable`` is every finding except the *quiet* ones (OK now, quiet
    before), which at thousands of services are nearly all of them: those are
    only counted, by rule, in ``quiet``. ``findings`` builds every finding, in
    rule and service order, when something asks for them all.
    """

    states: dict[Key, RuleState]
    notable: tuple[Finding, ...]
    quiet: Mapping[str, int] = field(default_factory=dict)
    build_all: Callable[[], tuple[Finding, ...]] | None = field(
        default=None, repr=False, compare=False
    )

    @cached_property
    def findings(self) -> tuple[Finding, ...]:
        return self.build_all() if self.build_all is not None else self.notable

    def firing(self, service: str | None = None) -> list[Finding]:
        return [f for f in self.notable if f.firing and (service is None or f.service == service)]


@dataclass(frozen=True)
class Step:
    """What one evaluation of one (rule, service) concluded, before severity."""

    state: FindingState
    value: float | None
    threshold: float | None
    reason: str
    since: datetime | None = None
    started: datetime | None = None
    missing_for: timedelta | None = None
    verdict: Verdict | None = None


def _fmt(value: float) -> str:
    return f"{value:.10g}"


def _elapsed(now: datetime, since: datetime) -> timedelta:
    return max(now - since, timedelta(0))


def evaluate(
    rule: Rule,
    measurement: Measurement,
    baseline: Measurement | None,
    previous: RuleState,
    now: datetime,
    counts: tuple[Measurement, Measurement] | None = None,
    deploy: datetime | None = None,
) -> tuple[RuleState, Step]:
    """Step one (rule, service) state machine to ``now``.

    ``baseline`` is the pre-deploy value for relative rules (None: no deploy
    known). A rule that weighs its traffic takes ``counts``, this look's (events,
    volume) over its window, and ``deploy``, the time of the service's deploy its
    evidence counts from (None: none known). Returns the state to keep and what
    this evaluation concluded.
    """
    if rule.weighs_evidence:
        return _evaluate_evidence(rule, measurement, previous, now, counts, deploy)
    missing_reason = _missing_reason(rule, measurement, baseline)
    if missing_reason is not None:
        return _missing(rule, previous, now, missing_reason)

    value = measurement.value
    assert value is not None  # noqa: S101 -- _missing_reason returned None, so a value is there
    base = baseline.value if (rule.relative and baseline is not None) else None
    threshold = rule.condition.threshold(base)
    comparison = f"{_fmt(value)} {rule.condition.op} {_fmt(threshold)}"
    if base is not None:
        relative = rule.condition.text.removeprefix(rule.condition.op).strip()
        basis = _baseline_basis(rule, baseline)
        comparison += f" ({relative} of baseline {_fmt(base)}{f' = {basis}' if basis else ''})"
    if measurement.reason:
        comparison += f" ({measurement.reason})"
    holds = rule.condition.holds(value, threshold)
    verdict = "does not hold"
    if holds and base is not None and rule.min_change is not None:
        change = abs(value - base)
        if change < rule.min_change:
            holds = False
            verdict = (
                f"holds, but the change {_fmt(change)} is below min_change {_fmt(rule.min_change)}"
            )

    if not holds:
        was = ""
        if previous.firing_since is not None:
            was = f"; resolved (was firing since {format_instant(previous.firing_since)})"
        elif previous.pending_since is not None:
            was = f"; pending since {format_instant(previous.pending_since)} is reset"
        state = RuleState(last_seen=now, last_value=value)
        return state, Step(FindingState.OK, value, threshold, f"{comparison} {verdict}{was}")

    pending_since = previous.pending_since
    firing_since = previous.firing_since
    note = ""
    if previous.missing_since is not None and pending_since is not None and firing_since is None:
        gap = _elapsed(now, previous.last_seen or previous.missing_since)
        if gap >= rule.for_:
            note = f"; a {format_duration(gap)} gap in the data restarted the clock"
            pending_since = None
    if pending_since is None:
        pending_since = now
    held = _elapsed(now, pending_since)
    if firing_since is None and held >= rule.for_:
        firing_since = now
    state = RuleState(
        pending_since=pending_since,
        firing_since=firing_since,
        last_seen=now,
        last_value=value,
    )
    if firing_since is not None:
        reason = (
            f"{comparison} held for {format_duration(held)} (for {format_duration(rule.for_)}), "
            f"firing since {format_instant(firing_since)}{note}"
        )
        return state, Step(
            FindingState.FIRING, value, threshold, reason, since=firing_since, started=pending_since
        )
    reason = f"{comparison} for {format_duration(held)} of {format_duration(rule.for_)}{note}"
    return state, Step(
        FindingState.PENDING, value, threshold, reason, since=pending_since, started=pending_since
    )


def _evaluate_evidence(
    rule: Rule,
    measurement: Measurement,
    previous: RuleState,
    now: datetime,
    counts: tuple[Measurement, Measurement] | None,
    deploy: datetime | None,
) -> tuple[RuleState, Step]:
    """Step a rule that weighs its traffic: its value (the ratio over the query's
    window) says whether the trouble is there now; the evidence since the deploy
    says whether it is more than noise. It fires when both hold, at once: the
    confidence sequence already holds over every look, so ``for`` does not apply.
    Once firing it stays so while its value holds; a new deploy starts a new test.
    Trouble that was already firing when the deploy came keeps its start (as any
    other rule's does): if it goes on, it began before the deploy, and the
    attribution guard does not blame the deploy for it.
    """
    evidence = _counted(rule, previous.evidence, counts, deploy, now)
    if previous.evidence is not None and previous.evidence.deploy != deploy:
        began = previous.pending_since if previous.firing_since is not None else None
        previous = replace(previous, pending_since=began, firing_since=None)
    if measurement.is_missing:
        state, step = _missing(rule, previous, now, f"no data: {measurement.reason or 'no value'}")
        return replace(state, evidence=evidence), step
    value = measurement.value
    assert value is not None  # noqa: S101 -- is_missing is False
    threshold = rule.condition.amount
    above = rule.condition.op in (">", ">=")
    comparison = f"{_fmt(value)} {rule.condition.op} {_fmt(threshold)}"
    if measurement.reason:
        comparison += f" ({measurement.reason})"
    verdict = None if evidence is None else judge(evidence, threshold, above, rule.confidence)
    weighed = _weighed(rule, evidence, verdict)
    if evidence is not None and verdict is not None:
        evidence = restart_if_healthy(evidence, verdict.side, above)
    if not rule.condition.holds(value, threshold):
        was = ""
        if previous.firing_since is not None:
            was = f"; resolved (was firing since {format_instant(previous.firing_since)})"
        state = RuleState(last_seen=now, last_value=value, evidence=evidence)
        reason = f"{comparison} does not hold{was}; {weighed}"
        return state, Step(FindingState.OK, value, threshold, reason, verdict=verdict)
    pending_since = previous.pending_since or now
    firing_since = previous.firing_since
    enough = (
        evidence is not None
        and verdict is not None
        and verdict.past
        and evidence.volume >= rule.min_volume
    )
    waiting = ""
    if firing_since is None and enough and evidence is not None:
        waiting = _unsustained(rule, evidence, pending_since, now)
    if firing_since is None and enough and not waiting:
        firing_since = now
    state = RuleState(
        pending_since=pending_since,
        firing_since=firing_since,
        last_seen=now,
        last_value=value,
        evidence=evidence,
    )
    if firing_since is not None:
        reason = (
            f"{comparison} and the evidence holds: {weighed}; "
            f"firing since {format_instant(firing_since)}"
        )
        return state, Step(
            FindingState.FIRING,
            value,
            threshold,
            reason,
            since=firing_since,
            started=pending_since,
            verdict=verdict,
        )
    reason = f"{comparison}, but the evidence is not enough yet: {weighed}"
    if waiting:
        reason = f"{comparison} and the evidence holds ({weighed}), {waiting}"
    return state, Step(
        FindingState.PENDING,
        value,
        threshold,
        reason,
        since=pending_since,
        started=pending_since,
        verdict=verdict,
    )


def _unsustained(rule: Rule, evidence: Evidence, pending_since: datetime, now: datetime) -> str:
    """Why trouble the evidence shows does not fire yet: it began after the version had
    shown itself healthy (the test restarted) and has not held ``sustain`` ("": it fires).

    A version that served well and then fails for a moment met a burst from outside
    (a dependency, a garbage collection): the sequential test assumes a steady rate, a
    burst is not one. Trouble from the deploy on is judged at once, as the test allows.
    """
    if rule.sustain <= timedelta(0) or evidence.tested_from is None:
        return ""
    held = _elapsed(now, pending_since)
    if held >= rule.sustain:
        return ""
    return (
        f"but it began after the version had shown itself healthy (the test restarted at "
        f"{format_instant(evidence.tested_from)}): it has held {format_duration(held)} of "
        f"sustain {format_duration(rule.sustain)}"
    )


def _counted(
    rule: Rule,
    previous: Evidence | None,
    counts: tuple[Measurement, Measurement] | None,
    deploy: datetime | None,
    now: datetime,
) -> Evidence | None:
    """The evidence after this look: its counts added, or kept as it was without them.

    No series of events while there is volume is no event yet (prometheus_client
    creates a labelled series at its first use); no volume is no evidence.
    """
    if counts is None:
        return carry(previous, deploy)
    events, volume = counts
    if volume.is_missing or volume.value is None:
        return carry(previous, deploy)
    if events.value is not None and not events.is_missing:
        bad = events.value
    elif events.reason == NO_SERIES:
        bad = 0.0
    else:
        return carry(previous, deploy)
    return accumulate(previous, bad, volume.value, rule.evidence_window, deploy, now)


def _weighed(rule: Rule, evidence: Evidence | None, verdict: Verdict | None) -> str:
    """What stands behind the value: the counts, the bound and the confidence."""
    if evidence is None or verdict is None:
        return "no counts of events and volume yet"
    since = (
        f"since {format_instant(evidence.tested_from)} (the test restarted: healthy before)"
        if evidence.tested_from is not None
        else f"since the deploy at {format_instant(evidence.start)}"
        if evidence.deploy is not None
        else f"since {format_instant(evidence.start)} (no deploy known)"
    )
    which = "lower" if rule.condition.op in (">", ">=") else "upper"
    text = (
        f"{verdict.events:.6g} events in a volume of {verdict.volume:.6g} {since}, "
        f"{which} bound {verdict.bound:.4g} at confidence {rule.confidence:g}"
    )
    if evidence.volume < rule.min_volume:
        text += f" (volume {evidence.volume:.6g} is below min_volume {rule.min_volume:g})"
    return text


def _missing_reason(
    rule: Rule, measurement: Measurement, baseline: Measurement | None
) -> str | None:
    if measurement.is_missing:
        return f"no data: {measurement.reason or 'no value'}"
    if not rule.relative:
        return None
    if baseline is None:
        return "no baseline: no deploy is known for this service"
    if baseline.is_missing:
        return f"no baseline: {baseline.reason or 'no value before the deploy'}"
    assert baseline.value is not None  # noqa: S101 -- is_missing is False
    if baseline.value <= 0:
        return (
            f"no baseline: the value before the deploy is {_fmt(baseline.value)}, "
            "and a percentage of it means nothing"
        )
    return None


def _missing(rule: Rule, previous: RuleState, now: datetime, why: str) -> tuple[RuleState, Step]:
    missing_since = previous.missing_since or now
    missing_for = _elapsed(now, missing_since)
    state = previous if previous.missing_since else replace(previous, missing_since=now)
    kept = ""
    if previous.firing_since is not None:
        kept = f"; was firing since {format_instant(previous.firing_since)}"
    elif previous.pending_since is not None:
        kept = f"; was pending since {format_instant(previous.pending_since)}"
    if previous.last_seen is None:
        # Never a value since rollbackd began looking: how long it looked is all it knows.
        reason = f"not measured in the {format_duration(missing_for)} looked at: {why}"
    else:
        reason = (
            f"inconclusive for {format_duration(missing_for)}: {why} "
            f"(last value at {format_instant(previous.last_seen)}){kept}"
        )
    return state, Step(
        FindingState.INCONCLUSIVE,
        None,
        None,
        reason,
        since=missing_since,
        started=previous.pending_since,
        missing_for=missing_for,
    )


def applies_to(rule: Rule, service_probes: Iterable[str]) -> bool:
    """Whether a rule concerns a service: PromQL rules all, probe rules those with the probe."""
    return rule.probe is None or rule.probe in set(service_probes)


def evaluate_cycle(  # noqa: PLR0915 -- the hot loop in one piece: no call per (rule, service)
    rules: Iterable[Rule],
    services: Mapping[str, Iterable[str]],
    measurements: Mapping[Key, Measurement],
    baselines: Mapping[Key, Measurement],
    impacts: Mapping[Key, Measurement],
    states: Mapping[Key, RuleState],
    now: datetime,
    vectors: Mapping[str, Vector] | None = None,
    previously: Previously | None = None,
    counts: Mapping[str, tuple[Vector, Vector]] | None = None,
    deploys: Mapping[str, datetime] | None = None,
) -> Cycle:
    """Evaluate every rule for every service it applies to at ``now``.

    ``services`` maps each service to the names of its probes. A rule's values
    come from ``vectors[rule.name]`` when given (one query's answer), else from
    ``measurements``; a (rule, service) found in neither has no data.
    ``previously`` describes the evaluation before this one (None: this is the
    first), so that data missing now is told from data never seen. ``counts``
    holds, by rule name, the (events, volume) answers of rules that weigh their
    traffic; ``deploys`` each service's current deploy time, which their evidence
    counts from. Such a rule keeps its evidence for every service, quiet or not.

    A quiet rule whose condition does not hold is the common case, and costs a
    comparison: no finding is built for it unless :attr:`Cycle.findings` asks.
    """
    rules = tuple(rules)
    vectors = vectors or {}
    weighed: dict[Key, Finding] = {}
    new_states: dict[Key, RuleState] = {}
    notable: list[Finding] = []
    quiet: dict[str, int] = {}
    remembered: dict[str, set[str]] = {}
    for rule_name, service in states:
        if not _is_quiet(states[(rule_name, service)]):
            remembered.setdefault(rule_name, set()).add(service)
    position: dict[str, int] | None = None  # each service's place, once a rule needs it
    for rule in rules:
        vector = vectors.get(rule.name)
        numbers = vector.numbers if vector is not None else None
        stateful = remembered.get(rule.name, set())
        targets = (
            services
            if rule.probe is None
            else [service for service, probes in services.items() if applies_to(rule, probes)]
        )
        absolute = not rule.condition.relative
        compare, threshold = rule.condition.compare, rule.condition.amount
        factor, min_change = 1.0 + threshold, rule.min_change
        if rule.weighs_evidence:
            quiet[rule.name] = _evaluate_weighing(
                rule,
                targets,
                (vector, measurements, (counts or {}).get(rule.name), deploys or {}, impacts),
                states,
                previously,
                now,
                (new_states, notable, weighed),
            )
            continue
        quiet_here = 0
        loud: list[str] = []
        scan: Iterable[str] = targets
        if rule.probe is None:
            # The common case for every service at once: a quiet rule, a number, the
            # condition does not hold (in C for an absolute rule; for a relative one, its
            # number within a usable baseline, finite and positive, or too close to it).
            # The others are evaluated in full, in services' order.
            if numbers is None:  # values given one by one: the same, once gathered
                numbers = {
                    service: number
                    for service in services
                    if (number := _number(measurements.get((rule.name, service)))) is not None
                }
            names = services.keys()
            if absolute:
                held = compress(numbers, map(compare, numbers.values(), repeat(threshold)))
                in_full = (names - numbers.keys()) | (names & held) | (names & stateful)
            else:
                name = rule.name
                within = {
                    service
                    for service, number in numbers.items()
                    if (pre := baselines.get((name, service))) is not None
                    and (base := pre.value) is not None
                    and base - base == 0.0
                    and base > 0
                    and (
                        not compare(number, base * factor)
                        or (min_change is not None and abs(number - base) < min_change)
                    )
                }
                in_full = (names - within) | (names & stateful)
            quiet_here = len(names) - len(in_full)
            if position is None:
                position = {service: index for index, service in enumerate(services)}
            loud, scan = sorted(in_full, key=position.__getitem__), ()
        for service in scan:  # a probe's rule (absolute: relative rules are PromQL rules)
            if service not in stateful:
                number = _number(measurements.get((rule.name, service)))
                if number is not None and not compare(number, threshold):
                    quiet_here += 1
                    continue
            loud.append(service)
        for service in loud:
            key = (rule.name, service)
            previous = states.get(key)
            if previous is None and previously is not None:
                previous = previously.seen(key)
            state, finding = _evaluate_finding(
                rule,
                service,
                _measurement(vector, measurements, key, service),
                baselines.get(key),
                impacts.get(key),
                previous,
                now,
            )
            if not _is_quiet(state):
                new_states[key] = state
            notable.append(finding)
        if quiet_here:
            quiet[rule.name] = quiet_here
    quiet = {name: count for name, count in quiet.items() if count}

    def build_all() -> tuple[Finding, ...]:
        by_key = {(f.rule, f.service): f for f in notable}
        everything = []
        for rule in rules:
            for service, probes in services.items():
                if not applies_to(rule, probes):
                    continue
                key = (rule.name, service)
                found = by_key.get(key) or weighed.get(key)
                if found is None:
                    weighs = rule.weighs_evidence
                    _, found = _evaluate_finding(
                        rule,
                        service,
                        _measurement(vectors.get(rule.name), measurements, key, service),
                        None if weighs else baselines.get(key),
                        impacts.get(key),
                        _before(states, previously, key) if weighs else None,
                        now,
                        _counts_of((counts or {}).get(rule.name), service) if weighs else None,
                        (deploys or {}).get(service),
                    )
                everything.append(found)
        return tuple(everything)

    return Cycle(new_states, tuple(notable), quiet, build_all)


def _evaluate_weighing(
    rule: Rule,
    targets: Iterable[str],
    reads: tuple[
        Vector | None,
        Mapping[Key, Measurement],
        tuple[Vector, Vector] | None,
        Mapping[str, datetime],
        Mapping[Key, Measurement],
    ],
    states: Mapping[Key, RuleState],
    previously: Previously | None,
    now: datetime,
    into: tuple[dict[Key, RuleState], list[Finding], dict[Key, Finding]],
) -> int:
    """Evaluate a rule that weighs its traffic for every service: each keeps its
    evidence. Returns how many were quiet (OK now, quiet before); their findings go
    to the third of ``into``, for :attr:`Cycle.findings`."""
    vector, measurements, answers, deploys, impacts = reads
    new_states, notable, weighed = into
    quiet = 0
    for service in targets:
        key = (rule.name, service)
        previous = _before(states, previously, key)
        service_counts = _counts_of(answers, service)
        number = (
            vector.numbers.get(service) if vector is not None else _number(measurements.get(key))
        )
        stays = _stays_quiet(rule, number, previous, service_counts, deploys.get(service), now)
        if stays is not None:
            if stays.evidence is not None:
                new_states[key] = stays
            quiet += 1
            continue
        state, finding = _evaluate_finding(
            rule,
            service,
            _measurement(vector, measurements, key, service),
            None,
            impacts.get(key),
            previous,
            now,
            service_counts,
            deploys.get(service),
        )
        if not _is_quiet(state) or state.evidence is not None:
            new_states[key] = state
        if finding.state is FindingState.OK and (previous is None or _is_quiet(previous)):
            weighed[key] = finding
            quiet += 1
        else:
            notable.append(finding)
    return quiet


def _before(
    states: Mapping[Key, RuleState], previously: Previously | None, key: Key
) -> RuleState | None:
    """What a pair had before this cycle: its state, or what the last evaluation saw."""
    previous = states.get(key)
    if previous is None and previously is not None:
        previous = previously.seen(key)
    return previous


def _counts_of(
    answers: tuple[Vector, Vector] | None, service: str
) -> tuple[Measurement, Measurement] | None:
    return None if answers is None else (answers[0].get(service), answers[1].get(service))


def _stays_quiet(
    rule: Rule,
    number: float | None,
    previous: RuleState | None,
    counts: tuple[Measurement, Measurement] | None,
    deploy: datetime | None,
    now: datetime,
) -> RuleState | None:
    """The state of a quiet pair whose ratio does not hold, as :func:`evaluate` would
    keep it, at the cost of one look at the evidence (None: evaluate it in full)."""
    condition = rule.condition
    if number is None or condition.holds(number, condition.amount):
        return None
    if previous is not None and not _is_quiet(previous):
        return None
    evidence = _counted(rule, previous.evidence if previous else None, counts, deploy, now)
    if evidence is not None:
        events, volume = evidence.trials
        where = side(events, volume, condition.amount, spent(rule.confidence, evidence.restarts))
        evidence = restart_if_healthy(evidence, where, condition.op in (">", ">="))
    return RuleState(last_seen=now, last_value=number, evidence=evidence)


def _is_quiet(state: RuleState) -> bool:
    """Nothing to remember: neither pending, nor firing, nor in a run of missing data."""
    return (
        state.pending_since is None and state.firing_since is None and state.missing_since is None
    )


def _number(measurement: Measurement | None) -> float | None:
    if measurement is None or measurement.value is None or not math.isfinite(measurement.value):
        return None
    return measurement.value


def _measurement(
    vector: Vector | None, measurements: Mapping[Key, Measurement], key: Key, service: str
) -> Measurement:
    if vector is not None:
        return vector.get(service)
    found = measurements.get(key)
    return found if found is not None else Measurement.missing(NO_SERIES)


def _evaluate_finding(
    rule: Rule,
    service: str,
    measurement: Measurement,
    baseline: Measurement | None,
    impact: Measurement | None,
    previous: RuleState | None,
    now: datetime,
    counts: tuple[Measurement, Measurement] | None = None,
    deploy: datetime | None = None,
) -> tuple[RuleState, Finding]:
    state, step = evaluate(rule, measurement, baseline, previous or QUIET, now, counts, deploy)
    verdict = step.verdict
    impact_value = None if impact is None or impact.is_missing else impact.value
    severity, severity_reason = (
        _severity(rule.trigger, rule.severity)
        if impact_value is None
        else assess_severity(rule.trigger, rule.severity, impact_value)
    )
    return state, Finding(
        rule=rule.name,
        service=service,
        trigger=rule.trigger,
        state=step.state,
        time=now,
        value=step.value,
        threshold=step.threshold,
        baseline=_baseline_value(rule, baseline),
        baseline_basis=_baseline_basis(rule, baseline),
        condition=rule.condition.text,
        severity=severity,
        reason=step.reason,
        since=step.since,
        started=step.started,
        missing_for=step.missing_for,
        impact=impact_value,
        severity_reason=severity_reason,
        labels=dict(rule.labels),
        last_seen=state.last_seen,
        events=None if verdict is None else verdict.events,
        volume=None if verdict is None else verdict.volume,
        bound=None if verdict is None else verdict.bound,
        confidence=rule.confidence if rule.weighs_evidence else None,
        no_series=measurement.reason == NO_SERIES,
    )


@cache
def _severity(trigger: Trigger, override: Severity | None) -> tuple[Severity, str]:
    """A rule's severity without an impact: the same for every service and every cycle."""
    return assess_severity(trigger, override, None)


QUIET = RuleState()
"""The state of a rule with nothing to remember."""


def _baseline_value(rule: Rule, baseline: Measurement | None) -> float | None:
    if not rule.relative or baseline is None or baseline.is_missing:
        return None
    return baseline.value


def _baseline_basis(rule: Rule, baseline: Measurement | None) -> str:
    """How a baseline with a value was made (a seasonal one says so; a plain one is "")."""
    if not rule.relative or baseline is None or baseline.is_missing:
        return ""
    return baseline.reason


def rule_trigger_severity(rule: Rule) -> Severity:
    """The severity a rule carries before impact: its override, else its trigger's."""
    severity, _ = assess_severity(rule.trigger, rule.severity, None)
    return severity
