"""Crash safety: `rollbackd run` SIGKILLed at random points while webhooks stream in.

A git world (bare remote, the daemon's working copy, git executor with
strategy ``revert``) and a health endpoint that always passes. A load thread
posts Alertmanager deliveries with distinct fingerprints the whole time and
records each one that got a 2xx. The daemon is killed with SIGKILL 20 times at
a random moment (``random.Random(seed)``; the seed is printed with the suite's
figures and can be set with ``RELIABILITY_SEED``). In about half the rounds a
rollback is under way when it dies: CI announces a good version, it runs clean
until it is known good, then a bad version is deployed and a critical alert
fires, and the kill comes anywhere from before the decision to after recovery.
After each restart the test, like an operator, waits for interrupted rollbacks
to resume and finish before it deploys again.

What must hold at the end: every acknowledged delivery is in the journal;
no incident rolled back twice (one revert commit on the remote and at most one
``execute`` step ended ``ok`` per incident); no incident the API showed before
a kill is missing, and none that had ended changed its ending.
"""

from __future__ import annotations

import os
import random
import re
import sqlite3
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
    Reply,
    StubServer,
    bearer,
    commit,
    daemon_process,
    git,
    git_world,
    revert_subjects,
    tokens_toml,
    wait_until,
)
from tests.support.processes import RollbackdProcess, free_port

pytestmark = pytest.mark.integration

ROUNDS = 20
ROLLBACK_ROUNDS = 9
SECTION = "crash safety"
ACTIVE = ("rolling_back", "recovering")
ENDED = ("recovered", "not_recovered", "escalated", "vetoed", "recorded", "resolved")
REVERT = re.compile(r"^rollbackd: revert to (\S+) \(incident (\d+)\)$")
PROBE_RULE = """
[[rules]]
name = "outage-health"
trigger = "outage"
probe = "health"
condition = "< 1"
"""


def seed() -> int:
    """The run's seed: ``RELIABILITY_SEED`` if set, else a fresh one (printed in the figures)."""
    given = os.environ.get("RELIABILITY_SEED")
    return int(given) if given else random.SystemRandom().randrange(1, 2**31)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def delivery(alerts: list[dict[str, Any]]) -> dict[str, Any]:
    """An Alertmanager v4 payload carrying ``alerts``."""
    return {
        "receiver": "rollbackd",
        "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
        "alerts": alerts,
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.invalid",
        "version": "4",
        "groupKey": "{}:{}",
        "truncatedAlerts": 0,
    }


def alert(
    fingerprint: str, labels: dict[str, str], starts: datetime, ends: datetime | None = None
) -> dict[str, Any]:
    return {
        "status": "resolved" if ends else "firing",
        "labels": labels,
        "annotations": {},
        "startsAt": rfc3339(starts),
        "endsAt": rfc3339(ends) if ends else "0001-01-01T00:00:00Z",
        "generatorURL": "",
        "fingerprint": fingerprint,
    }


@dataclass
class Load:
    """Posts deliveries with distinct fingerprints until stopped; keeps the acknowledged ones."""

    url: str
    acked: set[str] = field(default_factory=set)
    sent: int = 0
    refused: dict[int, int] = field(default_factory=dict)
    transport_errors: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        started = datetime.now(UTC)
        with httpx.Client(timeout=5, headers=bearer("alertmanager")) as client:
            while not self.stop.is_set():
                fingerprint = f"10ad{self.sent:012x}"
                labels = {"alertname": "LoadProbe", "service": "load", "n": str(self.sent)}
                payload = delivery([alert(fingerprint, labels, started, started)])
                self.sent += 1
                try:
                    response = client.post(f"{self.url}/webhooks/alertmanager", json=payload)
                except httpx.TransportError:
                    self.transport_errors += 1
                    self.stop.wait(0.02)
                    continue
                with self.lock:
                    if response.status_code == 200:
                        self.acked.add(fingerprint)
                    else:
                        self.refused[response.status_code] = (
                            self.refused.get(response.status_code, 0) + 1
                        )


@dataclass
class World:
    """The daemon over a git world, and what the test saw of it."""

    root: Path
    remote: Path
    clone: Path
    daemon: RollbackdProcess
    rng: random.Random
    seed: int
    seen: dict[int, str] = field(default_factory=dict)
    fired: list[tuple[str, datetime]] = field(default_factory=list)
    resolved: set[str] = field(default_factory=set)
    acked_alerts: set[str] = field(default_factory=set)
    triggered: int = 0
    cleanups: int = 0

    def why(self) -> str:
        return f"(seed {self.seed}; logs in {self.daemon.stderr_path})"

    def look(self) -> set[str] | None:
        """Note every incident and its state as the API shows them; the states (None: no answer)."""
        try:
            listed = self.daemon.incidents()
        except (httpx.TransportError, httpx.HTTPStatusError):
            return None
        for incident in listed:
            self.seen[int(incident["id"])] = str(incident["state"])
        return {str(incident["state"]) for incident in listed}

    def watch(self, seconds: float) -> None:
        """Keep looking at the incidents for ``seconds``; resolve the alert once recovering."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if "recovering" in (self.look() or set()):
                self.resolve_fired()
            time.sleep(min(0.15, max(deadline - time.monotonic(), 0)))

    def resolve_fired(self) -> None:
        """The latest alert resolves, as once its rollback fixed the fault: recovery needs it."""
        if self.fired and self.fired[-1][0] not in self.resolved:
            fingerprint, starts = self.fired[-1]
            self.post_alerts(
                [alert(fingerprint, crash_labels(fingerprint), starts, datetime.now(UTC))]
            )
            self.resolved.add(fingerprint)

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        response = self.daemon.request(
            "POST", "/webhooks/alertmanager", "alertmanager", json=delivery(alerts)
        )
        assert response.status_code == 200, response.text
        self.acked_alerts.update(a["fingerprint"] for a in alerts)

    def settle(self) -> None:
        """After a restart: interrupted rollbacks finish, and earlier alerts are resolved.

        The alert resolves once no rollback is still executing, as when the
        rollback fixed the fault; a recovery waits for that, then ends.
        """

        def executed() -> bool:
            states = self.look()
            return states is not None and "rolling_back" not in states

        def calm() -> bool:
            states = self.look()
            return states is not None and not states & set(ACTIVE)

        wait_until(f"resumed rollbacks to execute {self.why()}", executed, timeout=60)
        self.resolve_fired()
        wait_until(f"resumed rollbacks to finish {self.why()}", calm, timeout=60)
        if git(self.clone, "status", "--porcelain", "--untracked-files=no"):
            # An escalated "outcome unknown" asks a person to look: this test is that person.
            git(self.clone, "reset", "-q", "--hard", "HEAD")
            self.cleanups += 1

    def deploy(self, version: str, sha: str) -> None:
        event = {"service": "web", "version": version, "ref": sha}
        response = self.daemon.request("POST", "/api/v1/deploys", "ci", json=event)
        assert response.status_code == 201, response.text

    def trigger_rollback(self, number: int) -> None:
        """good<n> runs clean until known good; bad<n> follows and a critical alert fires."""
        self.settle()
        good = commit(self.clone, f'version = "good{number}"\n', f"good{number}")
        self.deploy(f"good{number}", good)

        def known_good() -> bool:
            response = self.daemon.request("GET", "/api/v1/services", "viewer")
            [web] = response.json()
            return bool(web["last_good_version"] == f"good{number}")

        wait_until(f"good{number} to be known good {self.why()}", known_good, timeout=30)
        bad = commit(self.clone, f'version = "bad{number}"\nbroken = true\n', f"bad{number}")
        self.deploy(f"bad{number}", bad)
        fingerprint = f"c0ffee{number:010x}"
        starts = datetime.now(UTC) + timedelta(seconds=1)
        self.post_alerts([alert(fingerprint, crash_labels(fingerprint), starts)])
        self.fired.append((fingerprint, starts))
        self.triggered += 1


def crash_labels(fingerprint: str) -> dict[str, str]:
    return {"alertname": f"Outage{fingerprint}", "service": "web", "rollbackd_trigger": "outage"}


def config_text(root: Path, clone: Path, port: int, health_url: str) -> str:
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
health_url = "{health_url}/health"
repo = "{clone}"
strategy = "revert"
command_timeout = "30s"

[guards]
cooldown = "0s"
max_rollbacks = 100
window = "1h"

[deploys]
known_good_after = "1s"

[recovery]
window = "1s"
timeout = "20s"

{tokens_toml()}
"""


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """The git world, a passing health endpoint and a started daemon; all stopped at the end."""
    health = StubServer(lambda _request: Reply(200, b'{"status": "ok"}')).start()
    remote, clone, _ = git_world(tmp_path)
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "health.toml").write_text(PROBE_RULE, encoding="utf-8")
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(config_text(tmp_path, clone, port, health.url), encoding="utf-8")
    daemon = daemon_process(config, port, tmp_path / "logs")
    chosen = seed()
    figures.record(SECTION, "seed (RELIABILITY_SEED)", chosen)
    try:
        daemon.start()
        schedule = random.Random(chosen)  # noqa: S311 -- a reproducible schedule, not a secret
        yield World(tmp_path, remote, clone, daemon, schedule, chosen)
    finally:
        daemon.stop(timeout=10)
        health.stop()


def journal(root: Path) -> sqlite3.Connection:
    return sqlite3.connect(root / "state" / "journal.sqlite3")


def test_sigkill_at_random_points_loses_no_acknowledged_webhook_and_never_rolls_back_twice(
    world: World,
) -> None:
    """Killed 20 times mid-stream and mid-rollback, rollbackd keeps every ack and each incident."""
    load = Load(world.daemon.url)
    loader = threading.Thread(target=load.run, name="webhook-load", daemon=True)
    loader.start()
    rollback_rounds = set(world.rng.sample(range(ROUNDS), ROLLBACK_ROUNDS))
    delays: list[float] = []
    mid_rollback = 0
    try:
        for number in range(ROUNDS):
            if number in rollback_rounds:
                world.trigger_rollback(number)
                delay = world.rng.uniform(0.3, 2.8)
            else:
                delay = world.rng.uniform(0.2, 1.5)
            delays.append(delay)
            world.watch(delay)
            if (world.look() or set()) & set(ACTIVE):
                mid_rollback += 1
            world.daemon.crash()
            world.daemon.start()
        world.settle()
        world.look()
    finally:
        load.stop.set()
        loader.join(timeout=15)
    assert not loader.is_alive()

    with journal(world.root) as db:
        journaled = {row[0] for row in db.execute("SELECT fingerprint FROM alerts")}
        deliveries = db.execute("SELECT count(*) FROM deliveries").fetchone()[0]
        executed = dict(
            db.execute(
                "SELECT incident_id, count(*) FROM steps WHERE name = 'execute'"
                " AND outcome = 'ok' GROUP BY incident_id"
            ).fetchall()
        )
        states = dict(db.execute("SELECT id, state FROM incidents").fetchall())
        reasons = [row[0] for row in db.execute("SELECT reason FROM incidents")]
        resumed = db.execute(
            "SELECT count(DISTINCT incident_id) FROM steps WHERE summary LIKE '%restart%'"
        ).fetchone()[0]
    reverts = [REVERT.match(subject) for subject in revert_subjects(world.remote)]
    reverted = [int(m.group(2)) for m in reverts if m is not None]

    figures.record(SECTION, "rounds", ROUNDS)
    figures.record(SECTION, "SIGKILLs", ROUNDS)
    figures.record(SECTION, "rounds that triggered a rollback", len(rollback_rounds))
    figures.record(SECTION, "kills while a rollback was under way", mid_rollback)
    figures.record(SECTION, "kill delays (s, min..max)", f"{min(delays):.2f}..{max(delays):.2f}")
    figures.record(SECTION, "deliveries sent", load.sent)
    figures.record(SECTION, "deliveries acknowledged (2xx)", len(load.acked))
    figures.record(SECTION, "deliveries journaled (rows)", deliveries)
    figures.record(SECTION, "delivery attempts refused or cut off by kills", load.transport_errors)
    figures.record(SECTION, "incidents", len(states))
    figures.record(SECTION, "rollbacks executed (revert commits)", len(reverted))
    figures.record(SECTION, "incidents with a step interrupted by a kill", resumed)
    figures.record(SECTION, "working copies cleaned by hand", world.cleanups)
    names = [f"alert:{crash_labels(fp)['alertname']} " for fp, _ in world.fired]
    per_alert = [sum(name in reason for reason in reasons) for name in names]
    figures.record(
        SECTION,
        "alerts decided again after a restart",
        sum(1 for n in per_alert if n > 1),
    )
    outcomes: dict[str, int] = {}
    for state in states.values():
        outcomes[state] = outcomes.get(state, 0) + 1
    figures.record(SECTION, "incident outcomes", ", ".join(f"{k} {v}" for k, v in outcomes.items()))

    why = world.why()
    assert not load.refused, f"deliveries refused with a status: {load.refused} {why}"
    assert load.acked, f"the load got no acknowledgement at all {why}"
    lost = load.acked - journaled
    assert not lost, f"{len(lost)} acknowledged deliveries are not in the journal {why}"
    assert world.acked_alerts <= journaled, why
    assert deliveries >= len(load.acked), why

    twice = {incident: n for incident, n in executed.items() if n > 1}
    assert not twice, f"incidents whose execute step ran ok twice: {twice} {why}"
    assert len(reverted) == len(set(reverted)), f"one incident reverted twice: {reverted} {why}"
    assert set(reverted) <= set(executed), f"a revert on the remote has no ok execute {why}"
    assert reverted, f"no rollback ever ran: the crash rounds tested nothing {why}"

    missing = set(world.seen) - set(states)
    assert not missing, f"incidents seen through the API before a kill are gone: {missing} {why}"
    changed = {
        number: (seen, states[number])
        for number, seen in world.seen.items()
        if seen in ENDED and states[number] != seen
    }
    assert not changed, f"incidents whose ending changed after a restart: {changed} {why}"
    unfinished = {n: s for n, s in states.items() if s in ACTIVE}
    assert not unfinished, f"rollbacks never finished after restarts: {unfinished} {why}"
