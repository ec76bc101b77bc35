"""rollbackd against a Prometheus behind basic auth and mutual TLS (``--web.config.file``),
and through a forward proxy.

Two Prometheus servers over the same backfilled history: one plain, one that
wants a bcrypt-checked password and a client certificate signed by a CA made in
the test. ``backtest``, ``evaluate`` and a running daemon decide the same
against both. A wrong password, a bearer token it does not know, an untrusted
CA or no client certificate is a source error naming Prometheus and what to set,
and no secret is ever in the output or the logs. Through a real proxy
(tinyproxy), ``evaluate`` decides as directly, over plain HTTP and over TLS in a
``CONNECT`` tunnel; a proxy that is down or cannot reach Prometheus is a source
error naming both.

The history: web deploys v2 at 02:00 and from 02:05 one request in five fails,
until v1 is back at 02:40; db is healthy throughout.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from rollbackd.core.model import Decision
from rollbackd.evaluation import evaluate_now
from rollbackd.loader import load
from rollbackd.sources.prometheus import PrometheusSource
from rollbackd.testing import FixedClock
from tests.conftest import RunCli
from tests.reliability.support import close_daemon, in_process_daemon
from tests.support.fixtures import backfilled_prometheus
from tests.support.pki import Pki, guarded_web_config
from tests.support.processes import (
    LOOPBACK,
    Point,
    Prometheus,
    counter_points,
    free_port,
    gauge_points,
    openmetrics_document,
    openmetrics_family,
)
from tests.support.tinyproxy import TinyProxy

pytestmark = pytest.mark.integration

DAY = datetime(2026, 10, 1, tzinfo=UTC)
STEP = 30.0
RPS = 10.0
PASSWORD = "pw-c0ffee-4d1e-never-shown"  # noqa: S105 -- a fake secret to look for
TOKEN = "tok-b1a5-77e0-never-shown"  # noqa: S105 -- a fake secret to look for
PROXY_PASSWORD = "px-5e11-9a0b-never-shown"  # noqa: S105 -- a fake secret to look for


def at(hours: float, minutes: float = 0) -> datetime:
    return DAY + timedelta(hours=hours, minutes=minutes)


def history() -> str:
    start, end = at(0).timestamp(), at(4).timestamp()
    fault = (at(2, 5).timestamp(), at(2, 40).timestamp())

    def failing(service: str, t: float) -> float:
        return 0.2 if service == "web" and fault[0] <= t < fault[1] else 0.0

    versions = {
        "web": [(at(0), at(2), "v1"), (at(2), at(2, 40), "v2"), (at(2, 40), at(4), "v1")],
        "db": [(at(0), at(4), "d1")],
    }
    requests: list[tuple[dict[str, str], list[Point]]] = []
    builds: list[tuple[dict[str, str], list[Point]]] = []
    for service, spans in versions.items():
        for code, share in (
            ("200", lambda t, s=service: RPS * (1 - failing(s, t))),
            ("500", lambda t, s=service: RPS * failing(s, t)),
        ):
            requests.append(
                ({"service": service, "code": code}, counter_points(start, end, STEP, share))
            )
        for begin, finish, version in spans:
            points = gauge_points(begin.timestamp(), finish.timestamp() - STEP, STEP, 1.0)
            builds.append(({"service": service, "version": version}, points))
    return openmetrics_document(
        openmetrics_family("http_requests_total", requests, kind="counter"),
        openmetrics_family("app_build_info", builds),
    )


RULES = """
[[rules]]
name = "error-rate"
trigger = "high_error_rate"
query = 'sum by (service) (rate(http_requests_total{code=~"5.."}[2m])) / sum by (service) (rate(http_requests_total[2m]))'
condition = "> 0.05"
for = "2m"
"""  # noqa: E501 -- the rule file as a user writes it


@dataclass(frozen=True)
class Servers:
    """The plain Prometheus, the guarded one, and the files that let rollbackd in."""

    plain: Prometheus
    guarded: Prometheus
    pki: Pki
    rogue: Pki
    password_file: Path
    token_file: Path


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    secrets = tmp_path_factory.mktemp("secrets")
    pki = Pki.create(secrets / "pki")
    rogue = Pki.create(secrets / "rogue")
    password_file = secrets / "prom.pass"
    password_file.write_text(PASSWORD + "\n")
    token_file = secrets / "prom.token"
    token_file.write_text(TOKEN)
    web_config = guarded_web_config(pki, "rollbackd", PASSWORD)
    client = {"auth": ("rollbackd", PASSWORD), "verify": pki.client_context()}
    text = history()
    with (
        backfilled_prometheus(tmp_path_factory, "plain", text) as plain,
        backfilled_prometheus(
            tmp_path_factory, "guarded", text, web_config=web_config, client=client
        ) as guarded,
    ):
        yield Servers(plain, guarded, pki, rogue, password_file, token_file)


def access(
    servers: Servers,
    *,
    ca: Path | None = None,
    client_cert: bool = True,
    auth: str = "basic_auth",
    password_file: Path | None = None,
) -> str:
    """The [prometheus] keys of the guarded server (variations make it fail)."""
    ca = ca or servers.pki.ca
    credentials = {
        "basic_auth": (
            f'basic_auth = {{ username = "rollbackd", '
            f'password_file = "{password_file or servers.password_file}" }}'
        ),
        "authorization": f'authorization = {{ credentials_file = "{servers.token_file}" }}',
    }[auth]
    certificate = (
        f', cert_file = "{servers.pki.client_cert}", key_file = "{servers.pki.client_key}"'
        if client_cert
        else ""
    )
    return (
        f'{credentials}\ntls = {{ ca_file = "{ca}"{certificate} }}\n'
        'headers = { "X-Scope-OrgID" = "team-a" }\n'
    )


def write_config(directory: Path, url: str, keys: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "rules").mkdir(exist_ok=True)
    (directory / "rules" / "errors.toml").write_text(RULES)
    path = directory / "config.toml"
    path.write_text(config_text(directory, url, keys))
    return path


def config_text(directory: Path, url: str, keys: str = "") -> str:
    services = "".join(
        f'[[services]]\nname = "{name}"\nexecutor = "command"\ncommand = ["true"]\n'
        for name in ("web", "db")
    )
    return f"""
[daemon]
rules = ["rules/*.toml"]
state_dir = "{directory / "state"}"
[prometheus]
url = "{url}"
timeout = "10s"
{keys}
{services}
[deploys]
version_metric = "app_build_info"
known_good_after = "30m"
attribution_window = "2h"
"""


def test_backtest_through_basic_auth_and_mutual_tls_gives_the_plain_servers_actions(
    tmp_path: Path, run_cli: RunCli, servers: Servers
) -> None:
    """The same actions, at the same times, for the same reasons: web asks for approval."""
    window = ["--start", "2026-10-01T00:00:00Z", "--end", "2026-10-01T03:00:00Z", "--json"]
    outputs = []
    for name, url, keys in (
        ("plain", servers.plain.url, ""),
        ("guarded", servers.guarded.url, access(servers)),
    ):
        config = write_config(tmp_path / name, url, keys)
        result = run_cli("backtest", "--config", str(config), *window)
        assert result.returncode == 0, result.stderr
        assert PASSWORD not in result.stdout + result.stderr
        outputs.append(result.stdout)
    plain, guarded = outputs
    actions = [json.loads(line) for line in plain.splitlines()]
    assert [(a["service"], a["action"], a["target"]) for a in actions] == [
        ("web", "request_approval", "v1")
    ]
    assert guarded == plain


def decisions_of_a_day_cycle(root: Path, url: str, keys: str) -> tuple[list[Decision], str]:
    """A running daemon (in process, on a clock) warmed up from history at 02:00, then its
    cycles to 02:12: its decisions, and its logs."""
    clock = FixedClock(at(2))
    with capture_logs() as logs:
        daemon = in_process_daemon(root, config_text(root, url, keys), RULES, clock)
        decided: list[Decision] = []
        try:
            daemon.loop.warm_up(clock.now)
            while clock.now < at(2, 12):
                clock.advance(timedelta(seconds=15))
                report = daemon.loop.cycle()
                assert report is not None, daemon.loop.last_cycle_error
                assert not report.source_errors, report.source_errors
                decided.extend(report.decisions)
        finally:
            close_daemon(daemon)
    return decided, repr(logs)


def test_evaluate_and_a_running_daemon_decide_as_against_the_plain_server(
    tmp_path: Path, servers: Servers, caplog: pytest.LogCaptureFixture
) -> None:
    """evaluate at 02:10 and a daemon's cycles from 02:00 give equal decisions on both servers."""
    caplog.set_level(logging.DEBUG)
    evaluated = {}
    ran = {}
    for name, url, keys in (
        ("plain", servers.plain.url, ""),
        ("guarded", servers.guarded.url, access(servers)),
    ):
        loaded = load(write_config(tmp_path / name / "evaluate", url, keys), env={})
        result = evaluate_now(loaded.config, loaded.rules, at(2, 10))
        assert not result.report.source_errors, result.report.source_errors
        evaluated[name] = result.decisions
        ran[name], logs = decisions_of_a_day_cycle(tmp_path / name / "run", url, keys)
        assert PASSWORD not in logs
    assert [(d.service, d.action.value) for d in evaluated["plain"]] == [
        ("web", "request_approval")
    ]
    assert evaluated["guarded"] == evaluated["plain"]
    assert [(d.service, d.action.value) for d in ran["plain"]] == [("web", "request_approval")]
    assert ran["guarded"] == ran["plain"]
    assert PASSWORD not in caplog.text


@pytest.mark.parametrize(
    ("variation", "expected"),
    [
        (
            "wrong password",
            " answered 401 Unauthorized: it refused rollbackd's credentials "
            "([prometheus] basic_auth or authorization)",
        ),
        (
            "unknown bearer token",
            " answered 401 Unauthorized: it refused rollbackd's credentials "
            "([prometheus] basic_auth or authorization)",
        ),
        (
            "untrusted CA",
            ": TLS failed: its certificate is not trusted: unable to get local issuer "
            "certificate (set [prometheus] tls.ca_file to the CA that signed it)",
        ),
        ("no client certificate", ": TLS failed: it requires a client certificate"),
    ],
)
def test_refused_access_is_a_clear_source_error_naming_prometheus_and_no_secret(
    tmp_path: Path, run_cli: RunCli, servers: Servers, variation: str, expected: str
) -> None:
    """`rollbackd evaluate` says which server refused and what to set; the secrets stay hidden."""
    wrong_password = tmp_path / "wrong.pass"
    wrong_password.write_text("not-" + PASSWORD)
    keys = {
        "wrong password": access(servers, password_file=wrong_password),
        "unknown bearer token": access(servers, auth="authorization"),
        "untrusted CA": access(servers, ca=servers.rogue.ca),
        "no client certificate": access(servers, client_cert=False),
    }[variation]
    config = write_config(tmp_path, servers.guarded.url, keys)
    result = run_cli("evaluate", "--config", str(config))
    shown = result.stdout + result.stderr
    assert f"source error: Prometheus at {servers.guarded.url}{expected}" in result.stdout, shown
    assert "no action" in result.stdout
    assert PASSWORD not in shown
    assert TOKEN not in shown


def test_a_password_rotated_in_its_file_applies_from_the_next_query_without_a_reload(
    tmp_path: Path, servers: Servers
) -> None:
    """As in Prometheus, password_file is read again once it changes: no SIGHUP needed."""
    password_file = tmp_path / "rotating.pass"
    password_file.write_text("not-" + PASSWORD + "\n")
    keys = access(servers, password_file=password_file)
    source = PrometheusSource.from_config(
        load(write_config(tmp_path, servers.guarded.url, keys)).config
    )
    query = "sum by (service) (app_build_info)"
    before = source.instant(query, at(1))
    assert before.error is not None and "401 Unauthorized" in before.error
    password_file.write_text(PASSWORD + "\n")
    after = source.instant(query, at(1))
    assert after.error is None
    assert after.numbers == {"web": 1.0, "db": 1.0}


def test_check_config_names_what_is_set_without_the_secrets(
    tmp_path: Path, run_cli: RunCli, servers: Servers
) -> None:
    """check-config shows user, files and header names; neither password nor token."""
    config = write_config(tmp_path, servers.guarded.url, access(servers))
    result = run_cli("check-config", "--config", str(config), env={"COLUMNS": "400"})
    assert result.returncode == 0, result.stderr
    assert (
        f"prometheus: {servers.guarded.url}, basic auth as user 'rollbackd' "
        f"(password from {servers.password_file}), TLS with CA {servers.pki.ca}, "
        f"client certificate {servers.pki.client_cert} (key {servers.pki.client_key}), "
        "headers: X-Scope-OrgID"
    ) in result.stdout
    assert PASSWORD not in result.stdout + result.stderr


def test_evaluate_through_a_forward_proxy_decides_as_direct_and_goes_through_it(
    tmp_path: Path, servers: Servers, proxy: TinyProxy
) -> None:
    """With [prometheus] proxy_url, evaluate at 02:10 decides as without, over plain HTTP and
    over TLS with basic auth (CONNECT); the proxy's log holds every query it forwarded."""
    through = f'proxy_url = "{proxy.url}"\n'
    evaluated = {}
    forwarded = {}
    for name, url, keys in (
        ("direct", servers.plain.url, ""),
        ("proxied", servers.plain.url, through),
        ("proxied TLS", servers.guarded.url, access(servers) + through),
    ):
        before = len(proxy.requests())
        loaded = load(write_config(tmp_path / name, url, keys), env={})
        result = evaluate_now(loaded.config, loaded.rules, at(2, 10))
        assert not result.report.source_errors, result.report.source_errors
        evaluated[name] = result.decisions
        forwarded[name] = proxy.requests()[before:]
    assert [(d.service, d.action.value) for d in evaluated["direct"]] == [
        ("web", "request_approval")
    ]
    assert evaluated["proxied"] == evaluated["direct"]
    assert evaluated["proxied TLS"] == evaluated["direct"]
    assert forwarded["direct"] == []
    plain_queries = f"GET {servers.plain.url}/api/v1/query"
    assert forwarded["proxied"], "no request went through the proxy"
    assert all(line.startswith(plain_queries) for line in forwarded["proxied"])
    guarded = servers.guarded.url.removeprefix("https://")
    assert forwarded["proxied TLS"], "no tunnel went through the proxy"
    assert all(line.startswith(f"CONNECT {guarded} ") for line in forwarded["proxied TLS"])


def test_a_proxy_down_or_refusing_the_tunnel_is_a_clear_source_error_naming_both(
    tmp_path: Path, run_cli: RunCli, servers: Servers, proxy: TinyProxy
) -> None:
    """`rollbackd evaluate` through a proxy nothing listens on, or one that cannot reach
    Prometheus, says that Prometheus is unreachable through that proxy and why; the
    proxy's password hidden, no traceback, no action."""
    port = free_port()
    down = f"http://rollbackd:{PROXY_PASSWORD}@{LOOPBACK}:{port}"
    down_shown = f"http://rollbackd:***@{LOOPBACK}:{port}"
    refused = "cannot connect to the proxy: Connection refused"
    no_tunnel = "it did not open a tunnel to the server: it answered 500 Unable to connect"
    nothing_there = f"https://{LOOPBACK}:{free_port()}"
    cases = (
        (servers.plain.url, "", down, f"{down_shown}: {refused}"),
        (servers.guarded.url, access(servers), down, f"{down_shown}: {refused}"),
        (nothing_there, access(servers), proxy.url, f"{proxy.url}: {no_tunnel}"),
    )
    for index, (url, keys, proxy_url, why) in enumerate(cases):
        config = write_config(tmp_path / str(index), url, keys + f'proxy_url = "{proxy_url}"\n')
        result = run_cli("evaluate", "--config", str(config))
        shown = result.stdout + result.stderr
        assert (
            f"source error: Prometheus at {url} is unreachable through proxy {why}" in result.stdout
        ), shown
        assert "no action" in result.stdout
        assert "Traceback" not in shown
        assert PROXY_PASSWORD not in shown
        assert PASSWORD not in shown
