"""`rollbackd run` end to end with a real Alertmanager, real git, a real app and headless Chromium.

Each test builds a world: the service is deployed from a git working copy with
a bare remote, the demo app runs from it, a real Alertmanager sends its
webhook to a real ``rollbackd run`` subprocess, and Prometheus is a closed
port, so only alerts and health probes matter.

How rollbackd learns the rollback target: CI posts a deploy event for v1
(``POST /api/v1/deploys`` with the ci token, ``ref`` = v1's commit). A version
is *known good* (``DeployHistory.last_good``) once it ran ``known_good_after``
while the daemon evaluated real data — here the health probe answering 200 —
with no finding. With ``known_good_after = "2s"`` the world waits until
``/api/v1/services`` names v1 as the last known good version, then really
deploys v2 (commit, push, app restart) and posts v2's deploy event. Deploy
events outrank the git HEAD the daemon also watches, so current = v2 and
last good = v1 (its ref, the v1 commit, is what the git executor reverts to).
v2 is bad in a way the health probe does not see (``error_rate = 0.5``), so
nothing but the alert can start a rollback; the recovery watch then has the
health probe as its proof.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
import pytest

from tests.conftest import RunCli
from tests.integration.test_rollback_e2e import GIT_ENV, commit, git
from tests.support.alertmanager import Alertmanager, require_alertmanager
from tests.support.fixtures import DemoAppFactory
from tests.support.processes import LOOPBACK, DemoApp, ProcessError, free_port, tail

pytestmark = pytest.mark.integration

T = TypeVar("T")

TOKENS = {
    "alertmanager": "am-webhook-token",
    "ci": "ci-pipeline-token",
    "admin": "admin-token",
    "senior_admin": "senior-admin-token",
    "team": "team-token",
}
"""Role → the token the test sends; the config holds only their SHA-256."""

CHROMIUM_BIN = Path("/usr/bin/chromium")
CHROMIUM_HINT = "install Debian packages chromium and fonts-dejavu-core"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
BAD_RELEASE = 'version = "v2"\nerror_rate = 0.5\n'
"""v2 fails half its requests but /health still answers 200: only an alert tells."""
HEALTH_RULE = """
[[rules]]
name = "outage-health"
trigger = "outage"
probe = "health"
condition = "< 1"
for = "3s"
"""
"""The recovery's proof. `for` outlasts the moment a deploy or rollback restarts the app."""
WAIT = 60.0
"""Upper bound of every wait for the daemon; a healthy run takes a few seconds."""


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class Service:
    """One service deployed from git: its bare remote, working copy, app and releases."""

    name: str
    remote: Path
    clone: Path
    app: DemoApp
    v1: str
    v2: str = ""
    v2_at: datetime | None = None
    """Just after rollbackd accepted v2's deploy event: when v2's errors began."""

    def remote_log(self) -> list[str]:
        return git(self.remote, "log", "--format=%s", "main").splitlines()

    def reverts_on_remote(self) -> int:
        return sum(1 for line in self.remote_log() if line.startswith("rollbackd: revert to"))

    def remote_app_toml(self) -> str:
        return git(self.remote, "show", "main:app.toml") + "\n"


def deploy_v1(tmp_path: Path, name: str, demoapp_factory: DemoAppFactory) -> Service:
    """v1 committed, pushed, and running in the demo app (healthy)."""
    remote, clone = tmp_path / f"{name}-remote.git", tmp_path / name
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
    subprocess.run(
        ["git", "clone", "-q", str(remote), str(clone)],
        check=True,
        env=GIT_ENV,
        capture_output=True,
    )
    git(clone, "checkout", "-q", "-b", "main")
    v1 = commit(clone, 'version = "v1"\n', "v1: the good release")
    git(clone, "tag", "v1")
    git(clone, "push", "-q", "origin", "main", "v1")
    app = demoapp_factory(clone, service=name, traffic=0.0)
    return Service(name, remote, clone, app, v1)


def deploy_v2(service: Service) -> str:
    """The bad release committed, pushed, and the app restarted on it."""
    v2 = commit(service.clone, BAD_RELEASE, "v2: the bad release")
    git(service.clone, "tag", "v2")
    git(service.clone, "push", "-q", "origin", "main", "v2")
    service.app.restart_in_place()
    service.v2 = v2
    return v2


def config_text(
    tmp_path: Path,
    port: int,
    services: Sequence[Service],
    *,
    high_deadline: str | None,
    status_page_public: bool,
) -> str:
    """The daemon's config: probes only, short windows, one token per role."""
    parts = [
        f"""
[daemon]
listen = "{LOOPBACK}:{port}"
state_dir = "{tmp_path / "state"}"
poll_interval = "1s"
rules = ["rules/*.toml"]
log_format = "json"
status_page_public = {"true" if status_page_public else "false"}

[prometheus]
url = "http://127.0.0.1:9"
timeout = "1s"

[deploys]
known_good_after = "2s"
attribution_window = "10m"

[recovery]
window = "2s"
timeout = "30s"
"""
    ]
    if high_deadline is not None:
        parts.append(
            f"""
[policy.high]
action = "request_approval"
deadline = "{high_deadline}"
approver = "senior_admin"
"""
        )
    for service in services:
        restart_argv = (
            f'[["{sys.executable}", "-c", "import urllib.request as u; '
            f"u.urlopen(u.Request('{service.app.url}/-/restart', method='POST'), timeout=10)\"]]"
        )
        parts.append(
            f"""
[[services]]
name = "{service.name}"
health_url = "{service.app.url}/health"
repo = "{service.clone}"
strategy = "revert"
after_rollback = {restart_argv}
command_timeout = "30s"
"""
        )
    for role, token in TOKENS.items():
        parts.append(
            f'\n[[tokens]]\nname = "{role}"\nsha256 = "{sha256(token)}"\nrole = "{role}"\n'
        )
    return "".join(parts)


class Rollbackd:
    """``rollbackd run --config PATH`` as a real subprocess, logs in ``workdir``."""

    def __init__(self, workdir: Path, config: Path, port: int) -> None:
        self.workdir = workdir
        self.config = config
        self.port = port
        self.log_path = workdir / "rollbackd.log"
        self.journal_path = workdir / "state" / "journal.sqlite3"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLBACKD_")}
        env["PYTHONUNBUFFERED"] = "1"
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "rollbackd", "run", "--config", str(self.config)],
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ProcessError(
                    f"rollbackd run exited with {self._process.returncode}; log:\n{self.log()}"
                )
            try:
                response = httpx.get(f"{self.url}/readyz", timeout=1.0)
            except httpx.TransportError as error:
                last = repr(error)
            else:
                if response.status_code == httpx.codes.OK:
                    return
                last = f"{response.status_code} {response.text}"
            time.sleep(0.1)
        raise ProcessError(f"rollbackd not ready within {timeout:g}s ({last}); log:\n{self.log()}")

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (the daemon finishes its step and exits 0), SIGKILL if it hangs."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                return process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
        return process.wait(timeout=10)

    def log(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    def request(
        self, method: str, path: str, role: str = "admin", body: Mapping[str, Any] | None = None
    ) -> httpx.Response:
        return httpx.request(
            method,
            f"{self.url}{path}",
            headers={"Authorization": f"Bearer {TOKENS[role]}"},
            json=body,
            timeout=10.0,
        )

    def get(self, path: str, role: str = "admin") -> Any:
        response = self.request("GET", path, role)
        assert response.status_code == httpx.codes.OK, (path, response.text)
        return response.json()

    def deploy(self, service: str, version: str, ref: str) -> None:
        """What CI does after a deploy: ``POST /api/v1/deploys`` with the ci token."""
        body = {"service": service, "version": version, "ref": ref}
        response = self.request("POST", "/api/v1/deploys", "ci", body)
        assert response.status_code == httpx.codes.CREATED, response.text

    def journal(self) -> closing[sqlite3.Connection]:
        """The daemon's journal, read directly (SQLite in WAL mode allows a reader)."""
        return closing(sqlite3.connect(self.journal_path))

    def wait(self, what: str, probe: Callable[[], T | None], timeout: float = WAIT) -> T:
        """Poll ``probe`` until it returns something other than None; fail saying ``what``."""
        deadline = time.monotonic() + timeout
        while True:
            found = probe()
            if found is not None:
                return found
            if self._process is not None and self._process.poll() is not None:
                pytest.fail(f"rollbackd exited while waiting for {what}; log:\n{self.log()}")
            if time.monotonic() >= deadline:
                pytest.fail(f"after {timeout:g}s still waiting for {what}; log:\n{self.log()}")
            time.sleep(0.2)

    def service_view(self, name: str) -> dict[str, Any]:
        views: list[dict[str, Any]] = self.get("/api/v1/services")
        return next(v for v in views if v["name"] == name)

    def known_good(self, service: str, version: str) -> Callable[[], bool | None]:
        """A probe for :meth:`wait`: true once ``version`` is the service's last known good."""

        def probe() -> bool | None:
            return True if self.service_view(service)["last_good_version"] == version else None

        return probe

    def incident_in(self, service: str, *states: str) -> dict[str, Any] | None:
        """The newest incident of ``service`` (from GET /api/v1/incidents) once in ``states``."""
        incidents: list[dict[str, Any]] = self.get("/api/v1/incidents")
        own = [i for i in incidents if i["service"] == service]
        if own and own[0]["state"] in states:
            return own[0]
        return None

    def settled(self, service: str, timeout: float = WAIT) -> dict[str, Any]:
        """Wait until the service's newest incident has a verdict; return it."""
        return self.wait(
            f"a finished rollback of {service}",
            lambda: self.incident_in(service, "recovered", "not_recovered", "escalated"),
            timeout,
        )

    def cycles_pass(self, count: int) -> None:
        """Wait until ``count`` more evaluation cycles have finished (by /readyz last_cycle)."""
        seen: set[str] = set()

        def probe() -> bool | None:
            last = httpx.get(f"{self.url}/readyz", timeout=5.0).json().get("last_cycle")
            if last is not None:
                seen.add(last)
            return True if len(seen) > count else None

        self.wait(f"{count} more evaluation cycles", probe)


@dataclass
class World:
    """The running pieces of one test: services, Alertmanager, rollbackd and its config."""

    root: Path
    services: dict[str, Service]
    alertmanager: Alertmanager
    daemon: Rollbackd
    config: Path

    @property
    def web(self) -> Service:
        return self.services["web"]

    def steps(self, incident: int) -> dict[str, tuple[str, str | None]]:
        """Step name → (started_at, outcome) from the journal."""
        with self.daemon.journal() as db:
            rows = db.execute(
                "SELECT name, started_at, outcome FROM steps WHERE incident_id = ? ORDER BY id",
                (incident,),
            ).fetchall()
        return {name: (started, outcome) for name, started, outcome in rows}


class WorldFactory(Protocol):
    def __call__(
        self,
        names: Sequence[str] = ("web",),
        *,
        high_deadline: str | None = None,
        status_page_public: bool = False,
    ) -> World: ...


@pytest.fixture
def world_factory(tmp_path: Path, demoapp_factory: DemoAppFactory) -> Iterator[WorldFactory]:
    """Build worlds whose v2 is deployed and whose v1 rollbackd knows as good; stop all."""
    require_alertmanager()
    stops: list[Callable[[], object]] = []

    def make(
        names: Sequence[str] = ("web",),
        *,
        high_deadline: str | None = None,
        status_page_public: bool = False,
    ) -> World:
        services = {name: deploy_v1(tmp_path, name, demoapp_factory) for name in names}
        (tmp_path / "rules").mkdir()
        (tmp_path / "rules" / "rules.toml").write_text(HEALTH_RULE)
        port = free_port()
        config = tmp_path / "config.toml"
        config.write_text(
            config_text(
                tmp_path,
                port,
                list(services.values()),
                high_deadline=high_deadline,
                status_page_public=status_page_public,
            )
        )
        daemon = Rollbackd(tmp_path, config, port)
        alertmanager = Alertmanager(tmp_path / "alertmanager", daemon.url, TOKENS["alertmanager"])
        stops.append(alertmanager.stop)
        alertmanager.start()
        stops.append(daemon.stop)
        daemon.start()
        for service in services.values():
            daemon.deploy(service.name, "v1", service.v1)
        for service in services.values():
            daemon.wait(f"v1 of {service.name} known good", daemon.known_good(service.name, "v1"))
        for service in services.values():
            daemon.deploy(service.name, "v2", deploy_v2(service))
            service.v2_at = datetime.now(UTC)
            view = daemon.service_view(service.name)
            assert (view["current_version"], view["last_good_version"]) == ("v2", "v1"), view
            assert service.app.get("/health").status_code == httpx.codes.OK
        return World(tmp_path, services, alertmanager, daemon, config)

    try:
        yield make
    finally:
        errors = []
        for stop in reversed(stops):
            try:
                stop()
            except Exception as error:  # noqa: BLE001 -- stop the rest, then report every failure
                errors.append(repr(error))
        if errors:
            raise RuntimeError("could not stop: " + "; ".join(errors))


def fire(world: World, service: str, trigger: str, name: str, summary: str = "") -> None:
    """Fire an alert in Alertmanager for ``service``, starting when its v2 went out.

    The start matters: a finding that starts later than ``known_good_after``
    after the deploy would let v2 count as known good (it ran clean that long
    as far as the probes can tell), leaving nothing to roll back to.
    """
    world.alertmanager.post_alert(
        {"alertname": name, "service": service, "rollbackd_trigger": trigger},
        {"summary": summary} if summary else None,
        starts_at=world.services[service].v2_at,
    )


def resolve_once_rolling_back(world: World, service: str, trigger: str, name: str) -> None:
    """Once rollbackd rolls ``service`` back, the alert fired with :func:`fire` resolves.

    As in production, where the rollback fixes what the alert measured: the
    recovery watch needs the alert that triggered the rollback resolved.
    """
    world.daemon.wait(
        f"a rollback of {service} under way",
        lambda: world.daemon.incident_in(
            service, "rolling_back", "recovering", "recovered", "not_recovered", "escalated"
        ),
    )
    world.alertmanager.post_alert(
        {"alertname": name, "service": service, "rollbackd_trigger": trigger},
        starts_at=world.services[service].v2_at,
        ends_at=datetime.now(UTC),
    )


def cli(run_cli: RunCli, world: World, role: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The rollbackd CLI as a person with ``role``'s token in $ROLLBACKD_TOKEN."""
    return run_cli(*args, "--config", str(world.config), env={"ROLLBACKD_TOKEN": TOKENS[role]})


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def awaiting_approval(world: World) -> dict[str, Any]:
    """A high error-rate alert for web fired, and the incident it opened awaiting approval."""
    fire(world, "web", "high_error_rate", "WebErrors")
    pending: dict[str, Any] = world.daemon.wait(
        "an incident awaiting approval",
        lambda: world.daemon.incident_in("web", "awaiting_approval"),
    )
    return pending


# --- the tests ----------------------------------------------------------------------------------


def test_a_critical_alert_from_alertmanager_rolls_the_git_deploy_back(
    world_factory: WorldFactory,
) -> None:
    """An outage alert fired in Alertmanager makes rollbackd revert v2 on the remote and recover."""
    world = world_factory()
    fire(world, "web", "outage", "WebOutage", "web answers nothing")
    resolve_once_rolling_back(world, "web", "outage", "WebOutage")
    incident = world.daemon.settled("web")

    assert incident["state"] == "recovered", incident
    assert "alert WebOutage resolved" in incident["summary"]
    assert "probe health passes" in incident["summary"]
    assert (incident["severity"], incident["action"], incident["origin"]) == (
        "critical",
        "rollback",
        "automatic",
    )
    assert (incident["current_version"], incident["target"]) == ("v2", world.web.v1)
    assert world.web.reverts_on_remote() == 1
    assert world.web.remote_log()[0] == f"rollbackd: revert to {world.web.v1} (incident 1)"
    assert world.web.remote_app_toml() == 'version = "v1"\n'
    assert world.web.app.fault()["version"] == "v1"  # after_rollback restarted the app
    steps = world.steps(incident["id"])
    assert {name: outcome for name, (_, outcome) in steps.items() if name != "notify"} == {
        "document": "ok",
        "verify_target": "ok",
        "migration_gate": "ok",
        "backup": "ok",
        "execute": "ok",
        "after_rollback[0]": "ok",
        "recovery": "ok",
    }
    with world.daemon.journal() as db:
        alerts = db.execute(
            "SELECT status, service, name, labels, first_received FROM alerts"
        ).fetchall()
        deliveries = db.execute(
            "SELECT source, status, body, received_at FROM deliveries"
        ).fetchall()
        decision = db.execute(
            "SELECT actor, action, rules FROM decisions WHERE incident_id = ?", (incident["id"],)
        ).fetchone()
        opened = db.execute(
            "SELECT opened_at FROM incidents WHERE id = ?", (incident["id"],)
        ).fetchone()[0]
    assert len(alerts) == 1
    status, service, name, labels, first_received = alerts[0]
    assert (status, service, name) == ("resolved", "web", "WebOutage")
    assert json.loads(labels)["rollbackd_trigger"] == "outage"
    assert deliveries and all(row[0] == "alertmanager" for row in deliveries)
    body = json.loads(deliveries[0][2])
    assert body["receiver"] == "rollbackd" and body["version"] == "4"  # sent by Alertmanager
    assert body["alerts"][0]["labels"]["alertname"] == "WebOutage"
    assert instant(first_received) <= instant(opened)  # journaled before acted on
    assert decision == ("rollbackd", "rollback", '["alert:WebOutage"]')


def test_a_high_alert_waits_for_a_senior_admin_and_approve_rolls_back(
    world_factory: WorldFactory, run_cli: RunCli
) -> None:
    """A high error-rate alert waits for approval; a team token is refused, a senior's starts it."""
    world = world_factory()
    pending = awaiting_approval(world)
    assert (pending["severity"], pending["action"], pending["target"]) == (
        "high",
        "rollback",
        world.web.v1,
    )
    detail = world.daemon.get(f"/api/v1/incidents/{pending['id']}")
    assert detail["deadline"] is not None
    assert instant(detail["deadline"]) > instant(detail["opened"])
    assert detail["decisions"][0]["approver"] == "senior_admin"
    assert detail["decisions"][0]["deadline"] == detail["deadline"]

    refused = cli(run_cli, world, "team", "approve", str(pending["id"]))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "senior_admin" in refused.stderr and "team" in refused.stderr
    assert world.daemon.incident_in("web", "awaiting_approval") is not None
    assert world.web.reverts_on_remote() == 0

    approved = cli(run_cli, world, "senior_admin", "approve", str(pending["id"]))
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert approved.stdout.startswith(f"incident {pending['id']}: rolling_back")
    resolve_once_rolling_back(world, "web", "high_error_rate", "WebErrors")
    incident = world.daemon.settled("web")
    assert incident["id"] == pending["id"]
    assert incident["state"] == "recovered", incident
    assert world.web.reverts_on_remote() == 1
    assert world.web.remote_app_toml() == 'version = "v1"\n'
    actors = [
        d["actor"] for d in world.daemon.get(f"/api/v1/incidents/{pending['id']}")["decisions"]
    ]
    assert actors == ["rollbackd", "senior_admin"]


def test_a_veto_stops_a_pending_rollback_for_good(
    world_factory: WorldFactory, run_cli: RunCli
) -> None:
    """`rollbackd veto` stops a pending rollback: v2 stays on the remote, the incident vetoed."""
    world = world_factory()
    pending = awaiting_approval(world)
    vetoed = cli(run_cli, world, "senior_admin", "veto", str(pending["id"]))
    assert vetoed.returncode == 0, vetoed.stdout + vetoed.stderr
    assert vetoed.stdout.startswith(f"incident {pending['id']}: vetoed")
    world.daemon.cycles_pass(3)  # the alert still fires: nothing may start a rollback now

    vetoed_record = world.daemon.incident_in("web", "vetoed")
    assert vetoed_record is not None
    assert vetoed_record["id"] == pending["id"]
    assert vetoed_record["summary"] == "vetoed by senior_admin"
    assert world.web.reverts_on_remote() == 0
    assert git(world.web.remote, "rev-parse", "main") == world.web.v2
    assert "execute" not in world.steps(pending["id"])
    late = cli(run_cli, world, "senior_admin", "approve", str(pending["id"]))
    assert late.returncode == 1
    assert "vetoed" in late.stderr


def test_a_user_who_cannot_open_the_journal_reads_incidents_from_the_daemon(
    world_factory: WorldFactory, run_cli: RunCli
) -> None:
    """`incidents` and `report` ask the daemon's API (with a token) if the journal is unreadable."""
    world = world_factory()
    pending = awaiting_approval(world)
    # The journal as a user without access sees it: a state_dir that cannot be opened.
    elsewhere = {"ROLLBACKD_DAEMON__STATE_DIR": str(world.config / "not-a-directory")}

    listing = run_cli(
        "incidents", "--json", "--config", str(world.config),
        env={**elsewhere, "ROLLBACKD_TOKEN": TOKENS["team"]},
    )  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    [listed] = [json.loads(line) for line in listing.stdout.splitlines()]
    assert (listed["id"], listed["state"]) == (pending["id"], "awaiting_approval")
    assert listed["approver"] == "senior_admin"  # what the daemon adds to a pending one

    report = run_cli(
        "report", str(pending["id"]), "--config", str(world.config),
        env={**elsewhere, "ROLLBACKD_TOKEN": TOKENS["team"]},
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    assert f"# Incident {pending['id']}" in report.stdout

    no_token = run_cli("incidents", "--config", str(world.config), env=elsewhere)
    assert no_token.returncode == 1
    assert "cannot open the journal" in no_token.stderr
    assert "ROLLBACKD_TOKEN" in no_token.stderr


def test_without_a_decision_the_rollback_happens_at_the_deadline(
    world_factory: WorldFactory,
) -> None:
    """With policy.high deadline 3s and nobody answering, rollbackd rolls back once it passes."""
    world = world_factory(high_deadline="3s")
    fire(world, "web", "high_error_rate", "WebErrors")
    pending = world.daemon.wait(
        "an incident awaiting approval",
        lambda: world.daemon.incident_in("web", "awaiting_approval", "rolling_back", "recovered"),
    )
    assert world.daemon.get(f"/api/v1/incidents/{pending['id']}")["deadline"] is not None
    resolve_once_rolling_back(world, "web", "high_error_rate", "WebErrors")
    incident = world.daemon.settled("web", timeout=20)  # the deadline is 3s, the recovery 2s

    assert incident["state"] == "recovered", incident
    assert world.web.reverts_on_remote() == 1
    with world.daemon.journal() as db:
        decisions = db.execute(
            "SELECT time, actor, action, deadline FROM decisions WHERE incident_id = ? ORDER BY id",
            (incident["id"],),
        ).fetchall()
    (asked_at, asker, asked, deadline_text), (ruled_at, ruler, ruled, _) = decisions
    assert (asker, asked, ruler, ruled) == (
        "rollbackd",
        "request_approval",
        "rollbackd (deadline)",
        "rollback",
    )
    deadline = instant(deadline_text)
    assert instant(asked_at) < deadline <= instant(ruled_at)
    steps = world.steps(incident["id"])
    started, outcome = steps["execute"]
    assert outcome == "ok"
    assert instant(started) >= deadline  # nothing was executed before the deadline
    assert all(instant(at) >= deadline for at, _ in steps.values())  # the checklist waited too


def test_the_incident_list_shows_when_a_pending_rollback_will_run(
    world_factory: WorldFactory,
) -> None:
    """`GET /api/v1/incidents` tells when each pending rollback runs unless someone vetoes it."""
    world = world_factory()
    pending = awaiting_approval(world)
    detail = world.daemon.get(f"/api/v1/incidents/{pending['id']}")
    assert detail["deadline"] is not None
    assert pending.get("deadline") == detail["deadline"]


# --- the status page in headless Chromium -------------------------------------------------------


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Debian's Chromium, headless, with a new empty profile; fails (never skips) if missing."""
    if not os.access(CHROMIUM_BIN, os.X_OK):
        pytest.fail(f"{CHROMIUM_BIN} not found: {CHROMIUM_HINT}", pytrace=False)
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path)
    result = subprocess.run(
        [str(CHROMIUM_BIN), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, f"chromium exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}


class _TextById(HTMLParser):
    """The text inside the element with a given id, whitespace collapsed."""

    def __init__(self, wanted: str) -> None:
        super().__init__()
        self.wanted = wanted
        self.depth = 0
        self.found = False
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in VOID:
            return
        if self.depth:
            self.depth += 1
        elif dict(attrs).get("id") == self.wanted:
            self.found, self.depth = True, 1

    def handle_endtag(self, tag: str) -> None:
        if self.depth and tag not in VOID:
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self.depth:
            self.parts.append(data)


def text_of(html: str, element_id: str) -> str:
    parser = _TextById(element_id)
    parser.feed(html)
    assert parser.found, f"no element id={element_id!r} in the page:\n{html[:3000]}"
    return " ".join(" ".join(parser.parts).split())


def png_facts(path: Path) -> tuple[int, int, int]:
    """(width, height, distinct byte values in the decompressed image data) of a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    idat, offset = b"", 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        if kind == b"IDAT":
            idat += data[offset + 8 : offset + 8 + length]
        offset += 12 + length
    return width, height, len(set(zlib.decompress(idat)))


def test_the_public_status_page_shows_a_pending_approval_and_a_recent_rollback_in_chromium(
    world_factory: WorldFactory, tmp_path: Path
) -> None:
    """The status page shows the rollback awaiting approval and the one that recovered."""
    world = world_factory(("web", "api"), status_page_public=True)
    fire(world, "web", "outage", "WebOutage")
    resolve_once_rolling_back(world, "web", "outage", "WebOutage")
    rolled_back = world.daemon.settled("web")
    assert rolled_back["state"] == "recovered", rolled_back
    fire(world, "api", "high_error_rate", "ApiErrors")
    pending = world.daemon.wait(
        "api awaiting approval", lambda: world.daemon.incident_in("api", "awaiting_approval")
    )
    deadline = world.daemon.get(f"/api/v1/incidents/{pending['id']}")["deadline"]
    assert deadline is not None

    dom = chromium(tmp_path, "--dump-dom", f"{world.daemon.url}/").stdout
    card = text_of(dom, f"pending-{pending['id']}")
    assert "awaiting approval" in card
    assert f"incident {pending['id']}" in card
    assert "api" in card
    assert f"Deadline: {deadline}" in card
    assert f"rollbackd approve {pending['id']}" in card
    assert text_of(dom, "pending").startswith("Pending approvals (1)")
    row = text_of(dom, f"rollback-{rolled_back['id']}")
    assert row.startswith(f"{rolled_back['id']} web ")
    assert "recovered" in row
    assert f"v2 → {world.web.v1}" in row

    screenshot = tmp_path / "status-phone.png"
    chromium(
        tmp_path,
        f"--screenshot={screenshot}",
        "--window-size=390,844",
        "--hide-scrollbars",
        f"{world.daemon.url}/",
    )
    assert screenshot.exists()
    width, height, shades = png_facts(screenshot)
    assert (width, height) == (390, 844)
    assert screenshot.stat().st_size > 10_000
    assert shades > 50  # rendered text and colours, not a blank page
