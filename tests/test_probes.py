"""Health and smoke probes against a real HTTP server on loopback."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

import rollbackd
from rollbackd.config import ProbeConfig
from rollbackd.sources.probes import Prober
from tests.reliability.support import Reply, StubServer
from tests.support.pki import Pki


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


def test_headers_trickled_a_byte_at_a_time_time_out_within_the_timeout(prober: Prober) -> None:
    """Each byte comes well within the read timeout; the probe still ends at its 300ms."""
    stub = StubServer(lambda _request: Reply(200, b"ok", trickle_headers=0.1)).start()
    try:
        started = time.monotonic()
        passed, reason = probe(prober, stub.url + "/health", timeout="300ms")
        elapsed = time.monotonic() - started
    finally:
        stub.stop()
    assert (passed, reason) == (False, f"GET {stub.url}/health timed out after 300ms")
    assert elapsed < 5  # the trickle alone takes 9s


def test_an_endless_body_is_read_only_as_far_as_the_body_match_needs(prober: Prober) -> None:
    """A health page that never ends passes on its status and first MiB, in bounded memory."""
    stub = StubServer(lambda _request: Reply(200, b"welcome ", endless=b"x" * 65536)).start()
    try:
        assert probe(prober, stub.url + "/login", body_match="welcome", timeout="10s")[0]
        passed, reason = probe(prober, stub.url + "/login", body_match="goodbye", timeout="10s")
    finally:
        stub.stop()
    assert not passed
    assert "but the body (its first 1 MiB) does not match 'goodbye'" in reason


def raising(error: OSError) -> httpx.MockTransport:
    """A transport failing as httpcore does: the socket's error behind httpx's ConnectError."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(str(error), request=request) from error

    return httpx.MockTransport(handler)


@pytest.mark.parametrize(
    ("error", "measured"),
    [
        (OSError(errno.ECONNREFUSED, "Connection refused"), True),
        (OSError(errno.ECONNRESET, "Connection reset by peer"), True),
        (OSError(errno.EHOSTUNREACH, "No route to host"), True),
        (OSError(errno.EMFILE, "Too many open files"), False),
        (OSError(errno.ENFILE, "Too many open files in system"), False),
        (OSError(errno.ENOBUFS, "No buffer space available"), False),
        (OSError(errno.ENOMEM, "Cannot allocate memory"), False),
        (OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"), False),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), False),
        (socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"), False),
    ],
    ids=lambda value: errno.errorcode.get(getattr(value, "errno", 0), str(value)),
)
def test_only_the_services_doing_counts_against_it(error: OSError, measured: bool) -> None:
    """Refused, reset, host down: failing (0). The daemon's own trouble: no value, with why."""
    prober = Prober(transport=raising(error))
    try:
        result = prober.probe("web", ProbeConfig(name="health", url="http://web.internal/health"))
    finally:
        prober.close()
    assert not result.passed
    assert result.measured is measured
    assert result.value == (0.0 if measured else None)
    if not measured:
        assert "rollbackd's own trouble, not the service's" in result.reason
        assert error.strerror is not None and error.strerror in result.reason


EMFILE_PROBE = """
import json, os, resource, sys
from rollbackd.config import ProbeConfig
from rollbackd.sources.probes import Prober

prober = Prober()
probe = ProbeConfig(name="health", url=sys.argv[1])
assert prober.probe("web", probe).passed  # everything it needs is loaded
lowest_free = os.dup(0)
os.close(lowest_free)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # not one descriptor more
result = prober.probe("web", probe)
print(json.dumps({"value": result.value, "reason": result.reason}))
"""


def test_a_probe_the_daemon_has_no_descriptor_for_is_inconclusive(server: str) -> None:
    """Out of file descriptors (EMFILE), a probe of a healthy service has no value, never 0."""
    env = {**os.environ, "PYTHONPATH": str(Path(rollbackd.__file__).parent.parent)}
    done = subprocess.run(
        [sys.executable, "-c", EMFILE_PROBE, server + "/health"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    result = json.loads(done.stdout)
    assert result["value"] is None
    assert "Too many open files (EMFILE)" in result["reason"], result


class _TenantHandler(BaseHTTPRequestHandler):
    """200 for the tenant ``team-a`` (``X-Scope-OrgID``), 403 for anyone else."""

    def do_GET(self) -> None:
        status = 200 if self.headers.get("X-Scope-OrgID") == "team-a" else 403
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("pki"), extra_names=("web.internal",))


@pytest.fixture(scope="module")
def tls_server(pki: Pki) -> Iterator[str]:
    """An HTTPS server on loopback that wants a client certificate signed by ``pki``'s CA."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _TenantHandler)
    httpd.socket = pki.server_context(require_client_cert=True).wrap_socket(
        httpd.socket, server_side=True
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_a_probe_with_headers_and_mutual_tls_passes(
    prober: Prober, tls_server: str, pki: Pki
) -> None:
    """The tenant header and the client certificate get it in; verified against the CA given."""
    tls = {"ca_file": pki.ca, "cert_file": pki.client_cert, "key_file": pki.client_key}
    passed, reason = probe(prober, tls_server, tls=tls, headers={"X-Scope-OrgID": "team-a"})
    assert passed, reason
    named = {**tls, "server_name": "web.internal"}
    passed, reason = probe(prober, tls_server, tls=named, headers={"X-Scope-OrgID": "team-a"})
    assert passed, reason


def test_a_probe_without_its_header_is_answered_as_anyone_else(
    prober: Prober, tls_server: str, pki: Pki
) -> None:
    """Without the tenant header the server says 403: the probe fails naming the status."""
    tls = {"ca_file": pki.ca, "cert_file": pki.client_cert, "key_file": pki.client_key}
    passed, reason = probe(prober, tls_server, tls=tls)
    assert not passed
    assert "answered 403, expected 200" in reason


@pytest.mark.parametrize(
    ("variation", "expected"),
    [
        ("no ca_file", "certificate verify failed"),
        ("a server_name the certificate lacks", "Hostname mismatch"),
        ("no client certificate", "certificate required"),
    ],
)
def test_a_probe_whose_tls_does_not_hold_fails_saying_tls(
    prober: Prober, tls_server: str, pki: Pki, variation: str, expected: str
) -> None:
    """A certificate the probe cannot trust, or none shown, fails the probe: users see the same."""
    client = {"cert_file": pki.client_cert, "key_file": pki.client_key}
    tls = {
        "no ca_file": client,
        "a server_name the certificate lacks": {
            "ca_file": pki.ca,
            "server_name": "other.internal",
            **client,
        },
        "no client certificate": {"ca_file": pki.ca},
    }[variation]
    passed, reason = probe(prober, tls_server, tls=tls, headers={"X-Scope-OrgID": "team-a"})
    assert not passed
    assert expected in reason, reason
