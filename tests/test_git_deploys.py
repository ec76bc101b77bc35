"""Deploys read from a real git working copy's HEAD reflog."""

from __future__ import annotations

import subprocess
from pathlib import Path

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
