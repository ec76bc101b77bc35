"""Seasonal baselines: a relative rule allows for the rise the same hours of earlier days show."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rollbackd.config import Config, parse_config
from rollbackd.core.model import Action, FindingState, Measurement, RuleState
from rollbackd.core.rules import Rule, evaluate, parse_rules
from rollbackd.core.seasonal import PastDay, seasonal_baseline
from rollbackd.evaluation import evaluate_now
from rollbackd.replay import Replay
from rollbackd.sources.prometheus import Matrix, Vector
from rollbackd.testing import ScriptedMetrics

DAY = timedelta(days=1)
WEEK = timedelta(days=7)
DEPLOYED = datetime(2026, 3, 9, 8, 55, tzinfo=UTC)  # a Monday, just before the morning rush
NOW = DEPLOYED + timedelta(minutes=35)


def day(offset: timedelta, before: float | None, around: float | None) -> PastDay:
    def measured(value: float | None) -> Measurement:
        return Measurement.missing("no series") if value is None else Measurement(value)

    return PastDay(offset, measured(before), measured(around))


def baseline(*days: PastDay, rising: bool = True, now: datetime = NOW) -> Measurement:
    return seasonal_baseline(Measurement(0.12), days, rising, DEPLOYED, now)


# --- the math ---------------------------------------------------------------------------------


def test_the_usual_rise_of_earlier_days_raises_the_baseline_and_says_how() -> None:
    """Yesterday went 0.12 -> 0.21 over the same hours: the baseline is 0.12 x 1.75 = 0.21."""
    found = baseline(day(DAY, 0.12, 0.21))
    assert found.value == pytest.approx(0.21)
    assert "pre-deploy 0.12 x 1.75" in found.reason
    assert "1d ago x1.75 (0.12 -> 0.21)" in found.reason


def test_the_largest_rise_of_the_earlier_days_counts() -> None:
    """A Monday's rush is not in Sunday's hours but is in last Monday's: the larger rise wins."""
    found = baseline(day(DAY, 0.12, 0.12), day(WEEK, 0.1, 0.2))
    assert found.value == pytest.approx(0.24)
    assert "1d ago x1" in found.reason and "7d ago x2" in found.reason


def test_a_usual_fall_never_tightens_a_rule_that_fires_on_a_rise() -> None:
    """Earlier days fell at these hours: the baseline stays the pre-deploy value."""
    found = baseline(day(DAY, 0.2, 0.1))
    assert found.value == pytest.approx(0.12)
    assert "no usual rise" in found.reason


def test_a_rule_that_fires_on_a_fall_allows_for_the_usual_fall() -> None:
    """Throughput halves every evening: a `< -30%` rule's baseline halves with it."""
    found = baseline(day(DAY, 100.0, 50.0), day(WEEK, 100.0, 80.0), rising=False)
    assert found.value == pytest.approx(0.06)
    assert "usual fall" in found.reason


def test_an_earlier_day_whose_hours_are_after_the_deploy_is_not_used() -> None:
    """Two days after the deploy, yesterday's hours show this deploy: only 7d ago counts."""
    found = baseline(day(DAY, 0.12, 0.5), day(WEEK, 0.12, 0.18), now=DEPLOYED + 2 * DAY)
    assert found.value == pytest.approx(0.18)
    assert "1d ago: those hours are after the deploy" in found.reason


def test_without_history_the_baseline_is_the_pre_deploy_value_and_says_so() -> None:
    """A new service: no earlier days, so the pre-deploy baseline, named as such."""
    found = baseline(day(DAY, None, None), day(WEEK, 0.12, None))
    assert found.value == pytest.approx(0.12)
    assert found.reason.startswith("pre-deploy 0.12: no seasonal history")
    assert "1d ago: no series before" in found.reason and "7d ago: no series at now" in found.reason


def test_a_failed_read_of_an_earlier_day_leaves_the_baseline_missing() -> None:
    """A timeout must not silently tighten the comparison back to the pre-deploy value."""
    failed = PastDay(DAY, Measurement(0.12), Measurement.missing("timed out"), failed=True)
    found = baseline(failed, day(WEEK, 0.12, 0.21))
    assert found.is_missing
    assert "1d ago could not be read: timed out" in found.reason


def test_a_missing_pre_deploy_baseline_stays_missing() -> None:
    """Earlier days cannot stand in for the value before this deploy."""
    missing = Measurement.missing("no value in the 30m before the deploy")
    assert seasonal_baseline(missing, [day(DAY, 0.1, 0.2)], True, DEPLOYED, NOW) == missing


# --- the rule -------------------------------------------------------------------------------


def latency_rule(baseline_kind: object = "seasonal", **keys: object) -> Rule:
    fields: dict[str, object] = {
        "name": "latency-regression",
        "trigger": "performance_degradation",
        "query": "latency",
        "condition": "> +50%",
        "baseline": baseline_kind,
        "min_change": 0.05,
        "for": "5m",
    }
    fields.update(keys)
    return Rule.model_validate(fields)


def test_the_finding_says_which_baseline_was_used_and_what_it_showed() -> None:
    """The reason (what --explain prints) and the finding carry the seasonal basis."""
    seasonal = baseline(day(DAY, 0.12, 0.21))
    _, step = evaluate(latency_rule(), Measurement(0.42), seasonal, RuleState(), NOW)
    assert step.state is FindingState.PENDING
    assert "(+50% of baseline 0.21 = pre-deploy 0.12 x 1.75" in step.reason


def test_a_seasonal_rule_defaults_to_yesterday_and_last_week() -> None:
    """`baseline = "seasonal"` alone looks 1d and 7d back."""
    assert latency_rule().seasonality == (DAY, WEEK)
    assert latency_rule().seasonal and not latency_rule("before_deploy").seasonal


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"baseline": "before_deploy", "seasonality": ["1d"]}, "only by baseline"),
        ({"seasonality": []}, "at least one offset"),
        ({"seasonality": ["30m"]}, "earlier days"),
        ({"seasonality": ["1d", "1d"]}, "twice"),
        ({"seasonality": ["1d", "2d", "3d", "4d", "7d"]}, "at most"),
    ],
)
def test_a_wrong_seasonality_is_refused_with_the_reason(
    keys: dict[str, object], message: str
) -> None:
    """Each mistake in `seasonality` is named."""
    with pytest.raises(ValueError, match=message):
        latency_rule(**keys)


def test_the_shipped_latency_rules_are_seasonal() -> None:
    """The default rules compare latency with the seasonal baseline."""
    shipped = Path(__file__).resolve().parents[2] / "rules"
    rules = {
        rule.name: rule
        for path in shipped.glob("*.toml")
        for rule in parse_rules(path.read_text(encoding="utf-8"), path.name)
    }
    assert rules["latency-regression"].seasonal
    assert rules["noticeable-slowdown"].seasonal


# --- replayed and live, on a world with a morning rush ---------------------------------------

LATENCY = "latency"
RULES = """
[[rules]]
name = "latency-regression"
trigger = "performance_degradation"
query = "latency"
condition = "> +50%"
baseline = "{baseline}"
baseline_window = "30m"
min_change = 0.05
for = "5m"
"""
RUSH_FROM, RUSH_TO = timedelta(hours=9), timedelta(hours=11)


def config() -> Config:
    return parse_config(
        """
[daemon]
poll_interval = "30s"
[[services]]
name = "web"
repo = "/srv/web"
[deploys]
version_metric = "app_build_info"
known_good_after = "30m"
attribution_window = "2h"
""",
        "config.toml",
    )


def rush_world(regression: float = 1.0, history_from: datetime | None = None) -> ScriptedMetrics:
    """p95 0.12 s, 0.21 s from 09:00 to 11:00 every day; ``regression`` x after the deploy."""

    def latency(_service: str, at: datetime) -> float | None:
        if history_from is not None and at < history_from:
            return None
        since_midnight = at - at.replace(hour=0, minute=0, second=0, microsecond=0)
        value = 0.21 if RUSH_FROM <= since_midnight < RUSH_TO else 0.12
        return value * regression if at >= DEPLOYED else value

    metrics = ScriptedMetrics(["web"])
    metrics.set(LATENCY, latency)
    metrics.deploy("web", "v1", DEPLOYED - 30 * DAY)
    metrics.deploy("web", "v2", DEPLOYED)
    return metrics


def rules(kind: str = "seasonal") -> tuple[Rule, ...]:
    return tuple(parse_rules(RULES.format(baseline=kind), "rules.toml"))


def replayed(metrics: ScriptedMetrics, kind: str = "seasonal") -> list[Action]:
    run = Replay(config(), rules(kind), metrics, timedelta(seconds=30))
    reports = run.run(DEPLOYED - timedelta(hours=1), DEPLOYED + timedelta(hours=1))
    return [d.action for report in reports for d in report.decisions]


def test_the_pre_deploy_baseline_blames_a_deploy_for_the_morning_rush() -> None:
    """The problem: 0.21 s at 09:30 is +75% over 08:25-08:55, and the plain rule acts."""
    assert replayed(rush_world(), "before_deploy") != []


def test_a_deploy_just_before_the_morning_rush_is_not_blamed() -> None:
    """Every day shows the rise at 09:00, so the seasonal rule takes no action."""
    assert replayed(rush_world()) == []


def test_a_regression_on_top_of_the_morning_rush_is_still_caught() -> None:
    """Twice the usual rush latency exceeds 0.12 x 1.75 x 1.5: a rollback is asked for."""
    assert replayed(rush_world(regression=2.0)) == [Action.REQUEST_APPROVAL]


def test_a_new_service_falls_back_to_the_pre_deploy_baseline_and_says_so() -> None:
    """No earlier days: the pre-deploy comparison decides, and the finding says why."""
    metrics = rush_world(history_from=DEPLOYED - timedelta(hours=2))
    result = evaluate_now(config(), rules(), DEPLOYED + timedelta(minutes=20), prometheus=metrics)
    (finding,) = result.report.findings
    assert finding.baseline == pytest.approx(0.12)
    assert "pre-deploy 0.12: no seasonal history" in finding.reason
    assert "pre-deploy 0.12: no seasonal history" in finding.baseline_basis


def test_the_live_cycle_reads_one_query_per_offset_and_explains_the_baseline() -> None:
    """`evaluate` at 09:30 compares with 0.21 s and names the earlier days it came from."""
    metrics = rush_world()
    result = evaluate_now(config(), rules(), NOW, prometheus=metrics)
    (finding,) = result.report.findings
    assert finding.state is FindingState.OK
    assert finding.baseline == pytest.approx(0.21)
    assert "pre-deploy 0.12 x 1.75" in finding.reason
    live_arounds = [q for kind, q in metrics.calls if kind == "instant" and "max_over_time" in q]
    assert len(live_arounds) == 2  # 1d and 7d, whatever the number of services


class _Failing(ScriptedMetrics):
    """Times out on the earlier days' queries, answers everything else."""

    def instant(self, query: str, at: datetime) -> Vector:
        if query.startswith("max_over_time("):
            return Vector(error="no answer within 10s")
        return super().instant(query, at)

    def range(self, query: str, start: datetime, end: datetime, step: timedelta) -> Matrix:
        if query.startswith("max_over_time("):
            return Matrix(error="no answer within 10s")
        return super().range(query, start, end, step)


def test_earlier_days_that_cannot_be_read_leave_the_rule_inconclusive() -> None:
    """Prometheus failing the seasonal read never turns into a pre-deploy comparison."""
    world = rush_world(regression=2.0)
    metrics = _Failing(world.services, world.queries, world.versions)
    result = evaluate_now(config(), rules(), NOW, prometheus=metrics)
    (finding,) = result.report.findings
    assert finding.state is FindingState.INCONCLUSIVE
    assert "could not be read: no answer within 10s" in finding.reason
    assert result.decisions == ()


def test_a_value_within_the_pre_deploy_baseline_needs_no_earlier_days() -> None:
    """Before the rush the plain comparison already says OK: no seasonal work, and it says so."""
    metrics = rush_world()
    result = evaluate_now(config(), rules(), DEPLOYED + timedelta(minutes=3), prometheus=metrics)
    (finding,) = result.report.findings
    assert finding.state is FindingState.OK
    assert finding.baseline == pytest.approx(0.12)
    assert "pre-deploy (the value is within it: earlier days not needed)" in finding.reason
