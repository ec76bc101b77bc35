"""The script executor: the playbook's "automated rollback script" (Method 1).

The configured script runs with no arguments, in ``cwd``, with the incident's
facts in ``ROLLBACKD_…`` environment variables (see
:mod:`rollbackd.actions.command`); it is responsible for going back to
``ROLLBACKD_TARGET``. A relative script path is taken relative to ``cwd``
(the project directory, as in ``cd project && ./scripts/rollback.sh``), or to
the daemon's working directory when there is no ``cwd``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path

from rollbackd.actions import ExecutionState, IncidentFacts, Progress, StepResult
from rollbackd.actions.command import CommandExecutor, bad_target


class ScriptExecutor:
    """Rolls back by running one executable script with the incident in its environment."""

    def __init__(
        self,
        script: Path,
        cwd: Path | None,
        timeout: timedelta,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if not script.is_absolute():
            script = (cwd / script) if cwd is not None else script.absolute()
        self.script = script
        self.cwd = cwd
        self.timeout = timeout
        self._command = CommandExecutor([str(script)], cwd, timeout, env=env)

    def verify_target(self, facts: IncidentFacts) -> StepResult:
        """The target is a valid ref and the script exists and is executable."""
        refused = bad_target(facts)
        if refused is not None:
            return refused
        path = self.script
        if not path.exists():
            return StepResult(False, f"rollback script {path} does not exist")
        if not path.is_file():
            return StepResult(False, f"rollback script {path} is not a file")
        if not os.access(path, os.X_OK):
            return StepResult(False, f"rollback script {path} is not executable (chmod +x it)")
        return StepResult(
            True,
            f"script {path} will roll back to {facts.target}; the script is responsible "
            "for the target (rollbackd cannot check it)",
            data={"target": facts.target},
        )

    def backup(self, facts: IncidentFacts, now: datetime) -> StepResult:
        """Nothing to keep: the script owns its own backups."""
        return StepResult(True, "no backup: the script executor keeps none")

    def execute(self, facts: IncidentFacts) -> StepResult:
        """Run the script with the incident's facts in ``ROLLBACKD_…`` variables."""
        return self._command.execute(facts)

    def state(self, facts: IncidentFacts, before: Mapping[str, str]) -> ExecutionState:
        """Always unknown: nothing tells whether a script ran to its end."""
        return ExecutionState(Progress.UNKNOWN, "a script's effect cannot be checked")
