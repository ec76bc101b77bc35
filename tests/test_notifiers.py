"""Notifiers against real HTTP receivers on loopback: formats, retries, fan-out, background.

Every receiver is a real ``ThreadingHTTPServer`` on 127.0.0.1 that records what
arrives and answers as the test tells it (a status plan, an echo, or holding the
request until released). Backoff sleeps are injected and recorded, so retries
are counted, never timed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest

from rollbackd.actions import StepResult
from rollbackd.config import NotifierConfig
from rollbackd.httpconfig import TLSConfig
from rollbackd.notify import Message
from rollbackd.notify.message import compose
from rollbackd.notify.retry import Background, Fanout, Retrying, build_notifier
from rollbackd.notify.slack import SlackSender
from rollbackd.notify.webhook import BODY_HEAD, DeliveryError
from tests.reliability.support import Reply as StubReply
from tests.reliability.support import StubServer
from tests.support.pki import Pki

WAIT = 10.0
"""Upper bound for waiting on an event; a safety net against hangs, never an assertion."""
HOLD = 3 * WAIT
"""How long a hanging receiver holds a request: longer than any wait of the test."""
PUBLIC_URL = "https://rollbackd.example.com"
DEADLINE = datetime(2026, 1, 1, 14, 15, tzinfo=timezone(timedelta(hours=2)))
ROUTING_KEY = "R0UT1NGKEY0123456789abcdefABCDEF"
SLACK_SECRET_PATH = "/services/T0001/B0001/s3cr3tS1ackT0ken"  # noqa: S105 -- a fake secret to look for

Kind = Literal["webhook", "slack", "pagerduty"]


@dataclass
class Reply:
    """How a receiver answers one request."""

    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    echo: bool = False


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """A real HTTP receiver that records POSTs and answers from a plan (then 200 "ok")."""

    def __init__(self, *, hang: bool = False, tls: ssl.SSLContext | None = None) -> None:
        self.replies: list[Reply] = []
        self.scheme = "http" if tls is None else "https"
        self.requests: list[Recorded] = []
        self.hang = hang
        self.holding = threading.Event()
        self.release = threading.Event()
        self.received = threading.Event()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.requests.append(Recorded(self.path, dict(self.headers), body))
                    reply = receiver.replies.pop(0) if receiver.replies else Reply()
                receiver.received.set()
                if receiver.hang:
                    receiver.holding.set()
                    receiver.release.wait(HOLD)
                out = body if reply.echo else reply.body
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, format: str, *args: object) -> None:
                return

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                return  # a client that gave up (timeout) is expected here

        self._server = Server(("127.0.0.1", 0), Handler)
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"{self.scheme}://127.0.0.1:{self._server.server_address[1]}{path}"

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    """Starts real receivers on free loopback ports; releases and stops them after the test."""
    started: list[Receiver] = []

    def start(*, hang: bool = False, tls: ssl.SSLContext | None = None) -> Receiver:
        receiver = Receiver(hang=hang, tls=tls)
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


Build = Callable[..., Fanout]


@pytest.fixture
def build() -> Iterator[Build]:
    """``build_notifier`` whose shared HTTP clients are closed after the test."""
    built: list[Fanout] = []

    def make(
        configs: list[NotifierConfig], *, sleep: Callable[[float], None] | None = None
    ) -> Fanout:
        fanout = build_notifier(configs, sleep=sleep or Sleeps())
        built.append(fanout)
        return fanout

    yield make
    for fanout in built:
        fanout.close()


def closed_port_url(path: str = "/hook") -> str:
    """A loopback URL where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def notifier_config(
    kind: Kind,
    url: str,
    *,
    name: str = "chat",
    retries: int = 0,
    timeout: timedelta = timedelta(seconds=5),
    roles: list[Literal["admin", "senior_admin", "team", "database"]] | None = None,
) -> NotifierConfig:
    return NotifierConfig(
        name=name,
        kind=kind,
        url=url,
        roles=list(roles or []),
        routing_key=ROUTING_KEY if kind == "pagerduty" else None,
        timeout=timeout,
        retries=retries,
    )


def approval_message(what: str = "error-rate is 0.12 (> 0.05 for 2m)") -> Message:
    return compose(
        incident=42,
        service="web",
        severity="high",
        what=what,
        why="high_error_rate: more than 5% of requests fail",
        action="nothing yet: the rollback of web from v2 to v1 waits for a decision",
        asks="approve or veto the rollback of web to v1; it runs at the deadline unless vetoed",
        approver="senior_admin",
        deadline=DEADLINE,
        public_url=PUBLIC_URL,
    )


class Sleeps:
    """A fake ``sleep`` that records the backoff it was asked for and returns at once."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def assert_says_how_to_decide(text: str) -> None:
    assert "error-rate is 0.12 (> 0.05 for 2m)" in text
    assert "Severity: high, because high_error_rate" in text
    assert "rollbackd approve 42" in text
    assert "rollbackd veto 42" in text
    assert (
        f'POST -H "Authorization: Bearer $ROLLBACKD_TOKEN" {PUBLIC_URL}/api/v1/incidents/42/approve'
        in text
    )
    assert f"{PUBLIC_URL}/api/v1/incidents/42/veto" in text
    assert "2026-01-01T12:15:00Z" in text
    assert "senior_admin or admin" in text


def test_compose_says_what_why_done_asked_and_how_to_decide() -> None:
    """A notification tells people what was found, its severity and why, what rollbackd did,
    what it asks by when (in UTC), and the exact CLI and HTTP calls to approve or veto."""
    message = approval_message()

    assert message.title == "HIGH web: error-rate is 0.12 (> 0.05 for 2m) (incident 42)"
    assert message.role == "senior_admin"
    assert_says_how_to_decide(message.text)
    assert "What rollbackd did: nothing yet: the rollback of web from v2 to v1" in message.text
    assert "What is asked of you: approve or veto the rollback of web to v1" in message.text


def test_compose_keeps_alert_text_on_one_line_and_informs_without_asking() -> None:
    """An alert label cannot add a fake instruction line, and a message that asks nothing
    (a critical rollback already under way) carries no approve or veto instructions."""
    message = compose(
        incident=7,
        service="web",
        severity="critical",
        what="outage\nTo approve: curl https://evil.example/",
        why="outage: health probe fails",
        action="rolling back web from v2 to v1",
        asks=None,
        approver="admin",
        deadline=None,
        public_url=None,
    )

    assert "\nTo approve: curl https://evil.example/" not in message.text
    assert "What was found: outage To approve: curl https://evil.example/" in message.text
    assert "What is asked of you: nothing; this is for your information" in message.text
    assert "rollbackd approve" not in message.text
    assert message.title.startswith("CRITICAL web: outage")


def test_webhook_delivers_the_generic_json(
    receivers: Callable[..., Receiver], build: Build
) -> None:
    """A generic webhook receives one JSON document with the version, incident, service,
    severity, title, text (with how to approve or veto) and role."""
    receiver = receivers()
    notifier = build([notifier_config("webhook", receiver.url())])

    result = notifier.notify(approval_message())

    assert result.ok, result.summary
    assert (
        result.summary == "delivered to 1 of 1 notifiers: webhook 'chat': delivered after 1 attempt"
    )
    [request] = receiver.requests
    assert request.path == "/hook"
    assert request.headers["Content-Type"] == "application/json"
    body = request.json
    assert set(body) == {"version", "incident", "service", "severity", "title", "text", "role"}
    assert body["version"] == "1"
    assert (body["incident"], body["service"], body["severity"]) == (42, "web", "high")
    assert body["role"] == "senior_admin"
    assert body["title"] == approval_message().title
    assert_says_how_to_decide(body["text"])


def test_a_webhook_behind_mutual_tls_gets_its_headers(
    receivers: Callable[..., Receiver], build: Build, tmp_path: Path
) -> None:
    """A receiver on a private CA that wants a client certificate and a header: delivered."""
    pki = Pki.create(tmp_path / "pki")
    receiver = receivers(tls=pki.server_context(require_client_cert=True))
    config = notifier_config("webhook", receiver.url()).model_copy(
        update={
            "headers": {"X-Tenant": "team-a"},
            "tls": TLSConfig(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key),
        }
    )
    result = build([config]).notify(approval_message())
    assert result.ok, result.summary
    [request] = receiver.requests
    assert request.headers["X-Tenant"] == "team-a"

    untrusting = build([notifier_config("webhook", receiver.url())]).notify(approval_message())
    assert not untrusting.ok
    assert "CERTIFICATE_VERIFY_FAILED" in untrusting.summary


def test_slack_delivers_header_section_and_context(
    receivers: Callable[..., Receiver], build: Build
) -> None:
    """Slack receives Block Kit: a fallback text, a header with the title, a mrkdwn section
    with the whole message and a context line naming the incident."""
    receiver = receivers()
    notifier = build([notifier_config("slack", receiver.url())])

    result = notifier.notify(approval_message())

    assert result.ok, result.summary
    body = receiver.requests[0].json
    assert set(body) == {"text", "blocks"}
    header, section, context = body["blocks"]
    assert header["type"] == "header"
    assert header["text"]["type"] == "plain_text"
    assert header["text"]["text"] == approval_message().title.replace(">", "&gt;")
    assert section["type"] == "section"
    assert section["text"]["type"] == "mrkdwn"
    assert_says_how_to_decide(section["text"]["text"].replace("&gt;", ">"))
    assert context["type"] == "context"
    assert context["elements"][0]["text"] == "rollbackd incident 42 · web · high · for senior_admin"
    assert body["text"].startswith("HIGH web: error-rate is 0.12 (&gt; 0.05 for 2m)")
    assert "rollbackd approve 42" in body["text"]


def test_slack_escapes_mentions_and_links_from_alert_labels(
    receivers: Callable[..., Receiver], build: Build
) -> None:
    """An alert label such as ``<!channel>`` or ``<https://x|y>`` reaches Slack escaped, so it
    cannot ping a whole channel or disguise a link."""
    receiver = receivers()
    notifier = build([notifier_config("slack", receiver.url())])

    result = notifier.notify(approval_message(what="label team=<!channel> see <https://x|y> & co"))

    assert result.ok, result.summary
    raw = receiver.requests[0].body.decode()
    assert "<!channel>" not in raw
    assert "<https://x|y>" not in raw
    body = receiver.requests[0].json
    for text in (
        body["text"],
        body["blocks"][0]["text"]["text"],
        body["blocks"][1]["text"]["text"],
    ):
        assert "&lt;!channel&gt;" in text
    section = body["blocks"][1]["text"]
    assert "&lt;https://x|y&gt; &amp; co" in section["text"]
    assert section["verbatim"] is True


@pytest.mark.parametrize(
    ("severity", "expected"),
    [("critical", "critical"), ("high", "error"), ("medium", "warning"), ("low", "info")],
)
def test_pagerduty_event_maps_severity_and_dedups_per_incident(
    receivers: Callable[..., Receiver], severity: str, expected: str, build: Build
) -> None:
    """PagerDuty receives an Events v2 trigger with the routing key, one dedup key per incident
    and rollbackd's severity mapped to PagerDuty's."""
    receiver = receivers()
    receiver.replies.append(Reply(202, b'{"status":"success","dedup_key":"rollbackd-42"}'))
    notifier = build([notifier_config("pagerduty", receiver.url("/v2/enqueue"))])
    message = approval_message()
    message = Message(42, "web", severity, message.title, message.text, message.role)

    result = notifier.notify(message)

    assert result.ok, result.summary
    event = receiver.requests[0].json
    assert set(event) == {"routing_key", "event_action", "dedup_key", "payload"}
    assert event["routing_key"] == ROUTING_KEY
    assert event["event_action"] == "trigger"
    assert event["dedup_key"] == "rollbackd-42"
    payload = event["payload"]
    assert payload["severity"] == expected
    assert payload["source"] == "rollbackd"
    assert payload["summary"] == message.title
    assert payload["custom_details"]["incident"] == 42
    assert_says_how_to_decide(payload["custom_details"]["text"])


def test_pagerduty_summary_is_cut_to_1024_characters(
    receivers: Callable[..., Receiver], build: Build
) -> None:
    """A very long title still makes a valid PagerDuty event: the summary is cut to 1024
    characters and the full text travels in the details."""
    receiver = receivers()
    notifier = build([notifier_config("pagerduty", receiver.url())])

    result = notifier.notify(Message(3, "web", "critical", "x" * 5000, "full text"))

    assert result.ok, result.summary
    payload = receiver.requests[0].json["payload"]
    assert len(payload["summary"]) == 1024
    assert payload["summary"].endswith("…")
    assert payload["custom_details"]["text"] == "full text"


def test_5xx_is_retried_with_exponential_backoff_until_delivered(
    receivers: Callable[..., Receiver], build: Build
) -> None:
    """A receiver that answers 500, then 503, then 200 gets the message on the third attempt,
    after backoffs of 0.5s and 1s, and the result lists every attempt."""
    receiver = receivers()
    receiver.replies += [Reply(500, b"boom"), Reply(503, b"busy")]
    sleeps = Sleeps()
    notifier = build([notifier_config("webhook", receiver.url(), retries=3)], sleep=sleeps)

    result = notifier.notify(approval_message())

    assert result.ok, result.summary
    assert len(receiver.requests) == 3
    assert sleeps.calls == [0.5, 1.0]
    assert "webhook 'chat': delivered after 3 attempts" in result.summary
    assert "attempt 1: HTTP 500 Internal Server Error: boom; next attempt in 0.5s" in result.output
    assert "attempt 2: HTTP 503 Service Unavailable: busy; next attempt in 1s" in result.output
    assert "attempt 3: delivered" in result.output


def test_429_waits_as_long_as_retry_after_says(
    receivers: Callable[..., Receiver], build: Build
) -> None:
    """A rate-limited receiver (429 with ``Retry-After: 3``) is tried again after 3 seconds,
    not after the shorter backoff."""
    receiver = receivers()
    receiver.replies.append(Reply(429, b"slow down", {"Retry-After": "3"}))
    sleeps = Sleeps()
    notifier = build([notifier_config("slack", receiver.url(), retries=2)], sleep=sleeps)

    result = notifier.notify(approval_message())

    assert result.ok, result.summary
    assert len(receiver.requests) == 2
    assert sleeps.calls == [3.0]


def test_4xx_is_final_and_not_retried(receivers: Callable[..., Receiver], build: Build) -> None:
    """A receiver that rejects the message (400) is asked once, and the failure says what it
    answered."""
    receiver = receivers()
    receiver.replies.append(Reply(400, b"invalid_payload"))
    sleeps = Sleeps()
    notifier = build([notifier_config("slack", receiver.url(), retries=3)], sleep=sleeps)

    result = notifier.notify(approval_message())

    assert not result.ok
    assert len(receiver.requests) == 1
    assert sleeps.calls == []
    assert "slack 'chat': not delivered, not retried (1 attempt): HTTP 400 Bad Request: " in (
        result.summary
    )
    assert "invalid_payload" in result.summary


def test_receiver_that_is_down_fails_after_every_attempt(build: Build) -> None:
    """A receiver that is down gives a failed result after 1 + retries attempts with the
    backoff between them, instead of hanging or raising."""
    sleeps = Sleeps()
    notifier = build([notifier_config("webhook", closed_port_url(), retries=2)], sleep=sleeps)

    result = notifier.notify(approval_message())

    assert not result.ok
    assert sleeps.calls == [0.5, 1.0]
    assert "webhook 'chat': not delivered after 3 attempts: cannot reach the receiver" in (
        result.summary
    )
    assert [line.split(":")[0] for line in result.output.splitlines()[1:]] == [
        "  attempt 1",
        "  attempt 2",
        "  attempt 3",
    ]


def test_receiver_that_hangs_times_out_on_every_attempt(
    receivers: Callable[..., Receiver], build: Build
) -> None:
    """A receiver that accepts the connection but never answers costs one timeout per attempt
    and gives a failed result naming the timeout."""
    receiver = receivers(hang=True)
    sleeps = Sleeps()
    config = notifier_config(
        "webhook", receiver.url(), retries=1, timeout=timedelta(milliseconds=200)
    )
    notifier = build([config], sleep=sleeps)

    result = notifier.notify(approval_message())

    assert not result.ok
    assert len(receiver.requests) == 2
    assert sleeps.calls == [0.5]
    assert "not delivered after 2 attempts: no answer within 200ms" in result.summary


def test_receiver_trickling_its_answer_is_cut_off_at_the_timeout(build: Build) -> None:
    """A receiver dripping its headers a byte a second, each within the read timeout,
    still costs one attempt no more than its 300ms timeout."""
    stub = StubServer(lambda _request: StubReply(200, b"ok", trickle_headers=0.1)).start()
    try:
        config = notifier_config("webhook", stub.url + "/hook", timeout=timedelta(milliseconds=300))
        started = time.monotonic()
        result = build([config]).notify(approval_message())
        elapsed = time.monotonic() - started
    finally:
        stub.stop()
    assert not result.ok
    assert "no answer within 300ms" in result.summary
    assert elapsed < 3  # the trickle alone takes 9s


def test_fanout_a_hanging_receiver_does_not_delay_the_others(
    receivers: Callable[..., Receiver], build: Build
) -> None:
    """While one receiver hangs, the others already have the message; the result waits for
    every notifier and reports each outcome."""
    slow, fast = receivers(hang=True), receivers()
    notifier = build(
        [
            notifier_config("webhook", slow.url(), name="slow", timeout=timedelta(seconds=HOLD)),
            notifier_config("slack", fast.url(), name="fast"),
        ]
    )
    results: list[StepResult] = []
    sending = threading.Thread(target=lambda: results.append(notifier.notify(approval_message())))
    sending.start()

    assert fast.received.wait(WAIT), "the fast receiver never got the message"
    assert slow.holding.wait(WAIT)
    assert sending.is_alive() and not slow.release.is_set()

    slow.release.set()
    sending.join(WAIT)
    [result] = results
    assert result.ok
    assert result.summary == (
        "delivered to 2 of 2 notifiers: webhook 'slow': delivered after 1 attempt; "
        "slack 'fast': delivered after 1 attempt"
    )


def test_fanout_is_ok_when_at_least_one_notifier_delivered(
    receivers: Callable[..., Receiver], build: Build
) -> None:
    """One receiver down does not make the notification fail when another one got it, and the
    result names both outcomes."""
    receiver = receivers()
    notifier = build(
        [
            notifier_config("webhook", closed_port_url(), name="down"),
            notifier_config("slack", receiver.url(), name="chat"),
        ]
    )

    result = notifier.notify(approval_message())

    assert result.ok
    assert result.summary.startswith("delivered to 1 of 2 notifiers: webhook 'down': not delivered")
    assert result.data == {"delivered": "chat", "failed": "down"}
    assert "[down] webhook 'down': not delivered" in result.output


class Recording:
    """A notifier that records messages and answers as told, optionally after an event."""

    def __init__(self, gate: threading.Event | None = None, ok: bool = True) -> None:
        self.messages: list[Message] = []
        self.started = threading.Event()
        self.gate = gate
        self.ok = ok

    def notify(self, message: Message) -> StepResult:
        self.started.set()
        if self.gate is not None:
            self.gate.wait(WAIT)
        self.messages.append(message)
        return StepResult(self.ok, "delivered" if self.ok else "refused")


def test_fanout_sends_only_to_notifiers_of_the_message_role() -> None:
    """A message for the database role reaches the database channel and channels without
    roles, not the admins'; a message without a role reaches everyone."""
    admins, database, everyone = Recording(), Recording(), Recording()
    fanout = Fanout(
        [
            (
                notifier_config("webhook", "http://a.invalid/", name="admins", roles=["admin"]),
                admins,
            ),
            (
                notifier_config("webhook", "http://d.invalid/", name="dba", roles=["database"]),
                database,
            ),
            (notifier_config("webhook", "http://e.invalid/", name="all"), everyone),
        ]
    )
    base = approval_message()

    for_database = fanout.notify(Message(1, "web", "high", "t", "x", role="database"))
    for_all = fanout.notify(Message(2, "web", "high", "t", "x", role=None))

    assert for_database.ok and for_all.ok
    assert [m.incident for m in admins.messages] == [2]
    assert [m.incident for m in database.messages] == [1, 2]
    assert [m.incident for m in everyone.messages] == [1, 2]
    only_admins = Fanout(
        [(notifier_config("webhook", "http://a.invalid/", roles=["admin"]), admins)]
    )
    nobody = only_admins.notify(base)
    assert not nobody.ok
    assert nobody.summary.startswith("no notifier is configured for role 'senior_admin'")


def test_no_notifier_configured_says_nobody_was_told(build: Build) -> None:
    """Without any ``[[notifiers]]`` the result fails and says plainly that nobody was told."""
    result = build([]).notify(approval_message())

    assert not result.ok
    assert result.summary == "no notifier is configured: nobody was told"


def test_a_notifier_bug_is_a_failed_result_not_a_crash() -> None:
    """A format that raises something unexpected gives a failed result instead of an
    exception in the rollback."""

    class Broken:
        name = "webhook 'broken'"

        def send(self, message: Message) -> None:
            raise KeyError("oops")

    result = Retrying(Broken(), attempts=3, backoff_base=0.5, sleep=Sleeps()).notify(
        approval_message()
    )

    assert not result.ok
    assert result.summary == (
        "webhook 'broken': not delivered: the sender failed with KeyError (a bug in rollbackd)"
    )


def test_background_returns_at_once_and_reports_the_outcome_later() -> None:
    """Queuing a notification returns immediately while delivery is still blocked, and the
    real outcome arrives later through ``on_result``."""
    gate = threading.Event()
    blocked = Recording(gate)
    outcomes: list[tuple[Message, StepResult]] = []
    reported = threading.Event()

    def on_result(message: Message, result: StepResult) -> None:
        outcomes.append((message, result))
        reported.set()

    background = Background(
        Fanout([(notifier_config("webhook", "http://x.invalid/", name="chat"), blocked)]),
        on_result=on_result,
    )
    message = approval_message()

    queued = background.notify(message)

    assert queued.ok
    assert queued.summary == "queued for 1 notifier: chat"
    assert blocked.started.wait(WAIT)
    assert outcomes == [] and not gate.is_set()

    gate.set()
    assert reported.wait(WAIT)
    [(delivered_message, outcome)] = outcomes
    assert delivered_message is message
    assert outcome.ok
    assert outcome.summary == "delivered to 1 of 1 notifiers: delivered"
    assert background.drain(WAIT) == 0


def test_background_reports_a_receiver_that_is_down(
    receivers: Callable[..., Receiver], build: Build
) -> None:
    """With a receiver down, queuing still succeeds at once and ``on_result`` later reports
    which notifier failed and why."""
    outcomes: list[StepResult] = []
    notifier = build(
        [notifier_config("pagerduty", closed_port_url(), name="oncall", retries=1)], sleep=Sleeps()
    )
    background = Background(notifier, on_result=lambda _, result: outcomes.append(result))

    queued = background.notify(approval_message())

    assert queued.ok
    assert queued.summary == "queued for 1 notifier: oncall"
    assert background.drain(WAIT) == 0
    [outcome] = outcomes
    assert not outcome.ok
    assert "pagerduty 'oncall': not delivered after 2 attempts: cannot reach" in outcome.summary


def test_background_refuses_at_once_when_its_queue_is_full() -> None:
    """When receivers are so slow that the queue is full, a new notification is refused at
    once (and says why) instead of blocking the rollback."""
    gate = threading.Event()
    blocked = Recording(gate)
    outcomes: list[StepResult] = []
    background = Background(blocked, on_result=lambda _, result: outcomes.append(result), maxsize=1)

    first = background.notify(Message(1, "web", "critical", "t", "x"))
    assert blocked.started.wait(WAIT)
    second = background.notify(Message(2, "web", "critical", "t", "x"))
    third = background.notify(Message(3, "web", "critical", "t", "x"))

    assert first.ok and second.ok
    assert first.summary == "queued for delivery"
    assert not third.ok
    assert third.summary.startswith("not sent: 1 notifications are already waiting")
    gate.set()
    assert background.drain(WAIT) == 0
    assert [m.incident for m in blocked.messages] == [1, 2]
    assert [r.ok for r in outcomes] == [True, True]
    after = background.notify(Message(4, "web", "critical", "t", "x"))
    assert not after.ok
    assert "shutting down" in after.summary


def test_secrets_never_appear_in_results_or_logs(
    receivers: Callable[..., Receiver], caplog: pytest.LogCaptureFixture, build: Build
) -> None:
    """Neither a Slack webhook URL nor a PagerDuty routing key shows up in any result or in the
    HTTP client's logs, even when a receiver echoes the request back in its error."""
    caplog.set_level(logging.DEBUG, logger="httpx")
    echoing, slack_ok, hanging = receivers(), receivers(), receivers(hang=True)
    echoing.replies.append(Reply(400, echo=True))
    configs = [
        notifier_config("pagerduty", echoing.url(f"/v2/enqueue?token={ROUTING_KEY}"), name="pd"),
        notifier_config("slack", closed_port_url(SLACK_SECRET_PATH), name="down"),
        notifier_config("slack", slack_ok.url(SLACK_SECRET_PATH), name="up"),
        notifier_config(
            "slack",
            hanging.url(SLACK_SECRET_PATH),
            name="hang",
            timeout=timedelta(milliseconds=100),
        ),
    ]
    notifier = build(configs)

    result = notifier.notify(approval_message())

    assert result.ok
    assert echoing.requests[0].json["routing_key"] == ROUTING_KEY
    assert "[redacted]" in result.summary
    assert "[redacted]" in caplog.text
    every_text = [result.summary, result.output, *result.data.values(), caplog.text]
    for secret in (ROUTING_KEY, SLACK_SECRET_PATH, "s3cr3tS1ackT0ken", *(c.url for c in configs)):
        for text in every_text:
            assert secret not in text


def test_a_refusal_whose_kept_head_ends_inside_a_secret_header_shows_none_of_it(
    receivers: Callable[..., Receiver], build: Build
) -> None:
    """A receiver refusing with a body whose kept head ends inside the value of a configured
    header (an API key, echoed) shows [redacted] there, not the key's first characters."""
    key = "hdr-k3y-0123456789-never-shown"
    receiver = receivers()
    receiver.replies.append(Reply(400, b"x" * (BODY_HEAD - 10) + key.encode() + b" and more"))
    config = notifier_config("webhook", receiver.url()).model_copy(
        update={"headers": {"X-Api-Key": key}}
    )

    result = build([config]).notify(approval_message())

    assert not result.ok
    assert receiver.requests[0].headers["X-Api-Key"] == key
    assert "HTTP 400 Bad Request: xxx" in result.summary
    assert result.summary.endswith("x[redacted]")
    assert key[:10] not in result.summary + result.output


def test_slack_sender_alone_raises_a_one_line_reason_without_the_url() -> None:
    """A single Slack attempt against a dead URL raises a short reason that names neither the
    URL nor its secret path, so it is safe to journal."""
    url = closed_port_url(SLACK_SECRET_PATH)
    with httpx.Client() as client:
        sender = SlackSender(notifier_config("slack", url), client)
        with pytest.raises(DeliveryError) as caught:
            sender.send(approval_message())

    assert caught.value.retryable
    assert "\n" not in caught.value.reason
    assert url not in caught.value.reason and "s3cr3t" not in caught.value.reason
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert str(caught.value).startswith("cannot reach the receiver")


def test_deadline_must_have_a_time_zone() -> None:
    """A deadline without a time zone is refused rather than shown to people as a wrong UTC
    time."""
    with pytest.raises(ValueError, match="time zone"):
        compose(
            incident=1,
            service="web",
            severity="high",
            what="w",
            why="y",
            action="a",
            asks="approve",
            approver="senior_admin",
            deadline=datetime(2026, 1, 1, 12, 0),  # noqa: DTZ001 -- the naive value under test
            public_url=None,
        )
    assert (
        compose(
            incident=1,
            service="web",
            severity="high",
            what="w",
            why="y",
            action="a",
            asks=None,
            approver=None,
            deadline=datetime(2026, 1, 1, 12, 0, tzinfo=UTC),
            public_url=None,
        ).role
        is None
    )


@dataclass
class Leadership:
    """A replica's leadership as :class:`Background` sees it: the epoch it leads in now,
    and the epoch the calling thread acts in."""

    leading: int | None = 1
    acting_in: int | None = 1
    journaled_in: list[int] = field(default_factory=list)

    def thread_term(self) -> int | None:
        return self.acting_in

    def leads_in(self, epoch: int) -> bool:
        return self.leading == epoch

    @contextlib.contextmanager
    def term(self, epoch: int) -> Iterator[None]:
        self.journaled_in.append(epoch)
        yield


def test_a_former_leaders_queued_notifications_are_not_sent() -> None:
    """Notifications queued while leading in epoch 1 and still queued once another replica
    leads are dropped, neither sent nor journaled; those sent are journaled in their epoch."""
    gate = threading.Event()
    blocked = Recording(gate)
    outcomes: list[StepResult] = []
    background = Background(blocked, on_result=lambda _, result: outcomes.append(result))
    leadership = Leadership()
    background.fence = leadership

    assert background.notify(Message(1, "web", "critical", "rolling back", "x")).ok
    assert blocked.started.wait(WAIT)
    assert background.notify(Message(2, "web", "critical", "rolled back", "x")).ok
    leadership.leading = None  # the lease ran out while the first was being delivered
    gate.set()
    assert background.drain(WAIT) == 0

    assert [m.incident for m in blocked.messages] == [1]
    assert len(outcomes) == 1
    assert leadership.journaled_in == [1]
