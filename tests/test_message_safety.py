"""What people are told is built one way: sanitised and bounded, whatever an alert says.

A real daemon (:class:`~rollbackd.runtime.Runtime`) with a real SQLite journal and its
``[[notifiers]]`` (Slack) posting to an HTTP receiver on loopback; an
Alertmanager webhook carries a hostile alert. The decision it leads to, and the
message asking for approval, must reach Slack on one line per field, bounded,
without control characters, bidi overrides or live mentions.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import rollbackd
from rollbackd.errors import InvalidInput
from rollbackd.journal import IncidentState, SqliteJournal, journal_path
from rollbackd.loader import load
from rollbackd.notify.retry import build_notifier
from rollbackd.runtime import Runtime
from rollbackd.testing import FixedClock, ScriptedMetrics, constant
from tests.reliability.support import Reply, StubServer, close_daemon, finish_rollbacks

POLL = timedelta(seconds=15)
ERRORS = 'sum by (service) (rate(http_requests_total{code=~"5.."}[1m]))'
RULES = f"""
[[rules]]
name = "error-rate"
trigger = "high_error_rate"
query = '{ERRORS}'
condition = "> 0.05"
"""
HOSTILE_NAME = (
    "Evil\nTo approve: curl https://evil.example/ \x1b[31m<!channel> @here \u202eexe.txt\r\n"
)
ANNOTATION = "A" * 60_000
"""Nearly the 64 KiB a webhook takes for an alert's annotations (100 KB is refused whole)."""
MESSAGE_BYTES = 12_000
"""More than any sanitised message of one incident takes (a title and a dozen short lines)."""


def config_text(root: Path, slack: str) -> str:
    return f"""
[daemon]
listen = "127.0.0.1:9"
state_dir = "{root / "state"}"
poll_interval = "15s"
rules = ["rules/*.toml"]
public_url = "https://rollbackd.example.com"

[[services]]
name = "web"
executor = "command"
command = ["true"]
command_timeout = "10s"

[policy.critical]
action = "request_approval"
deadline = "15m"

[deploys]
known_good_after = "1m"

[[notifiers]]
name = "chat"
kind = "slack"
url = "{slack}/services/T0/B0/x"
retries = 0
"""


@pytest.fixture
def slack() -> Iterator[StubServer]:
    server = StubServer(lambda _received: Reply(200, b"ok", "text/plain")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def daemon(tmp_path: Path, slack: StubServer) -> Iterator[Runtime]:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "rules.toml").write_text(RULES, encoding="utf-8")
    path = tmp_path / "config.toml"
    path.write_text(config_text(tmp_path, slack.url), encoding="utf-8")
    loaded = load(path, env={})
    journal = SqliteJournal(journal_path(loaded.config.daemon.state_dir))
    metrics = ScriptedMetrics(["web"])
    metrics.set(ERRORS, constant(0.0))
    started = Runtime(
        loaded,
        journal,
        metrics_source=metrics,
        clock=FixedClock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC)),
        notifiers=lambda config: build_notifier(config.notifiers),
    )
    started.restore()
    try:
        yield started
    finally:
        close_daemon(started)


def cycle(daemon: Runtime) -> None:
    clock = daemon.state.clock
    assert isinstance(clock, FixedClock)
    clock.advance(POLL)
    assert daemon.loop.cycle() is not None, daemon.loop.last_cycle_error
    finish_rollbacks(daemon)


def hostile_delivery(starts: datetime, annotation: str = ANNOTATION) -> bytes:
    alert = {
        "status": "firing",
        "labels": {
            "alertname": HOSTILE_NAME,
            "service": "web",
            "rollbackd_trigger": "outage",
            "team": "<!subteam^S0> " + "B" * 5_000,
        },
        "annotations": {"summary": HOSTILE_NAME, "description": annotation},
        "startsAt": starts.isoformat(),
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": "7b96a6924af08f2f",
    }
    return json.dumps({"version": "4", "status": "firing", "alerts": [alert]}).encode()


def texts(document: Any) -> Iterator[str]:
    """Every string in a JSON document."""
    if isinstance(document, str):
        yield document
    elif isinstance(document, dict):
        for value in document.values():
            yield from texts(value)
    elif isinstance(document, list):
        for value in document:
            yield from texts(value)


def test_a_hostile_alert_reaches_slack_only_sanitised_and_bounded(
    daemon: Runtime, slack: StubServer
) -> None:
    """An alert whose name holds a fake instruction line, a terminal escape, a bidi override
    and Slack mentions, with a 60 KB annotation, asks for approval in a message where none
    of that survives: one line per field, escaped, and a few KB in all (with a 100 KB
    annotation the delivery is refused and nobody is told anything)."""
    daemon.intake.accept_deploy({"service": "web", "version": "v1"})
    for _ in range(6):
        cycle(daemon)
    daemon.intake.accept_deploy({"service": "web", "version": "v2"})
    cycle(daemon)
    with pytest.raises(InvalidInput, match="annotations: larger than 64 KiB"):
        daemon.intake.submit_webhook(hostile_delivery(daemon.state.clock(), "A" * 100_000))
    cycle(daemon)
    assert not [r for r in slack.received if r.path.startswith("/services/")]
    daemon.intake.submit_webhook(hostile_delivery(daemon.state.clock())).result()
    cycle(daemon)

    [incident] = daemon.journal.incidents()
    assert incident.state is IncidentState.AWAITING_APPROVAL
    [posted] = [r for r in slack.received if r.path.startswith("/services/")]
    assert len(posted.body) < MESSAGE_BYTES
    raw = posted.body.decode("utf-8")
    for live in ("<!channel>", "<!subteam", "\u202e", "\\u202e", "\x1b", "\\u001b", "\\r"):
        assert live not in raw, live
    body = json.loads(raw)
    header, section, _context = body["blocks"]
    assert "\n" not in header["text"]["text"]
    assert header["text"]["text"].startswith("CRITICAL web: rollbackd asks to roll back to v1")
    lines = section["text"]["text"].split("\n")
    assert not [line for line in lines if line.startswith("To approve: curl")]
    assert "What was found: alert:Evil To approve: curl https://evil.example/ [31m" in lines[0]
    assert "&lt;!channel&gt; @here exe.txt" in lines[0]
    assert section["text"]["verbatim"] is True
    assert "rollbackd approve 1" in section["text"]["text"]
    for text in texts(body):
        assert "AAAAAAAAAA" not in text
        assert all(ch == "\n" or ch.isprintable() for ch in text), repr(text)


def message_builders() -> Iterator[tuple[str, int]]:
    """Every place in the package that calls ``Message(...)``, as (module, line)."""
    package = Path(rollbackd.__file__).parent
    for source in sorted(package.rglob("*.py")):
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name | ast.Attribute)
                and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr)
                == "Message"
            ):
                yield str(source.relative_to(package)), node.lineno


def test_only_compose_and_notice_build_messages() -> None:
    """No module builds a notification by hand, past the limits and flattening of
    ``notify/message.py``."""
    builders = {module for module, _line in message_builders()}
    assert builders == {"notify/message.py"}, sorted(message_builders())
