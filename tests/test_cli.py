"""The command line as a user runs it: help, check-config, exit codes, no tracebacks."""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rollbackd.core.deploys import Deploy
from rollbackd.journal import SqliteJournal, journal_path
from tests.conftest import RunCli
from tests.support.processes import free_port
from tests.test_notifiers import Receiver

DESIGN_COMMANDS = [
    "run",
    "check-config",
    "evaluate",
    "backtest",
    "rollback",
    "status",
    "incidents",
    "report",
    "approve",
    "veto",
    "demo",
]


def copy_example(repo: Path, into: Path) -> Path:
    """A copy of config.example.toml and rules/ that a test may break."""
    shutil.copy(repo / "config.example.toml", into / "config.toml")
    shutil.copytree(repo / "rules", into / "rules")
    return into / "config.toml"


def test_help_lists_every_command_of_the_design(run_cli: RunCli) -> None:
    """`rollbackd --help` names each command of design §2."""
    result = run_cli("--help")
    assert result.returncode == 0
    for command in DESIGN_COMMANDS:
        assert command in result.stdout


def test_check_config_on_the_example_prints_the_summary(run_cli: RunCli, repo: Path) -> None:
    """The example config and default rules pass, with services, rules and policy shown."""
    result = run_cli("check-config", "--config", str(repo / "config.example.toml"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "OK" in out
    assert "1 service," in out
    assert "web" in out and "git (revert)" in out
    assert "high_error_rate" in out and "error-rate" in out
    assert "request_approval" in out and "senior_admin" in out
    assert "Rules by severity: critical" in out


def test_check_config_says_which_rules_are_judged_side_by_side(run_cli: RunCli, repo: Path) -> None:
    """With a version metric, check-config lists the rules judged per version while two
    versions serve, and names each rule that cannot be with the reason."""
    result = run_cli("check-config", "--config", str(repo / "config.example.toml"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    side = out[out.index("Side by side") : out.index("Rules by severity")]
    for rule in ("error-rate", "auth-failures", "latency-regression", "noticeable-slowdown"):
        assert rule in side


def test_check_config_finds_the_file_through_rollbackd_config(
    run_cli: RunCli, repo: Path, tmp_path: Path
) -> None:
    """Without --config, $ROLLBACKD_CONFIG names the file."""
    path = copy_example(repo, tmp_path)
    result = run_cli("check-config", env={"ROLLBACKD_CONFIG": str(path)})
    assert result.returncode == 0, result.stderr


def test_environment_overrides_reach_check_config(
    run_cli: RunCli, repo: Path, tmp_path: Path
) -> None:
    """ROLLBACKD_DAEMON__DRY_RUN=true shows in the guards line."""
    path = copy_example(repo, tmp_path)
    result = run_cli("check-config", "--config", str(path), env={"ROLLBACKD_DAEMON__DRY_RUN": "1"})
    assert result.returncode == 0, result.stderr
    assert "dry_run=on" in result.stdout


@pytest.mark.parametrize(
    ("file", "old", "new", "expected"),
    [
        (
            "rules/high.toml",
            'condition = "> 0.05"',
            'condition = ">> 5"',
            "rules/high.toml: rule \"error-rate\": condition: expected '> 0.05' or '> +50%', "
            "got '>> 5'",
        ),
        (
            "rules/high.toml",
            'trigger = "high_error_rate"',
            'trigger = "errors"',
            'rules/high.toml: rule "error-rate": trigger: Input should be',
        ),
        (
            "rules/high.toml",
            'for = "2m"',
            'for = "2 minutes"',
            'rules/high.toml: rule "major-feature-broken": for: '
            "expected a duration such as '15s'",
        ),
        (
            "rules/high.toml",
            'for = "2m"',
            'for = "2m"\nthreshold = 3',
            'rules/high.toml: rule "major-feature-broken": threshold: unknown key',
        ),
        (
            "rules/medium.toml",
            'name = "ui-errors"',
            'name = "error-rate"',
            'rules/medium.toml: rule "error-rate": name: already defined in rules/high.toml',
        ),
        (
            "config.toml",
            'poll_interval = "15s"',
            'poll_interval = "soon"',
            "config.toml: daemon.poll_interval: expected a duration",
        ),
        (
            "config.toml",
            'strategy = "revert"',
            'strategy = "rebase"',
            "config.toml: services[0].strategy: Input should be 'revert', 'reset' or 'tag'",
        ),
        (
            "config.toml",
            "[guards]",
            "[guards]\ncooldow = '1m'",
            "config.toml: guards.cooldow: unknown key",
        ),
        (
            "config.toml",
            'rules = ["rules/*.toml"]',
            'rules = ["rules/*.toml", "rulez/*.toml"]',
            "config.toml: daemon.rules[1]: 'rulez/*.toml' matches no file",
        ),
        (
            "rules/critical.toml",
            "[[rules]]",
            "[[rules]",
            "rules/critical.toml: not valid TOML:",
        ),
    ],
)
def test_each_malformed_case_exits_2_naming_file_and_rule_or_key(
    run_cli: RunCli, repo: Path, tmp_path: Path, file: str, old: str, new: str, expected: str
) -> None:
    """check-config exits 2 with a line naming the file, the rule or key, and what is wrong."""
    copy_example(repo, tmp_path)
    target = tmp_path / file
    text = target.read_text()
    assert old in text
    target.write_text(text.replace(old, new, 1))
    result = run_cli("check-config", "--config", "config.toml")
    assert result.returncode == 2
    assert any(line.startswith(expected) for line in result.stderr.splitlines()), result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_a_missing_config_file_exits_2(run_cli: RunCli, tmp_path: Path) -> None:
    """A config path that does not exist is a usage problem, said in one line."""
    result = run_cli("check-config", "--config", str(tmp_path / "absent.toml"))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"{tmp_path / 'absent.toml'}: cannot read the config file: No such file or directory"
    )


def test_problems_in_several_rule_files_are_all_listed(
    run_cli: RunCli, repo: Path, tmp_path: Path
) -> None:
    """One run shows every broken rule file, so fixing is not a loop of reruns."""
    copy_example(repo, tmp_path)
    for name in ("high", "medium"):
        path = tmp_path / "rules" / f"{name}.toml"
        path.write_text(path.read_text().replace("[[rules]]", "[[rules]]\nbogus = 1", 1))
    result = run_cli("check-config", "--config", "config.toml")
    assert result.returncode == 2
    assert "rules/high.toml: rule" in result.stderr
    assert "rules/medium.toml: rule" in result.stderr


def test_unknown_command_and_bad_usage_exit_2(run_cli: RunCli) -> None:
    """Usage errors exit 2 with typer's message, never a traceback."""
    assert run_cli("nope").returncode == 2
    missing = run_cli("backtest")
    assert missing.returncode == 2
    assert "--start" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--start", "yesterday", "--end", "now"], "--start: expected an RFC 3339 time"),
        (["--start", "-1h", "--end", "2026-01-01T00:00:00"], "--end: '2026-01-01T00:00:00' has no"),
        (["--start", "-1h", "--end", "now", "--step", "fast"], "--step: expected a duration"),
        (["--start", "-1h", "--end", "now", "--step", "0s"], "--step: must be at least 1s"),
        (["--start", "now", "--end", "-1h"], "--end: '-1h' is not after --start 'now'"),
    ],
)
def test_bad_backtest_times_exit_2_naming_the_flag(
    run_cli: RunCli, repo: Path, args: list[str], expected: str
) -> None:
    """A wrong --start, --end or --step is a usage error that names the flag."""
    result = run_cli("backtest", "--config", str(repo / "config.example.toml"), *args)
    assert result.returncode == 2
    assert any(line.startswith(expected) for line in result.stderr.splitlines()), result.stderr


def test_run_on_a_taken_address_exits_1_saying_so(run_cli: RunCli, tmp_path: Path) -> None:
    """A second daemon on the same port gets one clear line and exit 1, not a traceback."""
    import socket  # noqa: PLC0415 -- only this test holds a port

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "config.toml").write_text(
            f'[daemon]\nlisten = "127.0.0.1:{port}"\nstate_dir = "{tmp_path / "state"}"\n'
            'rules = []\n[prometheus]\nurl = "http://127.0.0.1:9"\ntimeout = "1s"\n'
        )
        result = run_cli("run", "--config", "config.toml")
    assert result.returncode == 1
    assert f"rollbackd: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


# -- rollback with no daemon running: done here, with the configured notifiers --------------

V1_REF = "1f0c2d3e4b5a69788796a5b4c3d2e1f001234567"
V2_REF = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a291807"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """One loopback HTTP receiver: the service's probe (/up) and the notifier (/hook)."""
    started = Receiver()
    try:
        yield started
    finally:
        started.stop()


def local_world(root: Path, receiver: Receiver) -> Path:
    """web, rolled back by a command that writes down its target, v1 then v2 announced by CI.

    Nothing listens at ``[daemon] listen``: no daemon runs. The probe passes, so a
    rollback recovers after the one-second window.
    """
    (root / "state").mkdir()
    config = root / "config.toml"
    target = root / "target"
    write_target = f"import os; open(r'{target}', 'w').write(os.environ['ROLLBACKD_TARGET'])"
    config.write_text(
        f"""
[daemon]
listen = "127.0.0.1:{free_port()}"
state_dir = "{root / "state"}"
poll_interval = "1s"
rules = []

[prometheus]
url = "http://127.0.0.1:9"
timeout = "1s"

[[services]]
name = "web"
executor = "command"
command = [{json.dumps(sys.executable)}, "-c", {json.dumps(write_target)}]
command_timeout = "10s"

[[services.probes]]
name = "up"
url = "{receiver.url("/up")}"
method = "POST"

[deploys]
known_good_after = "2s"
attribution_window = "10s"

[recovery]
window = "1s"
timeout = "10s"

[[notifiers]]
name = "ops"
kind = "webhook"
url = "{receiver.url("/hook")}"
retries = 0
""",
        encoding="utf-8",
    )
    journal = SqliteJournal(journal_path(root / "state"))
    now = datetime.now(UTC)
    for minutes, version, ref in ((10, "v1", V1_REF), (5, "v2", V2_REF)):
        deployed = now - timedelta(minutes=minutes)
        journal.record_deploy(Deploy("web", version, deployed, "event", ref=ref), deployed)
    journal.close()
    return config


def test_rollback_to_a_version_goes_to_its_deploy_events_ref(
    run_cli: RunCli, tmp_path: Path, receiver: Receiver
) -> None:
    """`--to v1` means the commit CI announced for v1, as the daemon would resolve it."""
    config = local_world(tmp_path, receiver)
    result = run_cli("rollback", "web", "--to", "v1", "--yes", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"incident 1: roll back web from v2 to {V1_REF}" in result.stdout
    assert "incident 1: recovered" in result.stdout
    assert (tmp_path / "target").read_text() == V1_REF
    with sqlite3.connect(tmp_path / "state" / "journal.sqlite3") as db:
        assert db.execute("SELECT target, origin FROM incidents").fetchall() == [(V1_REF, "manual")]


def test_rollback_with_no_daemon_running_tells_the_configured_notifiers(
    run_cli: RunCli, tmp_path: Path, receiver: Receiver
) -> None:
    """Done here, the rollback is announced and its recovery told before the command exits."""
    config = local_world(tmp_path, receiver)
    result = run_cli("rollback", "web", "--to", V1_REF, "--yes", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "notify: ok: queued for 1 notifier: ops" in result.stdout
    told = [r.json for r in receiver.requests if r.path == "/hook"]
    assert [m["title"] for m in told] == [f"web: rolling back to {V1_REF}", "web: recovered"]
    assert {m["incident"] for m in told} == {1}
    with sqlite3.connect(tmp_path / "state" / "journal.sqlite3") as db:
        delivered = db.execute("SELECT body FROM evidence WHERE kind = 'notification'").fetchall()
    assert [json.loads(b)["delivered"] for (b,) in delivered] == [True, True]


class Healthz(BaseHTTPRequestHandler):
    """Answers GET /healthz as a running daemon does."""

    def do_GET(self) -> None:
        body = b'{"status": "ok"}'
        self.send_response(200 if self.path == "/healthz" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


def test_rollback_with_a_daemon_at_public_url_and_no_token_refuses(
    run_cli: RunCli, tmp_path: Path, receiver: Receiver
) -> None:
    """Nothing at listen, but a daemon answers at public_url: no token, exit 2, nothing done."""
    config = local_world(tmp_path, receiver)
    daemon = ThreadingHTTPServer(("127.0.0.1", 0), Healthz)
    threading.Thread(target=daemon.serve_forever, args=(0.05,), daemon=True).start()
    try:
        url = f"http://127.0.0.1:{daemon.server_address[1]}"
        text = config.read_text(encoding="utf-8")
        config.write_text(text.replace("[prometheus]", f'public_url = "{url}"\n\n[prometheus]'))
        result = run_cli("rollback", "web", "--to", "v1", "--yes", "--config", str(config))
    finally:
        daemon.shutdown()
        daemon.server_close()
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(f"rollbackd: a daemon is running at {url}: ")
    assert "ROLLBACKD_TOKEN to a token with the role admin or senior_admin" in result.stderr
    assert not (tmp_path / "target").exists()
    with sqlite3.connect(tmp_path / "state" / "journal.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM incidents").fetchone() == (0,)


def test_evaluate_with_prometheus_unreachable_counts_nothing_ok(
    run_cli: RunCli, tmp_path: Path
) -> None:
    """Prometheus never reachable: evaluate counts no finding as ok, shows each rule
    inconclusive with the error (for whole seconds), and says what could not be read is
    unknown."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.toml").write_text(
        '[[rules]]\nname = "errors"\ntrigger = "high_error_rate"\n'
        "query = 'sum by (service) (rate(http_requests_total[1m]))'\n"
        'condition = "> 1"\n'
    )
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[daemon]
state_dir = "{tmp_path / "state"}"
rules = ["rules/*.toml"]
[prometheus]
url = "http://127.0.0.1:{free_port()}"
timeout = "1s"
[[services]]
name = "web"
executor = "command"
command = ["true"]
"""
    )
    result = run_cli("evaluate", "--config", str(config))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.endswith(": 1 finding (0 ok)") for line in lines), result.stdout
    assert any("inconclusive web/errors" in line and "is unreachable" in line for line in lines), (
        result.stdout
    )
    assert "export the metrics" not in result.stdout
    assert "ms looked at" not in result.stdout  # whole seconds, as the lines' times
    assert lines[-1] == "no action: nothing is firing, but what could not be read is unknown"
