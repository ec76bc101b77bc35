"""The shipped error-rate rule weighs its traffic in a running daemon, not only in backtest.

A real daemon (:class:`~rollbackd.runtime.Runtime`) in this process reads the
shipped ``error-rate`` rule of ``rules/high.toml`` through its live cycle (the
ratio, the 5xx count and the request count, each an instant query answered by
:class:`~rollbackd.testing.ScriptedMetrics`), on a clock the test moves one
poll interval per cycle.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rollbackd.core.model import Decision
from rollbackd.runtime import Runtime
from rollbackd.testing import FixedClock, ScriptedMetrics
from tests.reliability.support import close_daemon, in_process_daemon

SHIPPED = Path(__file__).resolve().parents[1] / "rules" / "high.toml"
POLL = timedelta(seconds=15)
START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def shipped_error_rate() -> tuple[str, dict[str, str]]:
    """The shipped rule as TOML, and its three queries."""
    [rule] = [r for r in tomllib.loads(SHIPPED.read_text())["rules"] if r["name"] == "error-rate"]
    lines = ["[[rules]]"]
    for key, value in rule.items():
        lines.append(f"{key} = {value!r}" if isinstance(value, str) else f"{key} = {value}")
    return "\n".join(lines) + "\n", {k: rule[k] for k in ("query", "events", "volume")}


def config_text(root: Path) -> str:
    return f"""
[daemon]
listen = "127.0.0.1:9"
state_dir = "{root / "state"}"
poll_interval = "15s"
rules = ["rules/*.toml"]

[[services]]
name = "web"
executor = "command"
command = ["true"]
command_timeout = "10s"

[deploys]
known_good_after = "5m"
attribution_window = "1h"
"""


@dataclass
class Traffic:
    """Requests per minute and the share failing, from a given instant on."""

    per_minute: float
    failing: float
    since: datetime = START


@dataclass
class Live:
    daemon: Runtime
    clock: FixedClock
    phases: list[Traffic]

    def now(self, at: datetime) -> Traffic:
        return [p for p in self.phases if p.since <= at][-1]

    def deploy(self, version: str, traffic: Traffic) -> None:
        traffic.since = self.clock()
        self.phases.append(traffic)
        self.daemon.intake.accept_deploy({"service": "web", "version": version})

    def run_for(self, span: timedelta) -> list[Decision]:
        """Cycles every poll interval for ``span``; the decisions they made."""
        decisions: list[Decision] = []
        for _ in range(int(span / POLL)):
            self.clock.advance(POLL)
            report = self.daemon.loop.cycle()
            assert report is not None, self.daemon.loop.last_cycle_error
            decisions.extend(report.decisions)
        return decisions


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    rules, queries = shipped_error_rate()
    clock = FixedClock(START)
    metrics = ScriptedMetrics(["web"])
    daemon = in_process_daemon(tmp_path, config_text(tmp_path), rules, clock, metrics)
    world = Live(daemon, clock, [Traffic(per_minute=1200, failing=0.001)])

    def per_window(pick: Callable[[Traffic], float]) -> Callable[[str, datetime], float]:
        return lambda _service, at: pick(world.now(at))

    metrics.set(queries["query"], per_window(lambda t: t.failing))
    metrics.set(queries["events"], per_window(lambda t: t.per_minute * t.failing))
    metrics.set(queries["volume"], per_window(lambda t: t.per_minute))
    daemon.restore()
    try:
        yield world
    finally:
        close_daemon(daemon)


def test_a_gross_regression_is_decided_within_30_seconds_by_the_running_daemon(
    live: Live,
) -> None:
    """30 % of 20 req/s failing after a deploy is decided at the first looks, naming the
    evidence; the earlier version, healthy, is never blamed."""
    live.deploy("v1", Traffic(per_minute=1200, failing=0.001))
    assert live.run_for(timedelta(minutes=10)) == []
    live.deploy("v2", Traffic(per_minute=1200, failing=0.3))
    [decision] = live.run_for(timedelta(seconds=30))
    assert decision.rules == ("error-rate",)
    assert decision.target == "v1"
    assert "evidence:" in decision.reason and "confidence 0.99" in decision.reason


def test_a_few_clustered_errors_at_low_traffic_roll_nothing_back(live: Live) -> None:
    """Six requests a minute with a chronic 3 % error rate: three errors in the first minute
    after a deploy are not evidence of a regression, over half an hour of looks."""
    live.deploy("v1", Traffic(per_minute=6, failing=0.03))
    assert live.run_for(timedelta(minutes=10)) == []
    live.deploy("v2", Traffic(per_minute=6, failing=0.5))
    live.phases.append(
        Traffic(per_minute=6, failing=0.03, since=live.clock() + timedelta(minutes=1))
    )
    assert live.run_for(timedelta(minutes=30)) == []


def test_low_traffic_that_really_fails_is_decided_within_minutes(live: Live) -> None:
    """The same six requests a minute, 30 % of them failing after the deploy: decided."""
    live.deploy("v1", Traffic(per_minute=6, failing=0.03))
    assert live.run_for(timedelta(minutes=10)) == []
    live.deploy("v2", Traffic(per_minute=6, failing=0.3))
    decisions = live.run_for(timedelta(minutes=10))
    assert [d.rules for d in decisions] == [("error-rate",)]
