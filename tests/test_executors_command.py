"""The command and script executors, and the argv runner under them, on real processes."""

from __future__ import annotations

import os
import signal
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rollbackd.actions import OUTPUT_LIMIT, IncidentFacts, Progress
from rollbackd.actions.command import CAPTURE_LIMIT, CommandExecutor, incident_env, run_argv
from rollbackd.actions.process import Capture
from rollbackd.actions.script import ScriptExecutor

SECOND = timedelta(seconds=1)
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


def facts(target: str = "v1", reason: str = "error rate 12% after v3") -> IncidentFacts:
    return IncidentFacts(
        incident=7,
        service="web",
        target=target,
        current_version="v3",
        reason=reason,
        severity="critical",
    )


def hostile(tmp_path: Path) -> list[str]:
    """Targets that would run something if they ever reached a shell or an option parser."""
    return [
        f"--upload-pack=touch {tmp_path}/pwned",
        f"$(touch {tmp_path}/pwned)",
        "; rm -rf /",
        "v1\nrm -rf",
        "-x",
    ]


def env_dumper(tmp_path: Path) -> Path:
    """An executable that writes its environment, NUL-separated, to the file named by $1."""
    script = tmp_path / "dump-env"
    script.write_text('#!/bin/sh\nenv -0 > "$1"\n')
    script.chmod(0o755)
    return script


def read_env(path: Path) -> dict[bytes, bytes]:
    pairs = (item.partition(b"=") for item in path.read_bytes().split(b"\0") if item)
    return {key: value for key, _, value in pairs}


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def wait_gone(pids: list[int], within: float = 3.0) -> list[int]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        left = [pid for pid in pids if alive(pid)]
        if not left:
            return []
        time.sleep(0.05)
    return [pid for pid in pids if alive(pid)]


@pytest.fixture
def cleanup_pids() -> Iterator[list[int]]:
    """Pids a test's command left running; killed at the end of the test."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


# -- run_argv ------------------------------------------------------------------------


def test_output_of_stdout_and_stderr_is_captured_together() -> None:
    """A command's stdout and stderr both land in the step's output, and exit 0 is ok."""
    result = run_argv(
        ["sh", "-c", "echo to-stdout; echo to-stderr >&2"], env=ENV, cwd=None, timeout=SECOND * 5
    )
    assert result.ok, result
    assert "to-stdout" in result.output
    assert "to-stderr" in result.output
    assert result.data["exit_code"] == "0"


def test_a_non_zero_exit_fails_naming_the_exit_code() -> None:
    """A command that exits 3 is a failed step whose summary says 'exit code 3'."""
    result = run_argv(["sh", "-c", "echo broken; exit 3"], env=ENV, cwd=None, timeout=SECOND * 5)
    assert not result.ok
    assert "exit code 3" in result.summary
    assert "broken" in result.output
    assert result.data["exit_code"] == "3"


def test_stdin_is_closed_so_a_prompt_does_not_hang() -> None:
    """A command that reads stdin sees end-of-file at once instead of waiting for input."""
    started = time.monotonic()
    result = run_argv(["cat"], env=ENV, cwd=None, timeout=SECOND * 5)
    assert result.ok
    assert time.monotonic() - started < 2


def test_the_command_runs_in_the_configured_directory(tmp_path: Path) -> None:
    """``cwd`` is where the command runs (the service's project directory)."""
    result = run_argv(["pwd"], env=ENV, cwd=tmp_path, timeout=SECOND * 5)
    assert result.output.strip() == str(tmp_path)


def test_long_output_is_cut_to_its_head_and_tail() -> None:
    """Long output keeps the journal small: head and tail are kept, the middle cut and counted."""
    result = run_argv(
        ["sh", "-c", "echo FIRST; head -c 300000 /dev/zero | tr '\\0' x; echo; echo LAST"],
        env=ENV,
        cwd=None,
        timeout=SECOND * 5,
    )
    assert result.ok
    assert len(result.output) <= OUTPUT_LIMIT
    assert result.output.startswith("FIRST")
    assert result.output.rstrip().endswith("LAST")
    written = len("FIRST\n") + 300000 + len("\nLAST\n")
    assert f"… [{written - CAPTURE_LIMIT} bytes of output cut] …" in result.output
    assert result.output.index("bytes of output cut") < OUTPUT_LIMIT // 3


def test_the_tail_is_most_of_what_is_kept() -> None:
    """A failing build's last lines are what a person needs: most of the kept output is the end."""
    lines = "; ".join(f"echo line-{n}" for n in range(3))
    script = f"{lines}; seq 1 100000; echo 'error: build failed'; exit 2"
    result = run_argv(["sh", "-c", script], env=ENV, cwd=None, timeout=SECOND * 10)
    assert result.summary == "`sh` failed with exit code 2"
    head, _, tail = result.output.partition("bytes of output cut")
    assert head.startswith("line-0\nline-1\nline-2\n1\n")
    assert tail.rstrip().endswith("99999\n100000\nerror: build failed")
    assert len(tail) > 2 * len(head)


def test_memory_stays_bounded_whatever_a_command_prints() -> None:
    """A command printing 30 MB costs the daemon a few hundred kilobytes, not 30 MB."""
    tracemalloc.start()
    try:
        result = run_argv(
            ["sh", "-c", "yes 'a line of build output' | head -c 30000000; echo LAST"],
            env=ENV,
            cwd=None,
            timeout=SECOND * 60,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.ok, result.summary
    assert result.output.rstrip().endswith("LAST")
    assert peak < 2_000_000, f"peak {peak} bytes"


def test_a_multibyte_character_is_never_split_at_a_cut() -> None:
    """Where the output is cut, no half character turns into a replacement mark."""
    capture = Capture(1001)
    for _ in range(2000):
        capture.add("é€😀".encode())
    text = capture.text()
    assert "\ufffd" not in text
    assert text.startswith("é€😀")
    assert text.endswith("é€😀")
    assert capture.total == 2000 * len("é€😀".encode())


def test_a_command_that_leaves_a_child_holding_its_output_succeeds_when_it_exits(
    tmp_path: Path, cleanup_pids: list[int]
) -> None:
    """`sleep 60 & echo started` is ok as soon as sh exits, and the sleep is named, not killed."""
    pid_file = tmp_path / "pid"
    script = 'sleep 60 & echo $! > "$1"; echo started'
    result = run_argv(
        ["sh", "-c", script, "sh", str(pid_file)], env=ENV, cwd=None, timeout=SECOND * 10
    )
    child = int(pid_file.read_text())
    cleanup_pids.append(child)
    assert result.ok, result.summary
    assert result.summary == f"`sh` succeeded; left 1 process running: pid {child} (sleep 60)"
    assert result.data == {"exit_code": "0", "left_running": str(child)}
    assert result.output.startswith("started\n")
    assert f"left 1 process running: pid {child} (sleep 60)" in result.output
    assert "held its output open" in result.output
    assert alive(child)


def test_a_background_service_keeps_running_and_writing_after_the_step(
    tmp_path: Path, cleanup_pids: list[int]
) -> None:
    """A restart script's app that logs to the inherited stdout is neither killed nor blocked."""
    pid_file, ticks = tmp_path / "pid", tmp_path / "ticks"
    app = 'while :; do echo "log line $(date +%s%N)"; echo . >> "$2"; sleep 0.01; done'
    script = f'sh -c \'{app}\' app "$1" "$2" & echo $! > "$1"; echo restarted'
    result = run_argv(
        ["sh", "-c", script, "sh", str(pid_file), str(ticks)],
        env=ENV,
        cwd=None,
        timeout=SECOND * 10,
    )
    child = int(pid_file.read_text())
    cleanup_pids.append(child)
    assert result.ok, result.summary
    assert f"pid {child} (sh -c" in result.summary
    before = ticks.stat().st_size
    wait_until_grown = time.monotonic() + 10
    while ticks.stat().st_size < before + 40 and time.monotonic() < wait_until_grown:
        time.sleep(0.05)
    assert alive(child)
    assert ticks.stat().st_size >= before + 40, "the app stopped running after the step"


def test_a_failing_command_also_names_what_it_left_running(
    tmp_path: Path, cleanup_pids: list[int]
) -> None:
    """A command that fails after starting a background job says so next to its exit code."""
    pid_file = tmp_path / "pid"
    script = 'sleep 60 >/dev/null 2>&1 & echo $! > "$1"; exit 4'
    result = run_argv(
        ["sh", "-c", script, "sh", str(pid_file)], env=ENV, cwd=None, timeout=SECOND * 10
    )
    child = int(pid_file.read_text())
    cleanup_pids.append(child)
    assert result.summary == (
        f"`sh` failed with exit code 4; left 1 process running: pid {child} (sleep 60)"
    )
    assert "held its output open" not in result.output


def test_a_command_that_closes_its_output_and_runs_on_is_waited_for(tmp_path: Path) -> None:
    """Closing stdout is not exiting: the step waits for the exit status."""
    script = "echo bye; exec >&- 2>&-; sleep 0.5; exit 3"
    result = run_argv(["sh", "-c", script], env=ENV, cwd=None, timeout=SECOND * 10)
    assert result.summary == "`sh` failed with exit code 3"
    assert result.output == "bye\n"


def test_a_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    """A hung rollback command and every child it started are gone after the timeout."""
    pids = tmp_path / "pids"
    script = 'sleep 60 & echo $! >> "$1"; sleep 60 & echo $! >> "$1"; echo started; wait'
    started = time.monotonic()
    result = run_argv(
        ["sh", "-c", script, "sh", str(pids)],
        env=ENV,
        cwd=None,
        timeout=timedelta(milliseconds=500),
    )
    assert time.monotonic() - started < 4
    assert not result.ok
    assert result.summary == "`sh` timed out after 500ms"
    assert "started" in result.output
    children = [int(line) for line in pids.read_text().split()]
    assert len(children) == 2
    assert wait_gone(children) == []


def test_children_that_ignore_sigterm_are_killed_after_the_grace(tmp_path: Path) -> None:
    """Children that ignore SIGTERM still do not outlive a timed-out command."""
    pids = tmp_path / "pids"
    script = 'trap \'\' TERM; sleep 60 & echo $! >> "$1"; sleep 60 & echo $! >> "$1"; wait'
    result = run_argv(
        ["sh", "-c", script, "sh", str(pids)],
        env=ENV,
        cwd=None,
        timeout=timedelta(milliseconds=300),
        grace=timedelta(milliseconds=200),
    )
    assert not result.ok
    assert "timed out after 300ms" in result.summary
    children = [int(line) for line in pids.read_text().split()]
    assert wait_gone(children) == []


def test_a_timeout_ends_even_when_an_escaped_child_holds_the_output(
    tmp_path: Path, cleanup_pids: list[int]
) -> None:
    """A child that left the process group (setsid) cannot keep a timed-out step waiting."""
    pid_file = tmp_path / "pid"
    script = 'setsid sleep 60 & echo $! > "$1"; sleep 60'
    started = time.monotonic()
    result = run_argv(
        ["sh", "-c", script, "sh", str(pid_file)],
        env=ENV,
        cwd=None,
        timeout=timedelta(milliseconds=300),
        grace=timedelta(milliseconds=300),
    )
    cleanup_pids.append(int(pid_file.read_text()))
    assert time.monotonic() - started < 30
    assert result.summary == "`sh` timed out after 300ms"
    assert "held its output open" in result.output


@pytest.mark.parametrize("argv0", ["/nonexistent/rollback", "rollbackd-no-such-command"])
def test_a_missing_executable_is_a_failed_step_not_a_crash(argv0: str) -> None:
    """A typo in the configured command gives a failed step naming it."""
    result = run_argv([argv0, "web"], env=ENV, cwd=None, timeout=SECOND)
    assert not result.ok
    assert argv0 in result.summary
    assert "No such file" in result.summary


def test_a_file_without_execute_permission_is_a_failed_step(tmp_path: Path) -> None:
    """A rollback file that is not executable fails with 'Permission denied'."""
    plain = tmp_path / "rollback.sh"
    plain.write_text("#!/bin/sh\nexit 0\n")
    result = run_argv([str(plain)], env=ENV, cwd=None, timeout=SECOND)
    assert not result.ok
    assert "Permission denied" in result.summary


def test_a_missing_working_directory_is_a_failed_step(tmp_path: Path) -> None:
    """A service directory that is gone fails the step instead of raising."""
    result = run_argv(["true"], env=ENV, cwd=tmp_path / "gone", timeout=SECOND)
    assert not result.ok
    assert "cannot run `true`" in result.summary


def test_a_command_killed_by_a_signal_says_which() -> None:
    """A command that crashes reports the signal that killed it."""
    result = run_argv(["sh", "-c", "kill -SEGV $$"], env=ENV, cwd=None, timeout=SECOND * 5)
    assert not result.ok
    assert "SIGSEGV" in result.summary
    assert result.data["exit_code"] == str(-signal.SIGSEGV)


# -- incident_env --------------------------------------------------------------------


def test_incident_facts_arrive_as_environment_values_only() -> None:
    """The script sees the incident in ROLLBACKD_ variables, and the daemon's own settings not."""
    base = {"PATH": "/bin", "ROLLBACKD_TOKEN": "secret", "ROLLBACKD_REASON": "stale"}
    env = incident_env(
        IncidentFacts(7, "web", "v1", None, "bad\x00 deploy", "high"),
        base,
    )
    assert env == {
        "PATH": "/bin",
        "ROLLBACKD_INCIDENT": "7",
        "ROLLBACKD_SERVICE": "web",
        "ROLLBACKD_TARGET": "v1",
        "ROLLBACKD_CURRENT_VERSION": "",
        "ROLLBACKD_REASON": "bad deploy",
        "ROLLBACKD_SEVERITY": "high",
        "ROLLBACKD_SCOPE": "all",
        "ROLLBACKD_CANARY_VERSION": "",
    }


def test_a_canary_rollback_names_the_canary_for_the_deploy_tool() -> None:
    """A side-by-side decision tells the command to take out only the canary (v2), back to v1."""
    env = incident_env(
        IncidentFacts(7, "web", "v1", "v2", "canary failing", "high", "canary", "v2"), {}
    )
    assert (env["ROLLBACKD_SCOPE"], env["ROLLBACKD_CANARY_VERSION"]) == ("canary", "v2")
    assert env["ROLLBACKD_TARGET"] == "v1"


def test_an_unencodable_reason_still_runs_the_command(tmp_path: Path) -> None:
    """A reason with a lone surrogate (from JSON) is passed with a replacement character."""
    out = tmp_path / "env"
    executor = CommandExecutor([str(env_dumper(tmp_path)), str(out)], None, SECOND * 5, env=ENV)
    result = executor.execute(facts(reason="bad \ud800 deploy"))
    assert result.ok, result
    assert read_env(out)[b"ROLLBACKD_REASON"] == b"bad ? deploy"


# -- CommandExecutor -----------------------------------------------------------------


def test_command_executor_passes_the_incident_in_its_environment(tmp_path: Path) -> None:
    """The rollback command gets incident, service, target, version, reason and severity."""
    out = tmp_path / "env"
    executor = CommandExecutor([str(env_dumper(tmp_path)), str(out)], tmp_path, SECOND * 5, env=ENV)
    verified = executor.verify_target(facts())
    assert verified.ok, verified
    assert "responsible for the target" in verified.summary
    backup = executor.backup(facts(), NOW)
    assert backup.ok
    assert backup.summary == "no backup: the command executor keeps none"
    result = executor.execute(facts())
    assert result.ok, result
    env = read_env(out)
    assert env[b"ROLLBACKD_INCIDENT"] == b"7"
    assert env[b"ROLLBACKD_SERVICE"] == b"web"
    assert env[b"ROLLBACKD_TARGET"] == b"v1"
    assert env[b"ROLLBACKD_CURRENT_VERSION"] == b"v3"
    assert env[b"ROLLBACKD_SEVERITY"] == b"critical"
    assert env[b"PATH"] == b"/usr/bin:/bin"


def test_a_hostile_reason_arrives_byte_for_byte_and_runs_nothing(tmp_path: Path) -> None:
    """Shell syntax, options and newlines in a reason are data: nothing runs, nothing is lost."""
    reason = " | ".join([*hostile(tmp_path), "`touch pwned`", "'quoted' \"double\"", "naïve ✓"])
    out = tmp_path / "env"
    executor = CommandExecutor([str(env_dumper(tmp_path)), str(out)], tmp_path, SECOND * 5, env=ENV)
    result = executor.execute(facts(reason=reason))
    assert result.ok, result
    assert read_env(out)[b"ROLLBACKD_REASON"] == reason.encode()
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("index", range(5))
def test_command_executor_refuses_a_hostile_target(tmp_path: Path, index: int) -> None:
    """A target that is not a plain ref never reaches the command, and the step names it."""
    target = hostile(tmp_path)[index]
    marker = tmp_path / "ran"
    executor = CommandExecutor(["touch", str(marker)], tmp_path, SECOND * 5, env=ENV)
    for result in (executor.verify_target(facts(target)), executor.execute(facts(target))):
        assert not result.ok
        assert repr(target) in result.summary
    assert not marker.exists()
    assert not (tmp_path / "pwned").exists()


def test_command_executor_verify_fails_when_the_command_is_missing(tmp_path: Path) -> None:
    """A command that is not installed is caught before anything is backed up or run."""
    executor = CommandExecutor(["rollbackd-no-such-command"], tmp_path, SECOND, env=ENV)
    result = executor.verify_target(facts())
    assert not result.ok
    assert "rollbackd-no-such-command" in result.summary


def test_command_executor_state_is_always_unknown() -> None:
    """After a crash rollbackd cannot tell what a command did, and says so."""
    state = CommandExecutor(["true"], None, SECOND).state(facts(), {})
    assert state.progress is Progress.UNKNOWN
    assert state.reason == "a command's effect cannot be checked"


# -- ScriptExecutor ------------------------------------------------------------------


def test_script_executor_runs_the_script_with_the_incident(tmp_path: Path) -> None:
    """The rollback script runs in the project directory with the incident in its environment."""
    script = tmp_path / "rollback.sh"
    script.write_text('#!/bin/sh\nprintf "%s" "$ROLLBACKD_TARGET" > target.txt\necho done\n')
    script.chmod(0o755)
    executor = ScriptExecutor(Path("rollback.sh"), tmp_path, SECOND * 5, env=ENV)
    assert executor.verify_target(facts()).ok
    result = executor.execute(facts())
    assert result.ok, result
    assert "done" in result.output
    assert (tmp_path / "target.txt").read_text() == "v1"
    assert executor.state(facts(), {}).progress is Progress.UNKNOWN


def test_script_executor_verify_fails_for_a_missing_script(tmp_path: Path) -> None:
    """A script path that does not exist is named in the failed verification."""
    missing = tmp_path / "scripts" / "rollback.sh"
    result = ScriptExecutor(missing, tmp_path, SECOND).verify_target(facts())
    assert not result.ok
    assert result.summary == f"rollback script {missing} does not exist"


def test_script_executor_verify_fails_for_a_script_that_is_not_executable(tmp_path: Path) -> None:
    """A script without the execute bit is named, with the fix."""
    script = tmp_path / "rollback.sh"
    script.write_text("#!/bin/sh\n")
    result = ScriptExecutor(script, tmp_path, SECOND).verify_target(facts())
    assert not result.ok
    assert str(script) in result.summary
    assert "not executable" in result.summary


def test_script_executor_refuses_a_hostile_target(tmp_path: Path) -> None:
    """The script never runs for a target that is not a plain ref."""
    marker = tmp_path / "ran"
    script = tmp_path / "rollback.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\n")
    script.chmod(0o755)
    executor = ScriptExecutor(script, tmp_path, SECOND, env=ENV)
    for target in hostile(tmp_path):
        assert repr(target) in executor.verify_target(facts(target)).summary
        assert repr(target) in executor.execute(facts(target)).summary
    assert not marker.exists()
    assert not (tmp_path / "pwned").exists()


def test_the_daemon_environment_is_the_default_base(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an explicit env the command inherits the daemon's, minus ROLLBACKD_ settings."""
    monkeypatch.setenv("ROLLBACKD_TOKEN", "secret")
    monkeypatch.setenv("SERVICE_HOME", "/srv/web")
    out = tmp_path / "env"
    result = CommandExecutor([str(env_dumper(tmp_path)), str(out)], None, SECOND * 5).execute(
        facts()
    )
    assert result.ok, result
    env = read_env(out)
    assert env[b"SERVICE_HOME"] == b"/srv/web"
    assert b"ROLLBACKD_TOKEN" not in env
