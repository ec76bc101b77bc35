"""A peer that repeats the request back never makes rollbackd repeat a secret.

A gateway answering "invalid token …", a debugging echo server or a hostile peer
(:class:`~tests.support.echo.EchoServer`) stands in for Prometheus, Alertmanager, a
forward proxy, a probe's target and a notifier's receiver. It refuses with 401, 400
or 500, its reason phrase and body repeating the ``Authorization`` (a bearer token,
or basic auth's base64 ``user:password``), the ``Proxy-Authorization``, the secret
headers and the request line; or it answers what no client can parse, quoting them
in the line the HTTP library then quotes. What ``evaluate``, and a running daemon's
``/readyz``, status page, API, ``status``, incident report, log and journal (the
notification's delivery record) show says what happened, with ``[redacted]`` for each
secret, and no secret in any form: not as written, not base64-encoded, not the rotated
one a secret file holds now. (``check-config`` asks no peer anything: an echo cannot
reach it.)
"""

from __future__ import annotations

import base64
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rollbackd.config import ProbeConfig
from rollbackd.sources.probes import Prober
from rollbackd.sources.prometheus import PrometheusSource
from tests.conftest import RunCli
from tests.reliability.support import TOKENS, daemon_process, tokens_toml, wait_until
from tests.support.echo import GARBLED, EchoServer
from tests.support.processes import LOOPBACK, free_port

pytestmark = pytest.mark.integration

USER = "rollbackd"
PROXY_USER = "proxyuser"
TOKEN = "tok-echo-5f1e-never-shown"  # noqa: S105 -- a fake secret to look for
ROTATED = "tok-echo-rotated-0c4b-never-shown"
PASSWORD = "pw-echo-a83d-never-shown"  # noqa: S105 -- a fake secret to look for
PROXY_PASSWORD = "px-echo-9e70-never-shown"  # noqa: S105 -- a fake secret to look for
API_KEY = "key-echo-27b9-never-shown"
TENANT = "tenant-echo-d4e2-never-shown"
PROBE_KEY = "probe-echo-61fa-never-shown"
NOTIFY_KEY = "notify-echo-3c58-never-shown"


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


SECRETS = {
    "bearer token": TOKEN,
    "rotated bearer token": ROTATED,
    "password": PASSWORD,
    "basic auth (base64)": basic(USER, PASSWORD),
    "proxy password": PROXY_PASSWORD,
    "proxy basic auth (base64)": basic(PROXY_USER, PROXY_PASSWORD),
    "API key header": API_KEY,
    "tenant header": TENANT,
    "probe's header": PROBE_KEY,
    "notifier's header": NOTIFY_KEY,
}

RULES = """
[[rules]]
name = "error-rate"
trigger = "high_error_rate"
query = 'sum by (service) (rate(http_requests_total{code=~"5.."}[2m]))'
condition = "> 0.05"
for = "2m"

[[rules]]
name = "outage-smoke"
trigger = "outage"
probe = "smoke"
condition = "< 1"
"""

PROBED_SERVICE = """
[[services]]
name = "web"
executor = "command"
command = ["true"]

[[services.probes]]
name = "smoke"
url = "{url}/health"
headers = {{ "X-Probe-Key" = "{key}" }}
"""


def leaks(texts: dict[str, str]) -> list[str]:
    """Which secret shows where, in any of :data:`SECRETS`' forms."""
    return [
        f"{name} in {where}"
        for where, text in texts.items()
        for name, secret in SECRETS.items()
        if secret in text
    ]


def write_files(root: Path) -> tuple[Path, Path]:
    """The bearer token's file and the password's file."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "rules").mkdir(exist_ok=True)
    (root / "rules" / "rules.toml").write_text(RULES)
    token_file, password_file = root / "prom.token", root / "secret.pass"
    token_file.write_text(TOKEN + "\n")
    password_file.write_text(PASSWORD + "\n")
    return token_file, password_file


EVALUATED: dict[str, tuple[str, bool, int | str, str]] = {
    "a 401 repeating the bearer token in its reason phrase": (
        "authorization",
        False,
        401,
        "answered 401 Refused Authorization = [redacted]; X-Api-Key = [redacted]: "
        "it refused rollbackd's credentials",
    ),
    "a 400 from a proxy repeating basic auth and the proxy's in its body": (
        "basic_auth",
        True,
        400,
        "refused the query: HTTP Status Code 400 (b'you sent:\\nAuthorization: [redacted]\\n"
        "Proxy-Authorization: [redacted]\\nX-Api-Key: [redacted]",
    ),
    "a 500 through a proxy repeating the bearer token in its body": (
        "authorization",
        True,
        500,
        "refused the query: HTTP Status Code 500 (b'you sent:\\nAuthorization: [redacted]\\n"
        "Proxy-Authorization: [redacted]",
    ),
    "an answer requests cannot parse, its error quoting basic auth": (
        "basic_auth",
        False,
        GARBLED,
        "InvalidChunkLength(got length b'Authorization = [redacted]'",
    ),
}


@pytest.mark.parametrize("case", EVALUATED)
def test_evaluate_against_an_echoing_prometheus_and_probe_target_shows_what_happened_not_secrets(
    tmp_path: Path, run_cli: RunCli, case: str
) -> None:
    """`rollbackd evaluate` says Prometheus refused (its status, [redacted] where the
    credentials were) and why the probe failed (h11 quoting [redacted]), no secret shown."""
    auth, through_proxy, answer, expected = EVALUATED[case]
    token_file, password_file = write_files(tmp_path)
    with EchoServer({"/api/v1/": answer, "/health": GARBLED}) as echo:
        credentials = {
            "authorization": f'authorization = {{ credentials_file = "{token_file}" }}',
            "basic_auth": (
                f'basic_auth = {{ username = "{USER}", password_file = "{password_file}" }}'
            ),
        }[auth]
        proxy = f"http://{PROXY_USER}:{PROXY_PASSWORD}@{LOOPBACK}:{echo.port}"
        # Through the proxy, Prometheus' host is never looked up: the proxy is asked for it.
        url = "http://prometheus.invalid:9090" if through_proxy else echo.url
        config = tmp_path / "config.toml"
        config.write_text(
            f'[daemon]\nrules = ["rules/*.toml"]\nstate_dir = "{tmp_path / "state"}"\n'
            f'[prometheus]\nurl = "{url}"\ntimeout = "5s"\n{credentials}\n'
            f'headers = {{ "X-Api-Key" = "{API_KEY}" }}\n'
            + (f'proxy_url = "{proxy}"\n' if through_proxy else "")
            + PROBED_SERVICE.format(url=echo.url, key=PROBE_KEY)
        )
        result = run_cli("evaluate", "--config", str(config), env={"COLUMNS": "1000"})
        asked = [headers for line, headers in echo.received if "/api/v1/" in line]
    shown = result.stdout + result.stderr
    assert result.returncode == 0, shown
    sent = " ".join(str(headers) for headers in asked)
    assert (TOKEN if auth == "authorization" else basic(USER, PASSWORD)) in sent
    assert API_KEY in sent
    assert (basic(PROXY_USER, PROXY_PASSWORD) in sent) == through_proxy
    assert f"source error: Prometheus at {url}" in result.stdout, shown
    assert expected in result.stdout, shown
    assert "illegal header line: bytearray(b'X-Probe-Key = [redacted]')" in result.stdout, shown
    assert leaks({"evaluate's output": shown}) == []


def readiness(daemon: Any) -> dict[str, Any]:
    answer: dict[str, Any] = daemon.request("GET", "/readyz", "viewer").json()
    return answer


def test_a_running_daemon_shows_what_echoing_peers_did_and_none_of_its_secrets(
    tmp_path: Path, run_cli: RunCli
) -> None:
    """Prometheus answers 500 repeating its bearer token, Alertmanager (through a proxy)
    401 repeating basic auth, the probe's target garbles its answer quoting its header and
    the notifier's receiver refuses repeating its key; then the token's file is rotated.
    /readyz, the status page, the API, `status`, the incident's report, the log and the
    journal say what each did with [redacted] in place of every secret, the rotated token's
    too."""
    token_file, password_file = write_files(tmp_path)
    answers: dict[str, int | str] = {
        "/api/v1/": 500,
        "/api/v2/alerts": 401,
        "/health": GARBLED,
        "/hooks/": 401,
    }
    with EchoServer(answers) as echo:
        port = free_port()
        proxy = f"http://{PROXY_USER}:{PROXY_PASSWORD}@{LOOPBACK}:{echo.port}"
        config = tmp_path / "config.toml"
        config.write_text(
            f"""
[daemon]
listen = "{LOOPBACK}:{port}"
state_dir = "{tmp_path / "state"}"
poll_interval = "1s"
rules = ["rules/*.toml"]
log_format = "json"

[prometheus]
url = "{echo.url}"
timeout = "2s"
authorization = {{ credentials_file = "{token_file}" }}
headers = {{ "X-Api-Key" = "{API_KEY}" }}

[alertmanager]
url = "http://alertmanager.invalid:9093"
timeout = "2s"
basic_auth = {{ username = "{USER}", password_file = "{password_file}" }}
headers = {{ "X-Scope-OrgID" = "{TENANT}" }}
proxy_url = "{proxy}"

[[notifiers]]
name = "ops"
kind = "webhook"
url = "{echo.url}/hooks/ops"
headers = {{ "X-Notify-Key" = "{NOTIFY_KEY}" }}
retries = 0
timeout = "2s"
{PROBED_SERVICE.format(url=echo.url, key=PROBE_KEY)}
{tokens_toml()}
"""
        )
        daemon = daemon_process(config, port, tmp_path / "logs")
        try:
            daemon.start()
            degraded = wait_until(
                "Prometheus and Alertmanager to be degraded",
                lambda: (
                    (d := readiness(daemon)["degraded"]).keys() >= {"alertmanager"}
                    and len(d) >= 2
                    and d
                ),
            )
            [incident] = wait_until("an incident for web", daemon.incidents)
            report = f"/api/v1/incidents/{incident['id']}/report"
            wait_until(
                "the notification's refusal in the incident's report",
                lambda: "not delivered" in daemon.request("GET", report, "viewer").text,
            )
            token_file.write_text(ROTATED + "\n")
            wait_until(
                "the rotated token to be sent to Prometheus",
                lambda: any(
                    h.get("Authorization") == f"Bearer {ROTATED}" for _, h in echo.received
                ),
            )
            rotated = datetime.now(UTC)
            after = wait_until(
                "a whole cycle on the rotated token",
                lambda: (
                    (r := readiness(daemon))["last_cycle"]
                    and datetime.fromisoformat(r["last_cycle"]) > rotated
                    and r
                ),
            )
            seen = {
                "/readyz before the rotation": "\n".join(degraded.values()),
                "/readyz after it": "\n".join(after["degraded"].values()),
                "the status page": daemon.request("GET", "/", "viewer").text,
                "the incidents API": daemon.request("GET", "/api/v1/incidents", "viewer").text,
                "the services API": daemon.request("GET", "/api/v1/services", "viewer").text,
                "status": run_cli(
                    "status",
                    "--config",
                    str(config),
                    env={"ROLLBACKD_TOKEN": TOKENS["viewer"], "COLUMNS": "1000"},
                ).stdout,
                "the report": run_cli(
                    "report", str(incident["id"]), "--config", str(config)
                ).stdout,
            }
        finally:
            assert daemon.stop(timeout=15) == 0, daemon.log_text()[-2000:]
        sent = " ".join(str(headers) for _, headers in echo.received)
    for secret in (TOKEN, ROTATED, basic(USER, PASSWORD), basic(PROXY_USER, PROXY_PASSWORD)):
        assert secret in sent, "the echo server was not sent what it should repeat"
    for secret in (API_KEY, TENANT, PROBE_KEY, NOTIFY_KEY):
        assert secret in sent, "the echo server was not sent what it should repeat"
    seen["the log"] = daemon.log_text() + daemon.stdout_path.read_text(errors="replace")
    seen["the journal"] = "".join(
        path.read_bytes().decode("utf-8", "replace")
        for path in (tmp_path / "state").iterdir()
        if path.is_file()
    )
    prometheus = (
        f"Prometheus at {echo.url} refused the query: HTTP Status Code 500 "
        "(b'you sent:\\nAuthorization: [redacted]\\nX-Api-Key: [redacted]"
    )
    alertmanager = (
        "Alertmanager at http://alertmanager.invalid:9093 answered 401 Refused "
        "Authorization = [redacted]; Proxy-Authorization = [redacted]; "
        "X-Scope-OrgID = [redacted]"
    )
    for where in ("/readyz before the rotation", "/readyz after it"):
        assert prometheus in seen[where], seen[where]
        assert alertmanager in seen[where], seen[where]
    probe = "illegal header line: bytearray(b'X-Probe-Key = [redacted]')"
    assert probe in seen["the services API"], seen["the services API"]
    refused = (
        "webhook 'ops': not delivered, not retried (1 attempt): HTTP 401 Refused "
        "X-Notify-Key = [redacted]: you sent: X-Notify-Key: [redacted]"
    )
    for where in ("the report", "the journal"):
        assert refused in seen[where], seen[where]
    assert alertmanager in seen["the log"]
    assert leaks(seen) == []


def test_the_http_libraries_own_log_records_repeat_no_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Shown at every level (rollbackd shows none of theirs, an operator may): urllib3's
    warning about a header line it cannot parse, and its traceback, quote the echoed
    credentials, and httpx's request line the echoed reason phrase; all redacted."""
    caplog.set_level(logging.DEBUG)
    with EchoServer({"/api/v1/": GARBLED, "/health": 401}) as echo:
        prometheus = PrometheusSource(
            echo.url,
            timedelta(seconds=5),
            headers={"X-Api-Key": API_KEY, "Authorization": f"Bearer {TOKEN}"},
            authenticated=True,
        )
        vector = prometheus.instant("up", datetime.now(UTC))
        probe = ProbeConfig(
            name="smoke", url=f"{echo.url}/health", headers={"X-Probe-Key": PROBE_KEY}
        )
        prober = Prober()
        try:
            result = prober.probe("web", probe)
        finally:
            prober.close()
    assert vector.error is not None and "[redacted]" in vector.error
    assert result.reason == f"GET {echo.url}/health answered 401, expected 200"
    logged = caplog.text
    assert "Failed to parse headers" in logged
    assert "HeaderParsingError" in logged  # the traceback
    assert "401 Refused X-Probe-Key = [redacted]" in logged
    assert leaks({"the libraries' logs": logged}) == []
