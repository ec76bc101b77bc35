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
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rollbackd.actions import IncidentFacts, Progress, StepResult
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


def test_an_untracked_file_the_rollback_would_overwrite_is_named_and_nothing_changes(
    d: Deployed,
) -> None:
    """An untracked file where the target has one stops verify and execute up front, named."""
    (d.work / "extra.txt").write_text("untracked local file\n")  # v2 deleted it; v1 has it
    (d.work / "notes.txt").write_text("untracked, in nobody's way\n")
    for result in (executor(d).verify_target(facts()), executor(d).execute(facts())):
        assert not result.ok
        assert "untracked extra.txt would be overwritten" in result.summary
        assert "notes.txt" not in result.summary
        assert "a person must look" in result.summary
    assert d.head() == d.v3
    assert d.remote_ref() == d.v3
    assert git(d.work, "status", "--porcelain") == "?? extra.txt\n?? notes.txt"
    assert (d.work / "extra.txt").read_text() == "untracked local file\n"


def test_a_failed_revert_commit_is_undone_and_the_working_copy_left_as_it_was(
    d: Deployed,
) -> None:
    """When the revert cannot be committed (a hook refuses), HEAD, index and files are as before."""
    hook = d.work / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\necho refused by policy >&2\nexit 1\n")
    hook.chmod(0o755)
    result = executor(d).execute(facts())
    assert not result.ok
    assert "commit of the revert failed" in result.summary
    assert "as it was" in result.summary
    assert "refused by policy" in result.output
    assert d.head() == d.v3
    assert d.remote_ref() == d.v3
    assert d.status() == ""
    assert d.version() == 'version = "v3"\n'
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


@pytest.mark.parametrize("backup", [False, True])
def test_a_reset_never_discards_a_push_made_after_verification(d: Deployed, backup: bool) -> None:
    """A reset stops, changing nothing, when the remote branch moved past the head it checked
    (with a backup between: it keeps what verify checked, not the unchecked push)."""
    ex = executor(d, "reset")
    assert ex.verify_target(facts()).ok
    v4 = someone_pushes(d, "v4")
    if backup:
        assert ex.backup(facts(), NOW).data["sha"] == d.v3
    result = ex.execute(facts())
    assert not result.ok
    assert "someone pushed meanwhile" in result.summary
    assert "the remote branch is unchanged" in result.summary
    assert d.remote_ref() == v4
    assert d.head() == d.v3
    assert result.data == {"before": d.v3, "after": d.v3, "pushed": "no"}


def test_force_with_lease_refuses_a_push_made_during_the_reset(d: Deployed) -> None:
    """A push that lands between the reset's fetch and its push is never overwritten."""
    ex = executor(d, "reset")
    assert ex.verify_target(facts()).ok
    other = replica(d, "person")
    commit(other, "v4", tag=False)
    hook(d.work, "pre-push", f'git -C "{other}" push -q origin main')
    result = ex.execute(facts())
    assert not result.ok
    assert "--force-with-lease was refused" in result.summary
    assert "someone pushed meanwhile" in result.summary
    assert d.remote_ref() == git(other, "rev-parse", "HEAD")
    assert result.data == {"before": d.v3, "after": d.v1, "pushed": "no"}


# -- several replicas, each with its own working copy ----------------------------------------


def replica(d: Deployed, name: str) -> Path:
    """Another machine's working copy of the same remote, cloned now (at the remote's head)."""
    path = d.root / name
    git(d.root, "clone", "-q", str(d.remote), str(path))
    return path


def executor_at(path: Path, strategy: Strategy = "revert") -> GitExecutor:
    return GitExecutor(path, remote="origin", branch="main", strategy=strategy, timeout=TIMEOUT)


def hook(work: Path, name: str, body: str, times: int = 1) -> None:
    """A git hook in ``work`` that runs ``body`` (the first ``times`` times it fires)."""
    count = work / ".git" / f"{name}.count"
    script = work / ".git" / "hooks" / name
    script.write_text(
        "#!/bin/sh\nunset GIT_DIR GIT_WORK_TREE GIT_INDEX_FILE GIT_PREFIX\n"
        f'n=$(cat "{count}" 2>/dev/null || echo 0)\necho $((n + 1)) > "{count}"\n'
        f'[ "$n" -ge {times} ] && exit 0\n'
        f"export HOME={work} GIT_CONFIG_NOSYSTEM=1 GIT_AUTHOR_NAME=dev "
        "GIT_AUTHOR_EMAIL=dev@example.invalid GIT_COMMITTER_NAME=dev "
        "GIT_COMMITTER_EMAIL=dev@example.invalid\n"
        f"{body}\nexit 0\n"
    )
    script.chmod(0o755)


def reverts_on_the_remote(d: Deployed) -> list[str]:
    """Subjects of the rollbackd revert commits on the remote's main since v1."""
    subjects = git(d.remote, "log", "--format=%s", f"{d.v1}..main").splitlines()
    return [s for s in subjects if s.startswith("rollbackd: revert")]


def remote_serves_v1(d: Deployed) -> bool:
    return git(d.remote, "rev-parse", "main^{tree}") == git(
        d.remote, "rev-parse", f"{d.v1}^{{tree}}"
    )


def test_a_stale_working_copy_is_fast_forwarded_to_the_remote_before_acting(d: Deployed) -> None:
    """A replica whose copy missed the latest deploy rolls back what the remote runs."""
    v4 = someone_pushes(d, "v4")
    ex = executor(d)
    verified = ex.verify_target(facts())
    assert verified.ok, verified
    assert f"fast-forwarded 1 commit from {d.v3[:8]} to origin/main {v4[:8]}" in verified.summary
    assert verified.data["head"] == v4
    result = ex.execute(facts())
    assert result.ok, result
    assert git(d.remote, "rev-parse", "main^") == v4
    assert reverts_on_the_remote(d) == ["rollbackd: revert to v1 (incident 7)"]
    assert remote_serves_v1(d)


@pytest.mark.parametrize("strategy", ["revert", "reset"])
def test_a_working_copy_with_local_commits_is_never_forced(d: Deployed, strategy: Strategy) -> None:
    """Commits the remote lacks stop verify and execute, with a reason for a person."""
    v4 = commit(d.work, "v4", tag=False)
    for result in (
        executor(d, strategy).verify_target(facts()),
        executor(d, strategy).execute(facts()),
    ):
        assert not result.ok
        assert (
            f"has 1 commit that origin/main ({d.v3[:8]}) does not have: {v4[:8]} v4"
            in result.summary
        )
        assert "A person must look" in result.summary
        assert str(d.work) in result.summary
    assert (d.head(), d.remote_ref(), d.status()) == (v4, d.v3, "")


def test_a_dirty_stale_working_copy_is_neither_fast_forwarded_nor_rolled_back(d: Deployed) -> None:
    """Uncommitted changes stop the step before the fast-forward: the copy stays as it was."""
    someone_pushes(d, "v4")
    (d.work / "app.toml").write_text("hand edit\n")
    result = executor(d).execute(facts())
    assert not result.ok
    assert "not clean: uncommitted changes in app.toml" in result.summary
    assert "a person must look" in result.summary
    assert d.head() == d.v3
    assert (d.work / "app.toml").read_text() == "hand edit\n"
    assert reverts_on_the_remote(d) == []


def test_a_second_replica_on_the_same_incident_does_not_revert_again(d: Deployed) -> None:
    """After one replica reverted and pushed, another (stale) replica records it as done."""
    other = replica(d, "b")
    ex_a, ex_b = executor(d), executor_at(other)
    verified = ex_a.verify_target(facts())
    assert ex_a.execute(facts()).ok
    state = ex_b.state(facts(), verified.data)
    assert state.progress is Progress.DONE, state
    assert "has the content of v1 already" in state.reason
    again = ex_b.execute(facts())
    assert again.ok, again
    assert "not rolled back a second time" in again.summary
    assert again.data["pushed"] == "already"
    assert reverts_on_the_remote(d) == ["rollbackd: revert to v1 (incident 7)"]
    assert git(other, "rev-parse", "HEAD") == d.remote_ref()


def test_a_fix_pushed_after_the_revert_is_not_reverted_by_another_replica(d: Deployed) -> None:
    """The remote holds this incident's revert and a later fix: a second replica keeps both."""
    other = replica(d, "b")
    assert executor(d).execute(facts()).ok
    fix = someone_pushes(d, "v4-fix")
    result = executor_at(other).execute(facts())
    assert result.ok, result
    assert "has this incident's revert" in result.summary
    assert d.remote_ref() == fix
    assert reverts_on_the_remote(d) == ["rollbackd: revert to v1 (incident 7)"]
    assert (other / "app.toml").read_text() == 'version = "v4-fix"\n'


def test_a_replica_killed_before_its_push_drops_its_stale_revert_when_it_acts_again(
    d: Deployed,
) -> None:
    """A replica that committed its revert but died before pushing it, while another replica
    reverted and pushed the same incident, drops its stale commit before its next rollback."""
    git(d.work, "revert", "--no-edit", "--no-commit", f"{d.v1}..HEAD")
    git(d.work, "commit", "-q", "-m", "rollbackd: revert to v1 (incident 7)")
    other = replica(d, "b")
    assert executor_at(other).execute(facts()).ok  # the replica that took over
    v5 = someone_pushes(d, "v5")
    later = IncidentFacts(
        incident=9, service="web", target=v5, current_version="v6", reason="r", severity="high"
    )
    someone_pushes(d, "v6")
    result = executor(d).verify_target(later)
    assert result.ok, result
    assert "dropping its own unpublished revert of incident 7" in result.summary
    assert d.head() == d.remote_ref()
    assert reverts_on_the_remote(d) == ["rollbackd: revert to v1 (incident 7)"]


def test_a_stale_revert_the_remote_does_not_have_is_left_for_a_person(d: Deployed) -> None:
    """An unpublished rollbackd revert that no replica pushed is never dropped: it escalates."""
    git(d.work, "revert", "--no-edit", "--no-commit", f"{d.v1}..HEAD")
    git(d.work, "commit", "-q", "-m", "rollbackd: revert to v1 (incident 7)")
    someone_pushes(d, "v5")
    result = executor(d).verify_target(facts("v2"))
    assert not result.ok
    assert "a person must look" in result.summary.lower()
    assert reverts_on_the_remote(d) == []


def test_two_replicas_acting_at_once_leave_exactly_one_revert_on_the_remote(d: Deployed) -> None:
    """Two working copies execute the same incident concurrently: one revert, both steps ok."""
    other = replica(d, "b")
    executors = [executor(d), executor_at(other)]
    start = threading.Barrier(len(executors))
    results: list[StepResult] = []

    def act(ex: GitExecutor) -> None:
        start.wait()
        results.append(ex.execute(facts()))

    threads = [threading.Thread(target=act, args=(ex,)) for ex in executors]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r.ok for r in results), "\n".join(f"{r.ok} {r.summary}" for r in results)
    assert {r.data["pushed"] for r in results} <= {"already", "yes"}  # the same commit twice: yes
    assert reverts_on_the_remote(d) == ["rollbackd: revert to v1 (incident 7)"]
    assert remote_serves_v1(d)
    for work in (d.work, other):
        assert git(work, "rev-parse", "HEAD") == d.remote_ref()
        assert git(work, "status", "--porcelain") == ""


def test_a_push_race_with_another_replicas_revert_is_recorded_without_a_second_one(
    d: Deployed,
) -> None:
    """The push is refused because another replica pushed the same rollback meanwhile: done."""
    other = replica(d, "b")
    hook(
        d.work,
        "pre-push",
        f'git -C "{other}" revert --no-edit --no-commit {d.v1}..HEAD && '
        f'git -C "{other}" commit -q -m "rollbackd: revert to v1 (incident 7)" && '
        f'git -C "{other}" push -q origin main',
    )
    result = executor(d).execute(facts())
    assert result.ok, result
    assert "the push to origin/main was refused" in result.summary
    assert "not rolled back a second time" in result.summary
    assert "dropping its own unpublished revert" in result.summary
    assert result.data["pushed"] == "already"
    assert reverts_on_the_remote(d) == ["rollbackd: revert to v1 (incident 7)"]
    assert d.head() == d.remote_ref() == git(other, "rev-parse", "HEAD")
    assert d.status() == ""


def test_a_push_race_with_another_commit_escalates_and_reverts_nothing_unchecked(
    d: Deployed,
) -> None:
    """Someone pushed between the revert and its push: the step fails naming the commit, the
    remote keeps it, and the copy drops its own unpublished revert."""
    other = replica(d, "person")
    v4 = commit(other, "v4", tag=False)
    hook(d.work, "pre-push", f'git -C "{other}" push -q origin main')
    result = executor(d).execute(facts())
    assert not result.ok
    assert "the push of the revert to v1 was refused: origin/main moved" in result.summary
    assert f"{v4[:8]} v4" in result.summary
    assert "a person must decide" in result.summary
    assert result.data["pushed"] == "no"
    assert d.remote_ref() == v4
    assert reverts_on_the_remote(d) == []
    assert d.head() == v4 and d.status() == ""


def test_a_reset_by_another_replica_never_discards_a_push_made_after_its_backup(
    d: Deployed,
) -> None:
    """A replica without the verify in memory finds the head checked in the backup branch."""
    ex_a = executor(d, "reset")
    assert ex_a.verify_target(facts()).ok
    assert ex_a.backup(facts(), NOW).ok
    v4 = someone_pushes(d, "v4")
    result = executor_at(replica(d, "b"), "reset").execute(facts())
    assert not result.ok
    assert f"moved from {d.v3[:8]} (the head checked and backed up) to {v4[:8]}" in result.summary
    assert d.remote_ref() == v4


def test_a_reset_done_by_another_replica_is_recorded_and_the_stale_copy_follows(
    d: Deployed,
) -> None:
    """The remote is at the target already: a stale replica records it and resets its copy."""
    other = replica(d, "b")
    ex_a = executor(d, "reset")
    verified = ex_a.verify_target(facts())
    assert ex_a.execute(facts()).ok
    ex_b = executor_at(other, "reset")
    state = ex_b.state(facts(), verified.data)
    assert state.progress is Progress.DONE, state
    assert "is at v1" in state.reason
    assert "dropping the commits the reset undoes" in state.reason
    assert git(other, "rev-parse", "HEAD") == d.v1
    assert ex_b.execute(facts()).data["pushed"] == "already"
    assert d.remote_ref() == d.v1


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
