"""Commands the rollback runs: a flood of output and a child left running, against `rollbackd run`.

A git world (bare remote, the daemon's working copy at the bad v2, git
executor with strategy ``revert``), a passing health endpoint, and two
``after_rollback`` commands of the kind real restart scripts are:

- a build that prints 300 MB (``npm ci`` at its chattiest) and ends with the
  line that matters;
- a restart that starts the app in the background and exits 0, the app still
  writing its log to the stdout it inherited.

One manual rollback runs them (it is shared by the tests of this module: the
rollback is the expensive part). Before the fix the first took the daemon to
961 MB and the second was reported as timed out after ``command_timeout``,
because the daemon waited for the app to close its stdout.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.reliability import figures
from tests.reliability.support import (
    Reply,
    StubServer,
    commit,
    daemon_process,
    git_world,
    revert_subjects,
    tokens_toml,
    wait_until,
)
from tests.support.processes import free_port

pytestmark = pytest.mark.integration

SECTION = "command output"
FLOOD_BYTES = 300_000_000
LAST_LINE = "npm ERR! the line a person needs: build finished, exit 0"
COMMAND_TIMEOUT_S = 60
PROBE_RULE = """
[[rules]]
name = "outage-health"
trigger = "outage"
probe = "health"
condition = "< 1"
"""
ENDED = ("recovered", "not_recovered", "escalated")


def flood_argv() -> list[str]:
    script = (
        "echo 'npm ci: installing 1,204 packages'; "
        f"yes 'npm WARN deprecated left-pad@1.3.0: use String.prototype.padStart()' "
        f"| head -c {FLOOD_BYTES}; echo; echo '{LAST_LINE}'"
    )
    return ["sh", "-c", script]


APP = """
import sys, time
while True:
    print("app: serving", flush=True)
    with open(sys.argv[1], "a") as ticks:
        ticks.write(".")
    time.sleep(0.05)
"""
"""The app: logs to the stdout it inherited and counts its lines in a file."""


def restart_argv(pid_file: Path, log_ticks: Path) -> list[str]:
    """A restart script: starts the app in the background, notes its pid, exits 0."""
    script = '"$1" -c "$2" "$4" & echo $! > "$3"; echo "web restarted"'
    return ["sh", "-c", script, "restart-web", sys.executable, APP, str(pid_file), str(log_ticks)]


def config_text(root: Path, clone: Path, port: int, health_url: str) -> str:
    after = json.dumps([flood_argv(), restart_argv(root / "app.pid", root / "app.ticks")])
    return f"""
[daemon]
listen = "127.0.0.1:{port}"
state_dir = "{root / "state"}"
poll_interval = "1s"
rules = ["rules/*.toml"]
log_format = "json"

[prometheus]
url = "http://127.0.0.1:9"
timeout = "1s"

[[services]]
name = "web"
health_url = "{health_url}/health"
repo = "{clone}"
strategy = "revert"
command_timeout = "{COMMAND_TIMEOUT_S}s"
after_rollback = {after}

[deploys]
known_good_after = "1s"

[recovery]
window = "1s"
timeout = "20s"

{tokens_toml()}
"""


@dataclass(frozen=True)
class Step:
    name: str
    outcome: str
    summary: str
    output: str
    data: dict[str, Any]
    seconds: float


@dataclass(frozen=True)
class Rollback:
    """What one rollback with the two commands did, seen from outside the daemon."""

    state: str
    steps: dict[str, Step]
    hwm_before_kb: int
    hwm_after_kb: int
    app_pid: int
    app_alive_after: bool
    app_ticks_grew: bool
    reverts: int
    why: str


def status_kb(pid: int, field: str) -> int:
    """A ``kB`` figure (VmHWM, VmRSS) from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def steps_of(db_path: Path, incident: int) -> dict[str, Step]:
    with sqlite3.connect(db_path) as db:
        rows = db.execute(
            "SELECT name, outcome, summary, output, data, started_at, finished_at FROM steps"
            " WHERE incident_id = ? ORDER BY id",
            (incident,),
        ).fetchall()
    steps: dict[str, Step] = {}
    for name, outcome, summary, output, data, started, finished in rows:
        seconds = (
            datetime.fromisoformat(finished) - datetime.fromisoformat(started)
        ).total_seconds()
        steps[name] = Step(name, outcome or "", summary, output, json.loads(data), seconds)
    return steps


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@pytest.fixture(scope="module")
def rollback(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rollback]:
    """The daemon rolls v2 back to v1 by hand, running both commands; everything stopped after."""
    root = tmp_path_factory.mktemp("command-output")
    health = StubServer(lambda _request: Reply(200, b'{"status": "ok"}')).start()
    remote, clone, v1 = git_world(root)
    commit(clone, 'version = "v2"\n', "v2: the bad release")
    (root / "rules").mkdir()
    (root / "rules" / "health.toml").write_text(PROBE_RULE, encoding="utf-8")
    port = free_port()
    config = root / "config.toml"
    config.write_text(config_text(root, clone, port, health.url), encoding="utf-8")
    daemon = daemon_process(config, port, root / "logs")
    app_pid = 0
    try:
        daemon.start()
        pid = daemon.pid
        assert pid is not None
        hwm_before = status_kb(pid, "VmHWM")
        answer = daemon.request(
            "POST", "/api/v1/services/web/rollback", "admin", json={"to": v1, "reason": "v2 5xx"}
        )
        assert answer.status_code == 202, answer.text
        incident = int(answer.json()["id"])
        why = f"(logs in {daemon.stderr_path})"

        def ended() -> str | None:
            response = daemon.request("GET", f"/api/v1/incidents/{incident}", "viewer")
            state = str(response.json()["state"])
            return state if state in ENDED else None

        state = wait_until(f"the rollback to end {why}", ended, timeout=2 * COMMAND_TIMEOUT_S + 30)
        hwm_after = status_kb(pid, "VmHWM")
        pid_file = root / "app.pid"
        app_pid = int(pid_file.read_text()) if pid_file.exists() else 0
        ticks = root / "app.ticks"
        grown_from = ticks.stat().st_size if ticks.exists() else 0
        time.sleep(0.5)  # the app runs on after the step: it should go on logging meanwhile
        grew = ticks.exists() and ticks.stat().st_size > grown_from
        yield Rollback(
            state=str(state),
            steps=steps_of(root / "state" / "journal.sqlite3", incident),
            hwm_before_kb=hwm_before,
            hwm_after_kb=hwm_after,
            app_pid=app_pid,
            app_alive_after=app_pid > 0 and alive(app_pid),
            app_ticks_grew=grew,
            reverts=len(revert_subjects(remote)),
            why=why,
        )
    finally:
        daemon.stop(timeout=10)
        health.stop()
        if app_pid and alive(app_pid):
            os.kill(app_pid, signal.SIGKILL)


def test_a_command_printing_300_mb_keeps_the_daemon_small_and_journals_the_tail(
    rollback: Rollback,
) -> None:
    """300 MB of build output: the daemon's peak memory barely moves; the journal keeps the end."""
    flood = rollback.steps["after_rollback[0]"]
    growth_mb = (rollback.hwm_after_kb - rollback.hwm_before_kb) / 1024
    figures.record(SECTION, "output printed by the flooding command (MB)", FLOOD_BYTES // 10**6)
    figures.record(SECTION, "its output journaled (characters)", len(flood.output))
    figures.record(
        SECTION, "daemon peak RSS before the rollback (MB)", rollback.hwm_before_kb / 1024
    )
    figures.record(SECTION, "daemon peak RSS after it (MB)", rollback.hwm_after_kb / 1024)
    figures.record(SECTION, "flooding command step (s)", flood.seconds)
    assert flood.outcome == "ok", (flood.summary, rollback.why)
    assert growth_mb < 64, f"peak RSS grew by {growth_mb:.0f} MB {rollback.why}"
    assert rollback.hwm_after_kb < 200 * 1024, rollback.why
    assert flood.summary == "`sh` succeeded"
    assert flood.output.startswith("npm ci: installing 1,204 packages\n")
    assert flood.output.rstrip().endswith(LAST_LINE)
    assert "bytes of output cut" in flood.output
    assert len(flood.output) <= 64 * 1024


def test_a_restart_that_leaves_the_app_running_is_ok_when_it_exits_and_names_the_app(
    rollback: Rollback,
) -> None:
    """The restart step ends with the script, names the app it started, and the app lives on."""
    restart = rollback.steps["after_rollback[1]"]
    figures.record(SECTION, "restart step, app left holding stdout (s)", restart.seconds)
    figures.record(
        SECTION,
        "processes reported left running",
        len(restart.data.get("left_running", "").split()),
    )
    figures.record(SECTION, "incident outcome", rollback.state)
    assert restart.outcome == "ok", (restart.summary, rollback.why)
    assert restart.summary.startswith(
        f"`sh` succeeded; left 1 process running: pid {rollback.app_pid} ({sys.executable} -c"
    ), restart.summary
    assert restart.data["left_running"] == str(rollback.app_pid)
    assert "web restarted" in restart.output
    assert rollback.app_alive_after, "the app the restart started was killed"
    assert rollback.app_ticks_grew, "the app stopped (or blocked) once the step was over"
    assert rollback.state == "recovered", (rollback.state, rollback.why)
    assert rollback.reverts == 1
