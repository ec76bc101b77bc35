"""Crash safety of a cluster: the leader of 3 replicas SIGKILLed at random points of rollbacks.

Three ``rollbackd run`` replicas share one real PostgreSQL journal (lease 2 s, a cycle
every second). Each has its own git working copy cloned from one bare remote, as on
separate machines, and the git executor (strategy ``revert``) pushes to the remote; the
health endpoint always passes. A person (the test) pushes a good and a bad release and
asks a random replica to roll back to the good one; the leader runs the rollback. The
leader is SIGKILLed at a random moment (a ``random.Random(seed)`` delay after it is seen
leading, or earlier at the failpoint it was started with: the start, the work or the end
of a random step), 20 times while a rollback is under way; every replica
that dies is started again at once, so there are always three. A load thread posts
Alertmanager deliveries to the three replicas in turn the whole time, and keeps each
that got a 2xx.

What must hold: every acknowledged delivery is in the journal; no incident is reverted
twice on the remote, and every one that recovered is reverted exactly once; every
incident ends (recovered, not recovered or escalated, and an escalated one may later be
superseded or resolved): none is left rolling back; never two leaders in one epoch.
Between incidents the test, as a person told of an escalation, resets a working copy
left with an unpublished revert (a replica killed between its commit and its push).
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.reliability import figures
from tests.reliability.support import (
    TOKENS,
    Reply,
    StubServer,
    bearer,
    commit,
    git,
    git_world,
    revert_subjects,
    tokens_toml,
    wait_until,
)
from tests.reliability.test_crash_safety import PROBE_RULE, alert, delivery, seed
from tests.support.postgres import PostgresServer
from tests.support.processes import ProcessError, RollbackdProcess, free_port

pytestmark = pytest.mark.integration

ROUNDS = 20
"""Deaths of the leader while a rollback is under way (SIGKILLed, or at its failpoint)."""
LEASE = 2.0
SECTION = "cluster crash safety"
UNDER_WAY = ("rolling_back", "recovering")
REVERT = re.compile(r"^rollbackd: revert to (\S+) \(incident (\d+)\)$")
STEPS = ("document", "notify", "verify_target", "migration_gate", "backup", "execute", "recovery")
FAILPOINTS = [f"{when}:{step}" for step in STEPS for when in ("started", "worked", "finished")]


class Replica(RollbackdProcess):
    """One replica: its own port, state, working copy and logs; a failpoint set per start."""

    def __init__(self, name: str, config: Path, port: int, log_dir: Path) -> None:
        super().__init__(config, port, log_dir, TOKENS, own_group=True)
        self.name = name
        self.failpoint: str | None = None

    def env(self) -> dict[str, str]:
        env = super().env()
        if self.failpoint is not None:
            env["ROLLBACKD_FAILPOINT"] = self.failpoint
        return env

    def readiness(self) -> dict[str, Any] | None:
        try:
            body: dict[str, Any] = httpx.get(f"{self.url}/readyz", timeout=0.5).json()
        except (httpx.HTTPError, ValueError):
            return None
        return body


@dataclass
class Load:
    """Posts deliveries with distinct fingerprints to the replicas in turn; keeps the acked."""

    urls: list[str]
    acked: set[str] = field(default_factory=set)
    sent: int = 0
    refused: dict[int, int] = field(default_factory=dict)
    transport_errors: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        started = datetime.now(UTC)
        with httpx.Client(timeout=3, headers=bearer("alertmanager")) as client:
            while not self.stop.wait(0.01):
                url = self.urls[self.sent % len(self.urls)]
                fingerprint = f"c1a5{self.sent:012x}"
                labels = {"alertname": "LoadProbe", "service": "load", "n": str(self.sent)}
                payload = delivery([alert(fingerprint, labels, started, started)])
                self.sent += 1
                try:
                    response = client.post(f"{url}/webhooks/alertmanager", json=payload)
                except httpx.TransportError:
                    self.transport_errors += 1
                    continue
                if response.status_code == 200:
                    self.acked.add(fingerprint)
                else:
                    self.refused[response.status_code] = (
                        self.refused.get(response.status_code, 0) + 1
                    )


@dataclass
class Cluster:
    """The replicas over one git remote and one journal, and what the test saw of them."""

    root: Path
    remote: Path
    dev: Path
    url: str
    replicas: list[Replica]
    rng: random.Random
    seed: int
    failpoints: list[str] = field(default_factory=list)
    kills: int = 0
    starts: int = 0
    died_starting: int = 0
    unanswered: list[str] = field(default_factory=list)
    cleanups: int = 0
    sweeps: list[list[tuple[str, str, int | None]]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def why(self) -> str:
        logs = ", ".join(str(r.log_dir) for r in self.replicas)
        return f"(seed {self.seed}; logs in {logs})"

    def leader(self) -> Replica | None:
        for replica in self.replicas:
            if replica.alive() and (replica.readiness() or {}).get("role") == "leader":
                return replica
        return None

    def sample(self) -> None:
        """Sweep /readyz of every replica until stopped (the one-leader check)."""
        while not self.stop.wait(0.2):
            sweep = []
            for replica in self.replicas:
                seen = replica.readiness() if replica.alive() else None
                if seen is not None:
                    sweep.append((replica.name, str(seen["role"]), seen["epoch"]))
            self.sweeps.append(sweep)

    def supervise(self, replica: Replica, rng: random.Random) -> None:
        """Start ``replica`` again at once whenever it is dead (killed by the test, or at its
        failpoint), until stopped; with a random failpoint in a third of the starts."""
        while not self.stop.wait(0.05):
            if replica.alive():
                continue
            chosen = rng.choice(FAILPOINTS) if rng.random() < 1 / 3 else None
            replica.failpoint = chosen
            if chosen:
                self.failpoints.append(chosen)
            try:
                replica.start()
            except ProcessError:  # died at its failpoint while taking over at start
                self.died_starting += 1
            self.starts += 1

    def incidents(self) -> list[dict[str, Any]]:
        """Every incident, as the first replica that answers lists them."""
        for replica in self.replicas:
            if not replica.alive():
                continue
            try:
                return replica.incidents()
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                self.unanswered.append(f"{replica.name}: {exc!r}")
        return []

    def under_way(self) -> int | None:
        for incident in self.incidents():
            if incident["state"] in UNDER_WAY:
                return int(incident["id"])
        return None

    def clean_copies(self) -> None:
        """As a person told of an escalation would: a working copy left with commits the
        remote does not have (a revert committed, the replica killed before its push) is
        reset to the remote. Only while no rollback is under way: nothing runs git then."""
        for replica in self.replicas:
            clone = self.root / f"web-{replica.name}"
            git(clone, "fetch", "-q", "origin")
            if git(clone, "rev-list", "origin/main..HEAD") or git(clone, "status", "--porcelain"):
                git(clone, "reset", "-q", "--hard", "origin/main")
                self.cleanups += 1

    def ask_rollback(self, number: int) -> int:
        """good<n> and bad<n> pushed; a random replica asked to roll back to good<n>."""
        self.clean_copies()
        git(self.dev, "pull", "-q", "--ff-only", "origin", "main")
        good = commit(self.dev, f'version = "good{number}"\n', f"good{number}")
        commit(self.dev, f'version = "bad{number}"\nbroken = true\n', f"bad{number}")

        def asked() -> int | None:
            replica = self.rng.choice([r for r in self.replicas if r.alive()] or self.replicas)
            try:
                response = replica.request(
                    "POST",
                    "/api/v1/services/web/rollback",
                    "senior_admin",
                    json={"to": good, "reason": f"round {number}"},
                )
            except httpx.TransportError:
                return None
            return int(response.json()["id"]) if response.status_code == 202 else None

        found: int = wait_until(f"a replica to take rollback {number} {self.why()}", asked, 30)
        return found


def config_text(
    root: Path, name: str, clone: Path, port: int, url: str, health: str, window: str = "2s"
) -> str:
    """A replica's config: its own port, state and working copy, the cluster's journal; the
    health probe at ``health``/health/NAME (which replica probes is seen)."""
    return f"""
[daemon]
listen = "127.0.0.1:{port}"
state_dir = "{root / f"state-{name}"}"
poll_interval = "1s"
rules = ["{root / "rules"}/*.toml"]
log_format = "json"

[prometheus]
url = "http://127.0.0.1:9"
timeout = "1s"

[[services]]
name = "web"
health_url = "{health}/health/{name}"
repo = "{clone}"
strategy = "revert"
command_timeout = "30s"

[guards]
cooldown = "0s"
max_rollbacks = 100
window = "1h"

[recovery]
window = "{window}"
timeout = "20s"

[journal]
url = "{url}"
timeout = "2s"

[cluster]
replica_name = "{name}"
lease = "{LEASE:g}s"

{tokens_toml()}
"""


@pytest.fixture
def cluster(tmp_path: Path, postgres_server: PostgresServer) -> Iterator[Cluster]:
    """Three replicas started (r0 first, so it leads), each with its own clone of the remote."""
    if not postgres_server.running:
        postgres_server.start()
    url = postgres_server.create_database()
    health = StubServer(lambda _request: Reply(200, b'{"status": "ok"}')).start()
    remote, dev, _ = git_world(tmp_path)
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "health.toml").write_text(PROBE_RULE, encoding="utf-8")
    replicas = []
    for index in range(3):
        name, port = f"r{index}", free_port()
        clone = tmp_path / f"web-{name}"
        git(tmp_path, "clone", "-q", "--branch", "main", str(remote), str(clone))
        config = tmp_path / f"config-{name}.toml"
        config.write_text(config_text(tmp_path, name, clone, port, url, health.url), "utf-8")
        replicas.append(Replica(name, config, port, tmp_path / f"logs-{name}"))
    chosen = seed()
    figures.record(SECTION, "seed (RELIABILITY_SEED)", chosen)
    found = Cluster(tmp_path, remote, dev, url, replicas, random.Random(chosen), chosen)  # noqa: S311
    try:
        replicas[0].start()
        for replica in replicas[1:]:
            replica.start()
        yield found
    finally:
        found.stop.set()
        for replica in replicas:
            replica.kill()
        health.stop()


def test_the_leader_sigkilled_20_times_mid_rollback_reverts_each_incident_once_and_loses_nothing(
    cluster: Cluster,
) -> None:
    """20 SIGKILLs of the leader at random points of rollbacks, under a load of webhooks to
    every replica: one revert per incident, every acknowledged delivery journaled, every
    incident ended, never two leaders in one epoch."""
    load = Load([r.url for r in cluster.replicas])
    loader = threading.Thread(target=load.run, name="webhook-load", daemon=True)
    sampler = threading.Thread(target=cluster.sample, name="readyz-sweeps", daemon=True)
    supervisors = [
        threading.Thread(
            target=cluster.supervise,
            args=(replica, random.Random(cluster.rng.random())),  # noqa: S311 -- a schedule
            name=f"restarts-{replica.name}",
            daemon=True,
        )
        for replica in cluster.replicas
    ]
    for thread in (loader, sampler, *supervisors):
        thread.start()
    started = time.monotonic()
    delays: list[float] = []
    mid_rollback = 0
    asked = 0
    try:
        while cluster.kills < ROUNDS:
            if cluster.under_way() is None:
                cluster.ask_rollback(asked)
                asked += 1
            leader: Replica = wait_until(f"a leader {cluster.why()}", cluster.leader, 30)
            delay = cluster.rng.uniform(0.0, 1.5)
            delays.append(delay)
            deadline = time.monotonic() + delay
            while leader.alive() and time.monotonic() < deadline:
                time.sleep(0.02)
            if leader.alive() and cluster.under_way() is None:
                continue  # the rollback ended first: no round, the next rollback is asked
            mid_rollback += leader.alive()
            leader.crash(group_timeout=5)
            cluster.kills += 1

        seen: list[dict[int, str]] = [{}]

        def ended() -> bool:
            seen[0] = {int(i["id"]): str(i["state"]) for i in cluster.incidents()}
            return bool(seen[0]) and not set(seen[0].values()) & set(UNDER_WAY)

        try:
            wait_until("every incident to end", ended, timeout=60)
        except AssertionError as exc:
            seen_last = f"last seen: {seen[0]}; unanswered: {cluster.unanswered[-3:]}"
            raise AssertionError(f"{exc} {seen_last} {cluster.why()}") from None
    finally:
        load.stop.set()
        cluster.stop.set()
        for thread in (loader, sampler, *supervisors):
            thread.join(timeout=60)
    wall = time.monotonic() - started

    with psycopg.connect(cluster.url) as db:
        journaled = {row[0] for row in db.execute("SELECT fingerprint FROM alerts")}
        states: dict[int, str] = dict(db.execute("SELECT id, state FROM incidents").fetchall())
        executed: dict[int, int] = dict(
            db.execute(
                "SELECT incident_id, count(*) FROM steps WHERE name = 'execute'"
                " AND outcome = 'ok' GROUP BY incident_id"
            ).fetchall()
        )
        interrupted = db.execute(
            "SELECT count(*) FROM steps WHERE summary LIKE '%restart%'"
            " OR summary LIKE '%interrupted%'"
        ).fetchone()
        epochs = db.execute("SELECT epoch FROM leadership").fetchone()
    reverts = [REVERT.match(subject) for subject in revert_subjects(cluster.remote)]
    reverted = [int(m.group(2)) for m in reverts if m is not None]

    figures.record(SECTION, "SIGKILLs of the leader by the test (mid-rollback)", mid_rollback)
    figures.record(SECTION, "leaders dead at their failpoint first", cluster.kills - mid_rollback)
    figures.record(SECTION, "kill delays (s, min..max)", f"{min(delays):.2f}..{max(delays):.2f}")
    figures.record(SECTION, "failpoints given at restarts", len(cluster.failpoints))
    figures.record(SECTION, "restarts", cluster.starts)
    figures.record(SECTION, "replicas dead at a failpoint while starting", cluster.died_starting)
    figures.record(SECTION, "epochs (leader changes)", epochs[0] if epochs else 0)
    figures.record(SECTION, "deliveries sent", load.sent)
    figures.record(SECTION, "deliveries acknowledged (2xx)", len(load.acked))
    figures.record(
        SECTION, "delivery attempts refused by a dead replica or cut off", load.transport_errors
    )
    figures.record(SECTION, "working copies cleaned by hand", cluster.cleanups)
    figures.record(SECTION, "incidents", len(states))
    figures.record(SECTION, "revert commits on the remote", len(reverted))
    figures.record(SECTION, "steps ended as interrupted", interrupted[0] if interrupted else 0)
    outcomes: dict[str, int] = {}
    for state in states.values():
        outcomes[state] = outcomes.get(state, 0) + 1
    figures.record(SECTION, "incident outcomes", ", ".join(f"{k} {v}" for k, v in outcomes.items()))
    figures.record(SECTION, "wall time (s)", round(wall, 1))

    why = cluster.why()
    assert cluster.kills == ROUNDS, why
    assert not load.refused, f"deliveries refused with a status: {load.refused} {why}"
    lost = load.acked - journaled
    assert load.acked, why
    assert not lost, f"{len(lost)} acknowledged deliveries are not in the journal {why}"
    assert len(reverted) == len(set(reverted)), f"an incident reverted twice: {reverted} {why}"
    twice = {incident: n for incident, n in executed.items() if n > 1}
    assert not twice, f"incidents whose execute step ran ok twice: {twice} {why}"
    recovered = {n for n, s in states.items() if s == "recovered"}
    assert recovered <= set(reverted), f"recovered without a revert: {recovered} {why}"
    assert recovered, f"no rollback ever recovered: the rounds tested nothing {why}"
    unfinished = {n: s for n, s in states.items() if s in UNDER_WAY}
    assert not unfinished, f"incidents that never ended: {unfinished} {why}"
    holders: dict[int | None, set[str]] = {}
    for sweep in cluster.sweeps:
        leaders = [(name, epoch) for name, role, epoch in sweep if role == "leader"]
        assert len(leaders) <= 1, f"two leaders at once: {sweep} {why}"
        for name, epoch in leaders:
            holders.setdefault(epoch, set()).add(name)
    assert all(len(names) == 1 for names in holders.values()), f"{holders} {why}"
