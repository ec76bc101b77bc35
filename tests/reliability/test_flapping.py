"""Flapping: a fault that comes and goes every few minutes for a simulated hour.

A real daemon (:class:`~rollbackd.runtime.Runtime`) in this process, its rule answered by
:class:`~rollbackd.testing.ScriptedMetrics`, its clock a
:class:`~rollbackd.testing.FixedClock`; rollbacks run the ``command``
executor (``true``) and the recovery watch sleeps by moving the clock, so an
hour of 15-second cycles takes a few seconds.

Every 6 minutes CI deploys a new version; 30 seconds later its error rate jumps
to 20 % for two minutes, then drops back: each flap is attributable to the
deploy before it, and high severity rolls back at once (``[policy.high] action
= "rollback"``). The guards allow 2 rollbacks per 30 minutes with a 10-minute
cooldown. Whatever the flapping does, rollbacks must never exceed that limit
in any window, and each flap that is not rolled back must say which guard
stopped it and why.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rollbackd.journal import IncidentRecord, Outcome
from rollbackd.report import render_report
from rollbackd.runtime import Runtime
from rollbackd.testing import FixedClock, ScriptedMetrics
from tests.reliability import figures
from tests.reliability.support import close_daemon, finish_rollbacks, in_process_daemon

SECTION = "flapping"
POLL = timedelta(seconds=15)
HOUR = timedelta(hours=1)
PERIOD = timedelta(minutes=6)
FAULT_AFTER = timedelta(seconds=30)
FAULT_FOR = timedelta(minutes=2)
MAX_ROLLBACKS = 2
WINDOW = timedelta(minutes=30)
COOLDOWN = timedelta(minutes=10)
ERRORS = 'sum by (service) (rate(http_requests_total{code=~"5.."}[1m]))'
RULES = f"""
[[rules]]
name = "error-rate"
trigger = "high_error_rate"
query = '{ERRORS}'
condition = "> 0.05"
for = "30s"
"""


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

[policy.high]
action = "rollback"

[guards]
cooldown = "10m"
max_rollbacks = {MAX_ROLLBACKS}
window = "30m"

[deploys]
known_good_after = "1m"
attribution_window = "10m"

[recovery]
window = "1m"
timeout = "5m"
"""


@dataclass
class Flapping:
    """The daemon, its clock, and the fault spans it has been given so far."""

    daemon: Runtime
    clock: FixedClock
    spans: list[tuple[datetime, datetime]] = field(default_factory=list)
    cycles: int = 0

    def error_rate(self, _service: str, at: datetime) -> float:
        return 0.2 if any(start <= at < end for start, end in self.spans) else 0.001

    def deploy(self, version: str) -> None:
        now = self.clock()
        self.daemon.intake.accept_deploy({"service": "web", "version": version})
        self.spans.append((now + FAULT_AFTER, now + FAULT_AFTER + FAULT_FOR))

    def cycle(self) -> None:
        self.clock.advance(POLL)
        report = self.daemon.loop.cycle()
        assert report is not None, self.daemon.loop.last_cycle_error
        self.cycles += 1
        finish_rollbacks(self.daemon)


@pytest.fixture
def flapping(tmp_path: Path) -> Iterator[Flapping]:
    clock = FixedClock(datetime(2026, 3, 1, 9, 0, tzinfo=UTC))
    metrics = ScriptedMetrics(["web"])
    daemon = in_process_daemon(tmp_path, config_text(tmp_path), RULES, clock, metrics)
    world = Flapping(daemon, clock)
    metrics.set(ERRORS, world.error_rate)
    daemon.restore()
    try:
        yield world
    finally:
        close_daemon(daemon)


def executed_at(record: IncidentRecord) -> datetime | None:
    step = record.step("execute")
    return step.started_at if step is not None and step.outcome is Outcome.OK else None


def simulate(flapping: Flapping, span: timedelta) -> int:
    """v0 (good), then a new flapping version every PERIOD for ``span``; how many flapped."""
    start = flapping.clock()
    flapping.deploy("v0")
    flapping.spans.clear()  # v0 is the good release: it never flaps
    next_deploy = start + PERIOD
    version = 0
    while flapping.clock() < start + span:
        if flapping.clock() >= next_deploy:
            version += 1
            flapping.deploy(f"v{version}")
            next_deploy = flapping.clock() + PERIOD
        flapping.cycle()
    return version


def incidents(daemon: Runtime) -> list[IncidentRecord]:
    """Every incident with its decisions and steps, oldest first."""
    listed = reversed(daemon.journal.incidents(limit=1000))
    return [r for r in (daemon.journal.incident(i.id) for i in listed) if r is not None]


GUARD_SENTENCES = {
    "cooldown": ("cooling down: the last rollback was ", "ago, within the cooldown of 10m"),
    "rollback_limit": (f"reach the limit of {MAX_ROLLBACKS}: no rollback loops",),
}


def test_a_flapping_fault_never_rolls_back_more_than_the_limit_and_says_why_it_stopped(
    flapping: Flapping,
) -> None:
    """An hour of flaps: at most 2 rollbacks per 30 minutes, each refused one names its guard."""
    flaps = simulate(flapping, HOUR)
    records = incidents(flapping.daemon)
    rollbacks = sorted(t for r in records if (t := executed_at(r)) is not None)
    held_back = [r for r in records if r.decisions and r.decisions[0].action != "rollback"]

    guards: dict[str, int] = {}
    for record in held_back:
        for guard in record.decisions[0].guards:
            guards[guard] = guards.get(guard, 0) + 1
    figures.record(SECTION, "simulated time", "1h of 15s cycles")
    figures.record(SECTION, "simulated cycles", flapping.cycles)
    figures.record(SECTION, "flaps (bad deploys)", flaps)
    figures.record(SECTION, "rollbacks executed", len(rollbacks))
    figures.record(SECTION, "flaps held back", len(held_back))
    figures.record(
        SECTION, "guards that held them", ", ".join(f"{k} {v}" for k, v in guards.items())
    )
    figures.record(SECTION, "limit", f"{MAX_ROLLBACKS} per 30m, cooldown 10m")

    assert len(records) == flaps, [(r.id, r.state.value, r.reason) for r in records]
    assert rollbacks, "no flap was ever rolled back: the guards were never put to the test"
    for moment in rollbacks:
        in_window = [t for t in rollbacks if moment - WINDOW < t <= moment]
        assert len(in_window) <= MAX_ROLLBACKS, (moment, rollbacks)
    for earlier, later in itertools.pairwise(rollbacks):
        assert later - earlier >= COOLDOWN, rollbacks
    assert len(rollbacks) + len(held_back) == len(records)

    assert {"cooldown", "rollback_limit"} <= set(guards), guards
    for record in held_back:
        [decision] = record.decisions
        assert (decision.action, decision.proposed) == ("escalate", "rollback"), decision
        assert decision.guards and set(decision.guards) <= set(GUARD_SENTENCES), decision.guards
        assert record.step("execute") is None, record.steps
        report = render_report(record, "markdown")
        for guard in decision.guards:
            for sentence in GUARD_SENTENCES[guard]:
                assert sentence in record.reason, record.reason
                assert sentence in report, report


def test_a_flap_held_back_by_a_guard_names_who_must_decide(flapping: Flapping) -> None:
    """The second flap, held by the cooldown, is escalated to a role (admin), not to None."""
    simulate(flapping, timedelta(minutes=14))
    [held] = [r for r in incidents(flapping.daemon) if r.decisions[0].guards]
    [decision] = held.decisions
    assert decision.guards == ["cooldown"]
    assert "escalated to None" not in held.reason, held.reason
    assert decision.approver == "admin", decision
    assert "escalated to admin instead of rollback" in held.reason, held.reason
