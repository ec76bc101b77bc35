"""A real PostgreSQL for tests: ``initdb`` once in a temporary directory, ``postgres`` on a
free loopback port, a fresh database per test.

PostgreSQL refuses to run as root: when the tests run as root, the server runs as the
``postgres`` user (Debian's package creates it) or ``nobody``, in a directory of its own
under the system's temporary directory (pytest's are private to root). ``initdb`` is found
on PATH or under ``/usr/lib/postgresql/*/bin``, where Debian puts it. ``fsync=off``: the
tests never survive a power cut, and a CREATE DATABASE takes milliseconds.

Clients connect over TCP with a password (scram-sha-256), as rollbackd would to a real
server: :attr:`PostgresServer.password` is the superuser's, so tests can check it never
shows. Usage::

    with PostgresServer() as server:
        url = server.create_database()   # postgresql://rollbackd:PASSWORD@127.0.0.1:PORT/test_1
        ...
        server.stop(); server.start()    # the same data, the same port
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import psycopg

from tests.support.processes import LOOPBACK, ProcessError, free_port, tail

INSTALL_HINT = "install Debian package postgresql (make test does this)"
SUPERUSER = "rollbackd"


def postgres_bin_dir() -> Path:
    """Where ``initdb`` and ``postgres`` are: on PATH, else the newest Debian version's."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if not versions:
        raise ProcessError(
            f"initdb is neither on PATH nor in /usr/lib/postgresql/*/bin: {INSTALL_HINT}"
        )
    return versions[-1].parent


def _server_user() -> tuple[int, int] | None:
    """(uid, gid) the server runs as when this process is root; None: as this process."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            user = pwd.getpwnam(name)
            return user.pw_uid, user.pw_gid
    raise ProcessError("running as root, and neither user postgres nor nobody exists")


class PostgresServer:
    """One PostgreSQL cluster for a test session; :meth:`create_database` for each test."""

    label = "PostgreSQL"

    def __init__(self, start_timeout: float = 60.0) -> None:
        self.bin_dir = postgres_bin_dir()
        self.workdir = Path(tempfile.mkdtemp(prefix="rollbackd-pg-"))
        self.data_dir = self.workdir / "data"
        self.socket_dir = self.workdir / "socket"
        self.log_path = self.workdir / "postgres.log"
        self.port = free_port()
        self.password = "s3cret-" + os.urandom(6).hex()
        self.start_timeout = start_timeout
        self._user = _server_user()
        self._process: subprocess.Popen[bytes] | None = None
        self._databases = 0
        self._initdb()

    def _as_server_user(self) -> None:
        """In the child, before exec: become the server's user (PostgreSQL refuses root)."""
        if self._user is not None:
            uid, gid = self._user
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)

    def _initdb(self) -> None:
        self.socket_dir.mkdir()
        password_file = self.workdir / "password"
        password_file.write_text(self.password, encoding="utf-8")
        if self._user is not None:
            for path in (self.workdir, self.socket_dir, password_file):
                os.chown(path, *self._user)
        result = subprocess.run(
            [
                str(self.bin_dir / "initdb"),
                "--pgdata",
                str(self.data_dir),
                "--username",
                SUPERUSER,
                "--pwfile",
                str(password_file),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            preexec_fn=self._as_server_user,
        )
        password_file.unlink()
        if result.returncode != 0:
            raise ProcessError(f"initdb failed ({result.returncode}): {result.stderr[-2000:]}")

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while it runs (its backends are its children)."""
        return self._process.pid if self.running and self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def url(self, database: str = "postgres", password: str | None = None) -> str:
        """``postgresql://rollbackd:PASSWORD@127.0.0.1:PORT/DATABASE`` (the real password)."""
        secret = self.password if password is None else password
        return f"postgresql://{SUPERUSER}:{secret}@{LOOPBACK}:{self.port}/{database}"

    def start(self) -> Self:
        """Start the server (on the same data and port as before) and wait until it answers."""
        if self.running:
            raise ProcessError(f"{self.label} is already running")
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [
                    str(self.bin_dir / "postgres"),
                    "-D",
                    str(self.data_dir),
                    "-p",
                    str(self.port),
                    "-c",
                    f"listen_addresses={LOOPBACK}",
                    "-c",
                    f"unix_socket_directories={self.socket_dir}",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=200",
                ],
                stdout=log,
                stderr=log,
                preexec_fn=self._as_server_user,  # noqa: PLW1509 -- setuid only, no lock taken
            )
        deadline = time.monotonic() + self.start_timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ProcessError(
                    f"{self.label} exited with {self._process.returncode}; "
                    f"log {self.log_path}:\n{tail(self.log_path)}"
                )
            try:
                with psycopg.connect(self.url(), connect_timeout=2):
                    return self
            except psycopg.OperationalError as exc:
                last = str(exc).strip()
            time.sleep(0.05)
        self.stop()
        raise ProcessError(
            f"{self.label} not ready within {self.start_timeout:g}s (last: {last}); "
            f"log {self.log_path}:\n{tail(self.log_path)}"
        )

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT: sessions are cut, as a crash or a failover would), then wait."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGINT)
        try:
            self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)

    def create_database(self) -> str:
        """A new, empty database; its URL (with the password)."""
        self._databases += 1
        name = f"test_{self._databases}"
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=5) as admin:
            # PostgreSQL 15 copies a database page by page through the WAL by default;
            # copying the files is faster, and durable enough for a test.
            strategy = " STRATEGY FILE_COPY" if admin.info.server_version >= 150000 else ""
            admin.execute(f"CREATE DATABASE {name}{strategy}")
        return self.url(name)

    def remove(self) -> None:
        """Stop the server and delete its files."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.remove()
