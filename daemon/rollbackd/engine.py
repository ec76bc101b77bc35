"""One evaluation cycle: measurements → rules → matrix → policy → proposed actions.

:class:`Engine` holds what persists between cycles (rule states, deploy
history, open judgements) and turns one cycle's measurements into findings,
*new* decisions and what happened to open incidents; it does no I/O and is
driven by :class:`LiveCycle` (instant queries and probes now, for ``run`` and
``evaluate``) or by :mod:`rollbackd.replay` (Prometheus history, for ``backtest``).

Incidents, as the engine sees them (:class:`Judgement`):

- **One judgement per deploy.** A service with firing findings and no open
  judgement gets a decision, judged against the deploy running now. An open
  judgement covers the deploy it was opened for and the deploys its own
  rollback made; a newer deploy ends it (*superseded*), so an old incident
  never hides a newer deploy's trouble. A finding that already held before
  the new deploy counts against it only if it still holds once the rule's
  ``for`` and its query's window have passed after the deploy: until then, a
  rate window is still full of the previous version's trouble.
- **Folded, and said so.** A firing finding of a service whose judgement
  still covers the deploy gets no second decision unless the severity rises;
  the first time a rule is folded in, the report says so ("suppressed:
  incident 4 is open for v3").
- **Ends on what fired.** A judgement tracks the rules that were pending or
  firing while it was open (alerts included). It is *resolved* when none of
  them holds and each is OK again; a rule that was inconclusive the whole
  time never keeps it open. A proven recovery ends it too: whatever still
  fires then is a matter of its own, judged anew (and never rolled back
  again on its own: the cooldown and the rollback limit see to that).
- **Never open for ever.** A judgement that waits on people (escalated,
  recorded, vetoed, not recovered) *expires* after ``[incidents]
  expire_after`` without anything happening to it.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cached_property
from typing import Any

from rollbackd.config import Config
from rollbackd.deploys import Deploy, DeployHistory
from rollbackd.durations import format_duration, format_instant
from rollbackd.model import (
    Action,
    Decision,
    Finding,
    FindingState,
    Measurement,
    RuleState,
    Severity,
    Vector,
)
from rollbackd.policy import ServiceFacts, decide
from rollbackd.rules import Cycle, Key, Previously, Rule, applies_to, evaluate_cycle
from rollbackd.sources import MetricSource, guarded_instant
from rollbackd.sources.deploys import git_head
from rollbackd.sources.probes import Prober, probes_of
from rollbackd.sources.prometheus import QueryError
from rollbackd.text import one_line


class Outcome(StrEnum):
    """What happened to an open incident in one cycle."""

    RESOLVED = "resolved"
    FOLDED = "folded"
    SUPERSEDED = "superseded"
    EXPIRED = "expired"


@dataclass(frozen=True)
class IncidentEvent:
    """Something that happened to an open incident, for the journal, the log and backtest.

    ``incident`` is the journal's id of the incident (None before it is journaled, and
    in a replay); ``rules`` the rules concerned (folded in, or still not OK).
    """

    kind: Outcome
    service: str
    time: datetime
    opened: datetime
    reason: str
    incident: int | None = None
    rules: tuple[str, ...] = ()


@dataclass
class Judgement:
    """An open incident as the engine follows it: which deploy it judges, what it tracks.

    ``version``/``deployed_at``: the deploy running when it opened; ``rules``: every
    rule pending or firing while it was open; ``reported``: the rules a decision or a
    fold already named; ``rolled_back_to``: the deploys its own rollback made;
    ``idle_since``: since when it waits on people (None while a rollback is pending
    or under way); ``recovered``: its rollback proved recovery; ``rolling_back``: its
    rollback is under way (approved, or decided at once) and has not ended.
    """

    opened: datetime
    decision: Decision
    version: str | None = None
    deployed_at: datetime | None = None
    rules: set[str] = field(default_factory=set)
    reported: set[str] = field(default_factory=set)
    rolled_back_to: list[Deploy] = field(default_factory=list)
    idle_since: datetime | None = None
    recovered: bool = False
    incident: int | None = None
    rolling_back: bool = False

    def covers(self, current: Deploy | None, earlier: Collection[str] = ()) -> bool:
        """Whether findings on ``current`` belong to this judgement.

        Yes for the version it was opened for (however its deploy is dated later, as
        events and sightings of it come in), for a deploy dated before it opened, for a
        deploy its own rollback made, and for a version that ran before the one it judges
        (``earlier``: a rollback made by hand, whose lagging findings are still this
        incident's). No for a newer version deployed after it opened, even in the same
        instant: that one is judged anew. While its rollback is under way, a version
        seen (not announced by CI) is its rollback's doing, seen before the rollback's
        deploy is journaled (a revert's new commit at HEAD, after a restart too).
        """
        if (
            current is None
            or current.version == self.version
            or current.time < self.opened
            or current.version in earlier
            or (self.rolling_back and current.source != "event")
        ):
            return True
        return any(
            current.version == made.version or (made.ref is not None and current.ref == made.ref)
            for made in self.rolled_back_to
        )

    def named(self) -> str:
        """How messages name it: "incident 4" once journaled, else when it opened."""
        if self.incident is not None:
            return f"incident {self.incident}"
        return f"the incident of {format_instant(self.opened)}"

    def judged(self) -> str:
        return self.version or "an unknown version"


def _idle(decision: Decision) -> datetime | None:
    """A decision that only tells people waits on them from its time; a rollback does not."""
    return None if decision.action.rolls_back else decision.time


@dataclass(frozen=True)
class Explanation:
    """Why a service's cycle ended as it did: every rule's finding and the outcome."""

    service: str
    time: datetime
    deploy: Deploy | None
    last_good: str | None
    findings: tuple[Finding, ...]
    outcome: str


@dataclass(frozen=True)
class CycleReport:
    """What one cycle found and decided, and what it could not see.

    ``notable`` holds every finding but the quiet OK ones (alert findings
    included); ``quiet`` counts those by rule. ``findings`` lists them all,
    built on demand: at thousands of services that is most of a cycle's cost.
    ``events`` says what happened to open incidents; ``explanations`` holds
    the services asked for with ``explain``.
    """

    time: datetime
    notable: tuple[Finding, ...]
    decisions: tuple[Decision, ...]
    events: tuple[IncidentEvent, ...] = ()
    source_errors: Mapping[str, str] = field(default_factory=dict)
    quiet: Mapping[str, int] = field(default_factory=dict)
    cycle: Cycle | None = field(default=None, repr=False, compare=False)
    explanations: Mapping[str, Explanation] = field(default_factory=dict)

    @cached_property
    def findings(self) -> tuple[Finding, ...]:
        """Every finding of the cycle, quiet OK ones included; then the alerts' findings."""
        if self.cycle is None:
            return self.notable
        alerts = self.notable[len(self.cycle.notable) :]
        return (*self.cycle.findings, *alerts)

    @property
    def resolutions(self) -> tuple[IncidentEvent, ...]:
        """The incidents that ended because what fired is OK again."""
        return tuple(e for e in self.events if e.kind is Outcome.RESOLVED)


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


class Engine:
    """The decision loop's memory and its pure step."""

    def __init__(
        self,
        config: Config,
        rules: Iterable[Rule],
        history: DeployHistory,
        armed: bool = False,
    ) -> None:
        """``armed``: decide as the daemon would with dry-run off (a backtest acts on nothing,
        so under a dry-run config it shows what the armed daemon would do)."""
        self.config = config
        self.rules = tuple(rules)
        self.history = history
        self.states: dict[Key, RuleState] = {}
        self.rollbacks: dict[str, list[datetime]] = {}
        self._judgements: dict[str, Judgement] = {}
        self._services = {s.name: s.probe_names for s in config.services}
        # How many rules apply to each service.
        self._evaluated = {
            name: sum(1 for r in self.rules if applies_to(r, probes))
            for name, probes in self._services.items()
        }
        self._rule_names = frozenset(r.name for r in self.rules)
        self._settles = {r.name: r.settles_after for r in self.rules}
        self._longest_settling = max(self._settles.values(), default=timedelta(0))
        self._policy = config.policy.table()
        self._guards = config.guards_for_policy()
        if armed:
            self._guards = replace(self._guards, dry_run=False)
        self._expire_after = config.incidents.expire_after
        self._previously: Previously | None = None

    @property
    def services(self) -> Mapping[str, list[str]]:
        return self._services

    def step(self, now: datetime, inputs: Inputs, explain: Collection[str] = ()) -> CycleReport:
        """Evaluate every rule at ``now``, follow open incidents, decide for new trouble.

        ``explain`` names services whose every finding and outcome the report
        should carry (``--explain``): that costs a full evaluation, so only on request.
        """
        cycle = evaluate_cycle(
            self.rules,
            self._services,
            inputs.measurements,
            inputs.baselines,
            inputs.impacts,
            self.states,
            now,
            inputs.vectors,
            self._previously,
        )
        self.states = cycle.states
        self._previously = Previously(now, self._rule_names, frozenset(self._services))
        notable = (*cycle.notable, *inputs.alerts)
        decisions: list[Decision] = []
        events: list[IncidentEvent] = []
        outcomes: dict[str, str] = {}
        by_service: dict[str, list[Finding]] = {}
        for finding in notable:
            by_service.setdefault(finding.service, []).append(finding)
        quiet: list[str] = []
        for service, evaluated in self._evaluated.items():
            # A service without notable findings has every rule quiet and OK (if any applies).
            own = by_service.get(service, [])
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
            decision, outcomes[service] = self._judge(service, own, firing, now, events)
            if decision is not None:
                decisions.append(decision)
        self.history.note_conclusive(quiet, now)
        return CycleReport(
            time=now,
            notable=notable,
            decisions=tuple(decisions),
            events=tuple(events),
            source_errors=dict(inputs.source_errors),
            quiet=cycle.quiet,
            cycle=cycle,
            explanations=self._explain(explain, cycle, inputs.alerts, outcomes, now),
        )

    def _judge(
        self,
        service: str,
        own: list[Finding],
        firing: list[Finding],
        now: datetime,
        events: list[IncidentEvent],
    ) -> tuple[Decision | None, str]:
        """Follow the service's open incident, then decide on what fires, if anything is new.

        Returns the decision (None: none) and, for ``--explain``, why it ended so.
        """
        judgement = self._judgements.get(service)
        if judgement is None and not own:
            return None, NOTHING_FIRES  # the common case, at thousands of services: no work
        ended_why = ""
        if judgement is not None:
            ended = self._follow(service, judgement, own, now)
            if ended is not None:
                events.append(ended)
                del self._judgements[service]
                judgement = None
                ended_why = f"{ended.kind.value}: {ended.reason}"
        if not firing:
            return None, ended_why or _quiet_outcome(own, judgement)
        if judgement is None:
            settling = self._settling(service, firing, now)
            firing = [f for f in firing if f not in settling]
            if not firing:
                return None, _settling_outcome(settling, self.history, service)
        severity = Severity.highest([f.severity for f in firing])
        if judgement is not None and severity.rank <= judgement.decision.severity.rank:
            return None, self._fold(service, judgement, firing, now, events)
        decision = decide(service, firing, self.facts(service), now, self._policy, self._guards)
        if decision is None:
            return None, ended_why or _quiet_outcome(own, judgement)
        if judgement is not None:
            events.append(
                IncidentEvent(
                    Outcome.SUPERSEDED,
                    service,
                    now,
                    judgement.opened,
                    f"severity rose from {judgement.decision.severity.value} to "
                    f"{severity.value}: decided again",
                    judgement.incident,
                )
            )
        self._judgements[service] = self._open(service, decision, judgement, own, now)
        return decision, f"decision: {decision.action.value}: {decision.reason}"

    def _explain(
        self,
        services: Collection[str],
        cycle: Cycle,
        alerts: list[Finding],
        outcomes: Mapping[str, str],
        now: datetime,
    ) -> dict[str, Explanation]:
        """Every finding of each service asked about, and how its cycle ended."""
        if not services:
            return {}
        everything = (*cycle.findings, *alerts)
        explanations = {}
        for service in services:
            if service not in self._services:
                continue
            good, _ = self.history.last_good(service)
            explanations[service] = Explanation(
                service,
                now,
                self.history.current(service),
                good,
                tuple(f for f in everything if f.service == service),
                outcomes.get(service, "no decision: no rule applies to this service"),
            )
        return explanations

    def _open(
        self,
        service: str,
        decision: Decision,
        before: Judgement | None,
        own: list[Finding],
        now: datetime,
    ) -> Judgement:
        """A new judgement for ``decision`` (or the old one, decided again at a higher severity)."""
        tracked = {f.rule for f in own if f.active}
        if before is not None:
            before.decision = decision
            before.rules |= tracked
            before.reported |= set(decision.rules)
            before.idle_since = _idle(decision)
            before.rolling_back = before.rolling_back or decision.action is Action.ROLLBACK
            before.incident = None
            return before
        current = self.history.current(service)
        return Judgement(
            opened=now,
            decision=decision,
            version=current.version if current else None,
            deployed_at=current.time if current else None,
            rules=tracked,
            reported=set(decision.rules),
            idle_since=_idle(decision),
            rolling_back=decision.action is Action.ROLLBACK,
        )

    def _follow(
        self, service: str, judgement: Judgement, own: list[Finding], now: datetime
    ) -> IncidentEvent | None:
        """Track an open judgement one cycle; the event that ends it, if it ends now."""
        current = self.history.current(service)
        if not judgement.covers(current, self._earlier(service, judgement)):
            assert current is not None  # noqa: S101 -- covers() is True without a deploy
            return IncidentEvent(
                Outcome.SUPERSEDED,
                service,
                now,
                judgement.opened,
                f"{current.version} was deployed at {format_instant(current.time)}, after "
                f"{judgement.named()} (for {judgement.judged()}) opened: what fires from now "
                f"on is judged against {current.version}",
                judgement.incident,
            )
        by_rule = {f.rule: f for f in own}
        judgement.rules |= {f.rule for f in own if f.active}
        holding = sorted(r for r in judgement.rules if r in by_rule and by_rule[r].active)
        not_ok = sorted(
            r for r in judgement.rules if r in by_rule and by_rule[r].state is not FindingState.OK
        )
        if judgement.recovered or (not holding and not not_ok):
            ok_again = ", ".join(_ok_again(r, by_rule.get(r)) for r in sorted(judgement.rules))
            why = f"what fired is OK again: {ok_again}"
            if judgement.recovered:
                why = "its rollback recovered (the recovery watch proved it)"
                if holding:
                    why += f"; what still fires ({', '.join(holding)}) is judged anew"
            return IncidentEvent(
                Outcome.RESOLVED,
                service,
                now,
                judgement.opened,
                why,
                judgement.incident,
                tuple(sorted(judgement.rules)),
            )
        if judgement.idle_since is not None and now - judgement.idle_since >= self._expire_after:
            waiting = (
                ", ".join(f"{r} {by_rule[r].state.value}" for r in not_ok if r in by_rule)
                or "nothing measured"
            )
            return IncidentEvent(
                Outcome.EXPIRED,
                service,
                now,
                judgement.opened,
                f"nobody acted on {judgement.named()} for "
                f"{format_duration(now - judgement.idle_since)} (expire_after "
                f"{format_duration(self._expire_after)}) and what fired is not all OK again "
                f"({waiting}): it ends; what fires from now on is decided anew",
                judgement.incident,
                tuple(not_ok),
            )
        return None

    def _settling(self, service: str, firing: list[Finding], now: datetime) -> list[Finding]:
        """Firing findings that held before the deploy running now, while it has not yet
        run their rule's ``for`` or the query's look back (:attr:`Rule.settles_after`): a
        rate window still full of the previous version's trouble. A new deploy is judged
        on what still holds after that."""
        current = self.history.current(service)
        if current is None or now - current.time >= self._longest_settling:
            return []
        return [
            f
            for f in firing
            if (f.started or f.since or now) < current.time
            and now - current.time < self._settles.get(f.rule, timedelta(0))
        ]

    def _earlier(self, service: str, judgement: Judgement) -> set[str]:
        """The versions of ``service`` that ran before the one ``judgement`` judges."""
        before = judgement.deployed_at or judgement.opened
        return {d.version for d in self.history.deploys(service) if d.time < before}

    def _fold(
        self,
        service: str,
        judgement: Judgement,
        firing: list[Finding],
        now: datetime,
        events: list[IncidentEvent],
    ) -> str:
        """A firing finding of a service whose incident is open: said once per new rule."""
        why = (
            f"suppressed: {judgement.named()} is open for {judgement.judged()} "
            f"(severity {judgement.decision.severity.value}, "
            f"{judgement.decision.action.value})"
        )
        new = sorted({f.rule for f in firing} - judgement.reported)
        if new:
            judgement.reported |= set(new)
            events.append(
                IncidentEvent(
                    Outcome.FOLDED,
                    service,
                    now,
                    judgement.opened,
                    f"{', '.join(new)} firing; {why}",
                    judgement.incident,
                    tuple(new),
                )
            )
        return why

    # -- what the daemon tells the engine about its incidents -----------------------------

    def attach(self, service: str, incident: int) -> None:
        """The journal's id of the service's open judgement (the incident just opened)."""
        judgement = self._judgements.get(service)
        if judgement is not None:
            judgement.incident = incident

    def unjournaled(self, service: str, decision: Decision) -> None:
        """``decision`` could not be journaled: its judgement goes, so it is decided again.

        A judgement decided again at a higher severity goes too; the incident it
        followed stays in the journal, unfinished, and is restored from there.
        """
        judgement = self._judgements.get(service)
        if judgement is not None and judgement.incident is None and judgement.decision is decision:
            del self._judgements[service]

    def settle(self, service: str, incident: int, at: datetime, recovered: bool = False) -> None:
        """Incident ``incident`` now waits on people (or recovered) since ``at``."""
        judgement = self._judgements.get(service)
        if judgement is None or judgement.incident != incident:
            return
        judgement.idle_since = at
        judgement.recovered = judgement.recovered or recovered
        judgement.rolling_back = False

    def rolling_back(self, service: str, incident: int) -> None:
        """Incident ``incident``'s rollback started (approved by a person or the deadline)."""
        judgement = self._judgements.get(service)
        if judgement is not None and judgement.incident == incident:
            judgement.rolling_back = True

    def restore(self, service: str, judgement: Judgement) -> None:
        """An incident from before a restart, so that it is followed, not decided again."""
        if service in self._services:
            self._judgements[service] = judgement

    def judgement(self, service: str) -> Judgement | None:
        return self._judgements.get(service)

    def judgements(self) -> dict[str, Judgement]:
        return dict(self._judgements)

    def adopt(self, other: Engine, judgements: bool = True) -> None:
        """Take over another engine's memory: the one before a reload, or a warm-up
        replay's (``judgements=False``: what the replay decided was never acted on, so the
        live engine decides it, unless the journal says an incident is open).

        Rule states of rules that no longer exist are dropped; judgements of services
        that are no longer configured too.
        """
        self.states = {k: v for k, v in other.states.items() if k[0] in self._rule_names}
        if judgements:
            self.rollbacks = {s: list(t) for s, t in other.rollbacks.items()}
            self._judgements = {s: j for s, j in other._judgements.items() if s in self._services}
        if other._previously is not None:
            self._previously = Previously(
                other._previously.time,
                other._previously.rules & self._rule_names,
                other._previously.services & frozenset(self._services),
            )

    def open_decisions(self) -> list[Decision]:
        """The latest decision of every incident still open, by service."""
        return [self._judgements[s].decision for s in sorted(self._judgements)]

    def rule_count(self, service: str) -> int:
        """How many rules apply to ``service`` (0 for a service that is not configured)."""
        return self._evaluated.get(service, 0)

    def record_rollback(self, service: str, at: datetime, deploy: Deploy | None = None) -> None:
        """A rollback of ``service`` happened at ``at`` (for the cooldown and the limit);
        ``deploy`` is what it made run, which its incident goes on covering."""
        self.rollbacks.setdefault(service, []).append(at)
        judgement = self._judgements.get(service)
        if deploy is not None and judgement is not None:
            judgement.rolled_back_to.append(deploy)

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


def _settling_outcome(settling: list[Finding], history: DeployHistory, service: str) -> str:
    current = history.current(service)
    version = current.version if current else "the new version"
    rules = ", ".join(sorted(f.rule for f in settling))
    return (
        f"no decision yet: {rules} held before {version} was deployed; it is judged against "
        f"{version} if it still holds once its `for` and its query's window have passed"
    )


NOTHING_FIRES = "no decision: nothing fires"


def _quiet_outcome(own: list[Finding], judgement: Judgement | None) -> str:
    """Why a service with nothing firing got no decision, for ``--explain``."""
    text = NOTHING_FIRES
    pending = sorted(f.rule for f in own if f.state is FindingState.PENDING)
    if pending:
        text += f" yet ({', '.join(pending)} pending: not held for its `for`)"
    missing = sorted(
        f.rule for f in own if f.state is FindingState.INCONCLUSIVE and not f.unmeasured
    )
    if missing:
        text += f"; {', '.join(missing)} inconclusive: missing data is never a reason to act"
    if judgement is not None:
        text += f"; {judgement.named()} stays open for {judgement.judged()}"
    return text


def _ok_again(rule: str, finding: Finding | None) -> str:
    """One tracked rule, OK again: its value and condition when the cycle has them."""
    if finding is None or finding.value is None:
        return f"{rule} OK"
    text = f"{rule} {finding.value:.6g}, not {finding.condition}"
    if finding.baseline is not None and finding.threshold is not None:
        text += f" (threshold {finding.threshold:.6g} from baseline {finding.baseline:.6g})"
    return text


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
            vector = guarded_instant(
                self._source, baseline_query(rule), deploy.time - BASELINE_EDGE
            )
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
        for rule in rules:
            if not rule.relative:
                continue
            for service in services:
                deploy = history.current(service)
                if deploy is not None:
                    baselines[(rule.name, service)] = self.get(rule, deploy)
                    settled = settled and (rule.name, service, deploy.time) in self._measurements
        return baselines, settled


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
    revision: int


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


class LiveCycle:
    """Gathers one cycle's inputs now: one instant query per rule, and the probes.

    In three parts so that no I/O happens under the daemon's state lock:
    :meth:`plan` (under the lock) fixes what to read; :meth:`measure` (no lock)
    reads it, queries and probes at once, all within a budget; :meth:`apply`
    (under the lock) notes the versions seen and builds the engine's inputs.
    :meth:`gather` does all three, for callers without a lock.
    """

    def __init__(self, engine: Engine, prometheus: MetricSource, prober: Prober | None) -> None:
        self.engine = engine
        self.prometheus = prometheus
        self.prober = prober
        self.baselines = BaselineCache(prometheus)
        self._settled: tuple[int, dict[Key, Measurement]] | None = None
        self._pool = ThreadPoolExecutor(MEASURE_WORKERS, thread_name_prefix="measure")

    def close(self) -> None:
        """Stop the reading threads (those still waiting on an answer end with its deadline)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def budget(self) -> timedelta:
        config = self.engine.config
        wanted = max(2 * config.daemon.poll_interval, config.prometheus.timeout)
        return min(wanted, MEASURE_BUDGET_CAP)

    def plan(self, now: datetime) -> Plan:
        """What to read at ``now`` (under the state lock: it reads the deploy history)."""
        history = self.engine.history
        services = self.engine.services
        return Plan(
            now,
            self.engine.rules,
            services,
            {service: history.current(service) for service in services},
            history.revision,
        )

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
            except QueryError as exc:
                return None, str(exc)
            except Exception as exc:  # noqa: BLE001 -- one read's failure is its own, said
                return None, f"{type(exc).__name__}: {one_line(str(exc), 300)}"

        config = self.engine.config
        errors: dict[str, str] = {}
        running: Mapping[str, Mapping[str, list[datetime]]] = {}
        heads: dict[str, str] = {}
        probes: dict[tuple[str, str], Measurement] = {}
        vectors: dict[str, Vector] = {}
        impacts: dict[str, Vector] = {}
        for key in reads:
            kind, _, name = key.partition(":")
            found, why = outcome(key)
            if kind == "versions":
                if why is not None:
                    errors["deploys"] = f"cannot read {config.deploys.version_metric}: {why}"
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
            elif kind in ("rule", "impact"):
                answer = Vector(error=why) if why is not None else found
                (vectors if kind == "rule" else impacts)[name] = answer
                if kind == "rule" and answer.error is not None:
                    errors[name] = answer.error
        baselines, why = outcome("baselines")
        return Measured(
            plan, running, heads, probes, vectors, impacts, baselines if why is None else {}, errors
        )

    def _start_reads(self, plan: Plan) -> dict[str, Future[Any]]:
        """Every read of the plan, on the reading threads: versions, heads, queries, probes."""
        config = self.engine.config
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
        probe_names = {r.probe for r in plan.rules if r.probe is not None}
        if self.prober is not None and probe_names:
            for configured in config.services:
                for probe in probes_of(configured):
                    if probe.name in probe_names:
                        reads[f"probe:{configured.name}:{probe.name}"] = self._pool.submit(
                            self.prober.probe, configured.name, probe
                        )
        reads["baselines"] = self._pool.submit(self._baselines_for, plan)
        return reads

    def apply(self, measured: Measured) -> Inputs:
        """The engine's inputs from what was read (under the state lock: it notes versions)."""
        plan, now = measured.plan, measured.plan.time
        history = self.engine.history
        seen: set[str] = set()
        for service, versions in measured.running.items():
            if service in self.engine.services:
                history.observe_versions(service, versions, now)
                seen.add(service)
        for service, sha in measured.heads.items():
            if service not in seen:
                history.observe_versions(service, [sha[:12]], now, "git", {sha[:12]: sha})
        inputs = Inputs(source_errors=dict(measured.source_errors))
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
        """Plan, measure and apply at once (for ``evaluate``: no one else holds its engine)."""
        inputs = self.apply(self.measure(self.plan(now)))
        unread = self.unread_baselines()
        if unread:
            self.read_baselines(unread)
            inputs.baselines.update(self.known_baselines())
        return inputs

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
        """Read those baselines (I/O, no lock), at once, within the cycle's budget."""
        reads = [self._pool.submit(self.baselines.get, rule, deploy) for rule, deploy in unread]
        wait(reads, timeout=self.budget.total_seconds())

    def _baselines_for(self, plan: Plan) -> dict[Key, Measurement]:
        """Each relative rule's baseline for the deploys of the plan (read at need)."""
        if self._settled is not None and self._settled[0] == plan.revision:
            return self._settled[1]
        baselines: dict[Key, Measurement] = {}
        settled = True
        for rule in plan.rules:
            if not rule.relative:
                continue
            for service, deploy in plan.deploys.items():
                if deploy is not None:
                    baselines[(rule.name, service)] = self.baselines.get(rule, deploy)
                    settled = settled and self.baselines.known(rule, deploy)
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
        return known

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
