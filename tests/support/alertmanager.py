"""A real Alertmanager for integration tests, sending its webhook to a rollbackd.

``/usr/bin/prometheus-alertmanager`` (Debian package prometheus-alertmanager)
runs on a free loopback port with gossip off (``--cluster.listen-address=``),
its storage and log in a directory the caller owns, and a generated config
whose single receiver is a webhook to rollbackd's ``/webhooks/alertmanager``
with a bearer token and ``send_resolved: true``. The route waits 1s before
the first notification of a group and 1s between updates, so an alert posted
with :meth:`Alertmanager.post_alert` reaches rollbackd within a few seconds.

``web_config`` is the content of a ``--web.config.file`` (``basic_auth_users``,
``tls_server_config``), as for :class:`~tests.support.processes.Prometheus`: with
``tls_server_config`` it serves HTTPS, and ``client`` is what this helper's own
requests then need (httpx's ``auth``, ``verify``).

Usage::

    am = Alertmanager(tmp_path / "am", "http://127.0.0.1:9095", token="s3cret").start()
    am.post_alert({"alertname": "WebDown", "service": "web", "rollbackd_trigger": "outage"})
    am.stop()

A missing binary is a :class:`~tests.support.processes.ProcessError` naming
the package; :func:`require_alertmanager` turns it into a test failure, never
a skip.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.processes import LOOPBACK, ProcessError, WebGuarded

ALERTMANAGER_BIN = Path("/usr/bin/prometheus-alertmanager")
ALERTMANAGER_HINT = "install Debian package prometheus-alertmanager (make test does this)"
WEBHOOK_PATH = "/webhooks/alertmanager"


def require_alertmanager(binary: Path = ALERTMANAGER_BIN) -> None:
    """Fail (not skip) the test when the Debian prometheus-alertmanager package is missing."""
    if not os.access(binary, os.X_OK):
        pytest.fail(f"{binary} not found: {ALERTMANAGER_HINT}", pytrace=False)


def _instant(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, as Alertmanager's API expects."""
    if moment.tzinfo is None:
        raise ValueError("alert times need a time zone")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Alertmanager(WebGuarded):
    """``prometheus-alertmanager`` on a free loopback port, webhooking to ``rollbackd_url``.

    Files live in ``workdir``: ``alertmanager.yml``, ``alertmanager.log`` and
    ``data/`` (silences and the notification log). :meth:`stop` then
    :meth:`start` reuses both the storage and the port.
    """

    label = "Alertmanager"

    def __init__(
        self,
        workdir: Path,
        rollbackd_url: str,
        token: str,
        *,
        port: int | None = None,
        group_wait: str = "1s",
        group_interval: str = "1s",
        repeat_interval: str = "1h",
        binary: Path = ALERTMANAGER_BIN,
        start_timeout: float = 30.0,
        web_config: Mapping[str, Any] | None = None,
        client: Mapping[str, Any] | None = None,
        route_prefix: str = "",
    ) -> None:
        self.workdir = workdir.absolute()
        self.guard(self.workdir, web_config, client, route_prefix)
        super().__init__(
            self.workdir,
            self.workdir / "alertmanager.log",
            port=port,
            start_timeout=start_timeout,
        )
        self.webhook_url = rollbackd_url.rstrip("/") + WEBHOOK_PATH
        self.token = token
        self.group_wait = group_wait
        self.group_interval = group_interval
        self.repeat_interval = repeat_interval
        self.binary = binary
        self.config_path = self.workdir / "alertmanager.yml"
        self.storage_dir = self.workdir / "data"

    def config(self) -> dict[str, Any]:
        """The configuration written to ``alertmanager.yml`` (JSON, which is YAML)."""
        return {
            "route": {
                "receiver": "rollbackd",
                "group_by": ["..."],
                "group_wait": self.group_wait,
                "group_interval": self.group_interval,
                "repeat_interval": self.repeat_interval,
            },
            "receivers": [
                {
                    "name": "rollbackd",
                    "webhook_configs": [
                        {
                            "url": self.webhook_url,
                            "send_resolved": True,
                            "http_config": {
                                "authorization": {"type": "Bearer", "credentials": self.token}
                            },
                        }
                    ],
                }
            ],
        }

    def write_config(self) -> None:
        """Write ``alertmanager.yml`` (and ``web.yml``) from the current attributes."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2), encoding="utf-8")
        self.write_web_config()

    def command(self) -> list[str]:
        """The argv Alertmanager is started with."""
        return [
            str(self.binary),
            f"--config.file={self.config_path}",
            f"--storage.path={self.storage_dir}",
            f"--web.listen-address={LOOPBACK}:{self.port}",
            "--cluster.listen-address=",
            *self.web_config_args(),
            *self.route_prefix_args(),
        ]

    def prepare(self) -> None:
        """Check the binary, then write the config and create the storage directory."""
        if not os.access(self.binary, os.X_OK):
            raise ProcessError(f"{self.binary} is missing: {ALERTMANAGER_HINT}")
        self.write_config()
        self.storage_dir.mkdir(parents=True, exist_ok=True)

    def post_alert(
        self,
        labels: Mapping[str, str],
        annotations: Mapping[str, str] | None = None,
        starts_at: datetime | None = None,
        ends_at: datetime | None = None,
    ) -> None:
        """Post one alert through the API v2 (``POST /api/v2/alerts``), as Prometheus would.

        Without ``ends_at`` the alert fires until Alertmanager's resolve timeout
        (5m); an ``ends_at`` in the past resolves it. Raises ProcessError with
        Alertmanager's answer when it refuses the alert.
        """
        alert: dict[str, Any] = {"labels": dict(labels)}
        if annotations:
            alert["annotations"] = dict(annotations)
        if starts_at is not None:
            alert["startsAt"] = _instant(starts_at)
        if ends_at is not None:
            alert["endsAt"] = _instant(ends_at)
        response = httpx.post(
            f"{self.url}/api/v2/alerts", json=[alert], timeout=10.0, **self.client_options()
        )
        if response.status_code != httpx.codes.OK:
            raise ProcessError(
                f"POST /api/v2/alerts {alert}: {response.status_code} {response.text}"
            )

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts Alertmanager holds now (``GET /api/v2/alerts``)."""
        response = httpx.get(f"{self.url}/api/v2/alerts", timeout=10.0, **self.client_options())
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()
        return result
