"""The leader losing PostgreSQL: the server stopped, or the leader's TCP path to it frozen.

Three ``rollbackd run`` replicas (lease 2 s, a cycle every second), each reaching the one
real PostgreSQL through a TCP proxy of its own, each with its own working copy of one bare
remote and its own health probe path (so the stub sees which replica probes: only the
leader evaluates and watches recovery). A rollback asked of a follower is run by the
leader; while its recovery is watched (a 4 s window), PostgreSQL is lost:

- stopped for everyone: within the lease every replica says it follows, answers webhooks
  503 and fails /readyz naming the journal; the leader probes nothing more once its lease
  ran out by its own clock. Started again: one replica leads, resumes the rollback, and
  it recovers with one revert on the remote.
- the leader's path frozen (its proxy stops forwarding, closes nothing) while the followers
  reach PostgreSQL: the leader stops within its lease (its renewals fail on the client's
  own deadline, and a webhook it gets is answered 503), a follower leads within the lease
  and a poll interval and finishes the rollback; thawed, the former leader finds it
  follows and journals nothing more.
"""

from __future__ import annotations

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
    Received,
    Reply,
    StubServer,
    commit,
    git,
    git_world,
    revert_subjects,
    wait_until,
)
from tests.reliability.test_cluster_crashes import Replica, config_text
from tests.reliability.test_crash_safety import PROBE_RULE, alert, delivery
from tests.support.postgres import PostgresServer
from tests.support.processes import LOOPBACK, free_port
from tests.support.tcpproxy import TcpProxy

pytestmark = pytest.mark.integration

LEASE = 2.0
POLL = 1.0
SECTION = "cluster: PostgreSQL lost"
SLACK = 3.0
"""Seconds allowed beyond what the lease promises, for a machine shared by tests."""


@dataclass
class World:
    """Three replicas behind proxies of their own, the remote, and who probed when."""

    root: Path
    postgres: PostgresServer
    url: str
    remote: Path
    dev: Path
    replicas: list[Replica]
    proxies: list[TcpProxy]
    probes: list[tuple[str, float]] = field(default_factory=list)

    def leader(self) -> Replica | None:
        for replica in self.replicas:
            if (replica.readiness() or {}).get("role") == "leader":
                return replica
        return None

    def incident(self, number: int) -> dict[str, Any]:
        """The incident as the first replica that answers shows it (as a load balancer would:
        one whose path to PostgreSQL is frozen answers only at its journal's deadline)."""
        for replica in self.replicas:
            try:
                response = replica.request("GET", f"/api/v1/incidents/{number}", "viewer")
            except httpx.TimeoutException:
                continue
            if response.status_code == 200:
                found: dict[str, Any] = response.json()
                return found
        raise AssertionError(f"no replica shows incident {number}")

    def rollback_recovering(self) -> int:
        """good and bad pushed; r1 asked to roll back to good; once its recovery is watched."""
        good = commit(self.dev, 'version = "good"\n', "good")
        commit(self.dev, 'version = "bad"\nbroken = true\n', "bad")
        response = self.replicas[1].request(
            "POST", "/api/v1/services/web/rollback", "senior_admin", json={"to": good}
        )
        assert response.status_code == 202, response.text
        number = int(response.json()["id"])
        wait_until("the recovery watch", lambda: self.incident(number)["state"] == "recovering", 30)
        return number

    def probes_after(self, moment: float, name: str | None = None) -> list[tuple[str, float]]:
        return [(who, at) for who, at in self.probes if at > moment and name in (None, who)]

    def reverts(self) -> int:
        return len(revert_subjects(self.remote))


@pytest.fixture
def world(tmp_path: Path, postgres_server: PostgresServer) -> Iterator[World]:
    """The replicas started (r0 first, so it leads), each through its own proxy."""
    if not postgres_server.running:
        postgres_server.start()
    url = postgres_server.create_database()
    probes: list[tuple[str, float]] = []

    def health(request: Received) -> Reply:
        probes.append((request.path.rsplit("/", 1)[-1], time.monotonic()))
        return Reply(200, b'{"status": "ok"}')

    stub = StubServer(health).start()
    remote, dev, _ = git_world(tmp_path)
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "health.toml").write_text(PROBE_RULE, encoding="utf-8")
    replicas, proxies = [], []
    for index in range(3):
        name, port = f"r{index}", free_port()
        proxy = TcpProxy((LOOPBACK, postgres_server.port)).start()
        proxies.append(proxy)
        through = url.replace(f":{postgres_server.port}/", f":{proxy.port}/")
        clone = tmp_path / f"web-{name}"
        git(tmp_path, "clone", "-q", "--branch", "main", str(remote), str(clone))
        config = tmp_path / f"config-{name}.toml"
        text = config_text(tmp_path, name, clone, port, through, stub.url, window="4s")
        config.write_text(text, encoding="utf-8")
        replicas.append(Replica(name, config, port, tmp_path / f"logs-{name}"))
    found = World(tmp_path, postgres_server, url, remote, dev, replicas, proxies, probes)
    try:
        for replica in replicas:
            replica.start()
        wait_until("r0 to lead", lambda: found.leader() is replicas[0])
        yield found
    finally:
        for replica in replicas:
            replica.kill()
        for proxy in proxies:
            proxy.close()
        stub.stop()
        if not postgres_server.running:
            postgres_server.start()


def webhook(replica: Replica, number: int) -> int:
    now = datetime.now(UTC)
    labels = {"alertname": "Lost", "service": "load", "n": str(number)}
    payload = delivery([alert(f"5e{number:014x}", labels, now, now)])
    return replica.request(
        "POST", "/webhooks/alertmanager", "alertmanager", json=payload
    ).status_code


def test_postgresql_stopped_stops_every_replica_acting_and_one_resumes_once_it_is_back(
    world: World,
) -> None:
    """PostgreSQL stopped during a recovery watch: within the lease all follow, webhooks get
    503, /readyz names the journal, and the leader probes nothing more; started again, one
    replica leads and the rollback recovers with one revert."""
    number = world.rollback_recovering()
    world.postgres.stop()
    stopped = time.monotonic()

    def all_follow() -> bool:
        seen = [r.readiness() or {} for r in world.replicas]
        return all(s.get("role") == "follower" for s in seen)

    wait_until("every replica to follow", all_follow, timeout=LEASE + SLACK)
    for index, replica in enumerate(world.replicas):
        assert webhook(replica, index) == 503
        ready = replica.request("GET", "/readyz", "viewer")
        assert ready.status_code == 503
        assert "journal" in ready.text
    time.sleep(LEASE)  # whatever the former leader would still do, it would do now
    late = world.probes_after(stopped + LEASE + 0.5)
    assert not late, f"probes after the lease ran out: {late}"

    world.postgres.start()
    restarted = time.monotonic()
    leader = wait_until("one replica to lead again", world.leader, timeout=LEASE * 2 + SLACK)
    led = time.monotonic() - restarted
    ended = wait_until(
        "the rollback to end",
        lambda: world.incident(number)["state"] in ("recovered", "escalated", "not_recovered"),
        timeout=30,
    )
    assert ended
    assert world.incident(number)["state"] == "recovered"
    assert world.reverts() == 1
    assert sum(1 for r in world.replicas if (r.readiness() or {}).get("role") == "leader") == 1
    assert world.probes_after(restarted, leader.name)
    figures.record(SECTION, "a replica led after PostgreSQL came back (s)", round(led, 1))
    assert "no longer leading: acting stops" in world.replicas[0].log_text()


def test_the_leaders_path_to_postgresql_frozen_a_follower_takes_over_and_the_old_leader_is_fenced(
    world: World,
) -> None:
    """r0's proxy freezes during the recovery watch (the followers still reach PostgreSQL):
    r0 stops within its lease, a follower leads within lease + poll and finishes the
    rollback; thawed, r0 follows and nothing it held back is journaled."""
    r0 = world.replicas[0]
    number = world.rollback_recovering()
    world.proxies[0].freeze()
    frozen = time.monotonic()
    try:
        others = world.replicas[1:]

        def follower_leads() -> Any:
            return next((r for r in others if (r.readiness() or {}).get("role") == "leader"), None)

        leader = wait_until("a follower to lead", follower_leads, timeout=LEASE + POLL + SLACK)
        took = time.monotonic() - frozen
        seen = r0.request("GET", "/readyz", "viewer").json()
        assert seen["role"] == "follower"
        assert seen["lease_error"], seen  # its renewals end on their deadline: none hangs
        answered = time.monotonic()
        assert webhook(r0, 1) == 503  # the write ends on its deadline too
        assert time.monotonic() - answered < 8
        assert webhook(leader, 2) == 200
        assert not world.probes_after(frozen + LEASE + 0.5, "r0")
        state = wait_until(
            "the rollback to end",
            lambda: world.incident(number)["state"] in ("recovered", "escalated"),
            timeout=30,
        )
        assert state
        assert world.incident(number)["state"] == "recovered"
    finally:
        world.proxies[0].thaw()
    with psycopg.connect(world.url) as db:
        before = db.execute(
            "SELECT (SELECT count(*) FROM steps), (SELECT count(*) FROM evidence),"
            " (SELECT count(*) FROM decisions), (SELECT epoch FROM leadership)"
        ).fetchone()
    wait_until("r0 to see it follows", lambda: (r0.readiness() or {}).get("lease_error") is None)
    time.sleep(LEASE)  # what r0 held back would be journaled by now
    with psycopg.connect(world.url) as db:
        after = db.execute(
            "SELECT (SELECT count(*) FROM steps), (SELECT count(*) FROM evidence),"
            " (SELECT count(*) FROM decisions), (SELECT epoch FROM leadership)"
        ).fetchone()
    assert after == before
    assert (r0.readiness() or {}).get("role") == "follower"
    assert (leader.readiness() or {}).get("role") == "leader"
    assert world.reverts() == 1
    figures.record(SECTION, "a follower led after the leader's path froze (s)", round(took, 1))
