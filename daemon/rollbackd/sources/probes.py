"""HTTP health and smoke probes (the playbook's critical-path checks), on httpx.

A probe that fails, answers an unexpected status, misses its body match,
exceeds its latency budget or times out is a *measurement* of 0 (the service
is failing), not missing data: this is how a complete outage is caught when
the application exports no metrics at all. A passing probe measures 1.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

import httpx

from rollbackd.config import ProbeConfig, ServiceConfig
from rollbackd.durations import format_duration

HEALTH = "health"


@dataclass(frozen=True)
class ProbeResult:
    """One probe's verdict: passing or not, and why, in one line."""

    service: str
    probe: str
    passed: bool
    reason: str
    latency: float | None = None

    @property
    def value(self) -> float:
        return 1.0 if self.passed else 0.0


def probes_of(service: ServiceConfig) -> list[ProbeConfig]:
    """A service's probes; ``health_url`` is the probe named ``health``."""
    probes = list(service.probes)
    if service.health_url is not None:
        probes.insert(0, ProbeConfig(name=HEALTH, url=service.health_url))
    return probes


class Prober:
    """Runs probes over one shared HTTP client; every request has its timeout."""

    def __init__(self, transport: httpx.BaseTransport | None = None) -> None:
        self._client = httpx.Client(transport=transport, follow_redirects=False)

    def close(self) -> None:
        self._client.close()

    def probe(self, service: str, probe: ProbeConfig) -> ProbeResult:
        """Run one probe now; never raises for anything the network or server does."""
        seconds = probe.timeout.total_seconds()
        started = time.monotonic()
        try:
            response = self._client.request(probe.method, probe.url, timeout=httpx.Timeout(seconds))
        except httpx.TimeoutException:
            return ProbeResult(
                service,
                probe.name,
                False,
                f"{probe.method} {probe.url} timed out after {format_duration(probe.timeout)}",
            )
        except httpx.HTTPError as exc:
            return ProbeResult(
                service,
                probe.name,
                False,
                f"{probe.method} {probe.url} failed: {type(exc).__name__}: {exc}",
            )
        latency = time.monotonic() - started
        where = f"{probe.method} {probe.url}"
        if response.status_code not in probe.expect_status:
            expected = " or ".join(str(c) for c in probe.expect_status)
            return ProbeResult(
                service,
                probe.name,
                False,
                f"{where} answered {response.status_code}, expected {expected}",
                latency,
            )
        if probe.body_match is not None and re.search(probe.body_match, response.text) is None:
            return ProbeResult(
                service,
                probe.name,
                False,
                f"{where} answered {response.status_code} but the body does not match "
                f"{probe.body_match!r}",
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


def longest_timeout(services: Iterable[ServiceConfig]) -> timedelta:
    """The longest a round of probes may wait on one probe."""
    return max((p.timeout for s in services for p in probes_of(s)), default=timedelta(0))
