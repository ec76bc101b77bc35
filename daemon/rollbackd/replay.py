"""Replaying the engine over Prometheus history, for ``backtest`` and ``evaluate``.

The same :class:`~rollbackd.engine.Engine` that runs live is stepped through
time: each PromQL rule is fetched with range queries (chunked below
Prometheus' 11,000-points limit), deploys are found in the version metric's
history, and baselines are the queries' averages before each deploy. Probe
rules have no history: in a replay they are inconclusive, and ``evaluate``
runs them live at its last step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from rollbackd.config import Config
from rollbackd.deploys import Deploy, DeployHistory, deploys_from_presence
from rollbackd.engine import BaselineCache, CycleReport, Engine, Inputs, version_query
from rollbackd.model import Measurement
from rollbackd.rules import Rule
from rollbackd.sources import MetricSource
from rollbackd.sources.deploys import git_deploys
from rollbackd.sources.prometheus import Matrix, QueryError

DEPLOY_LOOKBACK = timedelta(hours=24)
"""How far before a replay's start deploys are looked for, to date the running version."""


def step_times(start: datetime, end: datetime, step: timedelta) -> list[datetime]:
    """The evaluation instants of a replay: start, start + step, ... up to end."""
    times = []
    moment = start
    while moment <= end:
        times.append(moment)
        moment += step
    return times


def align(moment: datetime, step: timedelta) -> datetime:
    """``moment`` rounded down to a multiple of ``step`` since the epoch (whole milliseconds).

    Prometheus answers range queries at start + k·step in milliseconds; aligned
    instants make its samples and the replay's steps the same times.
    """
    step_ms = max(round(step.total_seconds() * 1000), 1)
    moment_ms = int(moment.timestamp() * 1000)
    return datetime.fromtimestamp((moment_ms - moment_ms % step_ms) / 1000, tz=UTC)


@dataclass(frozen=True)
class _Series:
    by_time: dict[int, float]
    error: str | None
    ambiguous: str | None


def _index(matrix: Matrix, service: str) -> _Series:
    points = matrix.series.get(service, [])
    return _Series(
        {round(t.timestamp() * 1000): v for t, v in points},
        matrix.error,
        matrix.ambiguous.get(service),
    )


@dataclass(frozen=True)
class FoundDeploys:
    """Deploys found in history, the versions running at the end, and any problem."""

    deploys: list[Deploy]
    present_at_end: dict[str, set[str]]
    error: str | None


def find_deploys(
    config: Config, prometheus: MetricSource, start: datetime, end: datetime, step: timedelta
) -> FoundDeploys:
    """Deploys in [start - DEPLOY_LOOKBACK, end]: the version metric, else git reflogs."""
    deploys: list[Deploy] = []
    present: dict[str, set[str]] = {}
    error = None
    query = version_query(config)
    if query is None:
        error = "no [deploys] version_metric is configured"
    else:
        label = config.deploys.version_label
        try:
            presence = prometheus.labels_over_time(query, label, start - DEPLOY_LOOKBACK, end, step)
        except QueryError as exc:
            presence = {}
            error = f"cannot read deploys from {config.deploys.version_metric}: {exc}"
        for service, versions in presence.items():
            deploys.extend(deploys_from_presence(service, versions, step))
            present[service] = {
                v for v, times in versions.items() if times and end - max(times) <= 2 * step
            }
    for configured in config.services:
        if configured.name in present or configured.executor != "git" or configured.repo is None:
            continue
        deploys.extend(git_deploys(configured.name, configured.repo))
    deploys.sort(key=lambda d: d.time)
    return FoundDeploys(deploys, present, error if not deploys else None)


class Replay:
    """Steps an engine through [start, end] on Prometheus history."""

    def __init__(
        self,
        config: Config,
        rules: tuple[Rule, ...],
        prometheus: MetricSource,
        step: timedelta,
        history: DeployHistory | None = None,
        simulate_rollbacks: bool = True,
    ) -> None:
        self.config = config
        self.prometheus = prometheus
        self.step = step
        self.history = history or DeployHistory(config.deploys.known_good_after)
        self.engine = Engine(config, rules, self.history)
        self.baselines = BaselineCache(prometheus)
        self.deploy_error: str | None = None
        self.simulate_rollbacks = simulate_rollbacks

    def run(
        self,
        start: datetime,
        end: datetime,
        progress: Callable[[int, int], None] | None = None,
    ) -> Iterator[CycleReport]:
        """Yield one report per step, in time order; steps fall on multiples of the step."""
        start, end = align(start, self.step), align(end, self.step)
        found = find_deploys(self.config, self.prometheus, start, end, self.step)
        deploys, self.deploy_error = found.deploys, found.error
        rules = self.engine.rules
        services = list(self.engine.services)
        values: dict[str, dict[str, _Series]] = {}
        impacts: dict[str, dict[str, _Series]] = {}
        for rule in rules:
            if rule.query is None:
                continue
            matrix = self.prometheus.range(rule.query, start, end, self.step)
            values[rule.name] = {s: _index(matrix, s) for s in services}
            if rule.impact_query is not None:
                impact = self.prometheus.range(rule.impact_query, start, end, self.step)
                impacts[rule.name] = {s: _index(impact, s) for s in services}
        pending = list(deploys)
        times = step_times(start, end, self.step)
        for done, moment in enumerate(times, 1):
            while pending and pending[0].time <= moment:
                deploy = pending.pop(0)
                if deploy.service in self.engine.services:
                    self.history.record(deploy)
            inputs = self._inputs(moment, values, impacts)
            report = self.engine.step(moment, inputs)
            for decision in report.decisions if self.simulate_rollbacks else ():
                if decision.action.value == "rollback":
                    self.engine.record_rollback(decision.service, moment)
            if progress is not None:
                progress(done, len(times))
            if done == len(times):
                for service, versions in found.present_at_end.items():
                    self.history.set_present(service, versions)
            yield report

    def _inputs(
        self,
        moment: datetime,
        values: dict[str, dict[str, _Series]],
        impacts: dict[str, dict[str, _Series]],
    ) -> Inputs:
        inputs = Inputs()
        key_ms = round(moment.timestamp() * 1000)
        for rule in self.engine.rules:
            for service in self.engine.services:
                key = (rule.name, service)
                if rule.query is None:
                    inputs.measurements[key] = Measurement.missing(
                        f"probe {rule.probe!r} has no history; probes are checked live only"
                    )
                    continue
                series = values[rule.name][service]
                inputs.measurements[key] = _at(series, key_ms)
                if series.error is not None:
                    inputs.source_errors[rule.name] = series.error
                if rule.relative:
                    deploy = self.history.current(service)
                    if deploy is not None:
                        inputs.baselines[key] = self.baselines.get(rule, deploy)
                if rule.name in impacts:
                    impact = _at(impacts[rule.name][service], key_ms)
                    if not impact.is_missing:
                        inputs.impacts[key] = impact
        return inputs


def _at(series: _Series, key_ms: int) -> Measurement:
    if series.error is not None:
        return Measurement.missing(series.error)
    if series.ambiguous is not None:
        return Measurement.missing(series.ambiguous)
    value = series.by_time.get(key_ms)
    if value is None:
        return Measurement.missing("no series for this service at this time")
    return Measurement.of(value)
