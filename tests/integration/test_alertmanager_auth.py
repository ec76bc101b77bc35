"""Alertmanager's API as a source behind basic auth and mutual TLS, and through a proxy.

One ``prometheus-alertmanager`` serves the module with a ``--web.config.file``: it
serves HTTPS with a certificate of a CA made in the test, wants a client certificate
of that CA and a bcrypt-checked password. One ``tinyproxy`` is the forward proxy. The
daemon runs in this process on a clock ten minutes behind the wall clock, as in
``test_alertmanager_source.py``, whose helpers it reuses: what rollbackd decides from
the guarded Alertmanager is what it decides from a plain one, and a refusal is a
source error naming Alertmanager, with no secret in it, in the logs or in
``check-config``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.conftest import RunCli
from tests.integration.test_alertmanager_source import (
    _body,
    config_text,
    cycles,
    daemon_for,
    roll_back_while_it_still_fires,
)
from tests.reliability.support import close_daemon
from tests.support.alertmanager import Alertmanager, require_alertmanager
from tests.support.pki import Pki, guarded_web_config
from tests.support.processes import LOOPBACK, free_port, serving
from tests.support.tinyproxy import TinyProxy

pytestmark = pytest.mark.integration

PASSWORD = "am-pw-7f3e-91c2-never-shown"  # noqa: S105 -- a fake secret to look for
PROXY_PASSWORD = "px-am-40d8-never-shown"  # noqa: S105 -- a fake secret to look for


@dataclass(frozen=True)
class Guarded:
    """The guarded Alertmanager and the files that let rollbackd in (or not)."""

    am: Alertmanager
    pki: Pki
    rogue: Pki
    password_file: Path


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    """An Alertmanager behind mutual TLS and basic auth, whose webhooks are all lost."""
    require_alertmanager()
    secrets = tmp_path_factory.mktemp("secrets")
    pki = Pki.create(secrets / "pki")
    rogue = Pki.create(secrets / "rogue")
    password_file = secrets / "am.pass"
    password_file.write_text(PASSWORD + "\n")
    web_config = guarded_web_config(pki, "rollbackd", PASSWORD)
    am = Alertmanager(
        tmp_path_factory.mktemp("am"),
        f"http://{LOOPBACK}:9",
        token="unused",  # noqa: S106 -- no webhook arrives
        web_config=web_config,
        client={"auth": ("rollbackd", PASSWORD), "verify": pki.client_context()},
    )
    with am:
        yield Guarded(am, pki, rogue, password_file)


def access(
    guarded: Guarded,
    *,
    password_file: Path | None = None,
    ca: Path | None = None,
    client: Pki | None = None,
    proxy_url: str | None = None,
) -> str:
    """The [alertmanager] keys that let rollbackd in (variations make it fail)."""
    client = client or guarded.pki
    keys = (
        f'basic_auth = {{ username = "rollbackd", '
        f'password_file = "{password_file or guarded.password_file}" }}\n'
        f'tls = {{ ca_file = "{ca or guarded.pki.ca}", cert_file = "{client.client_cert}", '
        f'key_file = "{client.client_key}" }}\n'
    )
    return keys + (f'proxy_url = "{proxy_url}"\n' if proxy_url else "")


@pytest.mark.parametrize("route", ["direct", "through a proxy"])
def test_a_quiet_alertmanager_behind_tls_and_basic_auth_makes_a_version_known_good(
    tmp_path: Path,
    guarded: Guarded,
    proxy: TinyProxy,
    route: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Read over mutual TLS with a password, directly or through the proxy's CONNECT tunnel,
    an Alertmanager with no alert makes v1 known good, as a plain one does."""
    caplog.set_level(logging.DEBUG)
    proxied = route != "direct"
    service = f"shop-{'proxied' if proxied else 'direct'}"
    start = datetime.now(UTC) - timedelta(minutes=10)
    keys = access(guarded, proxy_url=proxy.url if proxied else None)
    before = len(proxy.requests())
    with capture_logs() as logs:
        daemon, clock = daemon_for(
            tmp_path, service, guarded.am.url, [(start, None, "v1")], keys=keys
        )
        try:
            cycles(daemon, clock, 6)  # 90 s of cycles: more than known_good_after (1m)
            last_good, _ = daemon.state.history.last_good(service)
            _, readiness = daemon.views.readiness()
        finally:
            close_daemon(daemon)
    assert "alertmanager" not in readiness["degraded"], readiness["degraded"]
    assert last_good == "v1"
    tunnels = proxy.requests()[before:]
    if proxied:
        assert tunnels, "nothing went through the proxy"
        host = guarded.am.url.removeprefix("https://")
        assert all(line.startswith(f"CONNECT {host} ") for line in tunnels), tunnels
    else:
        assert tunnels == []
    assert PASSWORD not in repr(logs) + caplog.text


def test_an_alert_still_firing_behind_tls_and_basic_auth_keeps_recovery_from_being_declared(
    tmp_path: Path, guarded: Guarded
) -> None:
    """An alert no webhook reported, firing in the guarded Alertmanager, rolls v2 back; while
    it still fires there the watch never declares recovery, though the health probe passes."""
    service = "pay"
    start = datetime.now(UTC) - timedelta(minutes=10)
    v2_at = start + timedelta(minutes=2)
    versions = [(start, v2_at, "v1"), (v2_at, None, "v2")]
    with serving(_body(200, b"ok")) as health:
        daemon, clock = daemon_for(
            tmp_path, service, guarded.am.url, versions, f"{health}/healthy", access(guarded)
        )
        try:
            roll_back_while_it_still_fires(daemon, clock, guarded.am, service, v2_at)
        finally:
            close_daemon(daemon)


REFUSALS = {
    "wrong password": (
        " answered 401 Unauthorized: it refused rollbackd's credentials "
        "([alertmanager] basic_auth or authorization)",
        "",
    ),
    "untrusted CA": (
        ": TLS failed: its certificate is not trusted: unable to get local issuer certificate "
        "(set [alertmanager] tls.ca_file to the CA that signed it)",
        "",
    ),
    "untrusted client certificate": (": TLS failed: ", "rollbackd's client certificate"),
    "proxy down": (
        " is unreachable through proxy http://rollbackd:***@",
        ": cannot connect to the proxy: Connection refused",
    ),
}
"""How each refusal's error goes on from ``Alertmanager at URL``, and what else it says. A
client certificate refused after a TLS 1.3 handshake reads as the server's alert or as an
EOF, as the race goes: both name rollbackd's client certificate."""


@pytest.mark.parametrize("variation", REFUSALS)
def test_refused_access_is_a_clear_source_error_naming_alertmanager_and_no_secret(
    tmp_path: Path, guarded: Guarded, variation: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong password, a certificate either side does not trust, or a proxy that is down:
    a source error naming Alertmanager and what is wrong, in the cycle and /readyz; the
    version never becomes known good; no secret in the error or the logs."""
    caplog.set_level(logging.DEBUG)
    wrong_password = tmp_path / "wrong.pass"
    wrong_password.write_text("not-" + PASSWORD)
    down = f"http://rollbackd:{PROXY_PASSWORD}@{LOOPBACK}:{free_port()}"
    keys = {
        "wrong password": access(guarded, password_file=wrong_password),
        "untrusted CA": access(guarded, ca=guarded.rogue.ca),
        "untrusted client certificate": access(guarded, client=guarded.rogue),
        "proxy down": access(guarded, proxy_url=down),
    }[variation]
    service = "refused"
    start = datetime.now(UTC) - timedelta(minutes=10)
    with capture_logs() as logs:
        daemon, clock = daemon_for(
            tmp_path, service, guarded.am.url, [(start, None, "v1")], keys=keys
        )
        try:
            report = daemon.loop.cycle()
            assert report is not None, daemon.loop.last_cycle_error
            error = report.source_errors.get("alertmanager", "")
            cycles(daemon, clock, 6)  # more than known_good_after (1m)
            last_good, _ = daemon.state.history.last_good(service)
            _, readiness = daemon.views.readiness()
        finally:
            close_daemon(daemon)
    goes_on, also = REFUSALS[variation]
    for said in (error, readiness["degraded"].get("alertmanager", "")):
        assert said.startswith(f"Alertmanager at {guarded.am.url}{goes_on}"), said
        assert also in said, said
    assert last_good is None
    shown = error + repr(logs) + caplog.text
    assert PASSWORD not in shown
    assert PROXY_PASSWORD not in shown


def test_check_config_names_what_is_set_for_alertmanager_without_the_secrets(
    tmp_path: Path, run_cli: RunCli, guarded: Guarded
) -> None:
    """check-config shows the user, the files and the proxy; neither password."""
    proxy_url = f"http://rollbackd:{PROXY_PASSWORD}@{LOOPBACK}:3128"
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "rules.toml").write_text("")
    config = tmp_path / "config.toml"
    config.write_text(
        config_text(tmp_path, "shop", guarded.am.url, keys=access(guarded, proxy_url=proxy_url))
    )
    result = run_cli("check-config", "--config", str(config), env={"COLUMNS": "1000"})
    assert result.returncode == 0, result.stdout + result.stderr
    pki = guarded.pki
    assert (
        f"alertmanager: {guarded.am.url}, active alerts read every cycle (timeout 1s), "
        f"basic auth as user 'rollbackd' (password from {guarded.password_file}), "
        f"TLS with CA {pki.ca}, client certificate {pki.client_cert} (key {pki.client_key}), "
        f"through proxy http://rollbackd:***@{LOOPBACK}:3128"
    ) in result.stdout, result.stdout
    assert PASSWORD not in result.stdout + result.stderr
    assert PROXY_PASSWORD not in result.stdout + result.stderr
