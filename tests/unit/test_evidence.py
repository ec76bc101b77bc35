"""Evidence strength: the confidence sequence, counts since a deploy, rules that weigh them."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollbackd.core.evidence import (
    Evidence,
    Side,
    accumulate,
    bounds,
    judge,
    restart_if_healthy,
    side,
    spent,
)
from rollbackd.core.model import NO_SERIES, FindingState, Measurement, RuleState, Vector
from rollbackd.core.rules import Rule, evaluate, evaluate_cycle, parse_rules
from rollbackd.errors import InvalidInput

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
POLL = timedelta(seconds=15)


# -- the confidence sequence ---------------------------------------------------------------


def test_a_few_clustered_errors_at_low_traffic_are_not_evidence() -> None:
    """Three failures among the first ten requests do not show a 5 % threshold exceeded."""
    assert side(3, 10, 0.05, 0.99) is Side.UNDECIDED
    assert side(4, 20, 0.05, 0.99) is Side.UNDECIDED


def test_a_gross_regression_is_evidence_after_a_few_dozen_requests() -> None:
    """30 % of 60 requests failing shows the true proportion above 5 %."""
    assert side(18, 60, 0.05, 0.99) is Side.ABOVE
    lower, upper = bounds(18, 60, 0.05, 0.99)
    assert 0.05 < lower < 0.3 < upper


def test_plenty_of_healthy_traffic_is_evidence_of_health() -> None:
    """1 % of 5,000 requests failing shows the proportion below 5 %."""
    assert side(50, 5000, 0.05, 0.99) is Side.BELOW


@settings(max_examples=40, deadline=None)
@given(
    events=st.integers(min_value=0, max_value=500),
    extra=st.integers(min_value=0, max_value=5000),
    threshold=st.floats(min_value=0.001, max_value=0.9),
    confidence=st.sampled_from([0.9, 0.95, 0.99, 0.999]),
)
def test_the_bounds_hold_the_observed_proportion_and_agree_with_the_side(
    events: int, extra: int, threshold: float, confidence: float
) -> None:
    """The interval always contains the observed proportion; it lies past the threshold
    exactly when the side says so."""
    volume = events + extra
    if volume == 0:
        return
    lower, upper = bounds(events, volume, threshold, confidence)
    assert 0.0 <= lower <= events / volume <= upper <= 1.0
    where = side(events, volume, threshold, confidence)
    if where is Side.ABOVE:
        assert lower >= threshold * (1 - 1e-9)
    elif where is Side.BELOW:
        assert upper <= threshold * (1 + 1e-9)
    else:
        assert lower <= threshold * (1 + 1e-9)
        assert upper >= threshold * (1 - 1e-9)


def looks_until_alarm(
    rng: random.Random, proportion: float, threshold: float, per_look: int, looks: int
) -> int | None:
    """Simulate ``looks`` looks at traffic failing at ``proportion``, ``per_look`` requests
    between looks; the look at which the test alarms (None: it never did)."""
    events = volume = 0
    for look in range(1, looks + 1):
        events += sum(rng.random() < proportion for _ in range(per_look))
        volume += per_look
        if side(events, volume, threshold, 0.99) is Side.ABOVE:
            return look
    return None


@settings(max_examples=8, deadline=None)
@given(
    threshold=st.sampled_from([0.01, 0.05, 0.2, 0.5]),
    per_look=st.sampled_from([1, 3, 20]),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_healthy_traffic_at_the_thresholds_edge_rarely_alarms_over_many_looks(
    threshold: float, per_look: int, seed: int
) -> None:
    """Traffic failing at exactly the threshold, looked at 300 times, alarms in far fewer
    than 1 % + noise of 200 runs: one chance over all looks, not one per look."""
    rng = random.Random(seed)  # noqa: S311 -- simulated traffic, not secrets
    alarms = sum(
        looks_until_alarm(rng, threshold, threshold, per_look, 300) is not None for _ in range(200)
    )
    assert alarms <= 6  # alpha = 1 % of 200 is 2; a fixed test at each look would alarm most


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_a_strong_regression_alarms_within_a_few_looks(seed: int) -> None:
    """30 % failing against a 5 % threshold at 20 req/s, looked at every 15 s: the
    second look at the latest."""
    rng = random.Random(seed)  # noqa: S311 -- simulated traffic, not secrets
    assert (looks_until_alarm(rng, 0.3, 0.05, 300, 10) or 99) <= 2


# -- counts since the deploy ---------------------------------------------------------------


def window_counts(
    rate: Callable[[float], tuple[float, float]], end: datetime, window: timedelta
) -> tuple[float, float]:
    """(events, volume) in the ``window`` ending at ``end``, from per-second rates."""
    events = volume = 0.0
    seconds = int(window.total_seconds())
    for offset in range(seconds):
        bad, total = rate((end - T0).total_seconds() - offset - 0.5)
        events += bad
        volume += total
    return events, volume


def run_looks(
    rate: Callable[[float], tuple[float, float]],
    deploy: datetime,
    until: datetime,
    window: timedelta = MINUTE,
    start: datetime = T0,
    skip: Callable[[datetime], bool] = lambda _: False,
) -> Evidence:
    evidence = None
    moment = start
    while moment <= until:
        if not skip(moment):
            events, volume = window_counts(rate, moment, window)
            evidence = accumulate(
                evidence, events, volume, window, deploy if deploy <= moment else None, moment
            )
        moment += POLL
    assert evidence is not None
    return evidence


def test_counts_since_the_deploy_follow_the_traffic_without_the_windows_lag() -> None:
    """A fault that starts with the deploy is counted in full at once, not smeared
    over the rate window: 30 s after it, 600 requests and 180 failures."""
    deploy = T0 + timedelta(minutes=10)

    def rate(second: float) -> tuple[float, float]:
        return (6.0, 20.0) if second >= 600 else (0.1, 20.0)

    evidence = run_looks(rate, deploy, deploy + timedelta(seconds=30))
    assert evidence.volume == pytest.approx(600, rel=0.02)
    assert evidence.events == pytest.approx(180, rel=0.05)


def test_the_previous_versions_failures_are_not_the_new_versions_evidence() -> None:
    """A rollback of a version failing half its requests: the window still full of the
    old failures is not counted against the version rolled back to."""
    deploy = T0 + timedelta(minutes=10)

    def rate(second: float) -> tuple[float, float]:
        return (0.0, 10.0) if second >= 600 else (5.0, 10.0)

    evidence = run_looks(rate, deploy, deploy + timedelta(seconds=45))
    assert evidence.volume == pytest.approx(450, rel=0.05)
    assert evidence.events == pytest.approx(0, abs=5)


def test_a_gap_longer_than_the_window_is_no_evidence() -> None:
    """Five minutes no look saw are left out of the counts, not guessed."""
    deploy = T0

    def rate(second: float) -> tuple[float, float]:
        return (1.0, 10.0)

    gap_from, gap_to = T0 + timedelta(minutes=2), T0 + timedelta(minutes=7)
    evidence = run_looks(
        rate,
        deploy,
        T0 + timedelta(minutes=10),
        skip=lambda moment: gap_from < moment < gap_to,
    )
    seen = (10 - 5 + 1) * 60 * 10  # ten minutes less the gap, plus the window after it
    assert evidence.volume == pytest.approx(seen, rel=0.05)
    assert evidence.events / evidence.volume == pytest.approx(0.1, rel=0.01)


def test_a_new_deploy_starts_the_counts_anew() -> None:
    """Evidence counted for one deploy is not carried to the next."""
    first = accumulate(None, 5, 100, MINUTE, T0, T0 + MINUTE)
    again = accumulate(first, 0, 100, MINUTE, T0 + timedelta(minutes=2), T0 + 3 * MINUTE)
    assert again.start == T0 + timedelta(minutes=2)
    assert again.volume == pytest.approx(100)
    assert again.events == pytest.approx(0)


def test_a_test_that_shows_health_restarts_so_a_later_regression_is_seen() -> None:
    """After thousands of healthy requests the test starts again, and the counts it judges
    are those after the restart."""
    evidence = Evidence(start=T0, deploy=T0, events=10, volume=5000)
    verdict = judge(evidence, 0.05, above=True, confidence=0.99)
    assert verdict.side is Side.BELOW
    restarted = restart_if_healthy(evidence, verdict.side, above=True)
    assert restarted.restarts == 1
    assert restarted.trials == (0, 0)
    later = Evidence(
        start=T0,
        deploy=T0,
        events=10 + 30,
        volume=5000 + 100,
        tested_events=restarted.tested_events,
        tested_volume=restarted.tested_volume,
    )
    assert judge(later, 0.05, above=True, confidence=0.99).past


def test_restarts_are_rationed_and_share_one_false_alarm_budget() -> None:
    """A test restarts only once it judged as much traffic as all tests before it, and the
    tests since a deploy share one alpha: a day of healthy looks is not thousands of
    fresh chances of a false alarm."""
    evidence = Evidence(start=T0, deploy=T0, events=10, volume=5000)
    once = restart_if_healthy(evidence, Side.BELOW, above=True)
    assert once.restarts == 1
    grown = replace(once, events=once.events + 10, volume=once.volume + 4000)
    assert restart_if_healthy(grown, Side.BELOW, above=True) is grown  # 4,000 < 5,000 before
    doubled = replace(once, events=once.events + 12, volume=once.volume + 5000)
    assert restart_if_healthy(doubled, Side.BELOW, above=True).restarts == 2
    alpha = 1 - 0.99
    assert sum(1 - spent(0.99, k) for k in range(200)) <= alpha
    assert spent(0.99, 0) == pytest.approx(1 - alpha / 2)


# -- rules that weigh their traffic --------------------------------------------------------

WEIGHED = """
[[rules]]
name = "error-rate"
trigger = "high_error_rate"
query = 'sum by (service) (rate(errors_total[1m])) / sum by (service) (rate(requests_total[1m]))'
events = 'sum by (service) (increase(errors_total[1m]))'
volume = 'sum by (service) (increase(requests_total[1m]))'
condition = "> 0.05"
"""


def weighed_rule(**extra: str) -> Rule:
    text = WEIGHED + "".join(f"{key} = {value}\n" for key, value in extra.items())
    return parse_rules(text, "rules/high.toml")[0]


def test_a_rule_with_events_and_volume_weighs_them_at_99_percent_by_default() -> None:
    """The new keys parse; confidence defaults to 0.99, the window is the queries'."""
    rule = weighed_rule(min_volume="20")
    assert rule.weighs_evidence
    assert rule.confidence == 0.99
    assert rule.min_volume == 20
    assert rule.evidence_window == MINUTE


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"volume": None}, "'events' and 'volume' go together"),
        ({"for": '"2m"'}, "'for' does not apply"),
        ({"condition": '"> +50%"'}, "weigh a proportion against a number"),
        ({"condition": '"> 5"'}, "between 0 and 1"),
        ({"volume": "'sum by (service) (increase(requests_total[2m]))'"}, "the same window"),
        ({"events": "'sum by (service) (errors_total)'"}, "count over a window"),
        ({"confidence": "1.5"}, "confidence"),
    ],
)
def test_a_malformed_evidence_rule_is_refused_with_the_reason(
    extra: dict[str, str | None], says: str
) -> None:
    """Each mistake names the rule and what is wrong."""
    lines = [line for line in WEIGHED.strip().splitlines()]
    keys = {line.split(" = ", 1)[0]: line for line in lines[1:]}
    for key, value in extra.items():
        if value is None:
            keys.pop(key)
        else:
            keys[key] = f"{key} = {value}"
    text = "[[rules]]\n" + "\n".join(keys.values()) + "\n"
    with pytest.raises(InvalidInput) as caught:
        parse_rules(text, "rules/high.toml")
    message = str(caught.value)
    assert 'rule "error-rate"' in message
    assert says in message


def test_confidence_without_events_is_refused() -> None:
    """confidence and min_volume mean nothing on a rule that does not weigh its traffic."""
    text = WEIGHED.replace("events = ", "# events = ").replace("volume = ", "# volume = ")
    with pytest.raises(InvalidInput, match="used only with 'events' and 'volume'"):
        parse_rules(text + "confidence = 0.9\n", "rules/high.toml")


def per_request(
    every: timedelta, fails: Callable[[int], bool], start: datetime
) -> Callable[[datetime, timedelta], tuple[float, float, float]]:
    """Requests one every ``every`` from ``start``; request i fails if ``fails(i)``.
    Returns (events, volume) in a window ending at a moment, and 0."""

    def counts(end: datetime, window: timedelta) -> tuple[float, float, float]:
        events = volume = 0
        i = 0
        while start + i * every <= end:
            moment = start + i * every
            if end - window < moment:
                volume += 1
                events += fails(i)
            i += 1
        return float(events), float(volume), 0.0

    return counts


def step_rule(
    rule: Rule,
    counts: Callable[[datetime, timedelta], tuple[float, float, float]],
    deploy: datetime,
    until: datetime,
) -> list[tuple[datetime, FindingState, str]]:
    """Evaluate ``rule`` every poll from before the deploy to ``until``; (time, state,
    reason) from the deploy on."""
    state = RuleState()
    seen = []
    moment = deploy - 5 * MINUTE
    while moment <= until:
        events, volume, _ = counts(moment, rule.evidence_window)
        ratio = Measurement.of(events / volume) if volume else Measurement.missing("NaN")
        state, step = evaluate(
            rule,
            ratio,
            None,
            state,
            moment,
            (
                Measurement(events) if events else Measurement.missing(NO_SERIES),
                Measurement(volume),
            ),
            deploy if moment >= deploy else None,
        )
        if moment > deploy:
            seen.append((moment, step.state, step.reason))
        moment += POLL
    return seen


def first_firing(seen: list[tuple[datetime, FindingState, str]]) -> datetime | None:
    return next((moment for moment, state, _ in seen if state is FindingState.FIRING), None)


def test_low_traffic_with_a_chronic_error_rate_is_not_rolled_back_for_a_cluster() -> None:
    """Six requests a minute, 3 % failing for ever, and three of the first five after the
    deploy failing: the ratio is far above 5 %, the evidence is not, nothing fires in an hour."""
    deploy = T0

    def fails(i: int) -> bool:  # request 60 is the first after the deploy
        return i in (60, 62, 63) or i % 33 == 0

    counts = per_request(timedelta(seconds=10), fails, deploy - 10 * MINUTE)
    seen = step_rule(weighed_rule(), counts, deploy, deploy + timedelta(hours=1))
    assert first_firing(seen) is None
    assert any(state is FindingState.PENDING for _, state, _ in seen)  # the ratio did hold


def test_low_traffic_failing_30_percent_is_rolled_back_within_minutes() -> None:
    """The same six requests a minute with 30 % failing fires within ten minutes."""
    deploy = T0
    counts = per_request(
        timedelta(seconds=10), lambda i: i >= 60 and i % 10 in (1, 4, 7), deploy - 10 * MINUTE
    )
    seen = step_rule(weighed_rule(), counts, deploy, deploy + timedelta(minutes=20))
    fired = first_firing(seen)
    assert fired is not None
    assert fired - deploy <= timedelta(minutes=10)
    reason = next(reason for moment, _, reason in seen if moment == fired)
    assert "events in a volume of" in reason and "lower bound" in reason


def test_a_gross_regression_at_20_requests_a_second_fires_at_the_first_look() -> None:
    """30 % of 20 req/s failing from the deploy on fires 15 s in, not after a `for`."""
    deploy = T0 + timedelta(minutes=10)

    def counts(end: datetime, window: timedelta) -> tuple[float, float, float]:
        def rate(second: float) -> tuple[float, float]:
            return (6.0, 20.0) if second >= 600 else (0.02, 20.0)

        events, volume = window_counts(rate, end, window)
        return events, volume, 0.0

    seen = step_rule(weighed_rule(), counts, deploy, deploy + MINUTE)
    assert first_firing(seen) == deploy + POLL


def test_a_whole_cycle_keeps_the_evidence_of_quiet_services_and_shows_it_in_findings() -> None:
    """Quiet services cost no finding, yet their counts go on; `findings` (what --explain
    lists) shows them; a clearly healthy test restarts, so a service that turns bad fires
    at the first look that sees it."""
    rule = weighed_rule()
    services: dict[str, tuple[str, ...]] = {"calm": (), "turns": ()}
    states: dict[tuple[str, str], RuleState] = {}
    deploy = T0
    fired = None
    for look in range(1, 9):
        now = deploy + look * POLL
        bad = 30.0 if look >= 6 else 0.5  # per 15 s, of 300; "turns" fails 10 % from look 6
        ratio = {"calm": 0.002, "turns": bad / 300}
        events = {"calm": 0.5 * 4, "turns": bad * 4}
        volume = {"calm": 1200.0, "turns": 1200.0}
        cycle = evaluate_cycle(
            [rule],
            services,
            {},
            {},
            {},
            states,
            now,
            {rule.name: Vector(ratio)},
            None,
            {rule.name: (Vector(events), Vector(volume))},
            {"calm": deploy, "turns": deploy},
        )
        states = cycle.states
        if look == 5:
            assert cycle.notable == ()
            assert cycle.quiet == {rule.name: 2}
            calm = next(f for f in cycle.findings if f.service == "calm")
            assert calm.state is FindingState.OK
            assert calm.volume is not None and calm.volume > 0
            assert calm.bound is not None and calm.bound < 0.05 and calm.confidence == 0.99
            assert "the test restarted" in calm.reason
        if fired is None and cycle.firing("turns"):
            fired = look
    assert fired == 6
    calm_evidence = states[(rule.name, "calm")].evidence
    assert calm_evidence is not None and calm_evidence.restarts >= 1
    assert calm_evidence.volume == pytest.approx(8 * 300, rel=0.01)


# -- windows as Prometheus counts them -----------------------------------------------------


def extrapolated_increase(samples: list[tuple[float, float]], end: float, window: float) -> float:
    """``increase(x[window])`` at ``end`` as Prometheus computes it from the scrapes in
    the window: the change between the first and last, extrapolated towards the
    window's edges (by at most half an average scrape interval past the samples)."""
    inside = [(t, v) for t, v in samples if end - window < t <= end]
    if len(inside) < 2:
        return 0.0
    (first_t, first_v), (last_t, last_v) = inside[0], inside[-1]
    sampled = last_t - first_t
    result = last_v - first_v
    average = sampled / (len(inside) - 1)
    to_start, to_end = first_t - (end - window), end - last_t
    if result > 0 and first_v >= 0:
        to_start = min(to_start, sampled * first_v / result)
    span = sampled
    span += to_start if to_start < average * 1.1 else average / 2
    span += to_end if to_end < average * 1.1 else average / 2
    return result * span / sampled


def scraped_traffic(
    rng: random.Random, rps: float, failing: float, seconds: float, phase: float = 7.3
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Poisson requests failing at ``failing``, scraped every 15 s: the (time, value) samples
    of the failures' counter and of all requests' counter."""
    bad: list[tuple[float, float]] = []
    every: list[tuple[float, float]] = []
    failed = served = 0
    moment = 0.0
    scrape = phase
    while scrape <= seconds:
        moment += rng.expovariate(rps)
        while scrape < moment and scrape <= seconds:
            bad.append((scrape, float(failed)))
            every.append((scrape, float(served)))
            scrape += 15.0
        served += 1
        failed += rng.random() < failing
    return bad, every


def test_extrapolation_noise_of_prometheus_windows_is_not_a_regression() -> None:
    """1 req/s with a chronic 3.5 % error rate, judged for six hours on windows as
    Prometheus extrapolates them: every request is counted once, so the noise of
    separate windows never adds up to a burst of errors that did not happen."""
    rule = weighed_rule()
    hours = 6
    rng = random.Random(1)  # noqa: S311 -- simulated traffic, not secrets
    bad, every = scraped_traffic(rng, 1.0, 0.035, hours * 3600.0)

    def counts(end: datetime, window: timedelta) -> tuple[float, float, float]:
        at, seconds = (end - T0).total_seconds(), window.total_seconds()
        return (
            extrapolated_increase(bad, at, seconds),
            extrapolated_increase(every, at, seconds),
            0.0,
        )

    deploy = T0 + 10 * MINUTE
    seen = step_rule(rule, counts, deploy, T0 + timedelta(hours=hours))
    assert first_firing(seen) is None
    restarted = [reason for _, _, reason in seen if "the test restarted" in reason]
    assert restarted  # the test did restart: a healthy run was shown, then judged anew


def test_trouble_firing_before_a_deploy_keeps_its_start_when_it_goes_on() -> None:
    """30 % failing from 20 minutes before a deploy to after it: once the new deploy's
    evidence shows it, the finding started before the deploy (the deploy did not cause
    it); trouble that was only pending (unconfirmed) at the deploy starts anew."""
    deploy = T0 + 30 * MINUTE

    def counts(end: datetime, window: timedelta) -> tuple[float, float, float]:
        def rate(second: float) -> tuple[float, float]:
            return (0.6, 2.0) if second >= 600 else (0.01, 2.0)

        events, volume = window_counts(rate, end, window)
        return events, volume, 0.0

    rule = weighed_rule()
    state = RuleState()
    started = []
    moment = T0 + POLL
    while moment <= deploy + 5 * MINUTE:
        events, volume, _ = counts(moment, rule.evidence_window)
        state, step = evaluate(
            rule,
            Measurement.of(events / volume),
            None,
            state,
            moment,
            (Measurement(events), Measurement(volume)),
            T0 if moment < deploy else deploy,
        )
        if moment > deploy and step.state is FindingState.FIRING:
            started.append(step.started)
        moment += POLL
    assert started, "the trouble goes on after the deploy and its evidence shows it"
    assert all(s is not None and s < deploy for s in started)

    pending_only = RuleState(pending_since=T0, last_seen=T0, evidence=Evidence(T0, T0))
    _, step = evaluate(
        rule,
        Measurement.of(0.3),
        None,
        pending_only,
        deploy + POLL,
        (Measurement(9.0), Measurement(30.0)),
        deploy,
    )
    assert step.started == deploy + POLL


def burst_counts(
    burst_from: float, burst_to: float, after: float | None = None
) -> Callable[[datetime, timedelta], tuple[float, float, float]]:
    """20 req/s failing 0.5 %, 50 % in [burst_from, burst_to) seconds after T0 (and from
    ``after`` on for good, when given)."""

    def counts(end: datetime, window: timedelta) -> tuple[float, float, float]:
        def rate(second: float) -> tuple[float, float]:
            bad = burst_from <= second < burst_to or (after is not None and second >= after)
            return (10.0 if bad else 0.1, 20.0)

        events, volume = window_counts(rate, end, window)
        return events, volume, 0.0

    return counts


def test_a_burst_after_the_version_showed_health_must_be_sustained() -> None:
    """A version healthy for 10 minutes, then 30 s of 50 % failures (a dependency blipped):
    no firing with the shipped 2m sustain; the same trouble for good fires once it held 2m,
    and trouble from the deploy on still fires at the first look."""
    rule = weighed_rule(sustain='"2m"')
    deploy = T0 + 10 * MINUTE
    onset = 600 + 600  # seconds after T0: ten minutes after the deploy
    burst = step_rule(rule, burst_counts(onset, onset + 30), deploy, deploy + 20 * MINUTE)
    assert first_firing(burst) is None
    assert any("sustain 2m" in reason for _, _, reason in burst)
    lasting = step_rule(rule, burst_counts(onset, onset + 30, onset), deploy, deploy + 20 * MINUTE)
    fired = first_firing(lasting)
    assert fired is not None
    assert timedelta(minutes=2) <= fired - (T0 + timedelta(seconds=onset)) <= 3 * MINUTE
    at_once = step_rule(rule, burst_counts(600, 600, 600), deploy, deploy + MINUTE)
    assert first_firing(at_once) == deploy + POLL
    unsustained = step_rule(
        weighed_rule(), burst_counts(onset, onset + 30), deploy, deploy + 20 * MINUTE
    )
    assert first_firing(unsustained) is not None  # without sustain the burst fires


def test_sustain_is_refused_without_events_and_volume() -> None:
    """sustain belongs to rules that weigh their traffic."""
    text = (
        '[[rules]]\nname = "x"\ntrigger = "outage"\nquery = "up"\ncondition = "< 1"\n'
        'sustain = "2m"\n'
    )
    with pytest.raises(InvalidInput, match="sustain is used only with 'events' and 'volume'"):
        parse_rules(text, "rules/x.toml")
