"""Baselines of many services deployed at once: one read per rule, also when it fails; a
replay's reads of history ahead of its stepping."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from rollbackd.config import parse_config
from rollbackd.core.deploys import DeployHistory
from rollbackd.core.engine import Engine
from rollbackd.core.model import Matrix, Vector
from rollbackd.core.rules import parse_rules
from rollbackd.replay import Replay, _Steps, _vector_at
from rollbackd.sources.gather import LiveCycle
from rollbackd.testing import ScriptedMetrics, constant

NOON = datetime(2026, 3, 1, 12, tzinfo=UTC)
SERVICES = [f"svc{index:03d}" for index in range(200)]
RULES = """
[[rules]]
name = "latency-regression"
trigger = "performance_degradation"
query = "latency"
condition = "> +50%"
baseline_window = "30m"
for = "5m"
"""


@dataclass
class SlowBaselines(ScriptedMetrics):
    """Answers the baselines' subquery in 50 ms, as a real Prometheus takes its time."""

    def instant(self, query: str, at: datetime) -> Vector:
        if query.startswith("avg_over_time("):
            time.sleep(0.05)
        return super().instant(query, at)


@dataclass
class BaselinesDown(ScriptedMetrics):
    """Answers every query but the baselines' (a subquery that times out)."""

    def instant(self, query: str, at: datetime) -> Vector:
        if query.startswith("avg_over_time("):
            self.calls.append(("instant", query))
            return Vector(error="Prometheus did not answer within 10s")
        return super().instant(query, at)


def live_cycle(metrics: ScriptedMetrics) -> LiveCycle:
    tables = "".join(
        f'[[services]]\nname = "{name}"\nexecutor = "command"\ncommand = ["true"]\n'
        for name in SERVICES
    )
    config = parse_config(
        f'[deploys]\nversion_metric = "app_build_info"\nknown_good_after = "30m"\n{tables}',
        "config.toml",
    )
    engine = Engine(
        config.engine_settings(),
        tuple(parse_rules(RULES, "rules.toml")),
        DeployHistory(config.deploys.known_good_after),
    )
    return LiveCycle(engine, config, metrics, None)


def world(metrics: ScriptedMetrics) -> ScriptedMetrics:
    metrics.set("latency", constant(0.2))
    for name in SERVICES:
        metrics.deploy(name, "v1", NOON - timedelta(hours=1))
    return metrics


def baseline_reads(metrics: ScriptedMetrics) -> int:
    return sum(1 for _, query in metrics.calls if query.startswith("avg_over_time("))


def test_services_deployed_at_once_share_one_baseline_read() -> None:
    """Two hundred services first seen together: one baseline query, and every one has it."""
    metrics = world(SlowBaselines(SERVICES))
    live = live_cycle(metrics)
    inputs = live.gather(NOON)
    assert baseline_reads(metrics) == 1
    assert {inputs.baselines[("latency-regression", name)].value for name in SERVICES} == {0.2}
    live.close()


def test_a_failed_baseline_read_is_tried_once_per_cycle_not_once_per_service() -> None:
    """A baseline query that fails costs one read a cycle; the baselines stay missing."""
    metrics = world(BaselinesDown(SERVICES))
    live = live_cycle(metrics)
    first = live.gather(NOON)
    assert baseline_reads(metrics) == 1
    assert first.baselines[("latency-regression", "svc007")].is_missing
    live.gather(NOON + timedelta(seconds=30))
    assert baseline_reads(metrics) == 2  # once a cycle
    live.close()


@dataclass
class ThreadRecording(ScriptedMetrics):
    """Records which thread read each baseline."""

    readers: list[str] = field(default_factory=list)

    def instant(self, query: str, at: datetime) -> Vector:
        if query.startswith("avg_over_time("):
            self.readers.append(threading.current_thread().name)
        return super().instant(query, at)


def test_a_replay_reads_every_deploy_s_baseline_ahead_of_its_stepping() -> None:
    """A backtest never waits for a baseline: each deploy's is read once, by the threads
    that fetch history ahead, before the engine steps to the deploy."""
    services = SERVICES[:20]
    metrics = ThreadRecording(services)
    metrics.set("latency", constant(0.2))
    for index, name in enumerate(services):
        metrics.deploy(name, "v1", NOON - timedelta(days=1))
        metrics.deploy(name, "v2", NOON + index * timedelta(minutes=7))
    tables = "".join(
        f'[[services]]\nname = "{name}"\nexecutor = "command"\ncommand = ["true"]\n'
        for name in services
    )
    config = parse_config(
        f'[deploys]\nversion_metric = "app_build_info"\nknown_good_after = "30m"\n{tables}',
        "config.toml",
    )
    replay = Replay(config, tuple(parse_rules(RULES, "rules.toml")), metrics, timedelta(minutes=1))
    reports = list(replay.run(NOON - timedelta(hours=1), NOON + timedelta(hours=3)))
    assert len(reports) == 4 * 60 + 1
    assert len(metrics.readers) == len(services) + 1  # each v2, and the v1s seen first
    assert all(reader.startswith("replay-fetch") for reader in metrics.readers), metrics.readers
    current = replay.baselines.current(replay.engine.rules, services, replay.history)
    assert {m.value for m in current[0].values()} == {0.2}


_STEP_VALUES = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1.5, 1e308, -1e308]),
)


@settings(max_examples=200, deadline=None)
@given(
    series=st.dictionaries(
        st.sampled_from(["web", "api", "db", "queue"]),
        st.lists(_STEP_VALUES, min_size=4, max_size=4),
        max_size=4,
    ),
    ambiguous=st.sets(st.sampled_from(["web", "api"])),
    failed=st.booleans(),
)
def test_a_replay_reads_each_step_of_a_window_as_one_step_at_a_time(
    series: dict[str, list[float | None]], ambiguous: set[str], failed: bool
) -> None:
    """Gathered step by step once per window, a matrix gives at each step what reading that
    step alone gives: the same numbers, problems and error, gaps and NaN included."""
    window = [NOON + index * timedelta(seconds=30) for index in range(4)]
    stamps = [round(moment.timestamp() * 1000) for moment in window]
    matrix = Matrix(
        {s: {ms: v for ms, v in zip(stamps, values, strict=True) if v is not None}
         for s, values in series.items()},
        error="Prometheus at http://p:9090 is unreachable" if failed else None,
        ambiguous={s: "2 series for this service" for s in ambiguous},
    )  # fmt: skip
    steps = _Steps(window)
    for ms in [*stamps, stamps[-1] + 30_000]:
        assert steps.at(matrix, ms) == _vector_at(matrix, ms)
