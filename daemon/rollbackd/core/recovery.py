"""The recovery watch's judgement: is a service that was rolled back healthy again?

The playbook's success criteria, checked at every poll after a rollback:
the error rate below ``max_error_rate`` (1 %), latency back within the
pre-deploy baseline (plus ``latency_tolerance``), every health and smoke
probe of the service passing, no critical rule holding, and every
Alertmanager alert that triggered the rollback resolved.

Each criterion at each check passes, fails, or has no data. A check holds
when nothing fails and at least one criterion *proves* health: an error rate
below the limit, latency within its baseline, or a passing probe (a resolved
alert or a quiet critical rule is welcome but proves nothing: an alert also
resolves when its series vanish). Missing data proves nothing, and never
fails a check by itself: an app restarted by the rollback has no 5xx series
until its first error, and that must not read as "not recovered". One
exception: an alert that triggered the rollback and cannot be seen
(Alertmanager did not answer) keeps the check from holding, though it fails
nothing: it may still fire, and recovery is never declared over an alert
nobody could see resolved.

The criteria must hold, at every check, for ``window`` (15m). If they have not
by ``timeout``, the verdict is *not recovered* when the service measurably
failed (the last check, or the last one with data, failed a criterion), and
*unknown* when the data could not prove it either way. Both escalate to a
person; the rollback is never repeated automatically.

:func:`judge` folds one look into a :class:`Check`, :func:`advance` folds checks
into a :class:`Verdict`; :mod:`rollbackd.actions.recovery` runs them live.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum

from rollbackd.core.durations import format_duration, format_instant
from rollbackd.core.model import ALERT_RULE_PREFIX, NO_SERIES, Measurement, Severity, Trigger
from rollbackd.core.rules import Rule, rule_trigger_severity
from rollbackd.text import printable

ERROR_TRIGGERS = {Trigger.HIGH_ERROR_RATE}
LATENCY_TRIGGERS = {Trigger.PERFORMANCE_DEGRADATION}
LAZY_SERIES_HINT = (
    "an error counter created on first use has no series until the first error: "
    "write the rule as (errors or total * 0) / total"
)
"""Said with an error-rate rule that has no series: the usual cause, and the fix."""
ALERTS_UNSEEN = "recovery waits for the alerts that triggered the rollback to be seen resolved"
"""Said when only an alert that could not be read keeps a check from holding."""


@dataclass(frozen=True)
class Criteria:
    """The success criteria's settings (``[recovery]``)."""

    window: timedelta = timedelta(minutes=15)
    timeout: timedelta = timedelta(minutes=30)
    max_error_rate: float = 0.01
    latency_tolerance: float = 0.2


@dataclass(frozen=True)
class ProbeOutcome:
    """A probe's verdict, as the watch needs it; ``measured`` is False for a probe that
    rollbackd could not even try (no file descriptor, ...): no data, never a failure."""

    passed: bool
    reason: str
    measured: bool = True


@dataclass(frozen=True)
class FiringAlerts:
    """A service's alerts firing at one look: each one's start by finding name
    (``alert:NAME``), and why one not listed may still fire unseen (None: every
    source answered)."""

    since: Mapping[str, datetime] = field(default_factory=dict)
    unseen: str | None = None


@dataclass(frozen=True)
class Check:
    """One look at the criteria: did they hold, and each criterion with its value.

    ``failures`` failed; ``passes`` passed; ``missing`` had no data (they
    neither fail the check nor prove anything). ``held``: nothing failed,
    something proved health, and every alert that triggered the rollback was
    seen. ``proven``: something proved health (held or not).
    """

    time: datetime
    held: bool
    failures: tuple[str, ...]
    passes: tuple[str, ...] = ()
    values: Mapping[str, float] = field(default_factory=dict)
    missing: tuple[str, ...] = ()
    proven: bool = False

    @property
    def criteria(self) -> str:
        """Every criterion of this check: failing first, then passing, then without data."""
        return "; ".join((*self.failures, *self.passes, *self.missing)) or "no criterion"


@dataclass(frozen=True)
class Verdict:
    """The end of a watch: recovered or not, and the sentence that says why.

    ``unknown``: not recovered, but nothing measured says the service is
    broken either; the data could not prove recovery (a person must look).
    """

    recovered: bool
    reason: str
    checks: int
    unknown: bool = False


@dataclass(frozen=True)
class WatchState:
    """What the watch remembers between checks.

    ``failing``: the latest check that could judge (it held, or it failed)
    failed. ``held_after_failure``: the checks holding now began right after
    one that failed. ``last_failed`` and ``last_unproven`` are the latest
    check that failed, and that neither failed nor held, for the verdict.
    """

    started: datetime
    held_since: datetime | None = None
    checks: int = 0
    last_failures: tuple[str, ...] = ()
    failing: bool = False
    held_after_failure: bool = False
    last_failed: Check | None = None
    last_unproven: Check | None = None
    previous: Check | None = None


class _Result(Enum):
    FAILS = "fails"
    PASSES = "passes"
    PROVES = "proves"
    NO_DATA = "no data"


def judge(
    rules: Iterable[Rule],
    values: Mapping[str, Measurement],
    probes: Mapping[str, ProbeOutcome],
    baselines: Mapping[str, float],
    criteria: Criteria,
    now: datetime,
    alerts: Mapping[str, datetime | str | None] | None = None,
) -> Check:
    """Check every criterion once; ``values`` and ``baselines`` are by rule name.

    ``alerts`` holds each alert that triggered the rollback, by its finding
    name (``alert:NAME``): since when it fires, None once it is resolved, or
    why it cannot be known (Alertmanager did not answer): no data.
    """
    judged: list[tuple[_Result, str]] = []
    samples: dict[str, float] = {}
    for rule in rules:
        measurement = values.get(rule.name, Measurement.missing("not measured"))
        if measurement.value is not None:
            samples[rule.name] = measurement.value
        if rule.trigger in ERROR_TRIGGERS:
            judged.append(_error_rate(rule, measurement, criteria))
        elif rule.trigger in LATENCY_TRIGGERS:
            judged.append(_latency(rule, measurement, baselines.get(rule.name), criteria))
        elif rule_trigger_severity(rule) is Severity.CRITICAL and not rule.relative:
            judged.append(_critical(rule, measurement))
    for name, outcome in sorted(probes.items()):
        if not outcome.measured:
            judged.append((_Result.NO_DATA, f"probe {name}: no data ({outcome.reason})"))
            continue
        samples[f"probe:{name}"] = 1.0 if outcome.passed else 0.0
        if outcome.passed:
            judged.append((_Result.PROVES, f"probe {name} passes"))
        else:
            judged.append((_Result.FAILS, f"probe {name} fails: {outcome.reason}"))
    for name, firing_since in sorted((alerts or {}).items()):
        shown = printable(name.removeprefix(ALERT_RULE_PREFIX))
        if firing_since is None:
            judged.append((_Result.PASSES, f"alert {shown} resolved"))
        elif isinstance(firing_since, str):
            judged.append((_Result.NO_DATA, f"alert {shown}: no data ({firing_since})"))
        else:
            judged.append(
                (
                    _Result.FAILS,
                    f"alert {shown} still firing (since {format_instant(firing_since)})",
                )
            )
    failures = tuple(text for result, text in judged if result is _Result.FAILS)
    passes = tuple(text for result, text in judged if result in (_Result.PASSES, _Result.PROVES))
    missing = tuple(text for result, text in judged if result is _Result.NO_DATA)
    proven = any(result is _Result.PROVES for result, _ in judged)
    unseen = any(isinstance(since, str) for since in (alerts or {}).values())
    if not failures and not proven:
        missing += ("nothing proves recovery: no error-rate, latency or probe criterion has data",)
    elif not failures and unseen:
        missing += (ALERTS_UNSEEN,)
    held = not failures and proven and not unseen
    return Check(now, held, failures, passes, samples, missing, proven)


def _error_rate(rule: Rule, measurement: Measurement, criteria: Criteria) -> tuple[_Result, str]:
    what = f"error rate ({rule.name})"
    if measurement.value is None:
        hint = f"; {LAZY_SERIES_HINT}" if measurement.reason == NO_SERIES else ""
        return _Result.NO_DATA, f"{what}: no data ({measurement.reason}{hint})"
    if measurement.value >= criteria.max_error_rate:
        return (
            _Result.FAILS,
            f"{what} {measurement.value:.4g} is not below {criteria.max_error_rate:.4g}",
        )
    return _Result.PROVES, f"{what} {measurement.value:.4g} < {criteria.max_error_rate:.4g}"


def _latency(
    rule: Rule, measurement: Measurement, baseline: float | None, criteria: Criteria
) -> tuple[_Result, str]:
    what = f"latency ({rule.name})"
    value = measurement.value
    if value is None:
        return _Result.NO_DATA, f"{what}: no data ({measurement.reason})"
    if not rule.relative:
        condition = rule.condition
        if condition.holds(value, condition.amount):
            return _Result.FAILS, f"{what} {value:.4g} still {condition.text}"
        return _Result.PROVES, f"{what} {value:.4g}, not {condition.text}"
    if baseline is None:
        return (
            _Result.NO_DATA,
            f"{what} {value:.4g}: no data to compare with (no pre-deploy baseline was kept)",
        )
    limit = baseline * (1 + criteria.latency_tolerance)
    tolerance = f"{baseline:.4g} +{criteria.latency_tolerance:.0%}"
    if value > limit:
        return (
            _Result.FAILS,
            f"{what} {value:.4g} is above the pre-deploy baseline {tolerance} = {limit:.4g}",
        )
    return _Result.PROVES, f"{what} {value:.4g} <= {limit:.4g} (pre-deploy baseline {tolerance})"


def _critical(rule: Rule, measurement: Measurement) -> tuple[_Result, str]:
    value = measurement.value
    if value is None:
        return _Result.NO_DATA, f"critical rule {rule.name}: no data ({measurement.reason})"
    if rule.condition.holds(value, rule.condition.amount):
        return _Result.FAILS, f"critical rule {rule.name} holds: {value:.6g} {rule.condition.text}"
    return (
        _Result.PASSES,
        f"critical rule {rule.name} does not hold: {value:.6g}, not {rule.condition.text}",
    )


def advance(
    state: WatchState, check: Check, criteria: Criteria
) -> tuple[WatchState, Verdict | None]:
    """Fold one check into the watch; a verdict once recovered or out of time."""
    failed = bool(check.failures)
    held_since = (state.held_since or check.time) if check.held else None
    starts_holding = check.held and state.held_since is None
    previous_failed = state.previous is not None and bool(state.previous.failures)
    new = WatchState(
        started=state.started,
        held_since=held_since,
        checks=state.checks + 1,
        last_failures=check.failures,
        failing=failed or (state.failing and not check.held),
        held_after_failure=(
            previous_failed if starts_holding else state.held_after_failure and check.held
        ),
        last_failed=check if failed else state.last_failed,
        last_unproven=check if not failed and not check.held else state.last_unproven,
        previous=check,
    )
    if held_since is not None and check.time - held_since >= criteria.window:
        return new, Verdict(
            True,
            f"recovered: every criterion with data held for "
            f"{format_duration(check.time - held_since)} (window "
            f"{format_duration(criteria.window)}, {new.checks} checks): {check.criteria}",
            new.checks,
        )
    if check.time - state.started >= criteria.timeout:
        return new, _timed_out(new, check, criteria)
    return new, None


def _timed_out(state: WatchState, check: Check, criteria: Criteria) -> Verdict:
    """The verdict at the timeout: not recovered if the service measurably failed, else unknown."""
    elapsed = format_duration(check.time - state.started)
    if check.failures:
        return Verdict(False, f"not recovered after {elapsed}: {check.criteria}", state.checks)
    failed = state.last_failed
    if check.held:
        held_for = format_duration(check.time - (state.held_since or check.time))
        held = f"the criteria held only for {held_for} (window {format_duration(criteria.window)})"
        if state.held_after_failure and failed is not None:
            return Verdict(
                False,
                f"not recovered after {elapsed}: {held}; before that, at "
                f"{format_instant(failed.time)}: {failed.criteria}",
                state.checks,
            )
        before = state.last_unproven or check
        unproven = _unproven(before, past=True)
        return Verdict(
            False,
            f"recovery unknown after {elapsed}: {held}; before that {unproven}: {before.criteria}",
            state.checks,
            unknown=True,
        )
    if state.failing and failed is not None:
        return Verdict(
            False,
            f"not recovered after {elapsed}: at {format_instant(failed.time)}: "
            f"{'; '.join(failed.failures)}; since then nothing proved health: {check.criteria}",
            state.checks,
        )
    return Verdict(
        False,
        f"recovery unknown after {elapsed}: no criterion fails, but {_unproven(check)}: "
        f"{check.criteria}",
        state.checks,
        unknown=True,
    )


def _unproven(check: Check, *, past: bool = False) -> str:
    """Why ``check`` neither failed nor held, in a few words."""
    if check.proven:  # only an alert that could not be read held it back
        return "the alerts that triggered the rollback could not be seen resolved"
    return "nothing proved health" if past else "nothing proves health"


def watched(rule: Rule) -> bool:
    return (
        rule.trigger in ERROR_TRIGGERS
        or rule.trigger in LATENCY_TRIGGERS
        or rule_trigger_severity(rule) is Severity.CRITICAL
    )
