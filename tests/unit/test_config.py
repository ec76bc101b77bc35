"""Config parsing: design §4's file, defaults, environment overrides and errors."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollbackd.config import load_config, parse_config
from rollbackd.core.model import Action, Severity
from rollbackd.errors import InvalidInput

MINIMAL_SERVICE = """
[[services]]
name = "web"
repo = "/srv/web"
"""


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(InvalidInput) as caught:
        parse_config(text, "config.toml", env)
    return [str(p) for p in caught.value.problems]


def test_the_example_config_loads_with_every_section(repo: Path) -> None:
    """config.example.toml is valid and its durations arrive as timedeltas."""
    config = load_config(repo / "config.example.toml", env={})
    assert config.daemon.poll_interval == timedelta(seconds=15)
    assert config.prometheus.timeout == timedelta(seconds=5)
    assert config.services[0].name == "web"
    assert config.services[0].probe_names == ["health", "login", "critical_path"]
    assert config.services[0].after_rollback[-1] == ["systemctl", "restart", "web"]
    assert config.deploys.attribution_window == timedelta(hours=2)
    assert config.recovery.window == timedelta(minutes=15)
    assert config.tokens[0].role == "ci"
    assert config.silences[0].reason == "database maintenance"


def test_the_design_section_4_example_is_accepted() -> None:
    """The minimum shape printed in design §4 parses as written."""
    text = """
[daemon]
listen = "127.0.0.1:9095"
state_dir = "/var/lib/rollbackd"
poll_interval = "15s"
rules = ["rules/*.toml"]
dry_run = false
[prometheus]
url = "http://127.0.0.1:9090"
timeout = "5s"
[[services]]
name = "web"
health_url = "http://127.0.0.1:8080/health"
repo = "/srv/web"
executor = "git"
strategy = "revert"
after_rollback = [["npm", "ci"], ["npm", "run", "build"], ["systemctl", "restart", "web"]]
[policy.critical]
action = "rollback"
[policy.high]
action = "rollback"
deadline = "15m"
approver = "senior_admin"
[deploys]
version_metric = "app_build_info"
attribution_window = "2h"
known_good_after = "30m"
[recovery]
window = "15m"
[alerts]
trigger_label = "rollbackd_trigger"
[[tokens]]
name = "ci-pipeline"
sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
role = "ci"
"""
    config = parse_config(text, "config.toml")
    high = config.policy.table()[Severity.HIGH]
    assert high.action is Action.ROLLBACK
    assert high.deadline == timedelta(minutes=15)
    assert high.approver == "senior_admin"


def test_an_empty_file_gives_the_playbook_defaults() -> None:
    """With no [policy] tables the design's default policy table applies."""
    table = parse_config("", "config.toml").policy.table()
    assert table[Severity.CRITICAL].action is Action.ROLLBACK
    assert table[Severity.HIGH].action is Action.REQUEST_APPROVAL
    assert table[Severity.HIGH].deadline == timedelta(minutes=15)
    assert table[Severity.HIGH].approver == "senior_admin"
    assert table[Severity.MEDIUM].action is Action.ESCALATE
    assert table[Severity.MEDIUM].deadline == timedelta(hours=2)
    assert table[Severity.MEDIUM].approver == "team"
    assert table[Severity.LOW].action is Action.RECORD


def test_environment_overrides_one_nested_key_and_keeps_the_rest() -> None:
    """ROLLBACKD_PROMETHEUS__URL replaces the URL; the file's timeout stays."""
    text = '[prometheus]\nurl = "http://file:9090"\ntimeout = "3s"\n'
    config = parse_config(text, "config.toml", {"ROLLBACKD_PROMETHEUS__URL": "http://env:9090"})
    assert config.prometheus.url == "http://env:9090"
    assert config.prometheus.timeout == timedelta(seconds=3)


def test_environment_overrides_booleans_durations_and_lists() -> None:
    """Scalars are parsed from strings and lists from JSON."""
    env = {
        "ROLLBACKD_DAEMON__DRY_RUN": "true",
        "ROLLBACKD_DAEMON__POLL_INTERVAL": "1m30s",
        "ROLLBACKD_DAEMON__RULES": '["/etc/rollbackd/rules/*.toml"]',
        "ROLLBACKD_SERVICES": '[{"name": "api", "repo": "/srv/api"}]',
        "ROLLBACKD_CONFIG": "/ignored/not-a-key.toml",
    }
    config = parse_config(MINIMAL_SERVICE, "config.toml", env)
    assert config.daemon.dry_run is True
    assert config.daemon.poll_interval == timedelta(seconds=90)
    assert config.daemon.rules == ["/etc/rollbackd/rules/*.toml"]
    assert [s.name for s in config.services] == ["api"]


def test_a_bad_environment_value_blames_the_variable() -> None:
    """An invalid override names the environment variable, not the file."""
    assert problems("", {"ROLLBACKD_PROMETHEUS__TIMEOUT": "forever"}) == [
        "environment ROLLBACKD_PROMETHEUS__TIMEOUT: expected a duration such as '15s', "
        "'2m' or '1h30m', got 'forever'"
    ]


def test_the_process_environment_is_read_only_by_load_config(tmp_path: Path) -> None:
    """parse_config without env ignores the process environment."""
    path = tmp_path / "config.toml"
    path.write_text("")
    config = load_config(path, env={"ROLLBACKD_DAEMON__LISTEN": "0.0.0.0:1234"})
    assert config.daemon.listen == "0.0.0.0:1234"
    assert parse_config("", "config.toml").daemon.listen == "127.0.0.1:9095"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bogus = 1", "config.toml: bogus: unknown key"),
        ("[daemon]\nlistn = 'x'", "config.toml: daemon.listn: unknown key"),
        (
            '[daemon]\npoll_interval = "fast"',
            "config.toml: daemon.poll_interval: expected a duration such as '15s', '2m' or "
            "'1h30m', got 'fast'",
        ),
        (
            '[daemon]\npoll_interval = "500ms"',
            "config.toml: daemon.poll_interval: must be at least 1s",
        ),
        (
            '[daemon]\nlisten = "9095"',
            "config.toml: daemon.listen: expected HOST:PORT such as '127.0.0.1:9095', got '9095'",
        ),
        (
            '[prometheus]\nurl = "localhost:9090"',
            "config.toml: prometheus.url: expected an http:// or https:// URL, "
            "got 'localhost:9090'",
        ),
        (
            '[prometheus]\ntimeout = "0s"',
            "config.toml: prometheus.timeout: must be between 1ms and 5m: every call to "
            "Prometheus needs a timeout",
        ),
        (
            "[prometheus]\nmax_response_bytes = 1000",
            "config.toml: prometheus.max_response_bytes: Input should be greater than or equal "
            "to 65536, got 1000",
        ),
        (
            '[[services]]\nname = "web"',
            "config.toml: services[0]: executor 'git' needs 'repo', the git working copy the "
            "service is deployed from",
        ),
        (
            MINIMAL_SERVICE + 'strategy = "rebase"',
            "config.toml: services[0].strategy: Input should be 'revert', 'reset' or 'tag', "
            "got 'rebase'",
        ),
        (
            MINIMAL_SERVICE + "after_rollback = [[]]",
            "config.toml: services[0].after_rollback: entry 0 is empty: each command is an argv "
            "list like ['systemctl', 'restart', 'web']",
        ),
        (
            MINIMAL_SERVICE + 'after_rollback = "systemctl restart web"',
            "config.toml: services[0].after_rollback: Input should be a valid list, "
            "got 'systemctl restart web'",
        ),
        (
            '[[services]]\nname = "web"\nexecutor = "script"',
            "config.toml: services[0]: executor 'script' needs 'script', the path of the "
            "rollback script",
        ),
        (
            '[[services]]\nname = "../web"\nrepo = "/srv"',
            "config.toml: services[0].name: String should match pattern "
            "'^[A-Za-z0-9][A-Za-z0-9_.-]*$', got '../web'",
        ),
        (
            MINIMAL_SERVICE + MINIMAL_SERVICE,
            "config.toml: services: names must be unique, repeated: ['web']",
        ),
        (
            MINIMAL_SERVICE + '[[services.probes]]\nname = "login"\nurl = "ftp://x"',
            "config.toml: services[0].probes[0].url: expected an http:// or https:// URL, "
            "got 'ftp://x'",
        ),
        (
            MINIMAL_SERVICE + '[[services.probes]]\nname = "p"\nurl = "http://x"\nbody_match = "("',
            "config.toml: services[0].probes[0].body_match: not a valid regular expression: "
            "missing ), unterminated subpattern at position 0",
        ),
        (
            '[policy.high]\naction = "rollbak"',
            "config.toml: policy.high.action: Input should be 'rollback', 'request_approval', "
            "'escalate' or 'record', got 'rollbak'",
        ),
        (
            '[policy.low]\naction = "record"\ndeadline = "1h"',
            "config.toml: policy.low: action 'record' takes no deadline or approver",
        ),
        (
            '[policy.high]\naction = "request_approval"\napprover = "boss"',
            "config.toml: policy.high.approver: Input should be 'admin', 'senior_admin', 'team', "
            "'database', 'ci', 'alertmanager' or 'viewer', got 'boss'",
        ),
        (
            "[guards]\nmax_rollbacks = -1",
            "config.toml: guards.max_rollbacks: Input should be greater than or equal to 0, got -1",
        ),
        (
            MINIMAL_SERVICE + '[[silences]]\nservice = "api"\nstart = 2026-01-01T00:00:00Z\n'
            "end = 2026-01-01T01:00:00Z",
            "config.toml: silences[0].service: no service named 'api' (known: ['web']; "
            "'*' means all)",
        ),
        (
            '[[silences]]\nservice = "*"\nstart = 2026-01-01T02:00:00Z\nend = 2026-01-01T01:00:00Z',
            "config.toml: silences[0]: end must be after start",
        ),
        (
            '[[silences]]\nservice = "*"\nstart = 2026-01-01T00:00:00\nend = 2026-01-01T01:00:00',
            "config.toml: silences[0]: start and end need a time zone, e.g. 2026-01-01T22:00:00Z",
        ),
        (
            '[[tokens]]\nname = "ci"\nsha256 = "hunter2"\nrole = "ci"',
            "config.toml: tokens[0].sha256: expected the token's SHA-256 as 64 hex digits "
            '(printf %s "$TOKEN" | sha256sum), never the token itself',
        ),
        (
            '[deploys]\nversion_metric = "app build info"',
            "config.toml: deploys.version_metric: String should match pattern "
            "'^[a-zA-Z_:][a-zA-Z0-9_:]*$', got 'app build info'",
        ),
        (
            '[daemon]\nheader_timeout = "500ms"',
            "config.toml: daemon.header_timeout: must be between 1s and 1h",
        ),
        (
            '[daemon]\nbody_timeout = "2h"',
            "config.toml: daemon.body_timeout: must be between 1s and 1h",
        ),
        (
            "[daemon]\nmax_connections = 0",
            "config.toml: daemon.max_connections: Input should be greater than or equal to 1",
        ),
        (
            '[deploys]\nmax_clock_skew = "2d"',
            "config.toml: deploys.max_clock_skew: must be between 0s and 1d",
        ),
        ("[daemon", "config.toml: not valid TOML: Expected ']' at the end of a table declaration"),
    ],
)
def test_each_malformed_config_names_the_key_and_what_is_wrong(text: str, expected: str) -> None:
    """Every problem is one line: file, key path, and what is wrong."""
    lines = problems(text)
    assert any(line.startswith(expected) for line in lines), lines


def test_every_problem_is_reported_at_once() -> None:
    """Several mistakes give several lines, not just the first."""
    lines = problems('bogus = 1\n[daemon]\npoll_interval = "x"\n[prometheus]\nurl = "nope"')
    assert len(lines) == 3


def test_a_missing_file_is_a_clear_problem(tmp_path: Path) -> None:
    """A config path that does not exist names the path and the reason."""
    with pytest.raises(InvalidInput) as caught:
        load_config(tmp_path / "nope.toml", env={})
    assert str(caught.value) == f"{tmp_path / 'nope.toml'}: cannot read the config file: " + (
        "No such file or directory"
    )


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_is_a_config_or_a_clean_error(text: str) -> None:
    """Whatever the file holds, parsing returns a config or InvalidInput, never a crash."""
    try:
        parse_config(text, "config.toml")
    except InvalidInput as exc:
        assert exc.problems
        assert all(str(p).startswith("config.toml") for p in exc.problems)


_TOML_VALUES = st.one_of(
    st.integers(-5, 10**6).map(str),
    st.sampled_from(['"15s"', '"x"', '""', "true", "[]", '["a"]', "1.5", '"http://h:1"', "{}"]),
)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(["daemon", "prometheus", "guards", "deploys", "recovery", "alerts"]),
    st.sampled_from(
        [
            "listen",
            "poll_interval",
            "url",
            "timeout",
            "cooldown",
            "max_rollbacks",
            "window",
            "attribution_window",
            "max_error_rate",
            "trigger_label",
            "rules",
        ]
    ),
    _TOML_VALUES,
)
def test_any_value_in_any_section_is_accepted_or_blamed_on_its_key(
    section: str, key: str, value: str
) -> None:
    """A wrong value is reported at section.key, never as a crash."""
    try:
        parse_config(f"[{section}]\n{key} = {value}\n", "config.toml")
    except InvalidInput as exc:
        assert any(f"config.toml: {section}" in str(p) for p in exc.problems), exc.problems
