"""The git executor: the playbook's manual git rollback (Method 2) and tag rollback (Method 4).

A service deployed from a git working copy goes back to a target commit in one
of three ways (``strategy`` in ``[[services]]``):

``revert``
    every commit in ``target..HEAD`` is reverted into one new commit
    ("rollbackd: revert to v1 (incident 7)"), which is pushed normally: the
    remote branch only moves forward. A merge commit in the range fails the
    step instead of guessing its mainline.
``reset``
    ``reset --hard`` to the target, then ``push --force-with-lease`` against
    the head recorded before, so a push made meanwhile by someone else is
    never overwritten.
``tag``
    ``checkout --detach`` of ``refs/tags/<target>``; nothing is pushed.

Every ref is checked with :func:`~rollbackd.sources.deploys.valid_ref` before
git sees it and is passed after ``--end-of-options`` (or, for ``reset`` and
``checkout``, which do not take it in git 2.39, only as a resolved hexadecimal
commit id followed by ``--``). git runs through :func:`rollbackd.git.run_git`
(one environment and deadline policy for every git call of rollbackd): an
argument list, never a shell, no prompt, pager, editor or terminal, bounded
output, a command over when git exits (a hook that leaves a process running is
named in the transcript, not waited for), and its whole process group killed
after the timeout. Failures of git are failed
:class:`~rollbackd.actions.StepResult` values carrying git's messages, never
exceptions.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from rollbackd.actions import (
    OUTPUT_LIMIT,
    ExecutionState,
    IncidentFacts,
    Progress,
    StepResult,
    process,
)
from rollbackd.core.durations import format_duration
from rollbackd.errors import GitError, NoSuchRepository, NotARepository
from rollbackd.git import (
    GIT_ENV,
    GIT_LOCALE,
    GIT_OUTPUT_LIMIT,
    GitOutcome,
    Repository,
    open_repository,
    run_git,
)
from rollbackd.sources.deploys import valid_ref
from rollbackd.text import head_and_tail, one_line

Strategy = Literal["revert", "reset", "tag"]
STRATEGIES: tuple[Strategy, ...] = ("revert", "reset", "tag")

__all__ = ["GIT_ENV", "GIT_LOCALE", "GIT_OUTPUT_LIMIT", "STRATEGIES", "GitExecutor", "Strategy"]

GIST_LIMIT = 200
"""Characters of git's telling line kept in a step's summary."""

IDENTITY: Mapping[str, str] = {"user.name": "rollbackd", "user.email": "rollbackd@localhost"}
"""The committer of revert commits in a working copy that has no identity configured."""

FETCH_TIMEOUT = timedelta(minutes=1)
"""The most the optional fetch of verify_target waits (never more than the executor's timeout)."""

_SHA = re.compile(r"^[0-9a-f]{40}(?:[0-9a-f]{24})?$")

_IN_PROGRESS: Mapping[str, str] = {
    "REVERT_HEAD": "a revert is in progress",
    "CHERRY_PICK_HEAD": "a cherry-pick is in progress",
    "MERGE_HEAD": "a merge is in progress",
    "rebase-merge": "a rebase is in progress",
    "rebase-apply": "a rebase or am is in progress",
    "sequencer": "a revert or cherry-pick sequence is in progress",
    "BISECT_LOG": "a bisect is in progress",
    "index.lock": "another git process holds index.lock",
}
"""Files in the git directory that mean an operation is under way."""


class _StepError(Exception):
    """Ends a step early with a failed result (never leaves this module)."""

    def __init__(self, result: StepResult) -> None:
        super().__init__(result.summary)
        self.result = result


def _gist(text: str) -> str:
    """The telling line of git's messages: a rejection, error or fatal line, else the first."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if "[rejected]" in line or "[remote rejected]" in line:
            return one_line(line, GIST_LIMIT)
    for line in lines:
        if line.startswith(("fatal:", "error:")):
            return one_line(line, GIST_LIMIT)
    return one_line(lines[0], GIST_LIMIT) if lines else ""


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


class _Session:
    """git commands on one open working copy, each bounded by the timeout and transcribed.

    What the commands left running (a hook's background job) is looked for
    once, when the step's output is read, and named after the transcript: one
    pass over ``/proc`` per step instead of one per git command, which cost
    more than git itself (a dozen commands in an execute step).
    """

    def __init__(self, repo: Repository, timeout: timedelta) -> None:
        self.repo = repo
        self.timeout = timeout
        self.transcript: list[str] = []
        self.commands: list[tuple[int, str]] = []
        """(pid, label) of each git command run, for the look for what they left running."""

    def run(
        self,
        subcommand: str,
        *args: str,
        config: Sequence[str] = (),
        timeout: timedelta | None = None,
    ) -> GitOutcome:
        """``git [-c config]… subcommand args…``; a failure is a GitOutcome, never an exception."""
        limit = timeout or self.timeout
        result = run_git(
            self.repo.path, subcommand, *args, timeout=limit, config=config, leftovers=False
        )
        label = result.command
        if result.pid:
            self.commands.append((result.pid, label))
        if result.timed_out:
            ending = f"\n(timed out after {format_duration(limit)})"
        else:
            ending = "" if result.ok else f"\n(exit {result.status})"
        self.transcript.append(
            f"$ {label} {' '.join(args)}".rstrip()
            + (f"\n{result.text}" if result.text else "")
            + ending
            + (f"\n{result.notes}" if result.notes else "")
        )
        return result

    def output(self) -> str:
        """The transcript, then a line for each command that left processes running."""
        return head_and_tail("\n".join([*self.transcript, *self._left_notes()]), OUTPUT_LIMIT)

    def _left_notes(self) -> list[str]:
        left = process.left_running([pid for pid, _ in self.commands])
        named: dict[int, str] = dict(self.commands)  # a reused pid: its latest command
        return [process.left_note(named[pid], left[pid]) for pid in named if left[pid]]

    def failure(
        self, out: GitOutcome, what: str, data: Mapping[str, str] | None = None
    ) -> _StepError:
        """A failed step saying ``what`` went wrong and why, in git's words."""
        if out.timed_out:
            why = f"`{out.command}` timed out after {format_duration(out.limit)}"
        else:
            why = _gist(out.err) or _gist(out.out) or f"`{out.command}` exited with {out.status}"
        return _StepError(StepResult(False, f"{what}: {why}", self.output(), dict(data or {})))

    def need(self, out: GitOutcome, what: str) -> GitOutcome:
        """``out`` if git succeeded, else end the step with ``what``."""
        if not out.ok:
            raise self.failure(out, what)
        return out

    def fail(self, summary: str, data: Mapping[str, str] | None = None) -> _StepError:
        return _StepError(StepResult(False, summary, self.output(), dict(data or {})))


class GitExecutor:
    """Rolls a git working copy back by revert, reset or tag checkout (see the module)."""

    def __init__(
        self,
        repo: Path,
        *,
        remote: str,
        branch: str,
        strategy: Strategy,
        timeout: timedelta,
        fetch_timeout: timedelta | None = None,
    ) -> None:
        self.repo = repo
        self.remote = remote
        self.branch = branch
        self.strategy = strategy
        self.timeout = timeout
        self.fetch_timeout = min(fetch_timeout or FETCH_TIMEOUT, timeout)
        self._opened: Repository | None = None

    # -- the Executor protocol -------------------------------------------------------

    def verify_target(self, facts: IncidentFacts) -> StepResult:
        """Fetch, resolve the target, check it lies behind HEAD and that the tree is clean.

        ``data``: ``head`` (HEAD before), ``target_sha``, ``strategy``, ``target``.
        """
        return self._step(facts, "verify target", lambda s: self._verify(s, facts))

    def backup(self, facts: IncidentFacts, now: datetime) -> StepResult:
        """Branch ``rollbackd/backup/<incident>-<UTC stamp>`` at HEAD, pushed to the remote.

        ``data``: ``branch`` (its name) and ``sha`` (HEAD).
        """
        return self._step(facts, "backup", lambda s: self._backup(s, facts, now))

    def execute(self, facts: IncidentFacts) -> StepResult:
        """Roll back with the configured strategy; ``data``: ``before``, ``after``, ``pushed``."""
        return self._step(facts, "execute", lambda s: self._execute(s, facts))

    def state(self, facts: IncidentFacts, before: Mapping[str, str]) -> ExecutionState:
        """Judge an interrupted execute from the working copy.

        ``before`` is verify's data: ``head`` (``before`` is accepted too) and
        ``target_sha``. DONE when HEAD has the target's content (revert) or is the
        target (reset, tag), with a note whether the remote branch has it yet;
        NOT_STARTED when HEAD is still ``head`` and nothing is under way;
        UNKNOWN otherwise, with the reason.
        """
        refused = self._refused(facts)
        if refused is not None:
            return ExecutionState(Progress.UNKNOWN, refused.summary)
        try:
            repo = self._open()
        except GitError as exc:
            return ExecutionState(Progress.UNKNOWN, f"cannot open {self.repo}: {exc!r}")
        try:
            return self._state(_Session(repo, self.timeout), facts, before)
        except _StepError as failed:
            return ExecutionState(Progress.UNKNOWN, failed.result.summary)
        except (OSError, ValueError) as exc:
            return ExecutionState(Progress.UNKNOWN, f"cannot read {self.repo}: {exc!r}")

    # -- beyond the protocol ---------------------------------------------------------

    def push(self, facts: IncidentFacts, before: Mapping[str, str] | None = None) -> StepResult:
        """Publish HEAD to the remote branch after an interrupted execute; idempotent.

        ``revert`` pushes normally; ``reset`` needs ``before["head"]`` (verify's
        data) to lease against; ``tag`` publishes nothing.
        """
        return self._step(facts, "push", lambda s: self._push(s, facts, before or {}))

    # -- steps -----------------------------------------------------------------------

    def _step(
        self, facts: IncidentFacts, what: str, body: Callable[[_Session], StepResult]
    ) -> StepResult:
        refused = self._refused(facts)
        if refused is not None:
            return refused
        try:
            repo = self._open()
        except NoSuchRepository:
            return StepResult(False, f"{what}: the working copy {self.repo} does not exist")
        except NotARepository:
            return StepResult(False, f"{what}: {self.repo} is not a git working copy")
        except GitError as exc:
            return StepResult(False, f"{what}: cannot open {self.repo}: {exc!r}")
        session = _Session(repo, self.timeout)
        try:
            if repo.bare:
                return StepResult(
                    False, f"{what}: {self.repo} is a bare repository, not a working copy"
                )
            return body(session)
        except _StepError as failed:
            return failed.result
        except (OSError, ValueError) as exc:
            return StepResult(False, f"{what}: {exc!r}", session.output())

    def _open(self) -> Repository:
        """The working copy, asked of git once and again only when it or its git directory
        is gone: the steps of one rollback follow each other within a second, and each
        git process costs more than the check."""
        opened = self._opened
        if opened is not None and self.repo.is_dir() and opened.git_dir.is_dir():
            return opened
        self._opened = open_repository(self.repo, self.timeout)
        return self._opened

    def _refused(self, facts: IncidentFacts) -> StepResult | None:
        """A failed result naming the first ref that must not reach git, else None."""
        for kind, value in (
            ("target", facts.target),
            ("remote", self.remote),
            ("branch", self.branch),
        ):
            if not valid_ref(value):
                return StepResult(
                    False,
                    f"refusing {kind} {value!r}: not a valid git ref "
                    "(letters, digits and . _ / + -, not starting with '-')",
                    data={kind: value},
                )
        if self.strategy not in STRATEGIES:
            return StepResult(False, f"unknown git strategy {self.strategy!r}")
        return None

    def _verify(self, s: _Session, facts: IncidentFacts) -> StepResult:
        target = facts.target
        fetch_args = ["--tags"] if self.strategy == "tag" else []
        fetched = s.run(
            "fetch", *fetch_args, "--end-of-options", self.remote, timeout=self.fetch_timeout
        )
        note = ""
        if not fetched.ok:
            why = (
                f"timed out after {format_duration(self.fetch_timeout)}"
                if fetched.timed_out
                else _gist(fetched.err) or f"exit {fetched.status}"
            )
            note = f"; fetch from {self.remote} failed ({why}), checked against local refs"
        sha = self._resolve(s, target)
        head = self._head(s)
        if sha == head:
            raise s.fail(f"target {target} is HEAD already ({sha[:8]}): nothing to roll back")
        ancestor = self._is_ancestor(s, sha, head)
        if not ancestor and self.strategy != "tag":
            raise s.fail(
                f"target {target} ({sha[:8]}) is not an ancestor of HEAD {head[:8]}: "
                "a rollback goes back, not sideways"
            )
        problems = self._problems(s)
        if problems:
            raise s.fail(f"working copy {self.repo} is not clean: {'; '.join(problems)}")
        if ancestor:
            count = self._count(s, sha, head)
            relation = f"{_plural(count, 'commit')} behind HEAD {head[:8]}"
        else:
            relation = f"not an ancestor of HEAD {head[:8]}"
        return StepResult(
            True,
            f"target {target} is {sha[:8]} ({relation}){note}",
            s.output(),
            {"head": head, "target_sha": sha, "strategy": self.strategy, "target": target},
        )

    def _backup(self, s: _Session, facts: IncidentFacts, now: datetime) -> StepResult:
        head = self._head(s)
        stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        name = f"rollbackd/backup/{facts.incident}-{stamp}"
        if not valid_ref(name):
            raise s.fail(f"refusing backup branch name {name!r}: not a valid git ref")
        data = {"branch": name, "sha": head}
        existing = s.run("rev-parse", "--verify", "--quiet", f"refs/heads/{name}")
        if existing.ok:
            if existing.out.strip() != head:
                raise s.fail(
                    f"backup branch {name} exists already at {existing.out.strip()[:8]}, "
                    f"not at HEAD {head[:8]}",
                    data,
                )
        else:
            s.need(
                s.run("branch", "--no-track", "--end-of-options", name, head),
                f"could not create backup branch {name}",
            )
        pushed = s.run(
            "push", "--end-of-options", self.remote, f"refs/heads/{name}:refs/heads/{name}"
        )
        if not pushed.ok:
            raise s.failure(
                pushed,
                f"backup branch {name} created at {head[:8]} but not pushed to {self.remote}",
                data,
            )
        return StepResult(
            True, f"backup branch {name} at {head[:8]} pushed to {self.remote}", s.output(), data
        )

    def _execute(self, s: _Session, facts: IncidentFacts) -> StepResult:
        sha = self._resolve(s, facts.target)
        head = self._head(s)
        unchanged = {"before": head, "after": head, "pushed": "no"}
        if sha == head:
            raise s.fail(
                f"target {facts.target} is HEAD already ({sha[:8]}): nothing to roll back",
                unchanged,
            )
        problems = self._problems(s)
        if problems:
            raise s.fail(f"working copy {self.repo} is not clean: {'; '.join(problems)}", unchanged)
        if self.strategy == "tag":
            return self._checkout(s, facts, sha, head)
        if not self._is_ancestor(s, sha, head):
            raise s.fail(
                f"target {facts.target} ({sha[:8]}) is not an ancestor of HEAD {head[:8]}: "
                "a rollback goes back, not sideways",
                unchanged,
            )
        if self.strategy == "revert":
            return self._revert(s, facts, sha, head)
        return self._reset(s, facts, sha, head)

    def _revert(self, s: _Session, facts: IncidentFacts, sha: str, head: str) -> StepResult:
        target = facts.target
        span = f"{sha}..{head}"
        unchanged = {"before": head, "after": head, "pushed": "no"}
        merges = s.need(
            s.run("rev-list", "--min-parents=2", "--end-of-options", span), "listing merges"
        ).out.split()
        if merges:
            listed = ", ".join(m[:8] for m in merges[:5])
            raise s.fail(
                f"cannot revert to {target}: {target}..HEAD contains merge "
                f"{'commit' if len(merges) == 1 else 'commits'} {listed}, and rollbackd does "
                "not guess which parent is the mainline; use strategy 'reset' or revert by "
                "hand. Nothing was changed",
                unchanged,
            )
        log = s.need(
            s.run("log", "--no-decorate", "--format=%h %s", "--end-of-options", span),
            "listing the commits to revert",
        ).out.splitlines()
        reverted = s.run("revert", "--no-edit", "--no-commit", "--end-of-options", span)
        if not reverted.ok:
            conflicts = s.run("diff", "--name-only", "--diff-filter=U").out.split()
            restored = self._restore(s, head)
            where = f" (conflicts in {', '.join(conflicts)})" if conflicts else ""
            raise s.failure(reverted, f"revert to {target} failed{where}; {restored}", unchanged)
        staged = s.run("diff", "--cached", "--quiet")
        if staged.status == 0:
            s.run("revert", "--quit")
        elif staged.status == 1:
            message = (
                f"rollbackd: revert to {target} (incident {facts.incident})\n\n"
                f"Reverts {_plural(len(log), 'commit')} in {sha[:12]}..{head[:12]}:\n"
                + "".join(f"  {line}\n" for line in log)
            )
            committed = s.run("commit", "--quiet", "-m", message, config=self._identity(s))
            if not committed.ok:
                restored = self._restore(s, head)
                raise s.failure(committed, f"commit of the revert failed; {restored}", unchanged)
        else:
            restored = self._restore(s, head)
            raise s.failure(staged, f"reading the reverted index failed; {restored}", unchanged)
        after = self._head(s)
        pushed = s.run("push", "--end-of-options", self.remote, f"HEAD:refs/heads/{self.branch}")
        data = {"before": head, "after": after, "pushed": "yes" if pushed.ok else "no"}
        if not pushed.ok:
            raise s.failure(
                pushed,
                f"reverted to {target} locally (HEAD {after[:8]}) but the push to "
                f"{self.remote}/{self.branch} failed",
                data,
            )
        return StepResult(
            True,
            f"reverted {_plural(len(log), 'commit')} back to {target}: HEAD {head[:8]} -> "
            f"{after[:8]}, pushed to {self.remote}/{self.branch}",
            s.output(),
            data,
        )

    def _reset(self, s: _Session, facts: IncidentFacts, sha: str, head: str) -> StepResult:
        target = facts.target
        s.need(
            s.run("reset", "--hard", "--quiet", _hex(sha), "--"),
            f"reset to {target} failed",
        )
        after = self._head(s)
        pushed = self._lease_push(s, head)
        data = {"before": head, "after": after, "pushed": "yes" if pushed.ok else "no"}
        if not pushed.ok:
            if "stale info" in pushed.err:
                raise s.fail(
                    f"reset to {target} ({after[:8]}) locally, but --force-with-lease refused to "
                    f"push: {self.remote}/{self.branch} is no longer at {head[:8]} (someone "
                    "pushed meanwhile); the remote branch is unchanged",
                    data,
                )
            raise s.failure(
                pushed,
                f"reset to {target} ({after[:8]}) locally, but the push to "
                f"{self.remote}/{self.branch} failed",
                data,
            )
        return StepResult(
            True,
            f"reset to {target}: HEAD {head[:8]} -> {after[:8]}, "
            f"{self.remote}/{self.branch} rewritten with --force-with-lease",
            s.output(),
            data,
        )

    def _checkout(self, s: _Session, facts: IncidentFacts, sha: str, head: str) -> StepResult:
        s.need(
            s.run("checkout", "--quiet", "--detach", _hex(sha), "--"),
            f"checkout of tag {facts.target} failed",
        )
        after = self._head(s)
        return StepResult(
            True,
            f"checked out tag {facts.target} ({after[:8]}), detached from {head[:8]}; "
            "nothing pushed",
            s.output(),
            {"before": head, "after": after, "pushed": "n/a"},
        )

    def _state(
        self, s: _Session, facts: IncidentFacts, before: Mapping[str, str]
    ) -> ExecutionState:
        head = self._head(s)
        recorded = before.get("target_sha", "")
        sha = recorded if _SHA.match(recorded) else self._resolve(s, facts.target)
        before_head = before.get("head") or before.get("before") or ""
        problems = self._problems(s)
        if self.strategy == "revert":
            done = self._tree(s, head) == self._tree(s, sha)
        else:
            done = head == sha
        if done and not problems:
            what = (
                f"HEAD {head[:8]} has the content of {facts.target}"
                if self.strategy == "revert"
                else f"HEAD is at {facts.target} ({sha[:8]})"
            )
            if self.strategy == "tag":
                return ExecutionState(Progress.DONE, what)
            remote = s.run(
                "ls-remote", "--end-of-options", self.remote, f"refs/heads/{self.branch}"
            )
            remote_sha = remote.out.split()[0] if remote.ok and remote.out.split() else ""
            where = f"{self.remote}/{self.branch}"
            if not remote.ok:
                note = f"{where} could not be read ({_gist(remote.err)}); push() publishes HEAD"
            elif remote_sha == head:
                note = f"{where} has it too"
            else:
                note = f"{where} is at {remote_sha[:8] or 'nothing'}, not HEAD: push() publishes it"
            return ExecutionState(Progress.DONE, f"{what}; {note}")
        if head == before_head and not problems:
            return ExecutionState(
                Progress.NOT_STARTED, f"HEAD is still {head[:8]} and the working copy is clean"
            )
        if problems:
            reason = f"HEAD is {head[:8]}, and " + "; ".join(problems)
        else:
            reason = (
                f"HEAD is {head[:8]}, neither the head before ({before_head[:8] or 'unknown'}) "
                f"nor the target {facts.target} ({sha[:8]})"
            )
        return ExecutionState(Progress.UNKNOWN, reason)

    def _push(self, s: _Session, facts: IncidentFacts, before: Mapping[str, str]) -> StepResult:
        if self.strategy == "tag":
            return StepResult(True, "strategy 'tag' publishes nothing")
        head = self._head(s)
        where = f"{self.remote}/{self.branch}"
        listed = s.need(
            s.run("ls-remote", "--end-of-options", self.remote, f"refs/heads/{self.branch}"),
            f"cannot read {where}",
        )
        remote_sha = listed.out.split()[0] if listed.out.split() else ""
        data = {"after": head, "pushed": "yes"}
        if remote_sha == head:
            return StepResult(True, f"{where} is at HEAD {head[:8]} already", s.output(), data)
        if self.strategy == "revert":
            s.need(
                s.run("push", "--end-of-options", self.remote, f"HEAD:refs/heads/{self.branch}"),
                f"push of HEAD {head[:8]} to {where} failed",
            )
        else:
            lease = before.get("head", "")
            if not _SHA.match(lease):
                raise s.fail(
                    f"cannot push the reset to {where}: the head before the rollback "
                    "(verify's data 'head') is needed for --force-with-lease"
                )
            s.need(self._lease_push(s, lease), f"push of HEAD {head[:8]} to {where} refused")
        return StepResult(True, f"pushed HEAD {head[:8]} to {where}", s.output(), data)

    # -- helpers ---------------------------------------------------------------------

    def _lease_push(self, s: _Session, expected: str) -> GitOutcome:
        return s.run(
            "push",
            f"--force-with-lease=refs/heads/{self.branch}:{_hex(expected)}",
            "--end-of-options",
            self.remote,
            f"HEAD:refs/heads/{self.branch}",
        )

    def _resolve(self, s: _Session, target: str) -> str:
        """The commit ``target`` names (for strategy tag: ``refs/tags/<target>``)."""
        name = f"refs/tags/{target}" if self.strategy == "tag" else target
        out = s.run("rev-parse", "--verify", "--quiet", "--end-of-options", f"{name}^{{commit}}")
        sha = out.out.strip()
        if out.timed_out:
            raise s.failure(out, f"resolving target {target}")
        if not out.ok or not _SHA.match(sha):
            kind = "tag" if self.strategy == "tag" else "commit, tag or branch"
            raise s.fail(f"target {target!r} does not exist in {self.repo}: no {kind} of that name")
        return sha

    def _head(self, s: _Session) -> str:
        out = s.run("rev-parse", "--verify", "--quiet", "HEAD^{commit}")
        sha = out.out.strip()
        if not out.ok or not _SHA.match(sha):
            raise s.fail(f"{self.repo} has no commit checked out (HEAD does not resolve)")
        return sha

    def _tree(self, s: _Session, sha: str) -> str:
        out = s.need(
            s.run("rev-parse", "--verify", "--end-of-options", f"{_hex(sha)}^{{tree}}"),
            f"reading the tree of {sha[:8]}",
        )
        return out.out.strip()

    def _is_ancestor(self, s: _Session, sha: str, head: str) -> bool:
        out = s.run("merge-base", "--is-ancestor", "--end-of-options", sha, head)
        if out.status not in (0, 1):
            raise s.failure(out, f"checking that {sha[:8]} is an ancestor of HEAD")
        return out.status == 0

    def _count(self, s: _Session, sha: str, head: str) -> int:
        out = s.need(
            s.run("rev-list", "--count", "--end-of-options", f"{sha}..{head}"),
            "counting commits",
        )
        return int(out.out.strip() or 0)

    def _problems(self, s: _Session) -> list[str]:
        """Why the working copy is not ready to be rolled back (empty when it is)."""
        git_dir = s.repo.git_dir
        problems = [what for name, what in _IN_PROGRESS.items() if (git_dir / name).exists()]
        status = s.need(
            s.run("status", "--porcelain=v1", "--untracked-files=no"), "reading the status"
        )
        changed = [line[3:] for line in status.out.splitlines() if line.strip()]
        if changed:
            shown = ", ".join(changed[:5])
            more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
            problems.append(f"uncommitted changes in {shown}{more}")
        return problems

    def _restore(self, s: _Session, head: str) -> str:
        """Undo a failed revert; say whether the working copy is as it was."""
        s.run("revert", "--abort")
        if self._head(s) == head and not self._problems(s):
            return "the working copy is as it was"
        s.run("reset", "--hard", "--quiet", _hex(head), "--")
        s.run("revert", "--quit")
        problems = self._problems(s)
        if self._head(s) == head and not problems:
            return f"the working copy was reset to {head[:8]}"
        return "WARNING: the working copy could not be restored: " + "; ".join(
            problems or ["HEAD moved"]
        )

    def _identity(self, s: _Session) -> list[str]:
        """``-c`` settings for the parts of a committer identity the working copy lacks."""
        missing: list[str] = []
        for key, value in IDENTITY.items():
            got = s.run("config", "--get", key)
            if not got.ok or not got.out.strip():
                missing.append(f"{key}={value}")
        return missing


def _hex(sha: str) -> str:
    """``sha`` if it is a full hexadecimal commit id (safe where --end-of-options is not)."""
    if not _SHA.match(sha):
        raise _StepError(StepResult(False, f"refusing {sha!r}: not a full commit id"))
    return sha
