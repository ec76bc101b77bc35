"""Journal faults: `rollbackd run` killed while opening an incident, its journal removed or
replaced under it, its disk full in the middle of a rollback.

Each test runs the daemon as a real process (``python -m rollbackd run``) and
looks at it only as a user would: over HTTP (``/readyz``, the API, a webhook
notifier's receiver) and by reading the journal file with sqlite3 afterwards.

- Killed (SIGKILL, through ``ROLLBACKD_FAILPOINT``) the moment an incident
  awaiting approval is opened: after the restart it has its deadline and its
  approver, is not decided again, and runs once when approved.
- The journal file removed, or replaced by another file, while webhooks stream
  in: ``/readyz`` fails naming what happened, webhooks and deploys get 503 (never a 2xx
  for what is not on disk), and after a restart every delivery that got a 2xx
  is in the journal (removed: copied back in place) or in the copy kept beside
  the new file (replaced).
- The disk full during a rollback, for real: the state directory is a small
  tmpfs in a mount namespace of the daemon's own (``unshare``), filled by the
  rollback's ``after_rollback`` command. ``/readyz`` fails saying the disk is
  full, a person is told the rollback is stuck, and once room is made the
  rollback finishes, its rollback command having run exactly once.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.reliability import figures
from tests.reliability.support import (
    TOKENS,
    Received,
    Reply,
    StubServer,
    bearer,
    tokens_toml,
    wait_until,
)
from tests.support.processes import RollbackdProcess, free_port

pytestmark = pytest.mark.integration

SECTION = "journal faults"
PROBE_RULE = """
[[rules]]
name = "outage-health"
trigger = "outage"
probe = "health"
condition = "< 1"
"""
FILL_DISK = """
import os, sqlite3, sys, time

state = sys.argv[1]
# The journal's write-ahead log is emptied first, as after a quiet spell: every write from
# now on must grow it, and there will be no room to.
db = sqlite3.connect(os.path.join(state, "journal.sqlite3"), timeout=30)
for _ in range(100):
    busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    if not busy:
        break
    time.sleep(0.1)
db.close()
ballast = os.open(os.path.join(state, "ballast"), os.O_WRONLY | os.O_CREAT, 0o600)
for size in (1 << 20, 1 << 16, 1 << 12, 1 << 9):
    try:
        while True:
            os.write(ballast, bytes(size))
    except OSError:
        pass
os.close(ballast)
print("the disk is full")
"""


class Daemon(RollbackdProcess):
    """``rollbackd run`` with extra environment, optionally on a tmpfs state directory.

    ``tmpfs``: the daemon runs in a user and mount namespace of its own
    (``unshare -rm``) where ``state_dir`` is a tmpfs of that many MB, so its disk
    can fill up for real without privileges; the test reaches that directory
    through ``/proc/PID/root``.
    """

    def __init__(
        self,
        config: Path,
        port: int,
        log_dir: Path,
        *,
        env: dict[str, str] | None = None,
        tmpfs: tuple[Path, int] | None = None,
    ) -> None:
        super().__init__(config, port, log_dir, TOKENS, own_group=True)
        self.extra_env = dict(env or {})
        self.tmpfs = tmpfs

    def command(self) -> list[str]:
        argv = super().command()
        if self.tmpfs is None:
            return argv
        state, megabytes = self.tmpfs
        mount = f'mount -t tmpfs -o size={megabytes}m rollbackd-test "$0" && exec "$@"'
        return ["unshare", "-rm", "sh", "-c", mount, str(state), *argv]

    def env(self) -> dict[str, str]:
        return {**super().env(), **self.extra_env}

    def seen(self, path: Path) -> Path:
        """``path`` as the daemon sees it (inside its mount namespace, if it has one)."""
        assert self.pid is not None
        return Path(f"/proc/{self.pid}/root{path}") if self.tmpfs else path

    def ready(self) -> httpx.Response:
        return httpx.get(f"{self.url}/readyz", timeout=10)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def delivery(
    fingerprint: str,
    labels: dict[str, str],
    *,
    starts: datetime = datetime(2026, 1, 1, tzinfo=UTC),
    resolved: bool = False,
) -> Any:
    """An Alertmanager v4 payload with one alert."""
    now = rfc3339(datetime.now(UTC))
    return {
        "receiver": "rollbackd",
        "status": "resolved" if resolved else "firing",
        "alerts": [
            {
                "status": "resolved" if resolved else "firing",
                "labels": labels,
                "annotations": {},
                "startsAt": rfc3339(starts),
                "endsAt": now if resolved else "0001-01-01T00:00:00Z",
                "generatorURL": "",
                "fingerprint": fingerprint,
            }
        ],
        "groupLabels": {},
        "commonLabels": labels,
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.invalid",
        "version": "4",
        "groupKey": "{}:{}",
        "truncatedAlerts": 0,
    }


def config_text(root: Path, port: int, service: str, extra: str = "", rules: str = "[]") -> str:
    return f"""
[daemon]
listen = "127.0.0.1:{port}"
state_dir = "{root / "state"}"
poll_interval = "1s"
rules = {rules}
log_format = "json"

[prometheus]
url = "http://127.0.0.1:9"
timeout = "1s"

[[services]]
name = "web"
{service}
command_timeout = "20s"

[guards]
cooldown = "0s"

[deploys]
known_good_after = "1s"

[recovery]
window = "1s"
timeout = "20s"
{extra}
{tokens_toml()}
"""


def known_good(daemon: Daemon, version: str) -> bool:
    [web] = daemon.request("GET", "/api/v1/services", "viewer").json()
    return bool(web["last_good_version"] == version)


def deploy(daemon: Daemon, version: str) -> None:
    response = daemon.request(
        "POST", "/api/v1/deploys", "ci", json={"service": "web", "version": version}
    )
    assert response.status_code == 201, response.text


def runs(count: Path) -> int:
    """How many times the rollback command ran (it appends a line each time)."""
    return len(count.read_text(encoding="utf-8").splitlines()) if count.exists() else 0


# -- killed while opening an incident that waits for approval --------------------------------


@pytest.fixture
def healthy() -> Iterator[StubServer]:
    """A service's health endpoint that always passes."""
    server = StubServer(lambda _request: Reply(200, b'{"status": "ok"}')).start()
    try:
        yield server
    finally:
        server.stop()


def test_an_incident_killed_while_opening_comes_back_with_its_deadline_and_approver(
    tmp_path: Path, healthy: StubServer
) -> None:
    """SIGKILL right after an incident awaiting approval is journaled: after the restart it
    has its deadline and approver, nothing decides it again, and an approval runs it once."""
    count = tmp_path / "rolled-back"
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "health.toml").write_text(PROBE_RULE, encoding="utf-8")
    service = (
        f'health_url = "{healthy.url}/health"\nexecutor = "command"\n'
        f'command = ["sh", "-c", "echo ran >> {count}"]'
    )
    policy = (
        '[policy.critical]\naction = "request_approval"\ndeadline = "1h"\napprover = "senior_admin"'
    )
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        config_text(tmp_path, port, service, policy, rules='["rules/*.toml"]'), encoding="utf-8"
    )
    daemon = Daemon(
        config, port, tmp_path / "logs", env={"ROLLBACKD_FAILPOINT": "opened:awaiting_approval"}
    )
    labels = {"alertname": "Outage", "service": "web", "rollbackd_trigger": "outage"}
    try:
        daemon.start()
        deploy(daemon, "v1")
        wait_until("v1 to be known good", lambda: known_good(daemon, "v1"))
        deploy(daemon, "v2")
        starts = datetime.now(UTC) + timedelta(seconds=1)  # after the deploy: caused by it
        response = daemon.request(
            "POST",
            "/webhooks/alertmanager",
            "alertmanager",
            json=delivery("0ff1ce", labels, starts=starts),
        )
        assert response.status_code == 200, response.text
        assert daemon.wait(timeout=30) == -9, "the failpoint did not kill the daemon"
        daemon.crash()
        figures.count(SECTION, "SIGKILLs right after an approval request was journaled")

        daemon.extra_env = {}
        daemon.start()
        [incident] = daemon.incidents()
        assert incident["state"] == "awaiting_approval", incident
        assert incident["approver"] == "senior_admin", incident
        assert incident["deadline"] is not None, incident
        detail = daemon.request("GET", f"/api/v1/incidents/{incident['id']}", "viewer").json()
        assert [d["approver"] for d in detail["decisions"]] == ["senior_admin"]
        assert detail["deadline"] == incident["deadline"]
        first = httpx.get(f"{daemon.url}/readyz", timeout=10).json()["last_cycle"]
        wait_until(
            "two cycles after the restart",
            lambda: httpx.get(f"{daemon.url}/readyz", timeout=10).json()["last_cycle"] != first,
        )
        assert [i["id"] for i in daemon.incidents()] == [incident["id"]], "decided again"
        figures.count(SECTION, "incidents back after the kill with deadline and approver")

        approved = daemon.request(
            "POST", f"/api/v1/incidents/{incident['id']}/approve", "senior_admin"
        )
        assert approved.status_code == 200, approved.text
        resolved = delivery("0ff1ce", labels, starts=starts, resolved=True)
        assert (
            daemon.request(
                "POST", "/webhooks/alertmanager", "alertmanager", json=resolved
            ).status_code
            == 200
        )

        def ended() -> str | None:
            [now] = daemon.incidents()
            return None if now["state"] in ("rolling_back", "recovering") else str(now["state"])

        assert wait_until("the approved rollback to end", ended, timeout=40) == "recovered"
        assert runs(count) == 1
    finally:
        daemon.stop(timeout=10)


# -- the journal file removed or replaced under the running daemon ---------------------------


@dataclass
class Load:
    """Posts deliveries with distinct fingerprints until stopped; notes every answer."""

    url: str
    acked: list[str] = field(default_factory=list)
    refused: dict[int, int] = field(default_factory=dict)
    refusal: str = ""
    sent: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        with httpx.Client(timeout=10, headers=bearer("alertmanager")) as client:
            while not self.stop.is_set():
                fingerprint = f"1oad{self.sent:012x}"
                labels = {"alertname": "LoadProbe", "service": "load", "n": str(self.sent)}
                self.sent += 1
                response = client.post(
                    f"{self.url}/webhooks/alertmanager", json=delivery(fingerprint, labels)
                )
                with self.lock:
                    if response.status_code == 200:
                        self.acked.append(fingerprint)
                    else:
                        code = response.status_code
                        self.refused[code] = self.refused.get(code, 0) + 1
                        self.refusal = response.text
                self.stop.wait(0.005)

    def refusals(self) -> int:
        with self.lock:
            return sum(self.refused.values())


def fingerprints(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT fingerprint FROM alerts")}


def replace_with_copy(path: Path) -> None:
    """Put a consistent copy of the journal in its place, as a restore from a backup would."""
    copy = path.with_name("restored-from-backup.sqlite3")
    source, target = sqlite3.connect(path), sqlite3.connect(copy)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
    copy.replace(path)


@pytest.mark.parametrize("fault", ["removed", "replaced"])
def test_a_journal_removed_or_replaced_under_the_daemon_acknowledges_nothing_more(
    tmp_path: Path, fault: str
) -> None:
    """Webhooks stream in; the journal file is removed (or replaced by a copy): /readyz says
    so, webhooks and deploys get 503, and every delivery that got a 2xx survives a restart."""
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        config_text(tmp_path, port, 'executor = "command"\ncommand = ["true"]'), encoding="utf-8"
    )
    daemon = Daemon(config, port, tmp_path / "logs")
    path = tmp_path / "state" / "journal.sqlite3"
    daemon.start()
    load = Load(daemon.url)
    loader = threading.Thread(target=load.run, name="webhook-load", daemon=True)
    try:
        loader.start()
        wait_until("30 acknowledged deliveries", lambda: len(load.acked) >= 30)
        faulted = time.monotonic()
        if fault == "removed":
            path.unlink()
        else:
            replace_with_copy(path)
        acked_at_fault = len(load.acked)

        def unready() -> str | None:
            answer = daemon.ready()
            return answer.json()["journal_error"] if answer.status_code == 503 else None

        why = wait_until("/readyz to fail", unready)
        detected = time.monotonic() - faulted
        assert f"was {fault} while rollbackd had it open" in why, why
        # A first copy may fail on a busy machine (its log in use); it is tried again.
        why = wait_until(
            "/readyz to say where everything journaled is",
            lambda: (found := unready()) and "no copy" not in found and found,
            timeout=30.0,
        )
        acked_at_detection = len(load.acked)
        wait_until("webhooks to be refused", lambda: load.refusals() >= 20)
        load.stop.set()
        loader.join(timeout=15)
        assert set(load.refused) == {503}, load.refused
        assert "the journal cannot be written, nothing was accepted" in load.refusal
        assert len(load.acked) == acked_at_detection, "a delivery got a 2xx after /readyz failed"
        refused_deploy = daemon.request(
            "POST", "/api/v1/deploys", "ci", json={"service": "web", "version": "v9"}
        )
        assert refused_deploy.status_code == 503, refused_deploy.text
        assert daemon.stop() == 0
    finally:
        load.stop.set()
        daemon.stop(timeout=10)

    if fault == "removed":
        kept = path  # copied back in place
    else:
        [kept] = path.parent.glob("journal.sqlite3.kept-*")
        assert str(kept) in why
    lost = set(load.acked) - fingerprints(kept)
    assert not lost, f"{len(lost)} acknowledged deliveries are not in {kept}"

    daemon.start()
    try:
        assert daemon.ready().json()["journal_error"] is None
        again = daemon.request(
            "POST",
            "/webhooks/alertmanager",
            "alertmanager",
            json=delivery("a5a1n", {"service": "load"}),
        )
        assert again.status_code == 200, again.text
    finally:
        daemon.stop(timeout=10)

    name = f"journal {fault}"
    figures.record(SECTION, f"{name}: deliveries acknowledged before the fault", acked_at_fault)
    figures.record(SECTION, f"{name}: acknowledged in all", len(load.acked))
    figures.record(SECTION, f"{name}: refused with 503 after it", load.refusals())
    figures.record(SECTION, f"{name}: seconds until /readyz failed", round(detected, 3))
    figures.record(SECTION, f"{name}: acknowledged deliveries lost", len(lost))


# -- the disk full during a rollback -----------------------------------------------------------


def can_mount_a_tmpfs() -> str | None:
    """Why a mount namespace with a tmpfs cannot be made here, or None."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    tried = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m t /mnt"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return None if tried.returncode == 0 else f"unshare -rm + mount tmpfs failed: {tried.stderr}"


@pytest.fixture
def notified() -> Iterator[StubServer]:
    """A webhook notifier's receiver."""
    receiver = StubServer(lambda _request: Reply(200, b"{}")).start()
    try:
        yield receiver
    finally:
        receiver.stop()


def titles(receiver: StubServer) -> list[str]:
    with receiver.lock:
        received: list[Received] = list(receiver.received)
    return [str(json.loads(r.body)["title"]) for r in received]


def test_a_full_disk_holds_a_rollback_until_there_is_room_then_it_finishes_once(
    tmp_path: Path, notified: StubServer
) -> None:
    """The disk fills up while a rollback runs: /readyz says so, a person is told the rollback
    is stuck, and once room is made it finishes; its command ran exactly once."""
    unable = can_mount_a_tmpfs()
    if unable is not None:
        pytest.skip(unable)
    count = tmp_path / "rolled-back"
    (tmp_path / "fill.py").write_text(FILL_DISK, encoding="utf-8")
    state = tmp_path / "state"
    state.mkdir()

    def health(_request: Received) -> Reply:
        broken = deployed.get("version") == "v2" and runs(count) == 0
        return Reply(500 if broken else 200, b'{"status": "ok"}')

    deployed: dict[str, str] = {}
    app = StubServer(health).start()
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "health.toml").write_text(PROBE_RULE, encoding="utf-8")
    service = (
        f'health_url = "{app.url}/health"\nexecutor = "command"\n'
        f'command = ["sh", "-c", "echo ran >> {count}"]\n'
        f'after_rollback = [["{sys.executable}", "{tmp_path / "fill.py"}", "{state}"]]'
    )
    notifier = (
        f'[[notifiers]]\nname = "ops"\nkind = "webhook"\nurl = "{notified.url}/hook"\n'
        'retries = 0\ntimeout = "2s"\n'
    )
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        config_text(tmp_path, port, service, notifier, rules='["rules/*.toml"]'), encoding="utf-8"
    )
    daemon = Daemon(config, port, tmp_path / "logs", tmpfs=(state, 8))
    try:
        daemon.start()
        deploy(daemon, "v1")
        deployed["version"] = "v1"
        wait_until("v1 to be known good", lambda: known_good(daemon, "v1"))
        deployed["version"] = "v2"
        deploy(daemon, "v2")

        def stuck() -> str | None:
            answer = daemon.ready()
            return answer.json()["journal_error"] if answer.status_code == 503 else None

        why = wait_until("the full disk to fail /readyz", stuck, timeout=40)
        assert "database or disk is full" in why, why
        wait_until(
            "a person to be told the rollback is stuck",
            lambda: any("rollback stuck" in t for t in titles(notified)),
        )
        [incident] = daemon.incidents()
        assert incident["state"] == "rolling_back", incident
        full_since = time.monotonic()
        time.sleep(1.5)  # the rollback keeps trying meanwhile, and keeps failing
        assert daemon.ready().status_code == 503
        assert runs(count) == 1

        daemon.seen(state / "ballast").unlink()  # room again
        room = time.monotonic()
        wait_until("/readyz to be ready again", lambda: daemon.ready().status_code == 200)

        def ended() -> str | None:
            [now] = daemon.incidents()
            return None if now["state"] in ("rolling_back", "recovering") else str(now["state"])

        assert wait_until("the rollback to end", ended, timeout=60) == "recovered"
        finished = time.monotonic() - room
        detail = daemon.request("GET", f"/api/v1/incidents/{incident['id']}", "viewer").json()
        steps = [(s["name"], s["outcome"]) for s in detail["steps"]]
        assert steps.count(("execute", "ok")) == 1, steps
        assert steps.count(("after_rollback[0]", "ok")) == 1, steps
        assert runs(count) == 1
        told = titles(notified)
        assert any("rollback goes on" in t for t in told), told
    finally:
        daemon.stop(timeout=10)
        app.stop()
    figures.record(SECTION, "disk full: seconds the rollback was held", round(room - full_since, 1))
    figures.record(SECTION, "disk full: seconds from room to recovered", round(finished, 1))
    figures.record(SECTION, "disk full: rollback commands run", runs(count))
    figures.record(SECTION, "disk full: notifications", len(told))
