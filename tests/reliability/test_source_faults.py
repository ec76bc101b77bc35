"""Source faults: Prometheus stopped, slow, or answering garbage, for 10 simulated minutes.

A real daemon (:class:`~rollbackd.runtime.Runtime`) in this process queries a real
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

Then a real ``rollbackd run`` (a process, real time, a one-second cycle) over
a stub Prometheus that turns hostile — trickling its headers, accepting and
never answering, answering 50,000-deep JSON, streaming without end — and a
stub app: the PromQL rule is inconclusive with the reason, every cycle
finishes, resident memory stays bounded, and a real outage of the app is still
decided by the health probe within its ``for`` plus a few cycles. And the same
daemon with its descriptors used up by idle connections (a lowered
RLIMIT_NOFILE): its probes fail with EMFILE, which is inconclusive, so the
healthy app is not rolled back.
"""

from __future__ import annotations

import itertools
import re
import resource
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from structlog.testing import capture_logs

from rollbackd.core.engine import CycleReport
from rollbackd.core.model import FindingState
from rollbackd.runtime import Runtime
from rollbackd.testing import FixedClock
from tests.reliability import figures
from tests.reliability.support import (
    LiveServer,
    Received,
    Reply,
    StubServer,
    close_daemon,
    daemon_process,
    in_process_daemon,
    json_reply,
    tokens_toml,
    wait_until,
)
from tests.support.processes import LOOPBACK, RollbackdProcess, free_port

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
        if self.mode == "no series":
            return json_reply({"status": "success", "data": {"resultType": "vector", "result": []}})
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

    daemon: Runtime
    clock: FixedClock
    prometheus: Prometheus
    api: LiveServer
    cycles: int = 0

    def cycle(self) -> CycleReport:
        self.clock.advance(POLL)
        report = self.daemon.loop.cycle()
        assert report is not None, self.daemon.loop.last_cycle_error
        self.cycles += 1
        return report

    def run_for(self, span: timedelta) -> list[CycleReport]:
        return [self.cycle() for _ in range(int(span / POLL))]

    def deploy(self, version: str) -> None:
        self.daemon.intake.accept_deploy({"service": "web", "version": version})

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
    """Prometheus down, slow or garbled for 10 minutes: nothing acts, /readyz and the log say
    so (the log once, not every cycle, unless the error changes), it heals."""
    scenario.deploy("v1")
    for report in scenario.run_for(timedelta(minutes=2)):
        assert all(f.state is FindingState.OK for f in report.findings), report.findings
    assert scenario.daemon.views.services()[0]["last_good_version"] == "v1"
    scenario.deploy("v2")

    port = scenario.prometheus.server.port
    if fault == "stopped":
        scenario.prometheus.server.stop()
    else:
        scenario.prometheus.mode = fault
    with capture_logs() as logs:
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
    assert scenario.daemon.loop.last_cycle_error is None
    said = [e for e in logs if e["event"].startswith("a source cannot be read")]
    assert {read for e in said for read in e["reads"]} == set(PROMQL_RULES), logs
    assert all(explained(e["error"], fault) for e in said), said
    if fault != "garbage":  # one error for the whole fault and both rules: one line
        assert [e["reads"] for e in said] == [sorted(PROMQL_RULES)], said

    if fault == "stopped":
        scenario.prometheus = Prometheus(port)
        scenario.prometheus.server.start()
    else:
        scenario.prometheus.mode = "healthy"
    with capture_logs() as logs:
        recovered = scenario.run_for(timedelta(minutes=2))
    again = [e for e in logs if e["event"] == "a source can be read again"]
    assert [e["reads"] for e in again] == [sorted(PROMQL_RULES)], logs
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


def test_a_prometheus_down_from_the_start_reads_inconclusive_never_ok(
    scenario: Scenario,
) -> None:
    """Prometheus unreachable before the first cycle: every PromQL rule is an inconclusive
    finding with the error, and the service's state is inconclusive, never a quiet "ok"
    (as for a metric the service does not export)."""
    scenario.prometheus.server.stop()
    scenario.deploy("v1")
    reports = scenario.run_for(timedelta(minutes=1))
    assert all(r.decisions == () for r in reports)
    [web] = scenario.daemon.views.services()
    assert web["state"] == "inconclusive", web
    assert web["unmeasured"] == [], web
    shown = {f["rule"]: f for f in web["findings"]}
    assert set(shown) == set(PROMQL_RULES), web
    assert all(explained(f["reason"], "stopped") for f in shown.values()), web


def test_a_service_without_any_series_is_unknown_never_ok(scenario: Scenario) -> None:
    """Prometheus answers, but no rule has a series for the service (nothing exported or
    scraped) and it has no probe: nothing was measured, so its state is unknown, not "ok"."""
    scenario.prometheus.mode = "no series"
    scenario.deploy("v1")
    scenario.run_for(timedelta(minutes=1))
    [web] = scenario.daemon.views.services()
    assert web["unmeasured"] == sorted(PROMQL_RULES), web
    assert web["state"] == "unknown", web
    page = scenario.api.get("/", role="viewer")
    assert page.status_code == 200, page.text
    assert '<span class="state unknown">unknown</span>' in page.text


def test_a_prometheus_answer_trickling_in_is_cut_off_at_the_timeout(scenario: Scenario) -> None:
    """A proxy that drips its answer slower than the timeout makes the rule inconclusive."""
    scenario.prometheus.mode = "trickle"
    report = scenario.cycle()
    figures.count(SECTION, "trickled answers (slow-drip proxy)", scenario.prometheus.faults)
    assert report.decisions == ()
    assert "did not answer within 200ms" in scenario.degraded().get("error-rate", ""), (
        scenario.degraded()
    )


# -- a real `rollbackd run` against a misbehaving Prometheus -------------------------------------

LIVE_TIMEOUT = "500ms"
LIVE_RULES = f"""
[[rules]]
name = "error-rate"
trigger = "high_error_rate"
query = '{ERRORS}'
condition = "> 0.05"
for = "1s"

[[rules]]
name = "outage-health"
trigger = "outage"
probe = "health"
condition = "< 1"
for = "1s"
"""
NESTED = (
    b'{"status": "success", "data": {"resultType": "vector", "result": '
    + b"[" * 50_000
    + b"]" * 50_000
    + b"}}"
)
"""50,000 levels of brackets: a RecursionError in any recursive parser."""
MAX_RSS = 240 << 20
"""The daemon's resident memory stays under this while Prometheus streams without end: about
80 MiB idle, plus the 64 MiB cap on the answers being read at once (max_response_bytes),
about twice over while the HTTP stack hands the chunks on (before the cap: 3.1 GB for a
1.5 GB answer)."""


class Misbehaving:
    """A stub Prometheus that answers healthy until a test sets its ``fault``."""

    def __init__(self) -> None:
        self.fault: str | None = None
        self.faults = 0
        self.server = StubServer(self.answer)

    def answer(self, request: Received) -> Reply:
        query = parse_qs(urlsplit(request.path).query).get("query", [""])[0]
        if self.fault is None:
            return healthy(query)
        self.faults += 1
        body = healthy(query).body
        if self.fault == "trickled headers":
            return Reply(200, body, trickle_headers=0.05)
        if self.fault == "never answers":
            return Reply(200, body, delay=60.0)
        if self.fault == "nested JSON":
            return Reply(200, NESTED)
        return Reply(200, b'{"status": "success", "data": ', endless=b"[1," * 21_845)


class App:
    """The service's health endpoint: 200 until the test takes it down (503)."""

    def __init__(self) -> None:
        self.down = False
        self.server = StubServer(self.answer)

    def answer(self, _request: Received) -> Reply:
        return Reply(503, b"down") if self.down else Reply(200, b'{"status": "ok"}')


def live_config(root: Path, port: int, prometheus: str, health: str) -> str:
    return f"""
[daemon]
listen = "127.0.0.1:{port}"
state_dir = "{root / "state"}"
poll_interval = "1s"
rules = ["rules/*.toml"]
log_format = "json"

[prometheus]
url = "{prometheus}"
timeout = "{LIVE_TIMEOUT}"

[[services]]
name = "web"
health_url = "{health}/health"
executor = "command"
command = ["true"]

[deploys]
known_good_after = "1s"

{tokens_toml()}
"""


@dataclass
class LiveWorld:
    """A real ``rollbackd run`` over a stub Prometheus and a stub app, with v2 just deployed."""

    daemon: RollbackdProcess
    prometheus: Misbehaving
    app: App

    def cycles(self) -> int:
        """Evaluation cycles the daemon has completed, from its own /metrics."""
        text = self.daemon.request("GET", "/metrics", "viewer").text
        found = re.search(r"^rollbackd_evaluations_total (\S+)$", text, re.MULTILINE)
        return int(float(found.group(1))) if found else 0

    def readyz(self) -> dict[str, Any]:
        response = self.daemon.request("GET", "/readyz", "viewer")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def rss(self) -> int:
        """The daemon's resident memory in bytes (VmRSS of /proc/PID/status)."""
        status = Path(f"/proc/{self.daemon.pid}/status").read_text(encoding="utf-8")
        found = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.MULTILINE)
        assert found is not None, status
        return int(found.group(1)) * 1024

    def deploy(self, version: str) -> None:
        response = self.daemon.request(
            "POST", "/api/v1/deploys", "ci", json={"service": "web", "version": version}
        )
        assert response.status_code == 201, response.text


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveWorld]:
    """The daemon running with v1 known good and v2 current, everything healthy."""
    prometheus, app = Misbehaving(), App()
    prometheus.server.start()
    app.server.start()
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "rules.toml").write_text(LIVE_RULES, encoding="utf-8")
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        live_config(tmp_path, port, prometheus.server.url, app.server.url), encoding="utf-8"
    )
    daemon = daemon_process(config, port, tmp_path / "logs")
    try:
        daemon.start()
        world = LiveWorld(daemon, prometheus, app)
        world.deploy("v1")

        def known_good() -> bool:
            [web] = daemon.request("GET", "/api/v1/services", "viewer").json()
            return bool(web["last_good_version"] == "v1")

        wait_until("v1 to be known good", known_good)
        world.deploy("v2")
        yield world
    finally:
        daemon.stop(timeout=10)
        prometheus.server.stop()
        app.server.stop()


LIVE_EXPECTED = {
    "trickled headers": ("did not answer within 500ms",),
    "never answers": ("did not answer within 500ms",),
    "nested JSON": ("not its API: JSON nested more than 64 levels deep",),
    "endless body": ("did not answer within 500ms", "answered more than 64 MiB"),
}
"""What ``/readyz`` says of the error-rate rule, by fault."""


@pytest.mark.parametrize("fault", list(LIVE_EXPECTED))
def test_a_misbehaving_prometheus_leaves_the_probes_deciding_and_every_cycle_finishing(
    live: LiveWorld, fault: str
) -> None:
    """Prometheus trickling, silent, nested or endless: its rule is inconclusive, cycles go on
    at their pace, memory stays bounded, and a real outage is still caught by the probe."""
    live.prometheus.fault = fault
    before = live.cycles()
    wait_until(f"cycles to go on with Prometheus' {fault}", lambda: live.cycles() >= before + 3)
    degraded = wait_until(
        "the error-rate rule to be degraded", lambda: live.readyz()["degraded"].get("error-rate")
    )
    assert any(reason in degraded for reason in LIVE_EXPECTED[fault]), degraded
    assert live.daemon.incidents() == []

    live.app.down = True
    down_at = time.monotonic()
    peak = live.rss()
    while not live.daemon.incidents():
        peak = max(peak, live.rss())
        assert time.monotonic() - down_at < 15, "the outage was not decided within 15s"
        time.sleep(0.1)
    decided_after = time.monotonic() - down_at
    incidents = live.daemon.incidents()
    detail = live.daemon.request("GET", f"/api/v1/incidents/{incidents[0]['id']}", "viewer")
    rules = {rule for decision in detail.json()["decisions"] for rule in decision["rules"]}
    assert rules == {"outage-health"}, detail.json()
    assert peak < MAX_RSS, f"{peak >> 20} MiB resident"
    assert live.readyz()["cycle_error"] is None

    figures.count(SECTION, "live faults (trickled, silent, nested, endless)")
    figures.count(SECTION, "live: misbehaving answers served", live.prometheus.faults)
    figures.count(SECTION, "live: cycles completed during faults", live.cycles() - before)
    figures.count(SECTION, "live: actions from Prometheus' rules", 0)
    figures.record(SECTION, f"live: outage decided after ({fault}), s", round(decided_after, 2))
    figures.record(SECTION, f"live: peak RSS ({fault}), MiB", peak >> 20)


def open_files(pid: int) -> int:
    """Descriptors the process has open now."""
    return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())


def open_files_limit(pid: int) -> int:
    return resource.prlimit(pid, resource.RLIMIT_NOFILE)[0]


def test_a_probe_failing_for_want_of_descriptors_rolls_nothing_back(live: LiveWorld) -> None:
    """A flood of idle connections uses up the daemon's descriptors: its probes of the healthy
    app fail with EMFILE, which is inconclusive, so the healthy v2 is not rolled back."""
    pid = live.daemon.pid
    assert pid is not None
    limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    cycles_before = live.cycles()
    flood: list[socket.socket] = []
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (open_files(pid) + 4, limits[1]))
    try:
        held_until = time.monotonic() + 6  # `for` is 1s, a cycle a second
        probed_before = len(live.app.server.received)
        while time.monotonic() < held_until:
            if open_files(pid) < open_files_limit(pid):  # not full yet, or some were dropped
                flood.append(socket.create_connection((LOOPBACK, live.daemon.port)))
            else:
                time.sleep(0.05)
        probed = len(live.app.server.received) - probed_before
    finally:
        for connection in flood:
            connection.close()
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
    cycles = live.cycles() - cycles_before
    assert cycles >= 4, f"{cycles} cycles in 6s"
    assert probed <= cycles - 3, f"{probed} of {cycles} probes reached the app: not exhausted"
    wait_until("a cycle after the flood", lambda: live.cycles() > cycles_before + cycles + 1)
    assert live.daemon.incidents() == []
    figures.count(SECTION, "EMFILE: idle connections held", len(flood))
    figures.count(SECTION, "EMFILE: cycles with descriptors exhausted", cycles - probed)
    figures.count(SECTION, "EMFILE: rollbacks of the healthy app", 0)
