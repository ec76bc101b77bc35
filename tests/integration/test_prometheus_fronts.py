"""rollbackd against Prometheus and Alertmanager as they are deployed behind something:
under a path prefix, behind a gateway that wants a tenant, a redirect or a login page.

One Prometheus over the history of ``test_prometheus_auth.py`` (web fails from 02:05
under v2) serves under ``/prom`` (``--web.route-prefix``, ``--web.external-url``), one
Alertmanager under ``/am``. Small HTTP servers in this process are the fronts: a
gateway to the real Prometheus that answers 401 ``no org id`` without
``X-Scope-OrgID`` (Mimir's and Cortex's answer), fronts that redirect to another
host, port or scheme, and a login proxy. Each is read as a user sees it: a URL that
works decides as Prometheus itself; one that does not is a source error naming the
server and what to set, never a traceback, never healthy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest

from rollbackd.evaluation import evaluate_now
from rollbackd.loader import load
from rollbackd.sources.alertmanager import AlertmanagerError, AlertmanagerSource
from rollbackd.sources.prometheus import PrometheusSource
from tests.conftest import RunCli
from tests.integration.test_prometheus_auth import (
    at,
    decisions_of_a_day_cycle,
    history,
    write_config,
)
from tests.support.alertmanager import Alertmanager, require_alertmanager
from tests.support.fixtures import backfilled_prometheus
from tests.support.processes import LOOPBACK, Answer, Prometheus, serving

pytestmark = pytest.mark.integration

TOKEN = "tok-fr0n7-55aa-never-shown"  # noqa: S105 -- a fake secret to look for
OTHER_HOST = "127.0.0.2"
"""Another host on loopback: a redirect there leaves the configured one."""
APPROVAL = [("web", "request_approval")]
"""What every way of reading the history decides at 02:10 (as in test_prometheus_auth)."""


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    with backfilled_prometheus(
        tmp_path_factory, "prefixed", history(), route_prefix="/prom"
    ) as running:
        yield running


@pytest.fixture(scope="module")
def am(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Alertmanager]:
    require_alertmanager()
    with Alertmanager(
        tmp_path_factory.mktemp("am"),
        f"http://{LOOPBACK}:9",
        token="unused",  # noqa: S106 -- no webhook is sent
        route_prefix="/am",
    ) as running:
        yield running


def root(server: Prometheus | Alertmanager) -> str:
    """The server's URL without its route prefix: what a user who forgot it writes."""
    return server.url.removesuffix(server.route_prefix)


def reply(handler: BaseHTTPRequestHandler, status: int, body: bytes, kind: str) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", kind)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    with contextlib.suppress(BrokenPipeError):
        handler.wfile.write(body)


class Gateway:
    """A reverse proxy to ``upstream`` that keeps the headers of each request it had; with
    ``tenant`` set it answers 401 ``no org id`` unless ``X-Scope-OrgID`` is that tenant,
    as Mimir's and Cortex's gateways do."""

    def __init__(self, upstream: str, tenant: str | None = None) -> None:
        self.upstream = upstream
        self.tenant = tenant
        self.seen: list[dict[str, str]] = []

    def __call__(self, handler: BaseHTTPRequestHandler) -> None:
        self.seen.append(dict(handler.headers))
        if self.tenant is not None and handler.headers.get("X-Scope-OrgID") != self.tenant:
            reply(handler, 401, b"no org id\n", "text/plain; charset=utf-8")
            return
        answer = httpx.get(self.upstream + handler.path, timeout=10.0)
        reply(handler, answer.status_code, answer.content, answer.headers["Content-Type"])


def redirect(status: int, to: str) -> Answer:
    """Redirects every request to the same path and query under ``to``."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Location", to + handler.path)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return answer


LOGIN_PAGE = b"<!DOCTYPE html><html><body><form action=/login>Sign in</form></body></html>"


def login_proxy(handler: BaseHTTPRequestHandler) -> None:
    """An SSO proxy: its login page at /login, a redirect there for everything else."""
    if handler.path.startswith("/login"):
        reply(handler, 200, LOGIN_PAGE, "text/html; charset=utf-8")
        return
    handler.send_response(302)
    handler.send_header("Location", f"/login?rd={handler.path}")
    handler.send_header("Content-Length", "0")
    handler.end_headers()


def test_prometheus_and_alertmanager_under_a_path_prefix_work_with_or_without_a_slash(
    tmp_path: Path, run_cli: RunCli, prom: Prometheus, am: Alertmanager
) -> None:
    """With url ending in /prom or /prom/ (and /am or /am/), check-config accepts it,
    evaluate and a running daemon (which reads Alertmanager too) decide as ever, and
    Alertmanager's firing alert is read."""
    am.post_alert({"alertname": "ShopDown", "service": "shop", "rollbackd_trigger": "outage"})
    for name, slash in (("bare", ""), ("slash", "/")):
        keys = f'[alertmanager]\nurl = "{am.url}{slash}"\n'
        config = write_config(tmp_path / name, prom.url + slash, keys)
        if slash:
            checked = run_cli("check-config", "--config", str(config), env={"COLUMNS": "400"})
            assert checked.returncode == 0, checked.stderr
            assert f"prometheus: {prom.url}/\n" in checked.stdout
            assert f"alertmanager: {am.url}/, active alerts" in checked.stdout
        loaded = load(config, env={})
        evaluated = evaluate_now(loaded.config, loaded.rules, at(2, 10))
        assert not evaluated.report.source_errors, evaluated.report.source_errors
        assert [(d.service, d.action.value) for d in evaluated.decisions] == APPROVAL
        source = AlertmanagerSource.from_config(loaded.config)
        assert source is not None
        assert [a.name for a in source.active().firing] == ["ShopDown"]
        ran, _ = decisions_of_a_day_cycle(tmp_path / name / "run", prom.url + slash, keys)
        assert [(d.service, d.action.value) for d in ran] == APPROVAL


def test_a_url_without_the_path_prefix_names_the_server_and_the_prefix_to_add(
    tmp_path: Path, run_cli: RunCli, prom: Prometheus, am: Alertmanager
) -> None:
    """Prometheus' and Alertmanager's 404 at the root is an error saying the URL lacks the
    path prefix, where `evaluate` shows it and where the daemon reads Alertmanager."""
    keys = f'[alertmanager]\nurl = "{root(am)}"\n'
    config = write_config(tmp_path, root(prom), keys)
    result = run_cli("evaluate", "--config", str(config))
    assert (
        f"source error: Prometheus at {root(prom)} answered 404 Not Found for /api/v1/query: "
        "its API is not at this URL; if it serves under a path prefix (--web.route-prefix, "
        "Mimir's /prometheus), [prometheus] url must end with it"
    ) in result.stdout, result.stdout + result.stderr
    assert "no action" in result.stdout
    source = AlertmanagerSource.from_config(load(config, env={}).config)
    assert source is not None
    with pytest.raises(AlertmanagerError) as caught:
        source.active()
    assert str(caught.value) == (
        f"Alertmanager at {root(am)} answered 404 Not Found for /api/v2/alerts: its API is not "
        "at this URL; if it serves under a path prefix (--web.route-prefix, Mimir's "
        "/alertmanager), [alertmanager] url must end with it"
    )


def test_a_gateway_wanting_a_tenant_says_so_and_with_one_decides_as_prometheus(
    tmp_path: Path, run_cli: RunCli, prom: Prometheus
) -> None:
    """Without X-Scope-OrgID the gateway's 401 is an error saying to set the tenant header,
    though a token was sent (and not shown); with it, evaluate decides as Prometheus."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token = f'authorization = {{ credentials_file = "{token_file}" }}\n'
    gateway = Gateway(prom.url, tenant="team-a")
    with serving(gateway) as front:
        without = run_cli("evaluate", "--config", str(write_config(tmp_path / "no", front, token)))
        shown = without.stdout + without.stderr
        assert (
            f"source error: Prometheus at {front} answered 401 Unauthorized: no org id: it "
            'wants a tenant (Mimir, Cortex): set [prometheus] headers = { "X-Scope-OrgID" = '
            '"<tenant>" }'
        ) in without.stdout, shown
        assert "no action" in without.stdout
        assert TOKEN not in shown
        keys = token + 'headers = { "X-Scope-OrgID" = "team-a" }\n'
        loaded = load(write_config(tmp_path / "tenant", front, keys), env={})
        through = evaluate_now(loaded.config, loaded.rules, at(2, 10))
    direct = load(write_config(tmp_path / "direct", prom.url), env={})
    assert not through.report.source_errors, through.report.source_errors
    assert through.decisions == evaluate_now(direct.config, direct.rules, at(2, 10)).decisions
    assert [(d.service, d.action.value) for d in through.decisions] == APPROVAL
    assert gateway.seen[-1]["X-Scope-OrgID"] == "team-a"


def test_a_redirect_is_refused_naming_the_url_to_set_and_nothing_reaches_its_target(
    tmp_path: Path, prom: Prometheus
) -> None:
    """301, 302, 307 and 308 to another host, port or scheme: no request, so neither
    tenant nor token, reaches the target; the error names the url to configure."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    keys = (
        f'authorization = {{ credentials_file = "{token_file}" }}\n'
        'headers = { "X-Scope-OrgID" = "team-a" }\n'
    )
    elsewhere = Gateway(root(prom))
    with serving(elsewhere, OTHER_HOST) as other_host, serving(elsewhere) as other_port:
        https = other_port.replace("http://", "https://")
        cases = ((301, other_host), (302, https), (307, other_port), (308, other_host))
        for status, target in cases:
            with serving(redirect(status, target)) as front:
                path = write_config(tmp_path / str(status), f"{front}/prom", keys)
                vector = PrometheusSource.from_config(load(path, env={}).config).instant(
                    "up", at(2, 10)
                )
            assert vector.error is not None
            assert vector.error.startswith(f"Prometheus at {front}/prom redirected ({status} ")
            assert f'set [prometheus] url = "{target}/prom" (rollbackd follows no redirect' in (
                vector.error
            )
        with serving(redirect(307, other_host)) as front:
            keys = f'[alertmanager]\nurl = "{front}"\n'
            path = write_config(tmp_path / "am", prom.url, keys)
            source = AlertmanagerSource.from_config(load(path, env={}).config)
            assert source is not None
            with pytest.raises(AlertmanagerError) as caught:
                source.active()
        assert f'set [alertmanager] url = "{other_host}" (rollbackd follows' in str(caught.value)
    assert elsewhere.seen == []


@pytest.mark.parametrize("front", ["login page", "redirect to login"])
def test_a_login_proxy_in_front_is_an_error_saying_so_never_no_data(
    tmp_path: Path, run_cli: RunCli, prom: Prometheus, front: str
) -> None:
    """A 200 HTML login page, or a 302 to one, is a source error naming Prometheus (in
    `evaluate`: no action, no traceback) or Alertmanager and asking about a login proxy."""
    with serving(login_proxy) as proxy:
        url = f"{proxy}/login" if front == "login page" else proxy
        keys = f'[alertmanager]\nurl = "{url}"\n'
        config = write_config(tmp_path, url, keys)
        result = run_cli("evaluate", "--config", str(config))
        source = AlertmanagerSource.from_config(load(config, env={}).config)
        assert source is not None
        with pytest.raises(AlertmanagerError) as caught:
            source.active()
    shown = result.stdout + result.stderr
    expected = {
        "login page": (
            " answered something that is not its API: an HTML page (text/html): is a login "
            "proxy (SSO) in front of it? [{section}] url must reach the API itself"
        ),
        "redirect to login": (
            f" redirected (302 Found) to {proxy}/login, not to its API: is a login proxy (SSO) "
            "in front of it? rollbackd follows no redirect: [{section}] url must reach the API "
            "itself"
        ),
    }[front]
    assert f"source error: Prometheus at {url}" + expected.format(section="prometheus") in (
        result.stdout
    ), shown
    assert "no action" in result.stdout
    assert "Traceback" not in shown
    assert str(caught.value).startswith(
        f"Alertmanager at {url}" + expected.format(section="alertmanager")
    )


def test_a_redirect_that_repeats_the_token_in_its_location_shows_it_redacted(
    tmp_path: Path, prom: Prometheus
) -> None:
    """A front redirecting to a location that holds the token it was sent (in the path,
    which the error shows) has it named as [redacted], never the token."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    keys = f'authorization = {{ credentials_file = "{token_file}" }}\n'

    def echoing(handler: BaseHTTPRequestHandler) -> None:
        token = handler.headers.get("Authorization", "").partition(" ")[2]
        handler.send_response(302, f"Found {token}")
        handler.send_header("Location", f"/{token}/api/v1/query")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    with serving(echoing) as front:
        path = write_config(tmp_path / "echo", f"{front}/prom", keys)
        vector = PrometheusSource.from_config(load(path, env={}).config).instant("up", at(2, 10))
    assert vector.error is not None
    assert TOKEN not in vector.error
    assert f"redirected (302 Found [redacted]) to {front}/[redacted]/api/v1/query: set" in (
        vector.error
    )
