"""[prometheus]'s http_config keys (and probes' and notifiers' headers and tls), as loaded."""

from __future__ import annotations

import html
import json
from base64 import b64decode
from pathlib import Path
from urllib.parse import quote

import pytest
from structlog.testing import capture_logs

from rollbackd.config import load_config, parse_config
from rollbackd.errors import InvalidInput
from rollbackd.httpconfig import (
    basic_credentials,
    describe,
    live_authorization,
    redact,
    redacted_line,
    request_headers,
    secrets_sent,
    without_password,
)
from rollbackd.loader import load
from tests.support.pki import Pki

PASSWORD = "pw-7f3a9c-never-shown"  # noqa: S105 -- a fake secret to look for
TOKEN = "tok-51d2e8-never-shown"  # noqa: S105 -- a fake secret to look for


def write(tmp_path: Path, prometheus: str, rest: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[prometheus]\nurl = "https://prom.internal:9090"\n{prometheus}\n{rest}')
    return path


def load_problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(InvalidInput) as caught:
        load_config(path, env=env or {})
    return [str(p) for p in caught.value.problems]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("pki"))


def test_the_password_file_is_read_at_load_relative_to_the_config_and_stripped(
    tmp_path: Path,
) -> None:
    """password_file next to the config: its content (no newline) becomes the basic credentials."""
    (tmp_path / "prom.pass").write_text(PASSWORD + "\n")
    path = write(tmp_path, 'basic_auth = { username = "rb", password_file = "prom.pass" }')
    config = load_config(path, env={})
    auth = config.prometheus.basic_auth
    assert auth is not None
    assert auth.password_file == tmp_path / "prom.pass"
    headers = request_headers(config.prometheus.headers, auth, None)
    assert b64decode(headers["Authorization"].removeprefix("Basic ")) == f"rb:{PASSWORD}".encode()
    assert PASSWORD not in repr(config)
    assert PASSWORD not in str(config.model_dump())


def test_a_password_file_read_again_on_the_next_load_picks_up_a_rotated_password(
    tmp_path: Path,
) -> None:
    """Rotation: a reload reads the file again."""
    secret = tmp_path / "prom.pass"
    secret.write_text("old-password")
    path = write(tmp_path, 'basic_auth = { username = "rb", password_file = "prom.pass" }')
    first = load_config(path, env={}).prometheus.basic_auth
    secret.write_text("new-password")
    second = load_config(path, env={}).prometheus.basic_auth
    assert first is not None and first.password is not None
    assert second is not None and second.password is not None
    assert first.password.get_secret_value() == "old-password"
    assert second.password.get_secret_value() == "new-password"


def test_a_missing_secret_file_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    """Exit-2 material: the file, the key, and why, at load rather than at the first query."""
    path = write(tmp_path, 'authorization = { credentials_file = "absent.token" }')
    assert load_problems(path) == [
        f"{path}: prometheus.authorization.credentials_file: cannot read "
        f"{tmp_path / 'absent.token'}: No such file or directory"
    ]


def test_an_empty_secret_file_is_refused(tmp_path: Path) -> None:
    """A file holding nothing would send empty credentials: refused at load."""
    (tmp_path / "prom.pass").write_text("\n")
    path = write(tmp_path, 'basic_auth = { username = "rb", password_file = "prom.pass" }')
    assert load_problems(path) == [
        f"{path}: prometheus.basic_auth.password_file: {tmp_path / 'prom.pass'} is empty"
    ]


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (
            f'basic_auth = {{ username = "rb", password = "{PASSWORD}" }}',
            "config.toml: prometheus.basic_auth.password: a secret is never written in the "
            "config file: put it in a file named by password_file, or in the environment as "
            "ROLLBACKD_PROMETHEUS__BASIC_AUTH__PASSWORD",
        ),
        (
            f'authorization = {{ credentials = "{TOKEN}" }}',
            "config.toml: prometheus.authorization.credentials: a secret is never written in "
            "the config file: put it in a file named by credentials_file, or in the environment "
            "as ROLLBACKD_PROMETHEUS__AUTHORIZATION__CREDENTIALS",
        ),
    ],
)
def test_a_secret_written_in_the_config_file_is_refused_without_echoing_it(
    table: str, expected: str
) -> None:
    """The config file is shown, copied and committed: a secret in it is an error."""
    with pytest.raises(InvalidInput) as caught:
        parse_config(f"[prometheus]\n{table}\n", "config.toml", {})
    assert [str(p) for p in caught.value.problems] == [expected]
    assert PASSWORD not in str(caught.value)
    assert TOKEN not in str(caught.value)


def test_secrets_from_the_environment(tmp_path: Path) -> None:
    """ROLLBACKD_PROMETHEUS__AUTHORIZATION__CREDENTIALS gives a bearer token, no file needed."""
    path = write(tmp_path, "[prometheus.authorization]")
    env = {"ROLLBACKD_PROMETHEUS__AUTHORIZATION__CREDENTIALS": TOKEN}
    config = load_config(path, env=env)
    headers = request_headers({}, None, config.prometheus.authorization)
    assert headers == {"Authorization": f"Bearer {TOKEN}"}
    assert describe(headers={}, tls=None, authorization=config.prometheus.authorization) == [
        "Bearer authorization (credentials from the environment)"
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", "the secret is empty"),
        (" \n", "the secret is empty"),
        (f"{TOKEN}\nX-Injected: 1", "the secret holds more than one line"),
    ],
)
def test_a_secret_from_the_environment_is_held_to_the_rules_of_a_secret_file(
    tmp_path: Path, value: str, expected: str
) -> None:
    """An empty or multi-line variable is refused at load, naming it, as its file would be."""
    path = write(tmp_path, "[prometheus.authorization]")
    env = {"ROLLBACKD_PROMETHEUS__AUTHORIZATION__CREDENTIALS": value}
    assert load_problems(path, env) == [
        f"environment ROLLBACKD_PROMETHEUS__AUTHORIZATION__CREDENTIALS: {expected}"
    ]


def test_a_secret_from_the_environment_loses_its_trailing_newline_as_a_file_does(
    tmp_path: Path,
) -> None:
    """``export X=$(cat token)`` and ``X="$(cat token)\n"`` send the same credentials."""
    path = write(tmp_path, "[prometheus.authorization]")
    env = {"ROLLBACKD_PROMETHEUS__AUTHORIZATION__CREDENTIALS": TOKEN + "\n"}
    config = load_config(path, env=env)
    headers = request_headers({}, None, config.prometheus.authorization)
    assert headers == {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ROLLBACKD_PROMETHEUS__BASIC_AUTH", f'{{"username": "rb", "password": "{PASSWORD}"'),
        ("ROLLBACKD_PROMETHEUS__BASIC_AUTH", '{"username": "rb", "password": 73914682}'),
        ("ROLLBACKD_ALERTMANAGER__AUTHORIZATION", f'"{TOKEN}"'),
        ("ROLLBACKD_PROMETHEUS__HEADERS", '{"X-Api-Key": 73914682}'),
    ],
)
def test_a_mistyped_secret_in_the_environment_is_refused_without_echoing_it(
    tmp_path: Path, variable: str, value: str
) -> None:
    """A variable that is no table, or a password that is no string, is named, never shown."""
    path = write(tmp_path, "", '[alertmanager]\nurl = "http://am.internal:9093"')
    shown = "\n".join(load_problems(path, {variable: value}))
    assert variable in shown
    for secret in (PASSWORD, TOKEN, "73914682"):
        assert secret not in shown


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (
            'basic_auth = { username = "rb", password_file = "/p" }\n'
            'authorization = { credentials_file = "/t" }',
            "config.toml: prometheus: basic_auth and authorization are both set: at most one "
            "can be",
        ),
        (
            'basic_auth = { username = "rb" }',
            "config.toml: prometheus.basic_auth: basic_auth needs password_file (or the password "
            "in the environment, ROLLBACKD_<SECTION>__BASIC_AUTH__PASSWORD)",
        ),
        (
            'authorization = { type = "Basic", credentials_file = "/t" }',
            "config.toml: prometheus.authorization.type: type 'Basic' is what basic_auth is for: "
            "use basic_auth instead",
        ),
        (
            'tls = { cert_file = "/c.pem" }',
            "config.toml: prometheus.tls: cert_file and key_file go together: a client "
            "certificate needs both",
        ),
        (
            'headers = { Authorization = "Bearer x" }',
            "config.toml: prometheus.headers: 'Authorization' cannot be set here: the client "
            "sets it, or basic_auth and authorization do",
        ),
        (
            'headers = { "X Tenant" = "a" }',
            "config.toml: prometheus.headers: 'X Tenant' is not a valid header name",
        ),
        (
            'proxy_url = "proxy:3128"',
            "config.toml: prometheus.proxy_url: expected an http:// or https:// proxy URL",
        ),
        (
            'headers = { "X-Scope-OrgID" = "équipe" }',
            "config.toml: prometheus.headers: the value of 'X-Scope-OrgID' must be one line of "
            "printable ASCII, at most 4096 characters: other characters are sent differently "
            "by each HTTP client",
        ),
        (
            'proxy_url = "http://user:pw@proxy:99999"',
            "config.toml: prometheus.proxy_url: the port must be a number from 1 to 65535",
        ),
        (
            'proxy_url = "http://proxy:abc"',
            "config.toml: prometheus.proxy_url: the port must be a number from 1 to 65535",
        ),
        (
            'proxy_url = "socks5://proxy:1080"',
            "config.toml: prometheus.proxy_url: SOCKS proxies are not supported: use an http:// "
            "or https:// proxy",
        ),
    ],
)
def test_invalid_http_config_is_refused_naming_the_key(table: str, expected: str) -> None:
    """Each mistake names its key and says what to do, as Prometheus would refuse it."""
    with pytest.raises(InvalidInput) as caught:
        parse_config(f"[prometheus]\n{table}\n", "config.toml", {})
    assert [str(p) for p in caught.value.problems] == [expected]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            f"https://rollbackd:{PASSWORD}@prom.internal:9090",
            "a user name or password in the URL would be shown in messages and logs: set "
            "basic_auth instead (its password in password_file)",
        ),
        (
            f"ftp://rollbackd:{PASSWORD}@prom.internal",
            "a user name or password in the URL would be shown in messages and logs: set "
            "basic_auth instead (its password in password_file)",
        ),
        ("http://::1:9090", "an IPv6 address goes in brackets: http://[::1]:9090"),
        ("http://prom.internal:99999", "expected a host, and a port from 1 to 65535 if any"),
        (
            "http://prom.internal:9090/prom?tenant=a",
            "a query or fragment cannot be in it: the API's paths go after the URL",
        ),
    ],
)
@pytest.mark.parametrize("section", ["prometheus", "alertmanager"])
def test_a_server_url_that_is_no_base_for_the_api_is_refused_without_its_password(
    section: str, url: str, expected: str
) -> None:
    """check-config refuses a password in the URL (pointing to basic_auth), never showing it,
    and a URL the API's paths cannot follow; an IPv6 literal with a path prefix is fine."""
    with pytest.raises(InvalidInput) as caught:
        parse_config(f'[{section}]\nurl = "{url}"\n', "config.toml", {})
    assert [str(p) for p in caught.value.problems] == [f"config.toml: {section}.url: {expected}"]
    parse_config(f'[{section}]\nurl = "http://[::1]:9090/prom/"\n', "config.toml", {})


def test_tls_files_are_checked_at_load_for_prometheus_probes_and_notifiers(
    tmp_path: Path, pki: Pki
) -> None:
    """A CA file that is no certificate, or a missing one, is a config error naming the key."""
    (tmp_path / "not-a-ca.pem").write_text("hello\n")
    probe = (
        '[[services]]\nname = "web"\nexecutor = "command"\ncommand = ["true"]\n'
        '[[services.probes]]\nname = "login"\nurl = "https://127.0.0.1:1/"\n'
        'tls = { ca_file = "absent.pem" }\n'
        '[[notifiers]]\nname = "chat"\nkind = "webhook"\nurl = "https://127.0.0.1:1/"\n'
        f'tls = {{ ca_file = "{pki.ca}", cert_file = "{pki.client_cert}", '
        f'key_file = "{pki.ca}" }}\n'
    )
    path = write(tmp_path, 'tls = { ca_file = "not-a-ca.pem" }', probe)
    found = load_problems(path)
    assert [line.split(": ")[1] for line in found] == [
        "prometheus.tls.ca_file",
        "services[0].probes[0].tls.ca_file",
        "notifiers[0].tls.cert_file",
    ]
    assert f"cannot read {tmp_path / 'absent.pem'}: No such file or directory" in found[1]


@pytest.mark.parametrize(
    ("pair", "expected"),
    [
        (
            "swapped",
            "cert_file and key_file look swapped: cert_file holds no certificate, "
            "key_file holds one",
        ),
        ("mismatched", "the key is not the certificate's (they do not belong together)"),
    ],
)
def test_a_client_certificate_and_key_that_do_not_go_together_say_why(
    tmp_path: Path, pki: Pki, pair: str, expected: str
) -> None:
    """cert_file and key_file swapped, or a key of another certificate: the config error
    says which, not only OpenSSL's "PEM lib" or "key values mismatch"."""
    cert, key = {
        "swapped": (pki.client_key, pki.client_cert),
        "mismatched": (pki.client_cert, pki.server_key),
    }[pair]
    path = write(tmp_path, f'tls = {{ cert_file = "{cert}", key_file = "{key}" }}')
    [problem] = load_problems(path)
    assert problem == f"{path}: prometheus.tls.cert_file: {cert} with key_file {key}: {expected}"


def test_check_config_says_what_is_set_and_where_secrets_come_from_never_them(
    tmp_path: Path, pki: Pki
) -> None:
    """The summary line of [prometheus]; insecure_skip_verify is a warning."""
    (tmp_path / "prom.pass").write_text(PASSWORD)
    (tmp_path / "rules").mkdir()
    path = write(
        tmp_path,
        'basic_auth = { username = "rb", password_file = "prom.pass" }\n'
        'headers = { "X-Scope-OrgID" = "team-a" }\n'
        f'tls = {{ ca_file = "{pki.ca}", cert_file = "{pki.client_cert}", '
        f'key_file = "{pki.client_key}", server_name = "prom.internal", '
        "insecure_skip_verify = true }\n"
        'proxy_url = "http://user:proxy-pw@proxy:3128"',
        '[daemon]\nrules = []\n[[services]]\nname = "web"\nexecutor = "command"\n'
        'command = ["true"]\n',
    )
    loaded = load(path, env={})
    prometheus = loaded.config.prometheus
    phrases = describe(
        headers=prometheus.headers,
        tls=prometheus.tls,
        basic_auth=prometheus.basic_auth,
        authorization=prometheus.authorization,
        proxy_url=prometheus.proxy_url,
    )
    assert phrases == [
        f"basic auth as user 'rb' (password from {tmp_path / 'prom.pass'})",
        f"TLS with CA {pki.ca}, client certificate {pki.client_cert} (key {pki.client_key}), "
        "server name prom.internal, certificate NOT verified (insecure_skip_verify)",
        "headers: X-Scope-OrgID",
        "through proxy http://user:***@proxy:3128",
    ]
    assert any("prometheus.tls.insecure_skip_verify" in w for w in loaded.warnings)


def test_without_password_hides_only_the_password() -> None:
    """A proxy URL keeps its user, host and port; its password is stars."""
    assert without_password("http://u:p@[::1]:3128/x") == "http://u:***@[::1]:3128/x"
    assert without_password("http://proxy:3128") == "http://proxy:3128"


def test_a_secret_file_removed_mid_rotation_keeps_the_last_password_and_says_so_once(
    tmp_path: Path,
) -> None:
    """A file gone or emptied between two writes keeps the last password; a new one applies."""
    secret = tmp_path / "prom.pass"
    secret.write_text("old-password\n")
    path = write(tmp_path, 'basic_auth = { username = "rb", password_file = "prom.pass" }')
    live = live_authorization("prometheus", load_config(path, env={}).prometheus)
    assert live is not None
    old = basic_credentials("rb", "old-password")
    secret.unlink()
    with capture_logs() as logs:
        assert [live(), live()] == [old, old]
        secret.write_text("")
        assert live() == old
        secret.write_text("new-password\n")
        assert live() == basic_credentials("rb", "new-password")
    assert [(e["event"], e.get("why", "")) for e in logs] == [
        (
            "secret file unusable: the last value read is sent",
            f"cannot read {secret}: No such file or directory",
        ),
        ("secret file unusable: the last value read is sent", f"{secret} is empty"),
        ("secret file changed: the new value is sent", ""),
    ]
    assert "-password" not in str(logs)


def test_every_form_an_echo_may_give_a_sent_secret_is_redacted() -> None:
    """Basic auth's value, its base64, user:password and password, a header's value, and a
    proxy's password (as written, decoded, and as basic auth) become [redacted], also as JSON
    or HTML write them; a value too short to redact stays, as does a user name."""
    password, proxy_password = "pa/ss&w0rd", "p@ss-w0rd"
    secrets = secrets_sent(
        {"Authorization": basic_credentials("rb", password), "X-Api-Key": "k3y-value", "X": "abc"},
        [f"http://px:{quote(proxy_password, safe='')}@proxy:3128"],
    )
    echoed = [
        basic_credentials("rb", password),
        basic_credentials("rb", password).removeprefix("Basic "),
        f"rb:{password}",
        password,
        json.dumps(password)[1:-1].replace("/", "\\/"),
        html.escape(password),
        "k3y-value",
        proxy_password,
        quote(proxy_password, safe=""),
        basic_credentials("px", proxy_password).removeprefix("Basic "),
    ]
    for text in echoed:
        assert redact(f"refused {text}!", secrets) == "refused [redacted]!", text
    assert redact("user rb of team abc", secrets) == "user rb of team abc"
    bearer = secrets_sent({}, authorization=["Bearer t0ken-value"])
    assert redact("invalid token t0ken-value", bearer) == "invalid token [redacted]"


def test_a_secret_cut_in_two_shows_none_of_its_head() -> None:
    """A head of an answer ending inside a secret ends with [redacted]; a line clipped to a
    limit is redacted before it is clipped, so the clip never leaves part of a secret."""
    secrets = secrets_sent({"X-Api-Key": "k3y-0123456789"})
    assert redact("denied for k3y-012", secrets, cut=True) == "denied for [redacted]"
    assert redact("denied for k3y-012", secrets) == "denied for k3y-012"  # whole: no secret
    line = redacted_line("x" * 195 + " k3y-0123456789", secrets, 200)
    assert len(line) == 200
    assert "k3y" not in line
