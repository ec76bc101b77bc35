"""The engine replayed over scripted history: which actions, when, and why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rollbackd.config import Config, parse_config
from rollbackd.core.deploys import Deploy, DeployHistory
from rollbackd.core.engine import CycleReport, Engine
from rollbackd.core.model import (
    Action,
    Decision,
    Finding,
    FindingState,
    Matrix,
    Severity,
    Trigger,
    Vector,
)
from rollbackd.core.rules import Rule, parse_rules
from rollbackd.evaluation import evaluate_now
from rollbackd.replay import Replay
from rollbackd.sources.gather import LiveCycle
from rollbackd.testing import ScriptedMetrics, constant, switch

DAY = datetime(2026, 3, 1, tzinfo=UTC)
NOON = DAY + timedelta(hours=12)
ERRORS = "errors"
LATENCY = "latency"
OUTAGE = "outage"
STEP = timedelta(seconds=30)

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
baseline_window = "30m"
min_change = 0.05
for = "5m"

[[rules]]
name = "outage"
trigger = "outage"
query = "{OUTAGE}"
condition = "> 0"
for = "1m"
"""


def config(extra: str = "") -> Config:
    text = f"""
[daemon]
poll_interval = "30s"
[[services]]
name = "web"
repo = "/srv/web"
[[services]]
name = "api"
repo = "/srv/api"
[deploys]
version_metric = "app_build_info"
known_good_after = "30m"
attribution_window = "2h"
{extra}
"""
    return parse_config(text, "config.toml")


def rules() -> tuple[Rule, ...]:
    return tuple(parse_rules(RULES, "rules.toml"))


def healthy_world() -> ScriptedMetrics:
    metrics = ScriptedMetrics(["web", "api"])
    metrics.set(ERRORS, constant(0.01))
    metrics.set(LATENCY, constant(0.2))
    metrics.set(OUTAGE, constant(0.0))
    metrics.deploy("web", "v1", DAY)
    metrics.deploy("api", "a1", DAY)
    return metrics


def replay(
    metrics: ScriptedMetrics,
    cfg: Config | None = None,
    start: datetime = DAY + timedelta(hours=6),
    end: datetime = DAY + timedelta(hours=18),
) -> tuple[list[Decision], list[CycleReport]]:
    run = Replay(cfg or config(), rules(), metrics, STEP)
    reports = list(run.run(start, end))
    return [d for r in reports for d in r.decisions], reports


def replay_on(
    metrics: ScriptedMetrics, cfg: Config, history: DeployHistory, start: datetime, end: datetime
) -> tuple[list[Decision], list[CycleReport]]:
    """A replay over a history that already holds deploy events, as the daemon's warm-up."""
    run = Replay(cfg, rules(), metrics, STEP, history, simulate_rollbacks=False)
    reports = list(run.run(start, end))
    return [d for r in reports for d in r.decisions], reports


def test_a_fault_after_a_deploy_asks_for_approval_once_after_for() -> None:
    """5xx at 20% from 12:10 after the 12:00 deploy of v2 asks senior_admin at 12:12, once."""
    metrics = healthy_world()
    metrics.deploy("web", "v2", NOON)
    metrics.set(ERRORS, switch(0.01, [("web", NOON + timedelta(minutes=10), None, 0.2)]))
    decisions, _ = replay(metrics)
    assert len(decisions) == 1
    decision = decisions[0]
    assert decision.service == "web"
    assert decision.time == NOON + timedelta(minutes=12)
    assert decision.action is Action.REQUEST_APPROVAL
    assert decision.severity is Severity.HIGH
    assert decision.approver == "senior_admin"
    assert decision.deadline == decision.time + timedelta(minutes=15)
    assert decision.target == "v1"
    assert "error-rate" in decision.reason and "0.2 > 0.05" in decision.reason


def test_a_spike_shorter_than_for_takes_no_action() -> None:
    """A 90-second burst of errors under a 2m `for` never becomes an action."""
    metrics = healthy_world()
    metrics.deploy("web", "v2", NOON)
    spike = [("web", NOON + timedelta(minutes=10), NOON + timedelta(minutes=11, seconds=30), 0.5)]
    metrics.set(ERRORS, switch(0.01, spike))
    decisions, reports = replay(metrics)
    assert decisions == []
    states = {
        f.state
        for r in reports
        for f in r.findings
        if f.rule == "error-rate" and f.service == "web"
    }
    assert FindingState.PENDING in states
    assert FindingState.FIRING not in states


def test_a_metric_gap_is_inconclusive_and_takes_no_action() -> None:
    """A series that disappears after a deploy is reported inconclusive, never firing."""
    metrics = healthy_world()
    metrics.deploy("web", "v2", NOON)
    gap = [("web", NOON + timedelta(minutes=5), None, None)]
    metrics.set(ERRORS, switch(0.01, gap))
    metrics.set(OUTAGE, switch(0.0, gap))
    decisions, reports = replay(metrics)
    assert decisions == []
    last = next(f for f in reports[-1].findings if f.service == "web" and f.rule == "error-rate")
    assert last.state is FindingState.INCONCLUSIVE
    assert last.missing_for == timedelta(hours=5, minutes=55)
    assert "no series for this service" in last.reason


def test_prometheus_down_makes_every_rule_inconclusive_with_the_reason() -> None:
    """No data at all means zero actions, and every finding says why."""
    metrics = healthy_world()
    metrics.down = "Prometheus at http://prom:9090 is unreachable"
    decisions, reports = replay(metrics, start=NOON, end=NOON + timedelta(minutes=30))
    assert decisions == []
    for finding in reports[-1].findings:
        assert finding.state is FindingState.INCONCLUSIVE
        assert "unreachable" in finding.reason
    assert set(reports[-1].source_errors) == {"error-rate", "latency-regression", "outage"}


def test_a_critical_outage_rolls_back_now_to_the_last_good_version() -> None:
    """An outage after the deploy of v2 rolls back to v1 at once, approver admin."""
    metrics = healthy_world()
    metrics.deploy("web", "v2", NOON)
    metrics.set(OUTAGE, switch(0.0, [("web", NOON + timedelta(minutes=3), None, 1.0)]))
    decisions, _ = replay(metrics)
    assert [(d.time, d.action, d.target) for d in decisions] == [
        (NOON + timedelta(minutes=4), Action.ROLLBACK, "v1")
    ]


def test_a_second_bad_deploy_inside_the_cooldown_escalates() -> None:
    """After a rollback, a new fault within the cooldown escalates instead of looping."""
    metrics = healthy_world()
    metrics.deploy("web", "v2", NOON)
    metrics.deploy("web", "v1", NOON + timedelta(minutes=5))
    metrics.deploy("web", "v3", NOON + timedelta(minutes=10))
    metrics.set(
        OUTAGE,
        switch(
            0.0,
            [
                ("web", NOON + timedelta(minutes=1), NOON + timedelta(minutes=5), 1.0),
                ("web", NOON + timedelta(minutes=11), None, 1.0),
            ],
        ),
    )
    decisions, _ = replay(metrics)
    assert [d.action for d in decisions] == [Action.ROLLBACK, Action.ESCALATE]
    assert decisions[1].guards == ("cooldown",)
    assert "cooling down" in decisions[1].reason


def test_latency_against_the_pre_deploy_baseline_fires_the_relative_rule() -> None:
    """p95 going from 0.2s before the deploy to 0.5s after is +150%: a high finding."""
    metrics = healthy_world()
    metrics.deploy("web", "v2", NOON)
    metrics.set(LATENCY, switch(0.2, [("web", NOON, None, 0.5)]))
    decisions, reports = replay(metrics)
    assert [(d.service, d.rules, d.time) for d in decisions] == [
        ("web", ("latency-regression",), NOON + timedelta(minutes=5))
    ]
    finding = next(
        f for f in reports[-1].findings if f.rule == "latency-regression" and f.service == "web"
    )
    assert finding.baseline is not None and abs(finding.baseline - 0.2) < 1e-9
    assert finding.threshold is not None and abs(finding.threshold - 0.3) < 1e-9


def test_relative_rules_without_a_deploy_are_inconclusive() -> None:
    """With no version metric there is no baseline, so the latency rule cannot fire."""
    metrics = healthy_world()
    metrics.versions.clear()
    metrics.set(LATENCY, constant(5.0))
    decisions, reports = replay(metrics, start=NOON, end=NOON + timedelta(minutes=30))
    assert decisions == []
    finding = next(f for f in reports[-1].findings if f.rule == "latency-regression")
    assert finding.state is FindingState.INCONCLUSIVE
    assert "no deploy is known" in finding.reason


def test_a_fault_long_after_the_deploy_escalates() -> None:
    """A finding 3h after the deploy is outside the 2h attribution window."""
    metrics = healthy_world()
    metrics.deploy("web", "v2", NOON)
    metrics.set(OUTAGE, switch(0.0, [("web", NOON + timedelta(hours=3), None, 1.0)]))
    decisions, _ = replay(metrics)
    assert len(decisions) == 1
    assert decisions[0].action is Action.ESCALATE
    assert "attribution" in decisions[0].guards or "nothing_to_roll_back" in decisions[0].guards


def test_a_version_that_never_ran_clean_is_not_a_rollback_target() -> None:
    """If v1 had no data before v2, there is no last known good, and a person is asked."""
    metrics = healthy_world()
    metrics.deploy("web", "v2", NOON)
    metrics.set(ERRORS, switch(None, [("web", NOON + timedelta(minutes=10), None, 0.3)]))
    metrics.set(OUTAGE, constant(None))
    metrics.set(LATENCY, constant(None))
    decisions, _ = replay(metrics)
    assert len(decisions) == 1
    assert decisions[0].action is Action.ESCALATE
    assert "nothing_to_roll_back" in decisions[0].guards


def test_a_rolling_deploy_dates_the_deploy_when_the_new_version_first_appears() -> None:
    """Old and new side by side: the current version is the newest, since it appeared."""
    metrics = healthy_world()
    metrics.versions["web"].append((NOON, None, "v2"))  # v1 keeps running beside v2
    metrics.set(OUTAGE, switch(0.0, [("web", NOON + timedelta(minutes=2), None, 1.0)]))
    decisions, _ = replay(metrics)
    assert [(d.action, d.target) for d in decisions] == [(Action.ROLLBACK, "v1")]
    assert "roll back v2 to v1" in decisions[0].reason


def test_evaluate_now_reports_the_open_incident_from_recent_history() -> None:
    """One `evaluate` sees that the error rate has held for `for` and names the action."""
    metrics = healthy_world()
    metrics.deploy("web", "v2", NOON)
    metrics.set(ERRORS, switch(0.01, [("web", NOON + timedelta(minutes=10), None, 0.2)]))
    result = evaluate_now(config(), rules(), NOON + timedelta(minutes=20), prometheus=metrics)
    assert [(d.service, d.action) for d in result.decisions] == [("web", Action.REQUEST_APPROVAL)]
    firing = [f for f in result.report.findings if f.firing]
    assert [(f.service, f.rule) for f in firing] == [("web", "error-rate")]


def test_evaluate_now_asks_one_instant_query_per_rule() -> None:
    """The live step queries each PromQL rule once, whatever the number of services."""
    metrics = healthy_world()
    now = NOON + timedelta(minutes=20)
    evaluate_now(config(), rules(), now, prometheus=metrics)
    instants = [q for kind, q in metrics.calls if kind == "instant" and q in (ERRORS, OUTAGE)]
    assert sorted(instants) == [ERRORS, OUTAGE]


def test_evaluate_now_keeps_each_relative_rules_baseline_even_if_it_never_fired() -> None:
    """A manual rollback's watch compares latency with v1's, though only errors fired on v2."""
    metrics = healthy_world()
    metrics.deploy("web", "v2", NOON)
    metrics.set(LATENCY, switch(0.2, [("web", NOON, None, 0.21)]))
    metrics.set(ERRORS, switch(0.01, [("web", NOON + timedelta(minutes=10), None, 0.2)]))
    result = evaluate_now(config(), rules(), NOON + timedelta(minutes=20), prometheus=metrics)
    assert [f.rule for f in result.report.findings if f.firing] == ["error-rate"]
    assert dict(result.baselines["web"]) == {"latency-regression": pytest.approx(0.2)}
    assert dict(result.baselines["api"]) == {"latency-regression": pytest.approx(0.2)}


def test_a_rule_fires_at_the_cycle_its_for_is_reached_even_when_cycles_wake_late() -> None:
    """Cycles run at their planned instants, so `for = 2m` at 30s polls fires at the 5th cycle."""
    from rollbackd.core.deploys import DeployHistory  # noqa: PLC0415 -- this test alone
    from rollbackd.core.engine import Engine, Inputs  # noqa: PLC0415
    from rollbackd.core.model import Measurement  # noqa: PLC0415
    from rollbackd.runtime import planned  # noqa: PLC0415

    cfg = config()
    engine = Engine(cfg.engine_settings(), rules()[:1], DeployHistory(cfg.deploys.known_good_after))
    first = NOON
    wakes = [0.3, 0.0, 0.1, 0.2, 0.0, 0.05]  # how late each thread woke, in seconds
    states = []
    for index, late in enumerate(wakes):
        woke = first + index * STEP + timedelta(seconds=late)
        inputs = Inputs(measurements={("error-rate", "web"): Measurement.of(0.2)})
        report = engine.step(planned(first, STEP, woke), inputs)
        (web,) = [f for f in report.notable if f.service == "web"]
        states.append(web.state)
    assert states == [FindingState.PENDING] * 4 + [FindingState.FIRING] * 2


def test_the_live_cycle_compares_to_the_baseline_of_the_deploy_running_now() -> None:
    """After a second deploy, the latency rule compares to the value before that deploy."""
    from rollbackd.core.deploys import DeployHistory  # noqa: PLC0415 -- this test alone
    from rollbackd.core.engine import Engine  # noqa: PLC0415
    from rollbackd.sources.gather import LiveCycle  # noqa: PLC0415

    metrics = healthy_world()
    metrics.deploy("web", "v2", NOON)
    metrics.deploy("web", "v3", NOON + timedelta(hours=2))
    metrics.set(LATENCY, switch(0.2, [("web", NOON + timedelta(minutes=1), None, 0.4)]))
    cfg = config()
    engine = Engine(cfg.engine_settings(), rules(), DeployHistory(cfg.deploys.known_good_after))
    live = LiveCycle(engine, cfg, metrics, None)

    def baseline_at(moment: datetime) -> float | None:
        report = engine.step(moment, live.gather(moment))
        (finding,) = [
            f for f in report.findings if f.rule == "latency-regression" and f.service == "web"
        ]
        return finding.baseline

    first = baseline_at(NOON + timedelta(seconds=30))  # v2 is seen here: its deploy
    again = baseline_at(NOON + timedelta(minutes=30))
    after = baseline_at(NOON + timedelta(hours=2, seconds=30))  # v3 is seen here
    assert first is not None and abs(first - 0.2) < 1e-9
    assert again == first
    assert after is not None and abs(after - 0.4) < 1e-9


def test_an_incident_ends_when_every_rule_is_ok_and_a_new_fault_is_decided_again() -> None:
    """Firing opens an incident; all quiet and OK closes it; the next fault gets a decision."""
    from rollbackd.core.deploys import DeployHistory  # noqa: PLC0415 -- this test alone
    from rollbackd.core.engine import Engine, Inputs  # noqa: PLC0415
    from rollbackd.core.model import Measurement  # noqa: PLC0415

    cfg = config()
    engine = Engine(cfg.engine_settings(), rules()[:1], DeployHistory(cfg.deploys.known_good_after))
    outcomes = []
    for index, errors in enumerate([0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.01, 0.2, 0.2, 0.2, 0.2, 0.2]):
        inputs = Inputs(
            measurements={
                ("error-rate", "web"): Measurement.of(errors),
                ("error-rate", "api"): Measurement.of(0.01),
            }
        )
        report = engine.step(NOON + index * STEP, inputs)
        outcomes.append(
            (len(report.decisions), [(r.service, r.reason) for r in report.resolutions])
        )
    assert [i for i, (decided, _) in enumerate(outcomes) if decided] == [4, 11]
    assert [i for i, (_, ended) in enumerate(outcomes) if ended] == [6]
    assert outcomes[6][1] == [("web", "what fired is OK again: error-rate 0.01, not > 0.05")]


def web_down(now: datetime) -> Finding:
    """Alertmanager's alert WebDown for web, firing since ``now``."""
    return Finding(
        rule="alert:WebDown",
        service="web",
        trigger=Trigger.OUTAGE,
        state=FindingState.FIRING,
        time=now,
        value=None,
        threshold=None,
        baseline=None,
        condition="firing",
        severity=Severity.CRITICAL,
        reason="Alertmanager alert WebDown firing",
        since=now,
        started=now,
    )


def test_an_alert_incident_ends_once_the_alert_stops_and_every_rule_is_quiet() -> None:
    """An alert decided on, then gone with every rule quiet: the incident ends; a new one is new."""
    from rollbackd.core.engine import Inputs  # noqa: PLC0415 -- this test alone
    from rollbackd.core.model import Measurement  # noqa: PLC0415

    cfg = config()
    engine = Engine(cfg.engine_settings(), rules()[:1], DeployHistory(cfg.deploys.known_good_after))
    outcomes = []
    for index, alerting in enumerate([True, True, False, True]):
        now = NOON + index * STEP
        alert = web_down(now)
        quiet = {("error-rate", s): Measurement.of(0.01) for s in ("web", "api")}
        report = engine.step(now, Inputs(measurements=quiet, alerts=[alert] if alerting else []))
        outcomes.append((len(report.decisions), [r.service for r in report.resolutions]))
    assert outcomes == [(1, []), (0, []), (0, ["web"]), (1, [])]


def test_an_alert_incident_stays_open_while_alertmanager_cannot_be_read() -> None:
    """An alert decided on that Alertmanager can no longer be asked about is not OK again:
    the incident ends only once Alertmanager answers without it."""
    from rollbackd.core.engine import Inputs  # noqa: PLC0415 -- this test alone
    from rollbackd.core.model import Measurement  # noqa: PLC0415

    cfg = config()
    engine = Engine(cfg.engine_settings(), rules()[:1], DeployHistory(cfg.deploys.known_good_after))
    down = "Alertmanager at http://am:9093 is unreachable"
    resolutions = []
    for index, (alerting, unseen) in enumerate([(True, None), (False, down), (False, None)]):
        now = NOON + index * STEP
        alert = web_down(now)
        quiet = {("error-rate", s): Measurement.of(0.01) for s in ("web", "api")}
        shown = [alert] if alerting else []
        inputs = Inputs(measurements=quiet, alerts=shown, alerts_unseen=unseen)
        report = engine.step(now, inputs)
        resolutions.append([(r.service, r.reason) for r in report.resolutions])
    assert resolutions == [
        [],
        [],
        [("web", "what fired is OK again: alert:WebDown OK")],
    ]


def test_evaluate_explains_every_step_of_a_service_ending_with_the_live_one() -> None:
    """--explain web: the replayed steps and the live step, each rule with its state and why."""
    metrics = healthy_world()
    metrics.deploy("web", "v2", NOON)
    metrics.set(ERRORS, switch(0.01, [("web", NOON + timedelta(minutes=10), None, 0.2)]))
    now = NOON + timedelta(minutes=20)
    result = evaluate_now(config(), rules(), now, prometheus=metrics, explain=("web",))
    assert {e.service for e in result.explained} == {"web"}
    last = result.explained[-1]
    assert last.time == now
    assert [f.rule for f in last.findings] == ["error-rate", "latency-regression", "outage"]
    assert last.outcome.startswith("suppressed: the incident of ")
    decided = [e for e in result.explained if e.outcome.startswith("decision: request_approval")]
    assert [e.time for e in decided] == [NOON + timedelta(minutes=12)]
    pending = [e for e in result.explained if "error-rate pending" in e.outcome]
    assert pending and pending[0].time == NOON + timedelta(minutes=10)


@pytest.mark.parametrize("path", ["live", "replay"])
def test_a_version_only_the_metric_shows_after_an_announced_deploy_takes_the_blame(
    path: str,
) -> None:
    """CI announced v2 but died before announcing v3: v3's fault rolls back v3 to v2, not v2."""
    metrics = healthy_world()
    metrics.deploy("web", "v2", NOON)
    v3_at = NOON + timedelta(hours=1)
    metrics.deploy("web", "v3", v3_at)
    metrics.set(OUTAGE, switch(0.0, [("web", v3_at + timedelta(minutes=5), None, 1.0)]))
    cfg = config()
    history = DeployHistory(cfg.deploys.known_good_after)
    history.record(Deploy("web", "v2", NOON, "event", ref="2222222"))
    start, end = NOON - timedelta(minutes=5), v3_at + timedelta(minutes=10)
    if path == "replay":
        decisions, _ = replay_on(metrics, cfg, history, start, end)
    else:
        engine = Engine(cfg.engine_settings(), rules(), history)
        live = LiveCycle(engine, cfg, metrics, None)
        decisions, moment = [], start
        while moment <= end:
            decisions.extend(engine.step(moment, live.gather(moment)).decisions)
            moment += STEP
    current = history.current("web")
    assert current is not None and (current.version, current.time) == ("v3", v3_at)
    assert [(d.action, d.target) for d in decisions] == [(Action.ROLLBACK, "v2")]
    assert "roll back v3 to v2" in decisions[0].reason


def test_a_replay_over_journaled_deploys_sees_their_versions_without_new_deploys() -> None:
    """The warm-up first sees v1 beside v2: the journaled v2 stays current, with its ref."""
    metrics = healthy_world()
    metrics.versions["web"].append((DAY, None, "v2"))  # v1 lingers beside v2 all along
    cfg = config()
    history = DeployHistory(cfg.deploys.known_good_after)
    history.record(Deploy("web", "v1", DAY - timedelta(days=2), "event", ref="1111111"))
    announced = Deploy("web", "v2", DAY - timedelta(days=1), "event", ref="2222222")
    history.record(announced)
    replay_on(metrics, cfg, history, NOON, NOON + timedelta(minutes=5))
    assert history.current("web") == announced
    assert [d.version for d in history.deploys("web")] == ["v1", "v2"]


class _Exploding(ScriptedMetrics):
    """A source whose error-rate query raises what no source should, as a parser bug would."""

    def instant(self, query: str, at: datetime) -> Vector:
        if query == ERRORS:
            raise RecursionError("maximum recursion depth exceeded")
        return super().instant(query, at)

    def range(self, query: str, start: datetime, end: datetime, step: timedelta) -> Matrix:
        if query == ERRORS:
            raise RecursionError("maximum recursion depth exceeded")
        return super().range(query, start, end, step)


def exploding_world() -> _Exploding:
    metrics = _Exploding(["web", "api"])
    metrics.queries.update(healthy_world().queries)
    metrics.versions.update(healthy_world().versions)
    return metrics


def test_a_query_that_raises_leaves_its_rule_inconclusive_and_the_cycle_going() -> None:
    """An exception from one rule's query is that rule's source error; the others decide."""
    cfg = config()
    engine = Engine(cfg.engine_settings(), rules(), DeployHistory(cfg.deploys.known_good_after))
    live = LiveCycle(engine, cfg, exploding_world(), None)
    report = engine.step(NOON, live.gather(NOON))
    assert report.source_errors["error-rate"] == (
        "the query failed: RecursionError: maximum recursion depth exceeded"
    )
    states = {(f.rule, f.service): f.state for f in report.findings}
    assert states[("error-rate", "web")] is FindingState.INCONCLUSIVE
    assert states[("latency-regression", "web")] is not FindingState.INCONCLUSIVE
    assert report.decisions == ()


def test_a_range_query_that_raises_leaves_its_rule_inconclusive_in_a_replay() -> None:
    """Replays (warm-up, backtest) go on past a query that raises: its rule is inconclusive."""
    cfg = config()
    history = DeployHistory(cfg.deploys.known_good_after)
    decisions, reports = replay_on(
        exploding_world(), cfg, history, NOON, NOON + timedelta(minutes=5)
    )
    assert decisions == []
    assert reports
    for report in reports:
        assert "RecursionError" in report.source_errors["error-rate"]
        assert "latency-regression" not in report.source_errors


WEIGHED_RULES = """
[[rules]]
name = "error-rate"
trigger = "high_error_rate"
query = "ratio"
events = 'sum by (service) (increase(bad[1m]))'
volume = 'sum by (service) (increase(all[1m]))'
condition = "> 0.05"
sustain = "2m"
"""


def test_a_slow_regression_found_after_known_good_after_still_rolls_back_the_deploy() -> None:
    """Errors creep from 0.5 % to 20 % over two hours after v2's deploy (a leak) and the
    1m ratio wobbles: the evidence shows it only after v2 ran 30 minutes, but its test
    judged the traffic since it last restarted as a whole, so v2 is not vouched for: roll
    back to v1 (approval), not "v2 is already the last known good"."""
    metrics = ScriptedMetrics(["web"])
    metrics.deploy("web", "v1", DAY)
    metrics.deploy("web", "v2", NOON)

    def ratio(_service: str, at: datetime) -> float:
        since = (at - NOON).total_seconds()
        return 0.005 if since <= 0 else min(0.2, 0.005 + 0.195 * since / 7200)

    def one_minute(service: str, at: datetime) -> float:
        """The rule's 1m ratio: one minute in four reads low, as a short window does."""
        return ratio(service, at) * (0.5 if int(at.timestamp() // 60) % 4 == 0 else 1.0)

    metrics.set("ratio", one_minute)
    metrics.set("sum by (service) (increase(bad[1m]))", lambda s, at: 180 * ratio(s, at))
    metrics.set("sum by (service) (increase(all[1m]))", constant(180.0))
    cfg = config()
    run = Replay(cfg, tuple(parse_rules(WEIGHED_RULES, "rules.toml")), metrics, STEP)
    reports = list(run.run(NOON - timedelta(hours=1), NOON + timedelta(hours=2)))
    decisions = [d for r in reports for d in r.decisions if d.service == "web"]
    assert decisions, "the regression is found"
    first = decisions[0]
    assert first.time - NOON > timedelta(minutes=30), "found after v2 could be known good"
    assert first.action is Action.REQUEST_APPROVAL, first.reason
    assert first.target == "v1"
