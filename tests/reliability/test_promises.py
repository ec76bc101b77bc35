"""Promises that broke under attack, against a real ``rollbackd run``.

- A veto is obeyed: approve and veto sent at the same instant have one winner
  (the other gets 409), and what happens follows the winner.
- One rollbackd acts on a state directory: a second ``run`` and a local
  ``rollback`` beside a running daemon are refused, naming the holder.
- A hanging Prometheus delays neither the start (READY) nor the API: deploy
  events and webhooks are answered at once while every query hangs.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.reliability import figures
from tests.reliability.support import (
    Reply,
    StubServer,
    daemon_process,
    tokens_toml,
    wait_until,
)
from tests.reliability.test_crash_safety import PROBE_RULE, alert, delivery
from tests.support.processes import RollbackdProcess, free_port

pytestmark = pytest.mark.integration

SECTION = "promises"
SERVICES = tuple(f"s{index}" for index in range(6))


def config_text(root: Path, port: int, health_url: str, prometheus_url: str) -> str:
    services = "".join(
        f'[[services]]\nname = "{name}"\nhealth_url = "{health_url}/health"\n'
        f'executor = "command"\ncommand = ["touch", "{root / f"rolled-back-{name}"}"]\n'
        'command_timeout = "10s"\n'
        for name in SERVICES
    )
    return f"""
[daemon]
listen = "127.0.0.1:{port}"
state_dir = "{root / "state"}"
poll_interval = "1s"
rules = ["rules/*.toml"]
log_format = "json"

[prometheus]
url = "{prometheus_url}"
timeout = "1s"

{services}
[deploys]
known_good_after = "4s"  # v2 is seen failing before it could be known good

[recovery]
window = "1s"
timeout = "20s"

{tokens_toml()}
"""


@dataclass
class World:
    root: Path
    config: Path
    daemon: RollbackdProcess
    health: StubServer


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """A daemon watching six services through a passing health endpoint (Prometheus: none)."""
    health = StubServer(lambda _request: Reply(200, b"ok")).start()
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "health.toml").write_text(PROBE_RULE, encoding="utf-8")
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        config_text(tmp_path, port, health.url, "http://127.0.0.1:9"), encoding="utf-8"
    )
    daemon = daemon_process(config, port, tmp_path / "logs")
    try:
        daemon.start()
        yield World(tmp_path, config, daemon, health)
    finally:
        daemon.stop(timeout=10)
        health.stop()


def alerts_for(starts: datetime, ends: datetime | None = None) -> list[dict[str, Any]]:
    """The high error-rate alert of every service, firing from ``starts`` (resolved at ``ends``)."""
    return [
        alert(
            f"feed{index:012x}",
            {"alertname": "Errors", "service": s, "rollbackd_trigger": "high_error_rate"},
            starts,
            ends,
        )
        for index, s in enumerate(SERVICES)
    ]


def awaiting_approval(world: World) -> tuple[dict[str, int], datetime]:
    """v1 of every service runs clean, then v2 and a high alert: a request each, and its start."""
    daemon = world.daemon
    for service in SERVICES:
        answer = daemon.request(
            "POST", "/api/v1/deploys", "ci", json={"service": service, "version": "v1"}
        )
        assert answer.status_code == 201, answer.text

    def all_good() -> bool:
        listed = daemon.request("GET", "/api/v1/services", "viewer").json()
        return all(s["last_good_version"] == "v1" for s in listed)

    wait_until("v1 of every service to be known good", all_good, timeout=30)
    for service in SERVICES:
        answer = daemon.request(
            "POST", "/api/v1/deploys", "ci", json={"service": service, "version": "v2"}
        )
        assert answer.status_code == 201, answer.text
    starts = datetime.now(UTC) + timedelta(seconds=1)
    alerts = delivery(alerts_for(starts))
    posted = daemon.request("POST", "/webhooks/alertmanager", "alertmanager", json=alerts)
    assert posted.status_code == 200, posted.text

    def requests() -> dict[str, int] | None:
        waiting = {
            i["service"]: i["id"] for i in daemon.incidents() if i["state"] == "awaiting_approval"
        }
        return waiting if len(waiting) == len(SERVICES) else None

    found: dict[str, int] = wait_until("a request awaiting approval per service", requests, 30)
    return found, starts


def at_once(daemon: RollbackdProcess, number: int) -> dict[str, httpx.Response]:
    """Approve and veto incident ``number``, released together by a barrier; both answers."""
    barrier = threading.Barrier(2)
    answers: dict[str, httpx.Response] = {}

    def send(verb: str) -> None:
        barrier.wait()
        answers[verb] = daemon.request("POST", f"/api/v1/incidents/{number}/{verb}", "senior_admin")

    threads = [threading.Thread(target=send, args=(verb,)) for verb in ("approve", "veto")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return answers


def test_approve_and_veto_at_the_same_instant_have_one_winner(world: World) -> None:
    """Six times: both sent at once, one 200 and one 409; a won veto rolls back nothing."""
    daemon = world.daemon
    outcomes: dict[str, str] = {}
    waiting, starts = awaiting_approval(world)
    for service, number in waiting.items():
        answers = at_once(daemon, number)
        codes = sorted(answer.status_code for answer in answers.values())
        assert codes == [200, 409], {v: (a.status_code, a.text) for v, a in answers.items()}
        winner = next(verb for verb, answer in answers.items() if answer.status_code == 200)
        outcomes[service] = winner
        if winner == "veto":
            detail = daemon.request("GET", f"/api/v1/incidents/{number}", "viewer").json()
            assert detail["state"] == "vetoed"
    resolved = delivery(alerts_for(starts, ends=datetime.now(UTC)))
    answer = daemon.request("POST", "/webhooks/alertmanager", "alertmanager", json=resolved)
    assert answer.status_code == 200, answer.text
    for service, winner in outcomes.items():

        def settled(service: str = service, winner: str = winner) -> bool:
            [record] = [i for i in daemon.incidents() if i["service"] == service]
            finished = {"resolved"} if winner == "veto" else {"recovered"}
            return record["state"] in finished

        wait_until(f"{service} to follow its winner ({winner})", settled, timeout=30)
        rolled_back = (world.root / f"rolled-back-{service}").exists()
        assert rolled_back == (winner == "approve"), (service, winner)
    figures.record(SECTION, "approve and veto at once: pairs sent", len(outcomes))
    figures.record(
        SECTION,
        "approve and veto at once: winners",
        ", ".join(f"{w} {list(outcomes.values()).count(w)}" for w in ("approve", "veto")),
    )


def test_a_second_daemon_and_a_local_rollback_are_refused_beside_a_running_one(
    world: World,
) -> None:
    """Same state directory, another port: a second run and a local rollback exit 1, naming it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLBACKD_")}
    env["ROLLBACKD_DAEMON__LISTEN"] = f"127.0.0.1:{free_port()}"  # not where the daemon listens
    second = subprocess.run(
        [sys.executable, "-m", "rollbackd", "run", "--config", str(world.config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert second.returncode == 1, second.stderr
    holder = f"pid {world.daemon.pid}: rollbackd run"
    assert holder in second.stderr
    local = subprocess.run(
        [
            sys.executable,
            "-m",
            "rollbackd",
            "rollback",
            "s0",
            "--to",
            "v0",
            "--yes",
            "--config",
            str(world.config),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert local.returncode == 1, local.stdout + local.stderr
    assert holder in local.stderr
    assert not (world.root / "rolled-back-s0").exists()
    figures.record(SECTION, "second daemon and local rollback beside one", "refused, holder named")


def test_a_hanging_prometheus_delays_neither_the_start_nor_the_api(tmp_path: Path) -> None:
    """Every query hangs: READY comes in time, and deploys and webhooks are answered at once."""
    health = StubServer(lambda _request: Reply(200, b"ok")).start()
    hanging = StubServer(lambda _request: Reply(200, b"{}", delay=600)).start()
    (tmp_path / "rules").mkdir()
    queries = "query = 'sum by (service) (rate(http_requests_total[1m]))'\n"
    (tmp_path / "rules" / "rules.toml").write_text(
        PROBE_RULE
        + "".join(
            f'\n[[rules]]\nname = "q{index}"\ntrigger = "high_error_rate"\n{queries}'
            'condition = "> 0.5"\n'
            for index in range(12)
        ),
        encoding="utf-8",
    )
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(config_text(tmp_path, port, health.url, hanging.url), encoding="utf-8")
    config.write_text(config.read_text().replace('timeout = "1s"', 'timeout = "3s"'))
    daemon = daemon_process(config, port, tmp_path / "logs")
    started = time.monotonic()
    try:
        daemon.start()  # returns once /readyz answers 200
        ready_after = time.monotonic() - started
        latencies: list[float] = []
        for index in range(40):
            deploy = {"service": "s1", "version": f"v{index}"}
            labels = {"alertname": "X", "service": "s2"}
            webhook = delivery([alert(f"ab{index:014x}", labels, datetime.now(UTC))])
            for path, role, body in (
                ("/api/v1/deploys", "ci", deploy),
                ("/webhooks/alertmanager", "alertmanager", webhook),
            ):
                begun = time.monotonic()
                answer = daemon.request("POST", path, role, json=body)
                latencies.append(time.monotonic() - begun)
                assert answer.status_code in (200, 201), answer.text
            time.sleep(0.05)
        readyz = httpx.get(f"{daemon.url}/readyz", timeout=10).json()
    finally:
        daemon.stop(timeout=20)
        hanging.stop()
        health.stop()
    p50 = statistics.median(latencies)
    p99 = sorted(latencies)[int(len(latencies) * 0.99) - 1]
    figures.record(SECTION, "hanging Prometheus: ready after (s)", round(ready_after, 1))
    figures.record(
        SECTION,
        "hanging Prometheus: API answers (p50/p99 ms)",
        f"{p50 * 1000:.0f}/{p99 * 1000:.0f}",
    )
    assert ready_after < 60, ready_after
    assert p99 < 1.0, sorted(latencies)[-5:]
    assert readyz["ready"] is True and readyz["loop"] == "cycles complete", readyz
    assert {f"q{index}" for index in range(12)} <= set(readyz["degraded"]), readyz


def shift_journal(journal: Path, by: timedelta) -> int:
    """Move every instant the journal holds by ``by``, as if that much time had passed; count."""
    moved = 0
    with contextlib.closing(sqlite3.connect(journal)) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            columns = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
            for column in columns:
                rows = db.execute(f"SELECT rowid, {column} FROM {table}").fetchall()  # noqa: S608 -- our own schema's names
                for rowid, value in rows:
                    try:
                        instant = datetime.fromisoformat(value)
                    except (TypeError, ValueError):
                        continue
                    db.execute(
                        f"UPDATE {table} SET {column} = ? WHERE rowid = ?",  # noqa: S608
                        ((instant + by).isoformat(), rowid),
                    )
                    moved += 1
        db.commit()
    return moved


def test_a_rollback_interrupted_hours_before_a_restart_resumes_and_blocks_nothing(
    world: World,
) -> None:
    """Killed mid-rollback, down for three hours: it resumes once, ends, and frees the service."""
    daemon = world.daemon
    for version in ("v1", "v2"):
        answer = daemon.request(
            "POST", "/api/v1/deploys", "ci", json={"service": "s0", "version": version}
        )
        assert answer.status_code == 201, answer.text
    daemon.stop(timeout=10)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLBACKD_")}
    env["ROLLBACKD_FAILPOINT"] = "started:recovery"
    argv = [sys.executable, "-m", "rollbackd", "rollback", "s0", "--to", "v1", "--yes"]
    killed = subprocess.run(
        [*argv, "--config", str(world.config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert killed.returncode == -9, killed.stdout + killed.stderr
    marker = world.root / "rolled-back-s0"
    assert marker.exists()
    marker.unlink()
    moved = shift_journal(world.root / "state" / "journal.sqlite3", timedelta(hours=-3))
    daemon.start()

    def ended() -> str | None:
        [record] = daemon.incidents()
        return record["state"] if record["closed"] else None

    assert wait_until("the interrupted rollback to end", ended, timeout=40) == "recovered"
    assert not marker.exists(), "the rollback's command ran a second time"
    again = daemon.request("POST", "/api/v1/services/s0/rollback", "admin", json={"to": "v2"})
    assert again.status_code == 202, again.text
    figures.record(
        SECTION, "rollback interrupted 3h before restart", f"resumed, {moved} instants moved"
    )
