"""Real processes for integration tests: the demo app, Prometheus (and VictoriaMetrics), and
promtool backfill.

Everything listens on 127.0.0.1 on a free port, keeps its files in a directory
the caller owns (pytest's ``tmp_path`` in the fixtures), and is stopped with
SIGTERM, then SIGKILL when it does not exit in time. Every wait is bounded.

Usage::

    app = DemoApp(tmp_path / "app", service="web").start()
    app.set_fault(error_rate=0.2)
    prom = Prometheus(tmp_path / "prom", [("demo", app.target, {})]).start()
    prom.wait_for("up == 1", lambda result: len(result) == 1)
    app.stop(); prom.stop()

Prefer the fixtures in :mod:`tests.support.fixtures`, which always stop what
they started.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import httpx

REPO = Path(__file__).resolve().parent.parent.parent
PROMETHEUS_BIN = Path("/usr/bin/prometheus")
PROMTOOL_BIN = Path("/usr/bin/promtool")
INSTALL_HINT = "install Debian package prometheus (make test does this)"
VICTORIAMETRICS_BIN = Path("/usr/bin/victoria-metrics")
VICTORIAMETRICS_HINT = "install Debian package victoria-metrics (make test does this)"
LOOPBACK = "127.0.0.1"

Target = tuple[str, str, Mapping[str, str]]
"""A scrape target: (job name, "host:port", extra target labels)."""

Point = tuple[float, float]
"""(unix time in seconds, value)."""

QueryResult = list[dict[str, Any]]
"""The ``data.result`` of a Prometheus query: vectors, or matrices for range queries."""


def scrape_config(targets: Iterable[Target], interval: str) -> dict[str, Any]:
    """What Prometheus and VictoriaMetrics both read to scrape ``targets`` every ``interval``.

    honor_labels: the demo app labels its series by service itself, so a service target
    label (for ``up``) leaves them as they are instead of adding exported_service.
    """
    jobs: dict[str, list[dict[str, Any]]] = {}
    for job, address, labels in targets:
        jobs.setdefault(job, []).append({"targets": [address], "labels": dict(labels)})
    return {
        "global": {"scrape_interval": interval, "scrape_timeout": interval},
        "scrape_configs": [
            {"job_name": job, "honor_labels": True, "static_configs": groups}
            for job, groups in jobs.items()
        ],
    }


class ProcessError(RuntimeError):
    """A helper process did not start, did not become ready, or failed."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


Answer = Callable[[BaseHTTPRequestHandler], None]
"""What a loopback server does with one GET (see :func:`serving`)."""


@contextlib.contextmanager
def serving(answer: Answer, host: str = LOOPBACK) -> Iterator[str]:
    """``answer`` to every GET on ``host``, on a free port: its ``http://`` URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            answer(self)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer((host, 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file, or a note that there is none."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:]) or f"({path} is empty)"


def terminate(process: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; return the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait(timeout=timeout)


def _kill(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.kill()
    return process.wait(timeout=10)


class Supervised:
    """A child process on a loopback port, started, awaited and stopped alike for every server.

    Subclasses set ``label``, ``cwd`` and ``log_path`` (stderr, and stdout too
    unless ``stdout_path`` is set), and define :meth:`command`; they may
    override :meth:`prepare` and :meth:`env`.
    """

    label = "process"
    scheme = "http"
    ready_path = "/-/ready"
    ready_status: int | None = httpx.codes.OK
    """The status that means ready; None accepts any answer."""
    probe_timeout = 1.0
    stop_timeout = 15.0
    new_session = False
    preexec: Callable[[], object] | None = None
    """Run in the child before it execs (e.g. lowering its resource limits)."""

    def __init__(
        self, cwd: Path, log_path: Path, *, port: int | None, start_timeout: float
    ) -> None:
        self.cwd = cwd
        self.log_path = log_path
        self.stdout_path: Path | None = None
        self.port = port or free_port()
        self.start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (``https`` for a TLS server), without a trailing slash."""
        return f"{self.scheme}://{LOOPBACK}:{self.port}"

    def client_options(self) -> dict[str, Any]:
        """What this helper's own HTTP requests need to be let in (auth, TLS): httpx options."""
        return {}

    @property
    def running(self) -> bool:
        """Whether the process was started and has not exited."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id while running."""
        return self._process.pid if self.running and self._process else None

    def command(self) -> list[str]:
        """The argv the process is started with."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Create what the process needs before it starts (directories, config)."""

    def env(self) -> dict[str, str] | None:
        """The environment of the process; None inherits this one."""
        return None

    def start(self) -> Self:
        """Start the process and return once it answers ``ready_path``, so tests never race it."""
        if self.running:
            raise ProcessError(f"{self.label} is already running")
        self.prepare()
        out_path = self.stdout_path or self.log_path
        with out_path.open("ab") as out, self.log_path.open("ab") as err:
            self._process = subprocess.Popen(
                self.command(),
                cwd=self.cwd,
                stdout=out,
                stderr=err,
                env=self.env(),
                start_new_session=self.new_session,
                preexec_fn=self.preexec,  # noqa: PLW1509 -- a setrlimit, no lock taken
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last = "no answer yet"
        with httpx.Client(timeout=self.probe_timeout, **self.client_options()) as client:
            while time.monotonic() < deadline:
                process = self._process
                if process is None or process.poll() is not None:
                    code = process.returncode if process else None
                    raise ProcessError(
                        f"{self.label} exited with {code} before it answered {self.ready_path}; "
                        f"log {self.log_path}:\n{tail(self.log_path)}"
                    )
                try:
                    response = client.get(f"{self.url}{self.ready_path}")
                except httpx.TransportError as error:
                    last = repr(error)
                else:
                    if self.ready_status in (None, response.status_code):
                        return
                    last = f"{response.status_code} {response.text.strip()}"
                time.sleep(0.05)
        self.kill()
        raise ProcessError(
            f"{self.label} at {self.url} not ready within {self.start_timeout:g}s "
            f"(last: {last}); log {self.log_path}:\n{tail(self.log_path)}"
        )

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, wait (``stop_timeout`` by default), then SIGKILL; the exit code, if started."""
        if self._process is None:
            return None
        return terminate(self._process, self.stop_timeout if timeout is None else timeout)

    def kill(self) -> int | None:
        """SIGKILL at once, as a crash would; return the exit code."""
        if self._process is None:
            return None
        return _kill(self._process)

    def restart(self) -> Self:
        """Stop, then start again on the same port and files."""
        self.stop()
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class DemoApp(Supervised):
    """``python -m rollbackd.demoapp`` as a child process on a free loopback port.

    ``directory`` is the working directory and, unless ``app_dir`` says
    otherwise, the directory whose ``app.toml`` sets the initial behaviour.
    Logs (stdout, stderr) go to ``log_dir``, never into ``directory``, so that
    a git working tree stays clean. The port is kept across :meth:`restart`.
    """

    ready_path = "/health"
    ready_status = None
    stop_timeout = 10.0

    def __init__(
        self,
        directory: Path,
        *,
        service: str = "web",
        traffic: float = 20.0,
        app_dir: Path | None = None,
        state_file: Path | None = None,
        port: int | None = None,
        log_dir: Path | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        self.directory = directory.absolute()
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix=f"demoapp-{service}-"))
        self.stderr_path = self.log_dir / "stderr.log"
        super().__init__(self.directory, self.stderr_path, port=port, start_timeout=start_timeout)
        self.label = f"demo app {service}"
        self.service = service
        self.traffic = traffic
        self.app_dir = (app_dir or directory).absolute()
        self.state_file = state_file.absolute() if state_file else None
        self.stdout_path: Path = self.log_dir / "stdout.log"

    @property
    def target(self) -> str:
        """``127.0.0.1:PORT``, as a Prometheus scrape target."""
        return f"{LOOPBACK}:{self.port}"

    def scrape_target(self, job: str = "demo") -> Target:
        """This app as a scrape target labelled with its service, as rules on ``up`` need."""
        return (job, self.target, {"service": self.service})

    def restart_in_place(self) -> Self:
        """``POST /-/restart``: the app re-executes itself (same pid and port, counters reset).

        Returns once the new process answers; the old one stopped accepting
        connections before it answered, so the first answer is the new one's.
        """
        response = httpx.post(f"{self.url}/-/restart", timeout=10.0)
        if response.status_code != httpx.codes.OK:
            raise ProcessError(f"POST /-/restart: {response.status_code} {response.text}")
        self._wait_ready()
        return self

    def command(self) -> list[str]:
        """The argv the app is started with."""
        argv = [
            sys.executable,
            "-m",
            "rollbackd.demoapp",
            "--port",
            str(self.port),
            "--service",
            self.service,
            "--app-dir",
            str(self.app_dir),
            "--traffic",
            str(self.traffic),
        ]
        if self.state_file is not None:
            argv += ["--state-file", str(self.state_file)]
        return argv

    def prepare(self) -> None:
        """Create the working and log directories."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def env(self) -> dict[str, str]:
        """This environment with the repository's ``daemon`` first on PYTHONPATH, unbuffered."""
        env = dict(os.environ)
        source = str(REPO / "daemon")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def get(self, path: str, timeout: float = 10.0) -> httpx.Response:
        """A GET request to ``path`` on the app."""
        return httpx.get(f"{self.url}{path}", timeout=timeout)

    def fault(self) -> dict[str, Any]:
        """The settings in force (``GET /-/fault``)."""
        response = httpx.get(f"{self.url}/-/fault", timeout=5.0)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def set_fault(self, **settings: object) -> dict[str, Any]:
        """Override settings at runtime (``POST /-/fault``); return the settings now in force.

        Raises ProcessError with the app's message when it refuses the settings.
        """
        response = httpx.post(f"{self.url}/-/fault", json=settings, timeout=5.0)
        if response.status_code != httpx.codes.OK:
            raise ProcessError(f"POST /-/fault {settings}: {response.status_code} {response.text}")
        result: dict[str, Any] = response.json()
        return result

    def clear_fault(self) -> dict[str, Any]:
        """Drop runtime overrides (``DELETE /-/fault``); return the settings now in force."""
        response = httpx.delete(f"{self.url}/-/fault", timeout=5.0)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def metrics(self) -> str:
        """The text of ``/metrics``."""
        response = self.get("/metrics")
        response.raise_for_status()
        return response.text


class WebGuarded(Supervised):
    """A server of the Prometheus family that may be given a ``--web.config.file``
    (``basic_auth_users``, ``tls_server_config``): with ``tls_server_config`` it serves
    HTTPS, and ``client`` is what this helper's own requests then need (httpx's ``auth``,
    ``verify``). With a ``route_prefix`` (``/prom``) it serves under that path, as behind a
    reverse proxy (``--web.route-prefix``, ``--web.external-url``), and :attr:`url` ends with
    it. Subclasses call :meth:`guard` before ``Supervised.__init__``."""

    route_prefix = ""

    def guard(
        self,
        workdir: Path,
        web_config: Mapping[str, Any] | None,
        client: Mapping[str, Any] | None,
        route_prefix: str = "",
    ) -> None:
        self.web_config = dict(web_config) if web_config is not None else None
        self.client = dict(client or {})
        self.web_config_path = workdir / "web.yml"
        self.route_prefix = route_prefix
        if self.web_config is not None and "tls_server_config" in self.web_config:
            self.scheme = "https"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` and the route prefix, without a trailing slash."""
        return super().url + self.route_prefix

    def client_options(self) -> dict[str, Any]:
        """The ``client`` options this server was given (empty for a plain one)."""
        return dict(self.client)

    def write_web_config(self) -> None:
        if self.web_config is not None:
            self.web_config_path.write_text(json.dumps(self.web_config), encoding="utf-8")

    def web_config_args(self) -> list[str]:
        """The flag that hands the server its web config, if it has one."""
        return [f"--web.config.file={self.web_config_path}"] if self.web_config else []

    def route_prefix_args(self) -> list[str]:
        """The flags that make the server serve under its route prefix, if it has one."""
        if not self.route_prefix:
            return []
        return [f"--web.route-prefix={self.route_prefix}", f"--web.external-url={self.url}"]


class Prometheus(WebGuarded):
    """``/usr/bin/prometheus`` on a free loopback port with a generated config.

    Files live in ``workdir``: ``prometheus.yml``, ``rules-N.yml``,
    ``prometheus.log`` and ``data/`` (the TSDB, unless ``storage_dir`` is
    given). :meth:`stop` then :meth:`start` reuses the storage and the port.
    Retention is 3650 days so backfilled history is never deleted as too old.

    ``rule_files`` are the contents of Prometheus rule files (YAML).

    ``web_config`` is the content of a ``--web.config.file`` (``basic_auth_users``,
    ``tls_server_config``): with ``tls_server_config`` it serves HTTPS. ``client``
    is what this helper's own requests then need (httpx's ``auth``, ``verify``).
    """

    label = "Prometheus"

    def __init__(
        self,
        workdir: Path,
        targets: Sequence[Target] = (),
        *,
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        rule_files: Sequence[str] = (),
        storage_dir: Path | None = None,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        binary: Path = PROMETHEUS_BIN,
        start_timeout: float = 60.0,  # longer than the warm-up budget (30s) on a busy machine
        web_config: Mapping[str, Any] | None = None,
        client: Mapping[str, Any] | None = None,
        route_prefix: str = "",
    ) -> None:
        self.workdir = workdir.absolute()
        self.guard(self.workdir, web_config, client, route_prefix)
        super().__init__(
            self.workdir,
            self.workdir / "prometheus.log",
            port=port,
            start_timeout=start_timeout,
        )
        self.targets: list[Target] = list(targets)
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.rule_files = list(rule_files)
        self.storage_dir = (storage_dir or workdir / "data").absolute()
        self.extra_args = list(extra_args)
        self.binary = binary
        self.config_path = self.workdir / "prometheus.yml"

    def config(self) -> dict[str, Any]:
        """The configuration written to ``prometheus.yml`` (JSON, which is YAML)."""
        config = scrape_config(self.targets, self.scrape_interval)
        config["global"]["evaluation_interval"] = self.evaluation_interval
        config["rule_files"] = [str(self._rule_path(i)) for i in range(len(self.rule_files))]
        return config

    def _rule_path(self, index: int) -> Path:
        return self.workdir / f"rules-{index}.yml"

    def write_config(self) -> None:
        """Write ``prometheus.yml`` and the rule files from the current attributes."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for index, content in enumerate(self.rule_files):
            self._rule_path(index).write_text(content, encoding="utf-8")
        self.config_path.write_text(json.dumps(self.config(), indent=2), encoding="utf-8")
        self.write_web_config()

    def command(self) -> list[str]:
        """The argv Prometheus is started with."""
        return [
            str(self.binary),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.storage_dir}",
            "--storage.tsdb.retention.time=3650d",
            f"--web.listen-address={LOOPBACK}:{self.port}",
            "--web.enable-lifecycle",
            *self.web_config_args(),
            *self.route_prefix_args(),
            *self.extra_args,
        ]

    def prepare(self) -> None:
        """Check the binary, then write the config and create the storage directory."""
        if not self.binary.exists():
            raise ProcessError(f"{self.binary} is missing: {INSTALL_HINT}")
        self.write_config()
        self.storage_dir.mkdir(parents=True, exist_ok=True)

    def reload(self, targets: Sequence[Target] | None = None) -> None:
        """Rewrite the config (optionally with new targets) and ask Prometheus to reload it."""
        if targets is not None:
            self.targets = list(targets)
        self.write_config()
        response = httpx.post(f"{self.url}/-/reload", timeout=10.0, **self.client_options())
        if response.status_code != httpx.codes.OK:
            raise ProcessError(
                f"reload refused: {response.status_code} {response.text}\n{tail(self.log_path)}"
            )

    def _api(self, endpoint: str, params: Mapping[str, str]) -> QueryResult:
        response = httpx.get(
            f"{self.url}/api/v1/{endpoint}", params=params, timeout=10.0, **self.client_options()
        )
        try:
            document = response.json()
        except ValueError as error:
            raise ProcessError(f"{endpoint}: {response.status_code} {response.text}") from error
        if document.get("status") != "success":
            raise ProcessError(f"{endpoint} {dict(params)}: {document}")
        result: QueryResult = document["data"]["result"]
        return result

    def query(self, query: str, at: float | None = None) -> QueryResult:
        """An instant query (``/api/v1/query``) at unix time ``at`` (default: now)."""
        params = {"query": query}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self._api("query", params)

    def query_range(self, query: str, start: float, end: float, step: float) -> QueryResult:
        """A range query (``/api/v1/query_range``); times in unix seconds, step in seconds."""
        return self._api(
            "query_range",
            {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"},
        )

    def wait_for(
        self,
        query: str,
        predicate: Callable[[QueryResult], bool],
        timeout: float = 15.0,
        interval: float = 0.2,
    ) -> QueryResult:
        """Poll an instant query until ``predicate(result)`` holds; return that result.

        Raises TimeoutError with the last result (or query error) and the log tail.
        """
        deadline = time.monotonic() + timeout
        last: object = "no answer yet"
        while True:
            if not self.running:
                raise ProcessError(f"Prometheus is not running; log:\n{tail(self.log_path)}")
            try:
                result = self.query(query)
            except (ProcessError, httpx.TransportError) as error:
                last = error
            else:
                if predicate(result):
                    return result
                last = result
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"after {timeout:g}s the query {query!r} still does not satisfy the "
                    f"predicate; last: {last}; log:\n{tail(self.log_path, 15)}"
                )
            time.sleep(interval)


class VictoriaMetrics(Supervised):
    """``/usr/bin/victoria-metrics`` (single node) on a free loopback port, its data in
    ``workdir/data``, answering PromQL (MetricsQL) at ``/api/v1/query`` as Prometheus does.

    Given ``targets``, it scrapes them every ``scrape_interval`` itself
    (``-promscrape.config``, ``workdir/scrape.yml``, labelled as :class:`Prometheus`
    labels them); otherwise it scrapes nothing, and :meth:`import_history` loads the
    same OpenMetrics text the Prometheus tests backfill with promtool. Retention is 100
    years, as it refuses samples older than its retention; the response cache is off,
    so history imported after a query is seen by the next one. Otherwise it runs as
    installed unless ``extra_args`` say more: in particular it hides its newest 30 s
    (``-search.latencyOffset``) from queries near its clock, as rollbackd meets it in
    production.
    """

    label = "VictoriaMetrics"
    ready_path = "/health"

    def __init__(
        self,
        workdir: Path,
        targets: Sequence[Target] = (),
        *,
        scrape_interval: str = "1s",
        extra_args: Sequence[str] = (),
        port: int | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.workdir = workdir.absolute()
        super().__init__(
            self.workdir,
            self.workdir / "victoria-metrics.log",
            port=port,
            start_timeout=start_timeout,
        )
        self.storage_dir = self.workdir / "data"
        self.targets: list[Target] = list(targets)
        self.scrape_interval = scrape_interval
        self.extra_args = list(extra_args)
        self.scrape_config_path = self.workdir / "scrape.yml"

    def command(self) -> list[str]:
        """The argv VictoriaMetrics is started with."""
        scraping = [f"-promscrape.config={self.scrape_config_path}"] if self.targets else []
        return [
            str(VICTORIAMETRICS_BIN),
            f"-storageDataPath={self.storage_dir}",
            f"-httpListenAddr={LOOPBACK}:{self.port}",
            "-retentionPeriod=100y",
            "-search.disableCache",
            "-loggerLevel=WARN",
            *scraping,
            *self.extra_args,
        ]

    def scrape_config(self) -> dict[str, Any]:
        """The ``-promscrape.config`` written to ``scrape.yml`` (JSON, which is YAML): the
        targets as :meth:`Prometheus.config` has them, without what only Prometheus reads
        (VictoriaMetrics refuses unknown keys)."""
        return scrape_config(self.targets, self.scrape_interval)

    def prepare(self) -> None:
        """Check the binary, then create the storage directory and the scrape config."""
        if not VICTORIAMETRICS_BIN.exists():
            raise ProcessError(f"{VICTORIAMETRICS_BIN} is missing: {VICTORIAMETRICS_HINT}")
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        if self.targets:
            self.scrape_config_path.write_text(
                json.dumps(self.scrape_config(), indent=2), encoding="utf-8"
            )

    def import_history(self, openmetrics_text: str) -> None:
        """Load ``openmetrics_text`` (as :func:`backfill` takes it: timestamps in seconds)
        through ``/api/v1/import/prometheus`` (timestamps in milliseconds), then flush it
        to searchable storage (``/internal/force_flush``), so the next query sees all of it.
        """
        lines = []
        for line in openmetrics_text.splitlines():
            if line and not line.startswith("#"):
                series, value, timestamp = line.rsplit(" ", 2)
                lines.append(f"{series} {value} {round(float(timestamp) * 1000)}")
        with httpx.Client(base_url=self.url, timeout=120.0) as client:
            response = client.post("/api/v1/import/prometheus", content="\n".join(lines) + "\n")
            if response.status_code != httpx.codes.NO_CONTENT:
                raise ProcessError(
                    f"import refused: {response.status_code} {response.text}\n{tail(self.log_path)}"
                )
            client.get("/internal/force_flush").raise_for_status()


class RollbackdProcess(Supervised):
    """``python -m rollbackd run`` with logs in files, so tests can signal, crash and restart it.

    ``tokens`` maps a role to its bearer token for :meth:`request`. With
    ``own_group`` it runs in its own process group, so :meth:`crash` can
    SIGKILL the daemon alone and still reap the git commands it left running.
    """

    label = "rollbackd"
    ready_path = "/readyz"
    probe_timeout = 2.0
    stop_timeout = 30.0

    def __init__(
        self,
        config: Path,
        port: int,
        log_dir: Path,
        tokens: Mapping[str, str],
        *,
        own_group: bool = False,
        start_timeout: float = 60.0,  # longer than the warm-up budget (30s) on a busy machine
    ) -> None:
        super().__init__(
            log_dir, log_dir / "rollbackd.stderr.log", port=port, start_timeout=start_timeout
        )
        self.config = config
        self.log_dir = log_dir
        self.tokens = tokens
        self.new_session = own_group
        self.stderr_path = self.log_path
        self.stdout_path: Path = log_dir / "rollbackd.stdout.log"

    def command(self) -> list[str]:
        """The argv the daemon is started with."""
        return [sys.executable, "-m", "rollbackd", "run", "--config", str(self.config)]

    def prepare(self) -> None:
        """Create the log directory (also the working directory)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def env(self) -> dict[str, str]:
        """This environment minus ROLLBACKD_* and NOTIFY_SOCKET, so only the config counts."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("ROLLBACKD_") and k != "NOTIFY_SOCKET"
        }
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def alive(self) -> bool:
        """Whether the daemon was started and has not exited."""
        return self.running

    def signal(self, number: signal.Signals) -> None:
        """Send ``number`` to the daemon, as systemctl stop or reload would."""
        assert self._process is not None
        self._process.send_signal(number)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the daemon to exit; its exit code."""
        assert self._process is not None
        return self._process.wait(timeout=timeout)

    def crash(self, group_timeout: float = 15.0) -> None:
        """SIGKILL the daemon alone, as the OOM killer would; then let its children finish.

        git and the commands the daemon had started run to their end (they are
        not killed with it, as with systemd's ``KillMode=process``); after
        ``group_timeout`` seconds whatever is left of them is killed too. They
        run in sessions of their own, so they are found before the kill as the
        daemon's children, and waited for by session.
        """
        if self._process is None:
            return
        group = self._process.pid
        sessions = {pid for pid, fields in _proc_stats() if int(fields[1]) == group}
        self.kill()
        deadline = time.monotonic() + group_timeout
        while time.monotonic() < deadline:
            if not _left_of(group, sessions):
                return
            time.sleep(0.02)
        for pid in _left_of(group, sessions):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, wait (``stop_timeout`` by default); SIGKILL the group if it does not end."""
        if self._process is None:
            return None
        if self.running:
            self._process.send_signal(signal.SIGTERM)
            try:
                return self._process.wait(self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                pass
        self.crash(group_timeout=0)
        return self._process.returncode

    def request(self, method: str, path: str, role: str, **kwargs: Any) -> httpx.Response:
        """An HTTP request to the daemon as ``role``, with that role's bearer token."""
        headers = {"Authorization": f"Bearer {self.tokens[role]}"}
        return httpx.request(method, self.url + path, headers=headers, timeout=10, **kwargs)

    def incidents(self) -> list[dict[str, Any]]:
        """Every incident the API lists (up to 1000), as a viewer."""
        response = self.request("GET", "/api/v1/incidents?limit=1000", "viewer")
        response.raise_for_status()
        listed: list[dict[str, Any]] = response.json()
        return listed

    def log_text(self) -> str:
        """The daemon's stderr log so far."""
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def logs(self) -> list[dict[str, Any]]:
        """The JSON log lines so far (other lines, e.g. uvicorn's, are skipped)."""
        entries = []
        for line in self.log_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                entries.append(entry)
        return entries

    def logged(self, event_prefix: str) -> list[dict[str, Any]]:
        """The JSON log lines whose event starts with ``event_prefix``."""
        return [e for e in self.logs() if str(e.get("event", "")).startswith(event_prefix)]


def _proc_stats() -> list[tuple[int, list[str]]]:
    """(pid, the /proc/PID/stat fields after the command name: state, ppid, pgrp, session …)."""
    stats = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            stats.append((int(entry.name), text.rpartition(")")[2].split()))
    return stats


def _left_of(group: int, sessions: set[int]) -> list[int]:
    """Live processes in process group ``group`` or in one of ``sessions`` (zombies left out)."""
    return [
        pid
        for pid, fields in _proc_stats()
        if fields[0] != "Z" and (int(fields[2]) == group or int(fields[3]) in sessions)
    ]


# --- backfill -------------------------------------------------------------------------------

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
Kind = Literal["gauge", "counter"]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _family_name(name: str, kind: Kind) -> str:
    if not _NAME.match(name):
        raise ValueError(f"{name!r} is not a valid metric name")
    if kind == "counter" and name.endswith("_total"):
        return name.removesuffix("_total")
    return name


def openmetrics_series(
    name: str, labels: Mapping[str, str], points: Iterable[Point], *, kind: Kind = "gauge"
) -> str:
    """The sample lines of one series (no TYPE line, no ``# EOF``), sorted by time.

    For a counter, ``name`` may be given with or without ``_total``; samples
    are written as ``<family>_total``. Raises ValueError on bad names, a
    repeated timestamp (promtool would silently keep one of them), or a
    counter that decreases.
    """
    family = _family_name(name, kind)
    sample = f"{family}_total" if kind == "counter" else family
    for label in labels:
        if not _LABEL.match(label) or label == "__name__":
            raise ValueError(f"{label!r} is not a valid label name")
    rendered = ",".join(f'{key}="{_escape(value)}"' for key, value in sorted(labels.items()))
    selector = f"{sample}{{{rendered}}}" if rendered else sample
    lines: list[str] = []
    previous: Point | None = None
    for timestamp, value in sorted(points):
        if not math.isfinite(timestamp):
            raise ValueError(f"{selector}: timestamp {timestamp!r} is not finite")
        if previous is not None and timestamp == previous[0]:
            raise ValueError(f"{selector}: two samples at {timestamp}")
        if kind == "counter" and previous is not None and value < previous[1]:
            raise ValueError(f"{selector}: counter decreases at {timestamp}")
        lines.append(f"{selector} {_number(value)} {timestamp:.3f}")
        previous = (timestamp, value)
    return "\n".join(lines)


def openmetrics_family(
    name: str,
    series: Iterable[tuple[Mapping[str, str], Iterable[Point]]],
    *,
    kind: Kind = "gauge",
    help_text: str = "",
) -> str:
    """One metric family: its ``# TYPE`` (and ``# HELP``) line, then every series' samples."""
    family = _family_name(name, kind)
    header = [f"# HELP {family} {help_text}"] if help_text else []
    header.append(f"# TYPE {family} {kind}")
    bodies = [openmetrics_series(name, labels, points, kind=kind) for labels, points in series]
    return "\n".join(header + [body for body in bodies if body])


def openmetrics_document(*families: str) -> str:
    """Families joined into a whole OpenMetrics text ending with ``# EOF``."""
    return "\n".join([*families, "# EOF"]) + "\n"


def counter_points(
    start: float,
    end: float,
    step: float,
    per_second: float | Callable[[float], float],
    initial: float = 0.0,
) -> list[Point]:
    """Samples of a counter from ``start`` to ``end`` (inclusive) every ``step`` seconds.

    ``per_second`` is its rate: a constant, or a function of the time, applied
    over each step (so ``rate()`` over the result gives it back).
    """
    if step <= 0 or end < start:
        raise ValueError("expected step > 0 and end >= start")
    points: list[Point] = []
    value = initial
    steps = int((end - start) // step)
    for index in range(steps + 1):
        timestamp = start + index * step
        if index:
            rate = per_second(timestamp) if callable(per_second) else per_second
            value += rate * step
        points.append((timestamp, value))
    return points


def gauge_points(
    start: float, end: float, step: float, value: float | Callable[[float], float]
) -> list[Point]:
    """Samples of a gauge from ``start`` to ``end`` (inclusive) every ``step`` seconds."""
    if step <= 0 or end < start:
        raise ValueError("expected step > 0 and end >= start")
    steps = int((end - start) // step)
    times = [start + index * step for index in range(steps + 1)]
    return [(t, value(t) if callable(value) else value) for t in times]


def backfill(openmetrics_text: str, storage_dir: Path) -> None:
    """Write ``openmetrics_text`` to a file and turn it into TSDB blocks in ``storage_dir``.

    Runs ``promtool tsdb create-blocks-from openmetrics FILE storage_dir``;
    raises ProcessError with promtool's output when it fails.

    What promtool 2.42 requires of the text (the helpers above produce it):

    - It must end with a ``# EOF`` line, and contain no blank line (both are
      errors).
    - Every sample needs a timestamp, in **seconds** since the epoch (a float
      is fine: ``1700000000.5``). Milliseconds are *not* rejected: they land
      ~50,000 years in the future, one block per sample.
    - Within a series, timestamps must ascend: an out-of-order or repeated
      sample is dropped *silently* (``openmetrics_series`` sorts, and refuses
      repeats).
    - ``# TYPE`` lines are optional for promtool (and interleaved or repeated
      families are tolerated), but OpenMetrics wants one ``# TYPE family kind``
      before a family's samples, and counter samples named ``family_total``.

    What Prometheus does with the blocks:

    - Blocks are cut at 2h boundaries of the epoch (UTC even hours), so two
      hours of history usually become two blocks.
    - A Prometheus started afterwards on ``storage_dir`` sees them at once. A
      running one only picks them up at its next block reload, up to a minute
      later: restart it (``Prometheus.restart``) rather than wait.
    - Any age is accepted, including the current two hours (overlapping the
      head, merged at query time); only retention deletes old blocks, and the
      ``Prometheus`` helper sets it to 3650d.
    """
    if not PROMTOOL_BIN.exists():
        raise ProcessError(f"{PROMTOOL_BIN} is missing: {INSTALL_HINT}")
    storage_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="backfill-") as scratch:
        source = Path(scratch) / "history.om"
        source.write_text(openmetrics_text, encoding="utf-8")
        argv = [str(PROMTOOL_BIN), "tsdb", "create-blocks-from", "openmetrics", "--quiet"]
        result = subprocess.run(
            [*argv, str(source), str(storage_dir)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    if result.returncode != 0:
        raise ProcessError(
            f"promtool tsdb create-blocks-from openmetrics failed ({result.returncode}):\n"
            f"{result.stdout}{result.stderr}"
        )
