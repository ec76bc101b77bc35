"""Helpers of the reliability suite: tokens, stub HTTP servers, git worlds, daemons.

- :class:`StubServer` answers HTTP on a loopback port with whatever a test's
  responder says, including answers that come late (held on an event that
  :meth:`StubServer.stop` sets, so a slow answer never holds up teardown) or
  trickle in byte by byte.
- :func:`daemon_process` runs ``python -m rollbackd run`` in its own process
  group, so that a crash can be simulated with SIGKILL of the daemon alone and
  the test can still wait for the git commands it left running to finish.
- :func:`in_process_daemon` builds a real daemon (:class:`~rollbackd.runtime.Runtime`)
  on a :class:`~rollbackd.testing.FixedClock` whose recovery watch sleeps by
  moving that clock, so simulated hours take seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from rollbackd.journal import SqliteJournal, journal_path
from rollbackd.loader import load
from rollbackd.runtime import Runtime
from rollbackd.sources import MetricSource
from rollbackd.testing import FixedClock
from tests.support.processes import LOOPBACK, RollbackdProcess, free_port

ROLES = ("admin", "senior_admin", "team", "database", "ci", "alertmanager", "viewer")
TOKENS = {
    role: f"rel-{role.replace('_', '-')}-{hashlib.sha256(b'rel' + role.encode()).hexdigest()[:24]}"
    for role in ROLES
}
"""One distinctive token per role: a leak of any of them is easy to search for."""

GIT_ENV = {
    "GIT_AUTHOR_NAME": "dev",
    "GIT_AUTHOR_EMAIL": "dev@example.invalid",
    "GIT_COMMITTER_NAME": "dev",
    "GIT_COMMITTER_EMAIL": "dev@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
}


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def tokens_toml() -> str:
    """``[[tokens]]`` tables for :data:`TOKENS`, stored as SHA-256 as the config requires."""
    return "".join(
        f'[[tokens]]\nname = "{role.replace("_", "-")}"\nsha256 = "{sha256(token)}"\n'
        f'role = "{role}"\n'
        for role, token in TOKENS.items()
    )


def bearer(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def wait_until(what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


# -- stub HTTP servers -------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """What a stub answers: status, body, and how: at once, after ``delay``, or trickled."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    delay: float = 0.0
    trickle: float = 0.0
    """Seconds between single bytes of the body (headers go out at once)."""
    trickle_headers: float = 0.0
    """Seconds between single bytes of the status line and headers (a slow-loris answer)."""
    endless: bytes = b""
    """Sent again and again after ``body``, without a Content-Length, until the client hangs
    up or the stub stops: an answer without end."""


@dataclass(frozen=True)
class Received:
    """One request a stub received."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes


Responder = Callable[[Received], Reply]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    stub: StubServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: a client that hung up (a timed-out query) is expected here."""


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        with self.server.stub.lock:
            self.server.stub.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.stub.lock:
            self.server.stub.connections.discard(self.connection)
        super().finish()

    def _serve(self) -> None:
        stub = self.server.stub
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        received = Received(self.command, self.path, dict(self.headers.items()), body)
        with stub.lock:
            stub.received.append(received)
        reply = stub.responder(received)
        if reply.delay and stub.released.wait(reply.delay):
            return  # stopping: never answer, never hold up teardown
        if reply.trickle_headers:
            self._trickle_headers(reply)
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        if reply.endless:
            self.send_header("Connection", "close")
            self.end_headers()
            self._send_endlessly(reply)
            return
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if not reply.trickle:
            self.wfile.write(reply.body)
            return
        for index in range(len(reply.body)):
            self.wfile.write(reply.body[index : index + 1])
            self.wfile.flush()
            if stub.released.wait(reply.trickle):
                return

    def _trickle_headers(self, reply: Reply) -> None:
        head = (
            f"HTTP/1.1 {reply.status} Whatever\r\nContent-Type: {reply.content_type}\r\n"
            f"Content-Length: {len(reply.body)}\r\n\r\n"
        ).encode()
        for index in range(len(head)):
            self.wfile.write(head[index : index + 1])
            self.wfile.flush()
            if self.server.stub.released.wait(reply.trickle_headers):
                return
        self.wfile.write(reply.body)

    def _send_endlessly(self, reply: Reply) -> None:
        self.close_connection = True
        self.wfile.write(reply.body)
        while not self.server.stub.released.is_set():
            try:
                self.wfile.write(reply.endless)
            except OSError:
                return  # the client hung up, as it should

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a test reads ``StubServer.received`` instead."""


class StubServer:
    """A threaded HTTP server on 127.0.0.1 answering with ``responder``; stop() never blocks."""

    def __init__(self, responder: Responder, port: int | None = None) -> None:
        self.responder = responder
        self.port = port or free_port()
        self.received: list[Received] = []
        self.connections: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.released = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> StubServer:
        server = _Server((LOOPBACK, self.port), _Handler)
        server.stub = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection, as a stopped process would."""
        self.released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self.lock:
            connections = list(self.connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)


def json_reply(document: Any, status: int = 200) -> Reply:
    return Reply(status, json.dumps(document).encode())


# -- git worlds --------------------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        text=True,
        env={**GIT_ENV, "HOME": str(repo.parent)},
        timeout=60,
    ).stdout.strip()


def commit(clone: Path, text: str, message: str) -> str:
    """Write ``app.toml``, commit it, push to origin main; the new commit's sha."""
    (clone / "app.toml").write_text(text, encoding="utf-8")
    git(clone, "add", "app.toml")
    git(clone, "commit", "-q", "-m", message)
    git(clone, "push", "-q", "origin", "HEAD:refs/heads/main")
    return git(clone, "rev-parse", "HEAD")


def git_world(root: Path) -> tuple[Path, Path, str]:
    """A bare remote and a clone with one commit (v1) pushed: (remote, clone, v1's sha)."""
    remote, clone = root / "remote.git", root / "web"
    subprocess.run(
        ["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True, timeout=60
    )
    subprocess.run(
        ["git", "clone", "-q", str(remote), str(clone)], check=True, env=GIT_ENV, timeout=60
    )
    git(clone, "checkout", "-q", "-b", "main")
    v1 = commit(clone, 'version = "v1"\n', "v1: the good release")
    return remote, clone, v1


def revert_subjects(remote: Path) -> list[str]:
    """Subjects of rollbackd's revert commits on the remote's main, newest first."""
    subjects = git(remote, "log", "--format=%s", "main").splitlines()
    return [s for s in subjects if s.startswith("rollbackd: revert to")]


# -- rollbackd run as a process ----------------------------------------------------------------


def daemon_process(config: Path, port: int, log_dir: Path) -> RollbackdProcess:
    """``rollbackd run`` in its own process group with :data:`TOKENS`, ready for a crash."""
    return RollbackdProcess(config, port, log_dir, TOKENS, own_group=True)


# -- the API of an in-process daemon, served for real --------------------------------------------


class LiveServer:
    """The API of an in-process daemon, served by its runtime on a free loopback port."""

    def __init__(self, daemon: Runtime) -> None:
        self.daemon = daemon

    @property
    def url(self) -> str:
        return self.daemon.url

    def start(self, timeout: float = 15.0) -> LiveServer:
        """Serve (restoring the daemon first if that is not done yet)."""
        self.daemon.start(timeout)
        return self

    def stop(self) -> None:
        self.daemon.stop()

    def get(self, path: str, role: str | None = None) -> httpx.Response:
        headers = bearer(role) if role else {}
        return httpx.get(self.url + path, headers=headers, timeout=10)


# -- a daemon in this process on a fake clock ---------------------------------------------------


def in_process_daemon(
    root: Path,
    config: str,
    rules: str,
    clock: FixedClock,
    metrics_source: MetricSource | None = None,
) -> Runtime:
    """A real daemon over ``config`` (``rules`` in ``rules/rules.toml``) on ``clock``.

    The recovery watch sleeps by advancing ``clock`` instead of waiting, so a
    15-minute window passes at once; run rollbacks to their end with
    :func:`finish_rollbacks` before moving the clock yourself.
    """
    (root / "rules").mkdir(parents=True, exist_ok=True)
    (root / "rules" / "rules.toml").write_text(rules, encoding="utf-8")
    path = root / "config.toml"
    path.write_text(config, encoding="utf-8")
    loaded = load(path, env={})
    journal = SqliteJournal(journal_path(loaded.config.daemon.state_dir))
    daemon = Runtime(
        loaded,
        journal,
        path,
        cycles=False,  # the tests run each cycle, on their clock
        port=free_port(),
        metrics_source=metrics_source,
        clock=clock,
    )
    watcher = daemon.state.checklist.parts.watcher
    watcher.sleep = lambda seconds: clock.advance(timedelta(seconds=seconds))
    return daemon


def finish_rollbacks(daemon: Runtime, timeout: float = 60.0) -> int:
    """Wait until every rollback the daemon started has ended; how many there were."""
    futures = list(daemon.incidents.running.values())
    for future in futures:
        future.result(timeout=timeout)
    return len(futures)


def close_daemon(daemon: Runtime) -> None:
    daemon.stop()
