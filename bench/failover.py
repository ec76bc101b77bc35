"""High availability: failover time, and webhook ingest with 3 replicas on PostgreSQL.

Three ``rollbackd run`` replicas share one real PostgreSQL (``initdb`` in a temporary
directory, ``fsync=off`` as in the tests: the figure is rollbackd's, not the disk's), with
a lease of 5 s and a cycle every second.

Failover: the leader (seen on /readyz) is SIGKILLed; the time until another replica ran
its first cycle as the leader (its ``rollbackd_evaluations_total`` grew, which only a
leader's cycle counts) is the failover time, target ≤ lease + one poll interval. Then the
killed replica is started again (a follower) before the next round. 7 rounds (quick: 3):
median and worst.

Ingest: the load generator of ``bench.ingest`` (one process per replica, so none shares
another's GIL) keeps 16 requests in flight in all, spread over the three replicas, for
30 s (quick: 5 s): Alertmanager payloads of 10 alerts each, journaled in PostgreSQL by
whichever replica gets them. Target ≥ 1,000 payloads/s and p99 ≤ 50 ms on 2 cores.
Afterwards every acknowledged payload must be in the journal.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import psycopg
from tests.support.postgres import PostgresServer
from tests.support.processes import free_port

from bench.common import (
    Report,
    arguments,
    child_env,
    cpu_seconds,
    median,
    percentile,
    stop,
    wait_until,
    workdir,
)
from bench.ingest import ALERTS_PER_PAYLOAD, RULES, TARGET_P99_MS, TARGET_RATE
from bench.ingest import config_text as ingest_config

LEASE = 5.0
POLL = 1.0
REPLICAS = 3
CONCURRENCY = 16


def config_text(root: Path, name: str, port: int, url: str, token: str) -> str:
    """bench/ingest's config, as replica ``name`` of a cluster on ``url``."""
    return ingest_config(
        root,
        port,
        token,
        state=f"state-{name}",
        daemon=f'poll_interval = "{POLL:g}s"',
        more=f'\n[journal]\nurl = "{url}"\n\n[cluster]\nreplica_name = "{name}"\n'
        f'lease = "{LEASE:g}s"\n',
    )


class Replica:
    """One ``rollbackd run`` of the cluster, started and killed at will."""

    def __init__(self, root: Path, name: str, url: str, token: str) -> None:
        self.root, self.name, self.token = root, name, token
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config = root / f"config-{name}.toml"
        self.config.write_text(config_text(root, name, self.port, url, token))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.root / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rollbackd", "run", "--config", str(self.config)],
            cwd=self.root,
            env=child_env(),
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        wait_until(lambda: self.readiness() is not None, 60, f"{self.name} did not answer")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is not None and self.alive():
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def readiness(self) -> dict[str, object] | None:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            body: dict[str, object] = httpx.get(f"{self.base}/readyz", timeout=1).json()
            return body
        return None

    def evaluations(self) -> float:
        with contextlib.suppress(httpx.HTTPError):
            text = httpx.get(f"{self.base}/metrics", timeout=1).text
            for line in text.splitlines():
                if line.startswith("rollbackd_evaluations_total "):
                    return float(line.split()[1])
        return -1.0


def leader_of(replicas: list[Replica]) -> Replica | None:
    for replica in replicas:
        if replica.alive() and (replica.readiness() or {}).get("role") == "leader":
            return replica
    return None


def failover_rounds(report: Report, replicas: list[Replica], rounds: int) -> None:
    """Kill the leader ``rounds`` times; the time to the first cycle of the next one."""
    times: list[float] = []
    for _ in range(rounds):
        wait_until(lambda: leader_of(replicas) is not None, 60, "no leader")
        leader = leader_of(replicas)
        assert leader is not None  # noqa: S101 -- waited for just above
        others = [r for r in replicas if r is not leader]
        before = {r.name: r.evaluations() for r in others}
        time.sleep(LEASE / 3)  # a renewal in between: the kill lands anywhere in a term
        killed = time.monotonic()
        leader.kill()
        took: float | None = None
        while took is None and time.monotonic() - killed < 4 * LEASE:
            for replica in others:
                if replica.evaluations() > before[replica.name]:
                    took = time.monotonic() - killed
                    break
            time.sleep(0.05)
        if took is None:
            report.note(f"no follower led within {4 * LEASE:g}s of a kill")
        else:
            times.append(took)
        leader.start()
    target = LEASE + POLL
    report.figure(
        "failover: leader killed → first cycle of the new one (median)",
        median(times),
        "s",
        target,
        note=f"lease {LEASE:g}s + poll {POLL:g}s; {len(times)} rounds",
    )
    report.figure(
        "failover (worst)", max(times) if times else None, "s", target, note=json.dumps(times)
    )
    report.fact("failover_seconds", times)


def deliveries(url: str) -> int:
    """Webhook deliveries in the journal."""
    with psycopg.connect(url) as db:
        row = db.execute("SELECT count(*) FROM deliveries").fetchone()
    return int(row[0]) if row else 0


def tree_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) of these processes and their children, as they run now."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    wanted = set(pids)
    wanted |= {pid for pid, parent in parents.items() if parent in wanted}
    return sum(cpu_seconds(pid) or 0.0 for pid in wanted)


def ingest(
    report: Report,
    root: Path,
    replicas: list[Replica],
    postgres: PostgresServer,
    url: str,
    seconds: float,
) -> None:
    """The load generator spread over the replicas; rate, latency, every ack journaled."""
    per_replica = [CONCURRENCY // REPLICAS + (i < CONCURRENCY % REPLICAS) for i in range(3)]
    journaled_before = deliveries(url)
    replica_pids = [r.process.pid for r in replicas if r.process is not None and r.alive()]
    server_pids = [postgres.pid] if postgres.pid is not None else []
    cpu_before = (tree_cpu(replica_pids), tree_cpu(server_pids))
    loads = []
    for index, (replica, concurrency) in enumerate(zip(replicas, per_replica, strict=True)):
        out = root / f"load-{replica.name}.json"
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.ingest",
                "--loadgen",
                "--url",
                f"{replica.base}/webhooks/alertmanager",
                "--token",
                replica.token,
                "--seconds",
                str(seconds),
                "--concurrency",
                str(concurrency),
                "--out",
                str(out),
                "--first-worker",
                str(sum(per_replica[:index])),  # fingerprints of its own: no replica waits
            ],
            env=child_env(),
            stdin=subprocess.DEVNULL,
        )
        loads.append((process, out))
    for process, _ in loads:
        try:
            process.wait(timeout=seconds + 90)
        except subprocess.TimeoutExpired:
            stop(process)
    cpu_after = (tree_cpu(replica_pids), tree_cpu(server_pids))
    results = [json.loads(out.read_text()) for _, out in loads if out.exists()]
    if len(results) != len(loads):
        report.note("a load generator wrote no results")
    latencies = [t for r in results for t in r["latencies"]]
    codes: Counter[str] = Counter()
    for r in results:
        codes.update(r["codes"])
    elapsed = max((r["elapsed"] for r in results), default=0.0)
    ok = len(latencies)
    p99 = percentile(latencies, 99)
    p50 = percentile(latencies, 50)
    report.figure(
        "ingest, 3 replicas: payloads/s (2xx)",
        ok / elapsed if elapsed else None,
        "/s",
        TARGET_RATE,
        "higher",
        note=f"{ok} in {elapsed:.1f}s, {CONCURRENCY} in flight over {REPLICAS} replicas",
    )
    report.figure("ingest, 3 replicas: p50 latency", None if p50 is None else p50 * 1000, "ms")
    for index, who in enumerate(("the replicas", "PostgreSQL")):
        spent = cpu_after[index] - cpu_before[index]
        report.figure(
            f"ingest, 3 replicas: CPU of {who} per payload",
            spent / ok * 1000 if ok else None,
            "ms",
            note=f"{spent:.1f} s of CPU in all, /proc/<pid>/stat",
        )
    report.figure(
        "ingest, 3 replicas: p99 latency",
        None if p99 is None else p99 * 1000,
        "ms",
        TARGET_P99_MS,
    )
    errors = sum(n for code, n in codes.items() if not code.startswith("2"))
    report.figure("ingest, 3 replicas: errors", errors, "", 0, note=json.dumps(dict(codes)))
    journaled = deliveries(url)
    report.figure(
        "ingest, 3 replicas: journaled - acknowledged",
        journaled - journaled_before - ok,
        "",
        0,
        "higher",
        note=f"{journaled - journaled_before} deliveries journaled, {ok} acknowledged,"
        f" {ALERTS_PER_PAYLOAD} alerts each",
    )


def main() -> None:
    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--seconds", type=float, help="ingest duration (default 30, quick 5)")
        parser.add_argument("--rounds", type=int, help="failover rounds (default 7, quick 3)")

    args = arguments(__doc__.splitlines()[0] if __doc__ else "failover", extra)
    seconds: float = args.seconds or (5.0 if args.quick else 30.0)
    rounds: int = args.rounds or (3 if args.quick else 7)
    report = Report("failover", args.quick)
    report.title(
        f"{REPLICAS} replicas on PostgreSQL, lease {LEASE:g}s, poll {POLL:g}s;"
        f" {rounds} failovers, then {seconds:g}s of ingest"
    )
    token = secrets.token_urlsafe(24)
    with contextlib.ExitStack() as stack:
        root = stack.enter_context(workdir("failover", args.keep))
        postgres = stack.enter_context(PostgresServer())
        url = postgres.create_database()
        (root / "rules").mkdir()
        (root / "rules" / "rules.toml").write_text(RULES)
        replicas = [Replica(root, f"r{i}", url, token) for i in range(REPLICAS)]
        for replica in replicas:
            stack.callback(replica.kill)
            replica.start()
        failover_rounds(report, replicas, rounds)
        wait_until(lambda: leader_of(replicas) is not None, 60, "no leader")
        ingest(report, root, replicas, postgres, url, seconds)
    report.write()


if __name__ == "__main__":
    main()
