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

The working copy may be one of several (one per replica of rollbackd, each on
its own machine), so for ``revert`` and ``reset`` every step first brings it to
the remote's state: ``fetch`` of the configured branch, a check that it is
clean (nothing uncommitted, no operation under way, no untracked file the
rollback would overwrite), then a fast-forward when it is behind. A working
copy with commits the remote does not have is never forced: the step fails,
naming what is wrong, and a person looks. The remote is the truth about
whether the rollback happened: a remote branch that already holds it (this
incident's revert commit, or the target's content) is recorded as done, and a
push refused because the branch moved is looked at again (done by someone else
→ recorded, never reverted twice; otherwise ``revert`` tries once more on the
new state). A ``reset`` never goes past the head verify and the backup saw.

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
from dataclasses import dataclass
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
_OWN_REVERT = re.compile(r"^rollbackd: revert to \S+ \(incident (\d{1,18})\)$")
"""The subject of a revert commit rollbackd made (see ``GitExecutor._subject``)."""

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


@dataclass(frozen=True)
class _Remote:
    """What the fetch found: the remote branch's head, or ``None`` and why not (``note``)."""

    sha: str | None
    note: str = ""


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
        self._checked: dict[int, str] = {}
        """The head verify (then backup) saw, by incident: a reset never goes past it."""

    # -- the Executor protocol -------------------------------------------------------

    def verify_target(self, facts: IncidentFacts) -> StepResult:
        """Fetch, bring a clean copy to the remote, check the target lies behind HEAD.

        ``data``: ``head`` (HEAD before, after any fast-forward), ``target_sha``,
        ``strategy``, ``target``.
        """
        return self._step(facts, "verify target", lambda s: self._verify(s, facts))

    def backup(self, facts: IncidentFacts, now: datetime) -> StepResult:
        """Branch ``rollbackd/backup/<incident>-<UTC stamp>`` at HEAD, pushed to the remote.

        ``data``: ``branch`` (its name) and ``sha`` (HEAD).
        """
        return self._step(facts, "backup", lambda s: self._backup(s, facts, now))

    def execute(self, facts: IncidentFacts) -> StepResult:
        """Roll back with the configured strategy; ``data``: ``before``, ``after``, ``pushed``.

        ``pushed`` is ``already`` when the remote branch held the rollback
        already (another replica or a person did it); ``after`` is then its head.
        """
        return self._step(facts, "execute", lambda s: self._execute(s, facts))

    def state(self, facts: IncidentFacts, before: Mapping[str, str]) -> ExecutionState:
        """Judge an interrupted execute from the working copy.

        ``before`` is verify's data: ``head`` (``before`` is accepted too) and
        ``target_sha``. DONE when the remote branch holds the rollback (the
        working copy then follows it), or when HEAD has the target's content
        (revert) or is the target (reset, tag), with a note whether the remote
        branch has it yet; a stale copy is fast-forwarded before it is judged;
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
        remote = self._fetch(s)
        sha = self._resolve(s, target)
        head = self._head(s)
        synced = ""
        if self.strategy != "tag":
            head, synced = self._sync(s, head, remote, sha)
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
        self._checked[facts.incident] = head
        return StepResult(
            True,
            f"target {target} is {sha[:8]} ({relation}){synced}{remote.note}",
            s.output(),
            {"head": head, "target_sha": sha, "strategy": self.strategy, "target": target},
        )

    def _backup(self, s: _Session, facts: IncidentFacts, now: datetime) -> StepResult:
        checked = self._checked.get(facts.incident)
        remote = self._fetch(s) if self.strategy != "tag" and not checked else _Remote(None)
        head = self._head(s)
        if (  # a copy verify did not bring up to date here (another replica, a restart)
            remote.sha is not None
            and remote.sha != head
            and self._is_ancestor(s, head, remote.sha)
            and not self._problems(s)
            and not self._in_the_way(s, head, remote.sha)
        ):
            self._fast_forward(s, remote.sha)  # back up what the remote runs, not a stale copy
            head = remote.sha
        self._checked.setdefault(facts.incident, head)
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
        remote = self._fetch(s)
        sha = self._resolve(s, facts.target)
        head = self._head(s)
        synced = remote.note
        if self.strategy != "tag":
            if remote.sha is not None and not self._problems(s):
                held = self._holds(s, facts, sha, remote.sha)
                if held:
                    return self._already(s, facts, sha, head, head, remote.sha, held)
            unsynced = {"before": head, "after": head, "pushed": "no"}
            if self.strategy == "reset" and remote.sha is not None:
                self._unmoved(s, facts, remote.sha, unsynced)
            head, ff = self._sync(s, head, remote, sha, unsynced)
            synced = ff + remote.note
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
            return self._revert(s, facts, sha, head, synced)
        return self._reset(s, facts, sha, head, synced)

    def _revert(
        self,
        s: _Session,
        facts: IncidentFacts,
        sha: str,
        head: str,
        note: str = "",
    ) -> StepResult:
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
                f"{self._subject(facts)}\n\n"
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
        where = self._where()
        pushed = s.run("push", "--end-of-options", self.remote, f"HEAD:refs/heads/{self.branch}")
        data = {"before": head, "after": after, "pushed": "yes" if pushed.ok else "no"}
        if pushed.ok:
            return StepResult(
                True,
                f"reverted {_plural(len(log), 'commit')} back to {target}: HEAD {head[:8]} -> "
                f"{after[:8]}, pushed to {where}{note}",
                s.output(),
                data,
            )
        remote = self._fetch(s)
        if remote.sha is not None:  # at ``after`` too: the same commit, pushed by another replica
            held = self._holds(s, facts, sha, remote.sha)
            if held:
                return self._already(s, facts, sha, head, after, remote.sha, held, refused=True)
            if self._is_ancestor(s, head, remote.sha) and not self._in_the_way(
                s, after, remote.sha
            ):
                moved = self._log(s, head, remote.sha)
                s.need(  # only this step's own revert commit is dropped: it was never pushed
                    s.run("reset", "--hard", "--quiet", _hex(remote.sha), "--"),
                    f"bringing the working copy to {where} {remote.sha[:8]}",
                )
                listed = ", ".join(f"{c[:8]} {one_line(subject, 60)}" for c, subject in moved[:5])
                more = f" and {len(moved) - 5} more" if len(moved) > 5 else ""
                raise s.fail(
                    f"the push of the revert to {target} was refused: {where} moved from "
                    f"{head[:8]} to {remote.sha[:8]} ({_plural(len(moved), 'commit')} pushed "
                    f"meanwhile: {listed}{more}). rollbackd does not revert commits it did not "
                    "check (a person's fix, a migration): a person must decide. The remote "
                    "branch is unchanged",
                    {"before": head, "after": remote.sha, "pushed": "no"},
                )
        raise s.failure(
            pushed,
            f"reverted to {target} locally (HEAD {after[:8]}) but the push to {where} failed",
            data,
        )

    def _reset(
        self, s: _Session, facts: IncidentFacts, sha: str, head: str, note: str = ""
    ) -> StepResult:
        target = facts.target
        s.need(
            s.run("reset", "--hard", "--quiet", _hex(sha), "--"),
            f"reset to {target} failed",
        )
        after = self._head(s)
        pushed = self._lease_push(s, head)
        data = {"before": head, "after": after, "pushed": "yes" if pushed.ok else "no"}
        if not pushed.ok:
            remote = self._fetch(s)
            if remote.sha is not None:
                held = self._holds(s, facts, sha, remote.sha)
                if held:
                    return self._already(s, facts, sha, head, after, remote.sha, held, refused=True)
            if "stale info" in pushed.err or remote.sha not in (None, head):
                raise s.fail(
                    f"reset to {target} ({after[:8]}) locally, but the push with "
                    f"--force-with-lease was refused: {self.remote}/{self.branch} is no longer "
                    f"at {head[:8]} (someone pushed meanwhile); the remote branch is unchanged",
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
            f"{self.remote}/{self.branch} rewritten with --force-with-lease{note}",
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

    def _already(
        self,
        s: _Session,
        facts: IncidentFacts,
        sha: str,
        head: str,
        local: str,
        remote: str,
        held: str,
        refused: bool = False,
    ) -> StepResult:
        """The remote branch holds the rollback already: done, without a second one.

        ``head`` is HEAD before this step, ``local`` HEAD now (this step's own
        unpublished revert or reset, when its push was ``refused``).
        """
        adopted = self._adopt(s, facts, local, remote, sha)
        why = f"the push to {self._where()} was refused: " if refused else ""
        return StepResult(
            True,
            f"{why}{held}, so it is not rolled back a second time{adopted}",
            s.output(),
            {"before": head, "after": remote, "pushed": "already"},
        )

    def _state(
        self, s: _Session, facts: IncidentFacts, before: Mapping[str, str]
    ) -> ExecutionState:
        head = self._head(s)
        recorded = before.get("target_sha", "")
        sha = recorded if _SHA.match(recorded) else self._resolve(s, facts.target)
        before_head = before.get("head") or before.get("before") or ""
        problems = self._problems(s)
        if self.strategy != "tag" and not problems:
            remote = self._fetch(s)
            if remote.sha is not None and remote.sha != head:
                held = self._holds(s, facts, sha, remote.sha)
                if held:
                    return ExecutionState(
                        Progress.DONE, f"{held}{self._adopt(s, facts, head, remote.sha, sha)}"
                    )
                if (
                    not self._done_locally(s, head, sha)
                    and self._is_ancestor(s, head, remote.sha)
                    and not self._in_the_way(s, head, remote.sha)
                ):
                    self._fast_forward(s, remote.sha)  # a stale copy judged on the remote's state
                    head = remote.sha
        done = self._done_locally(s, head, sha)
        if done and not problems:
            what = (
                f"HEAD {head[:8]} has the content of {facts.target}"
                if self.strategy == "revert"
                else f"HEAD is at {facts.target} ({sha[:8]})"
            )
            if self.strategy == "tag":
                return ExecutionState(Progress.DONE, what)
            remote_head = s.run(
                "ls-remote", "--end-of-options", self.remote, f"refs/heads/{self.branch}"
            )
            listed = remote_head.out.split() if remote_head.ok else []
            remote_sha = listed[0] if listed else ""
            where = self._where()
            if not remote_head.ok:
                note = (
                    f"{where} could not be read ({_gist(remote_head.err)}); push() publishes HEAD"
                )
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
        where = self._where()
        recorded = before.get("target_sha", "")
        sha = recorded if _SHA.match(recorded) else self._resolve(s, facts.target)
        remote = self._fetch(s)
        if remote.sha is not None and remote.sha != head:
            held = self._holds(s, facts, sha, remote.sha)
            if held:
                return self._already(s, facts, sha, head, head, remote.sha, held)
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

    # -- the remote, the truth in a cluster --------------------------------------------

    def _where(self) -> str:
        return f"{self.remote}/{self.branch}"

    def _subject(self, facts: IncidentFacts) -> str:
        """The subject of this incident's revert commit: how any replica recognises it."""
        return f"rollbackd: revert to {facts.target} (incident {facts.incident})"

    def _fetch(self, s: _Session) -> _Remote:
        """Fetch the remote branch (and tags); its head, or ``None`` with a note why not.

        A remote that cannot be reached is not an error here: a single machine
        rolls back its own working copy all the same, and a push to that remote
        then fails and says so.
        """
        if self.strategy == "tag":
            args = ["--tags", "--end-of-options", self.remote]
        else:
            refspec = f"+refs/heads/{self.branch}:{self._tracking()}"
            args = ["--end-of-options", self.remote, refspec]
        fetched = s.run("fetch", *args, timeout=self.fetch_timeout)
        if not fetched.ok:
            why = (
                f"timed out after {format_duration(self.fetch_timeout)}"
                if fetched.timed_out
                else _gist(fetched.err) or f"exit {fetched.status}"
            )
            return _Remote(
                None, f"; fetch from {self.remote} failed ({why}), checked against local refs"
            )
        if self.strategy == "tag":
            return _Remote(None)
        out = s.run("rev-parse", "--verify", "--quiet", f"{self._tracking()}^{{commit}}")
        sha = out.out.strip()
        if not out.ok or not _SHA.match(sha):
            return _Remote(None, f"; {self._where()} could not be read after the fetch")
        return _Remote(sha)

    def _tracking(self) -> str:
        return f"refs/remotes/{self.remote}/{self.branch}"

    def _sync(
        self,
        s: _Session,
        head: str,
        remote: _Remote,
        sha: str,
        data: Mapping[str, str] | None = None,
    ) -> tuple[str, str]:
        """Bring a clean working copy to the remote branch; HEAD then, and what was done.

        Ends the step, changing nothing, when the working copy is not clean or
        has commits the remote does not have: that is for a person to look at.
        """
        problems = self._problems(s) + self._in_the_way(s, head, remote.sha or head, sha)
        if problems:
            raise s.fail(
                f"working copy {self.repo} is not clean: {'; '.join(problems)} "
                "(a person must look; nothing was changed)",
                data,
            )
        if remote.sha is None or remote.sha == head:
            return head, ""
        where = self._where()
        if self._is_ancestor(s, head, remote.sha):
            count = self._count(s, head, remote.sha)
            self._fast_forward(s, remote.sha)
            return remote.sha, (
                f"; working copy fast-forwarded {_plural(count, 'commit')} "
                f"from {head[:8]} to {where} {remote.sha[:8]}"
            )
        local = self._log(s, remote.sha, head)
        published = self._published_elsewhere(s, local, head, remote.sha)
        if published:
            s.need(
                s.run("reset", "--hard", "--quiet", _hex(remote.sha), "--"),
                f"bringing the working copy to {where} {remote.sha[:8]}",
            )
            return remote.sha, (
                f"; working copy brought to {where} {remote.sha[:8]}, dropping its own "
                f"unpublished {published} (this replica stopped before its push; "
                f"{where} has {'it' if len(local) == 1 else 'them'} from another replica)"
            )
        listed = ", ".join(f"{c[:8]} {one_line(subject, 60)}" for c, subject in local[:3])
        more = f" and {len(local) - 3} more" if len(local) > 3 else ""
        raise s.fail(
            f"working copy {self.repo} has {_plural(len(local), 'commit')} that {where} "
            f"({remote.sha[:8]}) does not have: {listed}{more}. A person must look: rollbackd "
            "never forces a working copy or a remote, and nothing was changed",
            data,
        )

    def _published_elsewhere(
        self, s: _Session, local: list[tuple[str, str]], head: str, remote: str
    ) -> str:
        """What the working copy's own commits are, when they are only rollbackd's reverts
        that the remote has too (by subject: each names its incident), else ``""``.

        A replica killed between its revert commit and its push keeps that commit; the
        replica that took over reverted and pushed the same incident. Dropping the stale
        copy then loses nothing; any other commit is for a person to look at.
        """
        if self.strategy != "revert" or not local:
            return ""
        subjects = {subject for _, subject in local}
        if not all(_OWN_REVERT.match(subject) for subject in subjects):
            return ""
        theirs = {subject for _, subject in self._log(s, head, remote)}
        if not subjects <= theirs:
            return ""
        incidents = sorted(int(m.group(1)) for m in map(_OWN_REVERT.match, subjects) if m)
        named = ", ".join(str(n) for n in incidents)
        return (
            f"revert of incident {named}"
            if len(incidents) == 1
            else f"reverts of incidents {named}"
        )

    def _unmoved(
        self, s: _Session, facts: IncidentFacts, remote: str, data: Mapping[str, str]
    ) -> None:
        """End a reset, changing nothing, if the remote branch moved since it was checked.

        The head checked is the one verify or backup saw (kept by this executor),
        else the incident's backup branch on the remote (any replica can read
        it). Commits pushed after it were neither looked at by the migration
        gate nor backed up, and a reset would discard them from the branch.
        """
        checked = self._checked.get(facts.incident) or self._backed_up(s, facts)
        if not checked or checked == remote:
            return
        raise s.fail(
            f"not reset to {facts.target}: {self._where()} moved from {checked[:8]} (the head "
            f"checked and backed up) to {remote[:8]}: someone pushed meanwhile, and a reset "
            "would discard it; the remote branch is unchanged (a person must look)",
            data,
        )

    def _backed_up(self, s: _Session, facts: IncidentFacts) -> str:
        """The head this incident's latest backup branch on the remote keeps, or ``""``."""
        listed = s.run(
            "ls-remote",
            "--end-of-options",
            self.remote,
            f"refs/heads/rollbackd/backup/{facts.incident}-*",
        )
        rows = sorted(
            (ref, sha)
            for sha, _, ref in (line.partition("\t") for line in listed.out.splitlines())
            if listed.ok and _SHA.match(sha)
        )
        return rows[-1][1] if rows else ""

    def _holds(self, s: _Session, facts: IncidentFacts, sha: str, remote: str) -> str:
        """Why the remote branch at ``remote`` holds the rollback already, or ``""``.

        It does when it is at the target, has the target's content (a person
        rolled back by hand), or, for ``revert``, has this incident's revert
        commit since the target (another replica did it, and maybe more was
        pushed after it: reverting again would undo that).
        """
        where = self._where()
        if remote == sha:
            return f"{where} is at {facts.target} ({sha[:8]}) already"
        if self._tree(s, remote) == self._tree(s, sha):
            return f"{where} ({remote[:8]}) has the content of {facts.target} already"
        if self.strategy == "revert" and self._is_ancestor(s, sha, remote):
            mine = self._subject(facts)
            for commit, subject in self._log(s, sha, remote):
                if subject == mine:
                    return f"{where} ({remote[:8]}) has this incident's revert {commit[:8]} already"
        return ""

    def _adopt(self, s: _Session, facts: IncidentFacts, head: str, remote: str, sha: str) -> str:
        """Bring the working copy to a remote head that holds the rollback; say what was done.

        Only what the rollback itself explains is dropped: this incident's own
        unpublished revert commits, or (``reset``) the commits a reset to the
        target undoes. Anything else stays, named, for a person.
        """
        if head == remote:
            return ""
        where = self._where()
        problems = self._problems(s) + self._in_the_way(s, head, remote)
        if problems:
            return f"; working copy {self.repo} left as it is: {'; '.join(problems)}"
        if self._is_ancestor(s, head, remote):
            self._fast_forward(s, remote)
            return f"; working copy fast-forwarded to {where} {remote[:8]}"
        local = self._log(s, remote, head)
        mine = self._subject(facts)
        ours = self.strategy == "revert" and all(subject == mine for _, subject in local)
        undone = self.strategy == "reset" and remote == sha and self._is_ancestor(s, remote, head)
        if not (ours or undone):
            return (
                f"; working copy {self.repo} keeps {_plural(len(local), 'commit')} that "
                f"{where} does not have: a person should look"
            )
        s.need(
            s.run("reset", "--hard", "--quiet", _hex(remote), "--"),
            f"bringing the working copy to {where} {remote[:8]}",
        )
        dropped = "its own unpublished revert" if ours else "the commits the reset undoes"
        return f"; working copy brought to {where} {remote[:8]} (dropping {dropped})"

    def _done_locally(self, s: _Session, head: str, sha: str) -> bool:
        """HEAD has the target's content (revert) or is the target (reset, tag)."""
        if self.strategy == "revert":
            return self._tree(s, head) == self._tree(s, sha)
        return head == sha

    def _fast_forward(self, s: _Session, remote: str) -> None:
        s.need(
            s.run("merge", "--ff-only", "--quiet", _hex(remote)),
            f"fast-forward of the working copy to {self._where()} {remote[:8]} failed",
        )

    def _log(self, s: _Session, base: str, tip: str) -> list[tuple[str, str]]:
        """(sha, subject) of the commits in ``base..tip``, newest first."""
        out = s.need(
            s.run("log", "--no-decorate", "--format=%H %s", f"{_hex(base)}..{_hex(tip)}", "--"),
            f"listing the commits in {base[:8]}..{tip[:8]}",
        )
        return [
            (commit, subject)
            for commit, _, subject in (line.partition(" ") for line in out.out.splitlines())
        ]

    def _in_the_way(self, s: _Session, head: str, *tips: str) -> list[str]:
        """Untracked files a move from ``head`` to any of ``tips`` would overwrite."""
        moves = [tip for tip in dict.fromkeys(tips) if tip != head]
        if not moves:
            return []
        listed = s.need(
            s.run("ls-files", "-z", "--others", "--exclude-standard", "--directory"),
            "listing untracked files",
        )
        untracked = [path for path in listed.out.split("\0") if path]
        if not untracked:
            return []
        written: set[str] = set()
        for tip in moves:
            diff = s.need(
                s.run("diff", "--name-only", "-z", "--no-renames", _hex(head), _hex(tip), "--"),
                f"listing the files that differ between {head[:8]} and {tip[:8]}",
            )
            written.update(path for path in diff.out.split("\0") if path)
        hit = [
            path
            for path in untracked
            if path in written
            or (path.endswith("/") and any(name.startswith(path) for name in written))
        ]
        if not hit:
            return []
        shown = ", ".join(hit[:5]) + (f" and {len(hit) - 5} more" if len(hit) > 5 else "")
        return [f"untracked {shown} would be overwritten"]

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
