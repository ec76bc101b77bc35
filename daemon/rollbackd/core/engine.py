"""One evaluation cycle: measurements → rules → matrix → policy → proposed actions.

:class:`Engine` holds what persists between cycles (rule states, deploy
history, open judgements) and turns one cycle's measurements into findings,
*new* decisions and what happened to open incidents; it does no I/O and is
driven by :class:`~rollbackd.sources.gather.LiveCycle` (instant queries and probes
now, for ``run`` and ``evaluate``) or by :mod:`rollbackd.replay` (Prometheus
history, for ``backtest``).

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

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cached_property

from rollbackd.core.canary import (
    CanaryState,
    SideBySide,
    canary_decision,
    is_side_by_side,
    judge_evidence,
    override_relative,
    share_text,
)
from rollbackd.core.deploys import Deploy, DeployHistory
from rollbackd.core.durations import format_duration, format_instant
from rollbackd.core.model import (
    ALERT_RULE_PREFIX,
    Action,
    Decision,
    Finding,
    FindingState,
    Measurement,
    RuleState,
    Severity,
    Vector,
)
from rollbackd.core.policy import Guards, PolicyEntry, ServiceFacts, decide
from rollbackd.core.rules import Cycle, Key, Previously, Rule, applies_to, evaluate_cycle


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
    live cycle has); ``measurements`` one value per (rule, service);
    ``counts`` the (events, volume) answers of rules that weigh their traffic.
    """

    measurements: dict[Key, Measurement] = field(default_factory=dict)
    baselines: dict[Key, Measurement] = field(default_factory=dict)
    impacts: dict[Key, Measurement] = field(default_factory=dict)
    source_errors: dict[str, str] = field(default_factory=dict)
    alerts: list[Finding] = field(default_factory=list)
    vectors: dict[str, Vector] = field(default_factory=dict)
    counts: dict[str, tuple[Vector, Vector]] = field(default_factory=dict)
    side_by_side: SideBySide | None = None
    """The per-version answers while a service serves two versions (core.canary)."""
    quiet_alerts: set[str] = field(default_factory=set)
    """Services Alertmanager's API answered for with no alert: real data for a service
    no rule watches, so that its version can become known good."""
    alerts_unseen: str | None = None
    """Why Alertmanager's API, which is read, could not be this cycle (None: it answered,
    or is not read): an alert an open incident tracks and no finding shows may still
    fire, so it is not OK again."""


@dataclass(frozen=True)
class EngineSettings:
    """What the engine needs of the config, as plain values (``Config.engine_settings()``)."""

    services: Mapping[str, tuple[str, ...]]
    """Each watched service and the names of its probes."""
    policy: Mapping[Severity, PolicyEntry]
    guards: Guards
    expire_after: timedelta
    """An incident waiting on people ends after this long untouched."""


class Engine:
    """The decision loop's memory and its pure step."""

    def __init__(
        self,
        settings: EngineSettings,
        rules: Iterable[Rule],
        history: DeployHistory,
        armed: bool = False,
    ) -> None:
        """``armed``: decide as the daemon would with dry-run off (a backtest acts on nothing,
        so under a dry-run config it shows what the armed daemon would do)."""
        self.settings = settings
        self.rules = tuple(rules)
        self.history = history
        self.states: dict[Key, RuleState] = {}
        self.rollbacks: dict[str, list[datetime]] = {}
        self._judgements: dict[str, Judgement] = {}
        self._services = {name: list(probes) for name, probes in settings.services.items()}
        # How many rules apply to each service.
        self._evaluated = {
            name: sum(1 for r in self.rules if applies_to(r, probes))
            for name, probes in self._services.items()
        }
        self._rule_names = frozenset(r.name for r in self.rules)
        self._settles = {r.name: r.settles_after for r in self.rules}
        self._longest_settling = max(self._settles.values(), default=timedelta(0))
        self._policy = dict(settings.policy)
        self._guards = settings.guards
        if armed:
            self._guards = replace(self._guards, dry_run=False)
        self._expire_after = settings.expire_after
        self._previously: Previously | None = None
        self._weighing = any(r.weighs_evidence for r in self.rules)
        self._canary: dict[Key, CanaryState] = {}
        self._looked: SideBySide | None = None
        self._judged: set[Key] = set()

    @property
    def services(self) -> Mapping[str, list[str]]:
        return self._services

    def step(self, now: datetime, inputs: Inputs, explain: Collection[str] = ()) -> CycleReport:
        """Evaluate every rule at ``now``, follow open incidents, decide for new trouble.

        ``explain`` names services whose every finding and outcome the report
        should carry (``--explain``): that costs a full evaluation, so only on request.
        """
        vectors, baselines, side_by_side = self._side_by_side(now, inputs)
        cycle = evaluate_cycle(
            self.rules,
            self._services,
            inputs.measurements,
            baselines,
            inputs.impacts,
            self.states,
            now,
            vectors,
            self._previously,
            inputs.counts,
            self._deploy_times() if self._weighing else None,
        )
        self.states = cycle.states
        self._previously = Previously(now, self._rule_names, frozenset(self._services))
        extra = [*side_by_side, *inputs.alerts]
        notable = (*cycle.notable, *extra)
        decisions: list[Decision] = []
        events: list[IncidentEvent] = []
        outcomes: dict[str, str] = {}
        by_service: dict[str, list[Finding]] = {}
        for finding in notable:
            by_service.setdefault(finding.service, []).append(finding)
        judgements = self._judgements
        # A service without notable findings has every rule quiet and OK (if any applies);
        # at thousands of services nearly all of them, with nothing to follow.
        quiet = [
            service
            for service, evaluated in self._evaluated.items()
            if service not in by_service and (evaluated > 0 or service in inputs.quiet_alerts)
        ]
        busy = [s for s in self._evaluated if s in by_service or s in judgements]
        for service in busy:
            own = by_service.get(service, [])
            evaluated = self._evaluated[service]
            firing = [f for f in own if f.firing]
            if own:
                conclusive = len(own) < evaluated or any(
                    f.state is not FindingState.INCONCLUSIVE for f in own
                )
                started = self._doubted_from(service, firing, now)
                self.history.note_evaluation(service, now, conclusive, started)
            decision, outcomes[service] = self._judge(
                service,
                own,
                firing,
                now,
                events,
                explaining=service in explain,
                alerts_unseen=inputs.alerts_unseen,
            )
            if decision is not None:
                decisions.append(decision)
        self.history.note_conclusive(quiet, now)
        for service in explain:
            if service in self._evaluated:
                outcomes.setdefault(service, NOTHING_FIRES)
        return CycleReport(
            time=now,
            notable=notable,
            decisions=tuple(decisions),
            events=tuple(events),
            source_errors=dict(inputs.source_errors),
            quiet=cycle.quiet,
            cycle=cycle,
            explanations=self._explain(explain, cycle, extra, outcomes, now),
        )

    def _side_by_side(
        self, now: datetime, inputs: Inputs
    ) -> tuple[dict[str, Vector], dict[Key, Measurement], list[Finding]]:
        """The rules' vectors and baselines with split services' relative rules judged on the
        new version against the old one, and the evidence rules' ``canary:`` findings."""
        looked = inputs.side_by_side
        if looked is None or not looked.splits:
            self._looked, self._judged, self._canary = None, set(), {}
            return inputs.vectors, inputs.baselines, []
        vectors, baselines, self._judged = override_relative(
            self.rules, looked, inputs.vectors, inputs.baselines
        )
        self._canary, findings = judge_evidence(self.rules, looked, self._canary, now)
        self._looked = looked
        return vectors, baselines, findings

    def _doubted_from(self, service: str, firing: list[Finding], now: datetime) -> datetime | None:
        """Since when the version's health is in doubt, for the known-good judgement:
        each firing finding's start, or for a rule that weighs its traffic the start of
        the test that shows it. That test judged all the traffic since it began, as a
        whole, to be past the threshold: nobody can vouch for the version over it, even
        though the evidence became enough only now (a slow regression)."""
        begins = []
        for finding in firing:
            begin = finding.started or finding.since or now
            state = self.states.get((finding.rule, service))
            evidence = state.evidence if state is not None else None
            if evidence is not None:
                begin = min(begin, evidence.tested_from or evidence.start)
            begins.append(begin)
        return min(begins, default=None)

    def _deploy_times(self) -> dict[str, datetime]:
        """Each service's current deploy time: what the evidence of its rules counts from."""
        services = self._services
        return {s: deploy.time for s, deploy in self.history.currents().items() if s in services}

    def _judge(
        self,
        service: str,
        own: list[Finding],
        firing: list[Finding],
        now: datetime,
        events: list[IncidentEvent],
        *,
        explaining: bool = True,
        alerts_unseen: str | None = None,
    ) -> tuple[Decision | None, str]:
        """Follow the service's open incident, then decide on what fires, if anything is new.

        Returns the decision (None: none) and, for ``--explain``, why it ended so.
        """
        judgement = self._judgements.get(service)
        if judgement is None and not own:
            return None, NOTHING_FIRES  # the common case, at thousands of services: no work
        ended_why = ""
        if judgement is not None:
            ended = self._follow(service, judgement, own, now, alerts_unseen)
            if ended is not None:
                events.append(ended)
                del self._judgements[service]
                judgement = None
                ended_why = f"{ended.kind.value}: {ended.reason}"
        if not firing:  # the why is for --explain only: thousands of services otherwise
            return None, ended_why or (_quiet_outcome(own, judgement) if explaining else "")
        if judgement is None:
            settling = self._settling(service, firing, now)
            firing = [f for f in firing if f not in settling]
            if not firing:
                return None, _settling_outcome(settling, self.history, service)
        severity = Severity.highest([f.severity for f in firing])
        if judgement is not None and severity.rank <= judgement.decision.severity.rank:
            return None, self._fold(service, judgement, firing, now, events)
        decision = self._decide(service, firing, now)
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

    def _decide(self, service: str, firing: list[Finding], now: datetime) -> Decision | None:
        """The policy's decision; one on side-by-side findings only rolls back the new
        version's share, to the old version serving alongside (core.canary)."""
        looked = self._looked
        split = looked.splits.get(service) if looked is not None else None
        facts = self.facts(service)
        if split is None or not all(is_side_by_side(f, self._judged, firing) for f in firing):
            return decide(service, firing, facts, now, self._policy, self._guards)
        assert looked is not None  # noqa: S101 -- split came from it
        facts = replace(facts, last_good_version=split.old)
        decision = decide(service, firing, facts, now, self._policy, self._guards)
        if decision is None:
            return None
        return canary_decision(decision, split, share_text(looked, split, firing))

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
        self,
        service: str,
        judgement: Judgement,
        own: list[Finding],
        now: datetime,
        alerts_unseen: str | None = None,
    ) -> IncidentEvent | None:
        """Track an open judgement one cycle; the event that ends it, if it ends now.

        ``alerts_unseen``: why Alertmanager could not be read; a tracked alert without a
        finding is then unknown, not OK (its webhook may be all that was lost).
        """
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
        unseen = sorted(
            r
            for r in judgement.rules
            if alerts_unseen is not None and r.startswith(ALERT_RULE_PREFIX) and r not in by_rule
        )
        if judgement.recovered or (not holding and not not_ok and not unseen):
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
                ", ".join(
                    [
                        *(f"{r} {by_rule[r].state.value}" for r in not_ok if r in by_rule),
                        *(f"{r} unseen ({alerts_unseen})" for r in unseen),
                    ]
                )
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
                tuple(sorted({*not_ok, *unseen})),
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
        self._canary = {k: v for k, v in other._canary.items() if k[0] in self._rule_names}
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
