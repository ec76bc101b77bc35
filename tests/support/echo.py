"""A peer that repeats the request it was sent: a gateway answering "invalid token …",
a debugging echo server, or a hostile server doing it on purpose.

:class:`EchoServer` stands on a loopback port for Prometheus, Alertmanager, a probe's
target, a notifier's receiver or a forward proxy (an ``http://`` request through a
proxy arrives with the whole URL as its path). Each answer, chosen by the path,
repeats what came: its request line, every header (``Authorization`` with its base64
``user:password``, ``Proxy-Authorization``, a secret header), and what basic auth
decodes to.
"""

from __future__ import annotations

import base64
import binascii
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from tests.support.processes import LOOPBACK, free_port

GARBLED = "garbled"
"""Answer what no client can parse, quoting the request's headers in the broken line: a
header line without a colon (httpx stops there) and a chunk size (requests stops there)."""
_PLAIN = frozenset({"host", "accept", "accept-encoding", "connection", "user-agent"})


def _rank(name: str) -> int:
    """Where a header is repeated: credentials first, as "invalid token …" would (within
    what a client shows of an answer), then the other headers a client was told to send."""
    lowered = name.lower()
    if lowered in ("authorization", "proxy-authorization"):
        return 0 if lowered == "authorization" else 1
    return 3 if lowered in _PLAIN or lowered.startswith("content-") else 2


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    echo: EchoServer


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        headers = sorted(self.headers.items(), key=lambda item: _rank(item[0]))
        said = [f"{name}: {value}" for name, value in headers]
        for _, value in headers:
            scheme, _, credentials = value.partition(" ")
            if scheme.lower() == "basic":
                try:
                    said.append(f"basic auth of {base64.b64decode(credentials).decode()}")
                except (binascii.Error, UnicodeDecodeError):
                    continue
        secret = (
            "; ".join(
                f"{name} = {value}"
                for name, value in headers
                if name.lower() not in _PLAIN and not name.lower().startswith("content-")
            )
            or "nothing to repeat"
        )
        echo = self.server.echo
        with echo.lock:
            echo.received.append((self.requestline, dict(self.headers.items())))
        answer = echo.answer_to(urlsplit(self.path).path)
        body = "\n".join(["you sent:", *said, self.requestline]).encode()
        self.close_connection = True
        if answer == GARBLED:
            self.wfile.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
                + secret.encode()
                + b"\r\nConnection: close\r\n\r\n"
                + secret.encode()
                + b"\r\n"
            )
            return
        self.send_response(int(answer), f"Refused {secret}")
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a test reads ``EchoServer.received`` instead."""


class EchoServer:
    """A threaded HTTP server on 127.0.0.1 echoing every request (see the module).

    ``answers`` maps a path prefix to the status to refuse with, or :data:`GARBLED`;
    the longest prefix wins, and a path with none is refused with 500.
    """

    def __init__(self, answers: Mapping[str, int | str]) -> None:
        self.answers = dict(answers)
        self.port = free_port()
        self.received: list[tuple[str, dict[str, str]]] = []
        """Each request's line and headers, in order."""
        self.lock = threading.Lock()
        self._server = _Server((LOOPBACK, self.port), _Handler)
        self._server.echo = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def answer_to(self, path: str) -> int | str:
        prefixes = [prefix for prefix in self.answers if path.startswith(prefix)]
        return self.answers[max(prefixes, key=len)] if prefixes else 500

    def __enter__(self) -> EchoServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
