"""Evaluating rules: ``for`` timing, missing data, gaps, baselines and whole cycles."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from rollbackd.core.durations import format_instant
from rollbackd.core.model import FindingState, Measurement, RuleState, Severity, Trigger
from rollbackd.core.rules import Rule, Step, evaluate, evaluate_cycle

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
TICK = timedelta(seconds=15)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def make_rule(condition: str = "> 0.05", for_: str | None = "2m", **keys: object) -> Rule:
    fields: dict[str, object] = {
        "name": "error-rate",
        "trigger": "high_error_rate",
        "query": "rate(errors[2m])",
        "condition": condition,
        "for": for_,
    }
    fields.update(keys)
    return Rule.model_validate({k: v for k, v in fields.items() if v is not None})


def measure(value: float | None) -> Measurement:
    return (
        Measurement.missing("query returned no series") if value is None else Measurement.of(value)
    )


def run(
    rule: Rule,
    steps: Sequence[tuple[float, float | None]],
    baseline: Measurement | None = None,
    state: RuleState | None = None,
) -> tuple[RuleState, list[Step]]:
    """Evaluate ``rule`` at each (seconds after T0, value or None for missing)."""
    current = state or RuleState()
    out = []
    for seconds, value in steps:
        current, step = evaluate(rule, measure(value), baseline, current, at(seconds))
        out.append(step)
    return current, out


def every_tick(start: float, end: float, value: float | None) -> list[tuple[float, float | None]]:
    """One evaluation per 15 s poll from ``start`` to ``end`` inclusive."""
    count = int((end - start) // TICK.total_seconds())
    return [(start + i * TICK.total_seconds(), value) for i in range(count + 1)]


# --- for timing ------------------------------------------------------------------------------


def test_a_rule_is_pending_until_its_condition_has_held_for_its_for() -> None:
    """With for = 2m and a 15 s poll, every evaluation before 2m is pending, none firing."""
    _, steps = run(make_rule(), every_tick(0, 105, 0.2))
    assert [s.state for s in steps] == [FindingState.PENDING] * 8
    assert all(s.since == T0 and s.started == T0 for s in steps)


def test_a_rule_fires_exactly_when_held_equals_for() -> None:
    """The evaluation at exactly pending + for fires; the one a tick earlier does not."""
    _, steps = run(make_rule(), [(0, 0.2), (105, 0.2), (120, 0.2)])
    assert steps[1].state is FindingState.PENDING
    assert steps[2].state is FindingState.FIRING
    assert steps[2].since == at(120)
    assert steps[2].started == T0


def test_a_millisecond_before_for_is_still_pending() -> None:
    """The comparison is on the duration itself, not rounded to seconds."""
    _, steps = run(make_rule(), [(0, 0.2), (119.999, 0.2), (120, 0.2)])
    assert [s.state for s in steps] == [
        FindingState.PENDING,
        FindingState.PENDING,
        FindingState.FIRING,
    ]


def test_for_zero_fires_on_the_first_evaluation() -> None:
    """A rule without for (or for = 0s) fires the first time its condition holds."""
    _, steps = run(make_rule(for_=None), [(0, 0.2)])
    assert steps[0].state is FindingState.FIRING
    assert steps[0].since == T0


def test_a_firing_rule_keeps_its_firing_time() -> None:
    """Later evaluations that still hold stay firing since the first firing evaluation."""
    _, steps = run(make_rule(), every_tick(0, 300, 0.2))
    firing = [s for s in steps if s.state is FindingState.FIRING]
    assert len(firing) == len(steps) - 8
    assert {s.since for s in firing} == {at(120)}
    assert {s.started for s in firing} == {T0}


def test_the_reason_shows_value_condition_and_progress() -> None:
    """A pending finding says the comparison and how long of for it has held."""
    _, steps = run(make_rule(), [(0, 0.2), (60, 0.2), (120, 0.2)])
    assert steps[1].reason.startswith("0.2 > 0.05 for 1m of 2m")
    assert steps[2].reason.startswith("0.2 > 0.05 held for 2m (for 2m), firing since ")
    assert steps[2].value == 0.2
    assert steps[2].threshold == 0.05


# --- false evaluations -----------------------------------------------------------------------


def test_a_false_evaluation_resets_a_pending_rule() -> None:
    """One evaluation where the condition fails restarts the for clock from scratch."""
    _, steps = run(make_rule(), [(0, 0.2), (60, 0.2), (90, 0.01), (105, 0.2), (225, 0.2)])
    assert steps[2].state is FindingState.OK
    assert "does not hold" in steps[2].reason
    assert "is reset" in steps[2].reason
    assert steps[3].state is FindingState.PENDING
    assert steps[3].since == at(105)
    assert steps[4].state is FindingState.FIRING
    assert steps[4].started == at(105)


def test_the_clock_restarted_by_a_false_evaluation_does_not_fire_at_the_old_deadline() -> None:
    """After a reset, the time before the reset does not count toward for."""
    _, steps = run(make_rule(), [(0, 0.2), (90, 0.01), (105, 0.2), (120, 0.2), (210, 0.2)])
    assert steps[3].state is FindingState.PENDING
    assert steps[4].state is FindingState.PENDING


def test_a_false_evaluation_resolves_a_firing_rule() -> None:
    """A firing rule whose condition no longer holds is OK, and says it was resolved."""
    _, steps = run(make_rule(for_="0s"), [(0, 0.2), (15, 0.2), (30, 0.01)])
    assert steps[1].state is FindingState.FIRING
    assert steps[2].state is FindingState.OK
    assert "resolved" in steps[2].reason
    assert steps[2].since is None and steps[2].started is None


def test_a_rule_that_never_held_is_ok() -> None:
    """Healthy data gives OK findings carrying value and threshold."""
    _, steps = run(make_rule(), [(0, 0.01)])
    assert steps[0].state is FindingState.OK
    assert (steps[0].value, steps[0].threshold) == (0.01, 0.05)


# --- missing data ----------------------------------------------------------------------------


def test_missing_data_is_inconclusive_and_the_missing_time_grows() -> None:
    """Each evaluation without data is inconclusive, and says for how long data has been missing."""
    _, steps = run(make_rule(), every_tick(0, 30, None))
    assert [s.state for s in steps] == [FindingState.INCONCLUSIVE] * 3
    assert [s.missing_for for s in steps] == [timedelta(0), TICK, 2 * TICK]
    assert all(s.since == T0 for s in steps)
    assert all(s.value is None and s.threshold is None for s in steps)
    assert steps[2].reason.startswith(
        "not measured in the 30s looked at: no data: query returned no series"
    )


def test_data_that_went_missing_says_how_long_and_when_it_was_last_seen() -> None:
    """A rule that had a value, then none, is inconclusive since then, naming the last value."""
    _, steps = run(make_rule(), [(0, 0.01), (30, None), (60, None)])
    assert [s.state for s in steps[1:]] == [FindingState.INCONCLUSIVE] * 2
    assert steps[2].reason.startswith(
        "inconclusive for 30s: no data: query returned no series "
        f"(last value at {format_instant(T0)})"
    )


def test_missing_data_never_fires_even_with_for_zero() -> None:
    """An hour without data never fires a rule, however eager it is."""
    _, steps = run(make_rule(for_="0s"), every_tick(0, 3600, None))
    assert {s.state for s in steps} == {FindingState.INCONCLUSIVE}
    assert steps[-1].missing_for == timedelta(hours=1)


def test_missing_data_keeps_a_pending_rule_pending() -> None:
    """A short gap does not reset the for clock: the rule fires when for has elapsed."""
    _, steps = run(make_rule(), [(0, 0.2), (15, None), (30, None), (45, 0.2), (120, 0.2)])
    assert steps[1].state is FindingState.INCONCLUSIVE
    assert steps[1].started == T0
    assert "was pending since" in steps[1].reason
    assert steps[3].state is FindingState.PENDING
    assert steps[3].since == T0
    assert steps[4].state is FindingState.FIRING
    assert steps[4].started == T0


def test_missing_data_does_not_count_as_healthy() -> None:
    """A gap is not a false evaluation: no 'reset' and no 'resolved' comes out of it."""
    _, steps = run(make_rule(), [(0, 0.2), (15, None)])
    assert steps[1].state is not FindingState.OK
    assert "reset" not in steps[1].reason
    assert "resolved" not in steps[1].reason


def test_missing_data_keeps_a_firing_rule_firing_when_data_returns() -> None:
    """A firing rule that loses its data is inconclusive, and firing again (same since) after."""
    _, steps = run(make_rule(for_="0s"), [(0, 0.2), (15, None), (30, None), (45, 0.2)])
    assert steps[1].state is FindingState.INCONCLUSIVE
    assert "was firing since" in steps[1].reason
    assert steps[3].state is FindingState.FIRING
    assert steps[3].since == T0


def test_the_missing_clock_restarts_after_data_comes_back() -> None:
    """A second gap is measured from its own start, not from the first gap."""
    _, steps = run(make_rule(), [(0, None), (15, None), (30, 0.01), (45, None), (60, None)])
    assert steps[3].missing_for == timedelta(0)
    assert steps[4].missing_for == TICK
    assert steps[4].since == at(45)


def test_a_gap_shorter_than_for_is_bridged() -> None:
    """Data missing for less than for between two true evaluations keeps the pending clock."""
    steps_in = [(0, 0.2), *every_tick(15, 60, None), (75, 0.2)]
    state, steps = run(make_rule(), steps_in)
    assert steps[-1].state is FindingState.PENDING
    assert steps[-1].since == T0
    assert "gap" not in steps[-1].reason
    _, more = run(make_rule(), [(120, 0.2)], state=state)
    assert more[0].state is FindingState.FIRING


def test_a_gap_longer_than_for_restarts_the_pending_clock() -> None:
    """After a gap longer than for the evidence before it is stale: pending starts again."""
    steps_in = [(0, 0.2), *every_tick(15, 285, None), (300, 0.2)]
    state, steps = run(make_rule(), steps_in)
    assert steps[-1].state is FindingState.PENDING
    assert steps[-1].since == at(300)
    assert "gap in the data restarted the clock" in steps[-1].reason
    _, more = run(make_rule(), [(405, 0.2), (420, 0.2)], state=state)
    assert more[0].state is FindingState.PENDING
    assert more[1].state is FindingState.FIRING
    assert more[1].started == at(300)


@pytest.mark.parametrize(
    "value",
    [math.nan, math.inf, -math.inf],
    ids=["nan", "inf", "-inf"],
)
def test_nan_and_infinite_values_are_missing(value: float) -> None:
    """A NaN or infinite sample (e.g. 0/0 error rate) is no data, not a failure."""
    measurement = Measurement.of(value)
    assert measurement.is_missing
    assert measurement.value is None
    _, step = evaluate(make_rule(for_="0s"), measurement, None, RuleState(), T0)
    assert step.state is FindingState.INCONCLUSIVE
    assert "no data" in step.reason


def test_a_measurement_built_directly_from_nan_is_still_missing() -> None:
    """Even a NaN smuggled past Measurement.of is treated as missing, never compared."""
    _, step = evaluate(make_rule(for_="0s"), Measurement(math.nan), None, RuleState(), T0)
    assert step.state is FindingState.INCONCLUSIVE


# --- relative rules --------------------------------------------------------------------------


def relative_rule(**keys: object) -> Rule:
    return make_rule(condition="> +50%", for_="0s", name="latency-regression", **keys)


def test_a_relative_rule_fires_above_the_baseline_plus_its_percentage() -> None:
    """'> +50%' over a baseline of 0.2 fires at 0.31 and not at 0.29, and says the baseline."""
    rule = relative_rule()
    _, (above,) = run(rule, [(0, 0.31)], baseline=Measurement.of(0.2))
    _, (below,) = run(rule, [(0, 0.29)], baseline=Measurement.of(0.2))
    assert above.state is FindingState.FIRING
    assert above.threshold == pytest.approx(0.3)
    assert "baseline 0.2" in above.reason
    assert below.state is FindingState.OK


@pytest.mark.parametrize(
    ("baseline", "why"),
    [
        (None, "no deploy is known"),
        (Measurement.missing("no samples before the deploy"), "no samples before the deploy"),
        (Measurement.of(math.nan), "no baseline"),
        (Measurement.of(0.0), "value before the deploy is 0"),
        (Measurement.of(-1.0), "value before the deploy is -1"),
    ],
    ids=["no deploy", "missing", "nan", "zero", "negative"],
)
def test_a_relative_rule_without_a_usable_baseline_is_inconclusive(
    baseline: Measurement | None, why: str
) -> None:
    """Without a positive baseline a percentage means nothing: inconclusive, never firing."""
    _, steps = run(relative_rule(), [(0, 100.0), (15, 100.0)], baseline=baseline)
    assert {s.state for s in steps} == {FindingState.INCONCLUSIVE}
    assert all("no baseline" in s.reason for s in steps)
    assert why in steps[0].reason


def test_an_absolute_rule_needs_no_baseline() -> None:
    """A rule such as '> 0.05' fires without any deploy known."""
    _, (step,) = run(make_rule(for_="0s"), [(0, 0.2)], baseline=None)
    assert step.state is FindingState.FIRING


def test_min_change_stops_a_large_percentage_of_a_tiny_baseline_from_firing() -> None:
    """+100 % of 2 ms is 2 ms: below a min_change of 50 ms it is not a regression."""
    rule = relative_rule(min_change=0.05)
    _, (step,) = run(rule, [(0, 0.004)], baseline=Measurement.of(0.002))
    assert step.state is FindingState.OK
    assert "min_change" in step.reason


def test_min_change_lets_a_large_enough_change_fire() -> None:
    """+100 % of 200 ms is 200 ms, above min_change: the rule fires."""
    rule = relative_rule(min_change=0.05)
    _, (step,) = run(rule, [(0, 0.4)], baseline=Measurement.of(0.2))
    assert step.state is FindingState.FIRING


def test_min_change_applies_to_falls_below_the_baseline() -> None:
    """'< -30%' of a tiny throughput is ignored unless the fall exceeds min_change."""
    rule = make_rule(condition="< -30%", for_="0s", min_change=5.0)
    _, (small,) = run(rule, [(0, 1.0)], baseline=Measurement.of(4.0))
    _, (large,) = run(rule, [(0, 10.0)], baseline=Measurement.of(100.0))
    assert small.state is FindingState.OK
    assert large.state is FindingState.FIRING


def test_min_change_resolves_a_firing_rule() -> None:
    """A firing relative rule whose change shrinks below min_change is no longer firing."""
    rule = relative_rule(min_change=0.05)
    state, _ = run(rule, [(0, 0.4)], baseline=Measurement.of(0.2))
    _, (step,) = run(rule, [(15, 0.04)], baseline=Measurement.of(0.02), state=state)
    assert step.state is FindingState.OK
    assert "min_change" in step.reason
    assert "resolved" in step.reason


# --- whole cycles ----------------------------------------------------------------------------


def test_a_cycle_evaluates_every_rule_for_every_service() -> None:
    """Each (rule, service) gets a finding and a state, with severity from the trigger."""
    rule = make_rule(for_="0s")
    cycle = evaluate_cycle(
        [rule],
        {"web": [], "api": []},
        {("error-rate", "web"): Measurement.of(0.2), ("error-rate", "api"): Measurement.of(0.01)},
        {},
        {},
        {},
        T0,
    )
    by_service = {f.service: f for f in cycle.findings}
    assert by_service["web"].state is FindingState.FIRING
    assert by_service["api"].state is FindingState.OK
    assert by_service["web"].severity is Severity.HIGH
    assert by_service["web"].trigger is Trigger.HIGH_ERROR_RATE
    assert by_service["web"].condition == "> 0.05"
    assert by_service["web"].time == T0
    assert set(cycle.states) == {("error-rate", "web")}  # a quiet OK rule has nothing to keep
    assert [f.service for f in cycle.notable] == ["web"]
    assert cycle.quiet == {"error-rate": 1}
    assert [f.service for f in cycle.firing()] == ["web"]
    assert cycle.firing("api") == []


def test_a_service_with_no_series_is_inconclusive() -> None:
    """A service the query returned nothing for is inconclusive ('no series'), not healthy."""
    cycle = evaluate_cycle(
        [make_rule(for_="0s")],
        {"web": [], "api": []},
        {("error-rate", "web"): Measurement.of(0.2)},
        {},
        {},
        {},
        T0,
    )
    (api,) = [f for f in cycle.findings if f.service == "api"]
    assert api.state is FindingState.INCONCLUSIVE
    assert "no series" in api.reason
    assert api.missing_for == timedelta(0)


def test_probe_rules_apply_only_to_services_with_that_probe() -> None:
    """A rule on the 'login' probe is evaluated for services that define it, and no others."""
    rule = make_rule(
        name="login", trigger="auth_failure", query=None, probe="login", condition="> 0"
    )
    cycle = evaluate_cycle(
        [rule],
        {"web": ["health", "login"], "worker": ["health"]},
        {("login", "web"): Measurement.of(1.0)},
        {},
        {},
        {},
        T0,
    )
    assert [(f.rule, f.service) for f in cycle.findings] == [("login", "web")]
    assert set(cycle.states) == {("login", "web")}


def test_states_carry_over_from_one_cycle_to_the_next() -> None:
    """The states a cycle returns, fed back in, let for elapse across cycles."""
    rule = make_rule()
    services = {"web": ["health"]}
    key = ("error-rate", "web")
    states: dict[tuple[str, str], RuleState] = {}
    results = []
    for seconds in (0, 60, 120):
        cycle = evaluate_cycle(
            [rule], services, {key: Measurement.of(0.2)}, {}, {}, states, at(seconds)
        )
        states = cycle.states
        results.append(cycle.findings[0].state)
    assert results == [FindingState.PENDING, FindingState.PENDING, FindingState.FIRING]


def test_missing_data_across_cycles_reports_how_long_it_has_been_missing() -> None:
    """missing_for on the findings grows cycle after cycle while the series is absent."""
    states: dict[tuple[str, str], RuleState] = {}
    missing = []
    for seconds in (0, 15, 30, 45):
        cycle = evaluate_cycle([make_rule()], {"web": []}, {}, {}, {}, states, at(seconds))
        states = cycle.states
        missing.append(cycle.findings[0].missing_for)
    assert missing == [timedelta(seconds=s) for s in (0, 15, 30, 45)]


def test_a_cycle_passes_each_service_its_own_baseline() -> None:
    """Relative rules compare each service to its own baseline, reported on the finding."""
    rule = relative_rule()
    cycle = evaluate_cycle(
        [rule],
        {"web": [], "api": []},
        {
            ("latency-regression", "web"): Measurement.of(0.5),
            ("latency-regression", "api"): Measurement.of(0.5),
        },
        {
            ("latency-regression", "web"): Measurement.of(0.2),
            ("latency-regression", "api"): Measurement.of(0.4),
        },
        {},
        {},
        T0,
    )
    by_service = {f.service: f for f in cycle.findings}
    assert by_service["web"].state is FindingState.FIRING
    assert by_service["web"].baseline == 0.2
    assert by_service["api"].state is FindingState.OK
    assert by_service["api"].baseline == 0.4


def test_impact_raises_the_severity_of_a_finding() -> None:
    """A measured impact of 60 % of users makes a high error-rate finding critical."""
    key = ("error-rate", "web")
    cycle = evaluate_cycle(
        [make_rule(for_="0s")],
        {"web": []},
        {key: Measurement.of(0.2)},
        {},
        {key: Measurement.of(0.6)},
        {},
        T0,
    )
    (finding,) = cycle.findings
    assert finding.severity is Severity.CRITICAL
    assert finding.impact == 0.6
    assert "raised to critical" in finding.severity_reason


def test_a_missing_impact_leaves_the_trigger_severity() -> None:
    """When the impact query has no value, the finding keeps its trigger's severity."""
    key = ("error-rate", "web")
    cycle = evaluate_cycle(
        [make_rule(for_="0s")],
        {"web": []},
        {key: Measurement.of(0.2)},
        {},
        {key: Measurement.missing("no series")},
        {},
        T0,
    )
    (finding,) = cycle.findings
    assert finding.severity is Severity.HIGH
    assert finding.impact is None


def test_a_rule_severity_override_reaches_the_finding() -> None:
    """severity = 'critical' on a rule makes its findings critical whatever the trigger."""
    cycle = evaluate_cycle(
        [make_rule(for_="0s", severity="critical")],
        {"web": []},
        {("error-rate", "web"): Measurement.of(0.2)},
        {},
        {},
        {},
        T0,
    )
    assert cycle.findings[0].severity is Severity.CRITICAL


def test_labels_of_a_rule_are_copied_to_its_findings() -> None:
    """A rule's labels travel with each finding for notifications."""
    cycle = evaluate_cycle(
        [make_rule(for_="0s", labels={"team": "payments"})],
        {"web": []},
        {("error-rate", "web"): Measurement.of(0.2)},
        {},
        {},
        {},
        T0,
    )
    assert cycle.findings[0].labels == {"team": "payments"}
