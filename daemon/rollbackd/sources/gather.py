"""Live measurement: what one cycle reads from Prometheus, probes and git, and how.

:class:`LiveCycle` turns the engine's rules into reads (each rule's query, its
impact query, the version metric, git HEADs, probes and the baselines before a
deploy), runs them on reading threads within a budget and without the state
lock, and hands the engine plain values (:class:`~rollbackd.core.engine.Inputs`):
what was not read in time is missing data for that rule, with the reason.
:class:`BaselineCache` reads a rule's value before a deploy once per deploy.
The engine itself (rollbackd.core.engine) does no I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from rollbackd.config import Config
from rollbackd.core.canary import Forms, SideBySide, Split, forms_of, instances_query, split_of
from rollbackd.core.deploys import Deploy, DeployHistory
from rollbackd.core.durations import format_duration
from rollbackd.core.engine import Engine, Inputs
from rollbackd.core.model import (
    Measurement,
    Vector,
)
from rollbackd.core.promql_split import Labels
from rollbackd.core.rules import Key, Rule, applies_to
from rollbackd.core.seasonal import SLACK, SLACK_RESOLUTION, PastDay, seasonal_baseline
from rollbackd.journal import AlertRecord
from rollbackd.sources import MetricSource, guarded_instant
from rollbackd.sources.alertmanager import (
    ActiveAlerts,
    AlertmanagerError,
    AlertmanagerSource,
    merge,
)
from rollbackd.sources.alerts import alert_findings
from rollbackd.sources.deploys import git_head
from rollbackd.sources.probes import Prober, probes_of
from rollbackd.sources.prometheus import QueryError
from rollbackd.text import one_line


def version_query(config: Config) -> str | None:
    """The PromQL that lists running versions by service, if a version metric is set."""
    metric = config.deploys.version_metric
    if metric is None:
        return None
    return f"max by ({config.alerts.service_label}, {config.deploys.version_label}) ({metric})"


def split_labels(config: Config) -> Labels | None:
    """The labels side-by-side judgement joins on (None: no version metric, no judgement)."""
    metric = config.deploys.version_metric
    if metric is None:
        return None
    deploys = config.deploys
    service = config.alerts.service_label
    return Labels(service, deploys.version_label, deploys.instance_label, metric)


def side_by_side_forms(
    config: Config, rules: tuple[Rule, ...]
) -> tuple[dict[str, Forms], dict[str, str]]:
    """The rules' per-version forms, and why the others cannot be judged side by side."""
    labels = split_labels(config)
    if labels is None:
        return {}, {}
    return forms_of(rules, labels)


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


def around_query(rule: Rule) -> str:
    """The rule's largest value (smallest, for a rule that fires on a fall) within
    :data:`~rollbackd.core.seasonal.SLACK` before the time it is evaluated at.

    Evaluated at ``now - offset + SLACK``, it is the value around now's time of day,
    ``offset`` ago: one query per seasonal rule and offset serves every service.
    """
    assert rule.query is not None  # noqa: S101 -- relative rules are PromQL rules (Rule validates)
    function = "max_over_time" if rule.fires_on_rise else "min_over_time"
    return (
        f"{function}(({rule.query})[{int((2 * SLACK).total_seconds())}s:"
        f"{int(SLACK_RESOLUTION.total_seconds())}s])"
    )


Arounds = Mapping[tuple[str, timedelta], Vector]
"""By (seasonal rule name, offset): the rule's values around now's time of day, offset ago."""

Failed = dict[tuple[str, datetime, timedelta], Vector]
"""Baseline reads that failed, by (rule name, deploy time, offset; 0 for the deploy's own):
the deploys made at one time share one answer, so a loop over services reads a failed
one once, not once per service."""


class BaselineCache:
    """Baselines per (rule, deploy time): computed once, since history does not change.

    For a seasonal rule it also keeps, per offset, the rule's pre-deploy window's
    average that many days before the deploy (:meth:`past`).
    """

    def __init__(self, source: MetricSource) -> None:
        self._source = source
        self._cache: dict[tuple[str, datetime], Vector] = {}
        self._measurements: dict[tuple[str, str, datetime], Measurement] = {}
        self._past_vectors: dict[tuple[str, datetime, timedelta], Vector] = {}
        self._past: dict[tuple[str, str, datetime, timedelta], Measurement] = {}

    def past(
        self, rule: Rule, deploy: Deploy, offset: timedelta, failed: Failed | None = None
    ) -> Measurement:
        """The average over the baseline window before the deploy's time, ``offset`` earlier
        (read once per deploy and offset; a failed read is tried again next time, and not
        before: ``failed`` keeps it for the caller's other services)."""
        key = (rule.name, deploy.service, deploy.time, offset)
        known = self._past.get(key)
        if known is not None:
            return known
        shared = (rule.name, deploy.time, offset)
        vector = self._past_vectors.get(shared)
        if vector is None and failed is not None:
            vector = failed.get(shared)
        if vector is None:
            vector = self._read(rule, deploy.time, offset)
            if vector.error is None:
                self._past_vectors[shared] = vector
            elif failed is not None:
                failed[shared] = vector
        measurement = vector.get(deploy.service)
        if vector.error is None:
            self._past[key] = measurement
        return measurement

    def past_day(
        self, rule: Rule, deploy: Deploy, offset: timedelta, around: Vector | None
    ) -> PastDay:
        """One earlier day for the seasonal baseline, from what was read (no I/O)."""
        before = self._past.get((rule.name, deploy.service, deploy.time, offset))
        if around is None:
            now_side = Measurement.missing("not read this cycle")
        else:
            now_side = around.get(deploy.service)
        if before is None:
            return PastDay(offset, Measurement.missing("not read"), now_side, failed=True)
        return PastDay(offset, before, now_side, failed=around is None or around.error is not None)

    def past_known(self, rule: Rule, deploy: Deploy) -> bool:
        """Whether every earlier day's pre-deploy value of a seasonal rule was read for good."""
        return all(
            (rule.name, deploy.service, deploy.time, offset) in self._past
            for offset in rule.seasonality
        )

    def get(self, rule: Rule, deploy: Deploy, failed: Failed | None = None) -> Measurement:
        """The rule's average over its window before the deploy (read once per rule and
        deploy time; a failed read is tried again next time, and not before: ``failed``
        keeps it for the caller's other services)."""
        known = self._measurements.get((rule.name, deploy.service, deploy.time))
        if known is not None:
            return known
        key = (rule.name, deploy.time)
        vector = self._cache.get(key)
        if vector is None and failed is not None:
            vector = failed.get((*key, timedelta(0)))
        if vector is None:
            vector = self._read(rule, deploy.time, timedelta(0))
            if vector.error is None:
                self._cache[key] = vector
            elif failed is not None:
                failed[(*key, timedelta(0))] = vector
        measurement = vector.get(deploy.service)
        if measurement.is_missing:
            measurement = Measurement.missing(
                f"no value in the {rule.baseline_window} before the deploy of "
                f"{deploy.version}: {measurement.reason}"
            )
        elif rule.seasonal:  # what it stays where earlier days are not needed (see seasonal)
            measurement = Measurement(measurement.value, WITHIN_PRE_DEPLOY)
        if vector.error is None:
            self._measurements[(rule.name, deploy.service, deploy.time)] = measurement
        return measurement

    def read(self, rule: Rule, deploys: list[Deploy]) -> None:
        """The baselines of ``deploys``, all made at one time: one answer holds them all."""
        failed: Failed = {}
        for deploy in deploys:
            self.get(rule, deploy, failed)
            for offset in rule.seasonality if rule.seasonal else ():
                self.past(rule, deploy, offset, failed)

    def read_ahead(self, rules: Iterable[Rule], times: Iterable[datetime]) -> Failed:
        """The reads :meth:`get` and :meth:`past` would make for deploys at ``times``, made
        now, for :meth:`seed` (a replay reads them on another thread while it steps through
        history: nothing here changes). By (rule name, deploy time, offset; 0 for the
        deploy's own baseline)."""
        read: Failed = {}
        for rule in rules:
            if not rule.relative:
                continue
            offsets = (timedelta(0), *(rule.seasonality if rule.seasonal else ()))
            for at in times:
                for offset in offsets:
                    read[(rule.name, at, offset)] = self._read(rule, at, offset)
        return read

    def _read(self, rule: Rule, deployed: datetime, offset: timedelta) -> Vector:
        """The rule's average over its window before a deploy at ``deployed``, ``offset``
        earlier (0: the deploy's own baseline), for every service."""
        return guarded_instant(
            self._source, baseline_query(rule), deployed - BASELINE_EDGE - offset
        )

    def seed(self, read: Failed) -> None:
        """Answers :meth:`read_ahead` read: :meth:`get` and :meth:`past` use them instead of
        reading; a failed one is read again there, as any failed read is."""
        for (name, at, offset), vector in read.items():
            if vector.error is not None:
                continue
            if offset:
                self._past_vectors.setdefault((name, at, offset), vector)
            else:
                self._cache.setdefault((name, at), vector)

    def known(self, rule: Rule, deploy: Deploy) -> bool:
        """Whether the baseline was read for good (a value, or a clear 'none')."""
        return (rule.name, deploy.service, deploy.time) in self._measurements

    def cached(self, rule: Rule, deploy: Deploy) -> Measurement | None:
        """The baseline if it was read already (no I/O)."""
        return self._measurements.get((rule.name, deploy.service, deploy.time))

    def current(
        self, rules: Iterable[Rule], services: Iterable[str], history: DeployHistory
    ) -> tuple[dict[Key, Measurement], bool]:
        """Each relative rule's baseline for each service's current deploy; and whether
        every one was read (a value, or a clear 'none'), none lost to a source error."""
        baselines: dict[Key, Measurement] = {}
        settled = True
        failed: Failed = {}
        for rule in rules:
            if not rule.relative:
                continue
            for service in services:
                deploy = history.current(service)
                if deploy is not None:
                    baselines[(rule.name, service)] = self.get(rule, deploy, failed)
                    settled = settled and (rule.name, service, deploy.time) in self._measurements
                    if rule.seasonal:
                        for offset in rule.seasonality:
                            self.past(rule, deploy, offset, failed)
                        settled = settled and self.past_known(rule, deploy)
        return baselines, settled

    def seasonal(
        self,
        rules: Iterable[Rule],
        baselines: Mapping[Key, Measurement],
        deploys: Mapping[str, Deploy | None],
        arounds: Arounds,
        now: datetime,
        values: Mapping[str, Vector],
    ) -> dict[Key, Measurement]:
        """``baselines`` with each seasonal rule's pre-deploy value adjusted by the rhythm
        of earlier days (core.seasonal), from what was read: no I/O.

        ``values``: each rule's values now, by rule name. The seasonal baseline is never
        tighter than the pre-deploy one, so a value that does not hold even against the
        pre-deploy baseline is OK either way: for those (nearly every service, nearly
        always) the pre-deploy baseline stays, saying so (:meth:`get`), and nothing is
        computed. A service without a value now is inconclusive whatever its baseline.
        """
        adjusted = dict(baselines)
        for rule in rules:
            vector = values.get(rule.name) if rule.seasonal else None
            if vector is None:
                continue
            # The common case in as few operations as possible: OK against the pre-deploy.
            name, compare, min_change = rule.name, rule.condition.compare, rule.min_change
            factor = 1.0 + rule.condition.amount
            for service, number in vector.numbers.items():
                key = (name, service)
                pre = baselines.get(key)
                base = None if pre is None else pre.value
                if (
                    base is None
                    or not compare(number, base * factor)
                    or (min_change is not None and abs(number - base) < min_change)
                ):
                    continue
                deploy = deploys.get(service)
                if deploy is None or pre is None or pre.is_missing:
                    continue
                days = [
                    self.past_day(rule, deploy, offset, arounds.get((rule.name, offset)))
                    for offset in rule.seasonality
                ]
                adjusted[key] = seasonal_baseline(pre, days, rule.fires_on_rise, deploy.time, now)
        return adjusted


_V = TypeVar("_V")


def _only(mapping: Mapping[str, _V], services: Mapping[str, object]) -> Mapping[str, _V]:
    """``mapping`` without what is not about one of ``services`` (itself, nearly always)."""
    if mapping.keys() <= services.keys():
        return mapping
    return {key: value for key, value in mapping.items() if key in services}


def _collect(
    split: dict[str, dict[str, Vector]],
    reads: Mapping[str, Future[Any]],
    outcome: Callable[[str], tuple[Any, str | None]],
) -> None:
    """The per-version answers among ``reads`` into ``split`` (by kind, then rule name)."""
    for key in reads:
        kind, _, name = key.partition(":")
        if kind in split:
            found, why = outcome(key)
            split[kind][name] = Vector(error=why) if why is not None else found


def _active_alerts(
    reads: Mapping[str, Future[Any]],
    outcome: Callable[[str], tuple[Any, str | None]],
    errors: dict[str, str],
) -> ActiveAlerts | None:
    """Alertmanager's answer among ``reads``; None (and the error said) if it was not read."""
    if "alertmanager" not in reads:
        return None
    active, failed = outcome("alertmanager")
    if failed is not None:
        errors["alertmanager"] = failed
        return None
    return active if isinstance(active, ActiveAlerts) else None


def _side_by_side(
    split: Mapping[str, Mapping[str, Vector]], instances: tuple[Any, str | None]
) -> SideBySide:
    """The per-version answers read (``split``: by kind, then rule name), no splits yet."""
    volumes = split["splitvolume"]
    found, failed = instances
    return SideBySide(
        {},
        dict(split["split"]),
        {
            name: (events, volumes[name])
            for name, events in split["splitevents"].items()
            if name in volumes
        },
        Vector(error=failed) if failed is not None else found,
    )


WITHIN_PRE_DEPLOY = "pre-deploy (the value is within it: earlier days not needed)"
"""A seasonal rule's basis where the plain pre-deploy comparison already leaves it OK."""


MEASURE_WORKERS = 8
"""Queries and probes a live cycle runs at once: a slow Prometheus costs one timeout per
round of this many, not one per rule."""

MEASURE_BUDGET_CAP = timedelta(seconds=40)
"""A live cycle's reads end within this (or two poll intervals, or the Prometheus timeout,
whichever is longer, up to this cap): under systemd's 60 s watchdog, whatever hangs."""


@dataclass(frozen=True)
class Plan:
    """What a live cycle will read, fixed under the state lock before any I/O."""

    time: datetime
    rules: tuple[Rule, ...]
    services: Mapping[str, list[str]]
    deploys: Mapping[str, Deploy | None]
    """Each service's current deploy (absent or None: none)."""
    revision: int
    splits: Mapping[str, Split] = field(default_factory=dict)
    """The services that served two versions at the last look: their per-version reads."""


@dataclass(frozen=True)
class Measured:
    """What a live cycle read from the world, without touching the engine's state."""

    plan: Plan
    running: Mapping[str, Mapping[str, list[datetime]]]
    heads: Mapping[str, str]
    probes: Mapping[tuple[str, str], Measurement]
    vectors: Mapping[str, Vector]
    impacts: Mapping[str, Vector]
    baselines: Mapping[Key, Measurement]
    source_errors: Mapping[str, str]
    counts: Mapping[str, tuple[Vector, Vector]] = field(default_factory=dict)
    """The (events, volume) answers of rules that weigh their traffic, by rule name."""
    side_by_side: SideBySide | None = None
    """The per-version answers, read while some service serves two versions (no splits yet:
    they are the versions seen now, in :meth:`LiveCycle.apply`)."""
    alertmanager: ActiveAlerts | None = None
    """Alertmanager's active alerts (None: not configured, or not read: see source_errors)."""


class LiveCycle:
    """Gathers one cycle's inputs now: one instant query per rule, and the probes.

    In three parts so that no I/O happens under the daemon's state lock:
    :meth:`plan` (under the lock) fixes what to read; :meth:`measure` (no lock)
    reads it, queries and probes at once, all within a budget; :meth:`apply`
    (under the lock) notes the versions seen and builds the engine's inputs.
    :meth:`gather` does all three, for callers without a lock.
    """

    def __init__(
        self,
        engine: Engine,
        config: Config,
        prometheus: MetricSource,
        prober: Prober | None,
        alertmanager: AlertmanagerSource | None = None,
    ) -> None:
        """``alertmanager``: its active alerts are read every cycle too (the daemon's loop)."""
        self.engine = engine
        self.config = config
        self.prometheus = prometheus
        self.prober = prober
        self.alertmanager = alertmanager
        self.baselines = BaselineCache(prometheus)
        self._settled: tuple[int, dict[Key, Measurement]] | None = None
        self._arounds: tuple[datetime, Arounds, Mapping[str, Vector]] | None = None
        self._pool = ThreadPoolExecutor(MEASURE_WORKERS, thread_name_prefix="measure")
        self._forms: tuple[tuple[Rule, ...], dict[str, Forms]] | None = None

    def close(self) -> None:
        """Stop the reading threads (those still waiting on an answer end with its deadline)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def budget(self) -> timedelta:
        config = self.config
        wanted = max(2 * config.daemon.poll_interval, config.prometheus.timeout)
        return min(wanted, MEASURE_BUDGET_CAP)

    def plan(self, now: datetime) -> Plan:
        """What to read at ``now`` (under the state lock: it reads the deploy history)."""
        history = self.engine.history
        services = self.engine.services
        splits = {}
        for service in history.serving_several():  # nearly never: one version, no split
            split = split_of(service, history.serving(service), history)
            if split is not None and service in services:
                splits[service] = split
        return Plan(
            now,
            self.engine.rules,
            services,
            _only(history.currents(), services),
            history.revision,
            splits,
        )

    def forms(self, rules: tuple[Rule, ...]) -> dict[str, Forms]:
        """The rules' per-version forms (rewritten once per set of rules)."""
        if self._forms is None or self._forms[0] is not rules:
            self._forms = (rules, side_by_side_forms(self.config, rules)[0])
        return self._forms[1]

    def measure(self, plan: Plan) -> Measured:
        """Read everything the plan names, at once, within :attr:`budget`; never raises.

        A read that fails, or does not end within the budget, is missing data for
        what needed it (that rule only), with the reason.
        """
        deadline = time.monotonic() + self.budget.total_seconds()
        budget = format_duration(self.budget)
        reads = self._start_reads(plan)

        def outcome(key: str) -> tuple[Any, str | None]:
            try:
                return reads[key].result(timeout=max(deadline - time.monotonic(), 0.0)), None
            except FutureTimeout:
                return (
                    None,
                    f"no answer within the cycle's budget of {budget}",
                )
            except (QueryError, AlertmanagerError) as exc:
                return None, str(exc)
            except Exception as exc:  # noqa: BLE001 -- one read's failure is its own, said
                return None, f"{type(exc).__name__}: {one_line(str(exc), 300)}"

        errors: dict[str, str] = {}
        running: Mapping[str, Mapping[str, list[datetime]]] = {}
        heads: dict[str, str] = {}
        probes: dict[tuple[str, str], Measurement] = {}
        vectors: dict[str, Vector] = {}
        impacts: dict[str, Vector] = {}
        arounds: dict[tuple[str, timedelta], Vector] = {}
        weighed: dict[str, dict[str, Vector]] = {"events": {}, "volume": {}}
        split: dict[str, dict[str, Vector]] = {"split": {}, "splitevents": {}, "splitvolume": {}}
        for key in reads:
            kind, _, name = key.partition(":")
            found, why = outcome(key)
            if kind == "versions":
                if why is not None:
                    errors["deploys"] = f"cannot read {self.config.deploys.version_metric}: {why}"
                else:
                    running = found
            elif kind == "head" and isinstance(found, str):
                heads[name] = found
            elif kind == "probe":
                service, _, probe = name.partition(":")
                probes[(service, probe)] = (
                    Measurement.missing(f"probe {probe} not run: {why}")
                    if why is not None
                    else Measurement(found.value, found.reason)
                )
            elif kind in weighed:
                weighed[kind][name] = Vector(error=why) if why is not None else found
            elif kind in ("rule", "impact"):
                answer = Vector(error=why) if why is not None else found
                (vectors if kind == "rule" else impacts)[name] = answer
                if kind == "rule" and answer.error is not None:
                    errors[name] = answer.error
            elif kind == "around":
                rule_name, _, seconds = name.rpartition(":")
                offset = timedelta(seconds=int(seconds))
                arounds[(rule_name, offset)] = Vector(error=why) if why is not None else found
        if "instances" not in reads and any(len(v) > 1 for v in running.values()):
            # A split seen for the first time: its per-version reads now, in what is left
            # of the budget, so that its first look is judged side by side too.
            reads.update(self._split_reads(plan.rules, plan.time))
        _collect(split, reads, outcome)
        baselines, why = outcome("baselines")
        self._arounds = (plan.time, arounds, vectors)
        if why is None:
            baselines = self.baselines.seasonal(
                plan.rules, baselines, plan.deploys, arounds, plan.time, vectors
            )
        counts = {
            name: (events, weighed["volume"][name])
            for name, events in weighed["events"].items()
            if name in weighed["volume"]
        }
        return Measured(
            plan,
            running,
            heads,
            probes,
            vectors,
            impacts,
            baselines if why is None else {},
            errors,
            counts,
            _side_by_side(split, outcome("instances")) if "instances" in reads else None,
            _active_alerts(reads, outcome, errors),  # its error joins errors, passed above
        )

    def _start_reads(self, plan: Plan) -> dict[str, Future[Any]]:
        """Every read of the plan, on the reading threads: versions, heads, queries, probes."""
        config = self.config
        now = plan.time
        reads: dict[str, Future[Any]] = {}
        query = version_query(config)
        if query is not None:
            reads["versions"] = self._pool.submit(
                self.prometheus.labels_over_time,
                query,
                config.deploys.version_label,
                now,
                now,
                config.daemon.poll_interval,
            )
        for configured in config.services:
            if configured.executor == "git" and configured.repo is not None:
                reads[f"head:{configured.name}"] = self._pool.submit(git_head, configured.repo)
        for rule in plan.rules:
            if rule.query is not None:
                reads[f"rule:{rule.name}"] = self._pool.submit(
                    guarded_instant, self.prometheus, rule.query, now
                )
                if rule.impact_query is not None:
                    reads[f"impact:{rule.name}"] = self._pool.submit(
                        guarded_instant, self.prometheus, rule.impact_query, now
                    )
                if rule.events is not None and rule.volume is not None:
                    for kind, query in (("events", rule.events), ("volume", rule.volume)):
                        reads[f"{kind}:{rule.name}"] = self._pool.submit(
                            guarded_instant, self.prometheus, query, now
                        )
            if rule.seasonal:  # one query per offset, for every service at once
                for offset in rule.seasonality:
                    reads[f"around:{rule.name}:{int(offset.total_seconds())}"] = self._pool.submit(
                        guarded_instant, self.prometheus, around_query(rule), now - offset + SLACK
                    )
        if plan.splits:  # per-version reads only while some service serves two versions
            reads.update(self._split_reads(plan.rules, now))
        probe_names = {r.probe for r in plan.rules if r.probe is not None}
        if self.prober is not None and probe_names:
            for configured in config.services:
                for probe in probes_of(configured):
                    if probe.name in probe_names:
                        reads[f"probe:{configured.name}:{probe.name}"] = self._pool.submit(
                            self.prober.probe, configured.name, probe
                        )
        if self.alertmanager is not None:
            reads["alertmanager"] = self._pool.submit(self.alertmanager.active)
        reads["baselines"] = self._pool.submit(self._baselines_for, plan)
        return reads

    def _split_reads(self, rules: tuple[Rule, ...], now: datetime) -> dict[str, Future[Any]]:
        """The per-version forms' reads, on the reading threads (none without forms)."""
        labels = split_labels(self.config)
        forms = self.forms(rules)
        reads: dict[str, Future[Any]] = {}
        if labels is None or not forms:
            return reads
        reads["instances"] = self._pool.submit(
            guarded_instant, self.prometheus, instances_query(labels), now
        )
        for name, form in forms.items():
            for kind, query in (
                ("split", form.query),
                ("splitevents", form.events),
                ("splitvolume", form.volume),
            ):
                if query is not None:
                    reads[f"{kind}:{name}"] = self._pool.submit(
                        guarded_instant, self.prometheus, query, now
                    )
        return reads

    def apply(self, measured: Measured) -> Inputs:
        """The engine's inputs from what was read (under the state lock: it notes versions)."""
        plan, now = measured.plan, measured.plan.time
        history = self.engine.history
        seen = _only(measured.running, self.engine.services)
        history.observe_all(seen, now)
        for service, sha in measured.heads.items():
            if service not in seen:
                history.observe_versions(service, [sha[:12]], now, "git", {sha[:12]: sha})
        side_by_side = measured.side_by_side
        if side_by_side is not None:  # the versions seen now: the splits judged now
            splits = {}
            for service, versions in measured.running.items():
                split = split_of(service, versions, history)
                if split is not None and service in plan.services:
                    splits[service] = split
            side_by_side = replace(side_by_side, splits=splits)
        unseen = None
        if self.alertmanager is not None and measured.alertmanager is None:
            unseen = measured.source_errors.get("alertmanager", "Alertmanager was not read")
        inputs = Inputs(
            source_errors=dict(measured.source_errors),
            counts=dict(measured.counts),
            side_by_side=side_by_side,
            alerts_unseen=unseen,
        )
        if history.revision == plan.revision:
            inputs.baselines.update(measured.baselines)
        else:  # a deploy changed while reading: what is known for the new one (see unread)
            inputs.baselines.update(self.known_baselines())
        for rule in plan.rules:
            if rule.probe is not None:
                for service, probes in plan.services.items():
                    if applies_to(rule, probes):
                        inputs.measurements[(rule.name, service)] = measured.probes.get(
                            (service, rule.probe), Measurement.missing("the probe was not run")
                        )
                continue
            vector = measured.vectors.get(rule.name)
            if vector is not None:
                inputs.vectors[rule.name] = vector
            impact = measured.impacts.get(rule.name)
            if impact is not None:
                for service, number in impact.numbers.items():
                    if service in plan.services:
                        inputs.impacts[(rule.name, service)] = Measurement(number)
        return inputs

    def gather(self, now: datetime) -> Inputs:
        """Plan, measure and apply at once (for ``evaluate``: no one else holds its engine).

        As the daemon's loop does, it looks for unread baselines only when a deploy
        changed while reading: otherwise :meth:`measure` read them for the plan's deploys.
        Alertmanager's active alerts, if it is a source, are findings as the loop makes
        them, from its answer alone (the loop merges them with the journal's).
        """
        plan = self.plan(now)
        measured = self.measure(plan)
        inputs = self.apply(measured)
        if measured.alertmanager is not None:
            merged = merge([], measured.alertmanager, self.engine.services)
            inputs.quiet_alerts.update(merged.quiet)
            self.add_alerts(inputs, merged.firing, now)
        moved = self.engine.history.revision != plan.revision
        unread = self.unread_baselines() if moved else []
        if unread:
            self.read_baselines(unread)
            inputs.baselines.update(self.known_baselines())
        return inputs

    def add_alerts(self, inputs: Inputs, firing: Iterable[AlertRecord], now: datetime) -> None:
        """The ``firing`` alerts of watched services as findings in ``inputs``; those that
        cannot be one (no trigger class, no watched service) said as the ``alerts`` source
        error."""
        alerts, ignored = alert_findings(
            firing, self.engine.services, self.config.alerts.trigger_label, now
        )
        inputs.alerts.extend(alerts)
        for line in ignored:
            inputs.source_errors.setdefault("alerts", line)

    def unread_baselines(self) -> list[tuple[Rule, Deploy]]:
        """Baselines the current deploys need and nobody has read yet (a deploy just seen)."""
        history = self.engine.history
        unread = []
        for rule in self.engine.rules:
            if rule.relative:
                for service in self.engine.services:
                    deploy = history.current(service)
                    if deploy is not None and self.baselines.cached(rule, deploy) is None:
                        unread.append((rule, deploy))
        return unread

    def read_baselines(self, unread: list[tuple[Rule, Deploy]]) -> None:
        """Read those baselines (I/O, no lock), at once, within the cycle's budget.

        One read per rule and deploy time: the deploys made at one time share one
        answer. At start-up every service's deploy is first seen at once, and one
        read per service (10,000 of the same query) would run the query once per
        reading thread and, while it failed, once per service, queued past the
        budget in front of the next cycles' reads.
        """
        together: dict[tuple[str, datetime], tuple[Rule, list[Deploy]]] = {}
        for rule, deploy in unread:
            together.setdefault((rule.name, deploy.time), (rule, []))[1].append(deploy)
        reads = [
            self._pool.submit(self.baselines.read, rule, deploys)
            for rule, deploys in together.values()
        ]
        wait(reads, timeout=self.budget.total_seconds())

    def _baselines_for(self, plan: Plan) -> dict[Key, Measurement]:
        """Each relative rule's baseline for the deploys of the plan (read at need)."""
        if self._settled is not None and self._settled[0] == plan.revision:
            return self._settled[1]
        baselines: dict[Key, Measurement] = {}
        settled = True
        failed: Failed = {}
        for rule in plan.rules:
            if not rule.relative:
                continue
            for service, deploy in plan.deploys.items():
                if deploy is not None:
                    baselines[(rule.name, service)] = self.baselines.get(rule, deploy, failed)
                    settled = settled and self.baselines.known(rule, deploy)
                    if rule.seasonal:
                        for offset in rule.seasonality:
                            self.baselines.past(rule, deploy, offset, failed)
                        settled = settled and self.baselines.past_known(rule, deploy)
        if settled:
            self._settled = (plan.revision, baselines)
        return baselines

    def known_baselines(self) -> dict[Key, Measurement]:
        """The baselines already read for the services' current deploys: no I/O."""
        history = self.engine.history
        known: dict[Key, Measurement] = {}
        for rule in self.engine.rules:
            if not rule.relative:
                continue
            for service in self.engine.services:
                deploy = history.current(service)
                if deploy is not None:
                    known[(rule.name, service)] = self.baselines.cached(rule, deploy) or (
                        Measurement.missing(
                            f"the baseline before {deploy.version} is read next cycle"
                        )
                    )
        if self._arounds is None:  # no cycle has read the earlier days yet
            for rule in self.engine.rules:
                if rule.seasonal:
                    for service in self.engine.services:
                        if (rule.name, service) in known:
                            known[(rule.name, service)] = Measurement.missing(
                                "the same hours of earlier days are read next cycle"
                            )
            return known
        at, arounds, values = self._arounds
        deploys = {service: history.current(service) for service in self.engine.services}
        return self.baselines.seasonal(self.engine.rules, known, deploys, arounds, at, values)

    def baselines_of(self, service: str) -> dict[str, float]:
        """Every relative rule's pre-deploy value for ``service``'s current deploy, by rule.

        The good version's values before the deploy a rollback undoes: what its
        recovery watch compares with, whichever rules happen to fire.
        """
        history = self.engine.history
        deploy = history.current(service)
        if deploy is None:
            return {}
        values = {}
        for rule in self.engine.rules:
            if rule.relative:
                measurement = self.baselines.get(rule, deploy)
                if measurement.value is not None:
                    values[rule.name] = measurement.value
        return values
