"""The recovery watch of the running daemon: what an incident keeps for it, and its verdicts.

A real daemon (:class:`~rollbackd.runtime.Runtime`) in this process with a real SQLite
journal, its rules answered by :class:`~rollbackd.testing.ScriptedMetrics`, on
a :class:`~rollbackd.testing.FixedClock` that the recovery watch moves as it
sleeps. Rollbacks run the ``command`` executor, which touches a file; the
scripted metrics change once it exists, as a real service would once rolled
back. v1 runs clean until it is known good, then v2 breaks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rollbackd.actions import StepResult
from rollbackd.journal import IncidentRecord, IncidentState, Outcome
from rollbackd.notify import Message
from rollbackd.runtime import Runtime
from rollbackd.testing import FixedClock, ScriptedMetrics, ValueAt
from tests.reliability.support import close_daemon, finish_rollbacks, in_process_daemon

POLL = timedelta(seconds=15)
ERRORS = 'sum by (service) (rate(http_requests_total{code=~"5.."}[1m]))'
LATENCY = "histogram_quantile(0.95, sum by (service, le) (rate(duration_bucket[1m])))"
RULES = f"""
[[rules]]
name = "error-rate"
trigger = "high_error_rate"
query = '{ERRORS}'
condition = "> 0.05"

[[rules]]
name = "latency-regression"
trigger = "performance_degradation"
query = '{LATENCY}'
condition = "> +50%"
baseline_window = "10m"
"""


def config_text(root: Path, rolled_back: Path) -> str:
    return f"""
[daemon]
listen = "127.0.0.1:9"
state_dir = "{root / "state"}"
poll_interval = "15s"
rules = ["rules/*.toml"]

[[services]]
name = "web"
executor = "command"
command = ["touch", "{rolled_back}"]
command_timeout = "10s"

[policy.high]
action = "rollback"

[deploys]
known_good_after = "1m"

[recovery]
window = "1m"
timeout = "5m"
"""


@dataclass
class Recorder:
    """A notifier that keeps every message it is given."""

    messages: list[Message] = field(default_factory=list)

    def notify(self, message: Message) -> StepResult:
        self.messages.append(message)
        return StepResult(True, "kept by the test")


@dataclass
class World:
    """The daemon, its clock and metrics, and the file the rollback command touches."""

    daemon: Runtime
    clock: FixedClock
    metrics: ScriptedMetrics
    rolled_back: Path
    told: Recorder

    def before_and_after(self, before: float | None, after: float | None) -> ValueAt:
        """A scripted value: ``before`` until the rollback ran, ``after`` from then on."""
        return lambda _service, _at: after if self.rolled_back.exists() else before

    def cycle(self) -> None:
        self.clock.advance(POLL)
        assert self.daemon.loop.cycle() is not None, self.daemon.loop.last_cycle_error
        finish_rollbacks(self.daemon)

    def v1_good_then_v2(self) -> None:
        """v1 runs clean past known_good_after; then v2 is deployed."""
        self.daemon.intake.accept_deploy({"service": "web", "version": "v1"})
        for _ in range(6):
            self.cycle()
        self.daemon.intake.accept_deploy({"service": "web", "version": "v2"})

    def incident(self) -> IncidentRecord:
        [listed] = self.daemon.journal.incidents()
        record = self.daemon.journal.incident(listed.id)
        assert record is not None
        return record

    def webhook(self, status: str, starts: datetime, ends: datetime | None = None) -> None:
        alert = {
            "status": status,
            "labels": {"alertname": "WebDown", "service": "web", "rollbackd_trigger": "outage"},
            "annotations": {},
            "startsAt": starts.isoformat(),
            "endsAt": ends.isoformat() if ends else "0001-01-01T00:00:00Z",
            "fingerprint": "7b96a6924af08f2f",
        }
        body = {"version": "4", "status": status, "alerts": [alert]}
        self.daemon.intake.submit_webhook(json.dumps(body).encode()).result()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    clock = FixedClock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    metrics = ScriptedMetrics(["web"])
    rolled_back = tmp_path / "rolled-back"
    daemon = in_process_daemon(tmp_path, config_text(tmp_path, rolled_back), RULES, clock, metrics)
    told = Recorder()
    daemon.state.checklist.parts.notifier = told
    world = World(daemon, clock, metrics, rolled_back, told)
    metrics.set(ERRORS, world.before_and_after(0.0, 0.0))
    metrics.set(LATENCY, world.before_and_after(0.12, 0.12))
    daemon.restore()
    try:
        yield world
    finally:
        close_daemon(daemon)


def test_the_latency_baseline_of_a_rule_that_never_fired_is_kept_and_recovery_proven(
    world: World,
) -> None:
    """Only errors fired on v2, yet the watch compares latency with v1's and says so."""
    world.v1_good_then_v2()
    world.metrics.set(ERRORS, world.before_and_after(0.2, 0.0))
    world.cycle()
    incident = world.incident()
    assert [d.rules for d in incident.decisions] == [["error-rate"]]
    assert incident.facts.baselines == {"latency-regression": pytest.approx(0.12)}
    assert incident.state is IncidentState.RECOVERED, incident.summary
    assert incident.summary.startswith("recovered: every criterion with data held for 1m")
    assert incident.summary.endswith(
        ": error rate (error-rate) 0 < 0.01; "
        "latency (latency-regression) 0.12 <= 0.144 (pre-deploy baseline 0.12 +20%)"
    )


def test_a_rollback_whose_error_series_vanished_recovers_on_the_latency_it_kept(
    world: World,
) -> None:
    """The restarted app has no 5xx series: no data, said, and latency proves the recovery."""
    world.v1_good_then_v2()
    world.metrics.set(ERRORS, world.before_and_after(0.2, None))
    world.cycle()
    incident = world.incident()
    assert incident.state is IncidentState.RECOVERED, incident.summary
    assert "error rate (error-rate): no data (no series for this service; " in incident.summary


def test_when_nothing_has_data_recovery_is_unknown_and_a_person_is_asked(world: World) -> None:
    """No error-rate, no latency, no probe after the rollback: escalated as unproven."""
    world.v1_good_then_v2()
    world.metrics.set(ERRORS, world.before_and_after(0.2, None))
    world.metrics.set(LATENCY, world.before_and_after(0.12, None))
    world.cycle()
    incident = world.incident()
    assert incident.state is IncidentState.ESCALATED
    assert incident.summary.startswith(
        "rolled back, but recovery could not be proven; check the service: "
        "recovery unknown after 5m: no criterion fails, but nothing proves health: "
        "error rate (error-rate): no data (no series for this service; "
    )
    recovery = incident.step("recovery")
    assert recovery is not None and recovery.outcome is Outcome.UNKNOWN
    assert incident.decisions[-1].action == "escalate"
    [asked] = [m for m in world.told.messages if "recovery not proven" in m.title]
    assert asked.title == "web: rolled back, recovery not proven, a person must check"
    assert asked.text == incident.summary


@pytest.mark.parametrize("resolved", [False, True])
def test_the_alert_that_triggered_the_rollback_must_be_resolved_for_recovery(
    world: World, resolved: bool
) -> None:
    """Metrics look healthy after the rollback, but the alert that asked for it must end too."""
    world.v1_good_then_v2()
    starts = world.clock() + timedelta(seconds=1)
    world.webhook("firing", starts)
    sleep = world.daemon.state.checklist.parts.watcher.sleep
    sleeps = []

    def sleep_and_resolve(seconds: float) -> object:
        sleeps.append(seconds)
        if resolved and len(sleeps) == 2:
            world.webhook("resolved", starts, world.clock())
        return sleep(seconds)

    world.daemon.state.checklist.parts.watcher.sleep = sleep_and_resolve
    world.cycle()
    incident = world.incident()
    assert incident.decisions[0].rules == ["alert:WebDown"]
    if resolved:
        assert incident.state is IncidentState.RECOVERED, incident.summary
        assert "alert WebDown resolved" in incident.summary
    else:
        assert incident.state is IncidentState.NOT_RECOVERED, incident.summary
        assert incident.summary.startswith(
            "the rollback did not recover: not recovered after 5m: alert WebDown still firing "
            f"(since {starts:%Y-%m-%dT%H:%M:%SZ}); error rate (error-rate) 0 < 0.01"
        )
