"""HTTP health and smoke probes (the playbook's critical-path checks), on httpx.

A probe that fails, answers an unexpected status, misses its body match,
exceeds its latency budget or times out is a *measurement* of 0 (the service
is failing), not missing data: this is how a complete outage is caught when
the application exports no metrics at all. A passing probe measures 1.

A probe that rollbackd could not even try is *inconclusive* (no value, with
the reason), never an outage: the daemon out of file descriptors (EMFILE,
ENFILE), buffers or memory (ENOBUFS, ENOMEM), local ports (EADDRNOTAVAIL),
network (ENETDOWN, ENETUNREACH) or permission (EACCES, EPERM), a name its
resolver cannot resolve, a URL it cannot send. Only the service's doing
counts against it: its answer, a refused, reset or aborted connection, a host
that is down (EHOSTUNREACH, EHOSTDOWN), a TLS handshake it fails, a timeout.
Were a flood of connections to exhaust the daemon's descriptors, its probes
would otherwise "see" an outage and roll back a healthy deploy.

Each probe ends within its ``timeout`` in total (connect, headers and body;
see :mod:`rollbackd.bounded`) and reads at most :data:`BODY_LIMIT` of the body.

A probe sends its ``headers`` and speaks TLS as its ``tls`` says (see
:mod:`rollbackd.httpconfig`): probes with the same ``tls`` share one client.
A reason that quotes what the service sent (h11 quotes a status or header line it
cannot parse) never shows the probe's headers' values or its URL's password: a
service may echo them.
"""

from __future__ import annotations

import errno
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from rollbackd.bounded import Deadline, format_size, watch_httpx, within
from rollbackd.config import ProbeConfig, ServiceConfig
from rollbackd.core.durations import format_duration
from rollbackd.httpconfig import TLSConfig, hide_in_logs, redact, secrets_sent, ssl_context
from rollbackd.logs import get_logger

log = get_logger("rollbackd")

HEALTH = "health"
BODY_LIMIT = 1 << 20
"""Bytes of a probe's answer read (and searched by ``body_match``); the rest is not read."""
SERVICE_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.EHOSTUNREACH,
        errno.EHOSTDOWN,
        errno.ETIMEDOUT,
    }
)
"""Socket errors that are the service's doing (nothing listens, it hung up, its host is
down); any other errno is the daemon's own trouble and the probe is inconclusive."""


@dataclass(frozen=True)
class ProbeResult:
    """One probe's verdict: passing or not, and why, in one line.

    ``measured`` is False when the probe could not be tried at all (the daemon's
    own trouble): then it says nothing about the service and has no value.
    """

    service: str
    probe: str
    passed: bool
    reason: str
    latency: float | None = None
    measured: bool = True

    @property
    def value(self) -> float | None:
        if not self.measured:
            return None
        return 1.0 if self.passed else 0.0


def probes_of(service: ServiceConfig) -> list[ProbeConfig]:
    """A service's probes; ``health_url`` is the probe named ``health``."""
    probes = list(service.probes)
    if service.health_url is not None:
        probes.insert(0, ProbeConfig(name=HEALTH, url=service.health_url))
    return probes


class Prober:
    """Runs probes over one shared HTTP client; every request within its total timeout.

    The client keeps no idle connections: each probe connects anew (as a
    user's first request would), which also lets the deadline watch every
    connection it uses. A probe with ``tls`` runs on a client of its own
    settings, made at its first use after :meth:`forget_tls` (a reload), so
    that replaced certificate files apply.
    """

    def __init__(self, transport: httpx.BaseTransport | None = None) -> None:
        self._transport = transport
        self._client = self._new_client(None)
        self._lock = threading.Lock()
        self._tls_clients: dict[TLSConfig, httpx.Client] = {}
        self._secrets: dict[tuple[str, tuple[tuple[str, str], ...]], list[str]] = {}

    def _new_client(self, tls: TLSConfig | None) -> httpx.Client:
        return httpx.Client(
            transport=self._transport,
            follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0),
            verify=True if tls is None else ssl_context(tls),
        )

    def _client_for(self, probe: ProbeConfig) -> httpx.Client:
        if probe.tls is None:
            return self._client
        with self._lock:
            client = self._tls_clients.get(probe.tls)
            if client is None:
                if probe.tls.insecure_skip_verify:
                    log.warning(
                        "probe: TLS certificates are not verified (insecure_skip_verify)",
                        probe=probe.name,
                        url=probe.url,
                    )
                client = self._tls_clients[probe.tls] = self._new_client(probe.tls)
            return client

    def forget_tls(self) -> None:
        """Read the TLS files again at each probe's next use (after a reload).

        The old clients are left to the probes that may still run on them; they keep
        no connections, so nothing is held open.
        """
        with self._lock:
            self._tls_clients = {}

    def close(self) -> None:
        self._client.close()
        with self._lock:
            clients, self._tls_clients = list(self._tls_clients.values()), {}
        for client in clients:
            client.close()

    def secrets(self, probe: ProbeConfig) -> list[str]:
        """What ``probe`` sends that no reason may show (see
        :func:`~rollbackd.httpconfig.secrets_sent`), kept out of the HTTP libraries' logs
        from its first use."""
        key = (probe.url, tuple(probe.headers.items()))
        found = self._secrets.get(key)
        if found is None:
            found = self._secrets[key] = secrets_sent(probe.headers, [probe.url])
            hide_in_logs(found)
        return found

    def probe(self, service: str, probe: ProbeConfig) -> ProbeResult:
        """Run one probe now; never raises for anything the network, server or daemon does."""
        secrets = self.secrets(probe)
        try:
            return self._probe(service, probe, secrets)
        except Exception as exc:  # noqa: BLE001 -- a probe's own bug must not stop the cycle
            return ProbeResult(
                service,
                probe.name,
                False,
                f"{probe.method} {probe.url} could not be probed: {type(exc).__name__}: "
                + redact(str(exc), secrets),
                measured=False,
            )

    def _probe(self, service: str, probe: ProbeConfig, secrets: list[str]) -> ProbeResult:
        seconds = probe.timeout.total_seconds()
        where = f"{probe.method} {probe.url}"
        started = time.monotonic()
        with within(seconds) as deadline:
            try:
                with self._client_for(probe).stream(
                    probe.method,
                    probe.url,
                    headers=probe.headers,
                    timeout=httpx.Timeout(seconds),
                    extensions=_extensions(probe.tls),
                ) as response:
                    body = _head(response, BODY_LIMIT)
            except (httpx.HTTPError, OSError) as exc:
                return _failure(service, probe, exc, deadline, secrets)
        latency = time.monotonic() - started
        if response.status_code not in probe.expect_status:
            expected = " or ".join(str(c) for c in probe.expect_status)
            return ProbeResult(
                service,
                probe.name,
                False,
                f"{where} answered {response.status_code}, expected {expected}",
                latency,
            )
        text = body.decode(response.encoding or "utf-8", errors="replace")
        if probe.body_match is not None and re.search(probe.body_match, text) is None:
            read = f" (its first {format_size(BODY_LIMIT)})" if len(body) >= BODY_LIMIT else ""
            return ProbeResult(
                service,
                probe.name,
                False,
                f"{where} answered {response.status_code} but the body{read} does not "
                f"match {probe.body_match!r}",
                latency,
            )
        if probe.latency_budget is not None and latency > probe.latency_budget.total_seconds():
            return ProbeResult(
                service,
                probe.name,
                False,
                f"{where} took {latency:.3f}s, over its budget of "
                f"{format_duration(probe.latency_budget)}",
                latency,
            )
        return ProbeResult(
            service,
            probe.name,
            True,
            f"{where} answered {response.status_code} in {latency:.3f}s",
            latency,
        )

    def probe_all(
        self, services: Iterable[ServiceConfig], names: set[str] | None = None
    ) -> list[ProbeResult]:
        """Every probe of every service (only those in ``names`` if given)."""
        results = []
        for service in services:
            for probe in probes_of(service):
                if names is None or probe.name in names:
                    results.append(self.probe(service.name, probe))
        return results


def _extensions(tls: TLSConfig | None) -> dict[str, object]:
    """httpx's per-request extensions: the deadline's watch, and ``server_name`` for SNI."""
    if tls is not None and tls.server_name:
        return {"trace": watch_httpx, "sni_hostname": tls.server_name}
    return {"trace": watch_httpx}


def _head(response: httpx.Response, limit: int) -> bytes:
    """The first ``limit`` bytes of the body; the rest is left unread."""
    parts: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        parts.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(parts)[:limit]


def _failure(
    service: str, probe: ProbeConfig, exc: Exception, deadline: Deadline, secrets: list[str]
) -> ProbeResult:
    """The verdict on a probe that got no whole answer: failing, or not tried at all; what
    the error quotes without ``secrets``."""
    where = f"{probe.method} {probe.url}"
    said = redact(str(exc), secrets)

    def failing(reason: str) -> ProbeResult:
        return ProbeResult(service, probe.name, False, reason)

    def not_tried(why: str) -> ProbeResult:
        return ProbeResult(
            service,
            probe.name,
            False,
            f"{where} could not be probed: {why}: rollbackd's own trouble, not the service's",
            measured=False,
        )

    timed_out = f"{where} timed out after {format_duration(probe.timeout)}"
    if deadline.expired or not deadline.left():
        return failing(timed_out)
    if isinstance(exc, httpx.PoolTimeout):
        return not_tried("no free connection")
    if isinstance(exc, httpx.TimeoutException):
        return failing(timed_out)
    cause = _os_error(exc)
    if isinstance(cause, ssl.SSLError):
        return failing(f"{where} failed: TLS: {redact(str(cause), secrets)}")
    if isinstance(cause, socket.gaierror):
        return not_tried(f"cannot resolve its host ({cause.strerror or cause})")
    if cause is not None and cause.errno in SERVICE_ERRNOS:
        return failing(f"{where} failed: {type(exc).__name__}: {cause.strerror or said}")
    if cause is not None and cause.errno is not None:
        name = errno.errorcode.get(cause.errno, str(cause.errno))
        return not_tried(f"{cause.strerror or cause} ({name})")
    if isinstance(exc, httpx.RemoteProtocolError | httpx.DecodingError):
        return failing(f"{where} failed: {type(exc).__name__}: {said}")
    return not_tried(f"{type(exc).__name__}: {said}")


def _os_error(exc: BaseException) -> OSError | None:
    """The operating system's error behind an httpx error (httpx wraps httpcore's, which
    wraps the socket's), if there is one."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
