"""Health and smoke probes against a real HTTP server on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rollbackd.config import ProbeConfig
from rollbackd.sources.probes import Prober


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/slow":
            time.sleep(0.6)
        status = 500 if self.path == "/fail" else 200
        body = b"welcome back" if self.path == "/login" else b"ok"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def prober() -> Iterator[Prober]:
    p = Prober()
    yield p
    p.close()


def probe(prober: Prober, url: str, **settings: object) -> tuple[bool, str]:
    config = ProbeConfig.model_validate({"name": "p", "url": url, **settings})
    result = prober.probe("web", config)
    return result.passed, result.reason


def test_a_healthy_endpoint_passes(prober: Prober, server: str) -> None:
    """200 within the budget is a pass, measured as 1."""
    passed, reason = probe(prober, server + "/health")
    assert passed
    assert "answered 200" in reason


def test_a_5xx_fails_naming_the_status(prober: Prober, server: str) -> None:
    """An unexpected status is a failing measurement, not missing data."""
    assert probe(prober, server + "/fail") == (
        False,
        f"GET {server}/fail answered 500, expected 200",
    )


def test_a_body_that_does_not_match_fails(prober: Prober, server: str) -> None:
    """A smoke check can demand a body, like the login page's greeting."""
    assert probe(prober, server + "/login", body_match="welcome")[0]
    passed, reason = probe(prober, server + "/health", body_match="welcome")
    assert not passed
    assert "does not match 'welcome'" in reason


def test_a_slow_answer_over_the_latency_budget_fails(prober: Prober, server: str) -> None:
    """The playbook's 'response times normal' as a latency budget."""
    passed, reason = probe(prober, server + "/slow", latency_budget="100ms")
    assert not passed
    assert "over its budget of 100ms" in reason


def test_a_timeout_fails_within_the_timeout(prober: Prober, server: str) -> None:
    """A hanging service is failing once the probe's timeout runs out."""
    passed, reason = probe(prober, server + "/slow", timeout="200ms")
    assert not passed
    assert "timed out after 200ms" in reason


def test_a_stopped_service_fails(prober: Prober) -> None:
    """Connection refused is an outage: the probe fails with the reason."""
    passed, reason = probe(prober, "http://127.0.0.1:9/health")
    assert not passed
    assert "failed: ConnectError" in reason
