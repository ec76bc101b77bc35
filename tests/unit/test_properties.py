"""Properties of the pure core over arbitrary measurement histories (hypothesis)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from rollbackd.core.matrix import TRIGGER_SEVERITY, assess_severity, impact_severity
from rollbackd.core.model import (
    NO_SERIES,
    FindingState,
    Measurement,
    RuleState,
    Severity,
    Trigger,
    Vector,
)
from rollbackd.core.policy import Guards, ServiceFacts, decide
from rollbackd.core.rules import Key, Previously, Rule, evaluate, evaluate_cycle
from rollbackd.journal.codec import decode_time, encode_time, kept_time

DEPLOYED = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
FACTS = ServiceFacts(current_version="v2", deployed_at=DEPLOYED, last_good_version="v1")
SERVICES = {"web": ["health"], "api": ["health"]}

RULES = [
    Rule.model_validate(
        {
            "name": "error-rate",
            "trigger": "high_error_rate",
            "query": "q",
            "condition": "> 0.05",
            "for": "1m",
        }
    ),
    Rule.model_validate(
        {"name": "outage", "trigger": "outage", "probe": "health", "condition": "> 0", "for": "0s"}
    ),
    Rule.model_validate(
        {
            "name": "latency",
            "trigger": "performance_degradation",
            "query": "q",
            "condition": "> +50%",
            "for": "30s",
        }
    ),
    Rule.model_validate(
        {
            "name": "latency-close",
            "trigger": "performance_degradation",
            "query": "q",
            "condition": "> +20%",
            "min_change": 0.05,
            "for": "0s",
        }
    ),
]
KEYS: list[Key] = [(rule.name, service) for rule in RULES for service in SERVICES]
BASELINES = {key: Measurement.of(0.2) for key in KEYS if key[0].startswith("latency")}
# A baseline per relative (rule, service): none, missing, unusable (0, negative, NaN) or usable.
baselines = st.fixed_dictionaries(
    {
        key: st.sampled_from(
            [
                None,
                Measurement.missing("no value before the deploy"),
                Measurement.of(0.0),
                Measurement.of(-0.1),
                Measurement.of(math.nan),
                Measurement.of(0.2),
                Measurement.of(1.0),
            ]
        )
        for key in BASELINES
    }
)

# A sample: a value (often one that breaks the rules), NaN/inf, or no series at all (None).
samples = st.one_of(
    st.floats(min_value=0.0, max_value=10.0, allow_nan=False),
    st.sampled_from([0.0, 0.01, 0.3, 1.0, 5.0]),
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.none(),
)
# Seconds between cycles (time moves on): often a poll interval or a near miss of a rule's `for`.
steps = st.one_of(
    st.sampled_from([1, 14, 15, 29, 30, 59, 60, 119, 120]),
    st.integers(min_value=1, max_value=400),
)
# One cycle: seconds since the previous one, and a sample per (rule, service).
cycles = st.tuples(steps, st.fixed_dictionaries({key: samples for key in KEYS}))


def to_measurements(samples_by_key: dict[Key, float | None]) -> dict[Key, Measurement]:
    """None is no series: the key is absent, as when a query returns nothing for a service."""
    return {k: Measurement.of(v) for k, v in samples_by_key.items() if v is not None}


def missing(value: float | None) -> bool:
    return value is None or not math.isfinite(value)


@settings(max_examples=150, deadline=None)
@given(st.lists(cycles, min_size=1, max_size=30))
def test_a_cycle_without_data_is_never_firing_and_never_ok(
    history: list[tuple[int, dict[Key, float | None]]],
) -> None:
    """Whatever came before, a (rule, service) with no usable value this cycle is inconclusive."""
    states: dict[Key, RuleState] = {}
    now = DEPLOYED
    for seconds, samples_by_key in history:
        now += timedelta(seconds=seconds)
        cycle = evaluate_cycle(
            RULES, SERVICES, to_measurements(samples_by_key), BASELINES, {}, states, now
        )
        states = cycle.states
        for finding in cycle.findings:
            if missing(samples_by_key[(finding.rule, finding.service)]):
                assert finding.state is FindingState.INCONCLUSIVE, finding.reason
                assert finding.missing_for is not None


@settings(max_examples=150, deadline=None)
@given(st.lists(cycles, min_size=0, max_size=30), st.integers(min_value=0, max_value=600))
def test_findings_of_a_cycle_without_data_never_roll_back(
    history: list[tuple[int, dict[Key, float | None]]], last_step: int
) -> None:
    """If the latest cycle has no data at all, decide() never rolls back, whatever fired before."""
    states: dict[Key, RuleState] = {}
    now = DEPLOYED
    for seconds, samples_by_key in history:
        now += timedelta(seconds=seconds)
        states = evaluate_cycle(
            RULES, SERVICES, to_measurements(samples_by_key), BASELINES, {}, states, now
        ).states
    now += timedelta(seconds=last_step)
    cycle = evaluate_cycle(RULES, SERVICES, {}, BASELINES, {}, states, now)
    for service in SERVICES:
        decision = decide(service, cycle.findings, FACTS, now, guards=Guards())
        assert decision is None or not decision.action.rolls_back


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(list(Trigger)),
    st.one_of(st.none(), st.sampled_from(list(Severity))),
    st.one_of(st.none(), st.floats(), st.floats(min_value=0.0, max_value=1.0)),
)
def test_impact_never_lowers_a_severity(
    trigger: Trigger, override: Severity | None, impact: float | None
) -> None:
    """assess_severity is never below the base; a valid impact lifts it to its own band."""
    base = override or TRIGGER_SEVERITY[trigger]
    severity, why = assess_severity(trigger, override, impact)
    assert severity.rank >= base.rank
    assert why
    if impact is not None and 0.0 <= impact <= 1.0:
        assert severity.rank == max(base.rank, impact_severity(impact).rank)
    else:
        assert severity is base


FOR_SECONDS = [0, 15, 60, 120, 300]


@st.composite
def histories(draw: st.DrawFn) -> tuple[Rule, list[tuple[int, float | None]]]:
    """A rule with some `for`, and evaluations spaced around that `for` and the poll interval."""
    for_seconds = draw(st.sampled_from(FOR_SECONDS))
    near = sorted({max(1, for_seconds + d) for d in (-1, 0, 1)} | {1, 15, 30})
    gap = st.one_of(st.sampled_from(near), st.integers(min_value=1, max_value=400))
    history = draw(st.lists(st.tuples(gap, samples), min_size=1, max_size=40))
    rule = Rule.model_validate(
        {
            "name": "r",
            "trigger": "outage",
            "query": "q",
            "condition": "> 0.05",
            "for": f"{for_seconds}s",
        }
    )
    return rule, history


def observe(value: float | None) -> tuple[Measurement, bool | None]:
    """The measurement for a sample, and whether '> 0.05' holds (None: no data)."""
    measurement = Measurement.missing("no series") if value is None else Measurement.of(value)
    if measurement.is_missing or value is None:
        return measurement, None
    return measurement, value > 0.05


@settings(max_examples=200, deadline=None)
@given(histories())
def test_a_rule_never_fires_before_its_condition_held_for_its_for(
    case: tuple[Rule, list[tuple[int, float | None]]],
) -> None:
    """Firing implies: true at the start of the run, never false since, and for elapsed.

    Conversely, once every evaluation for at least ``for`` had data and held, the rule fires.
    """
    rule, history = case
    state = RuleState()
    now = DEPLOYED
    seen: list[tuple[datetime, bool | None]] = []  # (time, holds) with None for no data
    for seconds, value in history:
        now += timedelta(seconds=seconds)
        measurement, holds = observe(value)
        state, step = evaluate(rule, measurement, None, state, now)
        seen.append((now, holds))

        if step.state is FindingState.FIRING:
            assert holds is True
            assert step.started is not None and step.since is not None
            assert step.since - step.started >= rule.for_
            assert step.since <= now
            run = [h for t, h in seen if t >= step.started and h is not None]
            assert run and all(run), "a false evaluation since the run started"
            assert (step.started, True) in seen, "the run starts with an observed true value"
        elif step.state is FindingState.PENDING:
            assert holds is True
            assert step.started is not None
            assert now - step.started < rule.for_

        # Liveness: evaluations with data that all held over the last `for` mean firing.
        tail: list[tuple[datetime, bool | None]] = []
        for item in reversed(seen):
            if item[1] is not True:
                break
            tail.append(item)
        if tail and now - tail[-1][0] >= rule.for_:
            assert step.state is FindingState.FIRING, step.reason


@settings(max_examples=200, deadline=None)
@given(histories())
def test_evaluation_follows_the_documented_state_machine(
    case: tuple[Rule, list[tuple[int, float | None]]],
) -> None:
    """Against a model of the rules.py docstring: a false value resets, missing data keeps the
    state, a gap (last data to returning data) as long as ``for`` or longer restarts a pending
    clock, a shorter one is bridged, and a rule fires once its run has lasted ``for``.
    """
    rule, history = case
    state = RuleState()
    now = DEPLOYED
    run_start: datetime | None = None  # the model's pending_since
    firing = False
    last_data: datetime | None = None
    gap_since_data = False
    for seconds, value in history:
        now += timedelta(seconds=seconds)
        measurement, holds = observe(value)
        state, step = evaluate(rule, measurement, None, state, now)
        if holds is None:
            gap_since_data = True
            assert step.state is FindingState.INCONCLUSIVE
            assert step.started == run_start
            continue
        if not holds:
            run_start, firing = None, False
            assert step.state is FindingState.OK
        else:
            stale = last_data is not None and now - last_data >= rule.for_
            if run_start is not None and not firing and gap_since_data and stale:
                run_start = None
            if run_start is None:
                run_start = now
            firing = firing or now - run_start >= rule.for_
            assert step.state is (FindingState.FIRING if firing else FindingState.PENDING)
            assert step.started == run_start
        last_data, gap_since_data = now, False


def reference_cycle(
    samples_by_key: dict[Key, float | None],
    states: dict[Key, RuleState],
    now: datetime,
    baselines: dict[Key, Measurement | None],
) -> tuple[dict[Key, RuleState], list[tuple[Key, FindingState, str]]]:
    """Every (rule, service) stepped in full, every state kept: the cycle without shortcuts."""
    kept: dict[Key, RuleState] = {}
    outcomes = []
    for rule in RULES:
        for service, probes in SERVICES.items():
            if rule.probe is not None and rule.probe not in probes:
                continue
            key = (rule.name, service)
            value = samples_by_key[key]
            measurement = (
                Measurement.of(value) if value is not None else Measurement.missing(NO_SERIES)
            )
            state, step = evaluate(
                rule, measurement, baselines.get(key), states.get(key, RuleState()), now
            )
            kept[key] = state
            outcomes.append((key, step.state, step.reason))
    return kept, outcomes


@settings(max_examples=150, deadline=None)
@given(st.lists(cycles, min_size=1, max_size=30), st.booleans(), baselines)
def test_skipping_quiet_rules_changes_no_finding(
    history: list[tuple[int, dict[Key, float | None]]],
    as_vectors: bool,
    drawn: dict[Key, Measurement | None],
) -> None:
    """A cycle that only counts its quiet OK rules concludes what a full evaluation concludes,
    whatever the relative rules' baselines (none, missing, zero, negative, NaN, usable)."""
    given_baselines = {key: b for key, b in drawn.items() if b is not None}
    states: dict[Key, RuleState] = {}
    reference: dict[Key, RuleState] = {}
    now = DEPLOYED
    previously: Previously | None = None
    for seconds, samples_by_key in history:
        now += timedelta(seconds=seconds)
        measurements = to_measurements(samples_by_key)
        vectors = {}
        if as_vectors:  # what the live cycle passes: each query's whole answer
            for rule in RULES:
                vectors[rule.name] = Vector.of(
                    {s: m for (name, s), m in measurements.items() if name == rule.name}
                )
        cycle = evaluate_cycle(
            RULES,
            SERVICES,
            measurements,
            given_baselines,
            {},
            states,
            now,
            vectors or None,
            previously,
        )
        states = cycle.states
        previously = Previously(now, frozenset(r.name for r in RULES), frozenset(SERVICES))
        reference, expected = reference_cycle(samples_by_key, reference, now, drawn)
        got = [((f.rule, f.service), f.state, f.reason) for f in cycle.findings]
        assert got == expected
        assert len(cycle.notable) + sum(cycle.quiet.values()) == len(expected)
        assert all(f.state is not FindingState.OK or f.reason for f in cycle.notable)


@given(
    st.datetimes(
        min_value=datetime(2, 1, 1),  # noqa: DTZ001 -- hypothesis bounds are naive; zones below
        max_value=datetime(9998, 12, 31),  # noqa: DTZ001 -- as above
        timezones=st.sampled_from([UTC, *(timezone(timedelta(minutes=m)) for m in (-690, 330))]),
    )
)
def test_a_kept_time_is_what_its_rfc3339_text_reads_back_as(moment: datetime) -> None:
    """Every store gives back a time as its millisecond RFC 3339 text would read back."""
    assert kept_time(moment) == decode_time(encode_time(moment))
    assert kept_time(moment).isoformat() == decode_time(encode_time(moment)).isoformat()
