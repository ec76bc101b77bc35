"""The recovery watch's judgement: the playbook's success criteria over a window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rollbackd.actions.recovery import (
    Check,
    Criteria,
    ProbeOutcome,
    RecoveryWatcher,
    WatchState,
    advance,
    judge,
)
from rollbackd.model import Measurement
from rollbackd.rules import Rule, parse_rules

T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)
CRITERIA = Criteria(window=timedelta(minutes=15), timeout=timedelta(minutes=30))
RULES = tuple(
    parse_rules(
        """
[[rules]]
name = "error-rate"
trigger = "high_error_rate"
query = "errors"
condition = "> 0.05"
[[rules]]
name = "latency"
trigger = "performance_degradation"
query = "latency"
condition = "> +50%"
[[rules]]
name = "data-loss"
trigger = "data_loss"
query = "loss"
condition = "> 0"
""",
        "rules.toml",
    )
)
HEALTHY = {
    "error-rate": Measurement(0.002),
    "latency": Measurement(0.21),
    "data-loss": Measurement(0.0),
}
PROBES = {"health": ProbeOutcome(True, "200"), "login": ProbeOutcome(True, "200")}


def check(
    values: dict[str, Measurement] = HEALTHY,
    probes: dict[str, ProbeOutcome] = PROBES,
    rules: tuple[Rule, ...] = RULES,
) -> Check:
    return judge(rules, values, probes, {"latency": 0.2}, CRITERIA, T0)


def test_a_healthy_service_meets_every_criterion() -> None:
    """Errors under 1%, latency within its baseline, probes passing, no critical rule."""
    result = check()
    assert result.held
    assert result.failures == ()
    assert result.values["error-rate"] == 0.002


def test_an_error_rate_of_one_percent_is_not_recovered() -> None:
    """The playbook says below 1%: exactly 1% fails."""
    result = check({**HEALTHY, "error-rate": Measurement(0.01)})
    assert not result.held
    assert "error rate (error-rate) 0.01 is not below 0.01" in result.failures


def test_latency_above_the_pre_deploy_baseline_fails() -> None:
    """0.3s against a 0.2s baseline with 20% tolerance is not back to normal."""
    result = check({**HEALTHY, "latency": Measurement(0.3)})
    assert not result.held
    assert any("above the pre-deploy baseline 0.2" in f for f in result.failures)


def test_missing_data_is_never_recovery() -> None:
    """No error-rate data means the criterion does not hold, with the reason."""
    result = check({**HEALTHY, "error-rate": Measurement.missing("Prometheus is unreachable")})
    assert not result.held
    assert "error rate (error-rate) has no data: Prometheus is unreachable" in result.failures


def test_a_failing_probe_fails_recovery() -> None:
    """The login smoke check must pass too."""
    result = check(probes={**PROBES, "login": ProbeOutcome(False, "answered 500")})
    assert "probe login fails: answered 500" in result.failures


def test_a_critical_rule_holding_fails_recovery() -> None:
    """Data loss after the rollback is not success, whatever the error rate."""
    result = check({**HEALTHY, "data-loss": Measurement(3.0)})
    assert any(f.startswith("critical rule data-loss holds") for f in result.failures)


def test_nothing_to_measure_proves_nothing() -> None:
    """With no rules and no probes, recovery cannot be shown."""
    result = check({}, {}, ())
    assert result.failures == ("nothing proves recovery: no error-rate, latency or probe data",)


def at(minutes: float, held: bool) -> Check:
    return Check(T0 + timedelta(minutes=minutes), held, () if held else ("error rate high",))


def test_recovered_once_the_criteria_held_for_the_whole_window() -> None:
    """Fifteen minutes of holding, checked every minute, is recovery at minute 15."""
    state = WatchState(T0)
    verdicts = []
    for minute in range(16):
        state, verdict = advance(state, at(minute, True), CRITERIA)
        verdicts.append(verdict)
    assert verdicts[:15] == [None] * 15
    last = verdicts[15]
    assert last is not None and last.recovered
    assert "held for 15m" in last.reason


def test_a_relapse_restarts_the_window() -> None:
    """A failing check in the middle means the window starts again."""
    state = WatchState(T0)
    for minute in range(10):
        state, _ = advance(state, at(minute, True), CRITERIA)
    state, _ = advance(state, at(10, False), CRITERIA)
    for minute in range(11, 25):
        state, verdict = advance(state, at(minute, True), CRITERIA)
        assert verdict is None
    state, verdict = advance(state, at(26, True), CRITERIA)
    assert verdict is not None and verdict.recovered


def test_no_full_window_before_the_timeout_is_not_recovered() -> None:
    """If the criteria never hold for a whole window by the timeout, the rollback failed."""
    state = WatchState(T0)
    verdict = None
    for minute in range(31):
        state, verdict = advance(state, at(minute, minute % 10 != 0), CRITERIA)
        if verdict is not None:
            break
    assert verdict is not None and not verdict.recovered
    assert verdict.reason.startswith("not recovered after 30m")


def test_the_watcher_checks_every_interval_until_a_verdict() -> None:
    """The driver sleeps the poll interval between checks and stops at the verdict."""
    now = [T0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += timedelta(seconds=seconds)

    watcher = RecoveryWatcher(
        Criteria(window=timedelta(seconds=30), timeout=timedelta(minutes=5)),
        timedelta(seconds=10),
        lambda: now[0],
        sleep,
    )
    seen: list[Check] = []
    verdict = watcher.watch(lambda moment: Check(moment, True, ()), seen.append)
    assert verdict.recovered
    assert len(seen) == 4
    assert slept == [10.0, 10.0, 10.0]
