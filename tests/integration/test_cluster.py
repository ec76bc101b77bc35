"""Three `rollbackd run` replicas on one real PostgreSQL: one leader, failover, fencing.

Each replica has its own port, state directory and logs, and the same journal URL, rules,
service and git working copy (web, deployed from a clone of a bare remote, served by the
demo app). The lease is 2 s and cycles run every second. A rollback asked of a follower is
run by the leader; the leader killed (SIGKILL) right after its ``git revert`` ran, or
paused (SIGSTOP) right after journaling that it starts to, is replaced by a follower that
resumes the incident, and the remote gets exactly one revert. A paused leader let go on
(SIGCONT) finds another leads and does nothing more. /readyz of every replica, sampled
throughout, never shows two leaders.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_daemon_restart import (
    TOKENS,
    GitWorld,
    commit,
    delivery,
    git,
    git_world,
    wait_until,
)
from tests.support.fixtures import DemoAppFactory
from tests.support.postgres import PostgresServer
from tests.support.processes import RollbackdProcess, free_port

pytestmark = pytest.mark.integration

LEASE = 2.0
POLL = 1.0


class Replica(RollbackdProcess):
    """A replica of the cluster, with the failpoint it is given (if any)."""

    def __init__(self, name: str, config: Path, port: int, log_dir: Path, extra: dict[str, str]):
        super().__init__(config, port, log_dir, TOKENS)
        self.name = name
        self.extra = extra

    def env(self) -> dict[str, str]:
        return {**super().env(), **self.extra}

    def readiness(self) -> dict[str, Any] | None:
        try:
            body: dict[str, Any] = httpx.get(f"{self.url}/readyz", timeout=0.5).json()
        except httpx.HTTPError:
            return None  # killed, paused, or not started yet
        return body


@dataclass
class Cluster:
    world: GitWorld
    replicas: list[Replica]
    sweeps: list[list[tuple[str, str, int | None]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def leader(self) -> Replica | None:
        for replica in self.replicas:
            seen = replica.readiness()
            if seen is not None and seen["role"] == "leader":
                return replica
        return None

    def sample(self) -> None:
        """Sweep /readyz of every replica until stopped (the one-leader check)."""
        while not self._stop.wait(0.15):
            sweep = []
            for replica in self.replicas:
                seen = replica.readiness() if replica.alive() else None
                if seen is not None:
                    sweep.append((replica.name, seen["role"], seen["epoch"]))
            self.sweeps.append(sweep)

    def assert_one_leader_at_a_time(self) -> None:
        self._stop.set()
        holders: dict[int | None, set[str]] = {}
        for sweep in self.sweeps:
            leaders = [(name, epoch) for name, role, epoch in sweep if role == "leader"]
            assert len(leaders) <= 1, sweep
            for name, epoch in leaders:
                holders.setdefault(epoch, set()).add(name)
        assert all(len(names) == 1 for names in holders.values()), holders
        assert len(self.sweeps) >= 5  # sampled throughout (slowly on a busy machine)


@pytest.fixture
def cluster(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    demoapp_factory: DemoAppFactory,
    postgres_server: PostgresServer,
) -> Iterator[Cluster]:
    """web at v2 (bad) after v1; r0 leads (with the test's failpoint), then r1 and r2 follow."""
    failpoint: dict[str, str] = request.param
    world = git_world(tmp_path, demoapp_factory)
    url = postgres_server.create_database()
    base = world.config.read_text(encoding="utf-8")
    replicas = []
    for index in range(3):
        name, port = f"r{index}", free_port()
        text = base.replace(f"127.0.0.1:{world.port}", f"127.0.0.1:{port}").replace(
            str(tmp_path / "state"), str(tmp_path / f"state-{name}")
        )
        text += f'\n[journal]\nurl = "{url}"\n\n[cluster]\nreplica_name = "{name}"\n'
        text += f'lease = "{LEASE:g}s"\n'
        config = tmp_path / f"config-{name}.toml"
        config.write_text(text, encoding="utf-8")
        extra = failpoint if index == 0 else {}
        replicas.append(Replica(name, config, port, tmp_path / f"logs-{name}", extra))
    found = Cluster(world, replicas)
    try:
        replicas[0].start()
        wait_until("r0 to lead", lambda: found.leader() is replicas[0])
        with ThreadPoolExecutor(2) as starting:  # the followers start side by side
            list(starting.map(Replica.start, replicas[1:]))
        sampler = threading.Thread(target=found.sample, daemon=True)
        sampler.start()
        yield found
    finally:
        found._stop.set()
        for replica in replicas:
            replica.kill()


def deploy_v1_then_v2(cluster: Cluster) -> str:
    """v1 deployed (told to r1), then the bad v2 (told to r2); v1's commit."""
    world, (_, r1, r2) = cluster.world, cluster.replicas
    v1 = git(world.clone, "rev-parse", "HEAD")
    told = r1.request(
        "POST", "/api/v1/deploys", "ci", json={"service": "web", "version": "v1", "ref": v1}
    )
    assert told.status_code == 201, told.text
    v2 = commit(world.clone, 'version = "v2"\nerror_rate = 0.3\n', "v2: the bad release", "v2")
    httpx.post(f"{world.app_url}/-/reload", timeout=10).raise_for_status()
    told = r2.request(
        "POST", "/api/v1/deploys", "ci", json={"service": "web", "version": "v2", "ref": v2}
    )
    assert told.status_code == 201, told.text
    return v1


def ask_rollback_of_a_follower(cluster: Cluster, v1: str) -> int:
    """A senior admin asks r1 (a follower) to roll web back to v1: r1 journals it."""
    r1 = cluster.replicas[1]

    def asked() -> dict[str, Any] | None:
        response = r1.request(
            "POST", "/api/v1/services/web/rollback", "senior_admin", json={"to": "v1"}
        )
        return response.json() if response.status_code == 202 else None  # v2 not read yet

    incident = wait_until("r1 to take the rollback", asked, timeout=10)
    assert incident["target"] == v1
    return int(incident["id"])


def ended(replica: Replica, incident: int) -> str | None:
    got = replica.request("GET", f"/api/v1/incidents/{incident}", "viewer").json()
    state = str(got["state"])
    return state if state in ("recovered", "not_recovered", "escalated") else None


def steps(replica: Replica, incident: int) -> list[tuple[str, str | None]]:
    got = replica.request("GET", f"/api/v1/incidents/{incident}", "viewer").json()
    return [(s["name"], s["outcome"]) for s in got["steps"]]


def new_leader(cluster: Cluster) -> Replica:
    """The follower that takes over from r0, within the lease and a poll interval (and slack
    for a machine shared by tests)."""
    others = cluster.replicas[1:]

    def leading() -> Replica | None:
        return next((r for r in others if (r.readiness() or {}).get("role") == "leader"), None)

    found: Replica = wait_until("a follower to lead", leading, timeout=LEASE + POLL + 10)
    return found


@pytest.mark.parametrize("cluster", [{"ROLLBACKD_FAILPOINT": "worked:execute"}], indirect=True)
def test_the_leader_killed_after_its_revert_is_replaced_and_the_remote_gets_one_revert(
    cluster: Cluster,
) -> None:
    """Webhooks to any replica are journaled once; a rollback asked of a follower is run by
    the leader; SIGKILL after its git revert: a follower takes over, finds the revert done,
    and the incident recovers with one revert on the remote; never two leaders."""
    r0, r1, r2 = cluster.replicas
    answers = [
        r.request("POST", "/webhooks/alertmanager", "alertmanager", json=delivery(1)).json()
        for r in (r1, r2, r0)
    ]
    assert answers == [{"accepted": 1, "duplicates": 0}] + [{"accepted": 0, "duplicates": 1}] * 2
    v1 = deploy_v1_then_v2(cluster)
    incident = ask_rollback_of_a_follower(cluster, v1)

    wait_until("r0 to kill itself after the revert", lambda: not r0.alive(), timeout=30)
    assert cluster.world.reverts_on_remote() == 1
    leader = new_leader(cluster)
    assert wait_until("the rollback to end", lambda: ended(leader, incident), timeout=60) == (
        "recovered"
    )
    assert cluster.world.reverts_on_remote() == 1
    executed = [outcome for name, outcome in steps(leader, incident) if name == "execute"]
    assert executed == ["ok"]
    metrics = leader.request("GET", "/metrics", "viewer").text
    assert "rollbackd_leader 1.0" in metrics
    assert "rollbackd_leader_changes_total 1.0" in metrics
    page = r1.request("GET", "/", "viewer").text
    assert f"leader: <strong>{leader.name}</strong>" in page
    cluster.assert_one_leader_at_a_time()


@pytest.mark.parametrize(
    "cluster",
    [{"ROLLBACKD_FAILPOINT": "started:execute", "ROLLBACKD_FAILPOINT_SIGNAL": "STOP"}],
    indirect=True,
)
def test_a_paused_leader_let_go_on_after_its_lease_does_not_act(cluster: Cluster) -> None:
    """r0 pauses right after journaling that execute starts; a follower takes over and runs
    it once; SIGCONT: r0 finds it no longer leads, runs nothing, journals nothing more."""
    r0 = cluster.replicas[0]
    v1 = deploy_v1_then_v2(cluster)
    incident = ask_rollback_of_a_follower(cluster, v1)

    leader = new_leader(cluster)  # r0 paused itself: its lease ran out
    assert wait_until("the rollback to end", lambda: ended(leader, incident), timeout=60) == (
        "recovered"
    )
    assert cluster.world.reverts_on_remote() == 1
    journaled = steps(leader, incident)
    r0.signal(signal.SIGCONT)
    said = wait_until("r0 to follow", lambda: (r0.readiness() or {}).get("role") == "follower")
    assert said
    time.sleep(LEASE)  # what r0 would do, it would have done by now
    assert cluster.world.reverts_on_remote() == 1
    assert steps(leader, incident) == journaled
    assert [o for n, o in journaled if n == "execute"] == ["skipped", "ok"]
    assert "step left unrun: not the leader any more" in r0.log_text()
    cluster.assert_one_leader_at_a_time()
