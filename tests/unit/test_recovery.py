"""The recovery watch's judgement: the playbook's success criteria over a window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rollbackd.actions.recovery import LiveObserver, RecoveryWatcher
from rollbackd.core.model import NO_SERIES, Measurement, Vector
from rollbackd.core.recovery import (
    Check,
    Criteria,
    FiringAlerts,
    ProbeOutcome,
    Verdict,
    WatchState,
    advance,
    judge,
)
from rollbackd.core.rules import Rule, parse_rules
from rollbackd.testing import ScriptedMetrics, constant

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
    baselines: dict[str, float] | None = None,
    alerts: dict[str, datetime | str | None] | None = None,
) -> Check:
    kept = {"latency": 0.2} if baselines is None else baselines
    return judge(rules, values, probes, kept, CRITERIA, T0, alerts)


def test_a_healthy_service_meets_every_criterion() -> None:
    """Errors under 1%, latency within its baseline, probes passing, no critical rule."""
    result = check()
    assert result.held
    assert result.failures == ()
    assert result.missing == ()
    assert result.values["error-rate"] == 0.002


def test_each_criterion_is_named_with_its_value_and_threshold() -> None:
    """The check says what each criterion measured against what, for the verdict."""
    result = check(alerts={"alert:HighErrorRate": None})
    assert result.criteria == (
        "error rate (error-rate) 0.002 < 0.01; "
        "latency (latency) 0.21 <= 0.24 (pre-deploy baseline 0.2 +20%); "
        "critical rule data-loss does not hold: 0, not > 0; "
        "probe health passes; probe login passes; "
        "alert HighErrorRate resolved"
    )


def test_an_error_rate_of_one_percent_is_not_recovered() -> None:
    """The playbook says below 1%: exactly 1% fails."""
    result = check({**HEALTHY, "error-rate": Measurement(0.01)})
    assert not result.held
    assert "error rate (error-rate) 0.01 is not below 0.01" in result.failures


def test_latency_above_the_pre_deploy_baseline_fails() -> None:
    """0.3s against a 0.2s baseline with 20% tolerance is not back to normal."""
    result = check({**HEALTHY, "latency": Measurement(0.3)})
    assert not result.held
    assert result.failures == (
        "latency (latency) 0.3 is above the pre-deploy baseline 0.2 +20% = 0.24",
    )


def test_an_error_rate_without_data_is_reported_and_fails_nothing() -> None:
    """No error-rate data is said with its reason; latency and probes still prove health."""
    result = check({**HEALTHY, "error-rate": Measurement.missing("Prometheus is unreachable")})
    assert result.held
    assert result.failures == ()
    assert result.missing == ("error rate (error-rate): no data (Prometheus is unreachable)",)
    assert "error-rate" not in result.values


def test_an_error_rate_rule_with_no_series_names_the_first_use_idiom() -> None:
    """A restarted app has no 5xx series until its first error: the report says the fix."""
    result = check({**HEALTHY, "error-rate": Measurement.missing(NO_SERIES)})
    assert result.held
    [said] = result.missing
    assert said.startswith(f"error rate (error-rate): no data ({NO_SERIES}; ")
    assert "(errors or total * 0) / total" in said


def test_an_error_rate_of_zero_from_the_first_use_idiom_proves_health_alone() -> None:
    """With `(errors or total * 0) / total` a restarted app reads 0: that alone proves recovery."""
    error_rule = RULES[:1]
    result = check({"error-rate": Measurement(0.0)}, {}, error_rule)
    assert result.held
    assert result.passes == ("error rate (error-rate) 0 < 0.01",)


def test_latency_without_a_pre_deploy_baseline_is_no_data_not_a_failure() -> None:
    """A latency value with nothing to compare it with proves nothing and fails nothing."""
    result = check(baselines={})
    assert result.held
    assert result.failures == ()
    assert result.missing == (
        "latency (latency) 0.21: no data to compare with (no pre-deploy baseline was kept)",
    )


def test_nothing_but_missing_data_does_not_hold_and_fails_nothing() -> None:
    """Missing data is never health: with no criterion measured, the check does not hold."""
    gone = {name: Measurement.missing(NO_SERIES) for name in HEALTHY}
    result = check(gone, {})
    assert not result.held
    assert result.failures == ()
    assert result.missing[-1] == (
        "nothing proves recovery: no error-rate, latency or probe criterion has data"
    )
    assert "critical rule data-loss: no data (no series for this service)" in result.missing


def test_a_resolved_alert_and_a_quiet_critical_rule_do_not_prove_health_alone() -> None:
    """An alert also resolves when its series vanish: it must be joined by real evidence."""
    values = {
        "error-rate": Measurement.missing(NO_SERIES),
        "latency": Measurement.missing(NO_SERIES),
        "data-loss": Measurement(0.0),
    }
    result = check(values, {}, alerts={"alert:HighErrorRate": None})
    assert not result.held
    assert result.failures == ()
    assert result.passes == (
        "critical rule data-loss does not hold: 0, not > 0",
        "alert HighErrorRate resolved",
    )


def test_an_alert_that_triggered_the_rollback_and_still_fires_fails_recovery() -> None:
    """The alert that asked for the rollback must be resolved, whatever the metrics say."""
    firing = T0 - timedelta(minutes=20)
    result = check(alerts={"alert:HighErrorRate": firing, "alert:WebDown": None})
    assert not result.held
    assert result.failures == ("alert HighErrorRate still firing (since 2026-05-01T11:40:00Z)",)
    assert "alert WebDown resolved" in result.passes


UNREADABLE = "Alertmanager at http://am:9093 is unreachable"


def test_an_alert_whose_state_cannot_be_read_keeps_the_check_from_holding() -> None:
    """Healthy metrics and probes do not declare recovery while the alert that asked for
    the rollback cannot be seen resolved (Alertmanager down): no failure, but no hold."""
    result = check(alerts={"alert:HighErrorRate": UNREADABLE})
    assert not result.held
    assert result.failures == ()
    assert result.missing == (
        f"alert HighErrorRate: no data ({UNREADABLE})",
        "recovery waits for the alerts that triggered the rollback to be seen resolved",
    )


def test_alerts_unreadable_for_the_whole_watch_end_it_unknown_saying_why() -> None:
    """Alertmanager down through the watch: at the timeout recovery is unknown (a person
    looks), never recovered, and the verdict says the alert could not be seen resolved."""
    checks = [
        judge(
            RULES,
            HEALTHY,
            PROBES,
            {"latency": 0.2},
            CRITERIA,
            T0 + timedelta(minutes=minute),
            {"alert:HighErrorRate": UNREADABLE},
        )
        for minute in range(31)
    ]
    verdict = watch(checks)
    assert not verdict.recovered
    assert verdict.unknown
    assert verdict.reason.startswith(
        "recovery unknown after 30m: no criterion fails, but the alerts that triggered the "
        "rollback could not be seen resolved: error rate (error-rate) 0.002 < 0.01; "
    )
    assert verdict.reason.endswith(
        f"alert HighErrorRate: no data ({UNREADABLE}); "
        "recovery waits for the alerts that triggered the rollback to be seen resolved"
    )


def test_an_alert_name_with_control_characters_is_shown_escaped() -> None:
    """Alert names come from webhook labels: a newline never reaches a message as one."""
    result = check(alerts={"alert:Evil\nrm -rf /": T0})
    [failure] = result.failures
    assert "\n" not in failure
    assert failure.startswith("alert 'Evil\\nrm -rf /' still firing")


def test_an_absolute_latency_rule_is_judged_by_its_own_threshold() -> None:
    """A latency rule without a baseline (`> 0.5`) passes while its condition does not hold."""
    [absolute] = parse_rules(
        """
[[rules]]
name = "slow"
trigger = "performance_degradation"
query = "latency"
condition = "> 0.5"
""",
        "rules.toml",
    )
    fine = check({"slow": Measurement(0.3)}, {}, (absolute,))
    slow = check({"slow": Measurement(0.7)}, {}, (absolute,))
    assert fine.held and fine.passes == ("latency (slow) 0.3, not > 0.5",)
    assert slow.failures == ("latency (slow) 0.7 still > 0.5",)


def test_a_failing_probe_fails_recovery() -> None:
    """The login smoke check must pass too."""
    result = check(probes={**PROBES, "login": ProbeOutcome(False, "answered 500")})
    assert "probe login fails: answered 500" in result.failures


def test_a_probe_rollbackd_could_not_try_is_no_data_not_a_failure() -> None:
    """Out of file descriptors, the daemon's probe says nothing: it neither fails nor proves."""
    trouble = ProbeOutcome(False, "could not be tried: Too many open files (EMFILE)", False)
    result = check({}, {"health": trouble}, ())
    assert result.failures == ()
    assert not result.held
    assert "probe health: no data (could not be tried: Too many open files (EMFILE))" in (
        result.missing
    )
    assert "probe:health" not in result.values


def test_a_critical_rule_holding_fails_recovery() -> None:
    """Data loss after the rollback is not success, whatever the error rate."""
    result = check({**HEALTHY, "data-loss": Measurement(3.0)})
    assert any(f.startswith("critical rule data-loss holds") for f in result.failures)


def test_nothing_to_measure_proves_nothing() -> None:
    """With no rules and no probes, recovery cannot be shown."""
    result = check({}, {}, ())
    assert not result.held
    assert result.failures == ()
    assert result.missing == (
        "nothing proves recovery: no error-rate, latency or probe criterion has data",
    )


def at(minutes: float, held: bool) -> Check:
    return Check(T0 + timedelta(minutes=minutes), held, () if held else ("error rate high",))


def unproven(minutes: float) -> Check:
    """A check where nothing failed and nothing had data to prove health."""
    return Check(
        T0 + timedelta(minutes=minutes),
        False,
        (),
        missing=("error rate (error-rate): no data (no series for this service)",),
    )


def watch(checks: list[Check]) -> Verdict:
    """Fold ``checks`` into a watch started at T0; the verdict they lead to."""
    state = WatchState(T0)
    for item in checks:
        state, verdict = advance(state, item, CRITERIA)
        if verdict is not None:
            return verdict
    raise AssertionError("no verdict")


def test_recovered_once_the_criteria_held_for_the_whole_window() -> None:
    """Fifteen minutes of holding, checked every minute, is recovery at minute 15."""
    state = WatchState(T0)
    verdicts = []
    for minute in range(16):
        state, verdict = advance(state, at(minute, True), CRITERIA)
        verdicts.append(verdict)
    assert verdicts[:15] == [None] * 15
    last = verdicts[15]
    assert last is not None and last.recovered and not last.unknown
    assert "held for 15m" in last.reason


def test_the_verdict_names_each_criterion_of_the_last_check() -> None:
    """Recovered says what held: values and thresholds, and what had no data."""
    checks = [
        judge(RULES, HEALTHY, PROBES, {}, CRITERIA, T0 + timedelta(minutes=m)) for m in range(16)
    ]
    verdict = watch(checks)
    assert verdict.recovered
    assert verdict.reason == (
        "recovered: every criterion with data held for 15m (window 15m, 16 checks): "
        "error rate (error-rate) 0.002 < 0.01; "
        "critical rule data-loss does not hold: 0, not > 0; "
        "probe health passes; probe login passes; "
        "latency (latency) 0.21: no data to compare with (no pre-deploy baseline was kept)"
    )


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
    assert verdict is not None and not verdict.recovered and not verdict.unknown
    assert verdict.reason == "not recovered after 30m: error rate high"


def test_only_missing_data_until_the_timeout_is_unknown_not_not_recovered() -> None:
    """Nothing failed and nothing proved health: a person must look, the service is not blamed."""
    verdict = watch([unproven(minute) for minute in range(31)])
    assert not verdict.recovered
    assert verdict.unknown
    assert verdict.reason == (
        "recovery unknown after 30m: no criterion fails, but nothing proves health: "
        "error rate (error-rate): no data (no series for this service)"
    )


def test_a_failure_then_only_missing_data_is_not_recovered() -> None:
    """The last measurement failed: losing the data afterwards does not make it unknown."""
    verdict = watch(
        [at(minute, False) for minute in range(5)] + [unproven(m) for m in range(5, 31)]
    )
    assert not verdict.recovered and not verdict.unknown
    assert verdict.reason.startswith(
        "not recovered after 30m: at 2026-05-01T12:04:00Z: error rate high; "
        "since then nothing proved health: error rate (error-rate): no data"
    )


def test_holding_too_briefly_after_missing_data_is_unknown() -> None:
    """The data came back late and healthy: recovery is unknown, not disproved."""
    verdict = watch(
        [unproven(minute) for minute in range(25)] + [at(m, True) for m in range(25, 31)]
    )
    assert verdict.unknown and not verdict.recovered
    assert verdict.reason.startswith(
        "recovery unknown after 30m: the criteria held only for 5m (window 15m); "
        "before that nothing proved health: error rate (error-rate): no data"
    )


def test_holding_too_briefly_after_a_failure_is_not_recovered() -> None:
    """The service measurably failed and held only a little before the timeout."""
    verdict = watch([at(minute, minute >= 25) for minute in range(31)])
    assert not verdict.recovered and not verdict.unknown
    assert verdict.reason == (
        "not recovered after 30m: the criteria held only for 5m (window 15m); "
        "before that, at 2026-05-01T12:24:00Z: error rate high"
    )


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


def test_the_live_observer_asks_whether_each_triggering_alert_still_fires() -> None:
    """The watch queries the rules and looks up only the alerts that triggered the rollback."""
    metrics = ScriptedMetrics(["web"])
    metrics.set("errors", constant(0.0))
    metrics.set("latency", constant(0.2))
    metrics.set("loss", constant(0.0))
    asked: list[datetime] = []

    def firing(now: datetime) -> FiringAlerts:
        asked.append(now)
        return FiringAlerts({"alert:HighErrorRate": T0 - timedelta(minutes=5), "alert:Other": T0})

    observer = LiveObserver(
        "web",
        RULES,
        {"health": lambda: ProbeOutcome(True, "200")},
        metrics,
        {"latency": 0.2},
        CRITERIA,
        ["alert:HighErrorRate", "alert:WebDown"],
        firing,
    )
    result = observer(T0)
    assert asked == [T0]
    assert result.failures == ("alert HighErrorRate still firing (since 2026-05-01T11:55:00Z)",)
    assert "alert WebDown resolved" in result.passes
    assert not any("Other" in text for text in (*result.passes, *result.failures))


class _Raising(ScriptedMetrics):
    """A source whose error-rate query raises, as a parser bug would."""

    def instant(self, query: str, at: datetime) -> Vector:
        if query == "errors":
            raise RecursionError("maximum recursion depth exceeded")
        return super().instant(query, at)


def test_a_query_that_raises_is_no_data_for_the_watch_not_a_crash() -> None:
    """The recovery watch goes on past a query that raises: that criterion has no data."""
    metrics = _Raising(["web"])
    metrics.set("latency", constant(0.2))
    metrics.set("loss", constant(0.0))
    observer = LiveObserver(
        "web",
        RULES,
        {"health": lambda: ProbeOutcome(True, "200")},
        metrics,
        {"latency": 0.2},
        CRITERIA,
    )
    result = observer(T0)
    assert result.failures == ()
    assert any(
        "error rate (error-rate): no data (the query failed: RecursionError" in text
        for text in result.missing
    ), result.missing
