"""Deploys read from a real git working copy's HEAD reflog."""

from __future__ import annotations

import os
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from rollbackd.sources.deploys import git_deploys, git_head


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        text=True,
        env={
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@example.invalid",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.invalid",
            "HOME": str(repo),
            "PATH": "/usr/bin:/bin",
        },
    ).stdout.strip()


def commit(repo: Path, version: str) -> str:
    (repo / "app.toml").write_text(f'version = "{version}"\n')
    git(repo, "add", "app.toml")
    git(repo, "commit", "-q", "-m", version)
    return git(repo, "rev-parse", "HEAD")


def test_each_move_of_head_is_a_deploy_in_order(tmp_path: Path) -> None:
    """Commit v1, commit v2, reset back to v1: three deploys, the last one v1 again."""
    repo = tmp_path / "web"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    v1 = commit(repo, "v1")
    v2 = commit(repo, "v2")
    git(repo, "reset", "-q", "--hard", v1)
    deploys = git_deploys("web", repo)
    assert [d.ref for d in deploys] == [v1, v2, v1]
    assert all(d.source == "git" and d.version == d.ref[:12] for d in deploys if d.ref)
    assert git_head(repo) == v1


def test_a_missing_repository_gives_no_deploys_instead_of_failing(tmp_path: Path) -> None:
    """An unreadable working copy means deploys are unknown, not a crash."""
    assert git_deploys("web", tmp_path / "absent") == []
    assert git_head(tmp_path / "absent") is None


def test_a_git_that_hangs_is_stopped_at_the_deadline_and_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A git that never answers costs deploy discovery its deadline, is killed and is logged."""
    repo = tmp_path / "web"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit(repo, "v1")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    pids = tmp_path / "pids"
    fake = bin_dir / "git"
    fake.write_text(f'#!/bin/sh\necho $$ >> "{pids}"\nexec sleep 60\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    deadline = timedelta(milliseconds=300)
    started = time.monotonic()
    with capture_logs() as logs:
        head = git_head(repo, timeout=deadline)
        deploys = git_deploys("web", repo, timeout=deadline)
    assert time.monotonic() - started < 20  # the fake git sleeps 60 s per call
    assert head is None
    assert deploys == []
    assert [(e["event"], e["why"]) for e in logs] == [
        ("git_head_unread", f"{repo}: `git rev-parse` timed out after 300ms"),
        ("git_deploys_unread", f"{repo}: `git log` timed out after 300ms"),
    ]
    for pid in pids.read_text().split():
        assert not Path(f"/proc/{pid}").exists(), "the hung git was left running"
