"""The incident lifecycle in the engine: one judgement per deploy, folding, resolution, expiry."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from rollbackd.config import Config, parse_config
from rollbackd.core.deploys import Deploy
from rollbackd.core.engine import CycleReport, Engine, IncidentEvent, Outcome
from rollbackd.core.model import Action, Decision, FindingState
from rollbackd.core.rules import Rule, parse_rules
from rollbackd.output import Coverage
from rollbackd.replay import Replay
from rollbackd.testing import ScriptedMetrics, constant, switch

DAY = datetime(2026, 3, 1, tzinfo=UTC)
NOON = DAY + timedelta(hours=12)
STEP = timedelta(seconds=30)
ERRORS, LATENCY, OUTAGE, AUTH = "errors", "latency", "outage", "auth_failures"

RULES = f"""
[[rules]]
name = "error-rate"
trigger = "high_error_rate"
query = "{ERRORS}"
condition = "> 0.05"
for = "2m"

[[rules]]
name = "latency-regression"
trigger = "performance_degradation"
query = "{LATENCY}"
condition = "> +50%"
min_change = 0.05
for = "5m"

[[rules]]
name = "outage"
trigger = "outage"
query = "{OUTAGE}"
condition = "> 0"
for = "1m"

[[rules]]
name = "auth-failures"
trigger = "auth_failure"
query = "{AUTH}"
condition = "> 0.5"
for = "2m"
"""
"""``auth-failures`` reads a metric the app does not export: never conclusive."""


def config(extra: str = "") -> Config:
    return parse_config(
        f"""
[daemon]
poll_interval = "30s"
[[services]]
name = "web"
repo = "/srv/web"
[deploys]
version_metric = "app_build_info"
known_good_after = "30m"
attribution_window = "2h"
{extra}
""",
        "config.toml",
    )


def rules() -> tuple[Rule, ...]:
    return tuple(parse_rules(RULES, "rules.toml"))


def world() -> ScriptedMetrics:
    """v1 runs clean from midnight; the auth metric is never exported."""
    metrics = ScriptedMetrics(["web"])
    metrics.set(ERRORS, constant(0.01))
    metrics.set(LATENCY, constant(0.2))
    metrics.set(OUTAGE, constant(0.0))
    metrics.deploy("web", "v1", DAY)
    return metrics


Hook = Callable[[Replay, CycleReport], None]


def replay(
    metrics: ScriptedMetrics,
    cfg: Config | None = None,
    end: datetime = NOON + timedelta(hours=6),
    after_step: Hook | None = None,
) -> tuple[list[Decision], list[IncidentEvent]]:
    run = Replay(cfg or config(), rules(), metrics, STEP)
    decisions: list[Decision] = []
    events: list[IncidentEvent] = []
    for report in run.run(NOON - timedelta(hours=2), end):
        decisions.extend(report.decisions)
        events.extend(report.events)
        if after_step is not None:
            after_step(run, report)
    return decisions, events


def kinds(events: list[IncidentEvent]) -> list[tuple[Outcome, datetime]]:
    return [(e.kind, e.time) for e in events]


def test_a_second_bad_deploy_after_an_escalated_incident_gets_its_own_decision() -> None:
    """An escalation for v2 that never closes (a rule without data) does not hide v3's errors."""
    metrics = world()
    metrics.deploy("web", "v2", NOON)
    # v2's latency goes up 3h after its deploy (outside the attribution window: escalated),
    # then its data stops: that incident can never see its rule OK again.
    metrics.set(
        LATENCY,
        switch(
            0.2,
            [
                ("web", NOON + timedelta(hours=3), NOON + timedelta(hours=3, minutes=10), 0.5),
                ("web", NOON + timedelta(hours=3, minutes=10), None, None),
            ],
        ),
    )
    v3 = NOON + timedelta(hours=4)
    metrics.deploy("web", "v3", v3)
    metrics.set(ERRORS, switch(0.01, [("web", v3 + timedelta(minutes=10), None, 0.3)]))
    decisions, events = replay(metrics)
    assert [(d.time, d.action) for d in decisions] == [
        (NOON + timedelta(hours=3, minutes=5), Action.ESCALATE),
        (v3 + timedelta(minutes=12), Action.REQUEST_APPROVAL),
    ]
    assert "roll back v3 to v2" in decisions[1].reason
    [superseded] = [e for e in events if e.kind is Outcome.SUPERSEDED]
    assert superseded.time == v3
    assert "v3 was deployed" in superseded.reason and "(for v2)" in superseded.reason


def test_an_incident_awaiting_approval_is_superseded_by_a_newer_deploy() -> None:
    """v2 asks for approval; CI deploys v3 before anyone answers: v3 is judged afresh."""
    metrics = world()
    metrics.deploy("web", "v2", NOON)
    v3 = NOON + timedelta(minutes=20)
    metrics.deploy("web", "v3", v3)
    metrics.set(ERRORS, switch(0.01, [("web", NOON + timedelta(minutes=5), None, 0.3)]))
    decisions, events = replay(metrics, end=NOON + timedelta(hours=1))
    assert [d.action for d in decisions] == [Action.REQUEST_APPROVAL, Action.ESCALATE]
    assert decisions[1].time == v3 + timedelta(minutes=2)  # held for `for` after v3's deploy
    assert decisions[1].guards == ("attribution",)  # the errors began before v3: not its fault
    assert kinds(events) == [(Outcome.SUPERSEDED, v3)]


def test_a_fix_deployed_while_errors_go_on_is_not_blamed_for_their_lag() -> None:
    """v3 fixes v2's errors; the rate window still shows them for a minute: no decision on v3."""
    metrics = world()
    metrics.deploy("web", "v2", NOON)
    v3 = NOON + timedelta(minutes=20)
    metrics.deploy("web", "v3", v3)
    errors = [("web", NOON + timedelta(minutes=5), v3 + timedelta(minutes=1), 0.3)]
    metrics.set(ERRORS, switch(0.01, errors))
    decisions, events = replay(metrics, end=NOON + timedelta(hours=1))
    assert [d.action for d in decisions] == [Action.REQUEST_APPROVAL]
    assert kinds(events) == [(Outcome.SUPERSEDED, v3)]


def test_a_vetoed_incident_does_not_hide_the_next_deploys_trouble() -> None:
    """A person vetoes the rollback of v2; v3 later fails on its own and is decided."""
    metrics = world()
    metrics.deploy("web", "v2", NOON)
    metrics.set(
        OUTAGE,
        switch(0.0, [("web", NOON + timedelta(minutes=5), NOON + timedelta(minutes=30), 1.0)]),
    )
    v3 = NOON + timedelta(hours=1)
    metrics.deploy("web", "v3", v3)
    metrics.set(ERRORS, switch(0.01, [("web", v3 + timedelta(minutes=5), None, 0.3)]))
    cfg = config('[policy.critical]\naction = "rollback"\ndeadline = "15m"\napprover = "admin"')

    def veto(run: Replay, report: CycleReport) -> None:
        for decision in report.decisions:
            if decision.action is Action.REQUEST_APPROVAL and decision.time < v3:
                run.engine.attach("web", 4)
                run.engine.settle("web", 4, decision.time + timedelta(minutes=1))

    decisions, events = replay(metrics, cfg, end=NOON + timedelta(hours=2), after_step=veto)
    assert [(d.time, d.action) for d in decisions] == [
        (NOON + timedelta(minutes=6), Action.REQUEST_APPROVAL),
        (v3 + timedelta(minutes=7), Action.REQUEST_APPROVAL),
    ]
    # The outage ended while the veto stood: the incident resolved before v3 came.
    assert kinds(events) == [(Outcome.RESOLVED, NOON + timedelta(minutes=30))]
    assert events[0].incident == 4


def test_an_incident_with_only_never_conclusive_extra_rules_resolves() -> None:
    """Errors fire, then are OK again: the auth rule that never had data keeps nothing open."""
    metrics = world()
    metrics.deploy("web", "v2", NOON)
    errors = [("web", NOON + timedelta(minutes=5), NOON + timedelta(minutes=20), 0.3)]
    metrics.set(ERRORS, switch(0.01, errors))
    decisions, events = replay(metrics, end=NOON + timedelta(hours=1))
    assert [d.action for d in decisions] == [Action.REQUEST_APPROVAL]
    [resolved] = events
    assert (resolved.kind, resolved.time) == (Outcome.RESOLVED, NOON + timedelta(minutes=20))
    assert resolved.reason == "what fired is OK again: error-rate 0.01, not > 0.05"


def test_a_rule_that_fired_then_lost_its_data_keeps_the_incident_open_until_it_expires() -> None:
    """Missing data is no recovery, but an escalation nobody acts on ends after expire_after."""
    metrics = world()
    metrics.deploy("web", "v2", NOON)
    late = NOON + timedelta(hours=3)  # outside the attribution window: escalated
    metrics.set(
        ERRORS,
        switch(
            0.01,
            [
                ("web", late, late + timedelta(minutes=5), 0.3),
                ("web", late + timedelta(minutes=5), NOON + timedelta(hours=5), None),
                ("web", NOON + timedelta(hours=6), None, 0.3),
            ],
        ),
    )
    cfg = config('[incidents]\nexpire_after = "1h"')
    decisions, events = replay(metrics, cfg, end=NOON + timedelta(hours=7))
    escalated = late + timedelta(minutes=2)
    assert [(d.time, d.action) for d in decisions] == [
        (escalated, Action.ESCALATE),
        (NOON + timedelta(hours=6, minutes=2), Action.ESCALATE),
    ]
    [expired] = events
    assert (expired.kind, expired.time) == (Outcome.EXPIRED, escalated + timedelta(hours=1))
    assert expired.rules == ("error-rate",)
    assert "error-rate inconclusive" in expired.reason and "expire_after 1h" in expired.reason


def test_a_second_rule_firing_is_folded_into_the_open_incident_and_said_once() -> None:
    """Latency fires while the error-rate incident is open: one fold event, no second decision."""
    metrics = world()
    metrics.deploy("web", "v2", NOON)
    metrics.set(ERRORS, switch(0.01, [("web", NOON + timedelta(minutes=5), None, 0.3)]))
    metrics.set(LATENCY, switch(0.2, [("web", NOON + timedelta(minutes=10), None, 0.6)]))

    def journaled(run: Replay, report: CycleReport) -> None:
        if report.decisions:
            run.engine.attach("web", 4)

    decisions, events = replay(metrics, end=NOON + timedelta(hours=1), after_step=journaled)
    assert len(decisions) == 1
    [folded] = events
    assert folded.kind is Outcome.FOLDED
    assert folded.time == NOON + timedelta(minutes=15)
    assert folded.rules == ("latency-regression",)
    assert "suppressed: incident 4 is open for v2" in folded.reason


def test_a_higher_severity_decides_again_and_supersedes_the_first_decision() -> None:
    """High errors ask for approval; a critical outage then rolls back at once."""
    metrics = world()
    metrics.deploy("web", "v2", NOON)
    metrics.set(ERRORS, switch(0.01, [("web", NOON + timedelta(minutes=5), None, 0.3)]))
    metrics.set(OUTAGE, switch(0.0, [("web", NOON + timedelta(minutes=10), None, 1.0)]))

    def journaled(run: Replay, report: CycleReport) -> None:
        if report.decisions:
            run.engine.attach("web", len(report.decisions) + 6)

    decisions, events = replay(metrics, end=NOON + timedelta(minutes=30), after_step=journaled)
    assert [d.action for d in decisions] == [Action.REQUEST_APPROVAL, Action.ROLLBACK]
    [superseded] = events
    assert superseded.kind is Outcome.SUPERSEDED
    assert superseded.incident == 7
    assert "severity rose from high to critical" in superseded.reason


def test_the_deploy_a_rollback_made_stays_in_its_incident() -> None:
    """After its rollback to v1, the incident covers v1: lagging errors are no new incident."""
    cfg = config()
    history_metrics = world()
    engine = Replay(cfg, rules(), history_metrics, STEP).engine
    history = engine.history
    history.record(Deploy("web", "v1", DAY, "event", ref="aaa"))
    history.record(Deploy("web", "v2", NOON, "event", ref="bbb"))
    for minute in range(61):  # v1 ran an hour shown healthy
        history.note_conclusive(["web"], DAY + timedelta(minutes=minute, seconds=1))
    events: list[IncidentEvent] = []
    decisions: list[Decision] = []
    now = NOON + timedelta(minutes=5)
    for index in range(12):
        errors = 0.3 if index < 10 else 0.01
        report = step(engine, now, errors)
        decisions.extend(report.decisions)
        events.extend(report.events)
        if index == 5:
            rolled_back = Deploy("web", "v1", now, "event", ref="ccc")
            history.record(rolled_back)
            engine.record_rollback("web", now, rolled_back)
        now += STEP
    assert [d.action for d in decisions] == [Action.REQUEST_APPROVAL]
    assert [e.kind for e in events] == [Outcome.RESOLVED]


def step(engine: Engine, now: datetime, errors: float) -> CycleReport:
    from rollbackd.core.engine import Inputs  # noqa: PLC0415 -- this helper alone
    from rollbackd.core.model import Measurement  # noqa: PLC0415

    values = {ERRORS: errors, LATENCY: 0.2, OUTAGE: 0.0}
    measurements = {
        (rule.name, "web"): Measurement.of(values[rule.query])
        for rule in engine.rules
        if rule.query in values
    }
    return engine.step(now, Inputs(measurements=measurements))


def test_a_metric_never_exported_is_reported_as_not_measured_for_as_long_as_looked() -> None:
    """The auth rule says it was never measured in the time looked at, not 'missing for'."""
    metrics = world()
    run = Replay(config(), rules(), metrics, STEP)
    reports = list(run.run(NOON, NOON + timedelta(hours=1)))
    [auth] = [f for f in reports[-1].findings if f.rule == "auth-failures"]
    assert auth.state is FindingState.INCONCLUSIVE and auth.unmeasured
    assert auth.reason.startswith("not measured in the 1h looked at: no data")
    [errors] = [f for f in reports[-1].findings if f.rule == "error-rate"]
    assert not errors.unmeasured


def backtest_note(metrics: ScriptedMetrics, replayed: tuple[Rule, ...]) -> str | None:
    """What backtest's summary says of an hour's data (None: every step had it all)."""
    coverage = Coverage({rule.name for rule in replayed})
    for report in Replay(config(), replayed, metrics, STEP).run(NOON, NOON + timedelta(hours=1)):
        coverage.add(report)
    return coverage.note()


def test_a_backtest_counts_the_steps_where_a_rule_had_no_data() -> None:
    """The auth metric is never exported: every step had only part of the data, said so."""
    assert backtest_note(world(), rules()) == (
        "only part of the data for 121 of the 121 evaluations: inconclusive there, not healthy"
    )


def test_a_backtest_does_not_count_a_missing_baseline_as_missing_data() -> None:
    """No deploy, so the latency rule has no baseline and is inconclusive, but it had data."""
    metrics = world()
    metrics.versions.clear()
    exported = tuple(rule for rule in rules() if rule.name != "auth-failures")
    [*_, last] = Replay(config(), exported, metrics, STEP).run(NOON, NOON + timedelta(minutes=5))
    [latency] = [f for f in last.findings if f.rule == "latency-regression"]
    assert latency.state is FindingState.INCONCLUSIVE, latency
    assert backtest_note(metrics, exported) is None


def test_a_version_seen_while_its_rollback_is_under_way_is_the_rollbacks_doing() -> None:
    """git shows the revert's commit before the rollback's deploy is journaled: no new incident;
    CI announcing a version meanwhile is judged anew."""
    cfg = config()
    engine = Replay(cfg, rules(), world(), STEP).engine
    history = engine.history
    history.record(Deploy("web", "v1", DAY, "event", ref="a" * 40))
    for minute in range(61):  # v1 ran an hour shown healthy
        history.note_conclusive(["web"], DAY + timedelta(minutes=minute, seconds=1))
    history.record(Deploy("web", "v2", NOON, "event", ref="b" * 40))
    outage = {OUTAGE: 1.0}
    now = NOON + timedelta(minutes=5)
    kinds_seen: list[Outcome] = []
    decisions: list[Decision] = []
    for index in range(6):
        if index == 3:  # HEAD moved to the revert commit, not yet journaled as a deploy
            history.observe_versions(
                "web", ["c0ffee123456"], now, "git", {"c0ffee123456": "c" * 40}
            )
        report = step_with(engine, now, outage)
        decisions.extend(report.decisions)
        kinds_seen.extend(e.kind for e in report.events)
        now += STEP
    assert [d.action for d in decisions] == [Action.ROLLBACK]
    assert kinds_seen == []
    history.record(Deploy("web", "v3", now, "event", ref="d" * 40))
    report = step_with(engine, now + STEP, outage)
    assert [e.kind for e in report.events] == [Outcome.SUPERSEDED]


def step_with(engine: Engine, now: datetime, values: dict[str, float]) -> CycleReport:
    from rollbackd.core.engine import Inputs  # noqa: PLC0415 -- this helper alone
    from rollbackd.core.model import Measurement  # noqa: PLC0415

    known = {ERRORS: 0.01, LATENCY: 0.2, OUTAGE: 0.0, **values}
    measurements = {
        (rule.name, "web"): Measurement.of(known[rule.query])
        for rule in engine.rules
        if rule.query in known
    }
    return engine.step(now, Inputs(measurements=measurements))
