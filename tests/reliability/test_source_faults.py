"""Source faults: Prometheus stopped, slow, or answering garbage, for 10 simulated minutes.

A real :class:`~rollbackd.service.Daemon` in this process queries a real
:class:`~rollbackd.sources.prometheus.PrometheusSource` (HTTP, with its
timeout) pointed at a stub Prometheus on loopback. The daemon's clock is a
:class:`~rollbackd.testing.FixedClock` moved by ``poll_interval`` before each
cycle, so 10 minutes of cycles take seconds (the slow stub costs the real
timeout per query, 200ms, and no more).

Each scenario: two simulated minutes of healthy data (v1 becomes known good),
then v2 is deployed and the source fails for 10 minutes, then healthy data
returns. During the fault: no action, every PromQL rule inconclusive with the
source's error in its reason, ``/readyz`` naming each degraded rule; after it:
findings OK and nothing degraded, with no restart, reload or help.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from rollbackd.engine import CycleReport
from rollbackd.model import FindingState
from rollbackd.service import Daemon
from rollbackd.testing import FixedClock
from tests.reliability import figures
from tests.reliability.support import (
    LiveServer,
    Received,
    Reply,
    StubServer,
    close_daemon,
    in_process_daemon,
    json_reply,
    tokens_toml,
)
from tests.support.processes import free_port

pytestmark = pytest.mark.integration

SECTION = "source faults"
POLL = timedelta(seconds=30)
FAULT = timedelta(minutes=10)
ERRORS = (
    'sum by (service) (rate(http_requests_total{code=~"5.."}[2m]))'
    " / sum by (service) (rate(http_requests_total[2m]))"
)
LATENCY = (
    "histogram_quantile(0.95,"
    " sum by (service, le) (rate(http_request_duration_seconds_bucket[5m])))"
)
RULES = f"""
[[rules]]
name = "error-rate"
trigger = "high_error_rate"
query = '{ERRORS}'
condition = "> 0.05"
for = "1m"

[[rules]]
name = "latency-regression"
trigger = "performance_degradation"
query = '{LATENCY}'
condition = "> +50%"
for = "2m"
baseline_window = "10m"
"""
PROMQL_RULES = ("error-rate", "latency-regression")

GARBAGE = [
    Reply(200, b'{"status": "success", "data": {"resultType": "vector", "result": ['),
    Reply(200, b"<html><body>502 Bad Gateway</body></html>", "text/html"),
    Reply(200, b'{"status": "success", "data": {}}'),
    Reply(200, b'{"status": "success", "data": {"resultType": "vector", "result": {"a": 1}}}'),
    Reply(200, b""),
    Reply(503, b"<html>upstream connect error</html>", "text/html"),
    Reply(200, b"\xff\xfe\x00garbage\x00"),
]
"""Answers that are not Prometheus' API: truncated, HTML, wrong shapes, empty, binary, 503."""


class Prometheus:
    """A stub Prometheus whose answers a test switches: healthy, slow, garbage or trickling."""

    def __init__(self, port: int | None = None) -> None:
        self.mode = "healthy"
        self.faults = 0
        self.garbage = itertools.cycle(GARBAGE)
        self.server = StubServer(self.answer, port)

    def answer(self, request: Received) -> Reply:
        query = parse_qs(urlsplit(request.path).query).get("query", [""])[0]
        if self.mode == "healthy":
            return healthy(query)
        self.faults += 1
        if self.mode == "slow":
            return Reply(200, healthy(query).body, delay=10.0)
        if self.mode == "trickle":
            return Reply(200, healthy(query).body, trickle=0.01)
        return next(self.garbage)


def healthy(query: str) -> Reply:
    """A healthy service: 0.1 % errors, p95 latency 0.2s (also before the deploy)."""
    value = "0.2" if "duration" in query else "0.001"
    return json_reply(
        {
            "status": "success",
            "data": {
                "resultType": "vector",
                "result": [{"metric": {"service": "web"}, "value": [1700000000, value]}],
            },
        }
    )


def config_text(root: Path, url: str) -> str:
    return f"""
[daemon]
listen = "127.0.0.1:9"
state_dir = "{root / "state"}"
poll_interval = "{int(POLL.total_seconds())}s"
rules = ["rules/*.toml"]

[prometheus]
url = "{url}"
timeout = "200ms"

[[services]]
name = "web"
executor = "command"
command = ["true"]

[deploys]
known_good_after = "1m"

{tokens_toml()}
"""


@dataclass
class Scenario:
    """The daemon, its clock, the stub behind the URL, and the API over the daemon."""

    daemon: Daemon
    clock: FixedClock
    prometheus: Prometheus
    api: LiveServer
    cycles: int = 0

    def cycle(self) -> CycleReport:
        self.clock.advance(POLL)
        report = self.daemon.cycle()
        assert report is not None, self.daemon.last_cycle_error
        self.cycles += 1
        return report

    def run_for(self, span: timedelta) -> list[CycleReport]:
        return [self.cycle() for _ in range(int(span / POLL))]

    def deploy(self, version: str) -> None:
        self.daemon.accept_deploy({"service": "web", "version": version})

    def degraded(self) -> dict[str, str]:
        response = self.api.get("/readyz")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["ready"] is True
        degraded: dict[str, str] = body["degraded"]
        return degraded


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[Scenario]:
    """A daemon over a healthy stub Prometheus; the stub and the daemon are stopped at the end."""
    prometheus = Prometheus(free_port())
    prometheus.server.start()
    clock = FixedClock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    daemon = in_process_daemon(tmp_path, config_text(tmp_path, prometheus.server.url), RULES, clock)
    daemon.start()
    api = LiveServer(daemon).start()
    try:
        yield Scenario(daemon, clock, prometheus, api)
    finally:
        api.stop()
        prometheus.server.stop()
        close_daemon(daemon)


EXPECTED = {
    "stopped": ("is unreachable",),
    "slow": ("did not answer within 200ms",),
    "garbage": (
        "answered something that is not its API",
        "refused the query: HTTP Status Code 503",
        "the query does not return an instant vector",
    ),
}
"""What the reason of an inconclusive finding says, by fault."""


def explained(reason: str, fault: str) -> bool:
    return any(fragment in reason for fragment in EXPECTED[fault])


@pytest.mark.parametrize("fault", ["stopped", "slow", "garbage"])
def test_a_failing_prometheus_leads_to_no_action_and_the_daemon_recovers_by_itself(
    scenario: Scenario, fault: str
) -> None:
    """Prometheus down, slow or garbled for 10 minutes: nothing acts, /readyz says so, it heals."""
    scenario.deploy("v1")
    for report in scenario.run_for(timedelta(minutes=2)):
        assert all(f.state is FindingState.OK for f in report.findings), report.findings
    assert scenario.daemon.services_view()[0]["last_good_version"] == "v1"
    scenario.deploy("v2")

    port = scenario.prometheus.server.port
    if fault == "stopped":
        scenario.prometheus.server.stop()
    else:
        scenario.prometheus.mode = fault
    reports = scenario.run_for(FAULT)
    for report in reports:
        assert report.decisions == ()
        promql = [f for f in report.findings if f.rule in PROMQL_RULES]
        assert sorted(f.rule for f in promql) == sorted(PROMQL_RULES)
        for finding in promql:
            assert finding.state is FindingState.INCONCLUSIVE, finding
            assert "inconclusive for" in finding.reason, finding.reason
            assert explained(finding.reason, fault), finding.reason
        assert set(report.source_errors) == set(PROMQL_RULES), report.source_errors
    degraded = scenario.degraded()
    assert set(degraded) == set(PROMQL_RULES), degraded
    assert all(explained(reason, fault) for reason in degraded.values()), degraded
    assert scenario.daemon.journal.incidents() == []
    assert scenario.daemon.last_cycle_error is None

    if fault == "stopped":
        scenario.prometheus = Prometheus(port)
        scenario.prometheus.server.start()
    else:
        scenario.prometheus.mode = "healthy"
    recovered = scenario.run_for(timedelta(minutes=2))
    final = recovered[-1]
    assert final.source_errors == {}
    assert [f.state for f in final.findings] == [FindingState.OK] * len(PROMQL_RULES)
    assert scenario.degraded() == {}
    assert all(r.decisions == () for r in recovered)
    assert scenario.daemon.journal.incidents() == []

    figures.count(SECTION, "scenarios (stopped, slow, garbage)")
    figures.count(SECTION, "simulated minutes of fault", int(FAULT.total_seconds() // 60))
    figures.count(SECTION, "simulated cycles", scenario.cycles)
    figures.count(SECTION, "cycles with the source failing", len(reports))
    figures.count(SECTION, "slow or garbage answers served", scenario.prometheus.faults)
    figures.count(SECTION, "actions taken during faults", 0)


def test_a_prometheus_answer_trickling_in_is_cut_off_at_the_timeout(scenario: Scenario) -> None:
    """A proxy that drips its answer slower than the timeout makes the rule inconclusive."""
    scenario.prometheus.mode = "trickle"
    report = scenario.cycle()
    figures.count(SECTION, "trickled answers (slow-drip proxy)", scenario.prometheus.faults)
    assert report.decisions == ()
    assert "did not answer within 200ms" in scenario.degraded().get("error-rate", ""), (
        scenario.degraded()
    )
