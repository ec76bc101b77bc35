"""``rollbackd demo``: the whole loop on this machine, with nothing set up beforehand.

In a temporary directory: the bundled demo app under git with a bare remote,
v1 deployed and healthy; a real Prometheus scraping it (or, without
Prometheus, probe-based rules, said plainly); rollbackd's daemon with a demo
config (short ``for`` and recovery windows); then a bad deploy v2, announced
through the deploy API. The terminal tells the story as it happens, one
timestamped line per event, and ends with the incident report.

Scenarios: ``rollback`` (the default: rolled back at once, recovery proven),
``approval`` (high severity waits for a person, approved through the API)
and ``migration`` (v2 added a migration nobody declared compatible: no
rollback, the database role is asked).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from rollbackd.core.model import Decision, FindingState
from rollbackd.errors import RollbackdError
from rollbackd.events import Decided, Event, Finished, Opened, StepDone
from rollbackd.journal import IncidentState

if TYPE_CHECKING:
    from rollbackd.runtime import Runtime

SCENARIOS = ("rollback", "approval", "migration")
PROMETHEUS = "prometheus"
ERROR_RATIO = (
    'sum by (service) (rate(http_requests_total{code=~"5.."}[10s]))'
    " / sum by (service) (rate(http_requests_total[10s]))"
    " or (sum by (service) (rate(http_requests_total[10s])) > 0) * 0"
)
"""The shipped error-rate rule with a 10s window: 0, not 'no data', before the first 5xx."""
P95 = (
    "histogram_quantile(0.95, sum by (service, le) "
    "(rate(http_request_duration_seconds_bucket[10s])))"
)
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "demo",
    "GIT_AUTHOR_EMAIL": "demo@rollbackd.invalid",
    "GIT_COMMITTER_NAME": "demo",
    "GIT_COMMITTER_EMAIL": "demo@rollbackd.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
}


class DemoFailed(Exception):  # noqa: N818 -- names the outcome
    """Something the demo needs did not work; the message says what to do."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _now() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S")


@dataclass
class Story:
    """One timestamped line per event, as it happens."""

    echo: Callable[[str], None]
    told: set[str] = field(default_factory=set)

    def __call__(self, text: str, once: str | None = None) -> None:
        if once is not None:
            if once in self.told:
                return
            self.told.add(once)
        self.echo(f"{_now()}  {text}")


class Supervisor:
    """Runs the demo app and restarts it when it exits, as systemd would."""

    def __init__(self, root: Path, app_dir: Path, port: int) -> None:
        self.pidfile = root / "app.pid"
        self.log = root / "app.log"
        self.argv = [
            sys.executable, "-m", "rollbackd.demoapp", "--port", str(port),
            "--service", "web", "--app-dir", str(app_dir), "--traffic", "40",
        ]  # fmt: skip
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.stopping = threading.Event()
        self.restarts = 0
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)

    def start(self) -> None:
        self._spawn()
        self._thread.start()
        self.wait_healthy()

    def _spawn(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(  # noqa: S603 -- our own interpreter, fixed argv
                self.argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL
            )
        self.pidfile.write_text(str(self.process.pid))

    def _watch(self) -> None:
        while not self.stopping.is_set():
            process = self.process
            if process is not None and process.poll() is not None and not self.stopping.is_set():
                self.restarts += 1
                self._spawn()
            self.stopping.wait(0.2)

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise DemoFailed(f"the demo app did not start; its log: {self.log}")

    def stop(self) -> None:
        self.stopping.set()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


class PrometheusProcess:
    """Debian's Prometheus on a free port, scraping the demo app every second."""

    def __init__(self, root: Path, target: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.root = root / "prometheus"
        self.root.mkdir()
        (self.root / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: demo\n    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, binary: str) -> None:
        with (self.root / "prometheus.log").open("wb") as out:
            self.process = subprocess.Popen(  # noqa: S603 -- a fixed argv, no shell
                [
                    binary,
                    f"--config.file={self.root / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.root / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise DemoFailed(f"Prometheus did not start; its log: {self.root / 'prometheus.log'}")

    def has_data(self) -> bool:
        try:
            response = httpx.get(
                f"{self.url}/api/v1/query", params={"query": ERROR_RATIO}, timeout=2
            )
            result = response.json()["data"]["result"]
        except (httpx.HTTPError, ValueError, KeyError):
            return False
        return bool(result) and result[0]["value"][1] not in ("NaN",)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()


def git(repo: Path, *args: str) -> str:
    """Run git with a fixed identity; the arguments are ours, never user input."""
    result = subprocess.run(  # noqa: S603 -- git with our own fixed arguments
        ["git", "-C", str(repo), *args],  # noqa: S607 -- git from PATH, as users run it
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_IDENTITY},
        check=False,
        timeout=60,
    )
    if result.returncode != 0:
        raise DemoFailed(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def _rules(with_prometheus: bool) -> str:
    if not with_prometheus:
        return """
[[rules]]
name = "critical-path-probe"
trigger = "critical_business_function"
probe = "critical_path"
condition = "< 1"
for = "3s"
description = "The home page must answer 200 within 200ms."
"""
    return f"""
[[rules]]
name = "error-rate"
trigger = "high_error_rate"
query = '{ERROR_RATIO}'
condition = "> 0.05"
for = "5s"
description = "More than 5% of requests fail (the playbook's High Error Rates)."

[[rules]]
name = "latency-regression"
trigger = "performance_degradation"
query = '{P95}'
condition = "> +50%"
baseline_window = "20s"
min_change = 0.05
for = "5s"
description = "p95 latency more than 50% above its value before the deploy."

[[rules]]
name = "outage-health"
trigger = "outage"
probe = "health"
condition = "< 1"
for = "3s"
"""


def _config(
    root: Path, app_url: str, prometheus_url: str | None, scenario: str, tokens: Mapping[str, str]
) -> str:
    reload = (
        f'["{sys.executable}", "-c", "import os, signal; '
        f"os.kill(int(open('{root / 'app.pid'}').read()), signal.SIGTERM)\"]"
    )
    wait = (
        f'["{sys.executable}", "-c", "import time, urllib.request as u\\n'
        "for _ in range(100):\\n"
        f"    try: u.urlopen('{app_url}/health', timeout=1); break\\n"
        '    except Exception: time.sleep(0.2)"]'
    )
    policy = (
        '[policy.high]\naction = "request_approval"\ndeadline = "10m"\napprover = "senior_admin"\n'
        if scenario == "approval"
        else '[policy.high]\naction = "rollback"\napprover = "admin"\n'
    )
    prometheus = (
        f'[prometheus]\nurl = "{prometheus_url}"\ntimeout = "2s"\n'
        if prometheus_url
        else '[prometheus]\nurl = "http://127.0.0.1:9"\ntimeout = "1s"\n'
    )
    token_tables = "".join(
        f'[[tokens]]\nname = "{name}"\nsha256 = "{hashlib.sha256(value.encode()).hexdigest()}"\n'
        f'role = "{name}"\n'
        for name, value in tokens.items()
    )
    return f"""
[daemon]
listen = "127.0.0.1:{_free_port()}"
state_dir = "{root / "state"}"
poll_interval = "1s"
rules = ["rules/*.toml"]
status_page_public = true
log_format = "json"
{prometheus}
[[services]]
name = "web"
health_url = "{app_url}/health"
repo = "{root / "web"}"
strategy = "revert"
after_rollback = [{reload}, {wait}]
command_timeout = "60s"
[[services.probes]]
name = "critical_path"
url = "{app_url}/"
latency_budget = "200ms"
timeout = "2s"
{policy}
[deploys]
version_metric = "app_build_info"
known_good_after = "8s"
attribution_window = "10m"
[recovery]
window = "10s"
timeout = "90s"
latency_tolerance = 0.5
{token_tables}
"""


def run_demo(scenario: str, keep: bool, echo: Callable[[str], None]) -> int:
    """Run one scenario; 0 when it ended the way the scenario shows, 1 otherwise."""
    from rollbackd.loader import load  # noqa: PLC0415 -- the demo needs the full stack
    from rollbackd.logs import configure  # noqa: PLC0415
    from rollbackd.report import render_report  # noqa: PLC0415

    story = Story(echo)
    root = Path(tempfile.mkdtemp(prefix="rollbackd-demo-"))
    cleanup: list[Callable[[], None]] = []
    try:
        story(f"scenario {scenario!r} in {root}")
        clone = _repository(root)
        port = _free_port()
        app = Supervisor(root, clone, port)
        app.start()
        cleanup.append(app.stop)
        story(
            f"v1 deployed from git ({git(clone, 'rev-parse', '--short', 'HEAD')}); "
            f"the demo app answers at {app.url}"
        )
        prometheus = _prometheus(root, port, story, cleanup)
        tokens = {name: secrets.token_urlsafe(24) for name in ("admin", "ci", "senior_admin")}
        (root / "rules").mkdir()
        (root / "rules" / "demo.toml").write_text(_rules(prometheus is not None))
        config_path = root / "config.toml"
        config_path.write_text(
            _config(root, app.url, prometheus.url if prometheus else None, scenario, tokens)
        )
        configure("json", stream=(root / "rollbackd.log").open("a", encoding="utf-8"))
        loaded = load(config_path)
        daemon, base = _start_daemon(loaded, cleanup)
        story(f"rollbackd watches 'web'; status page: {base}/")
        if prometheus is not None:
            _wait(prometheus.has_data, 40, "Prometheus has no data from the app")
        time.sleep(10)  # v1 runs clean long enough to become the last known good version
        story("v1 ran clean: it is the last known good version")
        sha = _bad_release(clone, scenario)
        os.kill(int((root / "app.pid").read_text()), signal.SIGTERM)
        app.wait_healthy()
        response = httpx.post(
            f"{base}/api/v1/deploys",
            json={"service": "web", "version": "v2", "ref": sha},
            headers={"Authorization": f"Bearer {tokens['ci']}"},
            timeout=10,
        )
        response.raise_for_status()
        story(
            "deploy: v2 is out (about 20% of requests fail, responses 250ms slower); "
            "CI announced it through POST /api/v1/deploys"
        )
        return _narrate(daemon, scenario, story, base, tokens, render_report)
    except DemoFailed as exc:
        story(f"the demo could not continue: {exc}")
        return 1
    finally:
        for stop in reversed(cleanup):
            stop()
        if keep:
            echo(f"kept everything in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _prometheus(
    root: Path, port: int, story: Story, cleanup: list[Callable[[], None]]
) -> PrometheusProcess | None:
    """Debian's Prometheus scraping the app, or None (and why) when it is not installed."""
    binary = shutil.which(PROMETHEUS) or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )
    if binary is None:
        story(
            "Prometheus is not installed (sudo apt-get install prometheus): falling back "
            "to probe-based rules, which only see slowness and outages"
        )
        return None
    prometheus = PrometheusProcess(root, f"127.0.0.1:{port}")
    cleanup.append(prometheus.stop)
    prometheus.start(binary)
    story(f"Prometheus scrapes the app every second ({prometheus.url})")
    return prometheus


def _repository(root: Path) -> Path:
    """A bare remote and a working copy with v1 committed, tagged and pushed."""
    remote, clone = root / "remote.git", root / "web"
    subprocess.run(  # noqa: S603 -- git with fixed arguments
        ["git", "init", "-q", "--bare", "-b", "main", str(remote)],  # noqa: S607 -- PATH git
        check=True,
        env={**os.environ, **GIT_IDENTITY},
    )
    git(root, "clone", "-q", str(remote), str(clone))
    git(clone, "checkout", "-q", "-b", "main")
    (clone / "app.toml").write_text('version = "v1"\n')
    git(clone, "add", "app.toml")
    git(clone, "commit", "-q", "-m", "v1: a healthy release")
    git(clone, "tag", "v1")
    git(clone, "push", "-q", "origin", "main", "v1")
    return clone


def _bad_release(clone: Path, scenario: str) -> str:
    """Commit and push v2 (and, for the migration scenario, an undeclared migration)."""
    (clone / "app.toml").write_text('version = "v2"\nerror_rate = 0.2\nlatency = 0.25\n')
    git(clone, "add", "app.toml")
    if scenario == "migration":
        (clone / "migrations").mkdir()
        (clone / "migrations" / "0002_drop_nickname.sql").write_text(
            "ALTER TABLE users DROP COLUMN nickname;\n"
        )
        git(clone, "add", "migrations")
    git(clone, "commit", "-q", "-m", "v2: the bad release")
    git(clone, "push", "-q", "origin", "main")
    return git(clone, "rev-parse", "HEAD")


def _start_daemon(loaded: Any, cleanup: list[Callable[[], None]]) -> tuple[Runtime, str]:
    """The daemon as `rollbackd run` starts it (its runtime: scheduler, server, systemd)."""
    from rollbackd.assembly import notifier_for, open_journal  # noqa: PLC0415
    from rollbackd.runtime import Runtime  # noqa: PLC0415 -- only the demo and run serve

    journal = open_journal(loaded.config)
    runtime = Runtime(
        loaded,
        journal,
        loaded.config_path,
        log_level="error",
        notifier=notifier_for(loaded.config, journal),
    )
    try:
        runtime.start()
    except RollbackdError as exc:
        raise DemoFailed(f"the daemon did not start: {exc}") from None
    cleanup.append(runtime.stop)
    return runtime, runtime.url


def _wait(check: Callable[[], bool], timeout: float, failure: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise DemoFailed(failure)


def _narrate(
    daemon: Runtime,
    scenario: str,
    story: Story,
    base: str,
    tokens: Mapping[str, str],
    render_report: Callable[..., str],
) -> int:
    events: list[Event] = []
    lock = threading.Lock()

    def collect(event: Event) -> None:
        with lock:
            events.append(event)

    daemon.events.subscribe(collect)
    incident: int | None = None
    final: str | None = None
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and final is None:
        report = daemon.state.last_report
        for finding in report.notable if report else ():
            if finding.service != "web":
                continue
            if finding.state is FindingState.PENDING:
                story(
                    f"first pending finding: {finding.rule}: {finding.reason}",
                    once=f"p{finding.rule}",
                )
            if finding.state is FindingState.FIRING:
                story(f"firing: {finding.rule}: {finding.reason}", once=f"f{finding.rule}")
        with lock:
            batch, events[:] = list(events), []
        for event in batch:
            if isinstance(event, Decided):
                decision = event.decision
                story(f"severity {decision.severity.value}: {_severity_reason(daemon, decision)}")
                story(
                    f"policy: {decision.proposed.value.replace('_', ' ')}; decision: "
                    f"{decision.action.value.replace('_', ' ')}"
                    + (f" (guards: {', '.join(decision.guards)})" if decision.guards else "")
                )
            elif isinstance(event, Opened):
                incident = event.incident
                story(f"incident {incident} opened: {event.state.value.replace('_', ' ')}")
                if event.state is IncidentState.AWAITING_APPROVAL:
                    story(
                        f"approval requested from senior_admin (deadline 10m); approving "
                        f"through the API: POST {base}/api/v1/incidents/{incident}/approve"
                    )
                    response = httpx.post(
                        f"{base}/api/v1/incidents/{incident}/approve",
                        headers={"Authorization": f"Bearer {tokens['senior_admin']}"},
                        timeout=10,
                    )
                    story(f"approved: HTTP {response.status_code}, the rollback starts")
                if event.state in (IncidentState.ESCALATED, IncidentState.RECORDED):
                    final = event.state.value
            elif isinstance(event, StepDone):
                story(f"checklist: {event.step}: {event.outcome}")
            elif isinstance(event, Finished):
                final = event.state.value
        time.sleep(0.25)
    if incident is None:
        story("no incident was opened in time")
        return 1
    record = daemon.journal.incident(incident)
    if record is not None:
        story(f"verdict: {record.summary or record.state.value}")
    echo_report = render_report(record, "markdown") if record is not None else ""
    story.echo("")
    story.echo(echo_report)
    expected = "escalated" if scenario == "migration" else "recovered"
    return 0 if record is not None and record.state.value == expected else 1


def _severity_reason(daemon: Runtime, decision: Decision) -> str:
    report = daemon.state.last_report
    for finding in report.notable if report else ():
        if finding.service == decision.service and finding.rule in decision.rules:
            return str(finding.severity_reason)
    return decision.reason
