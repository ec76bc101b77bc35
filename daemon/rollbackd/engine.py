"""One evaluation cycle: measurements → rules → matrix → policy → proposed actions.

:class:`Engine` holds what persists between cycles (rule states, deploy
history, open incidents) and turns one cycle's measurements into findings and
*new* decisions; it does no I/O and is driven by :class:`LiveCycle` (instant
queries and probes now, for ``run`` and ``evaluate``) or by
:mod:`rollbackd.replay` (Prometheus history, for ``backtest``).

A service with firing findings gets one decision when its incident opens, and
another only if the severity rises; the incident closes when every finding of
the service is OK again (inconclusive keeps it open). So a firing rule does not
ask for a rollback at every cycle.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property

from rollbackd.config import Config
from rollbackd.deploys import Deploy, DeployHistory
from rollbackd.model import (
    Decision,
    Finding,
    FindingState,
    Measurement,
    RuleState,
    Severity,
    Vector,
)
from rollbackd.policy import ServiceFacts, decide
from rollbackd.rules import Cycle, Key, Rule, applies_to, evaluate_cycle
from rollbackd.sources import MetricSource
from rollbackd.sources.deploys import git_head
from rollbackd.sources.probes import Prober, ProbeResult
from rollbackd.sources.prometheus import QueryError


@dataclass(frozen=True)
class Resolution:
    """An incident that ended because every finding of its service is OK again."""

    service: str
    time: datetime
    opened: datetime
    reason: str


@dataclass(frozen=True)
class CycleReport:
    """What one cycle found and decided, and what it could not see.

    ``notable`` holds every finding but the quiet OK ones (alert findings
    included); ``quiet`` counts those by rule. ``findings`` lists them all,
    built on demand: at thousands of services that is most of a cycle's cost.
    """

    time: datetime
    notable: tuple[Finding, ...]
    decisions: tuple[Decision, ...]
    resolutions: tuple[Resolution, ...] = ()
    source_errors: Mapping[str, str] = field(default_factory=dict)
    quiet: Mapping[str, int] = field(default_factory=dict)
    cycle: Cycle | None = field(default=None, repr=False, compare=False)

    @cached_property
    def findings(self) -> tuple[Finding, ...]:
        """Every finding of the cycle, quiet OK ones included; then the alerts' findings."""
        if self.cycle is None:
            return self.notable
        alerts = self.notable[len(self.cycle.notable) :]
        return (*self.cycle.findings, *alerts)


@dataclass(frozen=True)
class Inputs:
    """One cycle's measurements by (rule, service), and the errors behind missing ones.

    ``vectors`` holds a PromQL rule's whole answer by rule name (what the
    live cycle has); ``measurements`` one value per (rule, service).
    """

    measurements: dict[Key, Measurement] = field(default_factory=dict)
    baselines: dict[Key, Measurement] = field(default_factory=dict)
    impacts: dict[Key, Measurement] = field(default_factory=dict)
    source_errors: dict[str, str] = field(default_factory=dict)
    alerts: list[Finding] = field(default_factory=list)
    vectors: dict[str, Vector] = field(default_factory=dict)


@dataclass
class _Incident:
    opened: datetime
    decision: Decision


class Engine:
    """The decision loop's memory and its pure step."""

    def __init__(self, config: Config, rules: Iterable[Rule], history: DeployHistory) -> None:
        self.config = config
        self.rules = tuple(rules)
        self.history = history
        self.states: dict[Key, RuleState] = {}
        self.rollbacks: dict[str, list[datetime]] = {}
        self._incidents: dict[str, _Incident] = {}
        self._services = {s.name: s.probe_names for s in config.services}
        # How many rules apply to each service.
        self._evaluated = {
            name: sum(1 for r in self.rules if applies_to(r, probes))
            for name, probes in self._services.items()
        }
        self._policy = config.policy.table()
        self._guards = config.guards_for_policy()

    @property
    def services(self) -> Mapping[str, list[str]]:
        return self._services

    def step(self, now: datetime, inputs: Inputs) -> CycleReport:
        """Evaluate every rule at ``now`` and decide for each service whose incident is new."""
        cycle = evaluate_cycle(
            self.rules,
            self._services,
            inputs.measurements,
            inputs.baselines,
            inputs.impacts,
            self.states,
            now,
            inputs.vectors,
        )
        self.states = cycle.states
        notable = (*cycle.notable, *inputs.alerts)
        decisions: list[Decision] = []
        resolutions: list[Resolution] = []
        by_service: dict[str, list[Finding]] = {}
        for finding in notable:
            by_service.setdefault(finding.service, []).append(finding)
        quiet: list[str] = []
        for service, evaluated in self._evaluated.items():
            # A service without notable findings has every rule quiet and OK (if any applies).
            own = by_service.get(service, [])
            incident = self._incidents.get(service)
            firing = [f for f in own if f.firing]
            if not own:
                if evaluated > 0:
                    quiet.append(service)
            else:
                conclusive = len(own) < evaluated or any(
                    f.state is not FindingState.INCONCLUSIVE for f in own
                )
                started = min((f.started or f.since or now for f in firing), default=None)
                self.history.note_evaluation(service, now, conclusive, started)
            if not firing:
                all_ok = (own or evaluated > 0) and all(f.state is FindingState.OK for f in own)
                if incident is not None and all_ok:
                    del self._incidents[service]
                    resolutions.append(
                        Resolution(service, now, incident.opened, "every rule is OK again")
                    )
                continue
            severity = Severity.highest([f.severity for f in firing])
            if incident is not None and severity.rank <= incident.decision.severity.rank:
                continue
            decision = decide(service, firing, self.facts(service), now, self._policy, self._guards)
            if decision is None:
                continue
            self._incidents[service] = _Incident(incident.opened if incident else now, decision)
            decisions.append(decision)
        self.history.note_conclusive(quiet, now)
        return CycleReport(
            time=now,
            notable=notable,
            decisions=tuple(decisions),
            resolutions=tuple(resolutions),
            source_errors=dict(inputs.source_errors),
            quiet=cycle.quiet,
            cycle=cycle,
        )

    def rule_count(self, service: str) -> int:
        """How many rules apply to ``service`` (0 for a service that is not configured)."""
        return self._evaluated.get(service, 0)

    def restore(self, service: str, opened: datetime, decision: Decision) -> None:
        """Remember an incident from before a restart, so it is not decided again."""
        if service in self._services:
            self._incidents[service] = _Incident(opened, decision)

    def open_incidents(self) -> dict[str, tuple[datetime, Decision]]:
        return {s: (i.opened, i.decision) for s, i in self._incidents.items()}

    def open_decisions(self) -> list[Decision]:
        """The latest decision of every incident still open, by service."""
        return [self._incidents[s].decision for s in sorted(self._incidents)]

    def record_rollback(self, service: str, at: datetime) -> None:
        """A rollback of ``service`` happened at ``at`` (for the cooldown and the limit)."""
        self.rollbacks.setdefault(service, []).append(at)

    def facts(self, service: str) -> ServiceFacts:
        """What the guards need about a service, from the deploy history."""
        current = self.history.current(service)
        last_good, _ = self.history.last_good(service)
        return ServiceFacts(
            current_version=current.version if current else None,
            deployed_at=current.time if current else None,
            last_good_version=last_good,
            rollbacks=tuple(self.rollbacks.get(service, ())),
        )


def version_query(config: Config) -> str | None:
    """The PromQL that lists running versions by service, if a version metric is set."""
    metric = config.deploys.version_metric
    if metric is None:
        return None
    return f"max by ({config.alerts.service_label}, {config.deploys.version_label}) ({metric})"


BASELINE_EDGE = timedelta(seconds=1)
"""Baselines end this long before the deploy, so no sample of the new version counts."""


def baseline_query(rule: Rule) -> str:
    """The rule's query averaged over its baseline window, as one PromQL subquery."""
    assert rule.query is not None  # noqa: S101 -- relative rules are PromQL rules (Rule validates)
    window = rule.baseline_window
    resolution = max(window / 60, timedelta(seconds=1))
    return (
        f"avg_over_time(({rule.query})[{int(window.total_seconds())}s:"
        f"{int(resolution.total_seconds())}s])"
    )


class BaselineCache:
    """Baselines per (rule, deploy time): computed once, since history does not change."""

    def __init__(self, source: MetricSource) -> None:
        self._source = source
        self._cache: dict[tuple[str, datetime], Vector] = {}
        self._measurements: dict[tuple[str, str, datetime], Measurement] = {}

    def get(self, rule: Rule, deploy: Deploy) -> Measurement:
        known = self._measurements.get((rule.name, deploy.service, deploy.time))
        if known is not None:
            return known
        key = (rule.name, deploy.time)
        vector = self._cache.get(key)
        if vector is None:
            vector = self._source.instant(baseline_query(rule), deploy.time - BASELINE_EDGE)
            if vector.error is None:
                self._cache[key] = vector
        measurement = vector.get(deploy.service)
        if measurement.is_missing:
            measurement = Measurement.missing(
                f"no value in the {rule.baseline_window} before the deploy of "
                f"{deploy.version}: {measurement.reason}"
            )
        if vector.error is None:
            self._measurements[(rule.name, deploy.service, deploy.time)] = measurement
        return measurement

    def current(
        self, rules: Iterable[Rule], services: Iterable[str], history: DeployHistory
    ) -> tuple[dict[Key, Measurement], bool]:
        """Each relative rule's baseline for each service's current deploy; and whether
        every one was read (a value, or a clear 'none'), none lost to a source error."""
        baselines: dict[Key, Measurement] = {}
        settled = True
        for rule in rules:
            if not rule.relative:
                continue
            for service in services:
                deploy = history.current(service)
                if deploy is not None:
                    baselines[(rule.name, service)] = self.get(rule, deploy)
                    settled = settled and (rule.name, service, deploy.time) in self._measurements
        return baselines, settled


class LiveCycle:
    """Gathers one cycle's inputs now: one instant query per rule, and the probes."""

    def __init__(self, engine: Engine, prometheus: MetricSource, prober: Prober | None) -> None:
        self.engine = engine
        self.prometheus = prometheus
        self.prober = prober
        self.baselines = BaselineCache(prometheus)
        self._settled: tuple[int, dict[Key, Measurement]] | None = None

    def observe_deploys(self, now: datetime) -> str | None:
        """Note the versions running now (version metric, else git HEAD); why not, if unknown."""
        config = self.engine.config
        history = self.engine.history
        seen: set[str] = set()
        problem = None
        query = version_query(config)
        if query is not None:
            step = config.daemon.poll_interval
            try:
                running = self.prometheus.labels_over_time(
                    query, config.deploys.version_label, now, now, step
                )
            except QueryError as exc:
                running, problem = {}, f"cannot read {config.deploys.version_metric}: {exc}"
            for service, versions in running.items():
                if service in self.engine.services:
                    history.observe_versions(service, versions, now)
                    seen.add(service)
        for configured in config.services:
            if configured.name in seen or configured.executor != "git" or configured.repo is None:
                continue
            sha = git_head(configured.repo)
            if sha is not None:
                history.observe_versions(configured.name, [sha[:12]], now, "git", {sha[:12]: sha})
        return problem

    def _baselines(self) -> dict[Key, Measurement]:
        """Each relative rule's baseline for each service's current deploy.

        Kept from cycle to cycle until a deploy changes, once every one of them
        could be read (a failed read is tried again next cycle).
        """
        revision = self.engine.history.revision
        if self._settled is not None and self._settled[0] == revision:
            return self._settled[1]
        baselines, settled = self.baselines.current(
            self.engine.rules, self.engine.services, self.engine.history
        )
        if settled:
            self._settled = (revision, baselines)
        return baselines

    def baselines_of(self, service: str) -> dict[str, float]:
        """Every relative rule's pre-deploy value for ``service``'s current deploy, by rule.

        The good version's values before the deploy a rollback undoes: what its
        recovery watch compares with, whichever rules happen to fire.
        """
        return {
            rule: measurement.value
            for (rule, name), measurement in self._baselines().items()
            if name == service and measurement.value is not None
        }

    def gather(self, now: datetime) -> Inputs:
        inputs = Inputs()
        deploy_problem = self.observe_deploys(now)
        if deploy_problem is not None:
            inputs.source_errors["deploys"] = deploy_problem
        services = self.engine.services
        probe_names = {r.probe for r in self.engine.rules if r.probe is not None}
        results: dict[tuple[str, str], ProbeResult] = {}
        if self.prober is not None and probe_names:
            for result in self.prober.probe_all(self.engine.config.services, probe_names):
                results[(result.service, result.probe)] = result
        inputs.baselines.update(self._baselines())
        for rule in self.engine.rules:
            if rule.probe is not None:
                for service, probes in services.items():
                    if not applies_to(rule, probes):
                        continue
                    found = results.get((service, rule.probe))
                    inputs.measurements[(rule.name, service)] = (
                        Measurement(found.value, found.reason)
                        if found is not None
                        else Measurement.missing("the probe was not run")
                    )
                continue
            assert rule.query is not None  # noqa: S101 -- a rule has a query or a probe
            vector = self.prometheus.instant(rule.query, now)
            if vector.error is not None:
                inputs.source_errors[rule.name] = vector.error
            inputs.vectors[rule.name] = vector
            if rule.impact_query is not None:
                impact = self.prometheus.instant(rule.impact_query, now)
                for service, number in impact.numbers.items():
                    if service in services:
                        inputs.impacts[(rule.name, service)] = Measurement(number)
        return inputs
