"""The git executor on real working copies with a bare repository as the remote.

Each test deploys v1 (good), v2 and v3 (bad) to ``main``, tagged, pushed to a
bare ``origin``, and rolls the working copy back to v1. git runs with no
global or system config and no identity, like a fresh deploy user's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rollbackd.actions import IncidentFacts, Progress
from rollbackd.actions.git import GitExecutor, Strategy

NOW = datetime(2026, 1, 1, 12, 30, 5, tzinfo=UTC)
STAMP = "20260101T123005Z"
TIMEOUT = timedelta(seconds=20)
STRATEGIES: list[Strategy] = ["revert", "reset", "tag"]
SYSTEM_PWNED = Path(tempfile.gettempdir()) / "pwned"
"""Where the brief's ``--upload-pack=touch /tmp/pwned`` would write."""


def git(repo: Path, *args: str, check: bool = True) -> str:
    """Run git as the test's own user (with an identity), return stdout stripped."""
    return subprocess.run(
        ["git", "-C", str(repo), *args],
        check=check,
        capture_output=True,
        text=True,
        env={
            "GIT_AUTHOR_NAME": "dev",
            "GIT_AUTHOR_EMAIL": "dev@example.invalid",
            "GIT_COMMITTER_NAME": "dev",
            "GIT_COMMITTER_EMAIL": "dev@example.invalid",
            "GIT_CONFIG_NOSYSTEM": "1",
            "HOME": str(repo),
            "PATH": "/usr/bin:/bin",
        },
    ).stdout.strip()


def commit(repo: Path, version: str, tag: bool = True) -> str:
    (repo / "app.toml").write_text(f'version = "{version}"\n')
    git(repo, "add", "app.toml")
    git(repo, "commit", "-q", "-m", version)
    if tag:
        git(repo, "tag", version)
    return git(repo, "rev-parse", "HEAD")


@dataclass(frozen=True)
class Deployed:
    """A working copy at v3 on main, its bare remote, and the shas of v1..v3."""

    root: Path
    work: Path
    remote: Path
    v1: str
    v2: str
    v3: str

    def head(self) -> str:
        return git(self.work, "rev-parse", "HEAD")

    def remote_ref(self, ref: str = "refs/heads/main") -> str:
        return git(self.remote, "rev-parse", "--verify", "--quiet", ref, check=False)

    def version(self) -> str:
        return (self.work / "app.toml").read_text()

    def status(self) -> str:
        return git(self.work, "status", "--porcelain")


@pytest.fixture(autouse=True)
def no_user_git_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The executor's git sees no global or system config and no identity variables."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / "gitconfig"))
    for name in (
        "GIT_AUTHOR_NAME",
        "GIT_AUTHOR_EMAIL",
        "GIT_COMMITTER_NAME",
        "GIT_COMMITTER_EMAIL",
        "EMAIL",
        "GIT_DIR",
        "GIT_WORK_TREE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(name="d")
def deployed(tmp_path: Path) -> Deployed:
    """v1, v2, v3 committed, tagged and pushed; HEAD at the bad v3."""
    remote = tmp_path / "origin.git"
    work = tmp_path / "web"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    git(tmp_path, "init", "-q", "-b", "main", str(work))
    git(work, "remote", "add", "origin", str(remote))
    (work / "extra.txt").write_text("only in v1\n")
    git(work, "add", "extra.txt")
    v1 = commit(work, "v1")
    git(work, "rm", "-q", "extra.txt")
    v2 = commit(work, "v2")
    v3 = commit(work, "v3")
    git(work, "push", "-q", "origin", "main", "--tags")
    return Deployed(tmp_path, work, remote, v1, v2, v3)


def facts(target: str = "v1") -> IncidentFacts:
    return IncidentFacts(
        incident=7,
        service="web",
        target=target,
        current_version="v3",
        reason="error rate 12% after v3",
        severity="critical",
    )


def executor(
    d: Deployed, strategy: Strategy = "revert", fetch_timeout: timedelta | None = None
) -> GitExecutor:
    return GitExecutor(
        d.work,
        remote="origin",
        branch="main",
        strategy=strategy,
        timeout=TIMEOUT,
        fetch_timeout=fetch_timeout,
    )


def someone_pushes(d: Deployed, version: str) -> str:
    """Another engineer clones the remote, commits ``version`` and pushes it to main."""
    other = d.root / f"other-{version}"
    git(d.root, "clone", "-q", str(d.remote), str(other))
    sha = commit(other, version, tag=False)
    git(other, "push", "-q", "origin", "main")
    return sha


# -- each strategy ---------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_rolls_a_bad_deploy_back_to_v1(d: Deployed, strategy: Strategy) -> None:
    """After verify, backup and execute the working copy serves v1 and v3 is kept on a branch."""
    ex = executor(d, strategy)
    verified = ex.verify_target(facts())
    assert verified.ok, verified
    assert verified.summary == f"target v1 is {d.v1[:8]} (2 commits behind HEAD {d.v3[:8]})"
    assert verified.data == {
        "head": d.v3,
        "target_sha": d.v1,
        "strategy": strategy,
        "target": "v1",
    }
    backup = ex.backup(facts(), NOW)
    assert backup.ok, backup
    branch = f"rollbackd/backup/7-{STAMP}"
    assert backup.data == {"branch": branch, "sha": d.v3}
    assert d.remote_ref(f"refs/heads/{branch}") == d.v3

    result = ex.execute(facts())
    assert result.ok, result
    assert d.version() == 'version = "v1"\n'
    assert (d.work / "extra.txt").read_text() == "only in v1\n"
    assert d.status() == ""
    assert result.data["before"] == d.v3
    assert result.data["after"] == d.head()
    if strategy == "revert":
        assert git(d.work, "rev-parse", "HEAD^") == d.v3  # new commit on top: fast-forward
        assert git(d.work, "log", "-1", "--format=%s") == "rollbackd: revert to v1 (incident 7)"
        assert git(d.work, "log", "-1", "--format=%an <%ae>") == "rollbackd <rollbackd@localhost>"
        assert d.remote_ref() == d.head()
    elif strategy == "reset":
        assert d.head() == d.v1
        assert d.remote_ref() == d.v1  # rewritten with --force-with-lease
        assert "force-with-lease" in result.summary
    else:
        assert d.head() == d.v1
        assert git(d.work, "symbolic-ref", "-q", "HEAD", check=False) == ""  # detached
        assert d.remote_ref() == d.v3  # nothing pushed
    assert ex.state(facts(), verified.data).progress is Progress.DONE


def test_revert_keeps_the_identity_the_working_copy_has(d: Deployed) -> None:
    """A working copy with its own user.name commits the revert under that name."""
    git(d.work, "config", "user.name", "Deploy Bot")
    git(d.work, "config", "user.email", "deploy@example.invalid")
    result = executor(d).execute(facts())
    assert result.ok, result
    author = git(d.work, "log", "-1", "--format=%an <%ae>|%cn <%ce>")
    assert author == "Deploy Bot <deploy@example.invalid>|Deploy Bot <deploy@example.invalid>"


def test_revert_commit_lists_the_reverted_commits(d: Deployed) -> None:
    """The revert commit's message names every commit it undoes."""
    assert executor(d).execute(facts()).ok
    body = git(d.work, "log", "-1", "--format=%b")
    assert f"{d.v3[:7]} v3" in body
    assert f"{d.v2[:7]} v2" in body


def test_a_hook_that_leaves_a_process_running_does_not_hold_up_the_rollback(d: Deployed) -> None:
    """A post-commit hook's background job: the revert is done when git is, the job is named."""
    pid_file = d.root / "hook.pid"
    hook = d.work / ".git" / "hooks" / "post-commit"
    hook.write_text(f'#!/bin/sh\nsleep 60 &\necho $! > "{pid_file}"\necho hook ran\n')
    hook.chmod(0o755)
    try:
        result = executor(d).execute(facts())
        child = int(pid_file.read_text())
        assert result.ok, result
        assert "hook ran" in result.output
        assert f"`git commit` left 1 process running: pid {child} (sleep 60)" in result.output
        assert Path(f"/proc/{child}").exists(), "the hook's job was killed"
    finally:
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_a_working_copys_fsmonitor_command_is_never_run(d: Deployed) -> None:
    """core.fsmonitor in the working copy's config cannot make rollbackd's git run a command."""
    ran = d.root / "fsmonitor-ran"
    hook = d.root / "fsmonitor"
    hook.write_text(f'#!/bin/sh\ntouch "{ran}"\nsleep 60\n')
    hook.chmod(0o755)
    git(d.work, "config", "core.fsmonitor", str(hook))
    verified = executor(d).verify_target(facts())
    assert verified.ok, verified
    assert not ran.exists()


# -- refusals that change nothing --------------------------------------------------------


def test_revert_with_a_merge_in_range_fails_and_changes_nothing(d: Deployed) -> None:
    """A merge commit since the target stops the revert with a clear reason, repo untouched."""
    git(d.work, "checkout", "-q", "-b", "feature", d.v3)
    (d.work / "feature.txt").write_text("feature\n")
    git(d.work, "add", "feature.txt")
    git(d.work, "commit", "-q", "-m", "feature")
    git(d.work, "checkout", "-q", "main")
    commit(d.work, "v4", tag=False)
    git(d.work, "merge", "-q", "--no-ff", "-m", "merge feature", "feature")
    git(d.work, "push", "-q", "origin", "main")
    head, remote = d.head(), d.remote_ref()
    result = executor(d).execute(facts())
    assert not result.ok
    assert "merge commit" in result.summary
    assert head[:8] in result.summary
    assert "mainline" in result.summary
    assert (d.head(), d.remote_ref(), d.status()) == (head, remote, "")
    assert not (d.work / ".git" / "REVERT_HEAD").exists()


def test_a_failed_revert_is_aborted_and_the_working_copy_left_as_it_was(d: Deployed) -> None:
    """When the revert cannot apply, HEAD, index and the blocking file are as before."""
    (d.work / "extra.txt").write_text("untracked local file\n")  # v2 deleted it; v1 has it
    result = executor(d).execute(facts())
    assert not result.ok
    assert "revert to v1 failed" in result.summary
    assert "as it was" in result.summary
    assert "extra.txt" in result.output
    assert d.head() == d.v3
    assert d.remote_ref() == d.v3
    assert git(d.work, "status", "--porcelain") == "?? extra.txt"
    assert (d.work / "extra.txt").read_text() == "untracked local file\n"
    assert not (d.work / ".git" / "REVERT_HEAD").exists()
    assert not (d.work / ".git" / "sequencer").exists()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_verify_fails_for_a_target_that_does_not_exist(d: Deployed, strategy: Strategy) -> None:
    """A version that was never deployed is reported by name."""
    result = executor(d, strategy).verify_target(facts("v9"))
    assert not result.ok
    assert "'v9' does not exist" in result.summary


def test_verify_fails_for_a_branch_name_under_strategy_tag(d: Deployed) -> None:
    """Strategy tag only accepts tags: a commit id is not a tag."""
    result = executor(d, "tag").verify_target(facts(d.v1))
    assert not result.ok
    assert "no tag of that name" in result.summary


@pytest.mark.parametrize("strategy", ["revert", "reset"])
def test_verify_fails_for_a_target_that_is_not_an_ancestor(d: Deployed, strategy: Strategy) -> None:
    """A rollback goes back: a commit on a side branch is refused for revert and reset."""
    git(d.work, "checkout", "-q", "-b", "side", d.v1)
    commit(d.work, "side1")
    git(d.work, "checkout", "-q", "main")
    result = executor(d, strategy).verify_target(facts("side1"))
    assert not result.ok
    assert "not an ancestor of HEAD" in result.summary
    assert "not sideways" in result.summary


def test_verify_fails_for_a_dirty_working_copy(d: Deployed) -> None:
    """Uncommitted changes to tracked files block the rollback and are named."""
    (d.work / "app.toml").write_text("hand edit\n")
    result = executor(d).verify_target(facts())
    assert not result.ok
    assert "not clean" in result.summary
    assert "app.toml" in result.summary
    execute = executor(d).execute(facts())
    assert not execute.ok
    assert (d.work / "app.toml").read_text() == "hand edit\n"


def test_verify_fails_while_a_merge_is_in_progress(d: Deployed) -> None:
    """A half-finished merge in the working copy is reported, not overwritten."""
    (d.work / ".git" / "MERGE_HEAD").write_text(d.v2 + "\n")
    result = executor(d).verify_target(facts())
    assert not result.ok
    assert "a merge is in progress" in result.summary


def test_verify_fails_when_the_target_is_already_head(d: Deployed) -> None:
    """Rolling back to the version that runs now is refused: nothing to roll back."""
    result = executor(d).verify_target(facts("v3"))
    assert not result.ok
    assert "HEAD already" in result.summary


def test_an_unreachable_remote_does_not_stop_verification(d: Deployed) -> None:
    """If the fetch fails, the target is checked against local refs and the summary says so."""
    d.remote.rename(d.root / "moved.git")
    result = executor(d).verify_target(facts())
    assert result.ok, result
    assert "fetch from origin failed" in result.summary
    assert result.data["target_sha"] == d.v1


def test_a_hanging_fetch_is_killed_after_its_timeout(d: Deployed) -> None:
    """A remote that never answers costs the fetch timeout, then verification goes on."""
    slow = d.root / "slow-ssh"
    slow.write_text("#!/bin/sh\nsleep 30\n")
    slow.chmod(0o755)
    git(d.work, "config", "core.sshCommand", str(slow))
    git(d.work, "remote", "set-url", "origin", "ssh://git.invalid/web.git")
    ex = executor(d, fetch_timeout=timedelta(milliseconds=500))
    result = ex.verify_target(facts())
    assert result.ok, result
    assert "fetch from origin failed (timed out after 500ms)" in result.summary


def test_backup_fails_when_the_remote_is_unreachable(d: Deployed) -> None:
    """A backup that cannot be pushed is a failed step naming the branch."""
    d.remote.rename(d.root / "moved.git")
    result = executor(d).backup(facts(), NOW)
    assert not result.ok
    assert f"rollbackd/backup/7-{STAMP}" in result.summary
    assert "not pushed to origin" in result.summary


def test_not_a_working_copy_is_a_failed_step(tmp_path: Path) -> None:
    """A repo path that is missing or not a git working copy fails every step cleanly."""
    for path, words in ((tmp_path / "absent", "does not exist"), (tmp_path, "not a git")):
        ex = GitExecutor(path, remote="origin", branch="main", strategy="revert", timeout=TIMEOUT)
        for result in (ex.verify_target(facts()), ex.backup(facts(), NOW), ex.execute(facts())):
            assert not result.ok
            assert words in result.summary
        assert ex.state(facts(), {}).progress is Progress.UNKNOWN


def test_a_working_copy_removed_or_replaced_between_steps_is_seen_by_the_next_step(
    d: Deployed,
) -> None:
    """Between verify and execute the working copy goes, then comes back as a bare
    repository: each next step says so instead of acting on what it saw before."""
    ex = executor(d)
    assert ex.verify_target(facts()).ok
    moved = d.root / "moved"
    d.work.rename(moved)
    assert "does not exist" in ex.execute(facts()).summary
    git(d.root, "init", "-q", "--bare", str(d.work))
    assert "is a bare repository" in ex.execute(facts()).summary
    assert git(moved, "rev-parse", "HEAD") == d.v3


# -- the remote moved meanwhile ------------------------------------------------------------


def test_force_with_lease_refuses_when_someone_pushed_meanwhile(d: Deployed) -> None:
    """A reset never overwrites a push made after verification: the step fails and says so."""
    ex = executor(d, "reset")
    assert ex.verify_target(facts()).ok
    v4 = someone_pushes(d, "v4")
    result = ex.execute(facts())
    assert not result.ok
    assert "--force-with-lease refused" in result.summary
    assert "someone pushed meanwhile" in result.summary
    assert d.remote_ref() == v4
    assert result.data == {"before": d.v3, "after": d.v1, "pushed": "no"}


def test_a_revert_push_is_refused_when_someone_pushed_meanwhile(d: Deployed) -> None:
    """The revert commit is kept locally, and the refused push is reported."""
    v4 = someone_pushes(d, "v4")
    result = executor(d).execute(facts())
    assert not result.ok
    assert "reverted to v1 locally" in result.summary
    assert "[rejected]" in result.summary
    assert d.remote_ref() == v4
    assert result.data["pushed"] == "no"


# -- state after a crash -------------------------------------------------------------------


def test_state_is_not_started_before_execute(d: Deployed) -> None:
    """A crash before execute changed anything is recognised as not started."""
    for strategy in STRATEGIES:
        ex = executor(d, strategy)
        verified = ex.verify_target(facts())
        state = ex.state(facts(), verified.data)
        assert state.progress is Progress.NOT_STARTED, state


def test_state_is_done_after_a_local_revert_and_push_publishes_it(d: Deployed) -> None:
    """A crash between the revert commit and the push is done locally; push() finishes it."""
    ex = executor(d)
    verified = ex.verify_target(facts())
    git(d.work, "revert", "--no-edit", "--no-commit", f"{d.v1}..HEAD")
    git(d.work, "commit", "-q", "-m", "revert")
    state = ex.state(facts(), verified.data)
    assert state.progress is Progress.DONE
    assert "not HEAD: push() publishes it" in state.reason
    pushed = ex.push(facts(), verified.data)
    assert pushed.ok, pushed
    assert d.remote_ref() == d.head()
    again = ex.push(facts(), verified.data)
    assert again.ok
    assert "already" in again.summary
    assert "has it too" in ex.state(facts(), verified.data).reason


def test_state_is_done_after_a_local_reset_and_push_leases_against_the_old_head(
    d: Deployed,
) -> None:
    """After a crash between reset and push, push() rewrites the remote only if it is unmoved."""
    ex = executor(d, "reset")
    verified = ex.verify_target(facts())
    git(d.work, "reset", "-q", "--hard", d.v1)
    assert ex.state(facts(), verified.data).progress is Progress.DONE
    assert not ex.push(facts()).ok  # without the old head there is nothing to lease against
    pushed = ex.push(facts(), verified.data)
    assert pushed.ok, pushed
    assert d.remote_ref() == d.v1


def test_state_is_unknown_while_a_revert_is_half_applied(d: Deployed) -> None:
    """A crash in the middle of the revert (index changed, no commit) is unknown, with why."""
    ex = executor(d)
    verified = ex.verify_target(facts())
    git(d.work, "revert", "--no-edit", "--no-commit", f"{d.v1}..HEAD")
    state = ex.state(facts(), verified.data)
    assert state.progress is Progress.UNKNOWN
    assert "a revert is in progress" in state.reason


def test_state_is_unknown_when_head_moved_elsewhere(d: Deployed) -> None:
    """HEAD at neither the old head nor the target means someone else acted: unknown."""
    ex = executor(d, "reset")
    verified = ex.verify_target(facts())
    commit(d.work, "v4", tag=False)
    state = ex.state(facts(), verified.data)
    assert state.progress is Progress.UNKNOWN
    assert "neither the head before" in state.reason


# -- hostile input -------------------------------------------------------------------------


def hostile(root: Path) -> list[str]:
    return [
        f"--upload-pack=touch {root}/pwned",
        f"--upload-pack=touch {SYSTEM_PWNED}",
        "$(touch pwned)",
        "; rm -rf /",
        "v1\nrm -rf",
        "-x",
    ]


@pytest.fixture
def untouched(d: Deployed) -> Iterator[Deployed]:
    """After the test: nothing ran, HEAD, remote and tree unchanged, no pwned file anywhere."""
    pwned_before = SYSTEM_PWNED.exists()
    yield d
    assert (d.head(), d.remote_ref(), d.status()) == (d.v3, d.v3, "")
    assert git(d.remote, "for-each-ref", "--format=%(refname)", "refs/heads") == "refs/heads/main"
    assert not any(d.root.rglob("pwned"))
    assert SYSTEM_PWNED.exists() == pwned_before


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("index", range(6))
def test_a_hostile_target_never_reaches_git(
    untouched: Deployed, strategy: Strategy, index: int
) -> None:
    """Option- and shell-looking targets are refused by name before git runs."""
    target = hostile(untouched.root)[index]
    bad = IncidentFacts(7, "web", target, "v3", " ".join(hostile(untouched.root)), "critical")
    ex = executor(untouched, strategy)
    results = [ex.verify_target(bad), ex.backup(bad, NOW), ex.execute(bad), ex.push(bad, {})]
    for result in results:
        assert not result.ok
        assert repr(target) in result.summary
        assert result.output == ""  # no git command ran
    state = ex.state(bad, {"head": untouched.v3, "target_sha": untouched.v1})
    assert state.progress is Progress.UNKNOWN
    assert repr(target) in state.reason


@pytest.mark.parametrize(
    ("remote", "branch"),
    [("--upload-pack=touch pwned", "main"), ("origin", "-x"), ("origin", "main\n; rm -rf /")],
)
def test_a_hostile_remote_or_branch_never_reaches_git(
    untouched: Deployed, remote: str, branch: str
) -> None:
    """A remote or branch name that could be read as an option is refused by name."""
    ex = GitExecutor(
        untouched.work, remote=remote, branch=branch, strategy="reset", timeout=TIMEOUT
    )
    bad = remote if remote != "origin" else branch
    for result in (ex.verify_target(facts()), ex.backup(facts(), NOW), ex.execute(facts())):
        assert not result.ok
        assert repr(bad) in result.summary
