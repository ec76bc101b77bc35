"""Security checks: hostile webhook text reaches no shell and no git option; tokens never leak.

Hostile labels: a real daemon in this process (fake clock, real git with a bare
remote, real HTTP API on loopback) receives an Alertmanager delivery whose
labels and annotations carry shell metacharacters, command substitutions and
option-like strings (``--upload-pack=touch MARKER``), and rolls the service
back because of it. No marker file may ever appear; the rollback's command
receives the text only as an environment value, byte for byte; the journal
holds it verbatim; option-like versions and refs in deploy events are refused
before they reach git; oversized bodies and labels are refused and journal
nothing.

Tokens: ``rollbackd run`` as a process, logging JSON to a file, handles
authenticated requests of every role, failed attempts (unknown token, wrong
role, wrong scheme, token in the query string or another header), an approval
flow, and notifications to three receivers whose URLs and routing key are
secrets (one answers 500 and echoes what it was sent). No token, no hash of one,
no notifier URL path and no routing key may appear in its logs, its /metrics,
or the bytes of its journal files.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from rollbackd.runtime import Runtime
from rollbackd.testing import FixedClock, ScriptedMetrics
from tests.reliability import figures
from tests.reliability.support import (
    TOKENS,
    LiveServer,
    Received,
    Reply,
    StubServer,
    bearer,
    close_daemon,
    commit,
    daemon_process,
    finish_rollbacks,
    git,
    git_world,
    in_process_daemon,
    revert_subjects,
    sha256,
    tokens_toml,
    wait_until,
)
from tests.support.processes import RollbackdProcess, free_port

pytestmark = pytest.mark.integration

SECTION = "security"
ERRORS = 'sum by (service) (rate(http_requests_total{code=~"5.."}[1m]))'
RULES = f"""
[[rules]]
name = "error-rate"
trigger = "high_error_rate"
query = '{ERRORS}'
condition = "> 0.05"
"""
MAX_BODY = 256 * 1024
DUMP_ENV = (
    "import json, os, sys; json.dump({k: v for k, v in os.environ.items()"
    " if k.startswith('ROLLBACKD_')}, open(sys.argv[1], 'w'))"
)


def hostile(marker: Path) -> list[str]:
    """Text that would create ``marker`` (or worse) if any of it reached a shell or git."""
    return [
        f"$(touch {marker})",
        f"`touch {marker}`",
        f"x; touch {marker}",
        f"x | touch {marker}",
        f"x && touch {marker} #",
        f"--upload-pack=touch {marker}",
        f"-c core.sshCommand=touch {marker}",
        f"--exec=touch {marker}",
        f"\n--output={marker}\n",
        "'\"; DROP TABLE incidents; --",
        "\x1b[31mred\x1b[0m\r\n\t",
        "ünïcødé ☃ \u202eevil",
        "%s%n%x {0} {{7*7}} ${HOME}",
        "<script>alert(1)</script>",
    ]


@dataclass
class HostileWorld:
    """An in-process daemon over a git world, its API served, and where things would land."""

    root: Path
    remote: Path
    clone: Path
    v1: str
    daemon: Runtime
    clock: FixedClock
    api: LiveServer
    marker: Path
    env_dump: Path

    def post(self, path: str, role: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(self.api.url + path, headers=bearer(role), timeout=10, **kwargs)

    def cycles(self, count: int) -> None:
        for _ in range(count):
            self.clock.advance(timedelta(seconds=15))
            report = self.daemon.loop.cycle()
            assert report is not None, self.daemon.loop.last_cycle_error
            finish_rollbacks(self.daemon)

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.daemon.journal.location)


def hostile_config(root: Path, clone: Path, env_dump: Path) -> str:
    argv = json.dumps([sys.executable, "-c", DUMP_ENV, str(env_dump)])
    return f"""
[daemon]
listen = "127.0.0.1:9"
state_dir = "{root / "state"}"
poll_interval = "15s"
rules = ["rules/*.toml"]
max_body_bytes = {MAX_BODY}

[[services]]
name = "web"
repo = "{clone}"
strategy = "revert"
after_rollback = [{argv}]
command_timeout = "30s"

[deploys]
known_good_after = "1m"

[recovery]
window = "1m"
timeout = "5m"

{tokens_toml()}
"""


@pytest.fixture
def hostile_world(tmp_path: Path) -> Iterator[HostileWorld]:
    remote, clone, v1 = git_world(tmp_path)
    env_dump = tmp_path / "after-rollback-env.json"
    clock = FixedClock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    metrics = ScriptedMetrics(["web"])
    metrics.set(ERRORS, lambda _service, _at: 0.0)
    daemon = in_process_daemon(
        tmp_path / "rollbackd",
        hostile_config(tmp_path / "rollbackd", clone, env_dump),
        RULES,
        clock,
        metrics,
    )
    api = LiveServer(daemon).start()
    try:
        yield HostileWorld(
            tmp_path, remote, clone, v1, daemon, clock, api, tmp_path / "pwned", env_dump
        )
    finally:
        api.stop()
        close_daemon(daemon)


def delivery(
    labels: dict[str, str],
    annotations: dict[str, str],
    starts: datetime,
    ends: datetime | None = None,
) -> bytes:
    """A firing alert, until ``ends`` if given (then it expires unless sent again)."""
    alert = {
        "status": "firing",
        "labels": labels,
        "annotations": annotations,
        "startsAt": starts.isoformat(),
        "endsAt": ends.isoformat() if ends else "0001-01-01T00:00:00Z",
        "generatorURL": "",
        "fingerprint": "5ec0de0000000001",
    }
    return json.dumps({"version": "4", "status": "firing", "alerts": [alert]}).encode()


def test_hostile_webhook_labels_reach_no_shell_or_git_option_and_are_stored_verbatim(
    hostile_world: HostileWorld,
) -> None:
    """An alert full of shell and git tricks rolls back normally; its text stays mere text."""
    world = hostile_world
    tricks = hostile(world.marker)
    first = {"service": "web", "version": "v1", "ref": world.v1}
    assert world.post("/api/v1/deploys", "ci", json=first).status_code == 201
    world.cycles(6)
    v2 = commit(world.clone, 'version = "v2"\n', "v2: the bad release")

    refused = {
        "version": {"service": "web", "version": f"--upload-pack=touch {world.marker}"},
        "ref": {
            "service": "web",
            "version": "v2",
            "ref": f"-c core.sshCommand=touch {world.marker}",
        },
        "migrations.0.file": {
            "service": "web",
            "version": "v2",
            "migrations": [{"file": f"--output={world.marker}"}],
        },
    }
    for field, event in refused.items():
        answer = world.post("/api/v1/deploys", "ci", json=event)
        assert answer.status_code == 422, answer.text
        assert answer.json()["field"] in (field, field.replace(".0.", "[0].")), answer.json()
    with world.db() as db:
        versions = [row[0] for row in db.execute("SELECT version FROM deploys")]
    assert versions == ["v1"]
    event = {"service": "web", "version": "v2", "ref": v2}
    assert world.post("/api/v1/deploys", "ci", json=event).status_code == 201

    labels = {f"trick{i}": text for i, text in enumerate(tricks)}
    labels |= {"alertname": tricks[0], "service": "web", "rollbackd_trigger": "outage"}
    annotations = {f"note{i}": text for i, text in enumerate(reversed(tricks))}
    # The alert ends a minute later, as once the rollback has fixed things: recovery needs it.
    starts = world.clock() + timedelta(seconds=1)
    body = delivery(labels, annotations, starts, starts + timedelta(minutes=1))
    answer = world.post("/webhooks/alertmanager", "alertmanager", content=body)
    assert answer.json() == {"accepted": 1, "duplicates": 0}, answer.text
    world.cycles(3)

    [incident] = world.daemon.journal.incidents()
    assert incident.state.value == "recovered", (incident.state, incident.summary)
    assert f"alert:{tricks[0]}" in incident.reason
    assert len(revert_subjects(world.remote)) == 1
    assert git(world.clone, "show", "HEAD:app.toml") == 'version = "v1"'
    assert not world.marker.exists()
    assert not list(world.root.glob("**/pwned*")), "a trick created a file somewhere"
    dumped = json.loads(world.env_dump.read_text(encoding="utf-8"))
    assert tricks[0] in dumped["ROLLBACKD_REASON"], dumped
    assert dumped["ROLLBACKD_TARGET"] == world.v1
    with world.db() as db:
        [(stored_labels, stored_notes)] = db.execute("SELECT labels, annotations FROM alerts")
        [stored_body] = db.execute("SELECT body FROM deliveries").fetchone()
    assert json.loads(stored_labels) == labels
    assert json.loads(stored_notes) == annotations
    assert stored_body == body.decode()
    figures.count(SECTION, "hostile strings sent through webhook and deploys", len(tricks) + 3)


def test_oversized_bodies_and_labels_are_refused_and_journal_nothing(
    hostile_world: HostileWorld,
) -> None:
    """Bodies over max_body_bytes get 413, labels over 64 KiB and 1001 alerts get 422: none kept."""
    world = hostile_world
    starts = world.clock()
    huge = {"alertname": "Big", "service": "web", "blob": "x" * (MAX_BODY + 1)}
    wide = {"alertname": "Wide", "service": "web", "blob": "$(reboot)" * 8000}
    many = json.loads(delivery({"alertname": "Many"}, {}, starts))
    many["alerts"] = many["alerts"] * 1001
    cases = [
        (delivery(huge, {}, starts), 413, "body"),
        (delivery(wide, {}, starts), 422, "alerts[0].labels"),
        (json.dumps(many).encode(), 422, "alerts"),
    ]
    for body, status, field in cases:
        answer = world.post("/webhooks/alertmanager", "alertmanager", content=body)
        assert answer.status_code == status, answer.text[:300]
        assert answer.json()["field"] == field, answer.json()
    streamed = world.post(
        "/webhooks/alertmanager",
        "alertmanager",
        content=iter(
            [delivery(huge, {}, starts)[i : i + 65536] for i in range(0, MAX_BODY + 2, 65536)]
        ),
    )
    assert streamed.status_code == 413, streamed.text[:300]
    with world.db() as db:
        assert db.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM alerts").fetchone()[0] == 0
    figures.count(SECTION, "oversized requests refused", len(cases) + 1)


# -- tokens and secrets never leak -----------------------------------------------------------

SECRETS = {
    "webhook path": "/hooks/T0PSECRET-webhook-9b1d4e",
    "slack path": "/services/T0PSECRET/B0PSECRET/slackSecret7f3a",
    "pagerduty routing key": "R0UTINGKEY-pagerduty-5c2e8a1f",
}
PROBE_RULE = """
[[rules]]
name = "outage-health"
trigger = "outage"
probe = "health"
condition = "< 1"
"""


def receiver(request: Received) -> Reply:
    """/health passes; the webhook fails echoing its path and headers; Slack and PD accept."""
    if request.path.startswith("/health"):
        return Reply(200, b'{"status": "ok"}')
    if request.path.startswith("/hooks/"):
        echo = json.dumps({"path": request.path, "headers": dict(request.headers)})
        return Reply(500, echo.encode())
    return Reply(202 if request.path.startswith("/pd") else 200, b"ok", "text/plain")


def token_config(root: Path, port: int, stub: str) -> str:
    return f"""
[daemon]
listen = "127.0.0.1:{port}"
state_dir = "{root / "state"}"
poll_interval = "1s"
rules = ["rules/*.toml"]
log_format = "json"

[prometheus]
url = "http://127.0.0.1:9"
timeout = "1s"

[[services]]
name = "web"
health_url = "{stub}/health"
executor = "command"
command = ["true"]

[deploys]
known_good_after = "1s"

[recovery]
window = "1s"
timeout = "20s"

[[notifiers]]
name = "ops-webhook"
kind = "webhook"
url = "{stub}{SECRETS["webhook path"]}"
retries = 1
timeout = "2s"

[[notifiers]]
name = "ops-slack"
kind = "slack"
url = "{stub}{SECRETS["slack path"]}"
retries = 0
timeout = "2s"

[[notifiers]]
name = "ops-pager"
kind = "pagerduty"
url = "{stub}/pd/v2/enqueue"
routing_key = "{SECRETS["pagerduty routing key"]}"
retries = 0
timeout = "2s"

{tokens_toml()}
"""


@pytest.fixture
def token_daemon(tmp_path: Path) -> Iterator[tuple[RollbackdProcess, StubServer]]:
    stub = StubServer(receiver).start()
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "health.toml").write_text(PROBE_RULE, encoding="utf-8")
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(token_config(tmp_path, port, stub.url), encoding="utf-8")
    daemon = daemon_process(config, port, tmp_path / "logs")
    try:
        yield daemon.start(), stub
    finally:
        daemon.stop(timeout=10)
        stub.stop()


def test_no_token_or_notifier_secret_reaches_logs_metrics_or_the_journal(
    token_daemon: tuple[RollbackdProcess, StubServer], tmp_path: Path
) -> None:
    """After real traffic, failed logins and notifications, no credential is written anywhere."""
    daemon, stub = token_daemon
    wrong = TOKENS["admin"] + "x"
    attempts: list[tuple[str, str, dict[str, str]]] = [
        ("GET", "/api/v1/incidents", {"Authorization": f"Bearer {wrong}"}),
        ("GET", "/api/v1/incidents", {"Authorization": f"Basic {TOKENS['admin']}"}),
        ("GET", "/api/v1/incidents", {"Authorization": TOKENS["admin"]}),
        ("GET", "/api/v1/incidents", {"X-Token": TOKENS["admin"]}),
        ("GET", f"/api/v1/incidents?token={TOKENS['admin']}", {}),
        ("POST", "/api/v1/deploys", bearer("viewer")),
        ("POST", "/webhooks/alertmanager", bearer("ci")),
        ("POST", "/api/v1/incidents/1/approve", bearer("team")),
        ("GET", "/", {"Authorization": f"Bearer {TOKENS['viewer']}\u00e9"}),
    ]
    for method, path, headers in attempts:
        sent = httpx.Headers(headers, encoding="latin-1")  # one value is not ASCII
        answer = httpx.request(method, daemon.url + path, headers=sent, json={}, timeout=10)
        assert answer.status_code in (401, 403, 404, 422), (path, answer.status_code, answer.text)
        for token in (*TOKENS.values(), wrong):
            assert token not in answer.text
    for role in TOKENS:
        assert daemon.request("GET", "/api/v1/services", role).status_code == 200

    assert daemon.request("POST", "/api/v1/deploys", "ci", json={"service": "web", "version": "v1"})
    wait_until(
        "v1 to be known good",
        lambda: (
            daemon.request("GET", "/api/v1/services", "viewer").json()[0]["last_good_version"]
            == "v1"
        ),
    )
    daemon.request("POST", "/api/v1/deploys", "ci", json={"service": "web", "version": "v2"})
    starts = datetime.now(UTC) + timedelta(seconds=1)
    labels = {"alertname": "Errors", "service": "web", "rollbackd_trigger": "high_error_rate"}
    answer = daemon.request(
        "POST", "/webhooks/alertmanager", "alertmanager", content=delivery(labels, {}, starts)
    )
    assert answer.status_code == 200, answer.text

    def awaiting() -> list[dict[str, Any]]:
        return [i for i in daemon.incidents() if i["state"] == "awaiting_approval"]

    [incident] = wait_until("a rollback awaiting approval", awaiting)
    approved = daemon.request("POST", f"/api/v1/incidents/{incident['id']}/approve", "senior_admin")
    assert approved.status_code == 200, approved.text
    resolved = json.loads(delivery(labels, {}, starts, datetime.now(UTC)))
    resolved["alerts"][0]["status"] = resolved["status"] = "resolved"
    answer = daemon.request("POST", "/webhooks/alertmanager", "alertmanager", json=resolved)
    assert answer.status_code == 200, answer.text  # the rollback fixed it: the alert resolves
    wait_until(
        "the approved rollback to recover",
        lambda: any(i["state"] == "recovered" for i in daemon.incidents()),
        timeout=30,
    )

    def told_everyone() -> bool:
        paths = [r.path for r in stub.received]
        return all(
            any(p.startswith(prefix) for p in paths) for prefix in ("/hooks/", "/services/", "/pd/")
        )

    wait_until("notifications to reach all three receivers", told_everyone)
    metrics = httpx.get(f"{daemon.url}/metrics", timeout=10).text
    assert daemon.stop() == 0, daemon.log_text()[-2000:]

    logs = daemon.log_text() + daemon.stdout_path.read_text(encoding="utf-8", errors="replace")
    journal = b"".join(p.read_bytes() for p in (tmp_path / "state").iterdir() if p.is_file())
    events = [json.loads(line)["event"] for line in logs.splitlines() if line.startswith("{")]
    assert {"decision", "approved", "rollback finished"} <= set(events), sorted(set(events))
    with sqlite3.connect(tmp_path / "state" / "journal.sqlite3") as db:
        notes = [
            row[0] for row in db.execute("SELECT body FROM evidence WHERE kind = 'notification'")
        ]
    echoed = [n for n in notes if "webhook 'ops-webhook': not delivered" in n]
    assert echoed and all("[redacted]" in n for n in echoed), notes  # it echoed its secret path

    credentials = {
        **{f"token of {role}": token for role, token in TOKENS.items()},
        **{f"sha256 of the {role} token": sha256(token) for role, token in TOKENS.items()},
        "a wrong token": wrong,
        **SECRETS,
    }
    leaks = [
        f"{what} in {where}"
        for what, secret in credentials.items()
        for where, haystack in (("the logs", logs), ("/metrics", metrics))
        if secret in haystack
    ]
    leaks += [f"{what} in the journal" for what, s in credentials.items() if s.encode() in journal]
    assert not leaks, leaks
    figures.count(SECTION, "credentials searched for", len(credentials))
    figures.count(SECTION, "failed authentication attempts", len(attempts))
    notified = [r for r in stub.received if not r.path.startswith("/health")]
    figures.count(SECTION, "notifications sent to secret URLs", len(notified))
    figures.count(SECTION, "log lines searched", len(logs.splitlines()))
