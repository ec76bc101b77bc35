"""Talking to a running daemon's API, for the CLI (``status``, ``approve``, ``rollback`` …)."""

from __future__ import annotations

from typing import Any

import httpx

from rollbackd.config import Config
from rollbackd.errors import DaemonRefused, DaemonUnavailable, NoDaemon
from rollbackd.text import one_line

TIMEOUT = httpx.Timeout(10.0)


def base_url(config: Config) -> str:
    """Where the daemon listens, as a URL this host can reach."""
    host = config.daemon.host
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 -- comparing, not binding
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.daemon.port}"


class DaemonClient:
    """A small synchronous client; the token goes in a header and nowhere else."""

    def __init__(
        self,
        config: Config,
        token: str | None,
        transport: httpx.BaseTransport | None = None,
        *,
        url: str | None = None,
    ) -> None:
        """``url``: where the daemon is (e.g. ``[daemon] public_url``); default ``listen``."""
        self.url = url.rstrip("/") if url else base_url(config)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(
            base_url=self.url, headers=headers, timeout=TIMEOUT, transport=transport
        )

    def get(self, path: str, **params: Any) -> Any:
        return self._send("GET", path, params)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._send("POST", path, {}, body)

    def text(self, path: str, **params: Any) -> str:
        response = self._request("GET", path, params)
        return response.text

    def _send(
        self, method: str, path: str, params: dict[str, Any], body: dict[str, Any] | None = None
    ) -> Any:
        return self._request(method, path, params, body).json()

    def _request(
        self, method: str, path: str, params: dict[str, Any], body: dict[str, Any] | None = None
    ) -> httpx.Response:
        try:
            response = self._client.request(method, path, params=params, json=body)
        except httpx.ConnectError:
            raise NoDaemon(
                f"the daemon at {self.url} is not running (connection refused); start it with "
                "`rollbackd run` or `systemctl start rollbackd`"
            ) from None
        except httpx.HTTPError as exc:
            raise DaemonUnavailable(f"the daemon at {self.url} did not answer: {exc}") from None
        if response.status_code >= 400:
            try:
                message = str(response.json().get("error", response.text))
            except ValueError:
                message = one_line(response.text, 200)
            raise DaemonRefused(response.status_code, f"{response.status_code}: {message}")
        return response
