"""The recovery watch: proof, over a window, that a rollback worked.

The playbook's success criteria, checked at every poll after a rollback:
the error rate below ``max_error_rate`` (1 %), latency back within the
pre-deploy baseline (plus ``latency_tolerance``), every health and smoke
probe of the service passing, and no critical rule holding. They must all
hold, at every check, for ``window`` (15m). Missing data proves nothing: a
criterion without data does not hold. If they have not held for a whole
window by ``timeout``, the rollback did not recover: the incident escalates
and is never rolled back again automatically.

:func:`judge` and :func:`advance` are pure; :class:`RecoveryWatcher` drives
them with live queries and probes, a clock and a sleep passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from rollbackd.actions import Interrupted
from rollbackd.config import ProbeConfig, ServiceConfig
from rollbackd.durations import format_duration
from rollbackd.model import Measurement, Severity, Trigger
from rollbackd.rules import Rule, rule_trigger_severity
from rollbackd.sources import MetricSource
from rollbackd.sources.probes import Prober, probes_of

ERROR_TRIGGERS = {Trigger.HIGH_ERROR_RATE}
LATENCY_TRIGGERS = {Trigger.PERFORMANCE_DEGRADATION}


@dataclass(frozen=True)
class Criteria:
    """The success criteria's settings (``[recovery]``)."""

    window: timedelta = timedelta(minutes=15)
    timeout: timedelta = timedelta(minutes=30)
    max_error_rate: float = 0.01
    latency_tolerance: float = 0.2


@dataclass(frozen=True)
class ProbeOutcome:
    """A probe's verdict, as the watch needs it."""

    passed: bool
    reason: str


@dataclass(frozen=True)
class Check:
    """One look at the criteria: did they all hold, and if not, why not."""

    time: datetime
    held: bool
    failures: tuple[str, ...]
    passes: tuple[str, ...] = ()
    values: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """The end of a watch: recovered or not, and the sentence that says why."""

    recovered: bool
    reason: str
    checks: int


@dataclass(frozen=True)
class WatchState:
    """What the watch remembers between checks."""

    started: datetime
    held_since: datetime | None = None
    checks: int = 0
    last_failures: tuple[str, ...] = ()


def judge(
    rules: Iterable[Rule],
    values: Mapping[str, Measurement],
    probes: Mapping[str, ProbeOutcome],
    baselines: Mapping[str, float],
    criteria: Criteria,
    now: datetime,
) -> Check:
    """Check every criterion once; ``values`` and ``baselines`` are by rule name."""
    failures: list[str] = []
    passes: list[str] = []
    samples: dict[str, float] = {}
    for rule in rules:
        measurement = values.get(rule.name, Measurement.missing("not measured"))
        if measurement.value is not None:
            samples[rule.name] = measurement.value
        if rule.trigger in ERROR_TRIGGERS:
            _error_rate(rule, measurement, criteria, failures, passes)
        elif rule.trigger in LATENCY_TRIGGERS:
            _latency(rule, measurement, baselines.get(rule.name), criteria, failures, passes)
        critical = rule_trigger_severity(rule) is Severity.CRITICAL and not rule.relative
        value = measurement.value
        if critical and value is not None and rule.condition.holds(value, rule.condition.amount):
            failures.append(f"critical rule {rule.name} holds: {value:.6g} {rule.condition.text}")
    for name, outcome in sorted(probes.items()):
        samples[f"probe:{name}"] = 1.0 if outcome.passed else 0.0
        if outcome.passed:
            passes.append(f"probe {name} passes")
        else:
            failures.append(f"probe {name} fails: {outcome.reason}")
    if not passes and not failures:
        failures.append("nothing proves recovery: no error-rate, latency or probe data")
    return Check(now, not failures, tuple(failures), tuple(passes), samples)


def _error_rate(
    rule: Rule,
    measurement: Measurement,
    criteria: Criteria,
    failures: list[str],
    passes: list[str],
) -> None:
    if measurement.value is None:
        failures.append(f"error rate ({rule.name}) has no data: {measurement.reason}")
    elif measurement.value >= criteria.max_error_rate:
        failures.append(
            f"error rate ({rule.name}) {measurement.value:.4g} is not below "
            f"{criteria.max_error_rate:.4g}"
        )
    else:
        passes.append(f"error rate {measurement.value:.4g} < {criteria.max_error_rate:.4g}")


def _latency(
    rule: Rule,
    measurement: Measurement,
    baseline: float | None,
    criteria: Criteria,
    failures: list[str],
    passes: list[str],
) -> None:
    if measurement.value is None:
        failures.append(f"latency ({rule.name}) has no data: {measurement.reason}")
        return
    if baseline is None:
        failures.append(f"latency ({rule.name}) cannot be compared: no pre-deploy baseline")
        return
    limit = baseline * (1 + criteria.latency_tolerance)
    if measurement.value > limit:
        failures.append(
            f"latency ({rule.name}) {measurement.value:.4g} is above the pre-deploy baseline "
            f"{baseline:.4g} (+{criteria.latency_tolerance:.0%})"
        )
    else:
        passes.append(f"latency {measurement.value:.4g} within baseline {baseline:.4g}")


def advance(
    state: WatchState, check: Check, criteria: Criteria
) -> tuple[WatchState, Verdict | None]:
    """Fold one check into the watch; a verdict once recovered or out of time."""
    held_since = (state.held_since or check.time) if check.held else None
    new = WatchState(state.started, held_since, state.checks + 1, check.failures)
    if held_since is not None and check.time - held_since >= criteria.window:
        return new, Verdict(
            True,
            f"recovered: every criterion held for {format_duration(check.time - held_since)} "
            f"(window {format_duration(criteria.window)}, {new.checks} checks)",
            new.checks,
        )
    if check.time - state.started >= criteria.timeout:
        why = "; ".join(check.failures) or (
            f"the criteria held only for {format_duration(check.time - (held_since or check.time))}"
        )
        return new, Verdict(
            False,
            f"not recovered after {format_duration(check.time - state.started)}: {why}",
            new.checks,
        )
    return new, None


Observe = Callable[[datetime], Check]


class RecoveryWatcher:
    """Runs checks every ``interval`` until a verdict; the clock and sleep are passed in."""

    def __init__(
        self,
        criteria: Criteria,
        interval: timedelta,
        clock: Callable[[], datetime],
        sleep: Callable[[float], object],
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.criteria = criteria
        self.interval = interval
        self.clock = clock
        self.sleep = sleep
        self.should_stop = should_stop

    def watch(self, observe: Observe, on_check: Callable[[Check], None]) -> Verdict:
        state = WatchState(self.clock())
        while True:
            check = observe(self.clock())
            on_check(check)
            state, verdict = advance(state, check, self.criteria)
            if verdict is not None:
                return verdict
            self.sleep(self.interval.total_seconds())
            if self.should_stop():
                raise Interrupted


class LiveObserver:
    """Gathers one check for a service: instant queries of the relevant rules, and probes."""

    def __init__(
        self,
        service: str,
        rules: Iterable[Rule],
        probes: Mapping[str, Callable[[], ProbeOutcome]],
        metrics: MetricSource,
        baselines: Mapping[str, float],
        criteria: Criteria,
    ) -> None:
        self.service = service
        self.rules = [r for r in rules if r.query is not None and _watched(r)]
        self.probes = probes
        self.metrics = metrics
        self.baselines = baselines
        self.criteria = criteria

    def __call__(self, now: datetime) -> Check:
        values = {}
        for rule in self.rules:
            assert rule.query is not None  # noqa: S101 -- filtered in __init__
            values[rule.name] = self.metrics.instant(rule.query, now).get(self.service)
        probes = {name: run() for name, run in self.probes.items()}
        return judge(self.rules, values, probes, self.baselines, self.criteria, now)


def _watched(rule: Rule) -> bool:
    return (
        rule.trigger in ERROR_TRIGGERS
        or rule.trigger in LATENCY_TRIGGERS
        or rule_trigger_severity(rule) is Severity.CRITICAL
    )


def probe_runners(prober: Prober, service: ServiceConfig) -> dict[str, Callable[[], ProbeOutcome]]:
    """One callable per probe of a service, for :class:`LiveObserver`."""

    def runner(probe: ProbeConfig) -> Callable[[], ProbeOutcome]:
        def run() -> ProbeOutcome:
            result = prober.probe(service.name, probe)
            return ProbeOutcome(result.passed, result.reason)

        return run

    return {probe.name: runner(probe) for probe in probes_of(service)}
