"""The recovery watch, live: proof, over a window, that a rollback worked.

:class:`RecoveryWatcher` looks every poll interval, with a clock and a sleep
passed in, until :mod:`rollbackd.core.recovery` gives a verdict;
:class:`LiveObserver` gathers one look (instant queries of the watched rules,
the service's probes, the alerts that triggered the rollback).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta

from rollbackd.actions import Interrupted
from rollbackd.config import ProbeConfig, ServiceConfig
from rollbackd.core.recovery import (
    Check,
    Criteria,
    FiringAlerts,
    ProbeOutcome,
    Verdict,
    WatchState,
    advance,
    judge,
    watched,
)
from rollbackd.core.rules import Rule
from rollbackd.sources import MetricSource, guarded_instant
from rollbackd.sources.probes import Prober, probes_of

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
    """Gathers one check for a service: instant queries of the relevant rules, probes, alerts.

    ``alerts`` are the finding names (``alert:NAME``) of the alerts that
    triggered the rollback; ``firing(now)`` gives the service's alerts firing
    at ``now``, by finding name, with the time each started, and why one may fire unseen.
    """

    def __init__(
        self,
        service: str,
        rules: Iterable[Rule],
        probes: Mapping[str, Callable[[], ProbeOutcome]],
        metrics: MetricSource,
        baselines: Mapping[str, float],
        criteria: Criteria,
        alerts: Sequence[str] = (),
        firing: Callable[[datetime], FiringAlerts] = lambda _now: FiringAlerts(),
    ) -> None:
        self.service = service
        self.rules = [r for r in rules if r.query is not None and watched(r)]
        self.probes = probes
        self.metrics = metrics
        self.baselines = baselines
        self.criteria = criteria
        self.alerts = tuple(alerts)
        self.firing = firing

    def __call__(self, now: datetime) -> Check:
        values = {}
        for rule in self.rules:
            assert rule.query is not None  # noqa: S101 -- filtered in __init__
            values[rule.name] = guarded_instant(self.metrics, rule.query, now).get(self.service)
        probes = {name: run() for name, run in self.probes.items()}
        firing = self.firing(now) if self.alerts else FiringAlerts()
        alerts: dict[str, datetime | str | None] = {
            name: firing.since.get(name, firing.unseen) for name in self.alerts
        }
        return judge(self.rules, values, probes, self.baselines, self.criteria, now, alerts)


def probe_runners(prober: Prober, service: ServiceConfig) -> dict[str, Callable[[], ProbeOutcome]]:
    """One callable per probe of a service, for :class:`LiveObserver`."""

    def runner(probe: ProbeConfig) -> Callable[[], ProbeOutcome]:
        def run() -> ProbeOutcome:
            result = prober.probe(service.name, probe)
            return ProbeOutcome(result.passed, result.reason, result.measured)

        return run

    return {probe.name: runner(probe) for probe in probes_of(service)}
