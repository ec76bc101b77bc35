"""A small real web app with a fault switch, watched by the integration tests and ``demo``.

Run it as::

    python -m rollbackd.demoapp --port PORT --service NAME
        [--app-dir DIR] [--state-file PATH] [--traffic RPS]

Behaviour is five settings: ``version`` (str), ``error_rate`` (0..1, the
fraction of requests answered 500), ``latency`` (seconds added to each
request), ``gap`` (when true, ``/metrics`` leaves out the ``http_*`` and
``app_build_info`` families, as if the app's instrumentation went missing) and
``health_fail`` (when true, ``/health`` answers 503).

Where the settings come from, later overriding earlier:

1. defaults: version ``v1``, error rate 0, latency 0, no gap, healthy;
2. ``app.toml`` in ``--app-dir`` (default: the working directory), read once
   at start, so that a git rollback of that directory plus a restart changes
   behaviour. Known keys are the five settings; other keys and tables are
   ignored, so the file may hold more than the demo app reads;
3. runtime overrides from ``POST /-/fault`` (a JSON object of any settings).
   With ``--state-file`` the overrides are kept there as JSON and applied again
   after a restart; ``DELETE /-/fault`` drops them (and empties the file),
   returning to the start-up settings.

Endpoints: ``/``, ``/login`` and ``/clients`` are normal requests (counted; they
fail and slow down as the settings say; a failed ``/login`` is a failed
authentication attempt); ``/health``; ``/metrics``; ``GET|POST|DELETE /-/fault``;
``POST /-/reload`` re-reads ``app.toml`` in place, keeping the counters;
``POST /-/restart`` re-executes the process with the same command line (same
pid and port), as a deploy's restart would: counters start again from nothing,
``app.toml`` is read again, and runtime overrides survive only through
``--state-file``. The listening socket is closed before the answer is sent, so
whatever answers after it is the new process.

Metrics are instrumented as with prometheus_client in a real app: a series
with labels beyond ``service`` (``http_requests_total{code,path}``,
``app_auth_attempts_total{result}``, ``app_build_info{version}``) appears at its
first use, so there is no 5xx series before the first failed request and none
again after a restart. The ``service`` label stands for the target label a
scrape config would add, so a series labelled by ``service`` alone exists from
start-up, as an unlabelled metric of prometheus_client does.

Whether a request fails is decided per path by an error accumulator, not by
chance: with ``error_rate`` r, every path answers exactly ``round-down(n * r)``
or one more of its first n requests with 500, so observed 5xx fractions match r
over any window of a few dozen requests.

``--traffic RPS`` (default 20, 0 for none) runs synthetic requests through the
same handling code without sockets (the added latency is recorded, not slept),
so rates move without outside load.

Prints ``listening on 127.0.0.1:PORT`` on stdout when ready, and exits 0 on
SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

HOST = "127.0.0.1"
APP_FILE = "app.toml"
REQUEST_PATHS: tuple[str, ...] = ("/", "/login", "/clients")
"""The paths that are normal, counted requests."""

SYNTHETIC_CYCLE: tuple[str, ...] = ("/", "/", "/", "/clients", "/login")
"""The order in which synthetic traffic visits paths, over and over."""

DURATION_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    10.0,
)
MAX_LATENCY = 60.0
MAX_BODY = 64 * 1024
EXIT_BAD_INPUT = 2


class SettingsError(ValueError):
    """A setting has the wrong name, type or range; the message says which and why."""


@dataclass(frozen=True)
class Settings:
    """How the app behaves right now."""

    version: str = "v1"
    error_rate: float = 0.0
    latency: float = 0.0
    gap: bool = False
    health_fail: bool = False

    def to_json(self) -> dict[str, Any]:
        """The settings as a JSON-ready object."""
        return asdict(self)


SETTING_NAMES: tuple[str, ...] = tuple(Settings.__dataclass_fields__)


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SettingsError(f"{name}: expected a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise SettingsError(f"{name}: expected a finite number, got {value!r}")
    return number


def validate_settings(values: Mapping[str, object], *, ignore_unknown: bool) -> dict[str, Any]:
    """Check names, types and ranges of some settings; return them normalised.

    Raises SettingsError naming the first offending setting.
    """
    result: dict[str, Any] = {}
    for name, value in values.items():
        if name not in SETTING_NAMES:
            if ignore_unknown:
                continue
            raise SettingsError(f"{name}: unknown setting; known: {', '.join(SETTING_NAMES)}")
        if name == "version":
            if not isinstance(value, str) or not value.strip():
                raise SettingsError("version: expected a non-empty string")
            result[name] = value
        elif name == "error_rate":
            rate = _number(name, value)
            if not 0.0 <= rate <= 1.0:
                raise SettingsError(f"error_rate: expected a fraction from 0 to 1, got {value!r}")
            result[name] = rate
        elif name == "latency":
            latency = _number(name, value)
            if not 0.0 <= latency <= MAX_LATENCY:
                raise SettingsError(
                    f"latency: expected seconds from 0 to {MAX_LATENCY:g}, got {value!r}"
                )
            result[name] = latency
        else:
            if not isinstance(value, bool):
                raise SettingsError(f"{name}: expected true or false, got {value!r}")
            result[name] = value
    return result


def load_app_file(app_dir: Path) -> dict[str, Any]:
    """The settings in ``app_dir/app.toml``, or none when the file is absent."""
    path = app_dir / APP_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"{path}: {error}") from error
    try:
        return validate_settings(document, ignore_unknown=True)
    except SettingsError as error:
        raise SettingsError(f"{path}: {error}") from error


def load_state_file(path: Path) -> dict[str, Any]:
    """The runtime overrides kept in the state file, or none when it is absent or empty."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    if not text.strip():
        return {}
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise SettingsError(f"{path}: not JSON: {error}") from error
    if not isinstance(document, dict):
        raise SettingsError(f"{path}: expected a JSON object of settings")
    try:
        return validate_settings(document, ignore_unknown=False)
    except SettingsError as error:
        raise SettingsError(f"{path}: {error}") from error


@dataclass(frozen=True)
class Response:
    """What a request gets back."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


def _text(status: int, text: str) -> Response:
    return Response(status, text.encode())


def _json(status: int, value: object) -> Response:
    return Response(status, (json.dumps(value) + "\n").encode(), "application/json")


class DemoApp:
    """The app's behaviour and metrics, independent of any socket."""

    def __init__(
        self,
        service: str,
        base: Settings,
        *,
        overrides: Mapping[str, Any] | None = None,
        state_file: Path | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.service = service
        self._base = base
        self._overrides: dict[str, Any] = dict(overrides or {})
        self._state_file = state_file
        self._sleep = sleep
        self._lock = threading.Lock()
        self._settings = replace(base, **self._overrides)
        self._error_debt: dict[str, float] = dict.fromkeys(REQUEST_PATHS, 0.0)

        self._core = CollectorRegistry(auto_describe=True)
        self._always = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "http_requests_total",
            "HTTP requests answered, by status code and path.",
            ["service", "code", "path"],
            registry=self._core,
        )
        self._duration = Histogram(
            "http_request_duration_seconds",
            "Time to answer an HTTP request.",
            ["service"],
            buckets=DURATION_BUCKETS,
            registry=self._core,
        )
        self._build_info = Gauge(
            "app_build_info",
            "1 for the version of the app that is running.",
            ["service", "version"],
            registry=self._core,
        )
        self._auth = Counter(
            "app_auth_attempts_total",
            "Login attempts, by result.",
            ["service", "result"],
            registry=self._always,
        )
        self._data_loss = Counter(
            "app_data_loss_events_total",
            "Events in which data was lost (the demo app never loses data).",
            ["service"],
            registry=self._always,
        )
        # As with prometheus_client: an unlabelled metric (here, labelled by
        # service alone, which a real scrape config adds as a target label)
        # exists from start-up; every other series appears at its first use.
        self._duration.labels(service)
        self._data_loss.labels(service)
        self._build_info.labels(service, self._settings.version).set(1)

    @property
    def settings(self) -> Settings:
        """The settings in force."""
        with self._lock:
            return self._settings

    def apply_fault(self, values: Mapping[str, object]) -> Settings:
        """Override some settings at runtime (and keep them in the state file, if any)."""
        checked = validate_settings(values, ignore_unknown=False)
        with self._lock:
            self._overrides.update(checked)
            self._install(replace(self._base, **self._overrides))
            self._save_overrides()
            return self._settings

    def reload(self, base: Settings) -> Settings:
        """New start-up settings, as after a restart (``POST /-/reload`` re-reads app.toml)."""
        with self._lock:
            self._base = base
            self._install(replace(self._base, **self._overrides))
            return self._settings

    def clear_fault(self) -> Settings:
        """Drop every runtime override, returning to the settings the app started with."""
        with self._lock:
            self._overrides.clear()
            self._install(self._base)
            self._save_overrides()
            return self._settings

    def _install(self, settings: Settings) -> None:
        old = self._settings.version
        self._settings = settings
        if settings.version != old:
            self._build_info.remove(self.service, old)
            self._build_info.labels(self.service, settings.version).set(1)

    def _save_overrides(self) -> None:
        if self._state_file is None:
            return
        partial = self._state_file.with_name(self._state_file.name + ".partial")
        partial.write_text(json.dumps(self._overrides, sort_keys=True) + "\n", encoding="utf-8")
        partial.replace(self._state_file)

    def handle(self, path: str, *, synthetic: bool = False) -> Response:
        """Answer one normal request for ``path``: the code path of real and synthetic traffic.

        A synthetic request records the added latency instead of sleeping it.
        """
        started = time.perf_counter()
        with self._lock:
            settings = self._settings
            fail = self._next_fails(path, settings.error_rate)
        added = settings.latency
        if added > 0 and not synthetic:
            self._sleep(added)
            added = 0.0
        label = path if path in REQUEST_PATHS else "other"
        if label == "other":
            response = _text(404, "not found\n")
        elif fail:
            response = _text(500, "internal server error\n")
        elif path == "/login":
            response = _json(200, {"user": "demo", "token": "not-a-real-token"})
        elif path == "/clients":
            response = _json(200, {"clients": ["acme", "globex", "initech"]})
        else:
            response = _text(200, f"hello from {self.service} {settings.version}\n")
        if path == "/login":
            result = "success" if response.status == 200 else "failure"
            self._auth.labels(self.service, result).inc()
        self._requests.labels(self.service, str(response.status), label).inc()
        self._duration.labels(self.service).observe(time.perf_counter() - started + added)
        return response

    def _next_fails(self, path: str, error_rate: float) -> bool:
        if path not in self._error_debt:
            return False
        debt = self._error_debt[path] + error_rate
        fails = debt >= 1.0 - 1e-9
        self._error_debt[path] = debt - 1.0 if fails else debt
        return fails

    def health(self) -> Response:
        """``/health``: 200 ok unless the health_fail setting says otherwise."""
        if self.settings.health_fail:
            return _text(503, "unhealthy\n")
        return _text(200, "ok\n")

    def metrics(self) -> Response:
        """``/metrics`` in the Prometheus text format; without the gap families during a gap."""
        body = generate_latest(self._always)
        if not self.settings.gap:
            body = generate_latest(self._core) + body
        return Response(200, body, CONTENT_TYPE_LATEST)

    def fault_request(self, method: str, body: bytes) -> Response:
        """``/-/fault``: GET reads, POST overrides, DELETE clears the runtime settings."""
        if method == "GET":
            return _json(200, self.settings.to_json())
        if method == "DELETE":
            return _json(200, self.clear_fault().to_json())
        try:
            document = json.loads(body or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            return _json(400, {"error": f"body is not JSON: {error}"})
        if not isinstance(document, dict):
            return _json(400, {"error": "expected a JSON object of settings"})
        try:
            return _json(200, self.apply_fault(document).to_json())
        except SettingsError as error:
            return _json(400, {"error": str(error)})
        except OSError as error:
            return _json(500, {"error": f"cannot write the state file: {error}"})


class SyntheticTraffic:
    """A thread sending ``rps`` requests a second through :meth:`DemoApp.handle`."""

    def __init__(self, app: DemoApp, rps: float) -> None:
        self._app = app
        self._rps = rps
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="synthetic-traffic", daemon=True)

    def start(self) -> None:
        """Start sending, unless the rate is 0."""
        if self._rps > 0:
            self._thread.start()

    def stop(self) -> None:
        """Stop sending and wait for the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        interval = 1.0 / self._rps
        sent = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            self._app.handle(SYNTHETIC_CYCLE[sent % len(SYNTHETIC_CYCLE)], synthetic=True)
            sent += 1
            next_at += interval
            now = time.monotonic()
            if next_at < now - 1.0:
                next_at = now  # fell behind by over a second (paused?): do not burst
            self._stop.wait(max(0.0, next_at - now))


def make_handler(
    app: DemoApp, app_dir: Path | None = None, restart: Callable[[], None] | None = None
) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``app``.

    ``app_dir`` enables ``POST /-/reload``; ``restart`` enables ``POST /-/restart``
    and is called once the server no longer accepts connections and the answer is sent.
    """

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "rollbackd-demoapp"
        timeout = 60
        # Headers and body are two writes; with Nagle's algorithm the body would
        # wait for the client's delayed ACK (40 ms per keep-alive request).
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def do_DELETE(self) -> None:
            self._dispatch("DELETE")

        def _dispatch(self, method: str) -> None:
            path = self.path.split("?", 1)[0]
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_BODY:
                self.close_connection = True
                self._send(_json(400, {"error": f"expected a body of 0..{MAX_BODY} bytes"}))
                return
            body = self.rfile.read(length) if length else b""
            if path == "/-/fault":
                allowed = ("GET", "POST", "DELETE")
                response = (
                    app.fault_request(method, body)
                    if method in allowed
                    else _json(405, {"error": "use GET, POST or DELETE"})
                )
            elif path == "/-/reload" and method == "POST" and app_dir is not None:
                try:
                    settings = app.reload(replace(Settings(), **load_app_file(app_dir)))
                    response = _json(200, settings.to_json())
                except (SettingsError, OSError) as error:
                    response = _json(400, {"error": str(error)})
            elif path == "/-/restart" and method == "POST" and restart is not None:
                # Stop accepting first: a client that has its answer reaches the new process.
                self.server.shutdown()
                self.server.server_close()
                self.close_connection = True
                self._send(_json(200, {"restarting": True, "pid": os.getpid()}))
                restart()
                return
            elif method != "GET":
                response = _text(405, "method not allowed\n")
            elif path == "/health":
                response = app.health()
            elif path == "/metrics":
                response = app.metrics()
            else:
                response = app.handle(path)
            self._send(response)

        def _send(self, response: Response) -> None:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            self.wfile.write(response.body)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: one line per request would drown the errors on stderr."""

    return Handler


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line of ``python -m rollbackd.demoapp``."""
    parser = argparse.ArgumentParser(
        prog="python -m rollbackd.demoapp",
        description="A small web app with a fault switch, for rollbackd's tests and demo.",
    )
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1 (0: any)")
    parser.add_argument("--service", required=True, help="value of the service label")
    parser.add_argument("--state-file", type=Path, help="keep runtime overrides here (JSON)")
    parser.add_argument(
        "--app-dir", type=Path, default=Path(), help=f"directory with {APP_FILE} (default: .)"
    )
    parser.add_argument(
        "--traffic", type=float, default=20.0, help="synthetic requests per second (default 20)"
    )
    args = parser.parse_args(argv)
    if args.traffic < 0 or not math.isfinite(args.traffic):
        parser.error("--traffic: expected a rate >= 0")
    if not 0 <= args.port <= 65535:
        parser.error("--port: expected 0..65535")
    return args


def restart_command(argv: Sequence[str] | None, port: int) -> list[str]:
    """The command line that starts this app again: the same arguments, on the same port."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    return [sys.executable, "-m", "rollbackd.demoapp", *arguments, "--port", str(port)]


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT (then return the exit code) or ``POST /-/restart``."""
    args = parse_args(argv)
    try:
        base = replace(Settings(), **load_app_file(args.app_dir))
        overrides = load_state_file(args.state_file) if args.state_file else {}
    except (SettingsError, OSError) as error:
        sys.stderr.write(f"demoapp: {error}\n")
        return EXIT_BAD_INPUT
    # prometheus_client leaves this function unannotated; it takes and returns nothing.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    app = DemoApp(args.service, base, overrides=overrides, state_file=args.state_file)
    stop = threading.Event()
    restarting = threading.Event()

    def restart() -> None:
        restarting.set()
        stop.set()

    try:
        server = ThreadingHTTPServer((HOST, args.port), make_handler(app, args.app_dir, restart))
    except OSError as error:
        sys.stderr.write(f"demoapp: cannot listen on {HOST}:{args.port}: {error}\n")
        return 1

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    serving = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="http", daemon=True
    )
    serving.start()
    traffic = SyntheticTraffic(app, args.traffic)
    traffic.start()
    port = server.server_address[1]
    sys.stdout.write(f"listening on {HOST}:{port}\n")
    sys.stdout.flush()
    while not stop.wait(timeout=1.0):
        pass
    traffic.stop()
    server.shutdown()
    server.server_close()
    if restarting.is_set():
        sys.stdout.flush()
        sys.stderr.flush()
        command = restart_command(argv, port)
        try:
            os.execv(command[0], command)  # noqa: S606 -- our own interpreter and arguments
        except OSError as error:
            sys.stderr.write(f"demoapp: cannot restart: {error}\n")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
