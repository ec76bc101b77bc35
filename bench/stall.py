"""The API while Prometheus hangs: deploys, webhooks and vetoes answered at once.

``rollbackd run`` watches ten services through a health probe and twelve
PromQL rules. Prometheus is a stub on loopback that first answers empty
vectors at once (so that v1 of every service becomes known good, v2 is
deployed and a high alert puts each in *awaiting approval*), then stops
answering: every query hangs until its timeout. Meanwhile a client sends, one
after the other, deploy events (of an eleventh service), Alertmanager webhooks
(for a service nobody watches) and, every tenth request, a veto of one of the
ten waiting incidents, for 30 s (quick: 10 s).

Reported: p50/p99/max answer time of each kind and of all together (target:
p99 <= 50 ms), answers that were not 2xx, the evaluation cycles the daemon
completed while Prometheus hung (each ends within its budget, with the
PromQL rules inconclusive), and whether ``/readyz`` still said ready with the
cycles complete.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from tests.reliability.support import TOKENS, Received, Reply, StubServer, tokens_toml
from tests.reliability.test_crash_safety import alert, delivery
from tests.support.processes import free_port

from bench.common import Report, arguments, percentile, start_rollbackd, wait_until, workdir

SERVICES = tuple(f"s{index}" for index in range(10))
DEPLOYED = "deployed"
"""The service whose deploy events are sent during the hang (a deploy of a watched service
would supersede its waiting incident)."""
RULES = 12
TARGET_P99_MS = 50.0
PROMETHEUS_TIMEOUT = "2s"
EMPTY = json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}}).encode()


def config_text(root: Path, port: int, health: str, prometheus: str) -> str:
    services = "".join(
        f'[[services]]\nname = "{name}"\nhealth_url = "{health}/health"\n'
        'executor = "command"\ncommand = ["true"]\n'
        for name in (*SERVICES, DEPLOYED)
    )
    return f"""
[daemon]
listen = "127.0.0.1:{port}"
state_dir = "{root / "state"}"
poll_interval = "1s"
rules = ["rules/*.toml"]
log_format = "json"

[prometheus]
url = "{prometheus}"
timeout = "{PROMETHEUS_TIMEOUT}"

{services}
[deploys]
known_good_after = "4s"

{tokens_toml()}
"""


def rules_text() -> str:
    probe = (
        '[[rules]]\nname = "outage-health"\ntrigger = "outage"\nprobe = "health"\n'
        'condition = "< 1"\n'
    )
    query = "sum by (service) (rate(http_requests_total[1m]))"
    promql = "".join(
        f'\n[[rules]]\nname = "q{index}"\ntrigger = "high_error_rate"\n'
        f"query = '{query}'\ncondition = \"> 0.5\"\n"
        for index in range(RULES)
    )
    return probe + promql


class Client:
    """Requests to the daemon with the role's token; each answer's time, by kind."""

    def __init__(self, base: str) -> None:
        self.http = httpx.Client(base_url=base, timeout=30)
        self.times: dict[str, list[float]] = defaultdict(list)
        self.failed: dict[str, int] = defaultdict(int)

    def send(self, kind: str, method: str, path: str, role: str, body: Any = None) -> int:
        began = time.perf_counter()
        answer = self.http.request(
            method, path, json=body, headers={"Authorization": f"Bearer {TOKENS[role]}"}
        )
        self.times[kind].append(time.perf_counter() - began)
        if not 200 <= answer.status_code < 300:
            self.failed[f"{kind} {answer.status_code}"] += 1
        return answer.status_code

    def json(self, path: str) -> Any:
        answer = self.http.get(path, headers={"Authorization": f"Bearer {TOKENS['viewer']}"})
        answer.raise_for_status()
        return answer.json()


def webhook(sequence: int, labels: dict[str, str], starts: datetime) -> dict[str, Any]:
    """An Alertmanager v4 delivery of one firing alert, as the reliability suite sends them."""
    return delivery([alert(f"{sequence:016x}", labels, starts)])


def awaiting_approval(client: Client) -> list[int]:
    """v1 of every service runs clean, v2 follows with a high alert: the incidents waiting."""
    for service in SERVICES:
        client.send("setup", "POST", "/api/v1/deploys", "ci", {"service": service, "version": "v1"})

    def known_good() -> bool:
        listed = client.json("/api/v1/services")
        return all(s["last_good_version"] == "v1" for s in listed if s["name"] in SERVICES)

    wait_until(known_good, 60, "v1 of every service did not become known good")
    for service in SERVICES:
        client.send("setup", "POST", "/api/v1/deploys", "ci", {"service": service, "version": "v2"})
    starts = datetime.now(UTC) + timedelta(seconds=1)
    for index, service in enumerate(SERVICES):
        labels = {"alertname": "Errors", "service": service, "rollbackd_trigger": "high_error_rate"}
        client.send("setup", "POST", "/webhooks/alertmanager", "alertmanager",
                    webhook(index, labels, starts))  # fmt: skip
    waiting: list[int] = []

    def all_waiting() -> bool:
        incidents = client.json("/api/v1/incidents?limit=1000")
        waiting[:] = [i["id"] for i in incidents if i["state"] == "awaiting_approval"]
        return len(waiting) == len(SERVICES)

    wait_until(all_waiting, 60, "not every service got a request awaiting approval")
    return waiting


def cycles_done(client: Client) -> float:
    text = client.http.get("/metrics").text
    for line in text.splitlines():
        if line.startswith("rollbackd_cycle_duration_seconds_count "):
            return float(line.split()[1])
    return 0.0


def main() -> None:  # noqa: PLR0915 -- one benchmark reads as one story
    args = arguments(__doc__.splitlines()[0] if __doc__ else "stall")
    seconds = 10.0 if args.quick else 30.0
    report = Report("stall", args.quick)
    report.title(
        f"{len(SERVICES)} services, {RULES} PromQL rules, Prometheus hanging for {seconds:g}s"
    )
    hanging = threading.Event()

    def prometheus(_request: Received) -> Reply:
        if hanging.is_set():
            return Reply(200, EMPTY, delay=3600)
        return Reply(200, EMPTY)

    with contextlib.ExitStack() as stack:
        root = stack.enter_context(workdir("stall", args.keep))
        health = StubServer(lambda _request: Reply(200, b"ok", "text/plain")).start()
        stack.callback(health.stop)
        stub = StubServer(prometheus).start()
        stack.callback(stub.stop)
        (root / "rules").mkdir()
        (root / "rules" / "rules.toml").write_text(rules_text())
        port = free_port()
        config = root / "config.toml"
        config.write_text(config_text(root, port, health.url, stub.url))
        daemon = start_rollbackd(root, config, stack)
        client = Client(f"http://127.0.0.1:{port}")
        stack.callback(client.http.close)

        def ready() -> bool:
            if daemon.poll() is not None:
                raise RuntimeError(f"rollbackd exited {daemon.returncode}; see {root}")
            with contextlib.suppress(httpx.HTTPError):
                return client.http.get("/readyz").status_code == 200
            return False

        wait_until(ready, 60, "rollbackd run did not become ready")
        waiting = awaiting_approval(client)
        hanging.set()
        time.sleep(3)  # every cycle from here on waits on Prometheus
        cycles_before = cycles_done(client)
        began = time.monotonic()
        sequence, vetoes = 0, list(waiting)
        while time.monotonic() - began < seconds:
            sequence += 1
            if sequence % 10 == 0 and vetoes:
                client.send(
                    "veto", "POST", f"/api/v1/incidents/{vetoes.pop()}/veto", "senior_admin"
                )
            elif sequence % 2:
                version = {"service": DEPLOYED, "version": f"v{sequence}"}
                client.send("deploy event", "POST", "/api/v1/deploys", "ci", version)
            else:
                labels = {"alertname": "Elsewhere", "service": "not-watched"}
                body = webhook(10_000 + sequence, labels, datetime.now(UTC))
                client.send("webhook", "POST", "/webhooks/alertmanager", "alertmanager", body)
            time.sleep(0.02)
        hung_for = time.monotonic() - began
        cycles = cycles_done(client) - cycles_before
        readyz = client.http.get("/readyz").json()
        queries = sum(1 for r in stub.received if "/api/v1/query" in r.path)
    everything = [t for kind, times in client.times.items() if kind != "setup" for t in times]
    for kind in ("deploy event", "webhook", "veto"):
        times = client.times.get(kind, [])
        p50, p99 = percentile(times, 50), percentile(times, 99)
        report.figure(f"{kind}: p50 answer", None if p50 is None else p50 * 1000, "ms")
        report.figure(
            f"{kind}: p99 answer",
            None if p99 is None else p99 * 1000,
            "ms",
            TARGET_P99_MS,
            note=f"{len(times)} requests",
        )
    p50, p99 = percentile(everything, 50), percentile(everything, 99)
    report.figure("all: p50 answer", None if p50 is None else p50 * 1000, "ms")
    report.figure(
        "all: p99 answer",
        None if p99 is None else p99 * 1000,
        "ms",
        TARGET_P99_MS,
        note=f"{len(everything)} requests while every query hung",
    )
    report.figure("all: max answer", max(everything) * 1000 if everything else None, "ms")
    report.figure("answers not 2xx", sum(client.failed.values()), "", 0,
                  note=json.dumps(client.failed))  # fmt: skip
    report.figure(
        "cycles completed while Prometheus hung",
        cycles,
        "",
        hung_for / 5,
        "higher",
        note=f"in {hung_for:.0f}s, poll 1s, Prometheus timeout {PROMETHEUS_TIMEOUT};"
        f" {queries} queries left hanging",
    )
    report.fact("readyz_while_hanging", readyz)
    report.say(f"  /readyz while hanging: ready={readyz.get('ready')} loop={readyz.get('loop')!r}")
    report.write()


if __name__ == "__main__":
    main()
