"""Alertmanager's API as a source (``[alertmanager] url``), against a real Alertmanager.

One ``prometheus-alertmanager`` serves the module; its webhook goes to a closed port, so
every webhook is lost and only the API tells. Alerts are posted to its API as Prometheus
would (``POST /api/v2/alerts``); each test uses its own service, so their alerts never
meet. The daemon runs in this process (:class:`~rollbackd.runtime.Runtime`) on a fixed
clock ten minutes behind the wall clock (Alertmanager keeps real time), its version
metric scripted: a service no rule watches, known to rollbackd only through alerts.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest

from rollbackd.core.model import FindingState
from rollbackd.evaluation import evaluate_now
from rollbackd.journal import journal_path
from rollbackd.loader import load
from rollbackd.runtime import Runtime
from rollbackd.sources.alertmanager import SOURCE, AlertmanagerError, AlertmanagerSource
from rollbackd.sources.alerts import parse_webhook
from rollbackd.testing import FixedClock, ScriptedMetrics
from tests.reliability.support import close_daemon, finish_rollbacks, in_process_daemon
from tests.support.alertmanager import Alertmanager, require_alertmanager
from tests.support.processes import LOOPBACK, free_port, serving

pytestmark = pytest.mark.integration

POLL = timedelta(seconds=15)
EXAMPLE = Path("/work/shared/examples/alertmanager-webhook-v4-from-prometheus.json")


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Alertmanager]:
    """A real Alertmanager whose webhooks are all lost (a closed port)."""
    require_alertmanager()
    am = Alertmanager(tmp_path_factory.mktemp("am"), f"http://{LOOPBACK}:9", token="unused")  # noqa: S106 -- no webhook arrives
    am.start()
    try:
        yield am
    finally:
        am.stop()


def config_text(
    root: Path, service: str, url: str, health: str | None = None, keys: str = ""
) -> str:
    """A daemon's config watching ``service`` with ``[alertmanager] url`` (and ``keys``)."""
    probe = f'health_url = "{health}"\n' if health else ""
    return f"""
[daemon]
listen = "127.0.0.1:9"
state_dir = "{root / "state"}"
poll_interval = "15s"
rules = ["rules/*.toml"]

[[services]]
name = "{service}"
executor = "command"
command = ["true"]
command_timeout = "10s"
{probe}
[deploys]
version_metric = "app_build_info"
known_good_after = "1m"

[recovery]
window = "1m"
timeout = "2m"

[alertmanager]
url = "{url}"
timeout = "1s"
{keys}"""


HEALTH_RULE = """
[[rules]]
name = "outage-health"
trigger = "outage"
probe = "health"
condition = "< 1"
"""


def daemon_for(
    root: Path, service: str, url: str, versions: list[tuple[datetime, datetime | None, str]],
    health: str | None = None, keys: str = "",
) -> tuple[Runtime, FixedClock]:  # fmt: skip
    """An in-process daemon watching ``service`` (versions scripted), cycles run by the test."""
    start = versions[0][0]
    clock = FixedClock(start)
    metrics = ScriptedMetrics([service])
    metrics.versions[service] = versions
    rules = HEALTH_RULE if health else ""
    config = config_text(root, service, url, health, keys)
    daemon = in_process_daemon(root, config, rules, clock, metrics)
    daemon.restore()
    return daemon, clock


def cycles(daemon: Runtime, clock: FixedClock, count: int) -> None:
    for _ in range(count):
        daemon.loop.cycle()
        clock.advance(POLL)


def post(
    am: Alertmanager, service: str, name: str, start: datetime, end: datetime | None = None
) -> None:
    am.post_alert(
        {"alertname": name, "service": service, "rollbackd_trigger": "outage"},
        starts_at=start,
        ends_at=end,
    )


@pytest.mark.parametrize("answering", [True, False], ids=["quiet", "down"])
def test_a_quiet_alertmanager_makes_a_version_known_good_and_a_down_one_does_not(
    tmp_path: Path, alertmanager: Alertmanager, answering: bool
) -> None:
    """A service watched only through alerts gets v1 known good once Alertmanager answered
    with no alert for known_good_after; with Alertmanager down it never does, and says why."""
    service = f"shop-{'quiet' if answering else 'down'}"
    url = alertmanager.url if answering else f"http://{LOOPBACK}:{free_port()}"
    start = datetime.now(UTC) - timedelta(minutes=10)
    daemon, clock = daemon_for(tmp_path, service, url, [(start, None, "v1")])
    try:
        cycles(daemon, clock, 6)  # 90 s of cycles: more than known_good_after (1m)
        last_good, _ = daemon.state.history.last_good(service)
        _, readiness = daemon.views.readiness()
        if answering:
            assert last_good == "v1"
            assert "alertmanager" not in readiness["degraded"]
        else:
            assert last_good is None
            assert "is unreachable" in readiness["degraded"]["alertmanager"]
    finally:
        close_daemon(daemon)


def roll_back_while_it_still_fires(
    daemon: Runtime, clock: FixedClock, alertmanager: Alertmanager, service: str, v2_at: datetime
) -> None:
    """v1 runs clean past known_good_after, then an alert on v2 posted to ``alertmanager``
    (no webhook) rolls it back, and the watch never declares recovery while it fires."""
    cycles(daemon, clock, 9)
    assert daemon.state.history.last_good(service)[0] == "v1"
    post(alertmanager, service, "PayDown", v2_at + timedelta(seconds=5))
    cycles(daemon, clock, 1)
    assert finish_rollbacks(daemon) == 1
    [incident] = daemon.state.journal.incidents(limit=None)
    assert incident.state.value == "not_recovered", incident
    assert "alert PayDown still firing" in incident.summary


def test_an_alert_still_firing_in_alertmanager_keeps_recovery_from_being_declared(
    tmp_path: Path, alertmanager: Alertmanager
) -> None:
    """An alert no webhook reported, firing in Alertmanager, rolls v2 back; while it still
    fires there the watch never declares recovery, though the health probe passes."""
    service = "pay"
    start = datetime.now(UTC) - timedelta(minutes=10)
    v2_at = start + timedelta(minutes=2)
    versions = [(start, v2_at, "v1"), (v2_at, None, "v2")]
    health = f"{alertmanager.url}/-/healthy"  # a real endpoint answering 200
    daemon, clock = daemon_for(tmp_path, service, alertmanager.url, versions, health)
    try:
        roll_back_while_it_still_fires(daemon, clock, alertmanager, service, v2_at)
    finally:
        close_daemon(daemon)


class CutAfterAlert:
    """A front to the real Alertmanager that answers 503 from the read after the first
    answer naming ``service``: it goes down just after the alert triggered a rollback."""

    def __init__(self, upstream: str, service: str) -> None:
        self.upstream = upstream
        self.mark = f'"service":"{service}"'.encode()
        self.cut = threading.Event()

    def __call__(self, handler: BaseHTTPRequestHandler) -> None:
        if self.cut.is_set():
            _body(503, b"Service Unavailable")(handler)
            return
        answer = httpx.get(self.upstream + handler.path, timeout=5.0)
        if self.mark in answer.content:
            self.cut.set()
        _body(answer.status_code, answer.content)(handler)


def test_alertmanager_down_after_the_rollback_never_declares_recovery_or_ok_again(
    tmp_path: Path, alertmanager: Alertmanager
) -> None:
    """An alert seen only in Alertmanager rolls v2 back, then Alertmanager stops answering:
    though the health probe passes, the watch ends unknown (not recovered), and the cycles
    after it keep the incident open instead of calling the unseen alert OK again."""
    service = "till"
    start = datetime.now(UTC) - timedelta(minutes=10)
    v2_at = start + timedelta(minutes=2)
    versions = [(start, v2_at, "v1"), (v2_at, None, "v2")]
    front = CutAfterAlert(alertmanager.url, service)
    with serving(front) as url:
        health = f"{alertmanager.url}/-/healthy"
        daemon, clock = daemon_for(tmp_path, service, url, versions, health)
        try:
            cycles(daemon, clock, 9)
            assert daemon.state.history.last_good(service)[0] == "v1"
            post(alertmanager, service, "TillDown", v2_at + timedelta(seconds=5))
            cycles(daemon, clock, 1)
            assert front.cut.is_set()
            assert finish_rollbacks(daemon) == 1
            [incident] = daemon.state.journal.incidents(limit=None)
            assert incident.state.value == "escalated", incident
            assert "recovery unknown after 2m" in incident.summary
            assert "could not be seen resolved" in incident.summary
            assert "alert TillDown: no data (Alertmanager at" in incident.summary
            cycles(daemon, clock, 3)
            [incident] = daemon.state.journal.incidents(limit=None)
            assert not incident.state.finished, incident
        finally:
            close_daemon(daemon)


def test_a_lost_resolved_webhook_is_resolved_by_what_alertmanager_says(
    tmp_path: Path, alertmanager: Alertmanager
) -> None:
    """An alert journaled firing from its webhook, then resolved in Alertmanager whose
    resolved webhook is lost, is resolved at the next cycle, in the journal and the watch."""
    service = "cart"
    start = datetime.now(UTC) - timedelta(minutes=10)
    daemon, clock = daemon_for(tmp_path, service, alertmanager.url, [(start, None, "v1")])
    try:
        fired_at = start + timedelta(seconds=5)
        post(alertmanager, service, "CartDown", fired_at)
        [held] = [a for a in alertmanager.alerts() if a["labels"].get("service") == service]
        body = json.loads(EXAMPLE.read_text())
        body["alerts"][0].update(
            labels=held["labels"], startsAt=held["startsAt"], fingerprint=held["fingerprint"]
        )
        text = json.dumps(body)
        journal = daemon.state.journal
        journal.record_delivery(clock(), parse_webhook(text.encode()), text)
        clock.advance(POLL)
        report = daemon.loop.cycle()
        assert report is not None and [f.rule for f in report.notable if f.firing] == [
            "alert:CartDown"
        ]
        observe = daemon.state.checklist.parts.observer_for(
            daemon.state.config.services[0], {}, ["alert:CartDown"]
        )
        assert "alert CartDown still firing" in observe(clock()).failures[0]

        post(alertmanager, service, "CartDown", fired_at, datetime.now(UTC))  # resolved there
        clock.advance(POLL)
        report = daemon.loop.cycle()
        assert report is not None and not any(f.firing for f in report.notable)
        assert eventually(lambda: (SOURCE, "resolved") in delivered(daemon))
        assert journal.firing_alerts(clock(), [service]) == []
        assert "alert CartDown resolved" in observe(clock()).passes
    finally:
        close_daemon(daemon)


def delivered(daemon: Runtime) -> list[tuple[str, str]]:
    """The (source, status) of every delivery in the daemon's SQLite journal."""
    path = journal_path(daemon.state.config.daemon.state_dir)
    with contextlib.closing(sqlite3.connect(path)) as db:
        return [(r[0], r[1]) for r in db.execute("SELECT source, status FROM deliveries")]


def eventually(holds: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Whether ``holds`` comes true within ``timeout`` (the journal writes in the background)."""
    deadline = time.monotonic() + timeout
    while not holds():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _body(status: int, body: bytes, delay: float = 0.0) -> Callable[[BaseHTTPRequestHandler], None]:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        time.sleep(delay)
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        with contextlib.suppress(BrokenPipeError):  # rollbackd gave up waiting, as it should
            handler.wfile.write(body)

    return answer


NO_FINGERPRINT = (
    b'[{"labels": {"service": "web"}, "startsAt": "2026-01-01T00:00:00Z",'
    b' "status": {"state": "active", "silencedBy": [], "inhibitedBy": []}}]'
)
BAD_ANSWERS = {
    "html": (_body(200, b"<html>login</html>"), "answered something that is not its API"),
    "an object": (_body(200, b'{"status": "success"}'), "expected a list of alerts"),
    "no fingerprint": (_body(200, NO_FINGERPRINT), "[0].fingerprint"),
    "deep": (_body(200, b"[" * 100 + b"]" * 100), "nested more than"),
    "500": (_body(500, b"oops"), "answered 500"),
    "slow": (_body(200, b"[]", delay=2.0), "did not answer within 1s"),
}


@pytest.mark.parametrize("kind", BAD_ANSWERS)
def test_an_alertmanager_answering_garbage_or_slowly_is_a_source_error(kind: str) -> None:
    """Garbage, an error or an answer too slow is an error naming Alertmanager, never 'quiet'."""
    answer, expected = BAD_ANSWERS[kind]
    with serving(answer) as url:
        source = AlertmanagerSource(url, timedelta(seconds=1))
        started = time.monotonic()
        with pytest.raises(AlertmanagerError) as raised:
            source.active()
        assert time.monotonic() - started < 1.9
        assert str(raised.value).startswith(f"Alertmanager at {url}")
        assert expected in str(raised.value)


def test_evaluate_reads_alertmanagers_active_alerts_as_the_daemon_does(
    tmp_path: Path, alertmanager: Alertmanager
) -> None:
    """``evaluate`` sees an alert firing in Alertmanager (its webhook lost) as the daemon's
    cycle does, and an Alertmanager it cannot reach is a source error, not quiet."""
    service = "evaluated"
    now = datetime.now(UTC)
    post(alertmanager, service, "EvaluatedDown", now - timedelta(minutes=1))
    source = AlertmanagerSource(alertmanager.url, timedelta(seconds=2))
    assert eventually(lambda: any(a.service == service for a in source.active().firing))
    metrics = ScriptedMetrics([service])
    metrics.versions[service] = [(now - timedelta(hours=3), None, "v1")]
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "none.toml").write_text("")  # watched only through alerts
    for url, name in ((alertmanager.url, "up"), (f"http://{LOOPBACK}:{free_port()}", "down")):
        path = tmp_path / f"{name}.toml"
        path.write_text(config_text(tmp_path, service, url))
        loaded = load(path)
        result = evaluate_now(loaded.config, loaded.rules, now, prometheus=metrics)
        alerts = [f for f in result.report.notable if f.rule == "alert:EvaluatedDown"]
        if name == "up":
            assert [f.state for f in alerts] == [FindingState.FIRING], result.report.notable
            assert "alertmanager" not in result.report.source_errors
        else:
            assert alerts == []
            assert "Alertmanager" in result.report.source_errors["alertmanager"]
