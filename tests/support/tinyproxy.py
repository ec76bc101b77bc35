"""A real forward proxy for integration tests: ``tinyproxy`` on a loopback port.

``/usr/bin/tinyproxy`` (Debian package tinyproxy) runs in the foreground (``-d``) with a
generated config in a directory the caller owns: it listens on 127.0.0.1 only, lets
127.0.0.1 in, forwards plain HTTP and tunnels any port with ``CONNECT`` (for HTTPS). It
needs no privilege: run by root it stays root (it warns that no ``User`` is set), run by
anyone else it is that user. Its log (stdout, level ``Connect``) names every request
it forwarded, which is how a test knows that a client really went through it.

Usage::

    proxy = TinyProxy(tmp_path / "proxy").start()
    ...  # a client with proxy_url = proxy.url
    assert any(line.startswith("GET http://127.0.0.1:9090/") for line in proxy.requests())
    proxy.stop()

A missing binary is a :class:`~tests.support.processes.ProcessError` naming the package;
:func:`require_tinyproxy` turns it into a test failure, never a skip.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.support.processes import LOOPBACK, ProcessError, Supervised

TINYPROXY_BIN = Path("/usr/bin/tinyproxy")
TINYPROXY_HINT = "install Debian package tinyproxy (make test does this)"
_REQUEST = re.compile(r"Request \(file descriptor \d+\): (.*)$")


def require_tinyproxy(binary: Path = TINYPROXY_BIN) -> None:
    """Fail (not skip) the test when the Debian tinyproxy package is missing."""
    if not os.access(binary, os.X_OK):
        pytest.fail(f"{binary} not found: {TINYPROXY_HINT}", pytrace=False)


class TinyProxy(Supervised):
    """``tinyproxy -d`` on a free loopback port; its config and log in ``workdir``."""

    label = "tinyproxy"
    ready_path = "/"
    ready_status = None
    """It answers a request that is not for a proxy with 400: it is up."""
    stop_timeout = 5.0

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        binary: Path = TINYPROXY_BIN,
        start_timeout: float = 10.0,
    ) -> None:
        self.workdir = workdir.absolute()
        super().__init__(
            self.workdir, self.workdir / "tinyproxy.log", port=port, start_timeout=start_timeout
        )
        self.binary = binary
        self.config_path = self.workdir / "tinyproxy.conf"

    def config(self) -> str:
        """The content of ``tinyproxy.conf`` (without a ``ConnectPort`` line, CONNECT may reach
        any port)."""
        return (
            f"Port {self.port}\n"
            f"Listen {LOOPBACK}\n"
            f"Allow {LOOPBACK}\n"
            "Timeout 10\n"
            "MaxClients 50\n"
            "LogLevel Connect\n"
        )

    def command(self) -> list[str]:
        """The argv tinyproxy is started with (foreground, logging to stdout)."""
        return [str(self.binary), "-d", "-c", str(self.config_path)]

    def prepare(self) -> None:
        """Check the binary, then write the config."""
        if not os.access(self.binary, os.X_OK):
            raise ProcessError(f"{self.binary} is missing: {TINYPROXY_HINT}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config(), encoding="utf-8")

    def requests(self) -> list[str]:
        """The request lines the proxy forwarded so far, oldest first
        (``GET http://host:port/path?query HTTP/1.1``, ``CONNECT host:port HTTP/1.1``)."""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return [m.group(1) for m in map(_REQUEST.search, text.splitlines()) if m]
