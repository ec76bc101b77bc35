"""A running daemon judges a canary side by side through its live cycle, not only in backtest.

A real daemon (:class:`~rollbackd.runtime.Runtime`) in this process reads the shipped
``error-rate`` rule's per-version forms (instant queries answered by
:class:`~rollbackd.testing.ScriptedMetrics`, keyed ``service/version`` as Prometheus
answers the rewritten queries) while the version metric shows v1 and v2 serving together.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rollbackd.core.model import Decision
from rollbackd.core.rules import parse_rules
from rollbackd.runtime import Runtime
from rollbackd.sources.gather import side_by_side_forms
from rollbackd.testing import FixedClock, ScriptedMetrics
from tests.reliability.support import close_daemon, in_process_daemon

SHIPPED = Path(__file__).resolve().parents[1] / "rules" / "high.toml"
POLL = timedelta(seconds=15)
START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
CANARY = START + timedelta(minutes=10)
OLD_RATE, NEW_RATE = 900.0, 300.0  # requests a minute: v1 on three instances, v2 on one
OLD_FAILING, NEW_FAILING = 0.003, 0.3


def shipped_error_rate() -> str:
    [rule] = [r for r in tomllib.loads(SHIPPED.read_text())["rules"] if r["name"] == "error-rate"]
    lines = ["[[rules]]"]
    for key, value in rule.items():
        lines.append(f"{key} = {value!r}" if isinstance(value, str) else f"{key} = {value}")
    return "\n".join(lines) + "\n"


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
version_metric = "app_build_info"
known_good_after = "5m"
attribution_window = "1h"
"""


def split(at: datetime) -> bool:
    return at >= CANARY


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Runtime]:
    """The daemon, over v1 from START and a v2 canary beside it from CANARY."""
    rules = shipped_error_rate()
    clock = FixedClock(START)
    metrics = ScriptedMetrics(["web", "web/v1", "web/v2"])
    metrics.versions["web"] = [(START, None, "v1"), (CANARY, None, "v2")]
    runtime = in_process_daemon(tmp_path, config_text(tmp_path), rules, clock, metrics)
    [rule] = parse_rules(rules, "rules")
    forms, _ = side_by_side_forms(runtime.state.config, (rule,))
    form = forms["error-rate"]
    assert form.events is not None and form.volume is not None

    def whole(pick: str) -> float:
        old = OLD_RATE * (OLD_FAILING if pick == "events" else 1.0)
        new = NEW_RATE * (NEW_FAILING if pick == "events" else 1.0)
        return old + (new if split(clock()) else 0.0)

    def by_version(pick: str) -> object:
        def value_at(service: str, at: datetime) -> float | None:
            if service == "web/v1":
                rate, failing = OLD_RATE, OLD_FAILING
            elif service == "web/v2" and split(at):
                rate, failing = NEW_RATE, NEW_FAILING
            else:
                return None
            return {"query": failing, "events": rate * failing, "volume": rate}[pick]

        return value_at

    assert rule.query is not None and rule.events is not None and rule.volume is not None
    metrics.set(rule.query, lambda s, _: whole("events") / whole("volume") if s == "web" else None)
    metrics.set(rule.events, lambda s, _: whole("events") if s == "web" else None)
    metrics.set(rule.volume, lambda s, _: whole("volume") if s == "web" else None)
    metrics.set(form.query, by_version("query"))  # type: ignore[arg-type]
    metrics.set(form.events, by_version("events"))  # type: ignore[arg-type]
    metrics.set(form.volume, by_version("volume"))  # type: ignore[arg-type]
    runtime.restore()
    try:
        yield runtime
    finally:
        close_daemon(runtime)


def run_until(daemon: Runtime, clock: FixedClock, end: datetime) -> list[Decision]:
    decisions: list[Decision] = []
    while clock() < end:
        clock.advance(POLL)
        report = daemon.loop.cycle()
        assert report is not None, daemon.loop.last_cycle_error
        decisions.extend(report.decisions)
    return decisions


def test_the_live_cycle_rolls_back_a_failing_canary_to_the_version_alongside(
    daemon: Runtime,
) -> None:
    """v2 on one instance of four fails 30 % beside v1 at 0.3 %: within a minute of the
    canary the daemon asks to roll back v2's share to v1, and journals the scope (the
    whole-service rule, up by the canary alone, is folded into the same decision)."""
    clock = daemon.state.clock
    assert isinstance(clock, FixedClock)
    assert run_until(daemon, clock, CANARY - POLL) == []
    decisions = run_until(daemon, clock, CANARY + timedelta(seconds=60))
    [decision] = decisions
    assert "canary:error-rate" in decision.rules, decision
    assert (decision.target, decision.scope, decision.canary_version) == ("v1", "canary", "v2")
    [incident] = daemon.state.journal.incidents(service="web")
    assert (incident.facts.scope, incident.facts.canary_version) == ("canary", "v2")
    assert "side by side" in incident.reason
