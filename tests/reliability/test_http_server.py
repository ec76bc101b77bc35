"""The HTTP server under abuse: connection floods, slow clients and bodies Python chokes on.

One ``rollbackd run`` serves the whole module, started the way systemd's
default would leave it: at most 1,024 open files (RLIMIT_NOFILE, set before it
starts). It watches a healthy app (a stub answering its health probe) through
an outage rule on that probe, so a probe failing for the daemon's own lack of
descriptors would roll a healthy deploy back; its command executor would do so.

- Connection flood: 1,100 idle TCP connections are opened at once and held
  (each one the server closes is opened again) for several cycles. Meanwhile
  /healthz answers, a webhook is journaled and cycles keep running; afterwards
  no incident was opened, the deploy is still current, and the daemon never
  came near its descriptor limit.
- Slow clients: headers a byte a second (slowloris), a body stopped half-way,
  and a connection that sends nothing are each closed, the first two with a
  408 JSON error, while the client is still sending (or waiting).
- Bodies: 50,000-deep JSON, a 5,000-digit number, a lone surrogate in an alert
  label and invalid UTF-8 are each a 4xx JSON error naming what is wrong, and
  journal nothing; a deploy dated 2099 is 422 and the current deploy stays.
"""

from __future__ import annotations

import contextlib
import json
import resource
import selectors
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from rollbackd.journal import journal_path
from tests.reliability import figures
from tests.reliability.support import (
    TOKENS,
    Received,
    Reply,
    StubServer,
    daemon_process,
    tokens_toml,
    wait_until,
)
from tests.support.processes import LOOPBACK, RollbackdProcess, free_port

pytestmark = pytest.mark.integration

SECTION = "http server"
OPEN_FILES = 1024
"""The daemon's descriptor limit: systemd's default soft limit."""
FLOOD = 1100
HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
IDLE_TIMEOUT = 1.0
PROBE_RULE = """
[[rules]]
name = "outage-health"
trigger = "outage"
probe = "health"
condition = "< 1"
"""


def healthy(request: Received) -> Reply:
    return Reply(200, b'{"status": "ok"}')


def limit_open_files() -> None:
    """In the daemon's process before it starts: systemd's default limit on open files."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))


def config_text(root: Path, port: int, app: str, marker: Path) -> str:
    rolled_back = json.dumps(["/bin/sh", "-c", f'echo rolled back >> "{marker}"'])
    return f"""
[daemon]
listen = "127.0.0.1:{port}"
state_dir = "{root / "state"}"
poll_interval = "1s"
rules = ["rules/*.toml"]
log_format = "json"
header_timeout = "{HEADER_TIMEOUT:g}s"
body_timeout = "{BODY_TIMEOUT:g}s"
idle_timeout = "{IDLE_TIMEOUT:g}s"

[prometheus]
url = "http://127.0.0.1:9"
timeout = "1s"

[[services]]
name = "web"
health_url = "{app}/health"
executor = "command"
command = {rolled_back}

[deploys]
known_good_after = "1s"

[recovery]
window = "1s"
timeout = "20s"

{tokens_toml()}
"""


class Served:
    """The module's daemon, its healthy app, and where its rollback would leave a mark."""

    def __init__(self, daemon: RollbackdProcess, app: StubServer, marker: Path) -> None:
        self.daemon = daemon
        self.app = app
        self.marker = marker

    def post(self, path: str, role: str, body: bytes) -> httpx.Response:
        headers = {"Authorization": f"Bearer {TOKENS[role]}", "Content-Type": "application/json"}
        return httpx.post(self.daemon.url + path, content=body, headers=headers, timeout=30)

    def service(self) -> dict[str, Any]:
        response = self.daemon.request("GET", "/api/v1/services", "viewer")
        response.raise_for_status()
        [web] = response.json()
        return dict(web)

    def metric(self, name: str) -> float:
        """A sample of the daemon's /metrics (0 if absent), e.g. ``rollbackd_evaluations_total``."""
        text = httpx.get(self.daemon.url + "/metrics", timeout=30).text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return 0.0

    def deliveries(self) -> int:
        """Webhook deliveries in the journal (read-only, beside the running daemon)."""
        path = journal_path(self.daemon.config.parent / "state")
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return int(db.execute("SELECT count(*) FROM deliveries").fetchone()[0])

    def descriptors(self) -> int:
        """How many files the daemon has open now."""
        assert self.daemon.pid is not None
        return sum(1 for _ in Path(f"/proc/{self.daemon.pid}/fd").iterdir())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("http-server")
    app = StubServer(healthy).start()
    (root / "rules").mkdir()
    (root / "rules" / "health.toml").write_text(PROBE_RULE, encoding="utf-8")
    port = free_port()
    marker = root / "rolled-back"
    config = root / "config.toml"
    config.write_text(config_text(root, port, app.url, marker), encoding="utf-8")
    daemon = daemon_process(config, port, root / "logs")
    daemon.preexec = limit_open_files
    try:
        yield Served(daemon.start(), app, marker)
    finally:
        daemon.stop(timeout=10)
        app.stop()


@pytest.fixture
def many_files() -> Iterator[None]:
    """Let this process hold the flood's sockets, whatever its own soft limit is."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * FLOOD
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.fail(f"the flood needs {wanted} open files; this process may have {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class Flood:
    """``size`` idle connections to ``port``, each one the server closes opened again.

    An attacker's loop: connect, send nothing, reconnect when cut off (at most
    ``reopen_per_second``, so the flood does not take the machine's two cores).
    """

    def __init__(self, port: int, size: int, reopen_per_second: int = 500) -> None:
        self.port = port
        self.size = size
        self.reopen_per_second = reopen_per_second
        self.selector = selectors.DefaultSelector()
        self.opened = 0
        self.cut_off = 0
        self.refused = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._hold, name="flood", daemon=True)

    def _open(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if sock.connect_ex((LOOPBACK, self.port)) not in (0, 115):  # 115: EINPROGRESS
            self.refused += 1
            sock.close()
            return
        self.selector.register(sock, selectors.EVENT_READ)
        self.opened += 1

    def start(self) -> Flood:
        for _ in range(self.size):
            self._open()
        self.thread.start()
        return self

    def _hold(self) -> None:
        batch = max(1, self.reopen_per_second // 10)
        while not self.stopping.is_set():
            closed = 0
            for key, _ in self.selector.select(timeout=0.1)[:batch]:
                self.selector.unregister(key.fileobj)
                key.fileobj.close()  # type: ignore[union-attr]
                closed += 1
            self.cut_off += closed
            for _ in range(closed):
                self._open()
            self.stopping.wait(0.1)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.selector.close()


def delivery(service: str) -> bytes:
    """One firing alert of ``service``, as Alertmanager sends it."""
    alert = {
        "status": "firing",
        "labels": {"alertname": "Flooded", "service": service},
        "annotations": {},
        "startsAt": datetime.now(UTC).isoformat(),
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": "f100d000000000a1",
    }
    return json.dumps({"version": "4", "status": "firing", "alerts": [alert]}).encode()


def deploy(served: Served, version: str) -> None:
    body = json.dumps({"service": "web", "version": version}).encode()
    answer = served.post("/api/v1/deploys", "ci", body)
    assert answer.status_code == 201, answer.text


def test_a_connection_flood_does_not_starve_the_daemon_or_roll_back_a_healthy_app(
    served: Served, many_files: None
) -> None:
    """1,100 idle connections held against a 1,024-file daemon: it answers, journals a
    webhook, keeps evaluating, and leaves the healthy deploy alone."""
    deploy(served, "v1")
    wait_until(
        "v1 to be known good",
        lambda: served.service()["last_good_version"] == "v1",
        timeout=60,
    )
    deploy(served, "v2")
    incidents_before = len(served.daemon.incidents())
    deliveries_before = served.deliveries()
    evaluations_before = served.metric("rollbackd_evaluations_total")

    peak = served.descriptors()
    flood = Flood(served.daemon.port, FLOOD).start()
    try:
        # Held for at least three cycles (each probes the app) and five seconds.
        held_from = time.monotonic()
        answers: list[int] = []
        evaluations_during = evaluations_before
        while evaluations_during < evaluations_before + 3 or time.monotonic() - held_from < 5:
            assert time.monotonic() - held_from < 120, "cycles stopped under the flood"
            peak = max(peak, served.descriptors())
            answers.append(httpx.get(served.daemon.url + "/healthz", timeout=30).status_code)
            evaluations_during = served.metric("rollbackd_evaluations_total")
            time.sleep(0.2)
        webhook = served.post("/webhooks/alertmanager", "alertmanager", delivery("elsewhere"))
        peak = max(peak, served.descriptors())
    finally:
        flood.stop()

    assert answers and set(answers) == {200}, answers
    assert webhook.status_code == 200, webhook.text
    assert webhook.json() == {"accepted": 1, "duplicates": 0}
    assert served.deliveries() == deliveries_before + 1
    assert peak < OPEN_FILES, f"the daemon held {peak} of its {OPEN_FILES} files"
    wait_until(
        "a cycle after the flood",
        lambda: served.metric("rollbackd_evaluations_total") > evaluations_during,
        timeout=60,
    )
    assert served.service()["current_version"] == "v2"
    assert len(served.daemon.incidents()) == incidents_before, served.daemon.incidents()
    assert not served.marker.exists(), "the healthy deploy was rolled back"
    assert "Too many open files" not in served.daemon.log_text()
    evicted = served.metric('rollbackd_http_connections_dropped_total{reason="evicted"}')
    assert evicted > 0  # the flood was real: the server had to shed connections

    figures.record(SECTION, "daemon's open-files limit", OPEN_FILES)
    figures.record(SECTION, "flood: idle connections held", FLOOD)
    figures.record(SECTION, "flood: connections opened in all", flood.opened)
    figures.record(SECTION, "flood: connections the server cut off", flood.cut_off)
    figures.record(SECTION, "flood: most files the daemon held", peak)
    figures.record(SECTION, "flood: /healthz answers (all 200)", len(answers))
    figures.record(SECTION, "flood: cycles run", int(evaluations_during - evaluations_before))
    figures.record(SECTION, "flood: rollbacks of the healthy app", 0)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, port), timeout=30)
    sock.settimeout(30)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset ends it too)."""
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


def json_error(answer: bytes) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of one HTTP answer (Content-Length framed)."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower(), head
    document = json.loads(body)
    assert isinstance(document, dict), document
    return status, document


def test_a_client_sending_its_headers_a_byte_a_second_is_dropped(served: Served) -> None:
    """Slowloris: 408 and the connection closed while the client still had headers to send."""
    request = b"GET /healthz HTTP/1.1\r\nHost: rollbackd\r\nX-Slow: " + b"z" * 60 + b"\r\n\r\n"
    sent = 0
    sock = connect(served.daemon.port)
    stop = threading.Event()

    def trickle() -> None:
        nonlocal sent
        for index in range(len(request)):
            if stop.is_set():
                return
            try:
                sock.send(request[index : index + 1])
            except OSError:
                return
            sent += 1
            stop.wait(1.0)

    started = time.monotonic()
    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    answer = read_until_closed(sock)
    dropped_after = time.monotonic() - started
    stop.set()
    sender.join(timeout=5)
    sock.close()

    assert sent < len(request), "the server waited for the whole trickled request"
    status, body = json_error(answer)
    assert status == 408, answer
    assert "headers" in body["error"], body
    figures.record(SECTION, "slowloris: bytes sent before the drop", sent)
    figures.record(SECTION, "slowloris: dropped after (s)", round(dropped_after, 1))


def test_a_body_stopped_half_way_is_dropped_and_journals_nothing(served: Served) -> None:
    """A webhook whose body stops half-way: 408, connection closed, no delivery journaled."""
    before = served.deliveries()
    body = delivery("web")
    head = (
        "POST /webhooks/alertmanager HTTP/1.1\r\nHost: rollbackd\r\n"
        f"Authorization: Bearer {TOKENS['alertmanager']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock = connect(served.daemon.port)
    started = time.monotonic()
    sock.sendall(head + body[: len(body) // 2])
    answer = read_until_closed(sock)
    dropped_after = time.monotonic() - started
    sock.close()

    status, error = json_error(answer)
    assert status == 408, answer
    assert error["field"] == "body", error
    assert served.deliveries() == before
    figures.record(SECTION, "half-sent body: dropped after (s)", round(dropped_after, 1))


def test_a_connection_that_sends_nothing_is_closed(served: Served) -> None:
    """An idle connection is closed by the server, without an answer."""
    sock = connect(served.daemon.port)
    started = time.monotonic()
    assert read_until_closed(sock) == b""
    figures.record(
        SECTION, "idle connection: closed after (s)", round(time.monotonic() - started, 1)
    )
    sock.close()


def alert_body(**labels: str) -> bytes:
    return json.dumps(
        {
            "version": "4",
            "status": "firing",
            "alerts": [
                {
                    "status": "firing",
                    "labels": {"alertname": "Bad", "service": "web", **labels},
                    "annotations": {},
                    "startsAt": "2026-01-01T00:00:00Z",
                    "fingerprint": "bad0000000000001",
                }
            ],
        }
    ).encode()


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


BAD_BODIES = {
    "webhook nested 50,000 deep": ("/webhooks/alertmanager", "alertmanager", nested(50_000)),
    "webhook alerts nested 50,000 deep": (
        "/webhooks/alertmanager",
        "alertmanager",
        b'{"version": "4", "alerts": ' + nested(50_000) + b"}",
    ),
    "webhook with a 5,000-digit number": (
        "/webhooks/alertmanager",
        "alertmanager",
        b'{"version": "4", "alerts": [], "truncatedAlerts": ' + b"9" * 5000 + b"}",
    ),
    "webhook label with a lone surrogate": (
        "/webhooks/alertmanager",
        "alertmanager",
        alert_body(alertname="\ud800"),
    ),
    "webhook with invalid UTF-8": (
        "/webhooks/alertmanager",
        "alertmanager",
        alert_body(note="caf\u00e9").replace(b"caf\\u00e9", b"caf\xe9"),
    ),
    "webhook label holding an encoded surrogate": (
        "/webhooks/alertmanager",
        "alertmanager",
        alert_body(note="x").replace(b'"x"', b'"\xed\xa0\x80"'),
    ),
    "deploy nested 50,000 deep": (
        "/api/v1/deploys",
        "ci",
        b'{"service": "web", "version": "v1", "migrations": ' + nested(50_000) + b"}",
    ),
    "deploy with a 5,000-digit number": (
        "/api/v1/deploys",
        "ci",
        b'{"service": "web", "version": ' + b"9" * 5000 + b"}",
    ),
    "deploy with a lone surrogate": (
        "/api/v1/deploys",
        "ci",
        json.dumps({"service": "web", "version": "v1", "ref": "\udc00"}).encode(),
    ),
    "deploy with invalid UTF-8": (
        "/api/v1/deploys",
        "ci",
        b'{"service": "web", "version": "v\xff"}',
    ),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_a_body_python_would_choke_on_is_a_4xx_json_error(served: Served, case: str) -> None:
    """Deep nesting, huge numbers, lone surrogates, invalid UTF-8: 4xx JSON, nothing journaled."""
    path, role, body = BAD_BODIES[case]
    deliveries = served.deliveries()
    current = served.service()["current_version"]
    logged = len(served.daemon.log_text())
    answer = served.post(path, role, body)
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text[:300])
    error = answer.json()
    assert error["error"] and error["field"], error
    assert served.deliveries() == deliveries
    assert served.service()["current_version"] == current
    assert "Traceback" not in served.daemon.log_text()[logged:]
    figures.count(SECTION, "bad bodies refused with a 4xx")


def test_a_bad_label_is_named_in_the_answer(served: Served) -> None:
    """A lone surrogate in a label is refused naming the alert's labels."""
    answer = served.post("/webhooks/alertmanager", "alertmanager", alert_body(team="\udfff"))
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == "alerts[0].labels", answer.json()


def test_a_deploy_dated_2099_is_refused_and_the_current_deploy_stays(served: Served) -> None:
    """A deploy event from the future is 422 naming `time`; what runs is still current."""
    deploy(served, "v3")
    wait_until("v3 to be current", lambda: served.service()["current_version"] == "v3")
    body = json.dumps({"service": "web", "version": "v9", "time": "2099-01-01T00:00:00Z"})
    answer = served.post("/api/v1/deploys", "ci", body.encode())
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == "time", answer.json()
    assert served.service()["current_version"] == "v3"
    figures.count(SECTION, "deploys from the future refused")
