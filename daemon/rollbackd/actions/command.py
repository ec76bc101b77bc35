"""The command executor: a configured argv rolls the service back.

:func:`run_argv` runs one argv without a shell, with stdin closed, stdout and
stderr captured together (head and tail, memory bounded), and a timeout that
stops the whole process group (SIGTERM, a short grace, then SIGKILL). Its
success is its exit status, as soon as it exits: what it left running is
reported, not waited for and not killed (see :mod:`rollbackd.actions.process`).
It never raises for a command that cannot start, fails or hangs: every outcome
is a :class:`StepResult`.

What the rollback is about reaches the command only as environment values
(:func:`incident_env`): ``ROLLBACKD_INCIDENT``, ``ROLLBACKD_SERVICE``,
``ROLLBACKD_TARGET``, ``ROLLBACKD_CURRENT_VERSION``, ``ROLLBACKD_REASON``,
``ROLLBACKD_SEVERITY``, ``ROLLBACKD_SCOPE`` (``canary``: abort only the new version
serving alongside the target, ``ROLLBACKD_CANARY_VERSION``; ``all``: the service). The
argv itself comes from the config and is never built from incident text.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from rollbackd.actions import (
    OUTPUT_LIMIT,
    ExecutionState,
    IncidentFacts,
    Progress,
    StepResult,
)
from rollbackd.actions.process import KILL_GRACE, LINGER
from rollbackd.actions.process import run as run_process
from rollbackd.core.durations import format_duration
from rollbackd.sources.deploys import valid_ref

ENV_PREFIX = "ROLLBACKD_"
"""Prefix of the incident variables; the daemon's own ``ROLLBACKD_…`` settings are not passed on."""

CAPTURE_LIMIT = OUTPUT_LIMIT - 2048
"""Bytes of a command's output kept (head and tail): the step's output, with the notes on what
the command left running, stays within the journal's :data:`OUTPUT_LIMIT`."""


def run_argv(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | None,
    timeout: timedelta,
    grace: timedelta = KILL_GRACE,
    linger: timedelta = LINGER,
) -> StepResult:
    """Run ``argv`` (no shell) with ``env`` in ``cwd``; ok when it exits 0 within ``timeout``.

    ``output`` holds stdout and stderr merged, decoded with replacement, its
    head and tail kept (:class:`~rollbackd.actions.process.Capture`);
    ``data["exit_code"]`` the exit status when there is one. The step ends when
    the command exits: processes it left running are named in the summary
    (``data["left_running"]``: their pids) and left alone. On timeout the whole
    process group gets SIGTERM, then SIGKILL after ``grace``.
    """
    if not argv or not argv[0]:
        return StepResult(False, "no command to run: the argv is empty")
    name = argv[0]
    try:
        finished = run_process(
            argv,
            env=env,
            cwd=cwd,
            timeout=timeout,
            limit=CAPTURE_LIMIT,
            grace=grace,
            linger=linger,
        )
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename is not None else ""
        return StepResult(False, f"cannot run `{name}`: {exc.strerror or exc}{where}")
    except (ValueError, subprocess.SubprocessError) as exc:  # e.g. a NUL byte in argv or env
        return StepResult(False, f"cannot run `{name}`: {exc}")
    notes = finished.notes(name)
    output = finished.output
    if notes:
        output = f"{output.rstrip()}\n{notes}" if output.strip() else notes
    left = finished.left_summary()
    suffix = f"; {left}" if left else ""
    data = {} if finished.status is None else {"exit_code": str(finished.status)}
    if finished.left_running:
        data["left_running"] = " ".join(str(each.pid) for each in finished.left_running)
    code = finished.status
    if finished.timed_out:
        data.pop("exit_code", None)  # the status of a process group rollbackd killed
        summary = f"`{name}` timed out after {format_duration(timeout)}{suffix}"
        return StepResult(False, summary, output, data)
    if code == 0:
        return StepResult(True, f"`{name}` succeeded{suffix}", output, data)
    if code is not None and code < 0:
        try:
            signame = signal.Signals(-code).name
        except ValueError:
            signame = f"signal {-code}"
        return StepResult(False, f"`{name}` was killed by {signame}{suffix}", output, data)
    return StepResult(False, f"`{name}` failed with exit code {code}{suffix}", output, data)


def _env_value(text: str) -> str:
    """``text`` without NUL bytes, and encodable as an environment value."""
    text = text.replace("\x00", "")
    try:
        os.fsencode(text)
    except UnicodeEncodeError:  # lone surrogates, e.g. from a JSON "\ud800"
        text = text.encode("utf-8", errors="replace").decode("utf-8")
    return text


def incident_env(facts: IncidentFacts, base: Mapping[str, str]) -> dict[str, str]:
    """``base`` without its ``ROLLBACKD_…`` variables, plus the incident's facts as values."""
    env = {key: value for key, value in base.items() if not key.startswith(ENV_PREFIX)}
    facts_env = {
        "ROLLBACKD_INCIDENT": str(facts.incident),
        "ROLLBACKD_SERVICE": facts.service,
        "ROLLBACKD_TARGET": facts.target,
        "ROLLBACKD_CURRENT_VERSION": facts.current_version or "",
        "ROLLBACKD_REASON": facts.reason,
        "ROLLBACKD_SEVERITY": facts.severity,
        "ROLLBACKD_SCOPE": facts.scope,
        "ROLLBACKD_CANARY_VERSION": facts.canary_version or "",
    }
    env.update({key: _env_value(value) for key, value in facts_env.items()})
    return env


def bad_target(facts: IncidentFacts) -> StepResult | None:
    """A failed result naming ``facts.target`` if it is not a valid ref, else None."""
    if valid_ref(facts.target):
        return None
    return StepResult(
        False,
        f"refusing target {facts.target!r}: not a valid version or ref "
        "(letters, digits and . _ / + -, not starting with '-')",
        data={"target": facts.target},
    )


def executable_problem(program: str, cwd: Path | None, env: Mapping[str, str]) -> str | None:
    """Why ``program`` cannot be run from ``cwd`` with ``env``'s PATH, or None if it can."""
    if "/" in program:
        path = Path(program)
        if not path.is_absolute() and cwd is not None:
            path = cwd / path
        if not path.exists():
            return f"{path} does not exist"
        if not path.is_file():
            return f"{path} is not a file"
        if not os.access(path, os.X_OK):
            return f"{path} is not executable (chmod +x it)"
        return None
    if shutil.which(program, path=env.get("PATH", os.defpath)) is None:
        return f"`{program}` is not found on PATH"
    return None


class CommandExecutor:
    """Rolls back by running a configured argv with the incident in its environment.

    ``env`` is the base environment (default: the daemon's, read when the
    command runs); the incident variables are added to it.
    """

    def __init__(
        self,
        argv: Sequence[str],
        cwd: Path | None,
        timeout: timedelta,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.argv = tuple(argv)
        self.cwd = cwd
        self.timeout = timeout
        self.env = env

    def _base_env(self) -> Mapping[str, str]:
        return os.environ if self.env is None else self.env

    def _what(self) -> str:
        return f"`{self.argv[0]}`" if self.argv else "the command"

    def verify_target(self, facts: IncidentFacts) -> StepResult:
        """The target is a valid ref and the command can be found; its content is not checked."""
        refused = bad_target(facts)
        if refused is not None:
            return refused
        if not self.argv or not self.argv[0]:
            return StepResult(False, "no command to run: the argv is empty")
        problem = executable_problem(self.argv[0], self.cwd, self._base_env())
        if problem is not None:
            return StepResult(False, f"cannot run the rollback command: {problem}")
        return StepResult(
            True,
            f"{self._what()} will roll back to {facts.target}; the command is responsible "
            "for the target (rollbackd cannot check it)",
            data={"target": facts.target},
        )

    def backup(self, facts: IncidentFacts, now: datetime) -> StepResult:
        """Nothing to keep: the command owns its own backups."""
        return StepResult(True, "no backup: the command executor keeps none")

    def execute(self, facts: IncidentFacts) -> StepResult:
        """Run the argv with the incident's facts in ``ROLLBACKD_…`` variables."""
        refused = bad_target(facts)
        if refused is not None:
            return refused
        return run_argv(
            self.argv,
            env=incident_env(facts, self._base_env()),
            cwd=self.cwd,
            timeout=self.timeout,
        )

    def state(self, facts: IncidentFacts, before: Mapping[str, str]) -> ExecutionState:
        """Always unknown: nothing tells whether a command ran to its end."""
        return ExecutionState(Progress.UNKNOWN, "a command's effect cannot be checked")
