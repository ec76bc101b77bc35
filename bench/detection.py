"""Detection latency: fault → rollback decision → rollback executed, against the floor.

The world, all on 127.0.0.1: N demo apps (one per service, each deployed from
its own git working copy with a bare remote), a real Prometheus scraping them
every second, and rollbackd's daemon in this process exactly as ``rollbackd
run`` wires it (the HTTP API under uvicorn, the cycle every ``poll_interval``
through APScheduler with ``max_instances=1``), polling every second, with one
error-rate rule whose ``for`` is 5s (quick) or 10s (full).

Each service first runs v1 long enough to be the last known good version. Then,
staggered by 2.3 s so that the faults fall at different phases of the scrape
and poll ticks, each service gets a bad release: CI announces v2 through
``POST /api/v1/deploys``, and the app reloads v2, whose ``app.toml`` makes half
of the requests fail. That reload is the fault instant.

Measured per service: fault → decision (the engine's rollback decision, the
wall time the daemon announces it, the ``Decided`` event), and decision → rollback executed (the
``execute`` step's ``finished_at`` in the journal: the git revert is done and
pushed, before ``after_rollback``). The floor is ``for`` + scrape interval +
poll interval: after the fault, the next scrape sees it (up to one scrape
interval), the next cycle evaluates it (up to one poll interval), and it must
hold for ``for``. The rule uses ``irate`` over the last two scrapes so that the
condition becomes true at the first scrape after the fault (a ``rate`` window
would add its own ramp, which the floor does not count).

Side by side, the same faults go through what a user would otherwise wire up:
a Prometheus alerting rule with the same expression and ``for`` (rule
evaluation every second), Alertmanager 0.25 with its default ``group_wait`` of
30s (``group_interval`` 5m, ``repeat_interval`` 4h, every alert its own group,
which is the most favourable grouping), and a webhook receiver run here.
Flagger's reference is a constant: its documented example analysis (interval
1m x threshold 10) needs 10 minutes of failed checks before it rolls back.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import secrets
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from tests.support.alertmanager import Alertmanager
from tests.support.processes import DemoApp, Prometheus, free_port

from bench.common import Report, arguments, median, wait_until, workdir

SCRAPE_SECONDS = 1.0
POLL_SECONDS = 1.0
STAGGER_SECONDS = 2.3
KNOWN_GOOD_SECONDS = 3
ERROR_RATE = 0.5
TRAFFIC_RPS = 40.0
GROUP_WAIT_SECONDS = 30.0
FLAGGER_SECONDS = 60.0 * 10
FLAGGER_SOURCE = "Flagger docs example settings: analysis interval 1m x threshold 10"
ERROR_RATIO = (
    'sum by (service) (irate(http_requests_total{code=~"5.."}[5s]))'
    " / sum by (service) (irate(http_requests_total[5s]))"
    " or (sum by (service) (irate(http_requests_total[5s])) > 0) * 0"
)
"""0, not "no data", before the demo app's first 5xx creates its series."""
GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@rollbackd.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@rollbackd.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
}


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV, "HOME": str(repo.parent)},
        check=False,
        timeout=60,
    )
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


class AlertingPrometheus(Prometheus):
    """The test helper's Prometheus, plus an ``alerting`` section naming our Alertmanager."""

    def __init__(self, workdir: Path, alertmanager: str, **kwargs: Any) -> None:
        super().__init__(workdir, **kwargs)
        self.alertmanager = alertmanager

    def config(self) -> dict[str, Any]:
        config = super().config()
        config["alerting"] = {
            "alertmanagers": [{"static_configs": [{"targets": [self.alertmanager]}]}]
        }
        return config


@dataclass
class Received:
    """Webhook deliveries from Alertmanager: first firing time per service."""

    first: dict[str, float] = field(default_factory=dict)
    deliveries: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def webhook_receiver(received: Received) -> ThreadingHTTPServer:
    """A tiny HTTP server recording when each service's alert first arrives, firing."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            now = time.time()
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(min(length, 10 << 20))
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                document = json.loads(body)
                with received.lock:
                    received.deliveries += 1
                    for alert in document.get("alerts", []):
                        service = alert.get("labels", {}).get("service")
                        if alert.get("status") == "firing" and service:
                            received.first.setdefault(service, now)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, name="webhook", daemon=True).start()
    return server


@dataclass
class Service:
    name: str
    clone: Path
    app: DemoApp
    v2: str = ""
    deploy_at: float = 0.0
    fault_at: float = 0.0


@dataclass
class Seen:
    """What the daemon did, as it happened (wall times, unix seconds)."""

    cycles: list[float] = field(default_factory=list)
    first_pending: dict[str, float] = field(default_factory=dict)
    first_firing: dict[str, float] = field(default_factory=dict)
    decision: dict[str, float] = field(default_factory=dict)
    decision_cycle: dict[str, float] = field(default_factory=dict)
    action: dict[str, str] = field(default_factory=dict)
    prometheus_firing: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def make_repository(root: Path, name: str) -> Path:
    remote, clone = root / f"{name}-remote.git", root / name
    subprocess.run(
        ["git", "init", "-q", "--bare", "-b", "main", str(remote)],
        check=True,
        env={**os.environ, **GIT_ENV},
        timeout=60,
    )
    git(root, "clone", "-q", str(remote), str(clone))
    git(clone, "checkout", "-q", "-b", "main")
    (clone / "app.toml").write_text('version = "v1"\n')
    git(clone, "add", "app.toml")
    git(clone, "commit", "-q", "-m", "v1: a healthy release")
    git(clone, "tag", "v1")
    git(clone, "push", "-q", "origin", "main", "v1")
    return clone


def config_text(
    root: Path, services: list[Service], prometheus_url: str, port: int, ci_token: str
) -> str:
    # after_rollback does not restart the app: the fault must persist for the Alertmanager
    # path, which never notifies an alert that resolved within group_wait.
    tables = [
        f'[[services]]\nname = "{service.name}"\nrepo = "{service.clone}"\n'
        f'strategy = "revert"\nafter_rollback = [["true"]]\ncommand_timeout = "30s"\n'
        for service in services
    ]
    digest = hashlib.sha256(ci_token.encode()).hexdigest()
    return f"""
[daemon]
listen = "127.0.0.1:{port}"
state_dir = "{root / "state"}"
poll_interval = "{POLL_SECONDS:g}s"
rules = ["rules/*.toml"]
log_format = "json"

[prometheus]
url = "{prometheus_url}"
timeout = "2s"

{"".join(tables)}
[policy.high]
action = "rollback"
approver = "admin"

[deploys]
version_metric = "app_build_info"
known_good_after = "{KNOWN_GOOD_SECONDS}s"
attribution_window = "10m"

[recovery]
window = "3s"
timeout = "30s"

[[tokens]]
name = "ci"
sha256 = "{digest}"
role = "ci"
"""


def rule_text(for_seconds: int) -> str:
    return f"""
[[rules]]
name = "error-rate"
trigger = "high_error_rate"
query = '{ERROR_RATIO}'
condition = "> 0.05"
for = "{for_seconds}s"
description = "More than 5% of requests fail (irate over the last two scrapes)."
"""


def alert_rule(for_seconds: int) -> str:
    return json.dumps(
        {
            "groups": [
                {
                    "name": "bench",
                    "interval": f"{SCRAPE_SECONDS:g}s",
                    "rules": [
                        {
                            "alert": "HighErrorRate",
                            "expr": f"({ERROR_RATIO}) > 0.05",
                            "for": f"{for_seconds}s",
                            "labels": {"severity": "high", "rollbackd_trigger": "high_error_rate"},
                        }
                    ],
                }
            ]
        }
    )


@contextlib.contextmanager
def daemon_in_process(config_path: Path, seen: Seen, log_path: Path) -> Iterator[Any]:
    """rollbackd in its runtime, as ``rollbackd run`` starts it, minus signals."""
    from rollbackd.assembly import notifier_for, open_journal  # noqa: PLC0415
    from rollbackd.core.model import FindingState  # noqa: PLC0415
    from rollbackd.events import CycleDone, Decided, Event  # noqa: PLC0415
    from rollbackd.loader import load  # noqa: PLC0415
    from rollbackd.logs import configure  # noqa: PLC0415
    from rollbackd.runtime import Runtime  # noqa: PLC0415

    log_file = log_path.open("a", encoding="utf-8")
    configure("json", stream=log_file)
    loaded = load(config_path)
    journal = open_journal(loaded.config)
    runtime = Runtime(
        loaded,
        journal,
        config_path,
        log_level="error",
        notifier=notifier_for(loaded.config, journal),
    )

    def on_cycle() -> None:
        report = runtime.state.last_report
        if report is None:
            return
        moment = report.time.timestamp()
        with seen.lock:
            if not seen.cycles or seen.cycles[-1] != moment:
                seen.cycles.append(moment)
            for finding in report.notable:
                if finding.state in (FindingState.PENDING, FindingState.FIRING):
                    seen.first_pending.setdefault(finding.service, moment)
                if finding.state is FindingState.FIRING:
                    seen.first_firing.setdefault(finding.service, moment)

    def on_decision(decision: Any) -> None:
        now = time.time()
        with seen.lock:
            if decision.service not in seen.decision:
                seen.decision[decision.service] = now
                seen.decision_cycle[decision.service] = decision.time.timestamp()
                seen.action[decision.service] = decision.action.value

    def on_event(event: Event) -> None:
        if isinstance(event, CycleDone):
            on_cycle()
        elif isinstance(event, Decided):
            on_decision(event.decision)

    runtime.events.subscribe(on_event)
    runtime.start()
    try:
        yield runtime
    finally:
        runtime.stop()
        log_file.close()


def watch_prometheus_alerts(url: str, seen: Seen, stop: threading.Event) -> None:
    """When Prometheus itself first reports each service's alert firing (polled every 200 ms)."""
    with httpx.Client(timeout=2.0) as client:
        while not stop.wait(0.2):
            try:
                alerts = client.get(f"{url}/api/v1/alerts").json()["data"]["alerts"]
            except (httpx.HTTPError, ValueError, KeyError):
                continue
            now = time.time()
            with seen.lock:
                for alert in alerts:
                    service = alert.get("labels", {}).get("service")
                    if alert.get("state") == "firing" and service:
                        seen.prometheus_firing.setdefault(service, now)


def gap(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else end - start


def journal_steps(path: Path) -> dict[str, dict[str, tuple[float, float | None]]]:
    """Per service, each step's (started, finished) in unix seconds, from the journal."""
    out: dict[str, dict[str, tuple[float, float | None]]] = {}
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT i.service, s.name, s.started_at, s.finished_at FROM steps s"
            " JOIN incidents i ON i.id = s.incident_id ORDER BY s.id"
        ).fetchall()
    for service, name, started, finished in rows:
        begin = datetime.fromisoformat(started).timestamp()
        end = datetime.fromisoformat(finished).timestamp() if finished else None
        out.setdefault(service, {}).setdefault(name, (begin, end))
    return out


def main() -> None:  # noqa: PLR0915 -- one benchmark reads as one story
    args = arguments(__doc__.splitlines()[0] if __doc__ else "detection")
    quick: bool = args.quick
    for_seconds = 5 if quick else 10
    count = 3 if quick else 5
    floor = for_seconds + SCRAPE_SECONDS + POLL_SECONDS
    report = Report("detection", quick)
    report.title(
        f"{count} services, scrape {SCRAPE_SECONDS:g}s, poll {POLL_SECONDS:g}s, for {for_seconds}s;"
        f" floor = for + scrape + poll = {floor:g}s"
    )
    report.fact("for_seconds", for_seconds)
    report.fact("scrape_seconds", SCRAPE_SECONDS)
    report.fact("poll_seconds", POLL_SECONDS)
    report.fact("floor_seconds", floor)
    report.fact("services", count)
    report.fact("rule_query", ERROR_RATIO)
    report.fact("error_rate_of_bad_release", ERROR_RATE)
    report.fact("alertmanager_group_wait_seconds", GROUP_WAIT_SECONDS)
    seen = Seen()
    received = Received()
    with contextlib.ExitStack() as stack:
        root = stack.enter_context(workdir("detection", args.keep))
        services: list[Service] = []
        for index in range(count):
            name = f"web{index + 1}"
            clone = make_repository(root, name)
            app = DemoApp(
                root / f"{name}-run",
                service=name,
                traffic=TRAFFIC_RPS,
                app_dir=clone,
                log_dir=root / f"{name}-logs",
            )
            services.append(Service(name, clone, app))
        for service in services:
            service.app.start()
            stack.callback(service.app.stop)
        receiver = webhook_receiver(received)
        stack.callback(receiver.shutdown)
        am = Alertmanager(
            root / "alertmanager",
            f"http://127.0.0.1:{receiver.server_address[1]}",
            token=secrets.token_urlsafe(16),
            group_wait=f"{GROUP_WAIT_SECONDS:g}s",
            group_interval="5m",
            repeat_interval="4h",
        ).start()
        stack.callback(am.stop)
        prometheus = AlertingPrometheus(
            root / "prometheus",
            f"127.0.0.1:{am.port}",
            targets=[("demo", s.app.target, {}) for s in services],
            scrape_interval=f"{SCRAPE_SECONDS:g}s",
            evaluation_interval=f"{SCRAPE_SECONDS:g}s",
            rule_files=[alert_rule(for_seconds)],
        ).start()
        stack.callback(prometheus.stop)
        prometheus.wait_for(
            ERROR_RATIO,
            lambda result: len([r for r in result if r["value"][1] != "NaN"]) == count,
            timeout=30,
        )
        (root / "rules").mkdir()
        (root / "rules" / "error-rate.toml").write_text(rule_text(for_seconds))
        ci_token = secrets.token_urlsafe(16)
        port = free_port()
        config_path = root / "config.toml"
        config_path.write_text(config_text(root, services, prometheus.url, port, ci_token))
        daemon = stack.enter_context(daemon_in_process(config_path, seen, root / "rollbackd.log"))
        stop_watch = threading.Event()
        watcher = threading.Thread(
            target=watch_prometheus_alerts, args=(prometheus.url, seen, stop_watch), daemon=True
        )
        watcher.start()
        stack.callback(stop_watch.set)
        wait_until(
            lambda: all(daemon.state.history.last_good(s.name)[0] == "v1" for s in services),
            KNOWN_GOOD_SECONDS + 30,
            "v1 did not become the last known good version",
            every=0.2,
        )
        for service in services:
            (service.clone / "app.toml").write_text(f'version = "v2"\nerror_rate = {ERROR_RATE}\n')
            git(service.clone, "add", "app.toml")
            git(service.clone, "commit", "-q", "-m", "v2: the bad release")
            git(service.clone, "push", "-q", "origin", "main")
            service.v2 = git(service.clone, "rev-parse", "HEAD")
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=10.0) as client:
            first = time.monotonic()
            for index, service in enumerate(services):
                delay = first + index * STAGGER_SECONDS - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                response = client.post(
                    f"{base}/api/v1/deploys",
                    json={"service": service.name, "version": "v2", "ref": service.v2},
                    headers={"Authorization": f"Bearer {ci_token}"},
                )
                response.raise_for_status()
                service.deploy_at = time.time()
                time.sleep(0.2)
                before = time.time()
                client.post(f"{service.app.url}/-/reload").raise_for_status()
                service.fault_at = (before + time.time()) / 2
        report.say("  faults injected; waiting for decisions, executions and webhooks")
        last_fault = max(s.fault_at for s in services)
        journal_path = root / "state" / "journal.sqlite3"

        def executed() -> bool:
            steps = journal_steps(journal_path)
            return all(
                steps.get(s.name, {}).get("execute", (0.0, None))[1] is not None for s in services
            )

        with contextlib.suppress(TimeoutError):
            wait_until(
                executed,
                last_fault + for_seconds + 30 - time.time(),
                "not every rollback executed",
                every=0.2,
            )
        with contextlib.suppress(TimeoutError):
            wait_until(
                lambda: len(received.first) >= count,
                last_fault + for_seconds + GROUP_WAIT_SECONDS + 30 - time.time(),
                "not every webhook arrived",
                every=0.2,
            )
        steps = journal_steps(journal_path)
    detections, executions, pendings, firings, webhooks, prom_firing = [], [], [], [], [], []
    queued: list[float] = []
    checklist: list[float] = []
    for service in services:
        decided = seen.decision.get(service.name)
        execute = steps.get(service.name, {}).get("execute")
        pending = seen.first_pending.get(service.name)
        firing = seen.first_firing.get(service.name)
        webhook = received.first.get(service.name)
        prom = seen.prometheus_firing.get(service.name)
        line = [f"  {service.name}: fault at +{service.fault_at - services[0].fault_at:.2f}s"]
        if pending is not None:
            pendings.append(pending - service.fault_at)
            line.append(f"first pending cycle {pending - service.fault_at:.2f}s")
        if firing is not None and pending is not None:
            firings.append(firing - pending)
            line.append(f"pending→firing {firing - pending:.2f}s")
        if decided is not None:
            detections.append(decided - service.fault_at)
            line.append(f"decision {decided - service.fault_at:.2f}s ({seen.action[service.name]})")
        if decided is not None and execute is not None and execute[1] is not None:
            executions.append(execute[1] - decided)
            line.append(f"execute done +{execute[1] - decided:.3f}s")
            document = steps.get(service.name, {}).get("document")
            if document is not None:
                queued.append(document[0] - decided)
                checklist.append(execute[1] - document[0])
        if webhook is not None:
            webhooks.append(webhook - service.fault_at)
            line.append(f"alertmanager webhook {webhook - service.fault_at:.2f}s")
        if prom is not None:
            prom_firing.append(prom - service.fault_at)
        report.say(", ".join(line))
        order = ["document", "notify", "verify_target", "migration_gate", "backup", "execute"]
        own = steps.get(service.name, {})
        parts = [
            f"{name} {(own[name][1] or own[name][0]) - own[name][0]:.3f}s"
            for name in order
            if name in own and own[name][1] is not None
        ]
        if parts:
            report.say(f"    checklist: {', '.join(parts)}")
        execute_done = execute[1] if execute is not None else None
        report.fact(
            service.name,
            {
                "fault_to_first_pending_cycle": gap(service.fault_at, pending),
                "pending_to_firing": gap(pending, firing),
                "fault_to_decision": gap(service.fault_at, decided),
                "decision_to_execute_done": gap(decided, execute_done),
                "fault_to_prometheus_firing": gap(service.fault_at, prom),
                "fault_to_webhook": gap(service.fault_at, webhook),
                "action": seen.action.get(service.name),
                "steps": {k: [v[0], v[1]] for k, v in own.items()},
            },
        )
    n = f"{len(detections)} of {count}"
    detection = median(detections)
    worst = max(detections) if detections else None
    report.figure(
        "fault → first pending cycle (median)",
        median(pendings),
        "s",
        note="scrape + poll phase + query",
    )
    report.figure("pending → firing (median)", median(firings), "s", note=f"for = {for_seconds}s")
    report.figure(
        "fault → decision (median)", detection, "s", 1.1 * floor, note=f"{n}; floor {floor:g}s"
    )
    report.figure("fault → decision (worst)", worst, "s", 1.1 * floor, note=n)
    report.figure(
        "detection / floor (median)", None if detection is None else detection / floor, "x", 1.1
    )
    report.figure("detection / floor (worst)", None if worst is None else worst / floor, "x", 1.1)
    report.figure(
        "decision → execute done (median)",
        median(executions),
        "s",
        1.0,
        note="git revert done and pushed, before after_rollback",
    )
    report.figure(
        "decision → execute done (worst)", max(executions) if executions else None, "s", 1.0
    )
    report.figure(
        "  decision → checklist starts (worst)",
        max(queued) if queued else None,
        "s",
        note="waiting for a free rollback worker (Incidents.worker)",
    )
    report.figure(
        "  checklist start → execute done (worst)",
        max(checklist) if checklist else None,
        "s",
        note="document, notify, verify_target, migration_gate, backup, execute",
    )
    am_floor = floor + GROUP_WAIT_SECONDS
    webhook_median = median(webhooks)
    report.figure(
        "alertmanager: fault → prometheus firing (median)",
        median(prom_firing),
        "s",
        note="polled every 200ms",
    )
    report.figure(
        "alertmanager: fault → webhook (median)",
        webhook_median,
        "s",
        note=f"{len(webhooks)} of {count}; group_wait {GROUP_WAIT_SECONDS:g}s (default);"
        f" its floor {am_floor:g}s",
    )
    report.figure(
        "alertmanager path / rollbackd detection",
        None if webhook_median is None or not detection else webhook_median / detection,
        "x",
        note="how many times longer the alert path takes (to the webhook, before any action)",
    )
    intervals = [b - a for a, b in itertools.pairwise(seen.cycles)]
    short = sum(1 for i in intervals if i < POLL_SECONDS)
    slipped = sum(1 for f in firings if f >= for_seconds + POLL_SECONDS / 2)
    report.fact(
        "cycle_intervals",
        {
            "count": len(intervals),
            "min": min(intervals, default=None),
            "median": median(intervals),
            "max": max(intervals, default=None),
            "shorter_than_poll": short,
        },
    )
    report.figure(
        "pending → firing took an extra poll",
        slipped,
        f"of {len(firings)}",
        note=f"cycle clock jitter: {short} of {len(intervals)} cycle intervals shorter than"
        f" {POLL_SECONDS:g}s (min {min(intervals, default=0):.4f}s)",
    )
    report.figure(
        "flagger reference: interval 1m x threshold 10", FLAGGER_SECONDS, "s", note=FLAGGER_SOURCE
    )
    report.figure(
        "flagger reference / rollbackd detection",
        None if not detection else FLAGGER_SECONDS / detection,
        "x",
        note="a constant from the docs, not run here",
    )
    report.write()


if __name__ == "__main__":
    main()
