"""The one way rollbackd runs git: one environment, one deadline policy, bounded output.

Every git command of rollbackd (the git executor, the migration gate, deploy
discovery) goes through :func:`run_git`, so the same promises hold for all:

- **A total deadline per call.** Each command is run by the bounded process
  runner (:func:`rollbackd.actions.process.run`) in a session of its own and
  its whole process group is killed at the deadline, whatever git waits on (a
  slow remote, an ``fsmonitor`` or hook, a lock). The caller gets a timed-out
  :class:`GitOutcome`, never a hung thread.
- **Bounded output.** At most :data:`GIT_OUTPUT_LIMIT` bytes of each stream
  are kept; :func:`read_git` refuses an answer that was cut rather than parse
  half of it.
- **One environment** (:func:`git_environment`): messages in English
  (``LC_ALL=C``, as callers quote and match them), never a prompt, pager or
  editor, ``core.fsmonitor`` forced off (a repository's config must not run a
  command for a read), and ``GIT_CEILING_DIRECTORIES`` set so the path given
  is the repository or nothing: git never walks up into a parent repository.
- **Arguments are an argv, never a shell.** Refs and paths that come from
  outside are checked by the callers (:func:`rollbackd.sources.deploys.valid_ref`)
  and placed after ``--end-of-options`` or ``--``, or given as full commit ids.

Errors: :class:`GitError` (a read failed, timed out or answered garbage) with
:class:`NoSuchRepository` and :class:`NotARepository` for the two ways a path
is not a repository at all; each names the repository and the command.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from rollbackd.actions import process
from rollbackd.core.durations import format_duration
from rollbackd.errors import GitError, NoSuchRepository, NotARepository
from rollbackd.text import one_line

GIT_ENV: Mapping[str, str] = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_PAGER": "cat",
    "PAGER": "cat",
    "GIT_EDITOR": ":",
}
"""Added to the daemon's environment for every git command: never prompt, page or edit."""

GIT_LOCALE: Mapping[str, str] = {"LANGUAGE": "C", "LC_ALL": "C"}
"""git's messages in English, as the step summaries quote and match them."""

FORCED_CONFIG: Mapping[str, str] = {"core.fsmonitor": "false"}
"""Settings that win over every config file (``GIT_CONFIG_COUNT``): a repository's config
must not make a read run a command that could hang or act."""

GIT_OUTPUT_LIMIT = 1024 * 1024
"""Bytes of each of git's streams kept (head and tail): far more than any answer read here."""

WHY_LIMIT = 200
"""Characters of git's first error line kept in :meth:`GitOutcome.why`."""

READ_TIMEOUT = timedelta(seconds=10)
"""The deadline of one git read in deploy discovery (HEAD, the reflog): a working copy that
cannot answer this fast has no known HEAD this cycle, said in the log."""


@dataclass(frozen=True)
class GitOutcome:
    """What one git command did: its exit status, its (bounded) streams, and how it ended."""

    command: str
    status: int
    out: str
    err: str
    timed_out: bool
    limit: timedelta = timedelta(0)
    notes: str = ""
    cut: bool = False
    pid: int = 0

    @property
    def ok(self) -> bool:
        """git exited 0 within its deadline."""
        return self.status == 0 and not self.timed_out

    @property
    def text(self) -> str:
        """stdout then stderr, as a transcript shows them."""
        return "\n".join(part for part in (self.out, self.err) if part)

    def why(self) -> str:
        """Why the command did not give a usable answer, in git's words where it has any."""
        if self.timed_out:
            return f"`{self.command}` timed out after {format_duration(self.limit)}"
        if self.cut:
            return f"`{self.command}` answered more than {GIT_OUTPUT_LIMIT} bytes"
        first = next((line.strip() for line in self.err.splitlines() if line.strip()), "")
        return one_line(first, WHY_LIMIT) or f"`{self.command}` exited with {self.status}"


@dataclass(frozen=True)
class Repository:
    """An opened repository: where git runs, its git directory, and whether it is bare."""

    path: Path
    git_dir: Path
    bare: bool


def git_environment() -> dict[str, str]:
    """The daemon's environment with rollbackd's git settings on top (see the module)."""
    env = {**os.environ, **GIT_LOCALE, **GIT_ENV, "GIT_CONFIG_COUNT": str(len(FORCED_CONFIG))}
    for number, (key, value) in enumerate(FORCED_CONFIG.items()):
        env[f"GIT_CONFIG_KEY_{number}"] = key
        env[f"GIT_CONFIG_VALUE_{number}"] = value
    return env


def run_git(
    repo: Path,
    subcommand: str,
    *args: str,
    timeout: timedelta,
    config: Sequence[str] = (),
    leftovers: bool = False,
) -> GitOutcome:
    """``git [-c config]… subcommand args…`` in ``repo``, ended at ``timeout``; never raises.

    A git that cannot start (not installed, ``repo`` missing) is a failed
    outcome with the reason in ``err``. What git left running (a hook's
    background job) is named in ``notes`` only with ``leftovers=True``: the look
    is a pass over ``/proc`` that costs more than most git commands, and only a
    caller that shows the notes needs it. The git executor looks once per step
    instead (:func:`rollbackd.actions.process.left_running` with the outcome's
    ``pid``); reads (deploy discovery, the migration gate) show no notes.
    """
    label = f"git {subcommand}"
    settings = [part for setting in config for part in ("-c", setting)]
    where = repo.resolve()  # git compares the ceiling with the real path of where it runs
    env = git_environment()
    env["GIT_CEILING_DIRECTORIES"] = str(where.parent)
    try:
        finished = process.run(
            ["git", *settings, subcommand, *args],
            env=env,
            cwd=where,
            timeout=timeout,
            limit=GIT_OUTPUT_LIMIT,
            merge_stderr=False,
            leftovers=leftovers,
        )
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        return GitOutcome(label, -1, "", str(exc), False, timeout)
    return GitOutcome(
        label,
        -1 if finished.status is None else finished.status,
        _chomp(finished.output),
        _chomp(finished.errors),
        finished.timed_out,
        timeout,
        finished.notes(label),
        finished.cut > 0,
        finished.pid,
    )


def read_git(repo: Path, subcommand: str, *args: str, timeout: timedelta) -> str:
    """git's whole answer on stdout; :class:`GitError` naming ``repo`` and why otherwise."""
    outcome = run_git(repo, subcommand, *args, timeout=timeout)
    if not outcome.ok or outcome.cut:
        raise GitError(f"{repo}: {outcome.why()}")
    return outcome.out


def open_repository(repo: Path, timeout: timedelta) -> Repository:
    """``repo`` as a repository (a working copy or a bare one), or why it is not one."""
    if not repo.exists():
        raise NoSuchRepository(f"{repo} does not exist")
    outcome = run_git(
        repo, "rev-parse", "--is-bare-repository", "--absolute-git-dir", timeout=timeout
    )
    if not outcome.ok and not outcome.timed_out and "not a git repository" in outcome.err:
        raise NotARepository(f"{repo} is not a git repository")
    lines = outcome.out.splitlines()
    if not outcome.ok or len(lines) != 2 or lines[0] not in ("true", "false"):
        raise GitError(f"{repo} cannot be read as a git repository: {outcome.why()}")
    return Repository(repo, Path(lines[1]), lines[0] == "true")


def _chomp(text: str) -> str:
    """``text`` without its final newline (git ends every answer with one)."""
    return text[:-1] if text.endswith("\n") else text
