"""The HTTP API of design §3, through a real uvicorn server on loopback.

Each test gets a real daemon (its :class:`~rollbackd.runtime.Runtime`) with a real SQLite
journal in ``tmp_path``, its rules answered by :class:`ScriptedMetrics` (an
in-memory Prometheus), served by uvicorn on a free port in a thread, and
talked to with httpx like any client. The evaluation loop is not scheduled:
tests call ``loop.cycle()`` themselves, on a clock they can move forward.
Rollbacks run the ``command`` executor, which touches a file that makes the
scripted error rate drop, so a started rollback really recovers, quickly.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from rollbackd.assembly import notifier_for
from rollbackd.core.durations import format_instant
from rollbackd.core.engine import CycleReport
from rollbackd.core.model import Action, Severity
from rollbackd.journal import IncidentState, JournalUnavailable, SqliteJournal, journal_path
from rollbackd.loader import load
from rollbackd.logs import configure
from rollbackd.runtime import Runtime
from rollbackd.testing import ScriptedMetrics
from tests.conftest import EXAMPLES
from tests.support.processes import free_port
from tests.test_notifiers import Receiver

ROLES = ("admin", "senior_admin", "team", "database", "ci", "alertmanager", "viewer")
TOKENS = {role: f"tok-{role}-{hashlib.sha256(role.encode()).hexdigest()[:20]}" for role in ROLES}
"""One token per role; distinctive, so that a leak of one is easy to find."""
WRONG_TOKEN = "tok-nobody-0123456789abcdef0123"  # noqa: S105 -- made up; no config knows it
ERRORS = 'sum(rate(http_requests_total{code=~"5.."}[1m])) by (service)'
MAX_BODY = 2048
KNOWN_GOOD_AFTER = timedelta(minutes=1)
TIMEOUT = 10.0
WEBHOOK = EXAMPLES / "alertmanager-webhook-v4.json"
WEBHOOK_FROM_PROMETHEUS = EXAMPLES / "alertmanager-webhook-v4-from-prometheus.json"

RULES = f"""
[[rules]]
name = "error-rate"
trigger = "high_error_rate"
query = '{ERRORS}'
condition = "> 0.05"
"""


@dataclass
class MovableClock:
    """The wall clock plus an offset a test moves: time passes, and can be skipped ahead."""

    offset: timedelta = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, by: timedelta) -> None:
        self.offset += by


@dataclass
class Api:
    """A served daemon and everything a test looks at: journal, metrics, clock, logs."""

    daemon: Runtime
    journal: SqliteJournal
    metrics: ScriptedMetrics
    clock: MovableClock
    logs: io.StringIO
    root: Path
    rolled_back: Path
    seen_tokens: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.daemon.url

    def request(
        self,
        method: str,
        path: str,
        role: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """One request; with ``role``, it carries that role's bearer token."""
        sent = dict(headers or {})
        if role is not None:
            sent["Authorization"] = f"Bearer {TOKENS[role]}"
        return httpx.request(method, self.url + path, headers=sent, timeout=TIMEOUT, **kwargs)

    def get(self, path: str, role: str | None = None, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, role, **kwargs)

    def post(self, path: str, role: str | None = None, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, role, **kwargs)

    def deploy(self, version: str, **extra: Any) -> httpx.Response:
        body = {"service": "web", "version": version, **extra}
        return self.post("/api/v1/deploys", "ci", json=body)

    def webhook(self, payload: Any, role: str = "alertmanager") -> httpx.Response:
        return self.post("/webhooks/alertmanager", role, content=json.dumps(payload).encode())

    def cycle(self) -> CycleReport:
        report = self.daemon.loop.cycle()
        assert report is not None, self.daemon.loop.last_cycle_error
        return report

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.journal.path)

    def count(self, table: str) -> int:
        with self.db() as db:
            return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608 -- table names are the test's own constants

    def incident(self, number: int) -> dict[str, Any]:
        response = self.get(f"/api/v1/incidents/{number}", "viewer")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def wait_for_state(self, number: int, states: set[str], timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = str(self.incident(number)["state"])
            if state in states:
                return state
            time.sleep(0.05)
        raise AssertionError(f"incident {number} stayed {state}, expected one of {states}")


def config_text(root: Path, port: int, rolled_back: Path, extra: str = "") -> str:
    tokens = "".join(
        f'[[tokens]]\nname = "{role.replace("_", "-")}"\n'
        f'sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\nrole = "{role}"\n'
        for role, token in TOKENS.items()
    )
    return f"""
[daemon]
listen = "127.0.0.1:{port}"
state_dir = "{root / "state"}"
poll_interval = "1s"
rules = ["rules/*.toml"]
max_body_bytes = {MAX_BODY}
{extra}

[[services]]
name = "web"
executor = "command"
command = ["touch", "{rolled_back}"]
command_timeout = "10s"

[deploys]
known_good_after = "1m"

[recovery]
window = "1s"
timeout = "30s"

{tokens}
"""


ApiFactory = Callable[..., Api]


@pytest.fixture
def make_api(tmp_path: Path) -> Iterator[ApiFactory]:
    """Serve real daemons (logs captured as JSON); each is stopped and closed at teardown."""
    logs = io.StringIO()
    configure("json", stream=logs)
    started: list[Api] = []

    def make(daemon_extra: str = "") -> Api:
        root = tmp_path / f"daemon-{len(started)}"
        (root / "rules").mkdir(parents=True)
        (root / "rules" / "errors.toml").write_text(RULES, encoding="utf-8")
        rolled_back = root / "rolled-back"
        port = free_port()
        config = root / "config.toml"
        config.write_text(config_text(root, port, rolled_back, daemon_extra), encoding="utf-8")
        loaded = load(config, env={})
        journal = SqliteJournal(journal_path(loaded.config.daemon.state_dir))
        metrics = ScriptedMetrics(["web"])
        clock = MovableClock()
        daemon = Runtime(
            loaded,
            journal,
            config,
            cycles=False,  # the tests run each cycle, on their clock
            log_level="critical",
            metrics_source=metrics,
            notifiers=lambda config: notifier_for(config, journal, clock),  # as `run` does
            clock=clock,
        )
        api = Api(daemon, journal, metrics, clock, logs, root, rolled_back)
        started.append(api)
        daemon.start()
        return api

    try:
        yield make
    finally:
        for api in reversed(started):
            api.daemon.stop()
        structlog.reset_defaults()


@pytest.fixture
def api(make_api: ApiFactory) -> Api:
    """A served daemon with the default config: the status page needs a token."""
    return make_api()


def v1_good_then_v2(api: Api) -> None:
    """v1 runs clean until it is known good, then v2 is deployed; 30 s later."""
    api.metrics.set(ERRORS, lambda _service, _at: 0.0)
    assert api.deploy("v1").status_code == 201
    api.cycle()
    api.clock.advance(KNOWN_GOOD_AFTER + timedelta(seconds=30))
    api.cycle()
    assert api.deploy("v2").status_code == 201
    api.clock.advance(timedelta(seconds=30))


def drive_to_approval(api: Api) -> int:
    """v1 runs clean until known good; v2 brings 20 % errors: a high finding asks for approval."""
    v1_good_then_v2(api)
    api.metrics.set(ERRORS, lambda _service, _at: 0.0 if api.rolled_back.exists() else 0.2)
    report = api.cycle()
    [decision] = report.decisions
    assert decision.severity is Severity.HIGH
    assert decision.action is Action.REQUEST_APPROVAL
    assert (decision.approver, decision.target) == ("senior_admin", "v1")
    listed = api.get("/api/v1/incidents", "viewer").json()
    [incident] = [i for i in listed if i["state"] == "awaiting_approval"]
    assert incident["target"] == "v1"
    assert incident["current_version"] == "v2"
    assert incident["approver"] == "senior_admin"
    assert incident["deadline"] is not None
    number: int = incident["id"]
    return number


def example(path: Path = WEBHOOK) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def assert_error(response: httpx.Response, status: int, field: str | None) -> dict[str, Any]:
    """The response has ``status`` and a JSON body with an ``error`` (and that ``field``)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body: dict[str, Any] = response.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    if field is not None:
        assert body.get("field") == field, body
    return body


# -- authentication: 401 -------------------------------------------------------------------

PROTECTED = [
    ("POST", "/webhooks/alertmanager"),
    ("POST", "/api/v1/deploys"),
    ("GET", "/api/v1/services"),
    ("GET", "/api/v1/incidents"),
    ("GET", "/api/v1/incidents/1"),
    ("GET", "/api/v1/incidents/1/report"),
    ("POST", "/api/v1/incidents/1/approve"),
    ("POST", "/api/v1/incidents/1/veto"),
    ("POST", "/api/v1/services/web/rollback"),
    ("GET", "/"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_without_a_valid_token_every_protected_endpoint_answers_401(
    api: Api, method: str, path: str
) -> None:
    """No token, an unknown one or another scheme: 401 with a Bearer challenge and a reason."""
    body = {"service": "web", "version": "v1"} if path.endswith("deploys") else None
    response = api.request(method, path, json=body)
    answer = assert_error(response, 401, "Authorization")
    assert response.headers["www-authenticate"] == "Bearer"
    assert answer["error"] == "a bearer token is required"
    for header in (f"Bearer {WRONG_TOKEN}", f"Basic {TOKENS['admin']}", "Bearer"):
        response = api.request(method, path, headers={"Authorization": header}, json=body)
        assert_error(response, 401, "Authorization")
        assert response.headers["www-authenticate"] == "Bearer"
    assert api.journal.deliveries() == 0
    assert api.journal.deploys() == []


def test_without_a_token_a_bad_deploy_body_is_still_a_401(api: Api) -> None:
    """Someone without a token learns nothing about what a valid deploy event looks like."""
    response = api.post(
        "/api/v1/deploys", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert_error(response, 401, "Authorization")


# -- authorisation: 403 --------------------------------------------------------------------


def test_the_webhook_needs_the_alertmanager_or_admin_role(api: Api) -> None:
    """A token of another role cannot post alerts: 403 naming the role needed; nothing kept."""
    for role in ("ci", "team", "viewer", "senior_admin", "database"):
        body = assert_error(api.webhook(example(), role=role), 403, "Authorization")
        assert "alertmanager" in body["error"], role
        assert TOKENS[role] not in body["error"]
    assert api.journal.deliveries() == 0
    assert api.webhook(example(), role="admin").status_code == 200
    assert api.webhook(example(), role="alertmanager").status_code == 200


def test_deploy_events_need_the_ci_or_admin_role(api: Api) -> None:
    """A token of another role cannot announce deploys: 403 naming the role needed."""
    for role in ("alertmanager", "team", "viewer", "senior_admin", "database"):
        response = api.post("/api/v1/deploys", role, json={"service": "web", "version": "v1"})
        body = assert_error(response, 403, "Authorization")
        assert "ci" in body["error"], role
    assert api.journal.deploys() == []
    for role in ("ci", "admin"):
        response = api.post("/api/v1/deploys", role, json={"service": "web", "version": "v1"})
        assert response.status_code == 201, response.text


def test_every_role_may_read_state(api: Api) -> None:
    """Services and incidents are readable with any configured token."""
    for role in ROLES:
        services = api.get("/api/v1/services", role)
        assert services.status_code == 200, (role, services.text)
        assert [s["name"] for s in services.json()] == ["web"]
        incidents = api.get("/api/v1/incidents", role)
        assert (incidents.status_code, incidents.json()) == (200, []), role


def test_only_the_policy_approver_or_admin_decides(api: Api) -> None:
    """A high-severity rollback waits for senior_admin: another role gets 403 and nothing moves."""
    number = drive_to_approval(api)
    for role in ("team", "ci", "viewer", "alertmanager", "database"):
        for decision in ("approve", "veto"):
            response = api.post(f"/api/v1/incidents/{number}/{decision}", role)
            body = assert_error(response, 403, "Authorization")
            assert "senior_admin" in body["error"], (role, decision)
    assert api.incident(number)["state"] == "awaiting_approval"
    assert [d["actor"] for d in api.incident(number)["decisions"]] == ["rollbackd"]


# -- the approval flow ---------------------------------------------------------------------


def test_approval_by_senior_admin_starts_the_rollback_and_it_recovers(api: Api) -> None:
    """senior_admin approves: the rollback starts at once, runs the command and recovers."""
    number = drive_to_approval(api)
    metrics = api.get("/metrics").text
    assert "rollbackd_pending_approvals 1.0" in metrics
    response = api.post(f"/api/v1/incidents/{number}/approve", "senior_admin")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == number
    assert body["state"] in {"rolling_back", "recovering", "recovered"}
    assert api.wait_for_state(number, {"recovered", "not_recovered", "escalated"}) == "recovered"
    assert api.rolled_back.exists()
    detail = api.incident(number)
    assert [d["actor"] for d in detail["decisions"]] == ["rollbackd", "senior-admin"]
    assert detail["decisions"][-1]["reason"] == "approved by senior-admin"
    assert ("execute", "ok") in [(s["name"], s["outcome"]) for s in detail["steps"]]
    [web] = api.get("/api/v1/services", "viewer").json()
    assert web["current_version"] == "v1"
    assert_error(api.post(f"/api/v1/incidents/{number}/approve", "senior_admin"), 409, None)


def restarted(api: Api, journals: list[SqliteJournal]) -> Runtime:
    """A second daemon over the same config and journal file, as after a restart."""
    journal = SqliteJournal(api.journal.path)
    journals.append(journal)
    daemon = Runtime(api.daemon.state.loaded, journal, metrics_source=api.metrics, clock=api.clock)
    daemon.restore()
    return daemon


@pytest.fixture
def journals() -> Iterator[list[SqliteJournal]]:
    """Journals a test opens itself; closed at teardown."""
    opened: list[SqliteJournal] = []
    try:
        yield opened
    finally:
        for journal in opened:
            journal.close()


def test_after_a_restart_a_pending_incident_is_not_decided_again(
    api: Api, journals: list[SqliteJournal]
) -> None:
    """A restart while a rollback awaits approval opens no second incident for the same finding."""
    number = drive_to_approval(api)
    report = restarted(api, journals).loop.cycle()
    assert report is not None
    assert report.decisions == ()
    assert [i["id"] for i in api.get("/api/v1/incidents", "viewer").json()] == [number]


def test_what_still_fires_after_a_recovered_rollback_is_decided_once_restart_or_not(
    api: Api, journals: list[SqliteJournal]
) -> None:
    """The rollback for WebDown recovered; a lesser alert from before it still fires: it is
    escalated once, and a restart does not decide it again."""
    v1_good_then_v2(api)
    alert = example()
    alert["alerts"][0]["startsAt"] = format_instant(api.clock() - timedelta(seconds=10))
    lesser = copy.deepcopy(alert["alerts"][0])
    lesser["labels"] = {"alertname": "WebSlow", "service": "web", "severity": "warning"}
    lesser["fingerprint"] = "0123456789abcdef"
    alert["alerts"].append(lesser)
    assert api.webhook(alert).status_code == 200
    [decision] = api.cycle().decisions
    assert (decision.action, decision.rules) == (Action.ROLLBACK, ("alert:WebDown",))
    [incident] = api.get("/api/v1/incidents", "viewer").json()
    assert api.wait_for_state(incident["id"], {"recovering"}) == "recovering"
    resolved = copy.deepcopy(alert)
    resolved["alerts"] = [resolved["alerts"][0]]
    resolved["alerts"][0] |= {"status": "resolved", "endsAt": format_instant(api.clock())}
    resolved["status"] = "resolved"
    assert api.webhook(resolved).status_code == 200  # the rollback worked: Alertmanager says so
    assert api.wait_for_state(incident["id"], {"recovered", "escalated"}) == "recovered"
    assert [a.name for a in api.journal.firing_alerts(api.clock())] == ["WebSlow"]

    api.clock.advance(timedelta(seconds=30))
    report = api.cycle()
    assert [e.kind.value for e in report.events] == ["resolved"]
    [escalated] = report.decisions
    assert (escalated.action, escalated.rules) == (Action.ESCALATE, ("alert:WebSlow",))
    api.clock.advance(timedelta(seconds=30))
    again = restarted(api, journals).loop.cycle()
    assert again is not None and again.decisions == ()
    listed = api.get("/api/v1/incidents", "viewer").json()
    assert [(i["id"], i["state"]) for i in listed] == [
        (incident["id"] + 1, "escalated"),
        (incident["id"], "recovered"),
    ]


def test_after_a_long_downtime_an_interrupted_rollback_resumes(
    api: Api, journals: list[SqliteJournal]
) -> None:
    """Killed right after an approval and started again 3 hours later: the rollback runs once."""
    number = drive_to_approval(api)
    api.journal.set_state(number, IncidentState.ROLLING_BACK, "approved", api.clock())
    api.clock.advance(timedelta(hours=3))
    restarted(api, journals)
    assert api.wait_for_state(number, {"recovered", "not_recovered", "escalated"}) == "recovered"
    with api.db() as db:
        assert db.execute("SELECT count(*) FROM steps WHERE name = 'execute'").fetchone()[0] == 1


def escalate_without_a_target(api: Api) -> int:
    """v2 fails with no known good version before it: a person is asked (escalated)."""
    api.metrics.set(ERRORS, lambda _service, _at: 0.2)
    assert api.deploy("v2").status_code == 201
    api.clock.advance(timedelta(seconds=30))
    [decision] = api.cycle().decisions
    assert decision.action is Action.ESCALATE
    [incident] = api.get("/api/v1/incidents", "viewer").json()
    assert incident["state"] == "escalated"
    number: int = incident["id"]
    return number


def test_an_escalation_is_followed_after_a_restart_and_resolves_when_errors_stop(
    api: Api, journals: list[SqliteJournal]
) -> None:
    """Hours later, an escalated incident is neither decided again nor left open for ever."""
    number = escalate_without_a_target(api)
    api.clock.advance(timedelta(hours=3))
    daemon = restarted(api, journals)
    report = daemon.loop.cycle()
    assert report is not None and report.decisions == ()
    assert api.incident(number)["state"] == "escalated"
    api.metrics.set(ERRORS, lambda _service, _at: 0.0)
    api.clock.advance(timedelta(seconds=30))
    report = daemon.loop.cycle()
    assert report is not None
    assert [e.kind.value for e in report.events] == ["resolved"]
    incident = api.incident(number)
    assert incident["state"] == "resolved"
    assert incident["closed"] is not None
    assert incident["summary"] == (
        "what fired is OK again: error-rate 0, not > 0.05 (was escalated)"
    )


def test_an_escalated_incident_is_an_open_incident_on_the_status_page(api: Api) -> None:
    """Escalated means a person must act: the status page counts it open until it ends."""
    number = escalate_without_a_target(api)
    page = api.get("/", "viewer").text
    assert "Open incidents (1)" in page and f"incident {number}" in page
    api.metrics.set(ERRORS, lambda _service, _at: 0.0)
    api.clock.advance(timedelta(seconds=30))
    api.cycle()
    assert "Open incidents (0)" in api.get("/", "viewer").text


def test_an_escalation_nobody_acts_on_expires_and_the_next_fault_is_decided(
    make_api: ApiFactory,
) -> None:
    """Errors without data keep an escalation open; after expire_after it ends, journaled."""
    api = make_api('[incidents]\nexpire_after = "1h"')
    number = escalate_without_a_target(api)
    api.metrics.set(ERRORS, lambda _service, _at: None)  # the app stops exporting its errors
    api.clock.advance(timedelta(minutes=59))
    assert api.cycle().events == ()
    api.clock.advance(timedelta(minutes=2))
    [expired] = api.cycle().events
    assert expired.kind.value == "expired"
    incident = api.incident(number)
    assert incident["state"] == "expired"
    assert "nobody acted on incident" in incident["summary"]
    api.metrics.set(ERRORS, lambda _service, _at: 0.3)
    api.clock.advance(timedelta(seconds=30))
    assert [d.action for d in api.cycle().decisions] == [Action.ESCALATE]


def test_a_newer_deploy_withdraws_the_rollback_that_waits_for_approval(api: Api) -> None:
    """v3 arrives while v2's rollback awaits approval: nothing is rolled back at the deadline."""
    number = drive_to_approval(api)
    assert api.deploy("v3").status_code == 201
    api.metrics.set(ERRORS, lambda _service, _at: 0.0)
    api.clock.advance(timedelta(seconds=30))
    api.cycle()
    incident = api.incident(number)
    assert incident["state"] == "superseded"
    assert "v3 was deployed" in incident["summary"]
    assert_error(api.post(f"/api/v1/incidents/{number}/approve", "senior_admin"), 409, None)
    api.clock.advance(timedelta(minutes=16))
    api.cycle()
    assert not api.rolled_back.exists()


def test_a_rollback_request_whose_errors_stop_is_withdrawn(api: Api) -> None:
    """The errors end before anyone answers: the request resolves and the deadline does nothing."""
    number = drive_to_approval(api)
    api.metrics.set(ERRORS, lambda _service, _at: 0.01)
    api.clock.advance(timedelta(seconds=30))
    api.cycle()
    assert api.incident(number)["state"] == "resolved"
    api.clock.advance(timedelta(minutes=16))
    api.cycle()
    assert not api.rolled_back.exists()


def test_a_lower_severity_alert_is_folded_into_the_open_incident_and_said_so(api: Api) -> None:
    """A warning alert while the rollback request waits: no decision; incident and log say so."""
    number = drive_to_approval(api)
    alert = distinct(example(), "a1b2c3")
    alert["alerts"][0]["labels"] = {
        "alertname": "SlowPages",
        "service": "web",
        "severity": "warning",
    }
    alert["alerts"][0]["startsAt"] = format_instant(api.clock())
    assert api.webhook(alert).status_code == 200
    api.clock.advance(timedelta(seconds=30))
    assert api.cycle().decisions == ()
    api.clock.advance(timedelta(seconds=30))
    assert api.cycle().events == ()  # said once, not every cycle
    record = api.journal.incident(number)
    assert record is not None
    [folded] = [e.body for e in record.evidence if e.kind == "folded"]
    assert folded["rules"] == ["alert:SlowPages"]
    assert f"suppressed: incident {number} is open for v2" in folded["reason"]
    assert f"suppressed: incident {number} is open for v2" in api.logs.getvalue()


@pytest.mark.parametrize("round_", range(3))
def test_approve_and_veto_at_the_same_instant_have_exactly_one_winner(
    api: Api, round_: int
) -> None:
    """Both sent at once: one 200 and one 409, and what happens follows the winner."""
    number = drive_to_approval(api)
    barrier = threading.Barrier(2)

    def send(verb: str) -> httpx.Response:
        barrier.wait()
        return api.post(f"/api/v1/incidents/{number}/{verb}", "senior_admin")

    with ThreadPoolExecutor(2) as pool:
        approve, veto = pool.map(send, ["approve", "veto"])
    assert sorted([approve.status_code, veto.status_code]) == [200, 409], (approve, veto)
    if veto.status_code == 200:
        assert api.incident(number)["state"] == "vetoed"
        assert not api.rolled_back.exists()
    else:
        assert api.wait_for_state(number, {"recovered", "escalated"}) == "recovered"
    humans = [d for d in api.incident(number)["decisions"] if d["actor"] != "rollbackd"]
    assert len(humans) == 1


def test_a_rollback_deploys_its_target_with_the_ref_and_facts_of_its_earlier_deploy(
    api: Api, journals: list[SqliteJournal]
) -> None:
    """After the rollback v1 is current with v1's ref and migration facts, and after a restart."""
    fact = {"file": "migrations/0001.sql", "backwards_compatible": True, "changes_data": False}
    api.metrics.set(ERRORS, lambda _service, _at: 0.0)
    assert api.deploy("v1", ref="1111111", migrations=[fact]).status_code == 201
    api.cycle()
    api.clock.advance(KNOWN_GOOD_AFTER + timedelta(seconds=30))
    api.cycle()
    assert api.deploy("v2", ref="2222222").status_code == 201
    api.clock.advance(timedelta(seconds=30))
    api.metrics.set(ERRORS, lambda _service, _at: 0.0 if api.rolled_back.exists() else 0.2)
    [decision] = api.cycle().decisions
    assert (decision.action, decision.target) == (Action.REQUEST_APPROVAL, "v1")
    [incident] = api.get("/api/v1/incidents", "viewer").json()
    number = incident["id"]
    assert api.post(f"/api/v1/incidents/{number}/approve", "senior_admin").status_code == 200
    assert api.wait_for_state(number, {"recovered", "not_recovered", "escalated"}) == "recovered"
    [executed] = [s for s in api.incident(number)["steps"] if s["name"] == "execute"]
    rollback = api.journal.deploys()[-1]
    assert (rollback.version, rollback.ref, rollback.source) == ("v1", "1111111", "event")
    assert format_instant(rollback.time) == executed["finished"]
    assert [m.file for m in rollback.migrations] == ["migrations/0001.sql"]
    assert api.daemon.state.history.current("web") == rollback
    for daemon in (api.daemon, restarted(api, journals)):
        [web] = daemon.views.services()
        assert (web["current_version"], web["deployed_at"]) == ("v1", executed["finished"])


def test_a_firing_alert_not_sent_again_for_expire_after_is_over(api: Api) -> None:
    """A firing alert Alertmanager stopped re-sending (its resolve lost) stops firing after 5h."""
    alert = example()
    alert["alerts"][0]["startsAt"] = format_instant(api.clock() - timedelta(seconds=10))
    assert api.webhook(alert).status_code == 200
    assert [f.rule for f in api.cycle().notable if f.firing] == ["alert:WebDown"]
    api.clock.advance(timedelta(hours=4, minutes=59))
    assert [f.rule for f in api.cycle().notable if f.firing] == ["alert:WebDown"]
    api.clock.advance(timedelta(minutes=2))
    assert [f.rule for f in api.cycle().notable if f.firing] == []


def test_after_a_restart_the_last_known_good_version_is_still_known(
    api: Api, journals: list[SqliteJournal]
) -> None:
    """v1 was known good before a restart: a bad v2 afterwards still asks to roll back to v1.

    The daemon rebuilds this on start by replaying recent Prometheus history.
    """
    api.metrics.set(ERRORS, lambda _service, _at: 0.0)
    assert api.deploy("v1").status_code == 201
    api.cycle()
    api.clock.advance(KNOWN_GOOD_AFTER + timedelta(seconds=30))
    api.cycle()
    assert api.deploy("v2").status_code == 201
    daemon = restarted(api, journals)
    api.clock.advance(timedelta(seconds=30))
    api.metrics.set(ERRORS, lambda _service, _at: 0.2)
    report = daemon.loop.cycle()
    assert report is not None
    [decision] = report.decisions
    assert (decision.action, decision.target) == (Action.REQUEST_APPROVAL, "v1")


def test_admin_may_approve_any_pending_rollback(api: Api) -> None:
    """admin stands in for every approver role."""
    number = drive_to_approval(api)
    response = api.post(f"/api/v1/incidents/{number}/approve", "admin")
    assert response.status_code == 200, response.text
    assert response.json()["state"] != "awaiting_approval"
    assert api.wait_for_state(number, {"recovered", "not_recovered", "escalated"}) == "recovered"


def test_a_veto_stops_the_rollback_and_a_later_approval_is_a_conflict(api: Api) -> None:
    """After a veto the incident is vetoed for good: approving or vetoing again gives 409."""
    number = drive_to_approval(api)
    response = api.post(f"/api/v1/incidents/{number}/veto", "senior_admin")
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "vetoed"
    body = assert_error(api.post(f"/api/v1/incidents/{number}/approve", "senior_admin"), 409, None)
    assert "vetoed" in body["error"]
    assert_error(api.post(f"/api/v1/incidents/{number}/veto", "admin"), 409, None)
    assert api.incident(number)["state"] == "vetoed"
    assert not api.rolled_back.exists()
    with api.db() as db:
        assert db.execute("SELECT count(*) FROM steps WHERE name = 'execute'").fetchone()[0] == 0


def test_without_a_decision_the_rollback_runs_at_the_deadline(api: Api) -> None:
    """Nobody answers within the policy's 15 minutes: rollbackd rolls back by itself."""
    number = drive_to_approval(api)
    api.cycle()
    assert api.incident(number)["state"] == "awaiting_approval"
    api.clock.advance(timedelta(minutes=16))
    api.cycle()
    assert api.wait_for_state(number, {"recovered", "not_recovered", "escalated"}) == "recovered"
    assert api.incident(number)["decisions"][-1]["actor"] == "rollbackd (deadline)"


def test_a_vetoed_rollback_does_not_run_at_the_deadline(api: Api) -> None:
    """After a veto, the deadline passing changes nothing."""
    number = drive_to_approval(api)
    assert api.post(f"/api/v1/incidents/{number}/veto", "senior_admin").status_code == 200
    api.clock.advance(timedelta(minutes=16))
    api.cycle()
    assert api.incident(number)["state"] == "vetoed"
    assert not api.rolled_back.exists()


def test_a_veto_journaled_by_another_replica_lets_the_incident_expire_in_time(
    make_api: ApiFactory,
) -> None:
    """A veto another replica journaled (the shared journal, not this daemon's API) is obeyed
    at the deadline, and the incident ends after expire_after as a veto made here would."""
    api = make_api('[incidents]\nexpire_after = "1h"')
    number = drive_to_approval(api)
    vetoed = api.clock()
    assert api.daemon.journal.set_state(
        number,
        IncidentState.VETOED,
        "vetoed by a senior admin on another replica",
        vetoed,
        expect=(IncidentState.AWAITING_APPROVAL,),
    )
    api.clock.advance(timedelta(minutes=16))
    api.cycle()
    assert api.incident(number)["state"] == "vetoed"
    assert not api.rolled_back.exists()
    api.clock.advance(timedelta(minutes=45))
    [expired] = api.cycle().events
    assert expired.kind.value == "expired"
    assert api.incident(number)["state"] == "expired"


def test_a_request_journaled_by_a_write_whose_answer_was_lost_never_rolls_back_after_a_veto(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal commits a rollback request but its answer is lost (PostgreSQL committed,
    the connection broke): the next cycle asks again, and the veto of the request people
    see is obeyed at the deadline; the lost one is superseded, never rolled back."""
    journal = api.daemon.journal
    opened: list[int] = []
    real_open = journal.open_incident

    def committed_then_lost(new: Any) -> int:
        opened.append(real_open(new))
        if len(opened) == 1:
            raise JournalUnavailable("the journal cannot be reached: connection lost at COMMIT")
        return opened[-1]

    monkeypatch.setattr(journal, "open_incident", committed_then_lost)
    v1_good_then_v2(api)
    api.metrics.set(ERRORS, lambda _service, _at: 0.2)
    assert api.daemon.loop.cycle() is None  # the cycle failed: the journal did not answer
    api.clock.advance(timedelta(seconds=30))
    api.cycle()
    lost, seen = opened
    assert api.incident(seen)["state"] == "awaiting_approval"
    assert api.post(f"/api/v1/incidents/{seen}/veto", "senior_admin").status_code == 200
    api.clock.advance(timedelta(minutes=16))
    api.cycle()
    assert api.incident(lost)["state"] == "superseded"
    assert api.incident(seen)["state"] == "vetoed"
    assert not api.rolled_back.exists()


def test_deciding_on_an_incident_that_does_not_exist_is_404(api: Api) -> None:
    """Approving, vetoing or reading an unknown incident says it does not exist."""
    for path in ("/api/v1/incidents/999/approve", "/api/v1/incidents/999/veto"):
        body = assert_error(api.post(path, "admin"), 404, None)
        assert "999" in body["error"]
    assert_error(api.get("/api/v1/incidents/999", "viewer"), 404, None)
    assert_error(api.get("/api/v1/incidents/999/report", "viewer"), 404, None)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/incidents/{}"),
        ("GET", "/api/v1/incidents/{}/report"),
        ("POST", "/api/v1/incidents/{}/approve"),
        ("POST", "/api/v1/incidents/{}/veto"),
    ],
)
def test_an_incident_id_too_large_for_the_journal_is_404(api: Api, method: str, path: str) -> None:
    """An absurdly large incident id is a client error naming the id, not a server error."""
    response = api.request(method, path.format(2**64), "admin")
    assert_error(response, 422, "path.incident")


def test_the_incident_and_its_report_are_served(api: Api) -> None:
    """An incident awaiting approval shows its decision, deadline and a Markdown/HTML report."""
    number = drive_to_approval(api)
    detail = api.incident(number)
    assert detail["decisions"][0]["approver"] == "senior_admin"
    assert detail["deadline"] is not None
    markdown = api.get(f"/api/v1/incidents/{number}/report", "viewer")
    assert markdown.status_code == 200
    assert markdown.headers["content-type"].startswith("text/markdown")
    assert f"Incident {number}" in markdown.text
    html = api.get(f"/api/v1/incidents/{number}/report", "viewer", params={"format": "html"})
    assert html.headers["content-type"].startswith("text/html")
    bad = api.get(f"/api/v1/incidents/{number}/report", "viewer", params={"format": "pdf"})
    assert_error(bad, 422, "format")


# -- rollbacks by hand ----------------------------------------------------------------------

V1_REF = "1f0c2d3e4b5a69788796a5b4c3d2e1f001234567"
V2_REF = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a291807"
FINISHED = {"recovered", "not_recovered", "escalated"}


def v1_good_then_v2_failing(api: Api) -> None:
    """v1 (its commit as ref) runs clean until known good; v2 fails 20 % until rolled back."""
    api.metrics.set(ERRORS, lambda _service, _at: 0.0)
    assert api.deploy("v1", ref=V1_REF).status_code == 201
    api.cycle()
    api.clock.advance(KNOWN_GOOD_AFTER + timedelta(seconds=30))
    api.cycle()
    assert api.deploy("v2", ref=V2_REF).status_code == 201
    api.metrics.set(ERRORS, lambda _service, _at: 0.0 if api.rolled_back.exists() else 0.2)


def roll_back(api: Api, role: str = "senior_admin", **body: Any) -> httpx.Response:
    return api.post("/api/v1/services/web/rollback", role, json=body)


def test_a_rollback_by_hand_runs_to_the_deploy_events_ref_and_recovers(api: Api) -> None:
    """senior_admin rolls web back to v1: 202, v1's ref is the target, it runs and recovers."""
    v1_good_then_v2_failing(api)
    response = roll_back(api, to="v1", reason="errors after v2")
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["state"] in {"rolling_back", "recovering", "recovered"}
    assert (body["target"], body["current_version"], body["origin"]) == (V1_REF, "v2", "manual")
    assert api.wait_for_state(body["id"], FINISHED) == "recovered"
    assert api.rolled_back.exists()
    detail = api.incident(body["id"])
    assert detail["reason"] == "errors after v2"
    [decision] = detail["decisions"]
    assert (decision["actor"], decision["action"]) == ("senior-admin", "rollback")
    assert ("execute", "ok") in [(s["name"], s["outcome"]) for s in detail["steps"]]
    [web] = api.get("/api/v1/services", "viewer").json()
    assert web["current_version"] == "v1"


def test_a_rollback_by_hand_withdraws_the_request_waiting_for_approval(api: Api) -> None:
    """A person rolls back while rollbackd's own request waits: the deadline rolls back nothing."""
    number = drive_to_approval(api)
    response = roll_back(api, to="v1")
    assert response.status_code == 202, response.text
    assert api.wait_for_state(response.json()["id"], FINISHED) == "recovered"
    incident = api.incident(number)
    assert incident["state"] == "superseded"
    assert "rolled web back by hand" in incident["summary"]
    api.clock.advance(timedelta(minutes=16))
    api.cycle()
    with api.db() as db:
        assert db.execute("SELECT count(*) FROM steps WHERE name = 'execute'").fetchone()[0] == 1


def test_a_request_for_a_version_no_longer_running_is_never_approved(api: Api) -> None:
    """v1 is put back by hand (outside rollbackd) while v2's request waits: approving it is
    a conflict, and it is withdrawn, not run."""
    number = drive_to_approval(api)
    assert api.deploy("v1").status_code == 201
    body = assert_error(api.post(f"/api/v1/incidents/{number}/approve", "senior_admin"), 409, None)
    assert "web runs v1 now, not v2" in body["error"]
    assert api.incident(number)["state"] == "superseded"
    api.clock.advance(timedelta(minutes=16))
    api.cycle()
    assert not api.rolled_back.exists()


def test_a_rollback_by_hand_without_a_target_goes_to_the_last_known_good(api: Api) -> None:
    """admin may too; no body at all: the last known good version, v1, by its ref."""
    v1_good_then_v2_failing(api)
    response = api.post("/api/v1/services/web/rollback", "admin")
    assert response.status_code == 202, response.text
    assert response.json()["target"] == V1_REF
    assert api.wait_for_state(response.json()["id"], FINISHED) == "recovered"


def test_only_admin_or_senior_admin_may_roll_back_by_hand(api: Api) -> None:
    """The playbook's rollback authority: any other role gets 403 and nothing is opened."""
    v1_good_then_v2_failing(api)
    for role in ("team", "database", "ci", "alertmanager", "viewer"):
        body = assert_error(roll_back(api, role, to="v1"), 403, "Authorization")
        assert "admin or senior_admin" in body["error"], role
    assert api.get("/api/v1/incidents", "viewer").json() == []
    assert not api.rolled_back.exists()


def test_two_rollbacks_of_a_service_at_once_one_runs_the_other_is_409(api: Api) -> None:
    """Two people press the button together: one 202, one 409 naming the running incident."""
    v1_good_then_v2_failing(api)
    with ThreadPoolExecutor(max_workers=2) as pool:
        responses = list(pool.map(lambda who: roll_back(api, who, to="v1"), ["admin"] * 2))
    started = [r for r in responses if r.status_code == 202]
    assert sorted(r.status_code for r in responses) == [202, 409], [r.text for r in responses]
    number = started[0].json()["id"]
    refused = assert_error(next(r for r in responses if r.status_code == 409), 409, None)
    assert f"incident {number} is already rolling back" in refused["error"]
    assert [i["id"] for i in api.get("/api/v1/incidents", "viewer").json()] == [number]
    assert api.wait_for_state(number, FINISHED) == "recovered"


def test_a_rollback_by_hand_of_an_unknown_service_is_404(api: Api) -> None:
    """A service the config does not name: 404 saying so, nothing opened."""
    body = assert_error(api.post("/api/v1/services/mail/rollback", "admin", json={}), 404, None)
    assert "no service named 'mail'" in body["error"]
    assert api.get("/api/v1/incidents", "viewer").json() == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"to": "--upload-pack=touch /tmp/x"}, "is not a version or ref"),
        ({"to": "v1; rm -rf /"}, "is not a version or ref"),
        ({"to": "v2"}, "web already runs v2; nothing to roll back"),
        ({"to": V2_REF}, "web already runs"),
        ({"to": ""}, "at least 1 character"),
        ({"to": "v1", "force": True}, "Extra inputs are not permitted"),
    ],
)
def test_a_bad_rollback_target_is_422_naming_to(
    api: Api, body: dict[str, Any], expected: str
) -> None:
    """A target git could misread, or the version already running: 422, nothing opened."""
    v1_good_then_v2_failing(api)
    answer = assert_error(roll_back(api, **body), 422, None)
    assert expected in answer["error"], answer
    assert answer["field"] == ("force" if "force" in body else "to")
    assert api.get("/api/v1/incidents", "viewer").json() == []


def test_a_rollback_by_hand_with_no_known_good_version_is_409(api: Api) -> None:
    """v1 just deployed, never known good, no "to": 409 asking for a target; nothing opened."""
    assert api.deploy("v1", ref=V1_REF).status_code == 201
    body = assert_error(roll_back(api), 409, None)
    assert "no last known good version of web" in body["error"]
    assert api.get("/api/v1/incidents", "viewer").json() == []


# -- reload (SIGHUP) ------------------------------------------------------------------------


def edit_config(api: Api, *changes: tuple[str, str]) -> Path:
    """Change the served daemon's config file in place, as an operator would before SIGHUP."""
    path = api.root / "config.toml"
    text = path.read_text(encoding="utf-8")
    for old, new in changes:
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text, encoding="utf-8")
    return path


def test_a_reload_applies_a_changed_known_good_after(api: Api) -> None:
    """known_good_after lowered from 1m to 20s: after a reload, v1 clean for 30 s is known good."""
    api.metrics.set(ERRORS, lambda _service, _at: 0.0)
    assert api.deploy("v1").status_code == 201
    api.cycle()
    api.clock.advance(timedelta(seconds=30))
    api.cycle()
    [web] = api.get("/api/v1/services", "viewer").json()
    assert web["last_good_version"] is None
    path = edit_config(api, ('known_good_after = "1m"', 'known_good_after = "20s"'))
    line = api.daemon.state.reload(path)
    assert line == "reloaded: 1 rules, 1 services"
    [web] = api.get("/api/v1/services", "viewer").json()
    assert web["last_good_version"] == "v1"
    assert "on real data without a finding" in web["last_good_reason"]


def test_a_reload_that_changes_listen_keeps_the_address_and_says_a_restart_is_needed(
    api: Api,
) -> None:
    """listen cannot move while running: kept and named in the status line and the log; the
    rest of the reload (here a larger max_body_bytes) applies at once."""
    old, new = api.daemon.url.removeprefix("http://"), f"127.0.0.1:{free_port()}"
    path = edit_config(
        api, (old, new), (f"max_body_bytes = {MAX_BODY}", f"max_body_bytes = {MAX_BODY * 4}")
    )
    line = api.daemon.state.reload(path)
    assert line == (
        f"reloaded: 1 rules, 1 services; needs a restart, running values kept: "
        f"daemon.listen ({old} → {new})"
    )
    assert api.daemon.config.daemon.listen == old
    assert api.daemon.config.daemon.max_body_bytes == MAX_BODY * 4
    logged = [json.loads(line) for line in api.logs.getvalue().splitlines()]
    [warning] = [e for e in logged if e["event"].startswith("reload: keys that need a restart")]
    assert (warning["level"], warning["keys"]) == ("warning", [f"daemon.listen ({old} → {new})"])
    body = {"service": "web", "version": "v1", "ref": "x" * (MAX_BODY + 100)}
    assert_error(api.post("/api/v1/deploys", "ci", json=body), 422, "ref")  # not 413 any more


def test_a_reload_that_adds_a_notifier_tells_it_the_next_decision(api: Api) -> None:
    """A [[notifiers]] entry added by a reload hears of the next rollback waiting for approval."""
    receiver = Receiver()
    try:
        path = api.root / "config.toml"
        added = f'\n[[notifiers]]\nname = "ops"\nkind = "webhook"\nurl = "{receiver.url()}"\n'
        path.write_text(path.read_text(encoding="utf-8") + added, encoding="utf-8")
        assert api.daemon.state.reload(path) == "reloaded: 1 rules, 1 services"
        number = drive_to_approval(api)
        assert receiver.received.wait(TIMEOUT), "the added notifier was not told"
        [told] = receiver.requests
        assert told.json["incident"] == number
        assert "asks to roll back" in told.json["title"]
    finally:
        receiver.stop()


# -- body size: 413 ------------------------------------------------------------------------


def oversized() -> bytes:
    return json.dumps({"version": "4", "alerts": [], "padding": "x" * (MAX_BODY * 2)}).encode()


def in_chunks(data: bytes, size: int = 512) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize(
    ("path", "role"), [("/webhooks/alertmanager", "alertmanager"), ("/api/v1/deploys", "ci")]
)
def test_a_body_over_the_limit_with_content_length_is_413(api: Api, path: str, role: str) -> None:
    """A declared body larger than max_body_bytes is refused with 413 before it is read."""
    json_type = {"Content-Type": "application/json"}
    response = api.post(path, role, content=oversized(), headers=json_type)
    assert_error(response, 413, "body")
    assert str(MAX_BODY) in response.json()["error"]
    assert api.journal.deliveries() == 0


def test_a_chunked_webhook_over_the_limit_is_413(api: Api) -> None:
    """A streamed webhook body (no Content-Length) is cut off at max_body_bytes with 413."""
    response = api.post(
        "/webhooks/alertmanager",
        "alertmanager",
        content=in_chunks(oversized()),
        headers={"Content-Type": "application/json"},
    )
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_error(response, 413, "body")
    assert api.journal.deliveries() == 0


def test_a_chunked_deploy_event_over_the_limit_is_413(api: Api) -> None:
    """A streamed deploy event (no Content-Length) over max_body_bytes is refused with 413."""
    response = api.post(
        "/api/v1/deploys",
        "ci",
        content=in_chunks(oversized()),
        headers={"Content-Type": "application/json"},
    )
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_error(response, 413, "body")


def test_a_chunked_body_under_the_limit_is_accepted(api: Api) -> None:
    """Streaming is fine as long as the body stays under max_body_bytes."""
    response = api.post(
        "/webhooks/alertmanager",
        "alertmanager",
        content=in_chunks(json.dumps(example()).encode(), 64),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 1, "duplicates": 0}


# -- the webhook -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", [WEBHOOK, WEBHOOK_FROM_PROMETHEUS], ids=["webdown", "errors"])
def test_a_captured_alertmanager_delivery_is_accepted_and_a_retry_is_a_duplicate(
    api: Api, path: Path
) -> None:
    """Alertmanager's real payload is journaled once; the same delivery again changes nothing."""
    raw = path.read_bytes()
    first = api.post("/webhooks/alertmanager", "alertmanager", content=raw)
    assert first.status_code == 200, first.text
    assert first.json() == {"accepted": 1, "duplicates": 0}
    again = api.post("/webhooks/alertmanager", "alertmanager", content=raw)
    assert again.status_code == 200, again.text
    assert again.json() == {"accepted": 0, "duplicates": 1}
    assert api.count("alerts") == 1
    assert api.journal.deliveries() == 2
    [alert] = api.journal.firing_alerts(api.clock())
    sent = json.loads(raw)["alerts"][0]
    assert (alert.fingerprint, alert.service, alert.name) == (
        sent["fingerprint"],
        "web",
        sent["labels"]["alertname"],
    )
    with api.db() as db:
        bodies = [row[0] for row in db.execute("SELECT body FROM deliveries")]
    assert bodies == [raw.decode()] * 2
    assert 'rollbackd_webhook_deliveries_total{outcome="accepted"} 2.0' in api.get("/metrics").text


def test_a_resolved_delivery_ends_the_alert(api: Api) -> None:
    """When Alertmanager says resolved, the alert stops firing; a late retry cannot revive it."""
    firing = example()
    assert api.webhook(firing).json() == {"accepted": 1, "duplicates": 0}
    assert len(api.journal.firing_alerts(api.clock())) == 1
    resolved = copy.deepcopy(firing)
    resolved["status"] = "resolved"
    resolved["alerts"][0]["status"] = "resolved"
    resolved["alerts"][0]["endsAt"] = "2026-11-25T16:20:00Z"
    response = api.webhook(resolved)
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 1, "duplicates": 0}
    assert api.journal.firing_alerts(api.clock()) == []
    assert api.webhook(firing).status_code == 200  # a late retry of the firing delivery
    assert api.journal.firing_alerts(api.clock()) == []
    with api.db() as db:
        assert list(db.execute("SELECT status FROM alerts")) == [("resolved",)]


def test_a_late_firing_retry_after_resolved_is_a_duplicate(api: Api) -> None:
    """A retry of the old firing delivery after the resolve changes nothing and says duplicate."""
    firing = example()
    resolved = copy.deepcopy(firing)
    resolved["status"] = "resolved"
    resolved["alerts"][0]["status"] = "resolved"
    resolved["alerts"][0]["endsAt"] = "2026-11-25T16:20:00Z"
    api.webhook(firing)
    api.webhook(resolved)
    assert api.webhook(firing).json() == {"accepted": 0, "duplicates": 1}
    with api.db() as db:
        assert list(db.execute("SELECT status, ends_at FROM alerts")) == [
            ("resolved", "2026-11-25T16:20:00.000+00:00")
        ]


def distinct(payload: dict[str, Any], fingerprint: str) -> dict[str, Any]:
    """The payload with its alert under another fingerprint and alert name."""
    copied = copy.deepcopy(payload)
    copied["alerts"][0]["fingerprint"] = fingerprint
    copied["alerts"][0]["labels"]["alertname"] = f"Alert{fingerprint}"
    return copied


def test_concurrent_webhooks_are_each_answered_and_journaled(api: Api) -> None:
    """Deliveries posted at once each get their own counts, and every 2xx is in the journal."""
    shared = example()["alerts"][0]

    def post(worker: int) -> list[dict[str, Any]]:
        answers = []
        for n in range(8):
            payload = distinct(example(), f"w{worker}n{n}")
            payload["alerts"].append(shared)
            response = api.webhook(payload)
            assert response.status_code == 200, response.text
            answers.append(response.json())
        return answers

    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = [a for part in pool.map(post, range(12)) for a in part]
    assert sum(a["accepted"] for a in answers) == 96 + 1  # the shared alert is new once
    assert sum(a["duplicates"] for a in answers) == 96 - 1
    assert api.journal.deliveries() == 96
    assert api.count("alerts") == 97


def test_a_delivery_the_journal_cannot_write_is_a_503_and_loses_nothing_accepted(
    api: Api,
) -> None:
    """The journal refusing a delivery answers 503 naming the journal; other deliveries stay."""
    assert api.webhook(distinct(example(), "before")).status_code == 200
    with api.db() as db:
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON deliveries WHEN NEW.body LIKE '%Alertlost%'"
            " BEGIN SELECT RAISE(ROLLBACK, 'database or disk is full'); END"
        )
    body = assert_error(api.webhook(distinct(example(), "lost")), 503, None)
    assert body["error"].startswith("the journal cannot be written, nothing was accepted")
    assert str(api.journal.path) in body["error"]
    assert "database or disk is full" in body["error"]
    assert api.webhook(distinct(example(), "after")).status_code == 200
    assert {a.fingerprint for a in api.journal.firing_alerts(api.clock())} == {"before", "after"}
    assert api.journal.deliveries() == 2
    metrics = api.get("/metrics").text
    assert 'rollbackd_webhook_deliveries_total{outcome="accepted"} 2.0' in metrics
    assert 'rollbackd_webhook_deliveries_total{outcome="failed"} 1.0' in metrics


def test_a_firing_alert_past_its_ends_at_is_no_longer_a_finding(api: Api) -> None:
    """An alert that carries an endsAt and is not sent again stops counting once it passes."""
    payload = example()
    alert = payload["alerts"][0]
    alert["labels"] = {"alertname": "Slow", "service": "web", "severity": "info"}
    ends = api.clock() + timedelta(minutes=5)
    alert["endsAt"] = ends.isoformat().replace("+00:00", "Z")
    assert api.webhook(payload).status_code == 200

    def findings() -> list[str]:
        api.cycle()
        [web] = api.get("/api/v1/services", "viewer").json()
        return [f["rule"] for f in web["findings"] if f["state"] == "firing"]

    assert findings() == ["alert:Slow"]
    api.clock.advance(timedelta(minutes=6))
    assert findings() == []
    assert api.journal.firing_alerts(api.clock()) == []


def test_unknown_top_level_fields_of_newer_alertmanagers_are_accepted(api: Api) -> None:
    """Fields this version does not know (notification_reason, routeLabels) do not break it."""
    payload = example()
    payload["notification_reason"] = "repeat_interval"
    payload["routeLabels"] = {"team": "web"}
    payload["alerts"][0]["someNewField"] = {"nested": [1, 2]}
    response = api.webhook(payload)
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 1, "duplicates": 0}


def test_a_webhook_that_is_not_json_is_422(api: Api) -> None:
    """Garbage is refused with 422 saying the body is not JSON; nothing is journaled."""
    response = api.post("/webhooks/alertmanager", "alertmanager", content=b"{not json")
    body = assert_error(response, 422, "body")
    assert "JSON" in body["error"]
    assert api.journal.deliveries() == 0


@pytest.mark.parametrize("version", ["3", 4, None])
def test_a_webhook_of_another_payload_version_is_422(api: Api, version: Any) -> None:
    """Only payload version "4" is understood; another is refused naming the version field."""
    payload = example()
    if version is None:
        del payload["version"]
    else:
        payload["version"] = version
    body = assert_error(api.webhook(payload), 422, "version")
    assert '"4"' in body["error"]
    assert api.journal.deliveries() == 0


@pytest.mark.parametrize(
    ("alert_field", "value"),
    [
        ("startsAt", "yesterday"),
        ("startsAt", "2026-11-25T16:01:04"),
        ("status", "pending"),
        ("fingerprint", "../../etc/passwd"),
        ("labels", {"service": 7}),
        ("endsAt", 12),
    ],
)
def test_a_bad_alert_field_is_422_naming_its_path(api: Api, alert_field: str, value: Any) -> None:
    """A broken alert is refused with 422 and the path of the bad field, like alerts[0].startsAt."""
    payload = example()
    payload["alerts"][0][alert_field] = value
    body = assert_error(api.webhook(payload), 422, f"alerts[0].{alert_field}")
    assert f"alerts[0].{alert_field}" in body["error"]
    assert body["problems"][0]["field"] == f"alerts[0].{alert_field}"
    assert api.journal.deliveries() == 0


def test_every_bad_alert_is_named_not_only_the_first(api: Api) -> None:
    """Two broken alerts in one delivery: both paths are listed in problems."""
    payload = example()
    second = copy.deepcopy(payload["alerts"][0])
    payload["alerts"][0]["startsAt"] = "never"
    second["status"] = "maybe"
    payload["alerts"].append(second)
    body = assert_error(api.webhook(payload), 422, "alerts[0].startsAt")
    assert {p["field"] for p in body["problems"]} == {"alerts[0].startsAt", "alerts[1].status"}


# -- deploy events -------------------------------------------------------------------------


def test_a_deploy_event_is_journaled_and_echoed(api: Api) -> None:
    """CI announces v2: 201 with what was understood, and the service shows v2 as current."""
    response = api.deploy(
        "v2",
        ref="3f2c1e0",
        time="2026-01-01T12:00:00Z",
        migrations=[{"file": "migrations/0002.sql", "backwards_compatible": True}],
    )
    assert response.status_code == 201, response.text
    assert response.json() == {
        "service": "web",
        "version": "v2",
        "ref": "3f2c1e0",
        "time": "2026-01-01T12:00:00Z",
        "migrations": 1,
    }
    [deploy] = api.journal.deploys()
    assert (deploy.version, deploy.ref, deploy.migrations[0].backwards_compatible) == (
        "v2",
        "3f2c1e0",
        True,
    )
    [service] = api.get("/api/v1/services", "viewer").json()
    assert service["current_version"] == "v2"
    assert service["deployed_at"] == "2026-01-01T12:00:00Z"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"service": "web", "version": "--upload-pack=x"}, "version"),
        ({"service": "web", "version": "v2", "ref": "--upload-pack=touch /tmp/x"}, "ref"),
        ({"service": "web", "version": "v1; rm -rf /"}, "version"),
        ({"service": "web", "version": "v1..v2"}, "version"),
        ({"service": "nope", "version": "v2"}, "service"),
        ({"service": "web", "version": "v2", "time": "noon"}, "time"),
        ({"service": "web", "version": "v2", "time": "2026-01-01T12:00:00"}, "time"),
        ({"service": "web"}, "version"),
        ({"version": "v2"}, "service"),
    ],
)
def test_a_bad_deploy_event_is_422_naming_the_field(
    api: Api, body: dict[str, Any], field: str
) -> None:
    """Hostile or broken deploy events are refused naming the field; nothing is recorded."""
    assert_error(api.post("/api/v1/deploys", "ci", json=body), 422, field)
    assert api.journal.deploys() == []


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"service": "web", "version": "v2", "branch": "main"}, "branch"),
        (
            {"service": "web", "version": "v2", "migrations": [{"file": "m.sql", "drop": True}]},
            "drop",
        ),
    ],
)
def test_unknown_fields_in_a_deploy_event_are_422(
    api: Api, body: dict[str, Any], where: str
) -> None:
    """A typo in a deploy event is not silently ignored: 422 naming the unknown field."""
    answer = assert_error(api.post("/api/v1/deploys", "ci", json=body), 422, None)
    assert where in answer["field"]
    assert api.journal.deploys() == []


def test_a_deploy_event_that_is_not_json_is_422(api: Api) -> None:
    """A deploy body that is not JSON is refused with 422; nothing is recorded."""
    response = api.post(
        "/api/v1/deploys", "ci", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert_error(response, 422, None)
    assert api.journal.deploys() == []


def test_a_deploy_event_that_is_not_json_names_the_body(api: Api) -> None:
    """The 422 for a deploy body that is not JSON says the body is at fault."""
    response = api.post(
        "/api/v1/deploys", "ci", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert_error(response, 422, "body")


# -- health, readiness, metrics, OpenAPI, status page --------------------------------------


def test_deploys_webhooks_and_approvals_are_answered_while_prometheus_hangs(api: Api) -> None:
    """A cycle waiting 3 s on every query holds no lock the API needs: each answer is quick."""
    number = drive_to_approval(api)
    reading = threading.Event()

    def hanging(_service: str, _at: datetime) -> float:
        reading.set()
        time.sleep(3)
        return 0.2

    api.metrics.set(ERRORS, hanging)
    cycle = threading.Thread(target=api.daemon.loop.cycle)
    cycle.start()
    try:
        assert reading.wait(5)
        answers = []
        calls: list[Callable[[], httpx.Response]] = [
            lambda: api.deploy("v3"),
            lambda: api.webhook(example()),
            lambda: api.get("/api/v1/services", "viewer"),
            lambda: api.post(f"/api/v1/incidents/{number}/veto", "senior_admin"),
        ]
        for call in calls:
            started = time.monotonic()
            response = call()
            answers.append((response.status_code, time.monotonic() - started))
        assert [status for status, _ in answers] == [201, 200, 200, 200]
        assert all(seconds < 1.5 for _, seconds in answers), answers
    finally:
        cycle.join(timeout=30)


def test_healthz_answers_without_a_token(api: Api) -> None:
    """Liveness needs no token and says ok."""
    response = api.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_readyz_reports_degraded_sources(api: Api) -> None:
    """Ready with the journal open; a source that fails is named with its error, still ready."""
    ready = api.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] is True
    assert body["journal"] == str(api.journal.path)
    assert body["degraded"] == {}
    api.metrics.down = "connection refused (scripted outage)"
    api.cycle()
    body = api.get("/readyz").json()
    assert body["ready"] is True
    assert body["degraded"] == {"error-rate": "connection refused (scripted outage)"}
    assert body["last_cycle"] is not None
    api.metrics.down = None
    api.cycle()
    assert api.get("/readyz").json()["degraded"] == {}


def test_metrics_are_prometheus_text_with_rollbackd_series(api: Api) -> None:
    """/metrics needs no token and exposes the daemon's own counters, webhooks included."""
    assert api.webhook(example()).status_code == 200
    api.metrics.set(ERRORS, lambda _service, _at: 0.0)
    api.cycle()
    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in (
        "rollbackd_evaluations_total",
        "rollbackd_webhook_deliveries_total",
        "rollbackd_cycle_duration_seconds_bucket",
        "rollbackd_pending_approvals",
    ):
        assert f"# TYPE {name.removesuffix('_total').removesuffix('_bucket')}" in text
    assert 'rollbackd_webhook_deliveries_total{outcome="accepted"} 1.0' in text
    assert "rollbackd_evaluations_total 1.0" in text


def test_openapi_lists_every_endpoint_of_the_design(api: Api) -> None:
    """The served OpenAPI document describes each endpoint of design §3 with its method."""
    response = api.get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    expected = {
        "/webhooks/alertmanager": "post",
        "/api/v1/deploys": "post",
        "/api/v1/services": "get",
        "/api/v1/incidents": "get",
        "/api/v1/incidents/{incident}": "get",
        "/api/v1/incidents/{incident}/approve": "post",
        "/api/v1/incidents/{incident}/veto": "post",
        "/api/v1/services/{name}/rollback": "post",
        "/healthz": "get",
        "/readyz": "get",
        "/metrics": "get",
        "/": "get",
    }
    for path, method in expected.items():
        assert method in paths.get(path, {}), f"{method.upper()} {path} is not in {sorted(paths)}"
    webhook = paths["/webhooks/alertmanager"]["post"]["requestBody"]["content"]["application/json"]
    assert webhook["schema"]["required"] == ["version", "alerts"]


def test_the_status_page_needs_a_token_by_default(api: Api) -> None:
    """GET / without a token is 401; with any role's token it is the HTML status page."""
    assert_error(api.get("/"), 401, "Authorization")
    number = drive_to_approval(api)
    page = api.get("/", "viewer")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "Pending approvals (1)" in page.text
    assert f'id="pending-{number}"' in page.text
    assert f"rollbackd approve {number}" in page.text
    assert 'id="service-web"' in page.text


def test_a_public_status_page_needs_no_token(make_api: ApiFactory) -> None:
    """With status_page_public = true, GET / answers without a token; the API still needs one."""
    public = make_api("status_page_public = true")
    page = public.get("/")
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert_error(public.get("/api/v1/incidents"), 401, "Authorization")


def test_unknown_paths_and_methods_are_json_errors(api: Api) -> None:
    """Mistyped paths and methods get 404/405 with a JSON error, not an HTML page."""
    assert_error(api.get("/api/v1/nope", "admin"), 404, None)
    assert_error(api.request("PUT", "/healthz"), 405, None)
    assert_error(api.get("/api/v1/incidents/abc", "viewer"), 422, None)


# -- secrets -------------------------------------------------------------------------------


def test_no_token_ever_reaches_the_journal_metrics_or_logs(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """After an approval flow and refused requests no token is in the journal, metrics or logs."""
    caplog.set_level(logging.DEBUG)
    api.get("/api/v1/services", headers={"Authorization": f"Bearer {WRONG_TOKEN}"})
    api.post("/api/v1/deploys", "ci", json={"service": "web", "version": "--upload-pack=x"})
    number = drive_to_approval(api)
    api.post(f"/api/v1/incidents/{number}/approve", "team")
    api.post(f"/api/v1/incidents/{number}/approve", "senior_admin")
    api.wait_for_state(number, {"recovered", "not_recovered", "escalated"})
    api.webhook(example(), role="ci")
    api.webhook(example())
    api.cycle()
    metrics = api.get("/metrics").text
    logs = api.logs.getvalue()
    assert '"event": "decision"' in logs and '"event": "approved"' in logs  # logs were captured
    journal_files = b"".join(p.read_bytes() for p in api.journal.path.parent.iterdir())
    assert journal_files  # the journal and its WAL hold the whole story
    for token in (*TOKENS.values(), WRONG_TOKEN):
        assert token not in metrics
        assert token not in logs
        assert token not in caplog.text
        assert token.encode() not in journal_files
        assert hashlib.sha256(token.encode()).hexdigest() not in logs


def test_a_decision_the_journal_refuses_is_decided_again_once_it_can_write(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal fails as the incident opens: no request is lost, the next cycle asks again."""
    v1_good_then_v2(api)
    api.metrics.set(ERRORS, lambda _service, _at: 0.2)
    opening = api.journal.open_incident

    def disk_full(_new: Any) -> int:
        raise JournalUnavailable("the journal cannot be written: database or disk is full")

    monkeypatch.setattr(api.journal, "open_incident", disk_full)
    assert api.daemon.loop.cycle() is None
    assert "disk is full" in (api.daemon.loop.last_cycle_error or "")
    assert api.get("/api/v1/incidents", "viewer").json() == []
    monkeypatch.setattr(api.journal, "open_incident", opening)
    api.clock.advance(timedelta(seconds=5))
    [decision] = api.cycle().decisions
    assert decision.action is Action.REQUEST_APPROVAL
    [incident] = api.get("/api/v1/incidents", "viewer").json()
    assert incident["state"] == "awaiting_approval"


def test_a_second_rollback_while_the_first_recovers_is_409_not_already_there(api: Api) -> None:
    """The first rollback already runs v1 and is being watched: the second is told it runs."""
    v1_good_then_v2_failing(api)
    first = roll_back(api, "admin", to="v1")
    assert first.status_code == 202, first.text
    number = first.json()["id"]
    assert api.wait_for_state(number, {"recovering"} | FINISHED) == "recovering"
    again = assert_error(roll_back(api, "admin", to="v1"), 409, None)
    assert f"incident {number} is already rolling back" in again["error"]
